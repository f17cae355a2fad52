//! Parsing the public keys the clouds send (`engine::wrap`): AWS's
//! SubjectPublicKeyInfo DER, GCP's PEM, JWK `n`/`e` in base64url, and
//! Azure's key JSON (the SDK's `Key`, then `byok::Kek::of`), with the
//! resume check that compares Azure's JWK with our key (`public_key_matches`).
//!
//! Input: one byte choosing the form, then the form's bytes (for the JWK
//! form: `n`, a newline, `e`).
//!
//! Properties: no panic; an accepted wrapping key has at least 2048 bits,
//! AWS-LC reads the same key from its DER, and it encrypts; the DER, PEM
//! and JWK forms of one key give the same key; `public_key_matches` is true
//! exactly when the JWK's members equal our key's (leading zeros aside).

#![no_main]

use azure_security_keyvault_keys::models::{JsonWebKey, Key};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keymgmt_fuzz::sample;
use libfuzzer_sys::fuzz_target;
use rsa::RsaPublicKey;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;
use vault_plugin_secrets_keymgmt::engine::key_type::KeyType;
use vault_plugin_secrets_keymgmt::engine::wrap::{
    MIN_KEK_BITS, OaepHash, rsa_oaep_encrypt, rsa_public_from_jwk_base64url,
    rsa_public_from_jwk_components, rsa_public_from_spki_der, rsa_public_from_spki_pem,
};
use vault_plugin_secrets_keymgmt::fuzzing::azure_byok::{Kek, public_key_matches};

fn strip(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// What every accepted wrapping key must satisfy; checks the other forms.
fn check_accepted(public: &RsaPublicKey) {
    assert!(public.n().bits() >= MIN_KEK_BITS, "weak key accepted");
    let der = public.to_public_key_der().expect("SPKI encodes").into_vec();
    let theirs = aws_lc_rs::rsa::PublicEncryptingKey::from_der(&der);
    assert!(theirs.is_ok(), "AWS-LC refuses a wrapping key we accept");
    let ct = rsa_oaep_encrypt(public, OaepHash::Sha256, &[0x5a; 32]).expect("OAEP under it");
    assert_eq!(ct.len(), public.size());
    let from_der = rsa_public_from_spki_der(&der).expect("its own DER");
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(&der)
    );
    let from_pem = rsa_public_from_spki_pem(&pem).expect("its own PEM");
    let (n, e) = (public.n().to_bytes_be(), public.e().to_bytes_be());
    let from_jwk = rsa_public_from_jwk_components(&n, &e).expect("its own n and e");
    let from_b64 =
        rsa_public_from_jwk_base64url(&URL_SAFE_NO_PAD.encode(&n), &URL_SAFE_NO_PAD.encode(&e))
            .expect("its own JWK");
    for other in [&from_der, &from_pem, &from_jwk, &from_b64] {
        assert_eq!(other, public, "the forms of one key disagree");
    }
}

/// Our key's JWK members as a client outside our code would compute them:
/// RSA `n`, `e` by RustCrypto from the SPKI; EC `x`, `y` from the SPKI's
/// uncompressed point.
fn members(t: KeyType) -> (Vec<u8>, Vec<u8>) {
    let spki = sample(t).public_key_der().expect("asymmetric");
    if t.rsa_bits().is_some() {
        use rsa::pkcs8::DecodePublicKey;
        let k = RsaPublicKey::from_public_key_der(&spki).unwrap();
        (k.n().to_bytes_be(), k.e().to_bytes_be())
    } else {
        let len = t.ec_curve().unwrap().coordinate_len();
        let xy = &spki[spki.len() - 2 * len..];
        (xy[..len].to_vec(), xy[len..].to_vec())
    }
}

fn check_matches(jwk: &JsonWebKey) {
    for t in KeyType::ALL.into_iter().filter(|t| t.is_asymmetric()) {
        let (a, b) = members(t);
        let (ja, jb) = if t.rsa_bits().is_some() {
            (&jwk.n, &jwk.e)
        } else {
            (&jwk.x, &jwk.y)
        };
        let want = match (ja, jb) {
            (Some(ja), Some(jb)) => strip(ja) == strip(&a) && strip(jb) == strip(&b),
            _ => false,
        };
        assert_eq!(
            public_key_matches(sample(t), jwk),
            want,
            "resume check wrong for {t}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            if let Ok(public) = rsa_public_from_spki_der(input) {
                check_accepted(&public);
            }
        }
        1 => {
            let Ok(text) = std::str::from_utf8(input) else {
                return;
            };
            if let Ok(public) = rsa_public_from_spki_pem(text) {
                check_accepted(&public);
            }
        }
        2 => {
            let Ok(text) = std::str::from_utf8(input) else {
                return;
            };
            let (n, e) = text.split_once('\n').unwrap_or((text, "AQAB"));
            if let Ok(public) = rsa_public_from_jwk_base64url(n, e) {
                check_accepted(&public);
            }
        }
        _ => {
            let Ok(key) = serde_json::from_slice::<Key>(input) else {
                return;
            };
            if let Some(jwk) = &key.key {
                check_matches(jwk);
            }
            let Ok(kek) = Kek::of(&key) else {
                return;
            };
            let jwk = key.key.as_ref().expect("a KEK has a JWK");
            assert_eq!(Some(&kek.kid), jwk.kid.as_ref());
            assert_eq!(Some(&kek.n), jwk.n.as_ref());
            assert_eq!(Some(&kek.e), jwk.e.as_ref());
            if let Ok(public) = rsa_public_from_jwk_components(&kek.n, &kek.e) {
                assert_eq!(strip(&kek.n), public.n().to_bytes_be().as_slice());
                check_accepted(&public);
            }
        }
    }
});
