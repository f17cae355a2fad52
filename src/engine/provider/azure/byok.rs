//! What goes into an Azure import request: the BYOK transfer blob for
//! `protection=hsm`, the plain JWK for `protection=software`, and `key_ops`.
//!
//! The SDK's `JsonWebKey` model carries `key_hsm` and the JWK members as
//! `Vec<u8>` it never wipes, so request bodies holding private material
//! (the software JWK) are serialised here into a buffer we zeroize after
//! the call. The BYOK body carries only ciphertext and uses the SDK model.

use std::collections::HashMap;

use azure_security_keyvault_keys::models::{
    CurveName, ImportKeyParameters, JsonWebKey, Key, KeyAttributes, KeyOperation,
    KeyType as AzureKeyType,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde::Serialize;
use zeroize::Zeroizing;

use super::super::{Protection, ProviderError, Purpose, Target};
use crate::engine::key_type::EcCurve;
use crate::engine::material::{KeyMaterial, PrivateJwk};
use crate::engine::wrap::{OaepHash, rsa_aes_key_wrap, rsa_public_from_jwk_components};

/// The tag recording which Vault version an Azure key version holds; the
/// idempotency check of `import_version` reads it back.
pub const VERSION_TAG: &str = "vault_version";

/// `generator` of our transfer blobs: "BYOK tool name and version".
pub const GENERATOR: &str = concat!("vault-plugin-secrets-keymgmt/", env!("CARGO_PKG_VERSION"));

/// Maps Vault purposes to JWK `key_ops` (keymgmt-api reference §3.3),
/// keeping the given order and dropping duplicates.
pub fn key_ops(purposes: &[Purpose]) -> Vec<&'static str> {
    let mut ops: Vec<&'static str> = Vec::with_capacity(purposes.len());
    for purpose in purposes {
        let op = match purpose {
            Purpose::Encrypt => "encrypt",
            Purpose::Decrypt => "decrypt",
            Purpose::Sign => "sign",
            Purpose::Verify => "verify",
            Purpose::Wrap => "wrapKey",
            Purpose::Unwrap => "unwrapKey",
        };
        if !ops.contains(&op) {
            ops.push(op);
        }
    }
    ops
}

/// The JWK `kty` Azure gets for a key type and protection, or why the type
/// cannot be imported (the engine's support matrix normally refuses these
/// first; this keeps the provider safe on its own).
pub fn azure_kty(
    material: &KeyMaterial,
    protection: Protection,
) -> Result<AzureKeyType, ProviderError> {
    let key_type = material.key_type();
    let hsm = protection == Protection::Hsm;
    match (key_type.rsa_bits(), key_type.ec_curve(), hsm) {
        (Some(_), _, true) => Ok(AzureKeyType::RsaHsm),
        (Some(_), _, false) => Ok(AzureKeyType::Rsa),
        (None, Some(_), true) => Ok(AzureKeyType::EcHsm),
        (None, Some(_), false) => Ok(AzureKeyType::Ec),
        (None, None, _) => Err(ProviderError::Rejected(format!(
            "the azurekeyvault provider cannot import {key_type} keys: Azure Key Vault imports RSA and EC keys only"
        ))),
    }
}

fn curve_name(curve: EcCurve) -> CurveName {
    match curve {
        EcCurve::P256 => CurveName::P256,
        EcCurve::P384 => CurveName::P384,
        EcCurve::P521 => CurveName::P521,
    }
}

/// The `.byok` transfer blob (key-transfer reference §3.3).
#[derive(Debug, Serialize)]
pub struct TransferBlob<'a> {
    /// Always "1.0.0".
    pub schema_version: &'static str,
    /// Names the key-exchange key that protects the ciphertext.
    pub header: BlobHeader<'a>,
    /// base64url (unpadded) of `RSA-OAEP-SHA1(k) || AES-KWP(k, PKCS#8)`.
    pub ciphertext: String,
    /// The tool that made the blob.
    pub generator: &'static str,
}

/// The transfer blob's header.
#[derive(Debug, Serialize)]
pub struct BlobHeader<'a> {
    /// The KEK's full, versioned key id.
    pub kid: &'a str,
    /// "dir": the kid protects the ciphertext directly.
    pub alg: &'static str,
    /// The wrapping mechanism.
    pub enc: &'static str,
}

/// A key-exchange key as Key Vault returned it.
#[derive(Debug, Clone)]
pub struct Kek {
    /// Full versioned key id.
    pub kid: String,
    /// Modulus, big-endian.
    pub n: Vec<u8>,
    /// Public exponent, big-endian.
    pub e: Vec<u8>,
}

impl Kek {
    /// The key-exchange key out of Key Vault's answer to its creation.
    pub fn of(key: &Key) -> Result<Self, ProviderError> {
        let jwk = key.key.as_ref();
        let (Some(kid), Some(n), Some(e)) = (
            jwk.and_then(|k| k.kid.clone()),
            jwk.and_then(|k| k.n.clone()),
            jwk.and_then(|k| k.e.clone()),
        ) else {
            return Err(ProviderError::Rejected(
                "Azure returned a key-exchange key without kid, n or e".into(),
            ));
        };
        Ok(Self { kid, n, e })
    }
}

/// Wraps the PKCS#8 private key under the KEK with `CKM_RSA_AES_KEY_WRAP`
/// (RSA-OAEP-SHA1, as Azure BYOK specifies) and returns the transfer blob's
/// JSON bytes: what `key_hsm` carries (the SDK base64url-encodes it).
pub fn transfer_blob(kek: &Kek, material: &KeyMaterial) -> Result<Vec<u8>, ProviderError> {
    let public = rsa_public_from_jwk_components(&kek.n, &kek.e).map_err(|e| {
        ProviderError::Rejected(format!("Azure returned an unusable key-exchange key: {e}"))
    })?;
    let wrapped = rsa_aes_key_wrap(&public, OaepHash::Sha1, material.as_bytes())
        .map_err(|e| ProviderError::Rejected(format!("wrapping the key for Azure failed: {e}")))?;
    let blob = TransferBlob {
        schema_version: "1.0.0",
        header: BlobHeader {
            kid: &kek.kid,
            alg: "dir",
            enc: "CKM_RSA_AES_KEY_WRAP",
        },
        ciphertext: URL_SAFE_NO_PAD.encode(wrapped),
        generator: GENERATOR,
    };
    serde_json::to_vec(&blob)
        .map_err(|e| ProviderError::Rejected(format!("encoding the transfer blob failed: {e}")))
}

fn tags(version: u32) -> HashMap<String, String> {
    HashMap::from([(VERSION_TAG.to_owned(), version.to_string())])
}

/// The BYOK import body (`key_hsm`, no private members).
pub fn hsm_import(
    target: &Target,
    version: u32,
    material: &KeyMaterial,
    blob: Vec<u8>,
    enabled: bool,
) -> Result<ImportKeyParameters, ProviderError> {
    let key = JsonWebKey {
        kty: Some(azure_kty(material, Protection::Hsm)?),
        crv: material.key_type().ec_curve().map(curve_name),
        key_ops: Some(
            key_ops(&target.purposes)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        ),
        t: Some(blob),
        ..Default::default()
    };
    Ok(ImportKeyParameters {
        hsm: Some(true),
        key: Some(key),
        key_attributes: Some(KeyAttributes {
            enabled: Some(enabled),
            ..Default::default()
        }),
        tags: Some(tags(version)),
        ..Default::default()
    })
}

/// The create-key body of a key-exchange key: RSA-HSM 4096 with exactly
/// `["import"]`, as the BYOK specification requires. 4096 bits so the
/// KEK is never weaker than the RSA-4096 keys it carries. It expires after
/// a day, so a KEK whose deletion failed cannot be used for long.
pub fn kek_parameters(
    now: time::OffsetDateTime,
) -> azure_security_keyvault_keys::models::CreateKeyParameters {
    azure_security_keyvault_keys::models::CreateKeyParameters {
        kty: Some(AzureKeyType::RsaHsm),
        key_size: Some(4096),
        key_ops: Some(vec![KeyOperation::Import]),
        key_attributes: Some(KeyAttributes {
            enabled: Some(true),
            expires: Some(now + time::Duration::days(1)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The software import body, serialised: `{"Hsm": false, "key": {<JWK>,
/// "key_ops": …}, "attributes": {"enabled": …}, "tags": …}`.
///
/// The buffer is reserved up front (an RSA-4096 JWK is about 3.2 KiB) so
/// serialisation does not reallocate and leave unwiped copies behind.
pub fn software_import_body(
    target: &Target,
    version: u32,
    material: &KeyMaterial,
    enabled: bool,
) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "Hsm")]
        hsm: bool,
        key: Key<'a>,
        attributes: Attributes,
        tags: HashMap<String, String>,
    }
    #[derive(Serialize)]
    struct Key<'a> {
        #[serde(flatten)]
        jwk: &'a PrivateJwk,
        key_ops: Vec<&'static str>,
    }
    #[derive(Serialize)]
    struct Attributes {
        enabled: bool,
    }
    azure_kty(material, Protection::Software)?;
    let jwk = material
        .private_jwk()
        .map_err(|e| ProviderError::Rejected(format!("preparing the key for Azure failed: {e}")))?;
    let body = Body {
        hsm: false,
        key: Key {
            jwk: &jwk,
            key_ops: key_ops(&target.purposes),
        },
        attributes: Attributes { enabled },
        tags: tags(version),
    };
    let mut out = Zeroizing::new(Vec::with_capacity(16 * 1024));
    serde_json::to_writer(&mut *out, &body)
        .map_err(|e| ProviderError::Rejected(format!("encoding the import request failed: {e}")))?;
    Ok(out)
}

/// Whether a key version Azure holds has the public half of `material`:
/// the resume check must not trust a tag alone. Reads only the public key
/// (SubjectPublicKeyInfo), never the private material.
pub fn public_key_matches(material: &KeyMaterial, key: &JsonWebKey) -> bool {
    fn strip(bytes: &[u8]) -> &[u8] {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        &bytes[start..]
    }
    let Some(spki) = material.public_key_der() else {
        return false;
    };
    let key_type = material.key_type();
    if key_type.rsa_bits().is_some() {
        let Ok(ours) = rsa::RsaPublicKey::from_public_key_der(&spki) else {
            return false;
        };
        return match (&key.n, &key.e) {
            (Some(n), Some(e)) => {
                strip(n) == strip(&ours.n().to_bytes_be())
                    && strip(e) == strip(&ours.e().to_bytes_be())
            }
            _ => false,
        };
    }
    let Some(curve) = key_type.ec_curve() else {
        return false;
    };
    // An EC SubjectPublicKeyInfo ends with the uncompressed point 04||X||Y.
    let len = curve.coordinate_len();
    let Some(point) = spki.get(spki.len().saturating_sub(1 + 2 * len)..) else {
        return false;
    };
    match (&key.x, &key.y, point.split_first()) {
        (Some(x), Some(y), Some((0x04, xy))) if xy.len() == 2 * len => {
            strip(x) == strip(&xy[..len]) && strip(y) == strip(&xy[len..])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::key_type::KeyType;
    use crate::engine::material::test_support::sample;
    use aes_kw::KekAes256;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    use rsa::{Oaep, RsaPrivateKey};

    fn target(key_type: KeyType, purposes: &[Purpose], protection: Protection) -> Target {
        Target::for_test("example-key-1700000000", key_type, purposes, protection)
    }

    /// A KEK whose private half the test holds (a sample RSA key).
    fn test_kek() -> (Kek, RsaPrivateKey) {
        let private = RsaPrivateKey::from_pkcs8_der(sample(KeyType::Rsa2048).as_bytes()).unwrap();
        let kek = Kek {
            kid: "https://kv1.vault.azure.net/keys/kek/0123456789abcdef0123456789abcdef".into(),
            n: private.n().to_bytes_be(),
            e: private.e().to_bytes_be(),
        };
        (kek, private)
    }

    #[test]
    fn key_ops_follow_purposes() {
        use Purpose::*;
        assert_eq!(key_ops(&[Encrypt, Decrypt]), ["encrypt", "decrypt"]);
        assert_eq!(key_ops(&[Wrap, Unwrap]), ["wrapKey", "unwrapKey"]);
        assert_eq!(
            key_ops(&Purpose::ALL),
            [
                "encrypt",
                "decrypt",
                "sign",
                "verify",
                "wrapKey",
                "unwrapKey"
            ]
        );
        assert_eq!(key_ops(&[Sign, Sign, Verify]), ["sign", "verify"]);
    }

    #[test]
    fn transfer_blob_shape_and_ciphertext_unwraps_to_the_pkcs8() {
        let (kek, kek_private) = test_kek();
        for key_type in [
            KeyType::Rsa2048,
            KeyType::Rsa4096,
            KeyType::EcdsaP256,
            KeyType::EcdsaP521,
        ] {
            let material = sample(key_type);
            let json = transfer_blob(&kek, material).unwrap();
            let blob: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let object = blob.as_object().unwrap();
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(
                keys,
                ["ciphertext", "generator", "header", "schema_version"]
            );
            assert_eq!(blob["schema_version"], "1.0.0");
            assert_eq!(blob["header"]["kid"], kek.kid.as_str());
            assert_eq!(blob["header"]["alg"], "dir");
            assert_eq!(blob["header"]["enc"], "CKM_RSA_AES_KEY_WRAP");
            assert!(
                blob["generator"]
                    .as_str()
                    .unwrap()
                    .starts_with("vault-plugin-secrets-keymgmt/")
            );
            let text = blob["ciphertext"].as_str().unwrap();
            assert!(!text.contains(['=', '+', '/']), "not unpadded base64url");
            let ciphertext = URL_SAFE_NO_PAD.decode(text).unwrap();
            let (rsa_part, kwp_part) = ciphertext.split_at(256);
            let aes_key = kek_private
                .decrypt(Oaep::new::<sha1::Sha1>(), rsa_part)
                .unwrap();
            assert_eq!(aes_key.len(), 32);
            let kek_aes = KekAes256::new(aes_key.as_slice().into());
            let unwrapped = kek_aes.unwrap_with_padding_vec(kwp_part).unwrap();
            assert_eq!(unwrapped, material.as_bytes(), "{key_type}");
        }
    }

    #[test]
    fn hsm_body_carries_only_the_blob() {
        let (kek, _) = test_kek();
        let t = target(
            KeyType::EcdsaP384,
            &[Purpose::Sign, Purpose::Verify],
            Protection::Hsm,
        );
        let material = sample(KeyType::EcdsaP384);
        let blob = transfer_blob(&kek, material).unwrap();
        let body =
            serde_json::to_value(hsm_import(&t, 3, material, blob.clone(), true).unwrap()).unwrap();
        assert_eq!(body["Hsm"], true);
        assert_eq!(body["key"]["kty"], "EC-HSM");
        assert_eq!(body["key"]["crv"], "P-384");
        assert_eq!(
            body["key"]["key_ops"],
            serde_json::json!(["sign", "verify"])
        );
        assert_eq!(
            body["key"]["key_hsm"],
            URL_SAFE_NO_PAD.encode(&blob).as_str()
        );
        assert_eq!(body["tags"][VERSION_TAG], "3");
        assert_eq!(body["attributes"]["enabled"], true);
        for member in ["d", "p", "q", "dp", "dq", "qi", "k", "n", "e", "x", "y"] {
            assert!(body["key"].get(member).is_none(), "{member}");
        }
        let rsa = hsm_import(
            &target(KeyType::Rsa3072, &[Purpose::Encrypt], Protection::Hsm),
            1,
            sample(KeyType::Rsa3072),
            b"{}".to_vec(),
            false,
        )
        .unwrap();
        let rsa = serde_json::to_value(rsa).unwrap();
        assert_eq!(rsa["key"]["kty"], "RSA-HSM");
        assert_eq!(rsa["attributes"]["enabled"], false, "imported disabled");
        assert!(rsa["key"].get("crv").is_none());
    }

    #[test]
    fn software_body_is_a_plain_jwk() {
        let t = target(
            KeyType::Rsa2048,
            &[Purpose::Wrap, Purpose::Unwrap],
            Protection::Software,
        );
        let material = sample(KeyType::Rsa2048);
        let body = software_import_body(&t, 7, material, true).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["Hsm"], false);
        assert_eq!(body["key"]["kty"], "RSA");
        assert_eq!(
            body["key"]["key_ops"],
            serde_json::json!(["wrapKey", "unwrapKey"])
        );
        for member in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
            assert!(body["key"][member].is_string(), "{member}");
        }
        assert_eq!(body["tags"][VERSION_TAG], "7");
        let ec = software_import_body(
            &target(KeyType::EcdsaP521, &[Purpose::Sign], Protection::Software),
            1,
            sample(KeyType::EcdsaP521),
            false,
        )
        .unwrap();
        let ec: serde_json::Value = serde_json::from_slice(&ec).unwrap();
        assert_eq!(ec["key"]["kty"], "EC");
        assert_eq!(ec["key"]["crv"], "P-521");
        assert_eq!(ec["attributes"]["enabled"], false, "imported disabled");
    }

    #[test]
    fn aes_is_refused() {
        let t = target(
            KeyType::Aes256Gcm96,
            &[Purpose::Encrypt],
            Protection::Software,
        );
        let err = software_import_body(&t, 1, sample(KeyType::Aes256Gcm96), true).unwrap_err();
        assert!(
            err.to_string().contains("cannot import aes256-gcm96"),
            "{err}"
        );
        assert!(azure_kty(sample(KeyType::Aes256Gcm96), Protection::Hsm).is_err());
    }

    #[test]
    fn public_key_comparison() {
        let rsa = sample(KeyType::Rsa2048);
        let private = RsaPrivateKey::from_pkcs8_der(rsa.as_bytes()).unwrap();
        let mut n = vec![0u8];
        n.extend(private.n().to_bytes_be());
        let jwk = JsonWebKey {
            n: Some(n),
            e: Some(private.e().to_bytes_be()),
            ..Default::default()
        };
        assert!(public_key_matches(rsa, &jwk));
        assert!(!public_key_matches(sample(KeyType::Rsa3072), &jwk));
        assert!(!public_key_matches(sample(KeyType::EcdsaP256), &jwk));
        assert!(!public_key_matches(rsa, &JsonWebKey::default()));
        // EC: x and y of the SubjectPublicKeyInfo point.
        let p384 = sample(KeyType::EcdsaP384);
        let spki = p384.public_key_der().unwrap();
        let xy = &spki[spki.len() - 96..];
        let jwk = JsonWebKey {
            x: Some(xy[..48].to_vec()),
            y: Some(xy[48..].to_vec()),
            ..Default::default()
        };
        assert!(public_key_matches(p384, &jwk));
        assert!(!public_key_matches(sample(KeyType::EcdsaP256), &jwk));
        let mut other = jwk.clone();
        other.y = Some(xy[..48].to_vec());
        assert!(!public_key_matches(p384, &other));
    }

    #[test]
    fn kek_request() {
        let now = time::macros::datetime!(2026-01-01 00:00:00 UTC);
        let body = serde_json::to_value(kek_parameters(now)).unwrap();
        assert_eq!(body["kty"], "RSA-HSM");
        assert_eq!(body["key_size"], 4096);
        assert_eq!(body["key_ops"], serde_json::json!(["import"]));
        assert_eq!(
            body["attributes"]["exp"],
            (now + time::Duration::days(1)).unix_timestamp()
        );
    }
}
