//! An in-memory AWS KMS for the unit tests: the [`KmsApi`] actions with
//! KMS's key states (`PendingImport`, `Enabled`, `Disabled`,
//! `PendingDeletion`), import tokens whose wrapped material is really
//! unwrapped and checked against the key spec (LocalStack does not check),
//! aliases, tags, paged `ListKeys`, multi-Region replicas without material
//! (as real AWS, unlike LocalStack), and faults injected per action. The
//! black-box tests run the provider against LocalStack.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use aes_kw::KekAes256;
use aws_sdk_kms::types::{AlgorithmSpec, KeySpec, KeyState, KeyUsageType};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::{Oaep, RsaPrivateKey};
use zeroize::Zeroizing;

use super::Action;
use super::client::{ApiError, ErrorClass, ImportParameters, KeyInfo, KeyPage, KmsApi, NewKey};
use crate::engine::key_type::KeyType;
use crate::engine::material::KeyMaterial;
use crate::engine::material::test_support::sample;

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `ThrottlingException`.
    Throttled,
    /// `KMSInternalException`.
    Unavailable,
    /// The action takes effect, then the connection drops.
    Lost,
    /// `AccessDeniedException`.
    Denied,
}

/// One KMS key (or replica) as the fake holds it.
#[derive(Debug, Clone)]
pub struct FakeKey {
    pub key_id: String,
    pub region: String,
    pub spec: KeySpec,
    pub usage: KeyUsageType,
    pub multi_region: bool,
    pub state: KeyState,
    pub tags: BTreeMap<String, String>,
    /// The imported material, as the fake unwrapped it.
    pub material: Option<Vec<u8>>,
    pub deletion_days: Option<i32>,
}

impl FakeKey {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct State {
    /// By (region, key id).
    keys: BTreeMap<(String, String), FakeKey>,
    /// By (region, alias name): the target key id.
    aliases: HashMap<(String, String), String>,
    /// Import tokens: token -> (region, key id, algorithm).
    tokens: HashMap<Vec<u8>, (String, String, AlgorithmSpec)>,
    faults: VecDeque<(Action, Fault)>,
    calls: Vec<Action>,
    counter: u64,
}

/// The in-memory KMS, all regions.
#[derive(Default)]
pub struct FakeKms {
    state: Mutex<State>,
}

/// `ListKeys` page size: small, so that paging is always exercised.
const PAGE: usize = 3;

fn err(class: ErrorClass, code: &str, message: &str) -> ApiError {
    ApiError::new(class, code, message)
}

fn not_found(key_id: &str) -> ApiError {
    err(
        ErrorClass::NotFound,
        "NotFoundException",
        &format!("Key '{key_id}' does not exist"),
    )
}

fn invalid_state(key_id: &str, state: &KeyState) -> ApiError {
    err(
        ErrorClass::InvalidState,
        "KMSInvalidStateException",
        &format!("{key_id} is {}", state.as_str()),
    )
}

/// The wrapping key every import token uses: a fixed sample, because
/// generating RSA-4096 per test is slow and the size does not matter here.
fn wrapping_key() -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_der(sample(KeyType::Rsa2048).as_bytes()).expect("sample RSA key")
}

fn key_type_of(spec: &KeySpec) -> Option<KeyType> {
    Some(match spec {
        KeySpec::SymmetricDefault => KeyType::Aes256Gcm96,
        KeySpec::Rsa2048 => KeyType::Rsa2048,
        KeySpec::Rsa3072 => KeyType::Rsa3072,
        KeySpec::Rsa4096 => KeyType::Rsa4096,
        KeySpec::EccNistP256 => KeyType::EcdsaP256,
        KeySpec::EccNistP384 => KeyType::EcdsaP384,
        KeySpec::EccNistP521 => KeyType::EcdsaP521,
        _ => return None,
    })
}

impl FakeKms {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn inject(&self, action: Action, fault: Fault, times: u32) {
        let mut state = self.state.lock().unwrap();
        for _ in 0..times {
            state.faults.push_back((action, fault));
        }
    }

    /// Every key in `region`, in creation order.
    pub fn keys(&self, region: &str) -> Vec<FakeKey> {
        let state = self.state.lock().unwrap();
        let mut keys: Vec<FakeKey> = state
            .keys
            .values()
            .filter(|k| k.region == region)
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        keys
    }

    pub fn key(&self, region: &str, key_id: &str) -> Option<FakeKey> {
        self.state
            .lock()
            .unwrap()
            .keys
            .get(&(region.to_owned(), key_id.to_owned()))
            .cloned()
    }

    pub fn alias_target(&self, region: &str, alias: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap()
            .aliases
            .get(&(region.to_owned(), alias.to_owned()))
            .cloned()
    }

    /// Schedules a key's deletion as someone in the console would.
    pub fn delete_outside(&self, region: &str, key_id: &str) {
        if let Some(key) = self
            .state
            .lock()
            .unwrap()
            .keys
            .get_mut(&(region.to_owned(), key_id.to_owned()))
        {
            key.state = KeyState::PendingDeletion;
        }
    }

    pub fn calls(&self, action: Action) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|a| **a == action)
            .count()
    }

    /// Records the call and applies a pending fault: `Err` answers before
    /// the action runs; `Ok(true)` means the answer is to be lost.
    fn begin(&self, action: Action) -> Result<bool, ApiError> {
        let mut state = self.state.lock().unwrap();
        state.calls.push(action);
        let Some(pos) = state.faults.iter().position(|(a, _)| *a == action) else {
            return Ok(false);
        };
        let (_, fault) = state.faults.remove(pos).expect("position is valid");
        match fault {
            Fault::Throttled => Err(err(
                ErrorClass::Throttled,
                "ThrottlingException",
                "Rate exceeded",
            )),
            Fault::Unavailable => Err(err(
                ErrorClass::Unavailable,
                "KMSInternalException",
                "injected",
            )),
            Fault::Denied => Err(err(
                ErrorClass::AccessDenied,
                "AccessDeniedException",
                &format!("User is not authorized to perform: kms:{}", action.name()),
            )),
            Fault::Lost => Ok(true),
        }
    }

    fn end<T>(lost: bool, result: Result<T, ApiError>) -> Result<T, ApiError> {
        match (lost, result) {
            (true, Ok(_)) => Err(err(
                ErrorClass::Network,
                "connection failed",
                "connection reset (injected)",
            )),
            (_, result) => result,
        }
    }

    fn with_key<T>(
        &self,
        region: &str,
        key_id: &str,
        f: impl FnOnce(&mut FakeKey) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut state = self.state.lock().unwrap();
        // An alias name resolves to its target.
        let key_id = if key_id.starts_with("alias/") {
            state
                .aliases
                .get(&(region.to_owned(), key_id.to_owned()))
                .cloned()
                .ok_or_else(|| not_found(key_id))?
        } else {
            key_id.to_owned()
        };
        let key = state
            .keys
            .get_mut(&(region.to_owned(), key_id.clone()))
            .ok_or_else(|| not_found(&key_id))?;
        f(key)
    }

    fn unwrap_material(
        key: &FakeKey,
        algorithm: &AlgorithmSpec,
        encrypted: &[u8],
    ) -> Result<Vec<u8>, ApiError> {
        let bad = |m: &str| err(ErrorClass::Invalid, "InvalidCiphertextException", m);
        let private = wrapping_key();
        let key_type = key_type_of(&key.spec).ok_or_else(|| bad("unsupported key spec"))?;
        let plain = match algorithm {
            AlgorithmSpec::RsaesOaepSha256 => Zeroizing::new(
                private
                    .decrypt(Oaep::new::<sha2::Sha256>(), encrypted)
                    .map_err(|_| bad("RSAES_OAEP_SHA_256 unwrap failed"))?,
            ),
            AlgorithmSpec::RsaAesKeyWrapSha256 => {
                let split = rsa::traits::PublicKeyParts::size(&private);
                if encrypted.len() <= split {
                    return Err(bad("too short"));
                }
                let ephemeral = Zeroizing::new(
                    private
                        .decrypt(Oaep::new::<sha2::Sha256>(), &encrypted[..split])
                        .map_err(|_| bad("RSA-OAEP-SHA256 unwrap failed"))?,
                );
                let kek: [u8; 32] = ephemeral
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("not AES-256"))?;
                Zeroizing::new(
                    KekAes256::from(kek)
                        .unwrap_with_padding_vec(&encrypted[split..])
                        .map_err(|_| bad("AES-KWP unwrap failed"))?,
                )
            }
            other => {
                return Err(bad(&format!(
                    "wrapping algorithm {other:?} is not accepted"
                )));
            }
        };
        // The material must be of the key's spec: size, curve, algorithm.
        let material = KeyMaterial::from_bytes(key_type, plain.clone()).map_err(|_| {
            err(
                ErrorClass::Invalid,
                "IncorrectKeyMaterialException",
                "the key material does not match the key spec",
            )
        })?;
        Ok(material.as_bytes().to_vec())
    }
}

#[async_trait::async_trait]
impl KmsApi for FakeKms {
    async fn create_key(&self, region: &str, new: &NewKey) -> Result<String, ApiError> {
        let lost = self.begin(Action::CreateKey)?;
        let result = {
            let mut state = self.state.lock().unwrap();
            state.counter += 1;
            let key_id = if new.multi_region {
                format!("mrk-{:032x}", state.counter)
            } else {
                format!(
                    "{:08x}-0000-4000-8000-{:012x}",
                    state.counter, state.counter
                )
            };
            let key = FakeKey {
                key_id: key_id.clone(),
                region: region.to_owned(),
                spec: new.key_spec.clone(),
                usage: new.key_usage.clone(),
                multi_region: new.multi_region,
                state: KeyState::PendingImport,
                tags: new.tags.iter().cloned().collect(),
                material: None,
                deletion_days: None,
            };
            state.keys.insert((region.to_owned(), key_id.clone()), key);
            Ok(key_id)
        };
        Self::end(lost, result)
    }

    async fn describe_key(&self, region: &str, key_id: &str) -> Result<KeyInfo, ApiError> {
        let lost = self.begin(Action::DescribeKey)?;
        let result = self.with_key(region, key_id, |key| {
            Ok(KeyInfo {
                key_id: key.key_id.clone(),
                state: key.state.clone(),
                multi_region: key.multi_region,
                key_spec: Some(key.spec.clone()),
            })
        });
        Self::end(lost, result)
    }

    async fn get_parameters_for_import(
        &self,
        region: &str,
        key_id: &str,
        algorithm: AlgorithmSpec,
    ) -> Result<ImportParameters, ApiError> {
        let lost = self.begin(Action::GetParametersForImport)?;
        let result = self.with_key(region, key_id, |key| {
            if matches!(
                key.state,
                KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
            ) {
                return Err(invalid_state(key_id, &key.state));
            }
            Ok(key.key_id.clone())
        });
        let result = result.map(|id| {
            let mut state = self.state.lock().unwrap();
            state.counter += 1;
            let token = format!("token-{}", state.counter).into_bytes();
            state
                .tokens
                .insert(token.clone(), (region.to_owned(), id, algorithm));
            let public = wrapping_key()
                .to_public_key()
                .to_public_key_der()
                .expect("DER")
                .into_vec();
            ImportParameters {
                token: Zeroizing::new(token),
                public_key_der: public,
            }
        });
        Self::end(lost, result)
    }

    async fn import_key_material(
        &self,
        region: &str,
        key_id: &str,
        token: &[u8],
        encrypted: Vec<u8>,
    ) -> Result<(), ApiError> {
        let lost = self.begin(Action::ImportKeyMaterial)?;
        let issued = self.state.lock().unwrap().tokens.get(token).cloned();
        let result = match issued {
            Some((token_region, token_key, algorithm))
                if token_region == region && token_key == key_id =>
            {
                self.with_key(region, key_id, |key| {
                    let material = Self::unwrap_material(key, &algorithm, &encrypted)?;
                    match (&key.material, &key.state) {
                        (_, KeyState::PendingDeletion | KeyState::PendingReplicaDeletion) => {
                            Err(invalid_state(key_id, &key.state))
                        }
                        (Some(existing), _) if *existing != material => Err(err(
                            ErrorClass::Invalid,
                            "IncorrectKeyMaterialException",
                            "different key material than was imported before",
                        )),
                        _ => {
                            key.material = Some(material);
                            if key.state == KeyState::PendingImport {
                                key.state = KeyState::Enabled;
                            }
                            Ok(())
                        }
                    }
                })
            }
            _ => Err(err(
                ErrorClass::Invalid,
                "InvalidImportTokenException",
                "token not issued for this key",
            )),
        };
        Self::end(lost, result)
    }

    async fn enable_key(&self, region: &str, key_id: &str) -> Result<(), ApiError> {
        let lost = self.begin(Action::EnableKey)?;
        let result = self.with_key(region, key_id, |key| match key.state {
            KeyState::Enabled | KeyState::Disabled => {
                key.state = KeyState::Enabled;
                Ok(())
            }
            ref other => Err(invalid_state(key_id, other)),
        });
        Self::end(lost, result)
    }

    async fn get_public_key(&self, region: &str, key_id: &str) -> Result<Vec<u8>, ApiError> {
        let lost = self.begin(Action::GetPublicKey)?;
        let result = self.with_key(region, key_id, |key| {
            let key_type = key_type_of(&key.spec).filter(|t| t.is_asymmetric());
            match (&key.state, &key.material, key_type) {
                (_, _, None) => Err(err(
                    ErrorClass::Invalid,
                    "UnsupportedOperationException",
                    "a symmetric key has no public key",
                )),
                (KeyState::Disabled, _, _) => Err(err(
                    ErrorClass::InvalidState,
                    "DisabledException",
                    &format!("{key_id} is disabled"),
                )),
                (KeyState::Enabled, Some(material), Some(key_type)) => {
                    KeyMaterial::from_bytes(key_type, Zeroizing::new(material.clone()))
                        .ok()
                        .and_then(|m| m.public_key_der())
                        .ok_or_else(|| {
                            err(ErrorClass::Unavailable, "KMSInternalException", "material")
                        })
                }
                (other, _, _) => Err(invalid_state(key_id, other)),
            }
        });
        Self::end(lost, result)
    }

    async fn disable_key(&self, region: &str, key_id: &str) -> Result<(), ApiError> {
        let lost = self.begin(Action::DisableKey)?;
        let result = self.with_key(region, key_id, |key| match key.state {
            KeyState::Enabled | KeyState::Disabled => {
                key.state = KeyState::Disabled;
                Ok(())
            }
            ref other => Err(invalid_state(key_id, other)),
        });
        Self::end(lost, result)
    }

    async fn schedule_key_deletion(
        &self,
        region: &str,
        key_id: &str,
        days: i32,
    ) -> Result<(), ApiError> {
        let lost = self.begin(Action::ScheduleKeyDeletion)?;
        let result = self.with_key(region, key_id, |key| match key.state {
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
                Err(invalid_state(key_id, &key.state))
            }
            _ if !(7..=30).contains(&days) => {
                Err(err(ErrorClass::Invalid, "ValidationException", "window"))
            }
            _ => {
                key.state = KeyState::PendingDeletion;
                key.deletion_days = Some(days);
                Ok(())
            }
        });
        Self::end(lost, result)
    }

    async fn list_keys(&self, region: &str, marker: Option<String>) -> Result<KeyPage, ApiError> {
        let lost = self.begin(Action::ListKeys)?;
        let ids: Vec<String> = self.keys(region).into_iter().map(|k| k.key_id).collect();
        let start = match &marker {
            Some(m) => m
                .parse::<usize>()
                .map_err(|_| err(ErrorClass::Invalid, "InvalidMarkerException", "bad marker"))?,
            None => 0,
        };
        let end = (start + PAGE).min(ids.len());
        let result = Ok(KeyPage {
            key_ids: ids
                .get(start..end)
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
            next_marker: (end < ids.len()).then(|| end.to_string()),
        });
        Self::end(lost, result)
    }

    async fn list_resource_tags(
        &self,
        region: &str,
        key_id: &str,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let lost = self.begin(Action::ListResourceTags)?;
        let result = self.with_key(region, key_id, |key| {
            Ok(key
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        });
        Self::end(lost, result)
    }

    async fn create_alias(&self, region: &str, alias: &str, key_id: &str) -> Result<(), ApiError> {
        let lost = self.begin(Action::CreateAlias)?;
        let result = {
            let mut state = self.state.lock().unwrap();
            let slot = (region.to_owned(), alias.to_owned());
            if state.aliases.contains_key(&slot) {
                Err(err(
                    ErrorClass::AlreadyExists,
                    "AlreadyExistsException",
                    "alias exists",
                ))
            } else if !state
                .keys
                .contains_key(&(region.to_owned(), key_id.to_owned()))
            {
                Err(not_found(key_id))
            } else {
                state.aliases.insert(slot, key_id.to_owned());
                Ok(())
            }
        };
        Self::end(lost, result)
    }

    async fn update_alias(&self, region: &str, alias: &str, key_id: &str) -> Result<(), ApiError> {
        let lost = self.begin(Action::UpdateAlias)?;
        let result = {
            let mut state = self.state.lock().unwrap();
            let slot = (region.to_owned(), alias.to_owned());
            if !state
                .keys
                .contains_key(&(region.to_owned(), key_id.to_owned()))
            {
                Err(not_found(key_id))
            } else {
                match state.aliases.get_mut(&slot) {
                    Some(target) => {
                        *target = key_id.to_owned();
                        Ok(())
                    }
                    None => Err(not_found(alias)),
                }
            }
        };
        Self::end(lost, result)
    }

    async fn delete_alias(&self, region: &str, alias: &str) -> Result<(), ApiError> {
        let lost = self.begin(Action::DeleteAlias)?;
        let result = {
            let mut state = self.state.lock().unwrap();
            match state.aliases.remove(&(region.to_owned(), alias.to_owned())) {
                Some(_) => Ok(()),
                None => Err(not_found(alias)),
            }
        };
        Self::end(lost, result)
    }

    async fn replicate_key(
        &self,
        region: &str,
        key_id: &str,
        replica_region: &str,
        tags: &[(String, String)],
    ) -> Result<(), ApiError> {
        let lost = self.begin(Action::ReplicateKey)?;
        let result = {
            let mut state = self.state.lock().unwrap();
            match state
                .keys
                .get(&(region.to_owned(), key_id.to_owned()))
                .cloned()
            {
                None => Err(not_found(key_id)),
                Some(primary) if !primary.multi_region => Err(err(
                    ErrorClass::Invalid,
                    "UnsupportedOperationException",
                    "not a multi-Region key",
                )),
                Some(_)
                    if state
                        .keys
                        .contains_key(&(replica_region.to_owned(), key_id.to_owned())) =>
                {
                    Err(err(
                        ErrorClass::AlreadyExists,
                        "AlreadyExistsException",
                        "replica exists",
                    ))
                }
                Some(primary) => {
                    // As in AWS: the replica of an imported-material key has
                    // no material until the same material is imported.
                    let replica = FakeKey {
                        region: replica_region.to_owned(),
                        state: KeyState::PendingImport,
                        material: None,
                        tags: tags.iter().cloned().collect(),
                        deletion_days: None,
                        ..primary
                    };
                    state
                        .keys
                        .insert((replica_region.to_owned(), key_id.to_owned()), replica);
                    Ok(())
                }
            }
        };
        Self::end(lost, result)
    }
}

impl FakeKms {
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Sets a key's state as someone in the console would (`EnableKey`,
    /// `DisableKey`, `ScheduleKeyDeletion`), without the API's checks.
    pub fn set_state_outside(&self, region: &str, key_id: &str, state: KeyState) {
        if let Some(key) = self
            .state
            .lock()
            .unwrap()
            .keys
            .get_mut(&(region.to_owned(), key_id.to_owned()))
        {
            key.state = state;
        }
    }

    /// Creates an enabled key with `material` and the given tags, as
    /// someone outside Vault would; returns its id.
    pub fn add_outside(
        &self,
        region: &str,
        spec: KeySpec,
        usage: KeyUsageType,
        material: &KeyMaterial,
        tags: &[(String, String)],
    ) -> String {
        let mut state = self.state.lock().unwrap();
        state.counter += 1;
        let key_id = format!(
            "{:08x}-0000-4000-9000-{:012x}",
            state.counter, state.counter
        );
        let key = FakeKey {
            key_id: key_id.clone(),
            region: region.to_owned(),
            spec,
            usage,
            multi_region: false,
            state: KeyState::Enabled,
            tags: tags.iter().cloned().collect(),
            material: Some(material.as_bytes().to_vec()),
            deletion_days: None,
        };
        state.keys.insert((region.to_owned(), key_id.clone()), key);
        key_id
    }

    /// Points an alias at a key (`UpdateAlias` or `CreateAlias`).
    pub fn set_alias_outside(&self, region: &str, alias: &str, key_id: &str) {
        self.state
            .lock()
            .unwrap()
            .aliases
            .insert((region.to_owned(), alias.to_owned()), key_id.to_owned());
    }
}

/// The region the doubles' providers use.
pub const REGION: &str = "us-east-1";

/// The AWS provider over the fake, for the conformance suite.
#[derive(Default)]
pub struct AwsDouble {
    pub fake: std::sync::Arc<FakeKms>,
    /// The key type of the suite's targets; AES when `None`.
    pub key_type: Option<KeyType>,
}

impl AwsDouble {
    /// A double whose targets are of `key_type`.
    pub fn of(key_type: KeyType) -> Self {
        Self {
            key_type: Some(key_type),
            ..Self::default()
        }
    }

    pub fn aws(&self) -> super::AwsKms {
        let retry = crate::engine::provider::client::retry::RetryPolicy::with_base(
            std::time::Duration::from_millis(1),
        );
        super::AwsKms::new(self.fake.clone(), REGION.into(), retry, 7)
    }
}

impl crate::engine::provider::conformance::Double for AwsDouble {
    fn provider(&self) -> std::sync::Arc<dyn crate::engine::provider::KmsProvider> {
        std::sync::Arc::new(self.aws())
    }

    fn target(&self, name: &str) -> crate::engine::provider::Target {
        use crate::engine::provider::{Protection, Purpose, Target};
        match self.key_type {
            None | Some(KeyType::Aes256Gcm96) => Target::for_test(
                name,
                KeyType::Aes256Gcm96,
                &[Purpose::Decrypt, Purpose::Encrypt],
                Protection::Hsm,
            ),
            Some(key_type) => Target::for_test(
                name,
                key_type,
                &[Purpose::Sign, Purpose::Verify],
                Protection::Hsm,
            ),
        }
    }

    fn import_sites(&self) -> &'static [&'static str] {
        &["CreateKey", "GetParametersForImport", "ImportKeyMaterial"]
    }

    fn create_site(&self) -> &'static str {
        "CreateKey"
    }

    fn inject(&self, site: &str, fault: crate::engine::provider::conformance::Fault, times: u32) {
        use crate::engine::provider::conformance::Fault as F;
        let action = match site {
            "CreateKey" => Action::CreateKey,
            "GetParametersForImport" => Action::GetParametersForImport,
            "ImportKeyMaterial" => Action::ImportKeyMaterial,
            other => panic!("no call site {other}"),
        };
        let fault = match fault {
            F::Unavailable => Fault::Unavailable,
            F::Lost => Fault::Lost,
            F::Denied => Fault::Denied,
        };
        self.fake.inject(action, fault, times);
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
            .keys(REGION)
            .into_iter()
            .filter(|k| k.tag(super::TAG_DISTRIBUTION_ID) == Some(target.id.as_str()))
            .map(|k| {
                let vault_version = k.tag(super::TAG_VERSION).and_then(|t| t.parse().ok());
                let material_matches = match (
                    &k.material,
                    vault_version.and_then(|n: u32| materials.get(&n)),
                ) {
                    (None, _) => true,
                    (Some(held), Some(ours)) => held.as_slice() == ours.as_bytes(),
                    (Some(_), None) => false,
                };
                crate::engine::provider::conformance::Observed {
                    provider_id: k.key_id.clone(),
                    vault_version,
                    usable: k.state == KeyState::Enabled && k.material.is_some(),
                    material_matches,
                }
            })
            .collect()
    }

    fn current(&self, target: &crate::engine::provider::Target) -> Option<String> {
        self.fake
            .alias_target(REGION, &super::alias_name(&target.name))
    }

    fn delete_outside(&self, target: &crate::engine::provider::Target) {
        for key in self.fake.keys(REGION) {
            if key.tag(super::TAG_DISTRIBUTION_ID) == Some(target.id.as_str()) {
                self.fake.delete_outside(REGION, &key.key_id);
            }
        }
    }
}

impl crate::engine::provider::conformance::Tamper for AwsDouble {
    fn set_enabled_outside(
        &self,
        _target: &crate::engine::provider::Target,
        provider_id: &str,
        enabled: bool,
    ) {
        let state = if enabled {
            KeyState::Enabled
        } else {
            KeyState::Disabled
        };
        self.fake.set_state_outside(REGION, provider_id, state);
    }

    /// An untagged key, as made in the console, and the alias moved to it.
    fn add_foreign(
        &self,
        target: &crate::engine::provider::Target,
        material: &KeyMaterial,
    ) -> String {
        let (spec, usage) = super::key_spec(target.key_type, &target.purposes);
        let key_id = self.fake.add_outside(REGION, spec, usage, material, &[]);
        self.fake
            .set_alias_outside(REGION, &super::alias_name(&target.name), &key_id);
        key_id
    }

    fn doom_outside(&self, _target: &crate::engine::provider::Target, provider_id: &str) -> bool {
        self.fake.delete_outside(REGION, provider_id);
        true
    }
}
