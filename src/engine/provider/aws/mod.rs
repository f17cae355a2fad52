//! The `awskms` provider: distribution into AWS KMS through its import
//! tokens, with the official `aws-sdk-kms`.
//!
//! Mapping, as Vault does it (keymgmt-api reference §5.2): every Vault
//! version is its own KMS key, created with `Origin=EXTERNAL` and the
//! version's `KeySpec`/`KeyUsage`, and its material imported with
//! `GetParametersForImport` (RSA-4096 wrapping key; `RSAES_OAEP_SHA_256`
//! for AES, `RSA_AES_KEY_WRAP_SHA_256` for RSA and EC) and
//! `ImportKeyMaterial` (`KEY_MATERIAL_DOES_NOT_EXPIRE`). The alias
//! `alias/hashicorp/<key>-<unix seconds>` names the latest version and
//! moves on rotation. `min_enabled_version` is `DisableKey`/`EnableKey`.
//! Removal schedules every version's key for deletion and deletes the alias.
//!
//! A version below `min_enabled_version` is never usable, not even for a
//! moment: importing material enables a KMS key, so such a version's key is
//! created but left in `PendingImport`, and its material is imported only
//! when the version is enabled.
//!
//! Nothing is ever duplicated by a lost answer. Each key is tagged with
//! the Vault key, version and distribution id; when an attempt may have
//! created a key without Vault hearing back (an ambiguous failure, or a
//! version whose import started before a crash), the keys are looked up by
//! these tags and the one found is reused, any extra ones scheduled for
//! deletion. Re-importing the same material is always allowed by AWS, so a
//! repeated `ImportKeyMaterial` is harmless.
//!
//! Multi-Region keys: a key created with `replica_regions` gets multi-Region
//! version keys (`MultiRegion=true`); `replicate` replicates each into every
//! replica region and imports the same material there, as AWS requires
//! (a replica of an imported-material key has no material of its own).
//! After the first `replicate`, rotation replicates each new version too,
//! and `min_enabled_version` and removal reach the replicas.
//!
//! Drift (`inspect`) is read in the primary region only: each recorded
//! version's key (`DescribeKey`; `GetPublicKey` of an enabled asymmetric
//! key, whose SubjectPublicKeyInfo DER is compared with Vault's), the
//! alias's target as the current version, and the keys carrying the
//! distribution's tags that Vault has not recorded. AWS shows nothing of
//! AES material, nor the public key of a disabled key; a version below
//! `min_enabled_version` has no material (`PendingImport`).

pub mod client;
pub mod config;
#[cfg(test)]
pub mod fake;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use aws_sdk_kms::types::{AlgorithmSpec, KeySpec, KeyState, KeyUsageType};
use tokio::sync::Mutex;

use super::client::retry::{RetryPolicy, call_api};
use super::client::timing::{self, api_time, wrap_time};
use super::client::{ApiError, ErrorClass, process_env};
use super::registry::{Credential, Descriptor};
use super::{
    ImportRequest, ImportSession, KmsProvider, LiveKey, LiveMaterial, LiveVersion, NewId,
    Protection, ProviderConfig, ProviderError, Purpose, Target, VersionState,
};
use crate::engine::key_type::KeyType;
use crate::engine::material::KeyMaterial;
use crate::engine::wrap::{OaepHash, rsa_aes_key_wrap, rsa_oaep_encrypt, rsa_public_from_spki_der};
use crate::framework::error::quote;
use client::{KeyInfo, KmsApi, NewKey, SdkKms};
use config::Settings;

const AES_PURPOSES: &[Purpose] = &[Purpose::Encrypt, Purpose::Decrypt];
const RSA_PURPOSES: &[Purpose] = &[
    Purpose::Encrypt,
    Purpose::Decrypt,
    Purpose::Sign,
    Purpose::Verify,
];
const EC_PURPOSES: &[Purpose] = &[Purpose::Sign, Purpose::Verify];

/// The `awskms` provider.
pub static DESCRIPTOR: Descriptor = Descriptor {
    name: "awskms",
    title: "AWS KMS",
    key_collection: "the AWS region, such as us-east-1",
    credentials: &[
        Credential {
            key: "access_key",
            env: Some("AWS_ACCESS_KEY_ID"),
            secret: false,
            description: "Access key id; with secret_key, takes precedence over the environment, shared files and instance roles.",
        },
        Credential {
            key: "secret_key",
            env: Some("AWS_SECRET_ACCESS_KEY"),
            secret: true,
            description: "Secret access key.",
        },
        Credential {
            key: "session_token",
            env: Some("AWS_SESSION_TOKEN"),
            secret: true,
            description: "Session token of temporary credentials.",
        },
        Credential {
            key: "endpoint",
            env: Some(config::ENV_ENDPOINT),
            secret: false,
            description: "KMS endpoint URL, such as a VPC endpoint; https, or http to 127.0.0.1 only.",
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
    check_purposes,
    protections: &[Protection::Hsm],
    import_spec: "AWS KMS import tokens: `RSAES_OAEP_SHA_256` (AES), `RSA_AES_KEY_WRAP_SHA_256` (RSA, EC); one KMS key per version",
    replicates: true,
    validate: config::validate,
    check_key_name,
    connect,
};

/// A KMS key has one `KeyUsage`, and it allows both of its operations:
/// a purpose set must be exactly one usage's pair, so that Vault never
/// records a purpose the key does not enforce.
fn check_purposes(key_type: KeyType, purposes: &[Purpose]) -> Result<(), String> {
    let has = |p: Purpose| purposes.contains(&p);
    let crypt = has(Purpose::Encrypt) || has(Purpose::Decrypt);
    let sign = has(Purpose::Sign) || has(Purpose::Verify);
    let usage = if crypt && sign {
        return Err(format!(
            "an AWS KMS key either encrypts and decrypts or signs and verifies: give \"encrypt,decrypt\" or \"sign,verify\" for {key_type} keys, not both"
        ));
    } else if crypt {
        [Purpose::Encrypt, Purpose::Decrypt]
    } else {
        [Purpose::Sign, Purpose::Verify]
    };
    if !usage.iter().all(|p| has(*p)) {
        return Err(format!(
            "an AWS KMS key with KeyUsage {} always allows both {} and {}: give purpose \"{},{}\"",
            if crypt {
                "ENCRYPT_DECRYPT"
            } else {
                "SIGN_VERIFY"
            },
            usage[0],
            usage[1],
            usage[0],
            usage[1]
        ));
    }
    Ok(())
}

/// `alias/hashicorp/<key>-<unix seconds>` must be an alias name:
/// letters, digits, `/`, `_` and `-`, at most 256 characters.
fn check_key_name(key: &str) -> Result<(), String> {
    let alias = alias_name(&format!("{key}-1700000000"));
    let valid = alias.len() <= 256
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "its alias {} would not be an AWS KMS alias name (letters, digits, '/', '_' and '-' only, at most 256 characters)",
            quote(&alias)
        ))
    }
}

/// The alias of a distribution.
pub fn alias_name(target_name: &str) -> String {
    format!("alias/hashicorp/{target_name}")
}

/// Tag keys on every KMS key the provider creates.
pub const TAG_KEY: &str = "keymgmt:key";
pub const TAG_VERSION: &str = "keymgmt:version";
pub const TAG_DISTRIBUTION: &str = "keymgmt:distribution";
pub const TAG_DISTRIBUTION_ID: &str = "keymgmt:distribution-id";

fn version_tags(target: &Target, version: u32) -> Vec<(String, String)> {
    vec![
        (TAG_KEY.into(), target.key_name.clone()),
        (TAG_VERSION.into(), version.to_string()),
        (TAG_DISTRIBUTION.into(), target.name.clone()),
        (TAG_DISTRIBUTION_ID.into(), target.id.clone()),
    ]
}

/// The `KeySpec` and `KeyUsage` of a Vault key type with its purposes.
pub fn key_spec(key_type: KeyType, purposes: &[Purpose]) -> (KeySpec, KeyUsageType) {
    let signs = purposes.contains(&Purpose::Sign) || purposes.contains(&Purpose::Verify);
    let asymmetric_usage = if signs {
        KeyUsageType::SignVerify
    } else {
        KeyUsageType::EncryptDecrypt
    };
    match key_type {
        KeyType::Aes256Gcm96 => (KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt),
        KeyType::Rsa2048 => (KeySpec::Rsa2048, asymmetric_usage),
        KeyType::Rsa3072 => (KeySpec::Rsa3072, asymmetric_usage),
        KeyType::Rsa4096 => (KeySpec::Rsa4096, asymmetric_usage),
        KeyType::EcdsaP256 => (KeySpec::EccNistP256, KeyUsageType::SignVerify),
        KeyType::EcdsaP384 => (KeySpec::EccNistP384, KeyUsageType::SignVerify),
        KeyType::EcdsaP521 => (KeySpec::EccNistP521, KeyUsageType::SignVerify),
    }
}

/// The wrapping of a key type's material: 32 AES bytes fit in one
/// RSA-OAEP block; private keys need the AES key wrap. Never
/// `RSAES_PKCS1_V1_5` or the SHA-1 variants.
pub fn wrapping_algorithm(key_type: KeyType) -> AlgorithmSpec {
    if key_type.is_asymmetric() {
        AlgorithmSpec::RsaAesKeyWrapSha256
    } else {
        AlgorithmSpec::RsaesOaepSha256
    }
}

/// Wraps `material` for `ImportKeyMaterial` under the wrapping key AWS
/// returned (SubjectPublicKeyInfo DER).
pub fn wrap_material(
    public_key_der: &[u8],
    material: &KeyMaterial,
) -> Result<Vec<u8>, ProviderError> {
    let public = rsa_public_from_spki_der(public_key_der).map_err(|e| {
        ProviderError::Rejected(format!("AWS KMS returned an unusable wrapping key: {e}"))
    })?;
    let wrapped = if material.key_type().is_asymmetric() {
        rsa_aes_key_wrap(&public, OaepHash::Sha256, material.as_bytes())
    } else {
        rsa_oaep_encrypt(&public, OaepHash::Sha256, material.as_bytes())
    };
    wrapped
        .map_err(|e| ProviderError::Rejected(format!("wrapping the key for AWS KMS failed: {e}")))
}

/// Builds the provider for a stored configuration.
pub fn connect(config: &ProviderConfig) -> Result<Arc<dyn KmsProvider>, ProviderError> {
    let settings = Settings::resolve(config, &process_env)?;
    let region = settings.region.clone();
    let retry = settings.retry;
    let pending_window_days = settings.pending_window_days;
    let api = SdkKms::new(settings)?;
    Ok(Arc::new(AwsKms::new(
        Arc::new(api),
        region,
        retry,
        pending_window_days,
    )))
}

/// A KMS action, for retries' logs and for the permission a denial names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateKey,
    DescribeKey,
    GetParametersForImport,
    ImportKeyMaterial,
    EnableKey,
    DisableKey,
    GetPublicKey,
    ScheduleKeyDeletion,
    ListKeys,
    ListResourceTags,
    CreateAlias,
    UpdateAlias,
    DeleteAlias,
    ReplicateKey,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateKey => "CreateKey",
            Self::DescribeKey => "DescribeKey",
            Self::GetParametersForImport => "GetParametersForImport",
            Self::ImportKeyMaterial => "ImportKeyMaterial",
            Self::EnableKey => "EnableKey",
            Self::DisableKey => "DisableKey",
            Self::GetPublicKey => "GetPublicKey",
            Self::ScheduleKeyDeletion => "ScheduleKeyDeletion",
            Self::ListKeys => "ListKeys",
            Self::ListResourceTags => "ListResourceTags",
            Self::CreateAlias => "CreateAlias",
            Self::UpdateAlias => "UpdateAlias",
            Self::DeleteAlias => "DeleteAlias",
            Self::ReplicateKey => "ReplicateKey",
        }
    }

    /// The IAM permissions the action needs.
    pub fn permissions(self) -> &'static str {
        match self {
            Self::CreateKey => "kms:CreateKey and kms:TagResource (for its tags)",
            Self::DescribeKey => "kms:DescribeKey",
            Self::GetParametersForImport => "kms:GetParametersForImport",
            Self::ImportKeyMaterial => "kms:ImportKeyMaterial",
            Self::EnableKey => "kms:EnableKey",
            Self::DisableKey => "kms:DisableKey",
            Self::GetPublicKey => "kms:GetPublicKey",
            Self::ScheduleKeyDeletion => "kms:ScheduleKeyDeletion",
            Self::ListKeys => "kms:ListKeys",
            Self::ListResourceTags => "kms:ListResourceTags",
            Self::CreateAlias => "kms:CreateAlias (on the alias and the key)",
            Self::UpdateAlias => "kms:UpdateAlias (on the alias and both keys)",
            Self::DeleteAlias => "kms:DeleteAlias (on the alias and the key)",
            Self::ReplicateKey => {
                "kms:ReplicateKey, and kms:CreateKey and kms:TagResource in the replica region"
            }
        }
    }
}

/// One configured `awskms` provider.
pub struct AwsKms {
    api: Arc<dyn KmsApi>,
    /// The primary region: `key_collection`.
    region: String,
    retry: RetryPolicy,
    pending_window_days: i32,
}

impl AwsKms {
    /// The provider over any KMS API (the SDK, or a test double).
    pub fn new(
        api: Arc<dyn KmsApi>,
        region: String,
        retry: RetryPolicy,
        pending_window_days: i32,
    ) -> Self {
        Self {
            api,
            region,
            retry,
            pending_window_days,
        }
    }

    /// Runs one action under the retry policy. `attempt` gets the number
    /// of failures so far. After retries ran out the error is
    /// [`ErrorClass::Unavailable`] and says how long it tried.
    async fn call<T, F, Fut>(&self, action: Action, region: &str, attempt: F) -> Result<T, ApiError>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let label = format!("aws kms: {} in {region}", action.name());
        call_api(&self.retry, &label, attempt, api_time).await
    }

    /// The error the user sees for a failed action.
    fn failed(&self, action: Action, region: &str, err: &ApiError) -> ProviderError {
        err.to_provider_error(
            "AWS KMS",
            &format!("{} in AWS KMS ({region})", action.name()),
            action.permissions(),
        )
    }

    /// Imports `material` into a key in `PendingImport` (or re-imports the
    /// same material, which AWS allows).
    async fn import_material(
        &self,
        region: &str,
        key_id: &str,
        material: &KeyMaterial,
    ) -> Result<(), ProviderError> {
        let algorithm = wrapping_algorithm(material.key_type());
        let api = &self.api;
        let parameters = self
            .call(Action::GetParametersForImport, region, |_| {
                api.get_parameters_for_import(region, key_id, algorithm.clone())
            })
            .await
            .map_err(|e| self.failed(Action::GetParametersForImport, region, &e))?;
        let started = Instant::now();
        let wrapped = wrap_material(&parameters.public_key_der, material)?;
        wrap_time(started.elapsed());
        // After a lost answer, look before importing again: AWS takes the
        // same material again, but LocalStack stages a repeat as a
        // rotation and refuses the next one.
        let maybe_imported = AtomicBool::new(false);
        self.call(Action::ImportKeyMaterial, region, |_| {
            let (maybe_imported, wrapped, token) = (&maybe_imported, &wrapped, &parameters.token);
            async move {
                if maybe_imported.load(Ordering::SeqCst)
                    && let Ok(info) = api.describe_key(region, key_id).await
                    && info.state != KeyState::PendingImport
                {
                    return Ok(());
                }
                let result = api
                    .import_key_material(region, key_id, token, wrapped.clone())
                    .await;
                if result.as_ref().is_err_and(|e| e.class.ambiguous()) {
                    maybe_imported.store(true, Ordering::SeqCst);
                }
                result
            }
        })
        .await
        .map_err(|e| self.failed(Action::ImportKeyMaterial, region, &e))
    }

    /// Brings one version's key in `region` to the wanted state: material
    /// imported and enabled, or unusable. Returns `false` when the key
    /// does not exist there. The state is read first: `EnableKey` on a key
    /// without material must never be sent (AWS refuses it, LocalStack
    /// would enable a key that has no material).
    async fn converge(
        &self,
        region: &str,
        state: &VersionState<'_>,
    ) -> Result<bool, ProviderError> {
        let api = &self.api;
        let key_id = state.provider_id;
        let info = match self
            .call(Action::DescribeKey, region, |_| {
                api.describe_key(region, key_id)
            })
            .await
        {
            Ok(info) => info,
            Err(e) if e.class == ErrorClass::NotFound => return Ok(false),
            Err(e) => return Err(self.failed(Action::DescribeKey, region, &e)),
        };
        let toggle = |action: Action| async move {
            let result = match action {
                Action::EnableKey => {
                    self.call(action, region, |_| api.enable_key(region, key_id))
                        .await
                }
                _ => {
                    self.call(action, region, |_| api.disable_key(region, key_id))
                        .await
                }
            };
            result.map_err(|e| self.failed(action, region, &e))
        };
        match (&info.state, state.enabled) {
            (KeyState::PendingImport, true) => {
                self.import_material(region, key_id, state.material).await?
            }
            (KeyState::PendingImport, false)
            | (KeyState::Enabled, true)
            | (KeyState::Disabled, false) => {}
            (KeyState::Disabled, true) => toggle(Action::EnableKey).await?,
            (KeyState::Enabled, false) => toggle(Action::DisableKey).await?,
            (KeyState::PendingDeletion | KeyState::PendingReplicaDeletion, _) => {
                return Err(ProviderError::Rejected(format!(
                    "the KMS key {key_id} of version {} in {region} was scheduled for deletion outside Vault; cancel that with kms:CancelKeyDeletion, or remove the key from the provider and distribute it again",
                    state.version
                )));
            }
            (KeyState::Creating | KeyState::Updating, _) => {
                return Err(ProviderError::Unavailable(format!(
                    "the KMS key {key_id} in {region} is still being set up; repeat the request"
                )));
            }
            (other, _) => {
                return Err(ProviderError::Rejected(format!(
                    "the KMS key {key_id} of version {} in {region} is {}",
                    state.version,
                    other.as_str()
                )));
            }
        }
        Ok(true)
    }

    /// Every KMS key in `region` tagged with the distribution `id`, with
    /// the version it was created for; `seen` caches tags already read.
    async fn tagged_keys(
        &self,
        region: &str,
        id: &str,
        seen: &Mutex<HashMap<String, Option<u32>>>,
    ) -> Result<Vec<(String, u32)>, ProviderError> {
        let api = &self.api;
        let mut found = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .call(Action::ListKeys, region, |_| {
                    api.list_keys(region, marker.clone())
                })
                .await
                .map_err(|e| self.failed(Action::ListKeys, region, &e))?;
            for key_id in page.key_ids {
                let known = seen.lock().await.get(&key_id).copied();
                let version = match known {
                    Some(version) => version,
                    None => {
                        let tags = match self
                            .call(Action::ListResourceTags, region, |_| {
                                api.list_resource_tags(region, &key_id)
                            })
                            .await
                        {
                            Ok(tags) => tags,
                            // Deleted meanwhile, or not ours to read.
                            Err(e) if e.class == ErrorClass::NotFound => Vec::new(),
                            Err(e) => {
                                return Err(self.failed(Action::ListResourceTags, region, &e));
                            }
                        };
                        let tag = |name: &str| {
                            tags.iter()
                                .find(|(k, _)| k == name)
                                .map(|(_, v)| v.as_str())
                        };
                        let version = (tag(TAG_DISTRIBUTION_ID) == Some(id))
                            .then(|| tag(TAG_VERSION).and_then(|v| v.parse::<u32>().ok()))
                            .flatten();
                        seen.lock().await.insert(key_id.clone(), version);
                        version
                    }
                };
                if let Some(version) = version {
                    found.push((key_id, version));
                }
            }
            match page.next_marker {
                Some(next) => marker = Some(next),
                None => return Ok(found),
            }
        }
    }

    /// Schedules deletion of one key, tolerating a key already gone or
    /// already pending deletion.
    async fn schedule_deletion(&self, region: &str, key_id: &str) -> Result<(), ProviderError> {
        let api = &self.api;
        let days = self.pending_window_days;
        match self
            .call(Action::ScheduleKeyDeletion, region, |_| {
                api.schedule_key_deletion(region, key_id, days)
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.class == ErrorClass::NotFound => Ok(()),
            Err(e) if e.class == ErrorClass::InvalidState => {
                let info = self
                    .call(Action::DescribeKey, region, |_| {
                        api.describe_key(region, key_id)
                    })
                    .await;
                match info {
                    Ok(info)
                        if matches!(
                            info.state,
                            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
                        ) =>
                    {
                        Ok(())
                    }
                    Err(d) if d.class == ErrorClass::NotFound => Ok(()),
                    _ => Err(self.failed(Action::ScheduleKeyDeletion, region, &e)),
                }
            }
            Err(e) => Err(self.failed(Action::ScheduleKeyDeletion, region, &e)),
        }
    }
}

/// Whether a key in this state is scheduled for deletion: it counts as
/// gone, and is never adopted again.
fn doomed(state: &KeyState) -> bool {
    matches!(
        state,
        KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
    )
}

impl AwsKms {
    /// `DescribeKey` of a key id or alias name; `None` when there is none.
    async fn describe(&self, region: &str, key_id: &str) -> Result<Option<KeyInfo>, ProviderError> {
        let api = &self.api;
        match self
            .call(Action::DescribeKey, region, |_| {
                api.describe_key(region, key_id)
            })
            .await
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.class == ErrorClass::NotFound => Ok(None),
            Err(e) => Err(self.failed(Action::DescribeKey, region, &e)),
        }
    }

    /// One key as drift detection sees it. Its public key is read only
    /// when it is enabled: AWS shows none of a disabled key
    /// (`DisabledException`), nor of one without material.
    async fn live_version(
        &self,
        region: &str,
        info: &KeyInfo,
        vault_version: Option<u32>,
    ) -> Result<LiveVersion, ProviderError> {
        let asymmetric = match &info.key_spec {
            Some(spec) => *spec != KeySpec::SymmetricDefault && !spec.as_str().starts_with("HMAC_"),
            None => false,
        };
        let enabled = info.state == KeyState::Enabled;
        let material = match &info.state {
            KeyState::PendingImport => LiveMaterial::Absent,
            state if doomed(state) => {
                LiveMaterial::Unverifiable("the KMS key is scheduled for deletion".into())
            }
            _ if !asymmetric => LiveMaterial::Unverifiable(
                "AWS KMS shows nothing of a symmetric key's material".into(),
            ),
            KeyState::Enabled => {
                let api = &self.api;
                let key_id = info.key_id.as_str();
                match self
                    .call(Action::GetPublicKey, region, |_| {
                        api.get_public_key(region, key_id)
                    })
                    .await
                {
                    Ok(der) => LiveMaterial::PublicKey(der),
                    // Disabled or deleted since it was described.
                    Err(e)
                        if matches!(e.class, ErrorClass::InvalidState | ErrorClass::NotFound) =>
                    {
                        LiveMaterial::Unverifiable(format!(
                            "AWS KMS did not show its public key: {}",
                            e.code
                        ))
                    }
                    Err(e) => return Err(self.failed(Action::GetPublicKey, region, &e)),
                }
            }
            KeyState::Disabled => {
                LiveMaterial::Unverifiable("AWS KMS shows no public key of a disabled key".into())
            }
            other => LiveMaterial::Unverifiable(format!(
                "AWS KMS shows no public key of a key in state {}",
                other.as_str()
            )),
        };
        Ok(LiveVersion {
            provider_id: info.key_id.clone(),
            vault_version,
            enabled,
            doomed: doomed(&info.state),
            state: info.state.as_str().to_owned(),
            material,
        })
    }
}

/// One import run. Its state: the tags already read while looking for
/// keys that an earlier attempt created without Vault hearing back.
struct AwsImport<'a> {
    provider: &'a AwsKms,
    target: &'a Target,
    touched: AtomicBool,
    seen: Mutex<HashMap<String, Option<u32>>>,
}

impl AwsImport<'_> {
    /// The key an earlier attempt created for `version`, if any; extra
    /// ones (several lost answers) are scheduled for deletion.
    async fn adopt(&self, version: u32) -> Result<Option<String>, ProviderError> {
        let provider = self.provider;
        let region = provider.region.as_str();
        let mut candidates: Vec<(String, KeyState)> = Vec::new();
        for (key_id, tagged) in provider
            .tagged_keys(region, &self.target.id, &self.seen)
            .await?
        {
            if tagged != version {
                continue;
            }
            let api = &provider.api;
            match provider
                .call(Action::DescribeKey, region, |_| {
                    api.describe_key(region, &key_id)
                })
                .await
            {
                Ok(info)
                    if !matches!(
                        info.state,
                        KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
                    ) =>
                {
                    candidates.push((key_id, info.state));
                }
                Ok(_) => {}
                Err(e) if e.class == ErrorClass::NotFound => {}
                Err(e) => return Err(provider.failed(Action::DescribeKey, region, &e)),
            }
        }
        // Prefer a key that already has material.
        candidates.sort_by_key(|(_, state)| match state {
            KeyState::Enabled => 0,
            KeyState::Disabled => 1,
            _ => 2,
        });
        let mut candidates = candidates.into_iter();
        let Some((chosen, _)) = candidates.next() else {
            return Ok(None);
        };
        for (extra, _) in candidates {
            log::warn!(
                "aws kms: scheduling deletion of {extra}, a second key for version {version} of {} left by a lost answer",
                self.target.name
            );
            self.touched.store(true, Ordering::SeqCst);
            provider.schedule_deletion(region, &extra).await?;
        }
        log::info!(
            "aws kms: reusing {chosen} for version {version} of {}, created by an earlier attempt",
            self.target.name
        );
        Ok(Some(chosen))
    }

    /// Creates the version's key. A failure that may have created it
    /// anyway (a lost answer) is followed by a look-up by tags, never by
    /// a blind second `CreateKey`.
    async fn create(&self, version: u32) -> Result<(String, bool), ProviderError> {
        let provider = self.provider;
        let region = provider.region.as_str();
        let (key_spec, key_usage) = key_spec(self.target.key_type, &self.target.purposes);
        let new_key = NewKey {
            key_spec,
            key_usage,
            multi_region: !self.target.replica_regions.is_empty(),
            description: format!(
                "Vault keymgmt: version {version} of key {}, distribution {}",
                self.target.key_name, self.target.name
            ),
            tags: version_tags(self.target, version),
        };
        let api = &provider.api;
        let maybe_created = AtomicBool::new(false);
        let lookup_failed: std::sync::Mutex<Option<ProviderError>> = std::sync::Mutex::new(None);
        let result = provider
            .call(Action::CreateKey, region, |_| {
                let (maybe_created, lookup_failed, new_key) =
                    (&maybe_created, &lookup_failed, &new_key);
                async move {
                    if maybe_created.load(Ordering::SeqCst) {
                        match self.adopt(version).await {
                            Ok(Some(found)) => return Ok((found, true)),
                            Ok(None) => {}
                            Err(e) => {
                                *lookup_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                return Err(ApiError::new(ErrorClass::Invalid, "lookup", "failed"));
                            }
                        }
                    }
                    match api.create_key(region, new_key).await {
                        Ok(id) => {
                            self.touched.store(true, Ordering::SeqCst);
                            Ok((id, false))
                        }
                        Err(e) => {
                            if e.class.ambiguous() {
                                self.touched.store(true, Ordering::SeqCst);
                                maybe_created.store(true, Ordering::SeqCst);
                            }
                            Err(e)
                        }
                    }
                }
            })
            .await;
        if let Some(err) = lookup_failed
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
        {
            return Err(err);
        }
        result.map_err(|e| provider.failed(Action::CreateKey, region, &e))
    }
}

#[async_trait::async_trait]
impl ImportSession for AwsImport<'_> {
    async fn import(&self, request: ImportRequest<'_>) -> Result<String, ProviderError> {
        let provider = self.provider;
        let target = self.target;
        if request.material.key_type() != target.key_type {
            return Err(ProviderError::Rejected(format!(
                "version {} holds {} material, not {}",
                request.version,
                request.material.key_type(),
                target.key_type
            )));
        }
        let version = request.version;
        let started = Instant::now();
        let (key_id, times) = timing::timed(async {
            let (key_id, existed) = match request.resume {
                true => match self.adopt(version).await? {
                    Some(found) => (found, true),
                    None => self.create(version).await?,
                },
                false => self.create(version).await?,
            };
            let state = VersionState {
                version,
                provider_id: &key_id,
                enabled: request.enabled,
                material: request.material,
            };
            self.touched.store(true, Ordering::SeqCst);
            if existed {
                // Whatever an earlier attempt got to, make it what we want.
                provider.converge(&provider.region, &state).await?;
            } else if request.enabled {
                provider
                    .import_material(&provider.region, &key_id, request.material)
                    .await?;
            }
            Ok::<_, ProviderError>(key_id)
        })
        .await;
        let key_id = key_id?;
        log::info!(
            key = target.name.as_str(),
            version = version,
            kms_key = key_id.as_str(),
            enabled = request.enabled,
            api_us = times.api.as_micros(),
            wrap_us = times.wrap.as_micros(),
            total_us = started.elapsed().as_micros();
            "aws kms: imported version {version} of {} into {}",
            target.name,
            provider.region
        );
        Ok(key_id)
    }

    /// Every version's key carries its own version tag, so a lost answer
    /// is found by tag whatever else was in flight.
    async fn concurrency(&self, versions: usize) -> Result<usize, ProviderError> {
        Ok(versions)
    }

    fn touched(&self) -> bool {
        self.touched.load(Ordering::SeqCst)
    }

    async fn finish(self: Box<Self>) {}
}

#[async_trait::async_trait]
impl KmsProvider for AwsKms {
    fn begin_import<'a>(&'a self, target: &'a Target) -> Box<dyn ImportSession + 'a> {
        Box::new(AwsImport {
            provider: self,
            target,
            touched: AtomicBool::new(false),
            seen: Mutex::default(),
        })
    }

    /// Points the alias at the latest version: `UpdateAlias` first (one
    /// call on every rotation), `CreateAlias` when there is none yet; an
    /// alias that exists after a lost answer counts as success.
    async fn make_current(
        &self,
        target: &Target,
        latest: &VersionState<'_>,
    ) -> Result<(), ProviderError> {
        let region = self.region.as_str();
        let alias = alias_name(&target.name);
        let api = &self.api;
        let key_id = latest.provider_id;
        match self
            .call(Action::UpdateAlias, region, |_| {
                api.update_alias(region, &alias, key_id)
            })
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if e.class == ErrorClass::NotFound => {}
            Err(e) => return Err(self.failed(Action::UpdateAlias, region, &e)),
        }
        match self
            .call(Action::CreateAlias, region, |_| {
                api.create_alias(region, &alias, key_id)
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.class == ErrorClass::AlreadyExists => self
                .call(Action::UpdateAlias, region, |_| {
                    api.update_alias(region, &alias, key_id)
                })
                .await
                .map_err(|e| self.failed(Action::UpdateAlias, region, &e)),
            Err(e) => Err(self.failed(Action::CreateAlias, region, &e)),
        }
    }

    async fn set_enabled(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Vec<NewId>, ProviderError> {
        for state in versions {
            if !self.converge(&self.region, state).await? {
                return Err(ProviderError::Rejected(format!(
                    "the KMS key {} of version {} of {} no longer exists in {}; remove the key from the provider and distribute it again",
                    state.provider_id, state.version, target.name, self.region
                )));
            }
            if target.replicated {
                for region in &target.replica_regions {
                    if !self.converge(region, state).await? {
                        log::warn!(
                            "aws kms: version {} of {} has no replica in {region} yet; replicate again to create it",
                            state.version,
                            target.name
                        );
                    }
                }
            }
        }
        Ok(Vec::new())
    }

    async fn remove(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
        unrecorded: &[u32],
    ) -> Result<(), ProviderError> {
        let region = self.region.as_str();
        let mut key_ids: Vec<String> = versions.iter().map(|v| v.provider_id.to_owned()).collect();
        if !unrecorded.is_empty() {
            // Keys an interrupted import may have created.
            let seen = Mutex::default();
            for (key_id, _) in self.tagged_keys(region, &target.id, &seen).await? {
                if !key_ids.contains(&key_id) {
                    key_ids.push(key_id);
                }
            }
        }
        if target.replicated {
            // Replicas first: a primary waits for its replicas anyway.
            for replica_region in &target.replica_regions {
                for key_id in &key_ids {
                    self.schedule_deletion(replica_region, key_id).await?;
                }
            }
        }
        for key_id in &key_ids {
            self.schedule_deletion(region, key_id).await?;
        }
        let alias = alias_name(&target.name);
        let api = &self.api;
        match self
            .call(Action::DeleteAlias, region, |_| {
                api.delete_alias(region, &alias)
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.class == ErrorClass::NotFound => Ok(()),
            Err(e) => Err(self.failed(Action::DeleteAlias, region, &e)),
        }
    }

    /// The primary region only: each recorded version's key
    /// (`DescribeKey`, and `GetPublicKey` of an enabled asymmetric one),
    /// the alias target (`DescribeKey` of the alias name) as current, and
    /// keys tagged with the distribution id that Vault has not recorded
    /// (the tag scan of imports: `ListKeys`, `ListResourceTags`). A key
    /// Vault did not create and did not tag is seen only while the alias
    /// names it. `None` when none of these is left outside its deletion
    /// window.
    async fn inspect(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Option<LiveKey>, ProviderError> {
        let region = self.region.as_str();
        let mut live: Vec<LiveVersion> = Vec::new();
        for state in versions {
            if live.iter().any(|l| l.provider_id == state.provider_id) {
                continue;
            }
            if let Some(info) = self.describe(region, state.provider_id).await? {
                live.push(
                    self.live_version(region, &info, Some(state.version))
                        .await?,
                );
            }
        }
        let seen = Mutex::default();
        for (key_id, version) in self.tagged_keys(region, &target.id, &seen).await? {
            if live.iter().any(|l| l.provider_id == key_id) {
                continue;
            }
            if let Some(info) = self.describe(region, &key_id).await? {
                live.push(self.live_version(region, &info, Some(version)).await?);
            }
        }
        let current = self.describe(region, &alias_name(&target.name)).await?;
        if let Some(info) = &current
            && !live.iter().any(|l| l.provider_id == info.key_id)
        {
            live.push(self.live_version(region, info, None).await?);
        }
        if live.iter().all(|l| l.doomed) {
            return Ok(None);
        }
        Ok(Some(LiveKey {
            versions: live,
            has_current: true,
            can_make_current: true,
            current: current.map(|info| info.key_id),
        }))
    }

    /// `DisableKey` of each key in the primary region; a key already
    /// gone, disabled, scheduled for deletion or without material is left
    /// as it is. Nothing is deleted.
    async fn disable_foreign(
        &self,
        target: &Target,
        provider_ids: &[String],
    ) -> Result<(), ProviderError> {
        let region = self.region.as_str();
        let api = &self.api;
        for key_id in provider_ids {
            match self
                .call(Action::DisableKey, region, |_| {
                    api.disable_key(region, key_id)
                })
                .await
            {
                Ok(()) => {
                    log::warn!(
                        "aws kms: disabled {key_id}, a KMS key of {} that Vault did not create",
                        target.name
                    );
                }
                Err(e) if e.class == ErrorClass::NotFound => {}
                Err(e) if e.class == ErrorClass::InvalidState => {
                    match self.describe(region, key_id).await? {
                        Some(info) if info.state == KeyState::Enabled => {
                            return Err(self.failed(Action::DisableKey, region, &e));
                        }
                        _ => {}
                    }
                }
                Err(e) => return Err(self.failed(Action::DisableKey, region, &e)),
            }
        }
        Ok(())
    }

    async fn replicate(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<(), ProviderError> {
        let region = self.region.as_str();
        let api = &self.api;
        for state in versions {
            let key_id = state.provider_id;
            for replica_region in &target.replica_regions {
                let tags = version_tags(target, state.version);
                match self
                    .call(Action::ReplicateKey, region, |_| {
                        api.replicate_key(region, key_id, replica_region, &tags)
                    })
                    .await
                {
                    Ok(()) => {}
                    // Replicated before (a repeat, or a lost answer).
                    Err(e) if e.class == ErrorClass::AlreadyExists => {}
                    Err(e) => return Err(self.failed(Action::ReplicateKey, region, &e)),
                }
                if !self.converge(replica_region, state).await? {
                    return Err(ProviderError::Unavailable(format!(
                        "the replica of {key_id} in {replica_region} is not visible yet; repeat the request"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::testing::first_disabled;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let double = fake::AwsDouble::default();
        super::super::conformance::run(&double, "awskms").await;
    }

    #[tokio::test]
    async fn passes_the_drift_contract() {
        for key_type in [KeyType::Aes256Gcm96, KeyType::EcdsaP256] {
            let double = fake::AwsDouble::of(key_type);
            super::super::conformance::run_drift(&double, &format!("awskms {key_type}")).await;
        }
    }

    /// Imports versions 1..=n of an ECDSA target, version 1 disabled.
    async fn distributed(
        double: &fake::AwsDouble,
        name: &str,
        n: u32,
    ) -> (Target, Vec<KeyMaterial>, Vec<String>) {
        use super::super::conformance::Double;
        let provider = double.provider();
        let target = double.target(name);
        let materials: Vec<KeyMaterial> = (0..n)
            .map(|_| KeyMaterial::generate(target.key_type).unwrap())
            .collect();
        let mut ids: Vec<String> = Vec::new();
        for (i, material) in materials.iter().enumerate() {
            let session = provider.begin_import(&target);
            let id = session
                .import(ImportRequest {
                    version: i as u32 + 1,
                    material,
                    enabled: i > 0,
                    resume: false,
                    recorded: &ids,
                })
                .await
                .unwrap();
            session.finish().await;
            ids.push(id);
        }
        (target, materials, ids)
    }

    #[tokio::test]
    async fn inspect_shows_unimported_versions_and_unrecorded_tagged_keys() {
        let double = fake::AwsDouble::of(KeyType::EcdsaP256);
        let (target, materials, ids) = distributed(&double, "tagged-1700000020", 3).await;
        let aws = double.aws();
        // Vault recorded only versions 1 and 2; version 3's key carries
        // the distribution's tags (an import whose answer was lost).
        let recorded = first_disabled(&ids[..2], &materials[..2]);
        let live = aws.inspect(&target, &recorded).await.unwrap().unwrap();
        assert_eq!(live.current, None, "no alias yet");
        assert!(live.has_current);
        let v1 = live
            .versions
            .iter()
            .find(|l| l.provider_id == ids[0])
            .unwrap();
        assert_eq!(
            (v1.enabled, v1.state.as_str(), &v1.material),
            (false, "PendingImport", &LiveMaterial::Absent)
        );
        let v3 = live
            .versions
            .iter()
            .find(|l| l.provider_id == ids[2])
            .unwrap();
        assert_eq!(v3.vault_version, Some(3));
        assert!(v3.enabled && !v3.doomed);
        assert_eq!(
            v3.material,
            LiveMaterial::PublicKey(materials[2].public_key_der().unwrap())
        );
        // A disabled key's public key cannot be read.
        double
            .fake
            .set_state_outside(fake::REGION, &ids[1], KeyState::Disabled);
        let live = aws.inspect(&target, &recorded).await.unwrap().unwrap();
        let v2 = live
            .versions
            .iter()
            .find(|l| l.provider_id == ids[1])
            .unwrap();
        assert!(
            matches!(v2.material, LiveMaterial::Unverifiable(_)),
            "{v2:?}"
        );
        // Two enabled keys, then one: none asked of the disabled key.
        assert_eq!(double.fake.calls(Action::GetPublicKey), 3);
        // Read-only: nothing was created, enabled or moved.
        for action in [
            Action::CreateKey,
            Action::EnableKey,
            Action::DisableKey,
            Action::ImportKeyMaterial,
            Action::UpdateAlias,
            Action::CreateAlias,
        ] {
            let before = double.fake.calls(action);
            aws.inspect(&target, &recorded).await.unwrap();
            assert_eq!(double.fake.calls(action), before, "{action:?}");
        }
    }

    #[tokio::test]
    async fn a_version_scheduled_for_deletion_is_imported_again_never_adopted() {
        let double = fake::AwsDouble::of(KeyType::EcdsaP256);
        let (target, materials, ids) = distributed(&double, "doomed-1700000021", 2).await;
        double.fake.delete_outside(fake::REGION, &ids[1]);
        let aws = double.aws();
        let live = aws
            .inspect(&target, &first_disabled(&ids, &materials))
            .await
            .unwrap()
            .unwrap();
        let v2 = live
            .versions
            .iter()
            .find(|l| l.provider_id == ids[1])
            .unwrap();
        assert!(v2.doomed && !v2.enabled, "{v2:?}");
        // The engine drops version 2 and imports it again, as a resumed
        // import: the tag scan must pass over the doomed key.
        let session = aws.begin_import(&target);
        let again = session
            .import(ImportRequest {
                version: 2,
                material: &materials[1],
                enabled: true,
                resume: true,
                recorded: &ids[..1],
            })
            .await
            .unwrap();
        session.finish().await;
        assert_ne!(again, ids[1]);
        let key = double.fake.key(fake::REGION, &again).unwrap();
        assert_eq!(key.state, KeyState::Enabled);
        assert_eq!(key.tag(TAG_VERSION), Some("2"));
        assert_eq!(key.material.as_deref(), Some(materials[1].as_bytes()));
        // Every key of the distribution deleted: the key is gone, even
        // while the alias still names one of them.
        let recorded = [ids[0].clone(), again.clone()];
        let all = first_disabled(&recorded, &materials);
        aws.make_current(&target, &all[1]).await.unwrap();
        for id in &recorded {
            double.fake.delete_outside(fake::REGION, id);
        }
        assert_eq!(aws.inspect(&target, &all).await.unwrap(), None);
    }

    #[tokio::test]
    async fn disable_foreign_disables_and_tolerates_what_is_gone() {
        let double = fake::AwsDouble::of(KeyType::EcdsaP256);
        let (target, _, ids) = distributed(&double, "foreign-1700000022", 2).await;
        let aws = double.aws();
        let other = KeyMaterial::generate(target.key_type).unwrap();
        let foreign = double.fake.add_outside(
            fake::REGION,
            KeySpec::EccNistP256,
            KeyUsageType::SignVerify,
            &other,
            &[],
        );
        let doomed = double.fake.add_outside(
            fake::REGION,
            KeySpec::EccNistP256,
            KeyUsageType::SignVerify,
            &other,
            &[],
        );
        double.fake.delete_outside(fake::REGION, &doomed);
        aws.disable_foreign(
            &target,
            &[foreign.clone(), doomed.clone(), "no-such-key".into()],
        )
        .await
        .unwrap();
        let state = |id: &str| double.fake.key(fake::REGION, id).unwrap().state;
        assert_eq!(state(&foreign), KeyState::Disabled);
        assert_eq!(state(&doomed), KeyState::PendingDeletion);
        assert_eq!(state(&ids[1]), KeyState::Enabled, "ours untouched");
        // A denial names the permission.
        double
            .fake
            .inject(Action::DisableKey, fake::Fault::Denied, 1);
        let err = aws
            .disable_foreign(&target, std::slice::from_ref(&foreign))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("kms:DisableKey"), "{err}");
    }

    #[test]
    fn purposes_follow_key_usage() {
        use Purpose::*;
        let check = |t, p: &[Purpose]| DESCRIPTOR.check_support(t, p, Protection::Hsm);
        assert!(check(KeyType::Aes256Gcm96, &[Decrypt, Encrypt]).is_ok());
        assert!(check(KeyType::Rsa2048, &[Decrypt, Encrypt]).is_ok());
        assert!(check(KeyType::Rsa3072, &[Sign, Verify]).is_ok());
        assert!(check(KeyType::EcdsaP521, &[Sign, Verify]).is_ok());
        let err = check(KeyType::Aes256Gcm96, &[Encrypt]).unwrap_err();
        assert!(err.contains("\"encrypt,decrypt\""), "{err}");
        let err = check(KeyType::Rsa2048, &[Encrypt, Sign]).unwrap_err();
        assert!(err.starts_with("purpose: "), "{err}");
        assert!(check(KeyType::EcdsaP256, &[Decrypt]).is_err());
        assert!(check(KeyType::Aes256Gcm96, &[Sign, Verify]).is_err());
        assert!(check(KeyType::Rsa2048, &[Wrap]).is_err());
        let err = check_support_protection();
        assert!(err.contains("protection"), "{err}");
    }

    fn check_support_protection() -> String {
        DESCRIPTOR
            .check_support(
                KeyType::Aes256Gcm96,
                &[Purpose::Encrypt, Purpose::Decrypt],
                Protection::Software,
            )
            .unwrap_err()
    }

    #[test]
    fn specs_and_wrapping() {
        use Purpose::*;
        assert_eq!(
            key_spec(KeyType::Aes256Gcm96, &[Encrypt, Decrypt]),
            (KeySpec::SymmetricDefault, KeyUsageType::EncryptDecrypt)
        );
        assert_eq!(
            key_spec(KeyType::Rsa4096, &[Sign, Verify]),
            (KeySpec::Rsa4096, KeyUsageType::SignVerify)
        );
        assert_eq!(
            key_spec(KeyType::Rsa2048, &[Encrypt, Decrypt]),
            (KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt)
        );
        assert_eq!(
            key_spec(KeyType::EcdsaP384, &[Sign, Verify]),
            (KeySpec::EccNistP384, KeyUsageType::SignVerify)
        );
        assert_eq!(
            wrapping_algorithm(KeyType::Aes256Gcm96),
            AlgorithmSpec::RsaesOaepSha256
        );
        for t in [KeyType::Rsa2048, KeyType::EcdsaP521] {
            assert_eq!(wrapping_algorithm(t), AlgorithmSpec::RsaAesKeyWrapSha256);
        }
    }

    #[test]
    fn alias_names() {
        assert_eq!(alias_name("k-1700000000"), "alias/hashicorp/k-1700000000");
        assert!(check_key_name("my_key-1").is_ok());
        let err = check_key_name("my.key").unwrap_err();
        assert!(err.contains("alias"), "{err}");
        assert!(check_key_name(&"a".repeat(300)).unwrap_err().len() < 300);
    }
}
