//! The key types a keymgmt key can have.
//!
//! The set is fixed by the Vault Enterprise API (`type` on `POST /key/:name`):
//! one AES type, three RSA sizes and three NIST curves. A key's type never
//! changes after creation, so the type decides the material format of every
//! version and which KMS providers may receive it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A keymgmt key type, spelled on the wire exactly as Vault spells it.
///
/// The `Default` is `rsa-2048` because that is the API's default `type` for
/// `POST /key/:name`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyType {
    /// `aes256-gcm96`: 32 random bytes.
    Aes256Gcm96,
    /// `rsa-2048`.
    #[default]
    Rsa2048,
    /// `rsa-3072`.
    Rsa3072,
    /// `rsa-4096`.
    Rsa4096,
    /// `ecdsa-p256`.
    EcdsaP256,
    /// `ecdsa-p384`.
    EcdsaP384,
    /// `ecdsa-p521`.
    EcdsaP521,
}

/// The RSA modulus sizes keymgmt supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RsaBits {
    /// 2048-bit modulus.
    B2048,
    /// 3072-bit modulus.
    B3072,
    /// 4096-bit modulus.
    B4096,
}

impl RsaBits {
    /// The modulus size in bits.
    pub const fn bits(self) -> usize {
        match self {
            Self::B2048 => 2048,
            Self::B3072 => 3072,
            Self::B4096 => 4096,
        }
    }

    /// The modulus size in bytes, which is also the length of a signature or
    /// an RSA-OAEP ciphertext made with the key.
    pub const fn modulus_len(self) -> usize {
        self.bits() / 8
    }
}

/// The NIST curves keymgmt supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EcCurve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
}

impl EcCurve {
    /// The JWK `crv` name (RFC 7518 §6.2.1.1), also what Azure calls the curve.
    pub const fn jwk_name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    /// The length in bytes of a field element (coordinate or private scalar).
    ///
    /// JWK requires coordinates and `d` at exactly this length (RFC 7518
    /// §6.2.1.2), so encoders must left-pad rather than strip leading zeros.
    pub const fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    /// The dotted namedCurve OID used in PKCS#8 and SubjectPublicKeyInfo.
    pub const fn oid(self) -> &'static str {
        match self {
            Self::P256 => "1.2.840.10045.3.1.7",
            Self::P384 => "1.3.132.0.34",
            Self::P521 => "1.3.132.0.35",
        }
    }
}

/// The error for a `type` value that is not one of [`KeyType::ALL`].
///
/// The message must contain `unsupported key type`: the Terraform provider's
/// acceptance test matches on it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported key type \"{0}\"")]
pub struct UnsupportedKeyType(pub String);

impl KeyType {
    /// Every key type, in the order Vault's documentation lists them.
    pub const ALL: [KeyType; 7] = [
        Self::Aes256Gcm96,
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
        Self::EcdsaP256,
        Self::EcdsaP384,
        Self::EcdsaP521,
    ];

    /// The wire names of [`KeyType::ALL`], in the same order.
    pub const NAMES: [&'static str; 7] = {
        let mut names = [""; 7];
        let mut i = 0;
        while i < names.len() {
            names[i] = Self::ALL[i].as_str();
            i += 1;
        }
        names
    };

    /// The wire name, as accepted in `type` and returned on read.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Aes256Gcm96 => "aes256-gcm96",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::EcdsaP521 => "ecdsa-p521",
        }
    }

    /// Whether the type has a public half; decides whether a read shows
    /// `public_key` for each version.
    pub const fn is_asymmetric(self) -> bool {
        !matches!(self, Self::Aes256Gcm96)
    }

    /// The RSA modulus size, or `None` for non-RSA types.
    pub const fn rsa_bits(self) -> Option<RsaBits> {
        match self {
            Self::Rsa2048 => Some(RsaBits::B2048),
            Self::Rsa3072 => Some(RsaBits::B3072),
            Self::Rsa4096 => Some(RsaBits::B4096),
            _ => None,
        }
    }

    /// The curve, or `None` for non-EC types.
    pub const fn ec_curve(self) -> Option<EcCurve> {
        match self {
            Self::EcdsaP256 => Some(EcCurve::P256),
            Self::EcdsaP384 => Some(EcCurve::P384),
            Self::EcdsaP521 => Some(EcCurve::P521),
            _ => None,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parsing is exact and case-sensitive, as in Vault: `RSA-2048` or
/// ` rsa-2048` are rejected rather than silently normalised.
impl FromStr for KeyType {
    type Err = UnsupportedKeyType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnsupportedKeyType(s.to_owned()))
    }
}

impl Serialize for KeyType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for KeyType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than `String::deserialize` so borrowed strings
        // from storage JSON don't need an allocation.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KeyType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a keymgmt key type string such as \"rsa-2048\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyType, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_name() {
        let names: Vec<&str> = KeyType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "aes256-gcm96",
                "rsa-2048",
                "rsa-3072",
                "rsa-4096",
                "ecdsa-p256",
                "ecdsa-p384",
                "ecdsa-p521"
            ]
        );
        for t in KeyType::ALL {
            assert_eq!(t.as_str().parse::<KeyType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
    }

    #[test]
    fn unknown_names_are_rejected_with_the_terraform_message() {
        for bad in [
            "",
            "rsa",
            "RSA-2048",
            " rsa-2048",
            "rsa-1024",
            "ed25519",
            "aes128-gcm96",
        ] {
            let err = bad.parse::<KeyType>().unwrap_err();
            assert_eq!(err.to_string(), format!("unsupported key type \"{bad}\""));
            assert!(err.to_string().contains("unsupported key type"));
        }
    }

    #[test]
    fn classification_helpers_agree_with_the_names() {
        assert!(!KeyType::Aes256Gcm96.is_asymmetric());
        for t in KeyType::ALL {
            let family = (t.rsa_bits().is_some(), t.ec_curve().is_some());
            match family {
                (true, false) => {
                    let bits = t.rsa_bits().map(RsaBits::bits).unwrap_or_default();
                    assert_eq!(t.as_str(), format!("rsa-{bits}"));
                    assert!(t.is_asymmetric());
                }
                (false, true) => {
                    let crv = t.ec_curve().map(EcCurve::jwk_name).unwrap_or_default();
                    assert_eq!(
                        t.as_str(),
                        format!("ecdsa-{}", crv.replace('-', "").to_lowercase())
                    );
                    assert!(t.is_asymmetric());
                }
                (false, false) => assert_eq!(t, KeyType::Aes256Gcm96),
                (true, true) => panic!("{t} is both RSA and EC"),
            }
        }
        assert_eq!(RsaBits::B3072.modulus_len(), 384);
        assert_eq!(EcCurve::P521.coordinate_len(), 66);
        assert_eq!(KeyType::default(), KeyType::Rsa2048);
    }

    #[test]
    fn serde_uses_the_wire_name() {
        let json = serde_json::to_string(&KeyType::EcdsaP384).unwrap();
        assert_eq!(json, "\"ecdsa-p384\"");
        let back: KeyType = serde_json::from_str(&json).unwrap();
        assert_eq!(back, KeyType::EcdsaP384);
        let owned: KeyType = serde_json::from_value(serde_json::json!("aes256-gcm96")).unwrap();
        assert_eq!(owned, KeyType::Aes256Gcm96);
        let err = serde_json::from_str::<KeyType>("\"rsa-1024\"").unwrap_err();
        assert!(err.to_string().contains("unsupported key type"), "{err}");
        assert!(serde_json::from_str::<KeyType>("2048").is_err());
    }
}
