//! The transfer-blob builders: the wrapping primitives (`engine::wrap`:
//! AES-KWP, RSA-OAEP, `CKM_RSA_AES_KEY_WRAP`) and each provider's builder
//! (AWS `wrap_material`, GCP `wrap_material`, Azure BYOK `transfer_blob`),
//! each unwrapped again by other implementations (AWS-LC and RustCrypto,
//! see `keymgmt_fuzz::unwrap_rsa_aes`), never by our own code.
//!
//! Input: a byte choosing the builder, one choosing the wrapping key
//! (RSA-2048, -3072 or -4096), one choosing the OAEP hash, then the
//! plaintext (for the provider builders: a key type byte and, for AES, the
//! key; for Azure also the key-exchange key's id, up to a newline).
//!
//! Properties: no panic; a builder refuses exactly the inputs its
//! construction cannot carry; what it builds unwraps to the plaintext and
//! has the documented length and layout.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keymgmt_fuzz::{
    RSA_TYPES, kwp_unwrap_aes_kw, kwp_unwrap_aws_lc, modulus_len, oaep_decrypt_aws_lc,
    oaep_decrypt_rustcrypto, sample, unwrap_rsa_aes,
};
use libfuzzer_sys::fuzz_target;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use vault_plugin_secrets_keymgmt::engine::key_type::KeyType;
use vault_plugin_secrets_keymgmt::engine::material::KeyMaterial;
use vault_plugin_secrets_keymgmt::engine::provider::{aws, gcp};
use vault_plugin_secrets_keymgmt::engine::wrap::{
    OaepHash, kwp_wrap, rsa_aes_key_wrap, rsa_oaep_encrypt,
};
use vault_plugin_secrets_keymgmt::fuzzing::azure_byok::{GENERATOR, Kek, transfer_blob};
use zeroize::Zeroizing;

/// The KWP output length for `len` bytes: padded to 8, plus the 8-byte IV.
fn kwp_len(len: usize) -> usize {
    len.div_ceil(8) * 8 + 8
}

/// The material a provider builder wraps: an AES key from the input, or
/// one of the generated keys of the chosen type.
fn material(input: &[u8]) -> Option<KeyMaterial> {
    let (&t, rest) = input.split_first()?;
    let key_type = KeyType::ALL[usize::from(t) % KeyType::ALL.len()];
    if key_type.is_asymmetric() {
        return Some(sample(key_type).clone());
    }
    let key = rest.get(..32)?;
    KeyMaterial::from_bytes(key_type, Zeroizing::new(key.to_vec())).ok()
}

fuzz_target!(|data: &[u8]| {
    let [builder, kek_choice, hash_choice, payload @ ..] = data else {
        return;
    };
    let kek = sample(RSA_TYPES[usize::from(*kek_choice) % RSA_TYPES.len()]);
    let hash = if hash_choice & 1 == 0 {
        OaepHash::Sha1
    } else {
        OaepHash::Sha256
    };
    let spki = kek.public_key_der().expect("RSA");
    let public = rsa::RsaPublicKey::from_public_key_der(&spki).expect("RSA SPKI");
    let k = modulus_len(kek);
    match builder % 6 {
        0 => {
            let Some((key, pt)) = payload.split_first_chunk::<32>() else {
                return;
            };
            match kwp_wrap(key, pt) {
                Err(_) => assert!(pt.is_empty(), "KWP refused {} bytes", pt.len()),
                Ok(ct) => {
                    assert_eq!(ct.len(), kwp_len(pt.len()));
                    assert_eq!(*kwp_unwrap_aws_lc(key, &ct).expect("KWP unwrap"), pt);
                    assert_eq!(kwp_unwrap_aes_kw(key, &ct).expect("KWP unwrap"), pt);
                }
            }
        }
        1 => match rsa_oaep_encrypt(&public, hash, payload) {
            Err(_) => assert!(payload.len() > hash.max_plaintext_len(k), "OAEP refused"),
            Ok(ct) => {
                assert!(payload.len() <= hash.max_plaintext_len(k));
                assert_eq!(ct.len(), k);
                assert_eq!(oaep_decrypt_aws_lc(kek, hash, &ct).expect("OAEP"), payload);
                if kek.key_type() == KeyType::Rsa2048 {
                    let again = oaep_decrypt_rustcrypto(kek, hash, &ct).expect("OAEP (rsa)");
                    assert_eq!(again, payload);
                }
            }
        },
        2 => match rsa_aes_key_wrap(&public, hash, payload) {
            Err(_) => assert!(
                payload.is_empty(),
                "RSA-AES refused {} bytes",
                payload.len()
            ),
            Ok(blob) => {
                assert_eq!(blob.len(), k + kwp_len(payload.len()));
                assert_eq!(*unwrap_rsa_aes(kek, hash, &blob), payload);
            }
        },
        3 => {
            // AWS: RSAES_OAEP_SHA_256 for AES, RSA_AES_KEY_WRAP_SHA_256 else.
            let Some(m) = material(payload) else { return };
            let blob = aws::wrap_material(&spki, &m).expect("AWS wrapping");
            if m.key_type().is_asymmetric() {
                assert_eq!(blob.len(), k + kwp_len(m.as_bytes().len()));
                assert_eq!(*unwrap_rsa_aes(kek, OaepHash::Sha256, &blob), m.as_bytes());
            } else {
                assert_eq!(blob.len(), k);
                let pt = oaep_decrypt_aws_lc(kek, OaepHash::Sha256, &blob).expect("OAEP");
                assert_eq!(pt, m.as_bytes());
            }
        }
        4 => {
            // GCP: RSA_OAEP_4096_SHA256_AES_256 for every type.
            let Some(m) = material(payload) else { return };
            let pem = kek.public_key_pem().expect("RSA");
            let blob = gcp::wrap_material(&pem, &m).expect("GCP wrapping");
            assert_eq!(blob.len(), k + kwp_len(m.as_bytes().len()));
            assert_eq!(*unwrap_rsa_aes(kek, OaepHash::Sha256, &blob), m.as_bytes());
        }
        _ => {
            // Azure BYOK: a JSON blob naming the KEK, RSA-OAEP-SHA1 inside.
            let (kid, rest) = match payload.iter().position(|b| *b == b'\n') {
                Some(i) => (&payload[..i], &payload[i + 1..]),
                None => (payload, &[][..]),
            };
            let Ok(kid) = std::str::from_utf8(kid) else {
                return;
            };
            let Some(m) = material(rest) else { return };
            let azure_kek = Kek {
                kid: kid.to_owned(),
                n: public.n().to_bytes_be(),
                e: public.e().to_bytes_be(),
            };
            let json = transfer_blob(&azure_kek, &m).expect("Azure wrapping");
            let blob: serde_json::Value = serde_json::from_slice(&json).expect("blob is JSON");
            let object = blob.as_object().expect("blob is an object");
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(
                keys,
                ["ciphertext", "generator", "header", "schema_version"]
            );
            assert_eq!(blob["schema_version"], "1.0.0");
            assert_eq!(blob["generator"], GENERATOR);
            assert_eq!(
                blob["header"],
                serde_json::json!({"kid": kid, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"})
            );
            let text = blob["ciphertext"].as_str().expect("ciphertext");
            let ct = URL_SAFE_NO_PAD.decode(text).expect("unpadded base64url");
            assert_eq!(ct.len(), k + kwp_len(m.as_bytes().len()));
            assert_eq!(*unwrap_rsa_aes(kek, OaepHash::Sha1, &ct), m.as_bytes());
        }
    }
});
