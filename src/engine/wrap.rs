//! Import-wrapping primitives shared by every KMS provider.
//!
//! Azure BYOK, AWS `ImportKeyMaterial` and GCP import jobs all accept the
//! same two constructions (key-transfer reference §1): direct RSAES-OAEP,
//! and `CKM_RSA_AES_KEY_WRAP` (RSA-OAEP of an ephemeral AES-256 key followed
//! by AES-KWP of the material). Only the OAEP hash and the envelope differ,
//! so there is exactly one implementation here and the providers choose
//! parameters.
//!
//! Wrapping uses only the cloud's *public* key, so the rsa crate's
//! private-key timing issue (RUSTSEC-2023-0071) does not apply.

use aes::cipher::consts::U16;
use aes::cipher::{BlockCipher, BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit};
use aes_kw::Kek;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, RsaPublicKey};
use zeroize::Zeroizing;

/// Smallest RSA wrapping key accepted. Every cloud offers 2048 bits or
/// more, so anything smaller means a misconfiguration or a tampered
/// response, and would weaken the protection of the material in transit.
pub const MIN_KEK_BITS: usize = 2048;

/// Length of the ephemeral AES key in `CKM_RSA_AES_KEY_WRAP`: GCP mandates
/// AES-256 and the AWS and Azure examples use it.
pub const EPHEMERAL_KEY_LEN: usize = 32;

/// Largest plaintext RFC 5649 can wrap (the MLI is a 32-bit length).
const KWP_MAX_LEN: usize = u32::MAX as usize;

/// The OAEP hash; MGF1 always uses the same hash and the label is empty,
/// as all three clouds specify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OaepHash {
    /// SHA-1: Azure BYOK, AWS `*_SHA_1`, GCP `*_SHA1_*`.
    Sha1,
    /// SHA-256: AWS `*_SHA_256`, GCP `*_SHA256*`.
    Sha256,
}

impl OaepHash {
    /// Digest length in bytes (hLen in RFC 8017).
    pub const fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    /// The largest plaintext RSAES-OAEP can carry under a key whose modulus
    /// is `modulus_len` bytes: k − 2·hLen − 2.
    pub const fn max_plaintext_len(self, modulus_len: usize) -> usize {
        modulus_len.saturating_sub(2 * self.output_len() + 2)
    }

    fn padding(self) -> Oaep {
        match self {
            Self::Sha1 => Oaep::new::<sha1::Sha1>(),
            Self::Sha256 => Oaep::new::<sha2::Sha256>(),
        }
    }
}

/// Why wrapping, or parsing a wrapping key, failed. Carries no secrets.
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    /// RFC 5649 defines no wrapping of zero bytes.
    #[error("cannot wrap an empty plaintext")]
    EmptyPlaintext,
    /// The plaintext exceeds what the construction can carry.
    #[error("plaintext of {len} bytes exceeds the {max}-byte limit of {what}")]
    PlaintextTooLong {
        /// Given length.
        len: usize,
        /// The limit.
        max: usize,
        /// Which construction imposed it.
        what: &'static str,
    },
    /// AES-KWP failed.
    #[error("AES key wrap with padding failed: {0}")]
    Kwp(aes_kw::Error),
    /// RSA-OAEP encryption failed.
    #[error("RSA-OAEP encryption failed: {0}")]
    Oaep(rsa::Error),
    /// The wrapping key supplied by the cloud is malformed or unsupported.
    #[error("invalid RSA wrapping key: {0}")]
    InvalidPublicKey(String),
    /// The wrapping key is smaller than [`MIN_KEK_BITS`].
    #[error("RSA wrapping key has {bits} bits; at least {MIN_KEK_BITS} are required")]
    WeakKek {
        /// The key's modulus size.
        bits: usize,
    },
    /// The system RNG failed while making the ephemeral key.
    #[error("generating the ephemeral wrapping key failed")]
    Random,
}

/// AES-256 key wrap with padding (RFC 5649, NIST SP 800-38F KWP).
///
/// Output is the padded length plus 8 bytes. The key schedule is zeroized
/// on drop (the `aes` crate's `zeroize` feature is enabled for this).
pub fn kwp_wrap(kek: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, WrapError> {
    // `new` borrows the key; `From<[u8; 32]>` would leave a stack copy.
    let kek = Kek::<aes::Aes256>::new(kek.into());
    kwp_wrap_with(&kek, plaintext)
}

/// KWP under any AES key size; public API is AES-256 only, but the RFC 5649
/// test vectors use AES-192, so the tests need this seam.
fn kwp_wrap_with<A>(kek: &Kek<A>, plaintext: &[u8]) -> Result<Vec<u8>, WrapError>
where
    A: KeyInit + BlockCipher + BlockSizeUser<BlockSize = U16> + BlockEncrypt + BlockDecrypt,
{
    if plaintext.is_empty() {
        return Err(WrapError::EmptyPlaintext);
    }
    if plaintext.len() > KWP_MAX_LEN {
        return Err(WrapError::PlaintextTooLong {
            len: plaintext.len(),
            max: KWP_MAX_LEN,
            what: "AES-KWP",
        });
    }
    kek.wrap_with_padding_vec(plaintext).map_err(WrapError::Kwp)
}

/// RSAES-OAEP (RFC 8017) with MGF1 over the same hash and an empty label.
///
/// The length limit is checked up front so callers get a precise error
/// (e.g. RSA private keys can never be wrapped this way).
pub fn rsa_oaep_encrypt(
    public: &RsaPublicKey,
    hash: OaepHash,
    plaintext: &[u8],
) -> Result<Vec<u8>, WrapError> {
    let max = hash.max_plaintext_len(public.size());
    if plaintext.len() > max {
        return Err(WrapError::PlaintextTooLong {
            len: plaintext.len(),
            max,
            what: "RSA-OAEP under this key",
        });
    }
    public
        .encrypt(&mut rand::rngs::OsRng, hash.padding(), plaintext)
        .map_err(WrapError::Oaep)
}

/// `CKM_RSA_AES_KEY_WRAP`: `RSA-OAEP(hash)(k) || KWP(k, plaintext)` for a
/// fresh random AES-256 key `k`, RSA part first.
///
/// `k` lives only in a zeroizing buffer and is wiped before returning.
pub fn rsa_aes_key_wrap(
    public: &RsaPublicKey,
    hash: OaepHash,
    plaintext: &[u8],
) -> Result<Vec<u8>, WrapError> {
    if plaintext.is_empty() {
        return Err(WrapError::EmptyPlaintext);
    }
    let mut ephemeral = Zeroizing::new([0u8; EPHEMERAL_KEY_LEN]);
    SystemRandom::new()
        .fill(ephemeral.as_mut_slice())
        .map_err(|_| WrapError::Random)?;
    let mut out = rsa_oaep_encrypt(public, hash, ephemeral.as_slice())?;
    let wrapped = kwp_wrap(&ephemeral, plaintext)?;
    out.extend_from_slice(&wrapped);
    Ok(out)
}

/// Builds a wrapping key from JWK `n` and `e` (big-endian bytes, already
/// base64url-decoded), as Azure returns its KEK.
pub fn rsa_public_from_jwk_components(n: &[u8], e: &[u8]) -> Result<RsaPublicKey, WrapError> {
    let public = RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e))
        .map_err(|err| WrapError::InvalidPublicKey(err.to_string()))?;
    check_kek_size(public)
}

/// Like [`rsa_public_from_jwk_components`], taking the JWK's base64url
/// strings; padding is tolerated since JOSE forbids but some encoders emit it.
pub fn rsa_public_from_jwk_base64url(n: &str, e: &str) -> Result<RsaPublicKey, WrapError> {
    const B64URL: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let decode = |what: &str, s: &str| {
        B64URL.decode(s).map_err(|err| {
            WrapError::InvalidPublicKey(format!("JWK {what} is not base64url: {err}"))
        })
    };
    rsa_public_from_jwk_components(&decode("n", n)?, &decode("e", e)?)
}

/// Parses an RSA SubjectPublicKeyInfo DER, as AWS's
/// `GetParametersForImport` returns it.
pub fn rsa_public_from_spki_der(der: &[u8]) -> Result<RsaPublicKey, WrapError> {
    let public = RsaPublicKey::from_public_key_der(der)
        .map_err(|err| WrapError::InvalidPublicKey(err.to_string()))?;
    check_kek_size(public)
}

/// Parses a PEM `PUBLIC KEY` (SPKI), as a GCP import job returns it.
///
/// Decoding is deliberately lenient about layout (CRLF, line length,
/// surrounding text) since only the DER inside matters.
pub fn rsa_public_from_spki_pem(pem: &str) -> Result<RsaPublicKey, WrapError> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let missing = || WrapError::InvalidPublicKey("no PEM PUBLIC KEY block".to_owned());
    let start = pem.find(BEGIN).ok_or_else(missing)? + BEGIN.len();
    let len = pem[start..].find(END).ok_or_else(missing)?;
    let body: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(body)
        .map_err(|err| WrapError::InvalidPublicKey(format!("PEM body is not base64: {err}")))?;
    rsa_public_from_spki_der(&der)
}

fn check_kek_size(public: RsaPublicKey) -> Result<RsaPublicKey, WrapError> {
    let bits = public.n().bits();
    if bits < MIN_KEK_BITS {
        return Err(WrapError::WeakKek { bits });
    }
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::key_type::KeyType;
    use crate::engine::material::test_support::{TempDir, openssl, sample};

    /// RSA-OAEP decryption by the openssl CLI, with `md` for both the OAEP
    /// hash and MGF1, from a DER private key file.
    fn openssl_oaep_decrypt(key: &std::path::Path, input: &std::path::Path, md: &str) -> Vec<u8> {
        openssl(&[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            key.to_str().unwrap(),
            "-keyform",
            "DER",
            "-in",
            input.to_str().unwrap(),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &format!("rsa_oaep_md:{md}"),
            "-pkeyopt",
            &format!("rsa_mgf1_md:{md}"),
        ])
    }
    use aes_kw::{KekAes192, KekAes256};
    use aws_lc_rs::rsa::PrivateDecryptingKey;
    use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey};
    use rsa::RsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn to_hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn kek_public(t: KeyType) -> RsaPublicKey {
        rsa_public_from_spki_der(&sample(t).public_key_der().unwrap()).unwrap()
    }

    /// Decrypts the OAEP part with AWS-LC (an implementation independent of
    /// the rsa crate used for encryption).
    fn aws_lc_oaep_decrypt(t: KeyType, hash: OaepHash, ct: &[u8]) -> Vec<u8> {
        let key = PrivateDecryptingKey::from_pkcs8(sample(t).as_bytes()).unwrap();
        let key = OaepPrivateDecryptingKey::new(key).unwrap();
        let alg = match hash {
            OaepHash::Sha1 => &OAEP_SHA1_MGF1SHA1,
            OaepHash::Sha256 => &OAEP_SHA256_MGF1SHA256,
        };
        let mut out = vec![0u8; ct.len()];
        let pt = key.decrypt(alg, ct, &mut out, None).unwrap();
        pt.to_vec()
    }

    #[test]
    fn kwp_rfc5649_section6_vectors() {
        let kek = KekAes192::new(
            hex("5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8")
                .as_slice()
                .into(),
        );
        // §6, 20-octet key.
        assert_eq!(
            kwp_wrap_with(&kek, &hex("c37b7e6492584340 bed1220780894115 5068f738")).unwrap(),
            hex("138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a")
        );
        // §6, 7-octet key (the single-block path).
        assert_eq!(
            kwp_wrap_with(&kek, &hex("466f7250617369")).unwrap(),
            hex("afbeb0f07dfbf541 9200f2ccb50bb24f")
        );
    }

    #[test]
    fn kwp_aes256_known_answer() {
        // Produced by `openssl enc -id-aes256-wrap-pad -iv A65959A6`.
        let kek: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            kwp_wrap(&kek, b"abcdefghijklmnopqrstuvwxyz012345").unwrap(),
            hex("d65f5e838134628e8fbf78c0ed59e9c23b63ad6653a8f2cdfdf24c41af59306729bc563b2d1b68d0")
        );
    }

    #[test]
    fn kwp_aes256_matches_openssl_for_many_lengths() {
        let dir = TempDir::new();
        let mut kek = [0u8; 32];
        SystemRandom::new().fill(&mut kek).unwrap();
        for len in [1usize, 7, 8, 9, 15, 16, 17, 31, 32, 33, 121, 1217, 2374] {
            let mut pt = vec![0u8; len];
            SystemRandom::new().fill(&mut pt).unwrap();
            let input = dir.write("pt.bin", &pt);
            let theirs = openssl(&[
                "enc",
                "-id-aes256-wrap-pad",
                "-K",
                &to_hex(&kek),
                "-iv",
                "A65959A6",
                "-in",
                input.to_str().unwrap(),
            ]);
            let ours = kwp_wrap(&kek, &pt).unwrap();
            assert_eq!(ours, theirs, "length {len}");
            assert_eq!(ours.len(), len.div_ceil(8) * 8 + 8);
        }
    }

    #[test]
    fn kwp_rejects_empty_plaintext() {
        assert!(matches!(
            kwp_wrap(&[1u8; 32], &[]),
            Err(WrapError::EmptyPlaintext)
        ));
        assert!(matches!(
            rsa_aes_key_wrap(&kek_public(KeyType::Rsa2048), OaepHash::Sha1, &[]),
            Err(WrapError::EmptyPlaintext)
        ));
    }

    #[test]
    fn oaep_limits_follow_rfc8017() {
        assert_eq!(OaepHash::Sha1.max_plaintext_len(256), 214);
        assert_eq!(OaepHash::Sha256.max_plaintext_len(256), 190);
        assert_eq!(OaepHash::Sha256.max_plaintext_len(512), 446);
        let public = kek_public(KeyType::Rsa2048);
        for (hash, max) in [(OaepHash::Sha1, 214), (OaepHash::Sha256, 190)] {
            let ct = rsa_oaep_encrypt(&public, hash, &vec![0x5a; max]).unwrap();
            assert_eq!(ct.len(), 256);
            assert_eq!(
                aws_lc_oaep_decrypt(KeyType::Rsa2048, hash, &ct),
                vec![0x5a; max]
            );
            assert!(matches!(
                rsa_oaep_encrypt(&public, hash, &vec![0x5a; max + 1]),
                Err(WrapError::PlaintextTooLong { max: m, .. }) if m == max
            ));
        }
    }

    #[test]
    fn direct_oaep_of_aes_material_decrypts_with_openssl() {
        // AWS RSAES_OAEP_SHA_256 / GCP RSA_OAEP_*_SHA256 for symmetric keys.
        let dir = TempDir::new();
        let kek = dir.write("kek.der", sample(KeyType::Rsa3072).as_bytes());
        let material = sample(KeyType::Aes256Gcm96).as_bytes();
        for (hash, md) in [(OaepHash::Sha256, "sha256"), (OaepHash::Sha1, "sha1")] {
            let ct = rsa_oaep_encrypt(&kek_public(KeyType::Rsa3072), hash, material).unwrap();
            assert_eq!(ct.len(), 384);
            let ct_file = dir.write("ct.bin", &ct);
            let pt = openssl_oaep_decrypt(&kek, &ct_file, md);
            assert_eq!(pt, material, "{md}");
        }
    }

    #[test]
    fn rsa_aes_key_wrap_round_trips() {
        let payloads = [
            sample(KeyType::Aes256Gcm96).as_bytes(),
            sample(KeyType::EcdsaP521).as_bytes(),
            sample(KeyType::Rsa4096).as_bytes(),
        ];
        for kek_type in [KeyType::Rsa2048, KeyType::Rsa3072, KeyType::Rsa4096] {
            let public = kek_public(kek_type);
            let k = public.size();
            for hash in [OaepHash::Sha1, OaepHash::Sha256] {
                for pt in payloads {
                    let blob = rsa_aes_key_wrap(&public, hash, pt).unwrap();
                    assert_eq!(blob.len(), k + pt.len().div_ceil(8) * 8 + 8);
                    let (rsa_part, kwp_part) = blob.split_at(k);
                    let aes_key = aws_lc_oaep_decrypt(kek_type, hash, rsa_part);
                    assert_eq!(aes_key.len(), EPHEMERAL_KEY_LEN);
                    let kek = KekAes256::new(aes_key.as_slice().into());
                    assert_eq!(kek.unwrap_with_padding_vec(kwp_part).unwrap(), pt);
                }
                // The hash parameter is honoured: the other hash can't decrypt.
                let blob = rsa_aes_key_wrap(&public, hash, b"x").unwrap();
                let key = PrivateDecryptingKey::from_pkcs8(sample(kek_type).as_bytes()).unwrap();
                let key = OaepPrivateDecryptingKey::new(key).unwrap();
                let other = match hash {
                    OaepHash::Sha1 => &OAEP_SHA256_MGF1SHA256,
                    OaepHash::Sha256 => &OAEP_SHA1_MGF1SHA1,
                };
                let mut out = vec![0u8; k];
                assert!(key.decrypt(other, &blob[..k], &mut out, None).is_err());
            }
        }
    }

    #[test]
    fn rsa_aes_key_wrap_decrypts_with_the_rsa_crate() {
        // The brief's second decryptor: RustCrypto rsa + aes-kw (2048 only,
        // as private operations in the rsa crate are slow in debug builds).
        let private = RsaPrivateKey::from_pkcs8_der(sample(KeyType::Rsa2048).as_bytes()).unwrap();
        let public = private.to_public_key();
        let pt = sample(KeyType::EcdsaP384).as_bytes();
        for hash in [OaepHash::Sha1, OaepHash::Sha256] {
            let blob = rsa_aes_key_wrap(&public, hash, pt).unwrap();
            let aes_key = Zeroizing::new(private.decrypt(hash.padding(), &blob[..256]).unwrap());
            let kek = KekAes256::new(aes_key.as_slice().into());
            assert_eq!(kek.unwrap_with_padding_vec(&blob[256..]).unwrap(), pt);
        }
    }

    #[test]
    fn rsa_aes_key_wrap_uses_a_fresh_key_each_time() {
        let public = kek_public(KeyType::Rsa2048);
        let pt = sample(KeyType::Aes256Gcm96).as_bytes();
        let a = rsa_aes_key_wrap(&public, OaepHash::Sha256, pt).unwrap();
        let b = rsa_aes_key_wrap(&public, OaepHash::Sha256, pt).unwrap();
        assert_ne!(a[..256], b[..256]);
        assert_ne!(
            a[256..],
            b[256..],
            "KWP output repeated: ephemeral key reused"
        );
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn rsa_aes_key_wrap_unwraps_with_openssl() {
        let dir = TempDir::new();
        for (kek_type, hash, md) in [
            (KeyType::Rsa4096, OaepHash::Sha1, "sha1"),
            (KeyType::Rsa3072, OaepHash::Sha256, "sha256"),
            (KeyType::Rsa2048, OaepHash::Sha1, "sha1"),
        ] {
            let kek_file = dir.write("kek.der", sample(kek_type).as_bytes());
            let public =
                rsa_public_from_spki_pem(&sample(kek_type).public_key_pem().unwrap()).unwrap();
            let k = public.size();
            for payload_type in [KeyType::Rsa3072, KeyType::EcdsaP256, KeyType::Aes256Gcm96] {
                let pt = sample(payload_type).as_bytes();
                let blob = rsa_aes_key_wrap(&public, hash, pt).unwrap();
                let ek = dir.write("ek.bin", &blob[..k]);
                let wrapped = dir.write("wrapped.bin", &blob[k..]);
                let aes_key = Zeroizing::new(openssl_oaep_decrypt(&kek_file, &ek, md));
                assert_eq!(aes_key.len(), 32, "{kek_type}/{md}");
                let unwrapped = openssl(&[
                    "enc",
                    "-d",
                    "-id-aes256-wrap-pad",
                    "-K",
                    &to_hex(&aes_key),
                    "-iv",
                    "A65959A6",
                    "-in",
                    wrapped.to_str().unwrap(),
                ]);
                assert_eq!(unwrapped, pt, "{kek_type}/{md}/{payload_type}");
            }
        }
    }

    #[test]
    fn wrapping_key_parsers_agree() {
        let m = sample(KeyType::Rsa3072);
        let from_der = rsa_public_from_spki_der(&m.public_key_der().unwrap()).unwrap();
        let pem = m.public_key_pem().unwrap();
        let from_pem = rsa_public_from_spki_pem(&pem).unwrap();
        // GCP-style PEM with CRLF and surrounding text still parses.
        let crlf = format!("prefix\r\n{}suffix", pem.replace('\n', "\r\n"));
        let from_crlf = rsa_public_from_spki_pem(&crlf).unwrap();
        let n = from_der.n().to_bytes_be();
        let e = from_der.e().to_bytes_be();
        let from_jwk = rsa_public_from_jwk_components(&n, &e).unwrap();
        let mut padded_n = vec![0u8];
        padded_n.extend_from_slice(&n);
        let from_padded = rsa_public_from_jwk_components(&padded_n, &e).unwrap();
        use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
        let from_b64 =
            rsa_public_from_jwk_base64url(&URL_SAFE_NO_PAD.encode(&n), &URL_SAFE.encode(&e))
                .unwrap();
        for other in [&from_pem, &from_crlf, &from_jwk, &from_padded, &from_b64] {
            assert_eq!(&from_der, other);
        }
        assert_eq!(from_der.size(), 384);
    }

    #[test]
    fn wrapping_key_parsers_reject_bad_keys() {
        // 1024-bit modulus: too weak (primality is irrelevant to the check).
        let mut n1024 = vec![0xc3u8; 128];
        n1024[127] |= 1;
        assert!(matches!(
            rsa_public_from_jwk_components(&n1024, &[1, 0, 1]),
            Err(WrapError::WeakKek { bits: 1024 })
        ));
        // 8192-bit modulus: beyond what any cloud issues and the rsa crate's cap.
        assert!(matches!(
            rsa_public_from_jwk_components(&[0xc3u8; 1024], &[1, 0, 1]),
            Err(WrapError::InvalidPublicKey(_))
        ));
        assert!(rsa_public_from_jwk_components(&[0xc3u8; 256], &[1]).is_err());
        assert!(rsa_public_from_jwk_base64url("not base64!", "AQAB").is_err());
        // An EC SubjectPublicKeyInfo is not an RSA wrapping key.
        let ec = sample(KeyType::EcdsaP256);
        assert!(rsa_public_from_spki_der(&ec.public_key_der().unwrap()).is_err());
        assert!(rsa_public_from_spki_pem(&ec.public_key_pem().unwrap()).is_err());
        assert!(rsa_public_from_spki_der(b"\x30\x00").is_err());
        assert!(rsa_public_from_spki_pem("no pem here").is_err());
        let pem = sample(KeyType::Rsa2048).public_key_pem().unwrap();
        let private_label = pem.replace("PUBLIC KEY", "PRIVATE KEY");
        assert!(rsa_public_from_spki_pem(&private_label).is_err());
        let truncated = pem.replacen("\n", "\nAAAA", 2);
        assert!(rsa_public_from_spki_pem(&truncated).is_err());
    }

    #[test]
    fn errors_display_without_secrets() {
        let err = rsa_oaep_encrypt(&kek_public(KeyType::Rsa2048), OaepHash::Sha256, &[9u8; 200])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "plaintext of 200 bytes exceeds the 190-byte limit of RSA-OAEP under this key"
        );
    }
}
