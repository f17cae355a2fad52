//! The `pkcs11` provider: distribution into on-premises HSMs (any PKCS#11
//! token), through the token's own unwrap.
//!
//! The token holds an RSA unwrapping key (label `keymgmt-unwrap`, 3072
//! bits or more, generated in the token, private half sensitive,
//! non-extractable, `CKA_UNWRAP` only). Vault wraps each version in
//! software for its public half as a `CKM_RSA_AES_KEY_WRAP` blob and the
//! token unwraps it in two steps: `CKM_RSA_PKCS_OAEP` into an ephemeral
//! AES-256 session key, then `CKM_AES_KEY_WRAP_PAD` of the PKCS#8 (or raw
//! AES key) into a token object. OAEP is tried with SHA-256 and falls back
//! to SHA-1 when the token refuses it (SoftHSM has only SHA-1). The
//! one-step `CKM_RSA_AES_KEY_WRAP` is not used: the `cryptoki` crate can
//! neither name nor list it (it drops mechanism types it does not know,
//! and only vendor-defined values can be built), and this crate has no
//! unsafe code to call `cryptoki-sys` directly; the two steps take the
//! same blob and keep the ephemeral key inside the token.
//!
//! Mapping: every object of a distribution has label `<key>-<unix
//! seconds>` (`target.name`) and a per-version `CKA_ID`: the 16 bytes of
//! the distribution id followed by the version, big-endian; the recorded
//! provider id is its hex. Objects are token objects, private, sensitive
//! and non-extractable, with every usage attribute written out (SoftHSM's
//! defaults are all-on and not sensitive); asymmetric keys get a public
//! key object too. A version below `min_enabled_version` has every usage
//! attribute off from its creation on. PKCS#11 has no "current version":
//! applications pick the highest enabled `CKA_ID` of the label.
//!
//! Drift (`inspect`): every key object under the label, grouped by
//! `CKA_ID`; an id that is not a recorded version's is foreign (its
//! Vault version read from the id when it carries the distribution's
//! prefix). A version is enabled when the usage attributes its purposes
//! need are on (one usage attribute on is enough to count a version that
//! should be disabled, or a foreign one, as usable); its material is the
//! SubjectPublicKeyInfo of its public key object (RSA private keys show
//! their modulus too), or an AES key's `CKA_CHECK_VALUE` where the token
//! gives one: the provider never uses a key to compute a check value.
//! `disable_foreign` switches usage attributes off, never destroys.
//!
//! Everything is safe to repeat: objects are looked up by class, label
//! and id before they are made, and removal destroys every object of the
//! label whose id carries the distribution's prefix, recorded or not.

pub mod client;
pub mod config;
#[cfg(test)]
pub mod fake;
#[cfg(test)]
mod softhsm;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::client::retry::{RetryPolicy, call_api};
use super::client::timing::{self, api_time};
use super::client::{ApiError, ErrorClass, process_env};
use super::registry::{Credential, Descriptor, any_purposes};
use super::{
    ImportRequest, ImportSession, KmsProvider, LiveKey, LiveMaterial, LiveVersion, NewId,
    Protection, ProviderConfig, ProviderError, Purpose, Target, VersionState,
};
use crate::engine::key_type::{EcCurve, KeyType};
use crate::engine::material::KeyMaterial;
use crate::engine::wrap::{EPHEMERAL_KEY_LEN, OaepHash, kwp_wrap, rsa_oaep_encrypt};
use crate::framework::error::quote;
use client::{Call, Module, TokenSession, TokenState, refusal};
use config::Settings;

/// The label (and `CKA_ID`) of the token's unwrapping key pair.
pub const UNWRAP_LABEL: &str = "keymgmt-unwrap";
/// Smallest unwrapping key accepted.
pub const MIN_UNWRAP_BITS: usize = 3072;

const AES_PURPOSES: &[Purpose] = &[
    Purpose::Encrypt,
    Purpose::Decrypt,
    Purpose::Wrap,
    Purpose::Unwrap,
];
const RSA_PURPOSES: &[Purpose] = &[
    Purpose::Sign,
    Purpose::Verify,
    Purpose::Encrypt,
    Purpose::Decrypt,
    Purpose::Wrap,
    Purpose::Unwrap,
];
const EC_PURPOSES: &[Purpose] = &[Purpose::Sign, Purpose::Verify];

/// The `pkcs11` provider.
pub static DESCRIPTOR: Descriptor = Descriptor {
    name: "pkcs11",
    title: "PKCS#11 HSM",
    key_collection: "the token label",
    credentials: &[
        Credential {
            key: "pin",
            env: None,
            secret: true,
            description: "The token's user PIN.",
        },
        Credential {
            key: "module",
            env: Some(config::ENV_MODULES),
            secret: false,
            description: "Path of the PKCS#11 module; must be in the server's KEYMGMT_PKCS11_MODULES allow-list (default: its first entry).",
        },
    ],
    support: &[
        (KeyType::Aes256Gcm96, AES_PURPOSES),
        (KeyType::Rsa2048, RSA_PURPOSES),
        (KeyType::Rsa3072, RSA_PURPOSES),
        (KeyType::Rsa4096, RSA_PURPOSES),
        (KeyType::EcdsaP256, EC_PURPOSES),
        (KeyType::EcdsaP384, EC_PURPOSES),
        (KeyType::EcdsaP521, EC_PURPOSES),
    ],
    check_purposes: any_purposes,
    protections: &[Protection::Hsm],
    import_spec: "`C_UnwrapKey` with the token's RSA unwrapping key: RSA-OAEP of an ephemeral AES-256 key, then `CKM_AES_KEY_WRAP_PAD` of the PKCS#8 or AES key; objects labelled `<key>-<unix seconds>`, a `CKA_ID` per version",
    replicates: false,
    validate: config::validate,
    check_key_name,
    connect,
};

/// Labels are byte strings with no length limit of their own; keep them
/// printable for the tools that show them.
fn check_key_name(key: &str) -> Result<(), String> {
    if key.chars().any(char::is_control) {
        return Err("its PKCS#11 label would hold control characters".into());
    }
    Ok(())
}

pub fn connect(config: &ProviderConfig) -> Result<Arc<dyn KmsProvider>, ProviderError> {
    let settings = Settings::resolve(config, &process_env)?;
    Ok(Arc::new(Pkcs11Kms::new(&settings)?))
}

/// One configured `pkcs11` provider: a token of a module, and a PIN.
pub struct Pkcs11Kms {
    module: Arc<Module>,
    token: Arc<TokenState>,
    pin: Arc<Zeroizing<String>>,
    retry: RetryPolicy,
    /// Set once the token refused RSA-OAEP with SHA-256: SHA-1 from then on.
    oaep_sha1: Arc<AtomicBool>,
    #[cfg(test)]
    faults: Option<Arc<fake::Faults>>,
}

fn add_micros(counter: &AtomicU64, spent: Duration) {
    counter.fetch_add(
        u64::try_from(spent.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// The ids and templates of one distribution's objects.
#[derive(Clone)]
struct Spec {
    label: Vec<u8>,
    /// The 16-byte prefix of every `CKA_ID` of the distribution.
    prefix: [u8; 16],
    key_type: KeyType,
    purposes: Vec<Purpose>,
    name: String,
}

impl Spec {
    fn new(target: &Target) -> Self {
        Self {
            label: target.name.as_bytes().to_vec(),
            prefix: id_prefix(&target.id),
            key_type: target.key_type,
            purposes: target.purposes.clone(),
            name: target.name.clone(),
        }
    }

    fn id(&self, version: u32) -> Vec<u8> {
        let mut id = self.prefix.to_vec();
        id.extend_from_slice(&version.to_be_bytes());
        id
    }

    fn key_class(&self) -> ObjectClass {
        if self.key_type.is_asymmetric() {
            ObjectClass::PRIVATE_KEY
        } else {
            ObjectClass::SECRET_KEY
        }
    }

    fn ck_key_type(&self) -> CkKeyType {
        if self.key_type.rsa_bits().is_some() {
            CkKeyType::RSA
        } else if self.key_type.ec_curve().is_some() {
            CkKeyType::EC
        } else {
            CkKeyType::AES
        }
    }

    /// Every usage attribute of `class`, on for the purposes when enabled.
    fn usage(&self, class: ObjectClass, enabled: bool) -> Vec<Attribute> {
        let on = |p: Purpose| enabled && self.purposes.contains(&p);
        if class == ObjectClass::PRIVATE_KEY {
            vec![
                Attribute::Sign(on(Purpose::Sign)),
                Attribute::Decrypt(on(Purpose::Decrypt)),
                Attribute::Unwrap(on(Purpose::Unwrap)),
                Attribute::SignRecover(false),
                Attribute::Derive(false),
            ]
        } else if class == ObjectClass::PUBLIC_KEY {
            vec![
                Attribute::Verify(on(Purpose::Verify)),
                Attribute::Encrypt(on(Purpose::Encrypt)),
                Attribute::Wrap(on(Purpose::Wrap)),
                Attribute::VerifyRecover(false),
                Attribute::Derive(false),
            ]
        } else {
            vec![
                Attribute::Encrypt(on(Purpose::Encrypt)),
                Attribute::Decrypt(on(Purpose::Decrypt)),
                Attribute::Wrap(on(Purpose::Wrap)),
                Attribute::Unwrap(on(Purpose::Unwrap)),
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Derive(false),
            ]
        }
    }

    fn find_template(&self, class: ObjectClass, version: u32) -> Vec<Attribute> {
        vec![
            Attribute::Class(class),
            Attribute::Label(self.label.clone()),
            Attribute::Id(self.id(version)),
        ]
    }

    /// The private or secret key's unwrap template.
    fn key_template(&self, version: u32, enabled: bool) -> Vec<Attribute> {
        let class = self.key_class();
        let mut template = vec![
            Attribute::Class(class),
            Attribute::KeyType(self.ck_key_type()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Copyable(false),
            Attribute::Label(self.label.clone()),
            Attribute::Id(self.id(version)),
        ];
        template.extend(self.usage(class, enabled));
        template
    }

    /// The public key object, from the material's SubjectPublicKeyInfo.
    fn public_template(
        &self,
        version: u32,
        enabled: bool,
        material: &KeyMaterial,
    ) -> Result<Vec<Attribute>, ApiError> {
        let spki = material.public_key_der().ok_or_else(|| {
            refusal(
                ErrorClass::Invalid,
                "material",
                "the material has no public key".into(),
            )
        })?;
        let mut template = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(self.ck_key_type()),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Copyable(false),
            Attribute::Label(self.label.clone()),
            Attribute::Id(self.id(version)),
        ];
        template.extend(public_attributes(self.key_type, &spki)?);
        template.extend(self.usage(ObjectClass::PUBLIC_KEY, enabled));
        Ok(template)
    }
}

/// The 16 bytes every `CKA_ID` of a distribution starts with: its id
/// (128 random bits, hex), or a hash of an older record's id.
pub fn id_prefix(distribution_id: &str) -> [u8; 16] {
    let mut prefix = [0u8; 16];
    let decoded: Option<Vec<u8>> = (distribution_id.len() == 32)
        .then(|| {
            (0..16)
                .map(|i| u8::from_str_radix(distribution_id.get(2 * i..2 * i + 2)?, 16).ok())
                .collect()
        })
        .flatten();
    match decoded {
        Some(bytes) => prefix.copy_from_slice(&bytes),
        None => prefix.copy_from_slice(&Sha256::digest(distribution_id.as_bytes())[..16]),
    }
    prefix
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER of a named curve's OID (`CKA_EC_PARAMS`).
fn ec_params(curve: EcCurve) -> &'static [u8] {
    match curve {
        EcCurve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        EcCurve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        EcCurve::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
    }
}

/// The SubjectPublicKeyInfo header of an EC key on `curve`, up to the
/// uncompressed point (id-ecPublicKey, the curve, the BIT STRING header).
fn ec_spki_header(curve: EcCurve) -> Vec<u8> {
    let params = ec_params(curve);
    let point_len = 1 + 2 * curve.coordinate_len();
    let algorithm_len = 9 + params.len();
    let bits_len = point_len + 1;
    let mut bits = vec![0x03];
    push_len(&mut bits, bits_len);
    bits.push(0x00);
    let mut inner = vec![0x30, u8::try_from(algorithm_len).unwrap_or(0)];
    inner.extend_from_slice(&[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]);
    inner.extend_from_slice(params);
    inner.extend_from_slice(&bits);
    let mut header = vec![0x30];
    push_len(&mut header, inner.len() + point_len);
    header.extend_from_slice(&inner);
    header
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

/// `CKA_EC_POINT`: the uncompressed point as a DER OCTET STRING.
fn ec_point_attribute(point: &[u8]) -> Vec<u8> {
    let mut out = vec![0x04];
    push_len(&mut out, point.len());
    out.extend_from_slice(point);
    out
}

/// The key-specific attributes of a public key object.
fn public_attributes(key_type: KeyType, spki: &[u8]) -> Result<Vec<Attribute>, ApiError> {
    let bad = |what: &str| refusal(ErrorClass::Invalid, "material", what.to_owned());
    if key_type.rsa_bits().is_some() {
        let public =
            RsaPublicKey::from_public_key_der(spki).map_err(|_| bad("not an RSA public key"))?;
        return Ok(vec![
            Attribute::Modulus(public.n().to_bytes_be()),
            Attribute::PublicExponent(public.e().to_bytes_be()),
        ]);
    }
    let curve = key_type.ec_curve().ok_or_else(|| bad("no public key"))?;
    let point = spki
        .strip_prefix(ec_spki_header(curve).as_slice())
        .ok_or_else(|| bad("not an uncompressed EC public key on the key's curve"))?;
    Ok(vec![
        Attribute::EcParams(ec_params(curve).to_vec()),
        Attribute::EcPoint(ec_point_attribute(point)),
    ])
}

/// The SubjectPublicKeyInfo of a token object's public parts: RSA
/// `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT` (public key objects, and RSA
/// private key objects, which carry them too), or EC `CKA_EC_PARAMS` and
/// `CKA_EC_POINT` (public key objects). The curve is the object's own
/// (`key_type`'s where it shows no `CKA_EC_PARAMS`); `None` where the
/// parts are missing or are no key this crate can encode exactly.
fn spki_of(key_type: KeyType, attrs: &[Attribute]) -> Option<Vec<u8>> {
    let n = attrs.iter().find_map(|a| match a {
        Attribute::Modulus(n) => Some(n),
        _ => None,
    });
    let e = attrs.iter().find_map(|a| match a {
        Attribute::PublicExponent(e) => Some(e),
        _ => None,
    });
    if let (Some(n), Some(e)) = (n, e) {
        let public =
            RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e)).ok()?;
        return public
            .to_public_key_der()
            .ok()
            .map(|d| d.as_bytes().to_vec());
    }
    let point = attrs.iter().find_map(|a| match a {
        Attribute::EcPoint(p) => Some(p),
        _ => None,
    })?;
    let params = attrs.iter().find_map(|a| match a {
        Attribute::EcParams(p) => Some(p),
        _ => None,
    });
    let curve = match params {
        Some(params) => [EcCurve::P256, EcCurve::P384, EcCurve::P521]
            .into_iter()
            .find(|c| ec_params(*c) == params.as_slice())?,
        None => key_type.ec_curve()?,
    };
    let raw = raw_ec_point(curve, point)?;
    let mut spki = ec_spki_header(curve);
    spki.extend_from_slice(raw);
    Some(spki)
}

/// The uncompressed point of a `CKA_EC_POINT` on `curve`: a DER OCTET
/// STRING around it, as PKCS#11 specifies, or the bare point some older
/// tokens give.
fn raw_ec_point(curve: EcCurve, attribute: &[u8]) -> Option<&[u8]> {
    let raw_len = 1 + 2 * curve.coordinate_len();
    let wrapped = ec_point_attribute(&vec![0x04; raw_len]);
    let header = wrapped.get(..wrapped.len() - raw_len)?;
    let raw = match attribute.strip_prefix(header) {
        Some(raw) if raw.len() == raw_len => raw,
        _ => attribute,
    };
    (raw.len() == raw_len && raw.first() == Some(&0x04)).then_some(raw)
}

fn bool_of(attrs: &[Attribute], ty: AttributeType) -> Option<bool> {
    attrs.iter().find_map(|a| match (a, ty) {
        (Attribute::Sign(v), AttributeType::Sign)
        | (Attribute::Verify(v), AttributeType::Verify)
        | (Attribute::Encrypt(v), AttributeType::Encrypt)
        | (Attribute::Decrypt(v), AttributeType::Decrypt)
        | (Attribute::Wrap(v), AttributeType::Wrap)
        | (Attribute::Unwrap(v), AttributeType::Unwrap)
        | (Attribute::SignRecover(v), AttributeType::SignRecover)
        | (Attribute::VerifyRecover(v), AttributeType::VerifyRecover)
        | (Attribute::Derive(v), AttributeType::Derive)
        | (Attribute::Sensitive(v), AttributeType::Sensitive)
        | (Attribute::Extractable(v), AttributeType::Extractable)
        | (Attribute::NeverExtractable(v), AttributeType::NeverExtractable) => Some(*v),
        _ => None,
    })
}

/// The provider id of objects that have no (or an empty) `CKA_ID`: never
/// the hex of an id.
pub const NO_ID: &str = "no-cka-id";

/// One key object under a distribution's label, as the token has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundObject {
    /// `private`, `public` or `secret`.
    pub class: &'static str,
    /// The usage attributes that are on (`sign`, `decrypt`, ...,
    /// `sign_recover`, `verify_recover`, `derive`).
    pub usage: Vec<&'static str>,
    /// The SubjectPublicKeyInfo DER of its public parts: public key
    /// objects, and RSA private keys (which carry modulus and exponent).
    pub spki: Option<Vec<u8>>,
    /// A non-empty `CKA_CHECK_VALUE` of a secret key.
    pub check_value: Option<Vec<u8>>,
}

/// The objects under a distribution's label that share one `CKA_ID`: a
/// version of the distribution, or one Vault did not create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVersion {
    /// The Vault version the id names, when it carries the distribution's
    /// prefix.
    pub version: Option<u32>,
    /// The provider id (hex of `CKA_ID`, or [`NO_ID`]).
    pub id: String,
    pub objects: Vec<FoundObject>,
}

impl FoundVersion {
    /// Whether every purpose is usable now.
    pub fn enabled(&self, purposes: &[Purpose]) -> bool {
        purposes
            .iter()
            .all(|p| self.objects.iter().any(|o| o.usage.contains(&p.as_str())))
    }

    /// Whether any usage attribute of any of its objects is on.
    pub fn usable(&self) -> bool {
        self.objects.iter().any(|o| !o.usage.is_empty())
    }

    /// SHA-256 of the public key's SubjectPublicKeyInfo, hex.
    pub fn public_key_fingerprint(&self) -> Option<String> {
        self.objects
            .iter()
            .find_map(|o| o.spki.as_ref())
            .map(|spki| hex(&Sha256::digest(spki)))
    }

    /// The usage attributes that are on, by their PKCS#11 names: the
    /// version's state, since PKCS#11 has no other.
    fn state(&self) -> String {
        let mut on: Vec<String> = Vec::new();
        for (_, name) in USAGE {
            if self.objects.iter().any(|o| o.usage.contains(&name)) {
                on.push(format!("CKA_{}", name.to_ascii_uppercase()));
            }
        }
        if on.is_empty() {
            "every usage attribute off".to_owned()
        } else {
            format!("{} on", on.join(" "))
        }
    }
}

const USAGE: [(AttributeType, &str); 9] = [
    (AttributeType::Sign, "sign"),
    (AttributeType::Verify, "verify"),
    (AttributeType::Encrypt, "encrypt"),
    (AttributeType::Decrypt, "decrypt"),
    (AttributeType::Wrap, "wrap"),
    (AttributeType::Unwrap, "unwrap"),
    (AttributeType::SignRecover, "sign_recover"),
    (AttributeType::VerifyRecover, "verify_recover"),
    (AttributeType::Derive, "derive"),
];

/// The class name of a key object; `None` for certificates, data and the
/// like, which are no key versions.
fn key_class_name(attrs: &[Attribute]) -> Option<&'static str> {
    match attrs.iter().find_map(|a| match a {
        Attribute::Class(c) => Some(*c),
        _ => None,
    }) {
        Some(c) if c == ObjectClass::PRIVATE_KEY => Some("private"),
        Some(c) if c == ObjectClass::PUBLIC_KEY => Some("public"),
        Some(c) if c == ObjectClass::SECRET_KEY => Some("secret"),
        _ => None,
    }
}

/// The provider id of an object's `CKA_ID`.
fn id_of(attrs: &[Attribute]) -> (String, Vec<u8>) {
    let id = attrs
        .iter()
        .find_map(|a| match a {
            Attribute::Id(id) => Some(id.clone()),
            _ => None,
        })
        .unwrap_or_default();
    if id.is_empty() {
        (NO_ID.to_owned(), id)
    } else {
        (hex(&id), id)
    }
}

/// Every key object under the distribution's label, grouped by `CKA_ID`,
/// with its usage and what it shows of its material: the distribution's
/// versions (recorded or not) and objects Vault did not create. Read-only.
fn scan(s: &dyn TokenSession, spec: &Spec) -> Result<Vec<FoundVersion>, ApiError> {
    let mut versions: Vec<FoundVersion> = Vec::new();
    for handle in s.find(&[Attribute::Label(spec.label.clone())])? {
        let attrs = match s.attributes(
            handle,
            &[
                AttributeType::Class,
                AttributeType::Id,
                AttributeType::Sign,
                AttributeType::Verify,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Wrap,
                AttributeType::Unwrap,
                AttributeType::SignRecover,
                AttributeType::VerifyRecover,
                AttributeType::Derive,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::CheckValue,
            ],
        ) {
            Ok(attrs) => attrs,
            // Destroyed by another client since the search.
            Err(e) if e.code == "CKR_OBJECT_HANDLE_INVALID" => continue,
            Err(e) => return Err(e),
        };
        let Some(class) = key_class_name(&attrs) else {
            continue;
        };
        let (provider_id, id) = id_of(&attrs);
        let version = id
            .strip_prefix(spec.prefix.as_slice())
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes);
        let object = FoundObject {
            class,
            usage: USAGE
                .iter()
                .filter(|(ty, _)| bool_of(&attrs, *ty) == Some(true))
                .map(|(_, name)| *name)
                .collect(),
            spki: (class != "secret")
                .then(|| spki_of(spec.key_type, &attrs))
                .flatten(),
            check_value: attrs.iter().find_map(|a| match a {
                Attribute::CheckValue(v) if class == "secret" && !v.is_empty() => Some(v.clone()),
                _ => None,
            }),
        };
        match versions.iter_mut().find(|v| v.id == provider_id) {
            Some(found) => found.objects.push(object),
            None => versions.push(FoundVersion {
                version,
                id: provider_id,
                objects: vec![object],
            }),
        }
    }
    versions.sort_by(|a, b| {
        (a.version.is_none(), a.version, &a.id).cmp(&(b.version.is_none(), b.version, &b.id))
    });
    Ok(versions)
}

/// What the provider reports of one `CKA_ID` under the label. `recorded`
/// is Vault's version with that id, if any: a version Vault wants
/// enabled counts as enabled only when every purpose's usage attribute is
/// on, any other as soon as one usage attribute is (applications can use
/// it for that).
fn live_version(
    found: &FoundVersion,
    purposes: &[Purpose],
    recorded: Option<&VersionState<'_>>,
) -> LiveVersion {
    let wants_enabled = recorded.is_some_and(|r| r.enabled);
    // A version is its key object: a public key alone is what is left of
    // a version destroyed outside Vault.
    let has_key = found.objects.iter().any(|o| o.class != "public");
    let mut state = found.state();
    if !has_key {
        state = format!("no private key object ({state})");
    } else if found.objects.iter().any(|o| o.class == "private")
        && !found.objects.iter().any(|o| o.class == "public")
    {
        state = format!("{state}; no public key object");
    }
    let enabled = has_key
        && if wants_enabled {
            found.enabled(purposes)
        } else {
            found.usable()
        };
    LiveVersion {
        provider_id: found.id.clone(),
        vault_version: found.version,
        enabled,
        doomed: !has_key,
        state,
        material: live_material(found, recorded.and_then(|r| r.material.public_key_der())),
    }
}

/// What the objects show of the key: every SubjectPublicKeyInfo they
/// carry (one that differs from Vault's `ours` first, so that a replaced
/// public key object or private key shows), or a secret key's
/// `CKA_CHECK_VALUE`.
fn live_material(found: &FoundVersion, ours: Option<Vec<u8>>) -> LiveMaterial {
    let spkis: Vec<&Vec<u8>> = found
        .objects
        .iter()
        .filter_map(|o| o.spki.as_ref())
        .collect();
    if let Some(spki) = spkis
        .iter()
        .find(|s| ours.as_ref().is_some_and(|o| o != **s))
        .or(spkis.first())
    {
        return LiveMaterial::PublicKey((*spki).clone());
    }
    if let Some(kcv) = found.objects.iter().find_map(|o| o.check_value.as_ref()) {
        return LiveMaterial::CheckValue(kcv.clone());
    }
    if found.objects.iter().any(|o| o.class == "secret") {
        return LiveMaterial::Unverifiable(
            "the token shows no CKA_CHECK_VALUE for this AES key (SoftHSM leaves it empty on unwrapped keys); the provider does not encrypt with the key to compute one".into(),
        );
    }
    LiveMaterial::Unverifiable(
        "the token shows no public key for this version (no public key object, or one this provider cannot read)".into(),
    )
}

/// The unwrapping key: its private handle and public half, checked.
fn unwrapping_key(
    s: &dyn TokenSession,
    token: &str,
) -> Result<(ObjectHandle, RsaPublicKey), ApiError> {
    let setup = |message: String| refusal(ErrorClass::Invalid, "unwrapping key", message);
    let find = || -> Result<(Vec<ObjectHandle>, Vec<ObjectHandle>), ApiError> {
        let label = UNWRAP_LABEL.as_bytes().to_vec();
        let private = s.find(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.clone()),
        ])?;
        let public = s.find(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(label),
        ])?;
        Ok((private, public))
    };
    let (mut private, mut public) = find()?;
    if private.is_empty() && public.is_empty() {
        // None yet: generate it in the token, once per process at a time
        // (a search under the lock sees what another import made).
        let _one = lock_generation();
        (private, public) = find()?;
        if private.is_empty() && public.is_empty() {
            // Not the target's object: a failed import that made only
            // this key has touched nothing of the distribution.
            let (public_key, private_key) =
                s.generate_unwrapping_key(&unwrap_public_template(), &unwrap_private_template())?;
            log::info!(
                "pkcs11: generated the RSA-{GENERATED_UNWRAP_BITS} unwrapping key {UNWRAP_LABEL:?} in token {}",
                quote(token)
            );
            (private, public) = (vec![private_key], vec![public_key]);
        }
    }
    let (&[private], &[public]) = (private.as_slice(), public.as_slice()) else {
        return Err(setup(format!(
            "token {} must hold exactly one RSA key pair labelled {UNWRAP_LABEL:?} (found {} private, {} public keys); generate it in the token as the README shows",
            quote(token),
            private.len(),
            public.len()
        )));
    };
    let attrs = s.attributes(
        private,
        &[
            AttributeType::Unwrap,
            AttributeType::Decrypt,
            AttributeType::Sign,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
        ],
    )?;
    let wanted = [
        (AttributeType::Unwrap, true, "CKA_UNWRAP"),
        // With CKA_DECRYPT on, anyone holding the PIN could decrypt a
        // captured wrapped key.
        (AttributeType::Decrypt, false, "CKA_DECRYPT"),
        (AttributeType::Sign, false, "CKA_SIGN"),
        (AttributeType::Sensitive, true, "CKA_SENSITIVE"),
        (AttributeType::Extractable, false, "CKA_EXTRACTABLE"),
        (
            AttributeType::NeverExtractable,
            true,
            "CKA_NEVER_EXTRACTABLE",
        ),
    ];
    for (ty, want, name) in wanted {
        if bool_of(&attrs, ty) != Some(want) {
            return Err(setup(format!(
                "the unwrapping key {UNWRAP_LABEL:?} of token {} must have {name} {want}: generate it in the token with CKA_UNWRAP as its only usage",
                quote(token)
            )));
        }
    }
    let attrs = s.attributes(
        public,
        &[AttributeType::Modulus, AttributeType::PublicExponent],
    )?;
    let n = attrs.iter().find_map(|a| match a {
        Attribute::Modulus(n) => Some(BigUint::from_bytes_be(n)),
        _ => None,
    });
    let e = attrs.iter().find_map(|a| match a {
        Attribute::PublicExponent(e) => Some(BigUint::from_bytes_be(e)),
        _ => None,
    });
    let public_key = n
        .zip(e)
        .and_then(|(n, e)| RsaPublicKey::new(n, e).ok())
        .ok_or_else(|| {
            setup(format!(
                "the unwrapping key {UNWRAP_LABEL:?} of token {} is not an RSA key",
                quote(token)
            ))
        })?;
    if public_key.n().bits() < MIN_UNWRAP_BITS {
        return Err(setup(format!(
            "the unwrapping key {UNWRAP_LABEL:?} of token {} has {} bits; at least {MIN_UNWRAP_BITS} are required",
            quote(token),
            public_key.n().bits()
        )));
    }
    Ok((private, public_key))
}

/// Size of an unwrapping key the provider generates itself.
pub const GENERATED_UNWRAP_BITS: u64 = 3072;

fn lock_generation() -> std::sync::MutexGuard<'static, ()> {
    static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unwrap_id() -> Vec<u8> {
    UNWRAP_LABEL.as_bytes().to_vec()
}

/// The public half of a generated unwrapping key: it may wrap (Vault
/// wraps in software with it, read from here) and encrypt, nothing else.
fn unwrap_public_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(CkKeyType::RSA),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(UNWRAP_LABEL.as_bytes().to_vec()),
        Attribute::Id(unwrap_id()),
        Attribute::ModulusBits(GENERATED_UNWRAP_BITS.into()),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        Attribute::Wrap(true),
        Attribute::Encrypt(true),
        Attribute::Verify(false),
        Attribute::VerifyRecover(false),
        Attribute::Derive(false),
    ]
}

/// The private half: sensitive, never extractable, `CKA_UNWRAP` only.
fn unwrap_private_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(CkKeyType::RSA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Copyable(false),
        Attribute::Label(UNWRAP_LABEL.as_bytes().to_vec()),
        Attribute::Id(unwrap_id()),
        Attribute::Unwrap(true),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::SignRecover(false),
        Attribute::Derive(false),
    ]
}

/// The ephemeral AES key of the first unwrap: a session object that can
/// only unwrap.
fn ephemeral_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(CkKeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Unwrap(true),
        Attribute::Wrap(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
    ]
}

fn oaep_mechanism(hash: OaepHash) -> Mechanism<'static> {
    let (alg, mgf) = match hash {
        OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
    };
    // An empty source is NULL: SoftHSM refuses a non-NULL empty label.
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(alg, mgf, PkcsOaepSource::empty()))
}

/// Whether the OAEP hash (or its parameters) was refused, not the blob.
fn oaep_refused(err: &ApiError) -> bool {
    matches!(
        err.code.as_str(),
        "CKR_ARGUMENTS_BAD" | "CKR_MECHANISM_PARAM_INVALID" | "CKR_MECHANISM_INVALID"
    )
}

/// What one import attempt needs, owned, for the blocking pool.
struct ImportJob {
    spec: Spec,
    version: u32,
    material: KeyMaterial,
    enabled: bool,
    token: String,
    touched: Arc<AtomicBool>,
    wrap_micros: Arc<AtomicU64>,
    /// The OAEP hash the token took last time (SHA-1 after a refusal).
    oaep_sha1: Arc<AtomicBool>,
}

/// A call that may have created or changed something: a refusal changed
/// nothing, anything else may have.
fn note_touch<T>(touched: &AtomicBool, result: &Result<T, ApiError>) {
    if !matches!(result, Err(e) if matches!(e.class, ErrorClass::AccessDenied | ErrorClass::Invalid))
    {
        touched.store(true, Ordering::SeqCst);
    }
}

/// Makes the object's usage attributes what they should be; writes only
/// those that differ.
fn ensure_usage(
    s: &dyn TokenSession,
    object: ObjectHandle,
    wanted: &[Attribute],
    touched: &AtomicBool,
) -> Result<(), ApiError> {
    let types: Vec<AttributeType> = wanted.iter().map(Attribute::attribute_type).collect();
    let have = s.attributes(object, &types)?;
    let differ: Vec<Attribute> = wanted
        .iter()
        .filter(|w| !have.contains(w))
        .cloned()
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    let result = s.set_attributes(object, &differ);
    note_touch(touched, &result);
    result
}

/// The key object of a version: the one found, extra copies destroyed.
fn one_of(
    s: &dyn TokenSession,
    mut found: Vec<ObjectHandle>,
    touched: &AtomicBool,
) -> Result<Option<ObjectHandle>, ApiError> {
    if found.len() > 1 {
        // Only another client can have made a copy with our label and id.
        for extra in found.split_off(1) {
            let result = s.destroy(extra);
            note_touch(touched, &result);
            result?;
        }
    }
    Ok(found.pop())
}

impl ImportJob {
    /// One attempt: finds what an earlier attempt made, and makes the rest.
    fn run(&self, s: &dyn TokenSession) -> Result<(), ApiError> {
        let spec = &self.spec;
        let class = spec.key_class();
        let found = s.find(&spec.find_template(class, self.version))?;
        match one_of(s, found, &self.touched)? {
            Some(key) => ensure_usage(s, key, &spec.usage(class, self.enabled), &self.touched)?,
            None => self.unwrap(s)?,
        }
        if spec.key_type.is_asymmetric() {
            self.ensure_public(s)?;
        }
        Ok(())
    }

    fn ensure_public(&self, s: &dyn TokenSession) -> Result<(), ApiError> {
        let spec = &self.spec;
        let found = s.find(&spec.find_template(ObjectClass::PUBLIC_KEY, self.version))?;
        match one_of(s, found, &self.touched)? {
            Some(public) => ensure_usage(
                s,
                public,
                &spec.usage(ObjectClass::PUBLIC_KEY, self.enabled),
                &self.touched,
            ),
            None => {
                let template = spec.public_template(self.version, self.enabled, &self.material)?;
                let result = s.create(&template);
                note_touch(&self.touched, &result);
                result.map(|_| ())
            }
        }
    }

    /// The two-step unwrap into a token object.
    fn unwrap(&self, s: &dyn TokenSession) -> Result<(), ApiError> {
        let (unwrap_key, public) = unwrapping_key(s, &self.token)?;
        let started = Instant::now();
        let mut ephemeral: Zeroizing<[u8; EPHEMERAL_KEY_LEN]> = Zeroizing::new(rand::random());
        let wrapped_material = kwp_wrap(&ephemeral, self.material.as_bytes())
            .map_err(|e| refusal(ErrorClass::Invalid, "wrap", format!("wrapping failed: {e}")))?;
        let mut hashes = vec![OaepHash::Sha256, OaepHash::Sha1];
        if self.oaep_sha1.load(Ordering::Relaxed) {
            hashes.remove(0);
        }
        let mut session_key = None;
        let mut last = None;
        for hash in hashes {
            let wrapped_key =
                rsa_oaep_encrypt(&public, hash, ephemeral.as_slice()).map_err(|e| {
                    refusal(ErrorClass::Invalid, "wrap", format!("wrapping failed: {e}"))
                })?;
            match s.unwrap_key(
                Call::UnwrapSessionKey,
                &oaep_mechanism(hash),
                unwrap_key,
                &wrapped_key,
                &ephemeral_template(),
            ) {
                Ok(key) => {
                    session_key = Some(key);
                    break;
                }
                Err(err) if hash == OaepHash::Sha256 && oaep_refused(&err) => {
                    log::info!(
                        "pkcs11: token {} refused RSA-OAEP with SHA-256 ({}); using SHA-1",
                        quote(&self.token),
                        err.code
                    );
                    self.oaep_sha1.store(true, Ordering::Relaxed);
                    last = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        ephemeral.as_mut_slice().fill(0);
        add_micros(&self.wrap_micros, started.elapsed());
        let Some(session_key) = session_key else {
            return Err(last.unwrap_or_else(|| {
                refusal(ErrorClass::Invalid, "oaep", "RSA-OAEP refused".into())
            }));
        };
        let result = s.unwrap_key(
            Call::UnwrapKey,
            &Mechanism::AesKeyWrapPad,
            session_key,
            &wrapped_material,
            &self.spec.key_template(self.version, self.enabled),
        );
        note_touch(&self.touched, &result);
        // The ephemeral key goes whatever happened; if it cannot be
        // destroyed, the session is given up, which destroys it.
        if let Err(err) = s.destroy(session_key) {
            log::warn!(
                "pkcs11: destroying the ephemeral key failed ({}); closing its session",
                err.code
            );
            result?;
            return Err(refusal(
                ErrorClass::Network,
                &err.code,
                "C_DestroyObject of the ephemeral key".into(),
            ));
        }
        result.map(|_| ())
    }
}

impl Pkcs11Kms {
    pub fn new(settings: &Settings) -> Result<Self, ProviderError> {
        let module =
            Module::get(&settings.module).map_err(|e| to_provider(&e, "loading the module"))?;
        let token = module.token(&settings.token);
        Ok(Self {
            module,
            token,
            pin: Arc::new(settings.pin.clone()),
            retry: settings.retry,
            oaep_sha1: Arc::default(),
            #[cfg(test)]
            faults: None,
        })
    }

    #[cfg(test)]
    pub fn with_faults(mut self, faults: Arc<fake::Faults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Runs `body` with a logged-in session on the blocking pool, each
    /// attempt under the retry policy.
    async fn call<T, F>(&self, what: &str, body: F) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        F: Fn(&dyn TokenSession) -> Result<T, ApiError> + Send + Sync + 'static,
    {
        let body = Arc::new(body);
        let label = format!("pkcs11: {what} in token {}", self.token.label());
        let result = call_api(
            &self.retry,
            &label,
            |_| {
                let (module, token, pin, body) = (
                    self.module.clone(),
                    self.token.clone(),
                    self.pin.clone(),
                    body.clone(),
                );
                #[cfg(test)]
                let faults = self.faults.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        module.run(&token, &pin, |session| {
                            let live = client::Live(session);
                            #[cfg(test)]
                            if let Some(faults) = &faults {
                                return body(&fake::Faulty {
                                    inner: &live,
                                    faults,
                                });
                            }
                            body(&live)
                        })
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(refusal(
                            ErrorClass::Unavailable,
                            "panic",
                            format!("a PKCS#11 call failed: {e}"),
                        ))
                    })
                }
            },
            // Per import (task-local): imports run in parallel.
            api_time,
        )
        .await;
        result.map_err(|e| to_provider(&e, what))
    }

    /// What the token holds under `target`'s label: every `CKA_ID`
    /// (the distribution's versions, recorded or not, and objects Vault did
    /// not create) with its objects, usage and public key. Read-only.
    pub async fn inventory(&self, target: &Target) -> Result<Vec<FoundVersion>, ProviderError> {
        let spec = Spec::new(target);
        self.call("listing objects", move |s| scan(s, &spec)).await
    }

    fn token_label(&self) -> String {
        self.token.label().to_owned()
    }
}

/// The error the user sees, never with the PIN (messages are built from
/// return value names and our own text).
fn to_provider(err: &ApiError, what: &str) -> ProviderError {
    let message = if err.message.starts_with("C_") || err.message.is_empty() {
        format!("PKCS#11 {what} failed: {err}")
    } else {
        format!("PKCS#11 {what}: {}", err.message)
    };
    match err.class {
        ErrorClass::AccessDenied => ProviderError::Permission(message),
        ErrorClass::Throttled | ErrorClass::Unavailable | ErrorClass::Network => {
            ProviderError::Unavailable(message)
        }
        ErrorClass::NotFound => ProviderError::Config(message),
        ErrorClass::AlreadyExists | ErrorClass::InvalidState | ErrorClass::Invalid => {
            ProviderError::Rejected(message)
        }
    }
}

struct Pkcs11Import<'a> {
    provider: &'a Pkcs11Kms,
    target: &'a Target,
    touched: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ImportSession for Pkcs11Import<'_> {
    async fn import(&self, request: ImportRequest<'_>) -> Result<String, ProviderError> {
        let (provider, target) = (self.provider, self.target);
        if request.material.key_type() != target.key_type {
            return Err(ProviderError::Rejected(format!(
                "version {} holds {} material, not {}",
                request.version,
                request.material.key_type(),
                target.key_type
            )));
        }
        let spec = Spec::new(target);
        let id = hex(&spec.id(request.version));
        let started = Instant::now();
        let wrap_micros = Arc::new(AtomicU64::new(0));
        let job = Arc::new(ImportJob {
            spec,
            version: request.version,
            material: request.material.clone(),
            enabled: request.enabled,
            token: provider.token_label(),
            touched: self.touched.clone(),
            wrap_micros: wrap_micros.clone(),
            oaep_sha1: provider.oaep_sha1.clone(),
        });
        let (result, times) =
            timing::timed(provider.call("importing a version", move |s| job.run(s))).await;
        result?;
        // The wrapping runs inside the blocking call: the token's share is
        // the rest of it.
        let wrap_us = u128::from(wrap_micros.load(Ordering::Relaxed));
        log::info!(
            key = target.name.as_str(),
            version = request.version,
            pkcs11_id = id.as_str(),
            token_us = times.api.as_micros().saturating_sub(wrap_us),
            wrap_us = wrap_us,
            total_us = started.elapsed().as_micros();
            "pkcs11: imported version {} of {}",
            request.version,
            target.name
        );
        Ok(id)
    }

    /// Every version has its own `CKA_ID`, so an interrupted import is
    /// found by label and id whatever else is in flight: as many at once
    /// as the session pool holds.
    async fn concurrency(&self, versions: usize) -> Result<usize, ProviderError> {
        Ok(versions.clamp(1, client::POOL))
    }

    fn touched(&self) -> bool {
        self.touched.load(Ordering::SeqCst)
    }

    async fn finish(self: Box<Self>) {}
}

#[async_trait::async_trait]
impl KmsProvider for Pkcs11Kms {
    fn begin_import<'a>(&'a self, target: &'a Target) -> Box<dyn ImportSession + 'a> {
        Box::new(Pkcs11Import {
            provider: self,
            target,
            touched: Arc::default(),
        })
    }

    /// Sets every version's usage attributes; a public key object a crash
    /// left out is made.
    async fn set_enabled(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Vec<NewId>, ProviderError> {
        let spec = Spec::new(target);
        let token = self.token_label();
        let wanted: Vec<(u32, bool, KeyMaterial)> = versions
            .iter()
            .map(|v| (v.version, v.enabled, v.material.clone()))
            .collect();
        self.call("enabling and disabling versions", move |s| {
            let touched = AtomicBool::new(false);
            for (version, enabled, material) in &wanted {
                let class = spec.key_class();
                let found = s.find(&spec.find_template(class, *version))?;
                let Some(key) = one_of(s, found, &touched)? else {
                    return Err(refusal(
                        ErrorClass::InvalidState,
                        "missing",
                        format!(
                            "version {version} of {} (CKA_ID {}) is not in token {}; remove the key from the provider and distribute it again",
                            spec.name,
                            hex(&spec.id(*version)),
                            quote(&token)
                        ),
                    ));
                };
                ensure_usage(s, key, &spec.usage(class, *enabled), &touched)?;
                if spec.key_type.is_asymmetric() {
                    ImportJob {
                        spec: spec.clone(),
                        version: *version,
                        material: material.clone(),
                        enabled: *enabled,
                        token: token.clone(),
                        touched: Arc::default(),
                        wrap_micros: Arc::default(),
                        oaep_sha1: Arc::default(),
                    }
                    .ensure_public(s)?;
                }
            }
            Ok(())
        })
        .await?;
        Ok(Vec::new())
    }

    /// Every `CKA_ID` under the label, Vault's and foreign ones. PKCS#11
    /// has no current version (applications pick by label and id) and no
    /// deletion schedule: a destroyed version is simply absent, and one
    /// whose private key alone was destroyed is reported doomed.
    async fn inspect(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Option<LiveKey>, ProviderError> {
        let found = self.inventory(target).await?;
        if found.is_empty() {
            return Ok(None);
        }
        let versions = found
            .iter()
            .map(|f| {
                let recorded = versions.iter().find(|v| v.provider_id == f.id);
                live_version(f, &target.purposes, recorded)
            })
            .collect();
        Ok(Some(LiveKey {
            versions,
            has_current: false,
            can_make_current: false,
            current: None,
        }))
    }

    /// Switches every usage attribute off on the key objects under the
    /// label whose `CKA_ID` is one of `provider_ids`; destroys nothing.
    async fn disable_foreign(
        &self,
        target: &Target,
        provider_ids: &[String],
    ) -> Result<(), ProviderError> {
        let spec = Spec::new(target);
        let ids = provider_ids.to_vec();
        self.call("disabling objects Vault did not create", move |s| {
            let touched = AtomicBool::new(false);
            for handle in s.find(&[Attribute::Label(spec.label.clone())])? {
                let attrs = match s.attributes(handle, &[AttributeType::Class, AttributeType::Id]) {
                    Ok(attrs) => attrs,
                    Err(e) if e.code == "CKR_OBJECT_HANDLE_INVALID" => continue,
                    Err(e) => return Err(e),
                };
                let class = match key_class_name(&attrs) {
                    Some("private") => ObjectClass::PRIVATE_KEY,
                    Some("public") => ObjectClass::PUBLIC_KEY,
                    Some(_) => ObjectClass::SECRET_KEY,
                    None => continue,
                };
                if !ids.contains(&id_of(&attrs).0) {
                    continue;
                }
                ensure_usage(s, handle, &spec.usage(class, false), &touched)?;
            }
            Ok(())
        })
        .await
    }

    /// Destroys every object with the distribution's label and id prefix.
    async fn remove(
        &self,
        target: &Target,
        _versions: &[VersionState<'_>],
        _unrecorded: &[u32],
    ) -> Result<(), ProviderError> {
        let spec = Spec::new(target);
        self.call("removing objects", move |s| {
            for handle in s.find(&[Attribute::Label(spec.label.clone())])? {
                let attrs = s.attributes(handle, &[AttributeType::Id])?;
                let ours = attrs.iter().any(|a| {
                    matches!(a, Attribute::Id(id) if id.len() == 20 && id.starts_with(&spec.prefix))
                });
                if !ours {
                    continue;
                }
                match s.destroy(handle) {
                    Ok(()) => {}
                    // Gone already (a repeat, or another client).
                    Err(e) if e.code == "CKR_OBJECT_HANDLE_INVALID" => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_distribution_and_the_version() {
        let target = Target::for_test(
            "k-1700000000",
            KeyType::EcdsaP256,
            &[Purpose::Sign],
            Protection::Hsm,
        );
        let spec = Spec::new(&target);
        let id = spec.id(7);
        assert_eq!(id.len(), 20);
        assert_eq!(&id[16..], &[0, 0, 0, 7]);
        let prefix = id_prefix("00112233445566778899aabbccddeeff");
        assert_eq!(hex(&prefix), "00112233445566778899aabbccddeeff");
        assert_ne!(id_prefix("k-1700000000"), id_prefix("k-1700000001"));
    }

    #[test]
    fn ec_public_keys_round_trip_through_their_attributes() {
        for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::EcdsaP521] {
            let material = KeyMaterial::generate(key_type).unwrap();
            let spki = material.public_key_der().unwrap();
            let attrs = public_attributes(key_type, &spki).unwrap();
            let point = attrs
                .iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(p.clone()),
                    _ => None,
                })
                .unwrap();
            // A DER OCTET STRING of the uncompressed point.
            let raw_len = 1 + 2 * key_type.ec_curve().unwrap().coordinate_len();
            assert_eq!(point[0], 0x04);
            assert_eq!(point[point.len() - raw_len], 0x04);
            if key_type == KeyType::EcdsaP521 {
                assert_eq!(&point[..3], &[0x04, 0x81, 0x85]);
            }
            assert_eq!(spki_of(key_type, &attrs).unwrap(), spki, "{key_type}");
        }
        let material = KeyMaterial::generate(KeyType::Rsa2048).unwrap();
        let spki = material.public_key_der().unwrap();
        let attrs = public_attributes(KeyType::Rsa2048, &spki).unwrap();
        assert_eq!(spki_of(KeyType::Rsa2048, &attrs).unwrap(), spki);
        // EC material declared as another curve is refused.
        let p256 = KeyMaterial::generate(KeyType::EcdsaP256).unwrap();
        assert!(public_attributes(KeyType::EcdsaP384, &p256.public_key_der().unwrap()).is_err());
    }

    fn object(class: &'static str, usage: &[&'static str], spki: Option<Vec<u8>>) -> FoundObject {
        FoundObject {
            class,
            usage: usage.to_vec(),
            spki,
            check_value: None,
        }
    }

    #[test]
    fn live_versions_are_judged_by_their_usage_attributes() {
        let material = KeyMaterial::generate(KeyType::EcdsaP256).unwrap();
        let spki = material.public_key_der().unwrap();
        let purposes = [Purpose::Sign, Purpose::Verify];
        let found = |private: &[&'static str], public: &[&'static str]| FoundVersion {
            version: Some(1),
            id: "ab".into(),
            objects: vec![
                object("private", private, None),
                object("public", public, Some(spki.clone())),
            ],
        };
        let state = |enabled| VersionState {
            version: 1,
            provider_id: "ab",
            enabled,
            material: &material,
        };
        // Wanted enabled: every purpose's attribute must be on.
        let full = live_version(
            &found(&["sign"], &["verify"]),
            &purposes,
            Some(&state(true)),
        );
        assert!(full.enabled && !full.doomed, "{full:?}");
        assert_eq!(full.state, "CKA_SIGN CKA_VERIFY on");
        assert_eq!(full.material, LiveMaterial::PublicKey(spki.clone()));
        let half = live_version(&found(&[], &["verify"]), &purposes, Some(&state(true)));
        assert!(!half.enabled, "CKA_SIGN off: {half:?}");
        // Wanted disabled, and foreign: one usage attribute on is usable.
        let one = live_version(&found(&["sign"], &[]), &purposes, Some(&state(false)));
        assert!(one.enabled, "{one:?}");
        let off = live_version(&found(&[], &[]), &purposes, Some(&state(false)));
        assert!(!off.enabled);
        assert_eq!(off.state, "every usage attribute off");
        let foreign = live_version(&found(&["derive"], &[]), &purposes, None);
        assert!(foreign.enabled && foreign.vault_version == Some(1));
        // A public key alone: the version was destroyed.
        let mut gone = found(&[], &["verify"]);
        gone.objects.remove(0);
        let gone = live_version(&gone, &purposes, Some(&state(true)));
        assert!(gone.doomed && !gone.enabled, "{gone:?}");
        // Two public keys: the one that is not Vault's shows.
        let other = KeyMaterial::generate(KeyType::EcdsaP256).unwrap();
        let mut two = found(&["sign"], &["verify"]);
        two.objects
            .push(object("public", &[], other.public_key_der()));
        let two = live_version(&two, &purposes, Some(&state(true)));
        assert_eq!(
            two.material,
            LiveMaterial::PublicKey(other.public_key_der().unwrap())
        );
        // AES: the check value where the token has one.
        let mut secret = object("secret", &["encrypt"], None);
        let aes = FoundVersion {
            version: Some(1),
            id: "ab".into(),
            objects: vec![secret.clone()],
        };
        assert!(matches!(
            live_version(&aes, &[Purpose::Encrypt], None).material,
            LiveMaterial::Unverifiable(_)
        ));
        secret.check_value = Some(vec![1, 2, 3]);
        let aes = FoundVersion {
            objects: vec![secret],
            ..aes
        };
        assert_eq!(
            live_version(&aes, &[Purpose::Encrypt], None).material,
            LiveMaterial::CheckValue(vec![1, 2, 3])
        );
    }

    #[test]
    fn ec_points_are_read_wrapped_or_bare_on_their_own_curve() {
        let material = KeyMaterial::generate(KeyType::EcdsaP384).unwrap();
        let spki = material.public_key_der().unwrap();
        let attrs = public_attributes(KeyType::EcdsaP384, &spki).unwrap();
        // The object's CKA_EC_PARAMS decide the curve, not the target's.
        assert_eq!(spki_of(KeyType::EcdsaP256, &attrs), Some(spki.clone()));
        let bare: Vec<Attribute> = attrs
            .iter()
            .map(|a| match a {
                Attribute::EcPoint(p) => Attribute::EcPoint(p[2..].to_vec()),
                other => other.clone(),
            })
            .collect();
        assert_eq!(spki_of(KeyType::EcdsaP384, &bare), Some(spki));
        let short = [Attribute::EcPoint(vec![0x04, 0x03, 0x04, 1, 2])];
        assert_eq!(spki_of(KeyType::EcdsaP256, &short), None);
    }

    #[test]
    fn templates_write_every_usage_attribute() {
        let target = Target::for_test(
            "k-1700000000",
            KeyType::Rsa2048,
            &[Purpose::Sign, Purpose::Encrypt],
            Protection::Hsm,
        );
        let spec = Spec::new(&target);
        let private = spec.key_template(1, true);
        for attr in [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::SignRecover(false),
            Attribute::Derive(false),
        ] {
            assert!(private.contains(&attr), "{attr:?}");
        }
        assert!(!private.iter().any(|a| matches!(a, Attribute::Verify(_))));
        assert!(
            spec.key_template(1, false)
                .contains(&Attribute::Sign(false))
        );
        let public = spec.usage(ObjectClass::PUBLIC_KEY, true);
        assert!(public.contains(&Attribute::Encrypt(true)));
        assert!(public.contains(&Attribute::Verify(false)));
    }
}
