//! The SubjectPublicKeyInfo DER of a key Key Vault shows as a JWK, built
//! byte for byte as Vault encodes its own public keys, so that the SHA-256
//! of it equals Vault's `fingerprint`:
//!
//! - RSA: `rsaEncryption` with NULL parameters, the bit string holding
//!   `RSAPublicKey ::= SEQUENCE { n INTEGER, e INTEGER }` (RFC 8017, 3279);
//! - EC: `id-ecPublicKey` with the named curve's OID, the bit string
//!   holding the uncompressed point `04 || X || Y` (RFC 5480).
//!
//! Only public members are read.

use azure_security_keyvault_keys::models::{CurveName, JsonWebKey};

/// `rsaEncryption` (1.2.840.113549.1.1.1).
const RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
/// `id-ecPublicKey` (1.2.840.10045.2.1).
const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `prime256v1` (1.2.840.10045.3.1.7).
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `secp384r1` (1.3.132.0.34).
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// `secp521r1` (1.3.132.0.35).
const P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
/// `secp256k1` (1.3.132.0.10): Vault has no such keys, but a version
/// created outside Vault may use it.
const P256K: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn strip(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// A DER INTEGER of an unsigned big-endian value: minimal, with a 0x00
/// in front where the high bit is set.
fn unsigned(bytes: &[u8]) -> Vec<u8> {
    let bytes = strip(bytes);
    let mut content = Vec::with_capacity(bytes.len() + 1);
    if bytes.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(bytes);
    tlv(0x02, &content)
}

fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(key);
    let mut content = tlv(0x30, algorithm);
    content.extend(tlv(0x03, &bits));
    tlv(0x30, &content)
}

/// The SPKI of an RSA public key `(n, e)`.
pub fn rsa(n: &[u8], e: &[u8]) -> Option<Vec<u8>> {
    if strip(n).is_empty() || strip(e).is_empty() {
        return None;
    }
    let mut algorithm = RSA_ENCRYPTION.to_vec();
    algorithm.extend_from_slice(&[0x05, 0x00]);
    let mut key = unsigned(n);
    key.extend(unsigned(e));
    Some(spki(&algorithm, &tlv(0x30, &key)))
}

/// The SPKI of an EC public point on `curve`; coordinates shorter than the
/// field are padded (a JWK's are fixed-length, but be lenient), longer
/// ones refused.
pub fn ec(curve: &CurveName, x: &[u8], y: &[u8]) -> Option<Vec<u8>> {
    let (oid, len) = match curve {
        CurveName::P256 => (P256, 32),
        CurveName::P384 => (P384, 48),
        CurveName::P521 => (P521, 66),
        CurveName::P256K => (P256K, 32),
        CurveName::UnknownValue(_) => return None,
    };
    let (x, y) = (strip(x), strip(y));
    if x.len() > len || y.len() > len {
        return None;
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(0x04);
    for coordinate in [x, y] {
        point.extend(std::iter::repeat_n(0u8, len - coordinate.len()));
        point.extend_from_slice(coordinate);
    }
    let mut algorithm = EC_PUBLIC_KEY.to_vec();
    algorithm.extend_from_slice(oid);
    Some(spki(&algorithm, &point))
}

/// The SPKI of the public key a Key Vault JWK shows; `None` when it shows
/// none (an `oct` key) or one this cannot encode.
pub fn of_jwk(jwk: &JsonWebKey) -> Option<Vec<u8>> {
    match (&jwk.n, &jwk.e, &jwk.crv, &jwk.x, &jwk.y) {
        (Some(n), Some(e), ..) => rsa(n, e),
        (_, _, Some(crv), Some(x), Some(y)) => ec(crv, x, y),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::key_type::KeyType;
    use crate::engine::material::KeyMaterial;
    use crate::engine::material::test_support::sample;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;

    /// The JWK Key Vault would show for `material`, from its own SPKI by
    /// an independent route (the `rsa` crate; the point's bytes for EC).
    fn jwk_of(material: &KeyMaterial) -> JsonWebKey {
        let der = material.public_key_der().unwrap();
        let mut jwk = JsonWebKey::default();
        if let Ok(public) = rsa::RsaPublicKey::from_public_key_der(&der) {
            jwk.n = Some(public.n().to_bytes_be());
            jwk.e = Some(public.e().to_bytes_be());
            return jwk;
        }
        let curve = material.key_type().ec_curve().unwrap();
        let len = curve.coordinate_len();
        let point = &der[der.len() - 1 - 2 * len..];
        assert_eq!(point[0], 0x04);
        jwk.crv = Some(match material.key_type() {
            KeyType::EcdsaP256 => CurveName::P256,
            KeyType::EcdsaP384 => CurveName::P384,
            _ => CurveName::P521,
        });
        jwk.x = Some(point[1..=len].to_vec());
        jwk.y = Some(point[1 + len..].to_vec());
        jwk
    }

    #[test]
    fn equals_vaults_public_key_der_for_every_asymmetric_type() {
        for key_type in KeyType::ALL.into_iter().filter(|t| t.is_asymmetric()) {
            let material = sample(key_type);
            assert_eq!(
                of_jwk(&jwk_of(material)),
                material.public_key_der(),
                "{key_type:?}"
            );
        }
        // Fresh EC keys: coordinates with leading zero bytes come up, and
        // a JWK that drops them still gives the same SPKI.
        for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::EcdsaP521] {
            for _ in 0..40 {
                let material = KeyMaterial::generate(key_type).unwrap();
                let mut jwk = jwk_of(&material);
                assert_eq!(of_jwk(&jwk), material.public_key_der(), "{key_type:?}");
                jwk.x = jwk.x.map(|x| strip(&x).to_vec());
                jwk.y = jwk.y.map(|y| strip(&y).to_vec());
                assert_eq!(of_jwk(&jwk), material.public_key_der(), "{key_type:?}");
            }
        }
    }

    #[test]
    fn rsa_integers_are_minimal_and_positive() {
        let material = sample(KeyType::Rsa2048);
        let mut jwk = jwk_of(material);
        // A leading zero byte in n changes nothing.
        let mut padded = vec![0];
        padded.extend(jwk.n.take().unwrap());
        jwk.n = Some(padded);
        assert_eq!(of_jwk(&jwk), material.public_key_der());
        assert_eq!(unsigned(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(unsigned(&[0x00, 0x01]), [0x02, 0x01, 0x01]);
        assert_eq!(rsa(&[], &[1]), None);
    }

    #[test]
    fn keys_without_public_members_have_no_spki() {
        let mut jwk = JsonWebKey::default();
        assert_eq!(of_jwk(&jwk), None);
        jwk.crv = Some(CurveName::UnknownValue("X25519".into()));
        jwk.x = Some(vec![1; 32]);
        jwk.y = Some(vec![1; 32]);
        assert_eq!(of_jwk(&jwk), None);
        jwk.crv = Some(CurveName::P256);
        jwk.x = Some(vec![1; 33]);
        assert_eq!(of_jwk(&jwk), None, "a coordinate longer than the field");
    }
}
