//! One key version's secret material, and the public views of it.
//!
//! The stored form is exactly what the KMS providers import (key-transfer
//! reference §1.4): 32 raw bytes for AES, and an unencrypted PKCS#8 v1
//! `PrivateKeyInfo` (RFC 5208) for RSA and EC. Keeping the import format as
//! the storage format means distribution never has to convert secrets, and
//! the bytes that are wrapped are the bytes that were validated on load.
//!
//! Secrets are held in [`Zeroizing`] buffers and never reach `Debug` output.

use std::fmt;

use aws_lc_rs::encoding::{AsBigEndian, AsDer, EcPrivateKeyBin, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P521_SHA512_ASN1_SIGNING,
    EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::key_type::{EcCurve, KeyType, RsaBits};

/// Length of `aes256-gcm96` material.
pub const AES256_KEY_LEN: usize = 32;

/// Why key material could not be generated, loaded or exported.
///
/// No variant carries secret bytes, so these are safe to log and to return
/// to API clients.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    /// The crypto library failed to produce a key (RNG or internal failure).
    #[error("generating {key_type} key material failed")]
    Generate {
        /// The type being generated.
        key_type: KeyType,
    },
    /// Symmetric material of the wrong size.
    #[error("{key_type} key material must be {expected} bytes, got {actual}")]
    WrongLength {
        /// The declared key type.
        key_type: KeyType,
        /// The size the type requires.
        expected: usize,
        /// The size that was given.
        actual: usize,
    },
    /// The bytes are not a PKCS#8 private key of the declared algorithm and
    /// curve (this includes EC material declared as RSA and the reverse).
    #[error("key material is not a valid {key_type} PKCS#8 private key: {reason}")]
    Rejected {
        /// The declared key type.
        key_type: KeyType,
        /// The crypto library's reason, free of key bytes.
        reason: &'static str,
    },
    /// An RSA key whose modulus is not the declared size.
    #[error("{key_type} key material has a {actual_bits}-bit modulus")]
    WrongModulusSize {
        /// The declared key type.
        key_type: KeyType,
        /// The modulus size actually found.
        actual_bits: usize,
    },
    /// Re-encoding a validated key failed; indicates a library fault or an
    /// encoding this module does not support (such as multi-prime RSA).
    #[error("encoding {key_type} key material failed: {what}")]
    Encode {
        /// The key type.
        key_type: KeyType,
        /// What could not be encoded.
        what: &'static str,
    },
}

/// One version's secret key material, validated for its [`KeyType`].
///
/// Construction always goes through validation, so holders can rely on the
/// bytes being a well-formed key of the declared type and size.
#[derive(Clone)]
pub struct KeyMaterial {
    key_type: KeyType,
    /// AES: the raw key. RSA/EC: canonical PKCS#8 v1 DER.
    secret: Zeroizing<Vec<u8>>,
    /// SubjectPublicKeyInfo DER, computed once at validation so that reads
    /// of many versions don't re-parse private keys.
    public_der: Option<Vec<u8>>,
}

impl KeyMaterial {
    /// Generates fresh material for `key_type`.
    ///
    /// RSA keys use e = 65537 (AWS-LC's default, as Go's `rsa.GenerateKey`).
    pub fn generate(key_type: KeyType) -> Result<Self, MaterialError> {
        let fail = |_| MaterialError::Generate { key_type };
        let bytes = match (key_type.rsa_bits(), key_type.ec_curve()) {
            (Some(bits), _) => {
                let size = match bits {
                    RsaBits::B2048 => KeySize::Rsa2048,
                    RsaBits::B3072 => KeySize::Rsa3072,
                    RsaBits::B4096 => KeySize::Rsa4096,
                };
                let pair = RsaKeyPair::generate(size).map_err(fail)?;
                let der: Pkcs8V1Der<'static> = pair.as_der().map_err(fail)?;
                Zeroizing::new(der.as_ref().to_vec())
            }
            (None, Some(curve)) => {
                let doc = EcdsaKeyPair::generate_pkcs8(ecdsa_alg(curve), &SystemRandom::new())
                    .map_err(fail)?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
            (None, None) => {
                let mut key = Zeroizing::new(vec![0u8; AES256_KEY_LEN]);
                SystemRandom::new().fill(&mut key[..]).map_err(fail)?;
                key
            }
        };
        // Round-trip through the loader so generated and stored material
        // pass exactly the same checks and have the same canonical form.
        Self::from_bytes(key_type, bytes)
    }

    /// Material from validated canonical PKCS#8 and its public key.
    fn asymmetric(key_type: KeyType, pkcs8: &[u8], spki: &[u8]) -> Self {
        Self {
            key_type,
            secret: Zeroizing::new(pkcs8.to_vec()),
            public_der: Some(spki.to_vec()),
        }
    }

    /// Validates material loaded from storage (or otherwise supplied).
    ///
    /// RSA and EC input must be exactly one DER PKCS#8 structure (v1 or v2;
    /// trailing bytes are rejected) that AWS-LC accepts for the declared
    /// algorithm, curve and size. It is re-encoded as canonical PKCS#8 v1, because v2 (`OneAsymmetricKey`)
    /// is not what the cloud import APIs specify. Material produced by
    /// [`KeyMaterial::generate`] is already canonical and comes back
    /// byte-for-byte unchanged.
    pub fn from_bytes(key_type: KeyType, bytes: Zeroizing<Vec<u8>>) -> Result<Self, MaterialError> {
        let encode = |what| MaterialError::Encode { key_type, what };
        let reject = |e: aws_lc_rs::error::KeyRejected| MaterialError::Rejected {
            key_type,
            reason: e.description_(),
        };
        if key_type.is_asymmetric() {
            // AWS-LC ignores bytes after the PrivateKeyInfo; a strict DER
            // parse first makes sure canonicalisation can't hide corruption.
            rsa::pkcs8::PrivateKeyInfo::try_from(bytes.as_slice()).map_err(|_| {
                MaterialError::Rejected {
                    key_type,
                    reason: "not exactly one DER PrivateKeyInfo",
                }
            })?;
        }
        match (key_type.rsa_bits(), key_type.ec_curve()) {
            (Some(bits), _) => {
                let pair = RsaKeyPair::from_pkcs8(&bytes).map_err(reject)?;
                let modulus = pair.public_key().modulus();
                let actual_bits = bit_length(modulus.big_endian_without_leading_zero());
                if actual_bits != bits.bits() {
                    return Err(MaterialError::WrongModulusSize {
                        key_type,
                        actual_bits,
                    });
                }
                let der: Pkcs8V1Der<'static> =
                    pair.as_der().map_err(|_| encode("PKCS#8 private key"))?;
                let spki: PublicKeyX509Der<'static> = pair
                    .public_key()
                    .as_der()
                    .map_err(|_| encode("SubjectPublicKeyInfo"))?;
                Ok(Self::asymmetric(key_type, der.as_ref(), spki.as_ref()))
            }
            (None, Some(curve)) => {
                // from_pkcs8 rejects keys on a different curve, and runs
                // EC_KEY_check_key, so the public point matches the scalar.
                let pair = EcdsaKeyPair::from_pkcs8(ecdsa_alg(curve), &bytes).map_err(reject)?;
                let der = pair
                    .to_pkcs8v1()
                    .map_err(|_| encode("PKCS#8 private key"))?;
                let spki: PublicKeyX509Der<'static> = pair
                    .public_key()
                    .as_der()
                    .map_err(|_| encode("SubjectPublicKeyInfo"))?;
                Ok(Self::asymmetric(key_type, der.as_ref(), spki.as_ref()))
            }
            (None, None) => {
                if bytes.len() != AES256_KEY_LEN {
                    return Err(MaterialError::WrongLength {
                        key_type,
                        expected: AES256_KEY_LEN,
                        actual: bytes.len(),
                    });
                }
                Ok(Self {
                    key_type,
                    secret: bytes,
                    public_der: None,
                })
            }
        }
    }

    /// The key type this material was validated for.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The secret bytes: what storage persists and what the providers wrap.
    pub fn as_bytes(&self) -> &[u8] {
        &self.secret
    }

    /// The SubjectPublicKeyInfo DER, or `None` for AES.
    pub fn public_key_der(&self) -> Option<Vec<u8>> {
        self.public_der.clone()
    }

    /// The public key as PEM `PUBLIC KEY`, byte-identical to Go's
    /// `pem.EncodeToMemory` (64-column lines, trailing newline), because
    /// that is what Vault returns in `versions.N.public_key` on key read.
    pub fn public_key_pem(&self) -> Option<String> {
        self.public_der
            .as_deref()
            .map(|der| pem_encode("PUBLIC KEY", der))
    }

    /// A fingerprint that identifies the key without revealing it, so that
    /// an operator can check a provider's copy independently:
    /// - asymmetric keys: `sha256:<hex>`, the SHA-256 of the
    ///   SubjectPublicKeyInfo DER (`openssl pkey -pubin -outform DER |
    ///   openssl dgst -sha256` of the version's `public_key`);
    /// - AES: `kcv:<hex>`, the key check value: the first 3 bytes of the
    ///   AES-ECB encryption of a zero block under the key, as HSMs report it
    ///   in `CKA_CHECK_VALUE`.
    pub fn fingerprint(&self) -> String {
        match &self.public_der {
            Some(spki) => spki_fingerprint(spki),
            None => {
                use aes::cipher::{BlockEncrypt, KeyInit};
                let cipher = aes::Aes256::new(self.secret.as_slice().into());
                let mut block = aes::Block::default();
                cipher.encrypt_block(&mut block);
                check_value_fingerprint(&block[..3])
            }
        }
    }

    /// The private key as a JWK, for Azure's non-HSM import (key-transfer
    /// reference §3.4), which takes the key in the clear over TLS.
    ///
    /// RSA integers use the minimal big-endian encoding RFC 7518 requires;
    /// EC coordinates and `d` use the curve's fixed field length. AES gives
    /// an `oct` JWK, which Azure accepts only on Managed HSM; whether to
    /// send it is the provider's decision.
    pub fn private_jwk(&self) -> Result<PrivateJwk, MaterialError> {
        let key_type = self.key_type;
        let encode = |what| MaterialError::Encode { key_type, what };
        match (key_type.rsa_bits(), key_type.ec_curve()) {
            (Some(_), _) => {
                // The stored PKCS#8 already holds every JWK member, and
                // AWS-LC's RSA_check_key verified the CRT values on load, so
                // read them out rather than recompute with bignum code.
                let info = rsa::pkcs8::PrivateKeyInfo::try_from(self.secret.as_slice())
                    .map_err(|_| encode("PKCS#8 structure"))?;
                let key = rsa::pkcs1::RsaPrivateKey::try_from(info.private_key)
                    .map_err(|_| encode("RSAPrivateKey structure"))?;
                if key.other_prime_infos.is_some() {
                    return Err(encode("multi-prime RSA key as JWK"));
                }
                Ok(PrivateJwk::Rsa(RsaPrivateJwk {
                    n: b64url(key.modulus.as_bytes()),
                    e: b64url(key.public_exponent.as_bytes()),
                    d: b64url(key.private_exponent.as_bytes()),
                    p: b64url(key.prime1.as_bytes()),
                    q: b64url(key.prime2.as_bytes()),
                    dp: b64url(key.exponent1.as_bytes()),
                    dq: b64url(key.exponent2.as_bytes()),
                    qi: b64url(key.coefficient.as_bytes()),
                }))
            }
            (None, Some(curve)) => {
                let len = curve.coordinate_len();
                let pair = EcdsaKeyPair::from_pkcs8(ecdsa_alg(curve), &self.secret)
                    .map_err(|_| encode("EC private key"))?;
                // Uncompressed SEC1 point: 0x04 || X || Y, each `len` bytes.
                let point = pair.public_key().as_ref();
                if point.len() != 1 + 2 * len || point.first() != Some(&0x04) {
                    return Err(encode("uncompressed public point"));
                }
                let scalar: EcPrivateKeyBin<'static> = pair
                    .private_key()
                    .as_be_bytes()
                    .map_err(|_| encode("private scalar"))?;
                let d = left_pad(scalar.as_ref(), len).ok_or_else(|| encode("private scalar"))?;
                Ok(PrivateJwk::Ec(EcPrivateJwk {
                    crv: curve.jwk_name(),
                    x: b64url(&point[1..1 + len]),
                    y: b64url(&point[1 + len..]),
                    d: b64url(&d),
                }))
            }
            (None, None) => Ok(PrivateJwk::Oct(OctJwk {
                k: b64url(&self.secret),
            })),
        }
    }
}

/// Redacted: shows the type and the public key, never the secret.
impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("key_type", &self.key_type)
            .field(
                "secret",
                &format_args!("<redacted {} bytes>", self.secret.len()),
            )
            .finish_non_exhaustive()
    }
}

/// A private JWK (RFC 7517/7518), serialised with `kty` as the tag, as in
/// the `key` object of Azure's import-key request.
#[derive(Serialize)]
#[serde(tag = "kty")]
pub enum PrivateJwk {
    /// `"kty": "RSA"`.
    #[serde(rename = "RSA")]
    Rsa(RsaPrivateJwk),
    /// `"kty": "EC"`.
    #[serde(rename = "EC")]
    Ec(EcPrivateJwk),
    /// `"kty": "oct"`.
    #[serde(rename = "oct")]
    Oct(OctJwk),
}

impl PrivateJwk {
    /// The `kty` value.
    pub fn kty(&self) -> &'static str {
        match self {
            Self::Rsa(_) => "RSA",
            Self::Ec(_) => "EC",
            Self::Oct(_) => "oct",
        }
    }
}

/// Redacted: the members are secrets.
impl fmt::Debug for PrivateJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateJwk")
            .field("kty", &self.kty())
            .finish_non_exhaustive()
    }
}

/// RSA private JWK members, each base64url (no padding) of the minimal
/// big-endian unsigned integer. `p`/`q` keep the PKCS#1 order
/// (`qi` = q⁻¹ mod p).
#[derive(Serialize, Zeroize, ZeroizeOnDrop)]
pub struct RsaPrivateJwk {
    /// Modulus.
    pub n: String,
    /// Public exponent.
    pub e: String,
    /// Private exponent.
    pub d: String,
    /// First prime factor.
    pub p: String,
    /// Second prime factor.
    pub q: String,
    /// d mod (p − 1).
    pub dp: String,
    /// d mod (q − 1).
    pub dq: String,
    /// q⁻¹ mod p.
    pub qi: String,
}

/// Redacted: the members are secrets.
impl fmt::Debug for RsaPrivateJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPrivateJwk").finish_non_exhaustive()
    }
}

/// EC private JWK members; `x`, `y` and `d` are base64url (no padding) of
/// fixed-length big-endian field elements.
#[derive(Serialize, Zeroize, ZeroizeOnDrop)]
pub struct EcPrivateJwk {
    /// `P-256`, `P-384` or `P-521`.
    #[zeroize(skip)]
    pub crv: &'static str,
    /// Public point X coordinate.
    pub x: String,
    /// Public point Y coordinate.
    pub y: String,
    /// Private scalar.
    pub d: String,
}

/// Redacted: `d` is secret.
impl fmt::Debug for EcPrivateJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcPrivateJwk")
            .field("crv", &self.crv)
            .finish_non_exhaustive()
    }
}

/// Symmetric JWK: `k` is base64url (no padding) of the raw key.
#[derive(Serialize, Zeroize, ZeroizeOnDrop)]
pub struct OctJwk {
    /// The key.
    pub k: String,
}

/// Redacted: `k` is secret.
impl fmt::Debug for OctJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OctJwk").finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of a SubjectPublicKeyInfo DER: the fingerprint of an
/// asymmetric key, Vault's or a provider's copy.
pub fn spki_fingerprint(spki: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex(&sha2::Sha256::digest(spki)))
}

/// `kcv:<hex>` of a key check value: the fingerprint of an AES key.
pub fn check_value_fingerprint(kcv: &[u8]) -> String {
    format!("kcv:{}", hex(kcv))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ecdsa_alg(curve: EcCurve) -> &'static EcdsaSigningAlgorithm {
    match curve {
        EcCurve::P256 => &ECDSA_P256_SHA256_ASN1_SIGNING,
        EcCurve::P384 => &ECDSA_P384_SHA384_ASN1_SIGNING,
        EcCurve::P521 => &ECDSA_P521_SHA512_ASN1_SIGNING,
    }
}

/// Bit length of a big-endian unsigned integer without leading zero bytes.
fn bit_length(be: &[u8]) -> usize {
    match be.first() {
        Some(&top) => be.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

/// Left-pads `be` with zeros to `len` bytes; `None` if it is longer.
fn left_pad(be: &[u8], len: usize) -> Option<Zeroizing<Vec<u8>>> {
    let pad = len.checked_sub(be.len())?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    out[pad..].copy_from_slice(be);
    Some(out)
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// PEM exactly as Go's `encoding/pem` writes it without headers.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 output is ASCII, so slicing at any byte offset is a char boundary.
    let mut rest = body.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Shared by the tests of this module and of `wrap`: one generated key per
/// type (RSA-4096 generation is slow in debug builds), temp dirs and the
/// openssl CLI.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{KeyMaterial, KeyType};

    static SAMPLES: [OnceLock<KeyMaterial>; KeyType::ALL.len()] =
        [const { OnceLock::new() }; KeyType::ALL.len()];

    /// A generated key of `key_type`, shared across tests.
    pub(crate) fn sample(key_type: KeyType) -> &'static KeyMaterial {
        let idx = KeyType::ALL
            .iter()
            .position(|t| *t == key_type)
            .expect("type in ALL");
        SAMPLES[idx].get_or_init(|| {
            KeyMaterial::generate(key_type)
                .unwrap_or_else(|e| panic!("generating {key_type} failed: {e}"))
        })
    }

    /// A private (0700) temporary directory, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir().join(format!(
                "keymgmt-test-{}-{nanos}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(&path).expect("create temp dir");
            Self(path)
        }

        pub(crate) fn path(&self) -> &std::path::Path {
            &self.0
        }

        pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, bytes).expect("write temp file");
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs the openssl CLI and returns stdout. Panics (failing the test)
    /// if openssl is missing or exits non-zero: these cross-checks must not
    /// silently pass on a machine without it.
    pub(crate) fn openssl(args: &[&str]) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("the openssl CLI is required for this cross-check but could not run: {e}")
            });
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{TempDir, openssl, sample};
    use super::*;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, ECDSA_P521_SHA512_ASN1, RSA_PKCS1_SHA256,
        UnparsedPublicKey,
    };
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
    use sha2::{Digest, Sha256};

    fn unb64url(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(s)
            .expect("base64url without padding")
    }

    #[test]
    fn fingerprints_match_openssl() {
        let dir = TempDir::new();
        for key_type in KeyType::ALL {
            let material = sample(key_type);
            let ours = material.fingerprint();
            let theirs = match material.public_key_pem() {
                Some(pem) => {
                    let pem = dir.write("pub.pem", pem.as_bytes());
                    let der = pem.with_extension("der");
                    let (pem, der) = (pem.to_str().unwrap(), der.to_str().unwrap());
                    openssl(&["pkey", "-pubin", "-in", pem, "-outform", "DER", "-out", der]);
                    let digest = openssl(&["dgst", "-sha256", "-binary", der]);
                    format!("sha256:{}", hex(&digest))
                }
                None => {
                    let zero = dir.write("zero.bin", &[0u8; 16]);
                    let key_hex = hex(material.as_bytes());
                    let block = openssl(&[
                        "enc",
                        "-aes-256-ecb",
                        "-K",
                        &key_hex,
                        "-nopad",
                        "-in",
                        zero.to_str().unwrap(),
                    ]);
                    format!("kcv:{}", hex(&block[..3]))
                }
            };
            assert_eq!(ours, theirs, "{key_type}");
        }
    }

    /// Independent PEM decoding for the tests: checks Go's layout strictly.
    fn pem_body(pem: &str) -> Vec<u8> {
        let inner = pem
            .strip_prefix("-----BEGIN PUBLIC KEY-----\n")
            .and_then(|s| s.strip_suffix("-----END PUBLIC KEY-----\n"))
            .expect("PUBLIC KEY armour with trailing newline");
        let lines: Vec<&str> = inner.lines().collect();
        let (last, full) = lines.split_last().expect("non-empty body");
        assert!(
            full.iter().all(|l| l.len() == 64),
            "body lines must be 64 chars"
        );
        assert!(!last.is_empty() && last.len() <= 64);
        assert!(inner.ends_with('\n'));
        STANDARD.decode(lines.concat()).expect("base64 body")
    }

    #[test]
    fn every_type_generates_and_reloads_unchanged() {
        for t in KeyType::ALL {
            let m = sample(t);
            assert_eq!(m.key_type(), t);
            assert_eq!(m.public_key_der().is_some(), t.is_asymmetric());
            assert_eq!(m.public_key_pem().is_some(), t.is_asymmetric());
            let again = KeyMaterial::from_bytes(t, Zeroizing::new(m.as_bytes().to_vec()))
                .unwrap_or_else(|e| panic!("{t}: reload failed: {e}"));
            assert_eq!(again.as_bytes(), m.as_bytes(), "{t}: not canonical");
            assert_eq!(again.public_key_der(), m.public_key_der());
        }
    }

    #[test]
    fn aes_material_is_32_random_bytes() {
        let a = sample(KeyType::Aes256Gcm96);
        let b = KeyMaterial::generate(KeyType::Aes256Gcm96).unwrap();
        assert_eq!(a.as_bytes().len(), 32);
        assert_eq!(b.as_bytes().len(), 32);
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), [0u8; 32]);
    }

    #[test]
    fn rsa_keys_have_the_requested_size_and_f4() {
        for t in [KeyType::Rsa2048, KeyType::Rsa3072, KeyType::Rsa4096] {
            let der = sample(t).public_key_der().unwrap();
            let public = RsaPublicKey::from_public_key_der(&der).unwrap();
            assert_eq!(
                Some(public.n().bits()),
                t.rsa_bits().map(|b| b.bits()),
                "{t}"
            );
            assert_eq!(public.e(), &BigUint::from(65537u32), "{t}");
            // The stored form is PKCS#8 v1: version INTEGER 0, rsaEncryption.
            let info = rsa::pkcs8::PrivateKeyInfo::try_from(sample(t).as_bytes()).unwrap();
            assert!(info.public_key.is_none(), "{t}: must be v1, not v2");
            assert_eq!(info.algorithm.oid.to_string(), "1.2.840.113549.1.1.1");
        }
    }

    #[test]
    fn ec_keys_are_pkcs8_v1_on_the_named_curve() {
        for t in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::EcdsaP521] {
            let curve = t.ec_curve().unwrap();
            let info = rsa::pkcs8::PrivateKeyInfo::try_from(sample(t).as_bytes()).unwrap();
            assert!(info.public_key.is_none(), "{t}: must be v1, not v2");
            assert_eq!(info.algorithm.oid.to_string(), "1.2.840.10045.2.1");
            let param = info.algorithm.parameters_oid().unwrap();
            assert_eq!(param.to_string(), curve.oid(), "{t}");
        }
    }

    #[test]
    fn rsa_pem_verifies_signatures_made_with_the_private_key() {
        let message = b"keymgmt public key check";
        for t in [KeyType::Rsa2048, KeyType::Rsa3072, KeyType::Rsa4096] {
            let m = sample(t);
            let pair = RsaKeyPair::from_pkcs8(m.as_bytes()).unwrap();
            let mut sig = vec![0u8; pair.public_modulus_len()];
            pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
                .unwrap();
            // Verify with a different implementation (RustCrypto rsa) fed
            // only the PEM text.
            let pem = m.public_key_pem().unwrap();
            let public = RsaPublicKey::from_public_key_der(&pem_body(&pem)).unwrap();
            let digest = Sha256::digest(message);
            public
                .verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, &sig)
                .unwrap_or_else(|e| panic!("{t}: signature did not verify: {e}"));
            let mut bad = sig.clone();
            bad[10] ^= 1;
            assert!(
                public
                    .verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, &bad)
                    .is_err()
            );
        }
    }

    #[test]
    fn ec_pem_verifies_signatures_made_with_the_private_key() {
        let message = b"keymgmt public key check";
        for (t, verify_alg) in [
            (KeyType::EcdsaP256, &ECDSA_P256_SHA256_ASN1),
            (KeyType::EcdsaP384, &ECDSA_P384_SHA384_ASN1),
            (KeyType::EcdsaP521, &ECDSA_P521_SHA512_ASN1),
        ] {
            let m = sample(t);
            let pair =
                EcdsaKeyPair::from_pkcs8(ecdsa_alg(t.ec_curve().unwrap()), m.as_bytes()).unwrap();
            let sig = pair.sign(&SystemRandom::new(), message).unwrap();
            let pem = m.public_key_pem().unwrap();
            let spki = pem_body(&pem);
            // The SPKI ends with the uncompressed point; verify against the
            // raw point cut out of the PEM, so the check covers the PEM bytes.
            let len = t.ec_curve().unwrap().coordinate_len();
            let point = &spki[spki.len() - (1 + 2 * len)..];
            assert_eq!(point[0], 0x04);
            let public = UnparsedPublicKey::new(verify_alg, point);
            public
                .verify(message, sig.as_ref())
                .unwrap_or_else(|_| panic!("{t}: signature did not verify"));
            assert!(public.verify(b"other message", sig.as_ref()).is_err());
        }
    }

    #[test]
    fn public_pem_matches_openssl_output() {
        let dir = TempDir::new();
        for t in KeyType::ALL.into_iter().filter(|t| t.is_asymmetric()) {
            let m = sample(t);
            let key = dir.write(&format!("{t}.der"), m.as_bytes());
            let key = key.to_str().unwrap();
            openssl(&["pkey", "-inform", "DER", "-in", key, "-check", "-noout"]);
            let ours = m.public_key_pem().unwrap();
            let theirs = openssl(&["pkey", "-inform", "DER", "-in", key, "-pubout"]);
            assert_eq!(ours, String::from_utf8(theirs).unwrap(), "{t}");
        }
    }

    #[test]
    fn from_bytes_rejects_wrong_type_and_garbage() {
        let load = |t, b: &[u8]| KeyMaterial::from_bytes(t, Zeroizing::new(b.to_vec()));
        let rsa2048 = sample(KeyType::Rsa2048).as_bytes();
        let p256 = sample(KeyType::EcdsaP256).as_bytes();
        let p384 = sample(KeyType::EcdsaP384).as_bytes();
        assert!(matches!(
            load(KeyType::Rsa3072, rsa2048),
            Err(MaterialError::WrongModulusSize {
                actual_bits: 2048,
                ..
            })
        ));
        assert!(matches!(
            load(KeyType::Rsa4096, rsa2048),
            Err(MaterialError::WrongModulusSize { .. })
        ));
        for (t, bytes) in [
            (KeyType::EcdsaP256, rsa2048),
            (KeyType::EcdsaP384, p256),
            (KeyType::EcdsaP521, p384),
            (KeyType::EcdsaP256, p384),
            (KeyType::Rsa2048, p256),
        ] {
            assert!(
                matches!(load(t, bytes), Err(MaterialError::Rejected { .. })),
                "{t} accepted foreign material"
            );
        }
        let garbage = [0x30u8, 0x03, 0x02, 0x01, 0x00];
        for t in KeyType::ALL.into_iter().filter(|t| t.is_asymmetric()) {
            assert!(load(t, &garbage).is_err(), "{t}");
            assert!(load(t, &[]).is_err(), "{t}");
            assert!(load(t, &rsa2048[..rsa2048.len() - 1]).is_err(), "{t}");
        }
        let mut trailing = rsa2048.to_vec();
        trailing.push(0);
        assert!(
            load(KeyType::Rsa2048, &trailing).is_err(),
            "trailing data accepted"
        );
        // A P-256 key whose scalar no longer matches its embedded public point.
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, p256).unwrap();
        let scalar: EcPrivateKeyBin<'static> = pair.private_key().as_be_bytes().unwrap();
        let scalar_at = p256
            .windows(32)
            .position(|w| w == scalar.as_ref())
            .expect("scalar inside the PKCS#8");
        let mut tampered = p256.to_vec();
        tampered[scalar_at + 31] ^= 0x01;
        assert!(
            load(KeyType::EcdsaP256, &tampered).is_err(),
            "inconsistent EC key accepted"
        );
        assert!(matches!(
            load(KeyType::Aes256Gcm96, &[7u8; 31]),
            Err(MaterialError::WrongLength {
                expected: 32,
                actual: 31,
                ..
            })
        ));
        assert!(load(KeyType::Aes256Gcm96, &[7u8; 33]).is_err());
        assert!(load(KeyType::Aes256Gcm96, p256).is_err());
        let msg = load(KeyType::Rsa3072, rsa2048).unwrap_err().to_string();
        assert_eq!(msg, "rsa-3072 key material has a 2048-bit modulus");
    }

    #[test]
    fn rsa_jwk_components_reconstruct_the_same_key() {
        for t in [KeyType::Rsa2048, KeyType::Rsa3072, KeyType::Rsa4096] {
            let m = sample(t);
            let PrivateJwk::Rsa(jwk) = m.private_jwk().unwrap() else {
                panic!("{t}: not an RSA JWK");
            };
            let int = |s: &str| {
                let bytes = unb64url(s);
                assert!(bytes.first().is_some_and(|b| *b != 0), "{t}: not minimal");
                BigUint::from_bytes_be(&bytes)
            };
            let (n, e, d) = (int(&jwk.n), int(&jwk.e), int(&jwk.d));
            let (p, q) = (int(&jwk.p), int(&jwk.q));
            let (dp, dq, qi) = (int(&jwk.dp), int(&jwk.dq), int(&jwk.qi));
            let one = BigUint::from(1u8);
            let (p1, q1) = (&p - &one, &q - &one);
            assert_eq!(&p * &q, n, "{t}: n != p*q");
            // e·d ≡ 1 mod (p−1) and mod (q−1) ⇔ e·d ≡ 1 mod lcm(p−1, q−1).
            assert_eq!((&e * &d) % &p1, one, "{t}");
            assert_eq!((&e * &d) % &q1, one, "{t}");
            assert_eq!(&d % &p1, dp, "{t}: dp");
            assert_eq!(&d % &q1, dq, "{t}: dq");
            assert_eq!((&qi * &q) % &p, one, "{t}: qi");
            // Same public key as the one we publish.
            let published =
                RsaPublicKey::from_public_key_der(&m.public_key_der().unwrap()).unwrap();
            assert_eq!(published.n(), &n);
            assert_eq!(published.e(), &e);
            let rebuilt = RsaPrivateKey::from_components(n, e, d, vec![p, q]).unwrap();
            rebuilt.validate().unwrap();
            assert_eq!(rebuilt.crt_coefficient(), Some(qi), "{t}");
            assert_eq!(rebuilt.primes().len(), 2);
        }
        // One private operation with the rebuilt key, verified by AWS-LC
        // against the published key (2048 only: the rsa crate is slow in
        // debug builds).
        let m = sample(KeyType::Rsa2048);
        let PrivateJwk::Rsa(jwk) = m.private_jwk().unwrap() else {
            panic!("not an RSA JWK");
        };
        let int = |s: &str| BigUint::from_bytes_be(&unb64url(s));
        let rebuilt = RsaPrivateKey::from_components(
            int(&jwk.n),
            int(&jwk.e),
            int(&jwk.d),
            vec![int(&jwk.p), int(&jwk.q)],
        )
        .unwrap();
        let message = b"jwk round trip";
        let sig = rebuilt
            .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message))
            .unwrap();
        let spki = m.public_key_der().unwrap();
        let public_pkcs1 = rsa::pkcs8::SubjectPublicKeyInfoRef::try_from(spki.as_slice())
            .unwrap()
            .subject_public_key
            .raw_bytes()
            .to_vec();
        UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            public_pkcs1,
        )
        .verify(message, &sig)
        .unwrap();
    }

    #[test]
    fn ec_jwk_components_match_the_public_point_and_rebuild_the_key() {
        for t in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::EcdsaP521] {
            let curve = t.ec_curve().unwrap();
            let len = curve.coordinate_len();
            let m = sample(t);
            let PrivateJwk::Ec(jwk) = m.private_jwk().unwrap() else {
                panic!("{t}: not an EC JWK");
            };
            assert_eq!(jwk.crv, curve.jwk_name());
            let (x, y, d) = (unb64url(&jwk.x), unb64url(&jwk.y), unb64url(&jwk.d));
            assert_eq!(
                (x.len(), y.len(), d.len()),
                (len, len, len),
                "{t}: not fixed-length"
            );
            let mut point = vec![0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let spki = m.public_key_der().unwrap();
            assert!(
                spki.ends_with(&point),
                "{t}: x,y differ from the SPKI point"
            );
            // AWS-LC checks that d·G equals the given point.
            let rebuilt =
                EcdsaKeyPair::from_private_key_and_public_key(ecdsa_alg(curve), &d, &point)
                    .unwrap_or_else(|e| panic!("{t}: d does not match x,y: {e}"));
            let mut wrong_d = d.clone();
            wrong_d[len - 1] ^= 1;
            assert!(
                EcdsaKeyPair::from_private_key_and_public_key(ecdsa_alg(curve), &wrong_d, &point)
                    .is_err(),
                "{t}: consistency check is not effective"
            );
            let sig = rebuilt.sign(&SystemRandom::new(), b"jwk").unwrap();
            let verify_alg = match curve {
                EcCurve::P256 => &ECDSA_P256_SHA256_ASN1,
                EcCurve::P384 => &ECDSA_P384_SHA384_ASN1,
                EcCurve::P521 => &ECDSA_P521_SHA512_ASN1,
            };
            UnparsedPublicKey::new(verify_alg, &point)
                .verify(b"jwk", sig.as_ref())
                .unwrap();
        }
    }

    #[test]
    fn jwk_serialises_with_exactly_the_jwk_members() {
        let keys = |t| {
            let v = serde_json::to_value(sample(t).private_jwk().unwrap()).unwrap();
            let obj = v.as_object().unwrap().clone();
            for (k, val) in &obj {
                let s = val.as_str().unwrap();
                assert!(
                    !s.contains(['=', '+', '/']),
                    "{t}: {k} is not base64url without padding"
                );
            }
            let mut names: Vec<String> = obj.keys().cloned().collect();
            names.sort();
            (obj["kty"].as_str().unwrap().to_owned(), names)
        };
        assert_eq!(
            keys(KeyType::Rsa2048),
            (
                "RSA".into(),
                ["d", "dp", "dq", "e", "kty", "n", "p", "q", "qi"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(
            keys(KeyType::EcdsaP384),
            (
                "EC".into(),
                ["crv", "d", "kty", "x", "y"].map(String::from).to_vec()
            )
        );
        assert_eq!(
            keys(KeyType::Aes256Gcm96),
            ("oct".into(), ["k", "kty"].map(String::from).to_vec())
        );
        let v = serde_json::to_value(sample(KeyType::EcdsaP521).private_jwk().unwrap()).unwrap();
        assert_eq!(v["crv"], "P-521");
        let v = serde_json::to_value(sample(KeyType::Aes256Gcm96).private_jwk().unwrap()).unwrap();
        assert_eq!(
            unb64url(v["k"].as_str().unwrap()),
            sample(KeyType::Aes256Gcm96).as_bytes()
        );
    }

    #[test]
    fn debug_output_never_contains_secrets() {
        for t in KeyType::ALL {
            let m = sample(t);
            let jwk = m.private_jwk().unwrap();
            let text = format!("{m:?} {m:#?} {jwk:?} {jwk:#?}");
            assert!(text.contains("redacted"), "{text}");
            let secret_d = match &jwk {
                PrivateJwk::Rsa(j) => j.d.clone(),
                PrivateJwk::Ec(j) => j.d.clone(),
                PrivateJwk::Oct(j) => j.k.clone(),
            };
            assert!(!text.contains(&secret_d[..16]), "{t}: secret in Debug");
            let hex: String = m.as_bytes()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert!(!text.contains(&hex));
            let dec = format!("{:?}", &m.as_bytes()[..4]);
            assert!(
                !text.contains(dec.trim_matches(['[', ']'])),
                "{t}: bytes in Debug"
            );
        }
    }

    #[test]
    fn pem_encoding_matches_go_layout() {
        assert_eq!(
            pem_encode("PUBLIC KEY", &[0u8; 48]),
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                "A".repeat(64)
            )
        );
        let two = pem_encode("PUBLIC KEY", &[0xffu8; 49]);
        let lines: Vec<&str> = two.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2], "/w==");
    }
}
