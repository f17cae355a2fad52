//! Key material parsing (`engine::material`): PKCS#8 private keys (and the
//! 32 raw bytes of AES keys) as loaded from storage, with the public views
//! derived from them (SubjectPublicKeyInfo, PEM, the private JWK).
//!
//! Input: one byte choosing the declared key type, then the material.
//!
//! Properties: no panic; material accepted for one type is refused for
//! every other; the canonical form loads again to the same bytes; the
//! SubjectPublicKeyInfo is the public half of the private key as another
//! implementation (RustCrypto's `rsa`, AWS-LC's EC check) reads it; the PEM
//! holds that DER; the JWK members are those of the same key.

#![no_main]

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P521_SHA512_ASN1_SIGNING,
    EcdsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, SubjectPublicKeyInfoRef};
use rsa::traits::PublicKeyParts;
use vault_plugin_secrets_keymgmt::engine::key_type::{EcCurve, KeyType};
use vault_plugin_secrets_keymgmt::engine::material::{AES256_KEY_LEN, KeyMaterial, PrivateJwk};
use zeroize::Zeroizing;

fn unb64url(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("JWK member is base64url")
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body = pem
        .strip_prefix("-----BEGIN PUBLIC KEY-----\n")
        .and_then(|s| s.strip_suffix("-----END PUBLIC KEY-----\n"))
        .expect("PEM armour");
    assert!(body.lines().all(|l| l.len() <= 64), "PEM lines over 64");
    STANDARD.decode(body.replace('\n', "")).expect("PEM body")
}

fn check_rsa(m: &KeyMaterial, spki: &[u8]) {
    let bits = m.key_type().rsa_bits().unwrap().bits();
    let public = rsa::RsaPublicKey::from_public_key_der(spki).expect("SPKI reads as RSA");
    assert_eq!(public.n().bits(), bits);
    let private =
        rsa::RsaPrivateKey::from_pkcs8_der(m.as_bytes()).expect("canonical PKCS#8 reads as RSA");
    assert_eq!(
        private.to_public_key(),
        public,
        "SPKI is not the key's public half"
    );
    let PrivateJwk::Rsa(jwk) = m.private_jwk().expect("RSA JWK") else {
        panic!("not an RSA JWK");
    };
    for member in [
        &jwk.n, &jwk.e, &jwk.d, &jwk.p, &jwk.q, &jwk.dp, &jwk.dq, &jwk.qi,
    ] {
        let bytes = unb64url(member);
        assert!(
            bytes.first().is_some_and(|b| *b != 0),
            "JWK integer not minimal"
        );
    }
    assert_eq!(unb64url(&jwk.n), public.n().to_bytes_be());
    assert_eq!(unb64url(&jwk.e), public.e().to_bytes_be());
}

fn check_ec(m: &KeyMaterial, curve: EcCurve, spki: &[u8]) {
    let info = SubjectPublicKeyInfoRef::try_from(spki).expect("SPKI DER");
    assert_eq!(info.algorithm.oid.to_string(), "1.2.840.10045.2.1");
    let param = info.algorithm.parameters_oid().expect("named curve");
    assert_eq!(param.to_string(), curve.oid());
    let point = info.subject_public_key.raw_bytes();
    let len = curve.coordinate_len();
    assert_eq!(point.len(), 1 + 2 * len);
    assert_eq!(point[0], 0x04, "not an uncompressed point");
    let PrivateJwk::Ec(jwk) = m.private_jwk().expect("EC JWK") else {
        panic!("not an EC JWK");
    };
    assert_eq!(jwk.crv, curve.jwk_name());
    let (x, y, d) = (unb64url(&jwk.x), unb64url(&jwk.y), unb64url(&jwk.d));
    assert_eq!(
        (x.len(), y.len(), d.len()),
        (len, len, len),
        "not fixed-length"
    );
    assert_eq!(&point[1..1 + len], x.as_slice());
    assert_eq!(&point[1 + len..], y.as_slice());
    let alg = match curve {
        EcCurve::P256 => &ECDSA_P256_SHA256_ASN1_SIGNING,
        EcCurve::P384 => &ECDSA_P384_SHA384_ASN1_SIGNING,
        EcCurve::P521 => &ECDSA_P521_SHA512_ASN1_SIGNING,
    };
    EcdsaKeyPair::from_private_key_and_public_key(alg, &d, point)
        .expect("d is not the private half of the SPKI point");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let key_type = KeyType::ALL[usize::from(selector) % KeyType::ALL.len()];
    let load = |t| KeyMaterial::from_bytes(t, Zeroizing::new(bytes.to_vec()));
    let Ok(m) = load(key_type) else {
        return;
    };
    assert_eq!(m.key_type(), key_type);
    for other in KeyType::ALL {
        if other != key_type && (other.is_asymmetric() || key_type.is_asymmetric()) {
            assert!(
                load(other).is_err(),
                "material accepted as both {key_type} and {other}"
            );
        }
    }
    let again = KeyMaterial::from_bytes(key_type, Zeroizing::new(m.as_bytes().to_vec()))
        .expect("the canonical form loads");
    assert_eq!(
        again.as_bytes(),
        m.as_bytes(),
        "canonical form is not stable"
    );
    assert_eq!(again.public_key_der(), m.public_key_der());

    let Some(spki) = m.public_key_der() else {
        assert!(!key_type.is_asymmetric());
        assert_eq!(m.as_bytes(), bytes);
        assert_eq!(bytes.len(), AES256_KEY_LEN);
        assert!(m.public_key_pem().is_none());
        let PrivateJwk::Oct(jwk) = m.private_jwk().expect("oct JWK") else {
            panic!("not an oct JWK");
        };
        assert_eq!(unb64url(&jwk.k), bytes);
        return;
    };
    assert_eq!(pem_der(&m.public_key_pem().expect("PEM")), spki);
    match (key_type.rsa_bits(), key_type.ec_curve()) {
        (Some(_), _) => check_rsa(&m, &spki),
        (None, Some(curve)) => check_ec(&m, curve, &spki),
        (None, None) => unreachable!("asymmetric"),
    }
});
