//! An in-memory Key Vault for the unit tests: the [`KeyVaultApi`] calls
//! with Key Vault's semantics (a new version per import, soft delete,
//! 404s, 409 for a soft-deleted name), BYOK blobs really unwrapped, and
//! faults injected per call. The black-box tests use the HTTPS fake in
//! `plugin-tests/`, which checks every request against the REST spec.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use aes_kw::KekAes256;
use azure_core::error::{Error as AzureError, ErrorKind};
use azure_security_keyvault_keys::models::{CreateKeyParameters, Key, KeyProperties};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::client::{KeyVaultApi, http_error};
use crate::engine::key_type::KeyType;
use crate::engine::material::KeyMaterial;
use crate::engine::material::test_support::sample;

/// A Key Vault REST call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Create,
    Import,
    Get,
    Update,
    Delete,
    List,
    GetDeleted,
    Purge,
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 before doing anything.
    Unavailable,
    /// 429 with `Retry-After: 0`.
    Throttled,
    /// The call takes effect, then the connection drops.
    Lost,
    /// 403 naming the call's permission.
    Denied,
}

/// One key version as the fake holds it.
#[derive(Debug, Clone)]
pub struct FakeVersion {
    pub id: String,
    pub tags: BTreeMap<String, String>,
    pub enabled: bool,
    /// SubjectPublicKeyInfo DER of the imported key (none for KEKs).
    pub spki: Option<Vec<u8>>,
    pub kty: String,
    pub key_ops: Vec<String>,
    /// `attributes.created`, unix seconds; set when the version is added,
    /// one second after the previous version.
    pub created: i64,
}

#[derive(Default)]
struct State {
    keys: BTreeMap<String, Vec<FakeVersion>>,
    deleted: BTreeSet<String>,
    /// Key-exchange keys by kid.
    keks: HashMap<String, RsaPrivateKey>,
    faults: VecDeque<(Call, Fault)>,
    calls: Vec<Call>,
    counter: u64,
}

/// The in-memory vault.
#[derive(Default)]
pub struct FakeKeyVault {
    state: Mutex<State>,
}

const VAULT: &str = "https://fake.vault.azure.net";

fn kv_error(status: u16, code: &str, message: &str) -> AzureError {
    http_error(
        status,
        &[("retry-after", "0")],
        &json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

/// Key Vault's answer to `GET` of a disabled version.
fn disabled() -> AzureError {
    http_error(
        403,
        &[],
        &json!({"error": {
            "code": "Forbidden",
            "message": "Operation get is not allowed on a disabled key.",
            "innererror": {"code": "KeyDisabled"},
        }})
        .to_string(),
    )
}

/// A version as `GET` shows it: Key Vault refuses a disabled one.
fn shown(name: &str, version: &FakeVersion) -> Result<Key, AzureError> {
    match version.enabled {
        true => Ok(FakeKeyVault::bundle(name, version)),
        false => Err(disabled()),
    }
}

fn not_found(name: &str) -> AzureError {
    kv_error(
        404,
        "KeyNotFound",
        &format!("A key with (name/id) {name} was not found in this key vault."),
    )
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The public JWK members of an imported key, from its SubjectPublicKeyInfo.
fn public_jwk(spki: &[u8], kty: &str) -> Value {
    if let Ok(public) = rsa::RsaPublicKey::from_public_key_der(spki) {
        return json!({"kty": kty, "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())});
    }
    // EC: the SPKI ends with the uncompressed point 04 || X || Y.
    for (curve, len) in [("P-256", 32usize), ("P-384", 48), ("P-521", 66)] {
        let point = 1 + 2 * len;
        let header = match len {
            32 => 26,
            48 => 23,
            _ => 25,
        };
        if spki.len() == header + point && spki[header] == 0x04 {
            let xy = &spki[header + 1..];
            return json!({"kty": kty, "crv": curve, "x": b64(&xy[..len]), "y": b64(&xy[len..])});
        }
    }
    json!({"kty": kty})
}

/// Parses PKCS#8 material of any asymmetric type.
fn material_of(pkcs8: Zeroizing<Vec<u8>>) -> Option<KeyMaterial> {
    KeyType::ALL
        .into_iter()
        .filter(|t| t.is_asymmetric())
        .find_map(|t| KeyMaterial::from_bytes(t, pkcs8.clone()).ok())
}

impl FakeKeyVault {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a fault for the next `call`.
    pub fn inject(&self, call: Call, fault: Fault, times: u32) {
        let mut state = self.state.lock().unwrap();
        for _ in 0..times {
            state.faults.push_back((call, fault));
        }
    }

    /// The live versions of `name`, oldest first.
    pub fn versions(&self, name: &str) -> Vec<FakeVersion> {
        self.state
            .lock()
            .unwrap()
            .keys
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Deletes a key as someone in the Azure portal would.
    pub fn delete_outside(&self, name: &str) {
        let mut state = self.state.lock().unwrap();
        if state.keys.remove(name).is_some() {
            state.deleted.insert(name.to_owned());
        }
    }

    /// Sets a version's enabled flag as someone in the Azure portal would.
    pub fn set_enabled_outside(&self, name: &str, id: &str, enabled: bool) {
        let mut state = self.state.lock().unwrap();
        if let Some(v) = state
            .keys
            .get_mut(name)
            .and_then(|v| v.iter_mut().find(|v| v.id == id))
        {
            v.enabled = enabled;
        }
    }

    /// Adds a version, untagged, as someone importing into the key in the
    /// Azure portal would; it becomes the current version.
    pub fn add_outside(&self, name: &str, spki: Vec<u8>, kty: &str) -> String {
        let id = self.next_id();
        let version = FakeVersion {
            id: id.clone(),
            tags: BTreeMap::new(),
            enabled: true,
            spki: Some(spki),
            kty: kty.into(),
            key_ops: vec!["sign".into(), "verify".into()],
            created: 0,
        };
        self.add_version(name, version).expect("the key is live");
        id
    }

    /// A soft-deleted key under `name`, as a removal leaves it.
    pub fn hold_deleted(&self, name: &str) {
        self.state.lock().unwrap().deleted.insert(name.to_owned());
    }

    pub fn is_deleted(&self, name: &str) -> bool {
        self.state.lock().unwrap().deleted.contains(name)
    }

    pub fn calls(&self, call: Call) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| **c == call)
            .count()
    }

    /// Soft-deleted key-exchange keys, not purged yet.
    pub fn deleted_keks(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .deleted
            .iter()
            .filter(|k| k.starts_with("keymgmt-kek-"))
            .count()
    }

    /// Live key-exchange keys (names starting `keymgmt-kek-`).
    pub fn live_keks(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .keys
            .keys()
            .filter(|k| k.starts_with("keymgmt-kek-"))
            .count()
    }

    /// Records the call and takes its pending fault, if any. `Err` means
    /// the fault answers the call before it runs.
    fn begin(&self, call: Call) -> Result<Option<Fault>, AzureError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(call);
        let Some(pos) = state.faults.iter().position(|(c, _)| *c == call) else {
            return Ok(None);
        };
        let (_, fault) = state.faults.remove(pos).unwrap();
        match fault {
            Fault::Unavailable => Err(kv_error(503, "ServiceUnavailable", "injected")),
            Fault::Throttled => Err(kv_error(429, "Throttled", "injected")),
            Fault::Denied => Err(kv_error(
                403,
                "Forbidden",
                &format!("The user does not have keys {call:?} permission"),
            )),
            Fault::Lost => Ok(Some(Fault::Lost)),
        }
    }

    fn end<T>(fault: Option<Fault>, result: Result<T, AzureError>) -> Result<T, AzureError> {
        match (fault, result) {
            (Some(Fault::Lost), Ok(_)) => Err(AzureError::with_message(
                ErrorKind::Io,
                "connection reset by peer (injected)",
            )),
            (_, result) => result,
        }
    }

    fn bundle(name: &str, version: &FakeVersion) -> Key {
        let mut jwk = match &version.spki {
            Some(spki) => public_jwk(spki, &version.kty),
            None => json!({"kty": version.kty}),
        };
        jwk["kid"] = format!("{VAULT}/keys/{name}/{}", version.id).into();
        jwk["key_ops"] = json!(version.key_ops);
        serde_json::from_value(json!({
            "key": jwk,
            "attributes": {"enabled": version.enabled, "created": version.created},
            "tags": version.tags,
        }))
        .unwrap()
    }

    fn add_version(&self, name: &str, mut version: FakeVersion) -> Result<Key, AzureError> {
        let mut state = self.state.lock().unwrap();
        state.counter += 1;
        version.created = 1_700_000_000 + state.counter as i64;
        if state.deleted.contains(name) {
            return Err(kv_error(
                409,
                "Conflict",
                &format!(
                    "Key {name} is currently in a deleted but recoverable state, and its name cannot be reused"
                ),
            ));
        }
        let bundle = Self::bundle(name, &version);
        state.keys.entry(name.to_owned()).or_default().push(version);
        Ok(bundle)
    }

    fn next_id(&self) -> String {
        let mut state = self.state.lock().unwrap();
        state.counter += 1;
        format!("{:032x}", state.counter)
    }

    /// Unwraps a `key_hsm` transfer blob with the KEK the fake holds.
    fn unwrap_blob(&self, blob: &[u8]) -> Result<KeyMaterial, AzureError> {
        let bad = |m: &str| kv_error(400, "BadParameter", m);
        let blob: Value =
            serde_json::from_slice(blob).map_err(|_| bad("key_hsm is not a transfer blob"))?;
        let kid = blob["header"]["kid"]
            .as_str()
            .ok_or_else(|| bad("no kid"))?;
        if blob["header"]["enc"] != "CKM_RSA_AES_KEY_WRAP" || blob["header"]["alg"] != "dir" {
            return Err(bad("unsupported transfer blob header"));
        }
        let kek = self
            .state
            .lock()
            .unwrap()
            .keks
            .get(kid)
            .cloned()
            .ok_or_else(|| bad("unknown key-exchange key"))?;
        let ciphertext = URL_SAFE_NO_PAD
            .decode(
                blob["ciphertext"]
                    .as_str()
                    .ok_or_else(|| bad("no ciphertext"))?,
            )
            .map_err(|_| bad("ciphertext is not base64url"))?;
        let split = kek.size();
        if ciphertext.len() <= split {
            return Err(bad("ciphertext too short"));
        }
        let ephemeral = Zeroizing::new(
            kek.decrypt(Oaep::new::<sha1::Sha1>(), &ciphertext[..split])
                .map_err(|_| bad("RSA-OAEP-SHA1 unwrap failed"))?,
        );
        let key: [u8; 32] = ephemeral
            .as_slice()
            .try_into()
            .map_err(|_| bad("ephemeral key is not 32 bytes"))?;
        let pkcs8 = Zeroizing::new(
            KekAes256::from(key)
                .unwrap_with_padding_vec(&ciphertext[split..])
                .map_err(|_| bad("AES-KWP unwrap failed"))?,
        );
        material_of(pkcs8).ok_or_else(|| bad("the unwrapped key is not PKCS#8"))
    }

    fn import(&self, name: &str, body: &[u8]) -> Result<Key, AzureError> {
        let bad = |m: &str| kv_error(400, "BadParameter", m);
        let body: Value = serde_json::from_slice(body).map_err(|_| bad("body is not JSON"))?;
        let jwk = &body["key"];
        let kty = jwk["kty"].as_str().ok_or_else(|| bad("no kty"))?.to_owned();
        let spki = if let Some(blob) = jwk["key_hsm"].as_str() {
            if body["Hsm"] != true {
                return Err(bad("key_hsm needs Hsm=true"));
            }
            let blob = URL_SAFE_NO_PAD
                .decode(blob)
                .map_err(|_| bad("key_hsm is not base64url"))?;
            self.unwrap_blob(&blob)?.public_key_der()
        } else if kty == "RSA" {
            let n = URL_SAFE_NO_PAD
                .decode(jwk["n"].as_str().unwrap_or_default())
                .map_err(|_| bad("n"))?;
            let e = URL_SAFE_NO_PAD
                .decode(jwk["e"].as_str().unwrap_or_default())
                .map_err(|_| bad("e"))?;
            if jwk["d"].as_str().is_none() {
                return Err(bad("a software import needs d"));
            }
            let public = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from_bytes_be(&e),
            )
            .map_err(|_| bad("bad RSA key"))?;
            Some(
                public
                    .to_public_key_der()
                    .map_err(|_| bad("bad RSA key"))?
                    .into_vec(),
            )
        } else if kty == "EC" {
            // Rebuild the SPKI from x and y with a known header.
            let x = URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().unwrap_or_default())
                .map_err(|_| bad("x"))?;
            let y = URL_SAFE_NO_PAD
                .decode(jwk["y"].as_str().unwrap_or_default())
                .map_err(|_| bad("y"))?;
            let crv = jwk["crv"].as_str().unwrap_or_default();
            let key_type = match crv {
                "P-256" => KeyType::EcdsaP256,
                "P-384" => KeyType::EcdsaP384,
                "P-521" => KeyType::EcdsaP521,
                _ => return Err(bad("bad crv")),
            };
            let reference = sample(key_type).public_key_der().unwrap_or_default();
            let header = reference.len() - 1 - x.len() - y.len();
            let mut spki = reference[..header].to_vec();
            spki.push(0x04);
            spki.extend_from_slice(&x);
            spki.extend_from_slice(&y);
            Some(spki)
        } else {
            return Err(bad("unsupported kty"));
        };
        let tags = body["tags"]
            .as_object()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let version = FakeVersion {
            id: self.next_id(),
            tags,
            enabled: body["attributes"]["enabled"].as_bool().unwrap_or(true),
            spki,
            kty,
            created: 0,
            key_ops: jwk["key_ops"]
                .as_array()
                .map(|ops| {
                    ops.iter()
                        .filter_map(|o| o.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        };
        self.add_version(name, version)
    }
}

#[async_trait::async_trait]
impl KeyVaultApi for FakeKeyVault {
    fn vault(&self) -> &str {
        "fake.vault.azure.net"
    }

    async fn create_key(
        &self,
        name: &str,
        parameters: CreateKeyParameters,
    ) -> Result<Key, AzureError> {
        let fault = self.begin(Call::Create)?;
        let parameters = serde_json::to_value(&parameters).unwrap_or_default();
        let result = (|| {
            if parameters["kty"] != "RSA-HSM" || parameters["key_ops"] != json!(["import"]) {
                return Err(kv_error(
                    400,
                    "BadParameter",
                    "only RSA-HSM key-exchange keys with key_ops [import]",
                ));
            }
            // A fixed sample key: generating RSA-4096 per test is slow, and
            // the size does not matter to the protocol.
            let private = RsaPrivateKey::from_pkcs8_der(sample(KeyType::Rsa2048).as_bytes())
                .map_err(|_| kv_error(500, "Internal", "sample key"))?;
            let id = self.next_id();
            let kid = format!("{VAULT}/keys/{name}/{id}");
            let (n, e) = (
                b64(&private.n().to_bytes_be()),
                b64(&private.e().to_bytes_be()),
            );
            self.state.lock().unwrap().keks.insert(kid.clone(), private);
            let version = FakeVersion {
                id,
                tags: BTreeMap::new(),
                enabled: true,
                spki: None,
                kty: "RSA-HSM".into(),
                key_ops: vec!["import".into()],
                created: 0,
            };
            self.add_version(name, version)?;
            Ok(serde_json::from_value(json!({"key": {"kid": kid, "kty": "RSA-HSM", "n": n, "e": e, "key_ops": ["import"]}})).unwrap())
        })();
        Self::end(fault, result)
    }

    async fn import_key(&self, name: &str, body: Bytes) -> Result<Key, AzureError> {
        let fault = self.begin(Call::Import)?;
        let result = self.import(name, &body);
        Self::end(fault, result)
    }

    async fn latest(&self, name: &str) -> Result<Key, AzureError> {
        let fault = self.begin(Call::Get)?;
        let result = {
            let state = self.state.lock().unwrap();
            match state.keys.get(name).and_then(|v| v.last()) {
                Some(version) => shown(name, version),
                None => Err(not_found(name)),
            }
        };
        Self::end(fault, result)
    }

    async fn set_enabled(
        &self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), AzureError> {
        let fault = self.begin(Call::Update)?;
        let result = {
            let mut state = self.state.lock().unwrap();
            match state
                .keys
                .get_mut(name)
                .and_then(|v| v.iter_mut().find(|v| v.id == version))
            {
                Some(v) => {
                    v.enabled = enabled;
                    Ok(())
                }
                None => Err(not_found(name)),
            }
        };
        Self::end(fault, result)
    }

    async fn versions(&self, name: &str) -> Result<Vec<KeyProperties>, AzureError> {
        let fault = self.begin(Call::List)?;
        let result = {
            let state = self.state.lock().unwrap();
            match state.keys.get(name) {
                Some(versions) => Ok(versions
                    .iter()
                    .map(|v| {
                        serde_json::from_value(json!({
                            "kid": format!("{VAULT}/keys/{name}/{}", v.id),
                            "attributes": {"enabled": v.enabled, "created": v.created},
                            "tags": v.tags,
                        }))
                        .unwrap()
                    })
                    .collect()),
                None => Err(not_found(name)),
            }
        };
        Self::end(fault, result)
    }

    async fn version(&self, name: &str, version: &str) -> Result<Key, AzureError> {
        let fault = self.begin(Call::Get)?;
        let result = {
            let state = self.state.lock().unwrap();
            match state
                .keys
                .get(name)
                .and_then(|v| v.iter().find(|v| v.id == version))
            {
                Some(found) => shown(name, found),
                None => Err(not_found(name)),
            }
        };
        Self::end(fault, result)
    }

    async fn deleted(&self, name: &str) -> Result<(), AzureError> {
        let fault = self.begin(Call::GetDeleted)?;
        let result = match self.state.lock().unwrap().deleted.contains(name) {
            true => Ok(()),
            false => Err(not_found(name)),
        };
        Self::end(fault, result)
    }

    async fn purge(&self, name: &str) -> Result<(), AzureError> {
        let fault = self.begin(Call::Purge)?;
        let result = match self.state.lock().unwrap().deleted.remove(name) {
            true => Ok(()),
            false => Err(not_found(name)),
        };
        Self::end(fault, result)
    }

    async fn delete_key(&self, name: &str) -> Result<(), AzureError> {
        let fault = self.begin(Call::Delete)?;
        let result = {
            let mut state = self.state.lock().unwrap();
            match state.keys.remove(name) {
                Some(_) => {
                    state.deleted.insert(name.to_owned());
                    Ok(())
                }
                None => Err(not_found(name)),
            }
        };
        Self::end(fault, result)
    }
}

impl FakeKeyVault {
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }
}

/// The Azure provider over the fake, for the conformance suite.
pub struct AzureDouble {
    pub fake: std::sync::Arc<FakeKeyVault>,
    pub protection: crate::engine::provider::Protection,
}

impl AzureDouble {
    pub fn new(protection: crate::engine::provider::Protection) -> Self {
        Self {
            fake: std::sync::Arc::new(FakeKeyVault::new()),
            protection,
        }
    }
}

impl crate::engine::provider::conformance::Double for AzureDouble {
    fn provider(&self) -> std::sync::Arc<dyn crate::engine::provider::KmsProvider> {
        let retry = crate::engine::provider::client::retry::RetryPolicy::with_base(
            std::time::Duration::from_millis(1),
        );
        std::sync::Arc::new(super::AzureKeyVault::new(self.fake.clone(), retry))
    }

    fn target(&self, name: &str) -> crate::engine::provider::Target {
        use crate::engine::provider::{Purpose, Target};
        Target::for_test(
            name,
            KeyType::EcdsaP256,
            &[Purpose::Sign, Purpose::Verify],
            self.protection,
        )
    }

    fn import_sites(&self) -> &'static [&'static str] {
        &["import"]
    }

    fn create_site(&self) -> &'static str {
        "import"
    }

    fn inject(&self, site: &str, fault: crate::engine::provider::conformance::Fault, times: u32) {
        use crate::engine::provider::conformance::Fault as F;
        let call = match site {
            "import" => Call::Import,
            "create" => Call::Create,
            other => panic!("no call site {other}"),
        };
        let fault = match fault {
            F::Unavailable => Fault::Unavailable,
            F::Lost => Fault::Lost,
            F::Denied => Fault::Denied,
        };
        self.fake.inject(call, fault, times);
    }

    fn clear_faults(&self) {
        self.fake.clear_faults();
    }

    fn observe(
        &self,
        target: &crate::engine::provider::Target,
        materials: &BTreeMap<u32, KeyMaterial>,
    ) -> Vec<crate::engine::provider::conformance::Observed> {
        self.fake
            .versions(&target.name)
            .into_iter()
            .map(|v| {
                let vault_version = v
                    .tags
                    .get(super::byok::VERSION_TAG)
                    .and_then(|t| t.parse().ok());
                let material_matches = vault_version
                    .and_then(|n: u32| materials.get(&n))
                    .is_some_and(|m| m.public_key_der() == v.spki);
                crate::engine::provider::conformance::Observed {
                    provider_id: v.id,
                    vault_version,
                    usable: v.enabled,
                    material_matches,
                }
            })
            .collect()
    }

    fn current(&self, target: &crate::engine::provider::Target) -> Option<String> {
        // The newest Azure version is the current one.
        self.fake
            .versions(&target.name)
            .last()
            .map(|v| v.id.clone())
    }

    fn delete_outside(&self, target: &crate::engine::provider::Target) {
        self.fake.delete_outside(&target.name);
    }
}

impl crate::engine::provider::conformance::Tamper for AzureDouble {
    fn set_enabled_outside(
        &self,
        target: &crate::engine::provider::Target,
        provider_id: &str,
        enabled: bool,
    ) {
        self.fake
            .set_enabled_outside(&target.name, provider_id, enabled);
    }

    fn add_foreign(
        &self,
        target: &crate::engine::provider::Target,
        material: &KeyMaterial,
    ) -> String {
        let spki = material.public_key_der().expect("an asymmetric key");
        let kty = match target.key_type.rsa_bits() {
            Some(_) => "RSA",
            None => "EC",
        };
        self.fake.add_outside(&target.name, spki, kty)
    }

    /// Key Vault cannot delete a single version of a key.
    fn doom_outside(&self, _target: &crate::engine::provider::Target, _provider_id: &str) -> bool {
        false
    }
}
