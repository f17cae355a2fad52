//! The `gcpckms` provider: distribution into Google Cloud KMS through
//! import jobs.
//!
//! Mapping (keymgmt-api reference §5.3): one CryptoKey per distribution,
//! named `<key>-<unix seconds>`, created `importOnly` with
//! `skipInitialVersionCreation`, so that Google never generates material
//! for it; one CryptoKeyVersion per Vault version, imported with an
//! ImportJob (`RSA_OAEP_4096_SHA256_AES_256`: RSA-OAEP of an ephemeral
//! AES-256 key, then AES-KWP of the raw AES key or the PKCS#8). The job is
//! the state of an import run: created on first use, polled until ACTIVE,
//! reused by later runs while it is active, replaced when it expired.
//! Symmetric keys get the latest version as primary.
//!
//! A version below `min_enabled_version` is never usable, not even for a
//! moment: Google enables an imported version at once, so such a version
//! is not imported at all until it is enabled; its id is recorded as
//! [`NOT_IMPORTED`] meanwhile. Removal destroys every version (the
//! CryptoKey itself cannot be deleted while it holds imported versions).
//!
//! A lost answer never duplicates a version: versions are imported one at
//! a time and recorded before the next, so a version of the CryptoKey
//! whose id Vault has not recorded can only be the one an interrupted
//! attempt imported; it is found by listing the versions and reused.

pub mod client;
pub mod config;
#[cfg(test)]
pub mod fake;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use google_cloud_kms_v1::model::crypto_key::CryptoKeyPurpose;
use google_cloud_kms_v1::model::crypto_key_version::{
    CryptoKeyVersionAlgorithm, CryptoKeyVersionState,
};
use google_cloud_kms_v1::model::import_job::{ImportJobState, ImportMethod};
use google_cloud_kms_v1::model::{
    CryptoKey, CryptoKeyVersion, CryptoKeyVersionTemplate, ImportCryptoKeyVersionRequest,
    ImportJob, ProtectionLevel,
};
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
use crate::engine::wrap::{OaepHash, rsa_aes_key_wrap, rsa_public_from_spki_pem};
use crate::framework::error::quote;
use client::{CloudKmsApi, RestKms};
use config::Settings;

/// The recorded id of a version not imported while it is disabled.
pub const NOT_IMPORTED: &str = "not-imported";

/// How the ids of the import jobs this provider creates begin.
const JOB_PREFIX: &str = "keymgmt-";

/// The CryptoKey label holding the distribution id.
pub const LABEL_DISTRIBUTION_ID: &str = "keymgmt-distribution-id";

const AES_PURPOSES: &[Purpose] = &[Purpose::Encrypt, Purpose::Decrypt];
const RSA_PURPOSES: &[Purpose] = &[Purpose::Decrypt, Purpose::Sign];
const EC_PURPOSES: &[Purpose] = &[Purpose::Sign];

/// The `gcpckms` provider.
pub static DESCRIPTOR: Descriptor = Descriptor {
    name: "gcpckms",
    title: "Google Cloud KMS",
    key_collection: "the key ring, projects/<project>/locations/<location>/keyRings/<ring>",
    credentials: &[
        Credential {
            key: "service_account_file",
            env: Some(config::ENV_CREDENTIALS),
            secret: true,
            description: "Path on the Vault host of a service account key (or the key's JSON); without it, the application default credentials.",
        },
        Credential {
            key: "project",
            env: None,
            secret: false,
            description: "Accepted for compatibility; must match key_collection.",
        },
        Credential {
            key: "location",
            env: None,
            secret: false,
            description: "Accepted for compatibility; must match key_collection.",
        },
    ],
    support: &[
        (KeyType::Aes256Gcm96, AES_PURPOSES),
        (KeyType::Rsa2048, RSA_PURPOSES),
        (KeyType::Rsa3072, RSA_PURPOSES),
        (KeyType::Rsa4096, RSA_PURPOSES),
        (KeyType::EcdsaP256, EC_PURPOSES),
        (KeyType::EcdsaP384, EC_PURPOSES),
    ],
    check_purposes,
    protections: &[Protection::Hsm, Protection::Software],
    import_spec: "Cloud KMS import jobs (`RSA_OAEP_4096_SHA256_AES_256`); one CryptoKey per distribution, a version per Vault version",
    replicates: false,
    validate: config::validate,
    check_key_name,
    connect,
};

/// A CryptoKey has one purpose: RSA keys decrypt or sign, not both; an
/// `ENCRYPT_DECRYPT` key does both, so an AES key's purpose names both.
fn check_purposes(key_type: KeyType, purposes: &[Purpose]) -> Result<(), String> {
    let has = |p| purposes.contains(&p);
    if key_type.rsa_bits().is_some() && has(Purpose::Decrypt) && has(Purpose::Sign) {
        return Err(
            "the gcpckms provider gives an asymmetric key one purpose: \"decrypt\" or \"sign\", not both".into(),
        );
    }
    if key_type == KeyType::Aes256Gcm96 && !(has(Purpose::Encrypt) && has(Purpose::Decrypt)) {
        return Err(
            "a Cloud KMS ENCRYPT_DECRYPT key always encrypts and decrypts: give purpose \"encrypt,decrypt\"".into(),
        );
    }
    Ok(())
}

/// CryptoKey ids are `[a-zA-Z0-9_-]{1,63}`.
fn check_key_name(key: &str) -> Result<(), String> {
    let id = format!("{key}-1700000000");
    if id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(())
    } else {
        Err(format!(
            "its CryptoKey id {} would not be a Cloud KMS id (letters, digits, '_' and '-', at most 63 characters)",
            quote(&id)
        ))
    }
}

/// The CryptoKey purpose and version algorithm of a key type.
pub fn algorithm(
    key_type: KeyType,
    purposes: &[Purpose],
) -> (CryptoKeyPurpose, CryptoKeyVersionAlgorithm) {
    use CryptoKeyVersionAlgorithm as A;
    let signs = purposes.contains(&Purpose::Sign);
    match key_type {
        KeyType::Aes256Gcm96 => (
            CryptoKeyPurpose::EncryptDecrypt,
            A::GoogleSymmetricEncryption,
        ),
        KeyType::Rsa2048 if signs => (CryptoKeyPurpose::AsymmetricSign, A::RsaSignPkcs12048Sha256),
        KeyType::Rsa3072 if signs => (CryptoKeyPurpose::AsymmetricSign, A::RsaSignPkcs13072Sha256),
        KeyType::Rsa4096 if signs => (CryptoKeyPurpose::AsymmetricSign, A::RsaSignPkcs14096Sha256),
        KeyType::Rsa2048 => (
            CryptoKeyPurpose::AsymmetricDecrypt,
            A::RsaDecryptOaep2048Sha256,
        ),
        KeyType::Rsa3072 => (
            CryptoKeyPurpose::AsymmetricDecrypt,
            A::RsaDecryptOaep3072Sha256,
        ),
        KeyType::Rsa4096 => (
            CryptoKeyPurpose::AsymmetricDecrypt,
            A::RsaDecryptOaep4096Sha256,
        ),
        KeyType::EcdsaP256 => (CryptoKeyPurpose::AsymmetricSign, A::EcSignP256Sha256),
        // P-521 is not in the support matrix: GCP has no P-521 algorithm.
        KeyType::EcdsaP384 | KeyType::EcdsaP521 => {
            (CryptoKeyPurpose::AsymmetricSign, A::EcSignP384Sha384)
        }
    }
}

fn protection_level(protection: Protection) -> ProtectionLevel {
    match protection {
        Protection::Hsm => ProtectionLevel::Hsm,
        Protection::Software => ProtectionLevel::Software,
    }
}

/// The last segment of a resource name: a version's id.
fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Wraps `material` for `ImportCryptoKeyVersion` under the import job's
/// wrapping key (PEM SubjectPublicKeyInfo) with the method of every job
/// this provider creates, `RSA_OAEP_4096_SHA256_AES_256`, for all types.
pub fn wrap_material(public_pem: &str, material: &KeyMaterial) -> Result<Vec<u8>, ProviderError> {
    let public = rsa_public_from_spki_pem(public_pem).map_err(|e| {
        ProviderError::Rejected(format!("the import job's wrapping key is unusable: {e}"))
    })?;
    rsa_aes_key_wrap(&public, OaepHash::Sha256, material.as_bytes())
        .map_err(|e| ProviderError::Rejected(format!("wrapping the key for Cloud KMS failed: {e}")))
}

pub fn connect(config: &ProviderConfig) -> Result<Arc<dyn KmsProvider>, ProviderError> {
    let settings = Settings::resolve(config, &process_env)?;
    let api = RestKms::new(&settings)?;
    Ok(Arc::new(GcpKms::new(
        Arc::new(api),
        settings.key_ring.name(),
        settings.retry,
        Polling::default(),
    )))
}

/// A Cloud KMS call, for retries' logs and the permission a denial names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    CreateCryptoKey,
    GetCryptoKey,
    CreateImportJob,
    GetImportJob,
    Import,
    ListVersions,
    UpdateVersion,
    DestroyVersion,
    UpdatePrimary,
    GetPublicKey,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateCryptoKey => "cryptoKeys.create",
            Self::GetCryptoKey => "cryptoKeys.get",
            Self::CreateImportJob => "importJobs.create",
            Self::GetImportJob => "importJobs.get",
            Self::Import => "cryptoKeyVersions.import",
            Self::ListVersions => "cryptoKeyVersions.list",
            Self::UpdateVersion => "cryptoKeyVersions.patch",
            Self::DestroyVersion => "cryptoKeyVersions.destroy",
            Self::UpdatePrimary => "cryptoKeys.updatePrimaryVersion",
            Self::GetPublicKey => "cryptoKeyVersions.getPublicKey",
        }
    }

    /// The IAM permissions the call needs on the key ring.
    pub fn permissions(self) -> &'static str {
        match self {
            Self::CreateCryptoKey => "cloudkms.cryptoKeys.create",
            Self::GetCryptoKey => "cloudkms.cryptoKeys.get",
            Self::CreateImportJob => "cloudkms.importJobs.create",
            Self::GetImportJob => "cloudkms.importJobs.get",
            Self::Import => "cloudkms.importJobs.useToImport and cloudkms.cryptoKeyVersions.create",
            Self::ListVersions => "cloudkms.cryptoKeyVersions.list",
            Self::UpdateVersion => "cloudkms.cryptoKeyVersions.update",
            Self::DestroyVersion => "cloudkms.cryptoKeyVersions.destroy",
            Self::UpdatePrimary => "cloudkms.cryptoKeys.update",
            Self::GetPublicKey => "cloudkms.cryptoKeyVersions.viewPublicKey",
        }
    }
}

/// How long to wait for Google's asynchronous work: an import job's key
/// generation (HSM jobs take a while) and a version's import.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    pub first: Duration,
    pub max: Duration,
    pub deadline: Duration,
}

impl Default for Polling {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
            deadline: Duration::from_secs(40),
        }
    }
}

/// An ACTIVE import job kept for reuse by later runs.
#[derive(Clone)]
struct ActiveJob {
    name: String,
    public_pem: String,
    /// When to stop using it: an hour before it expires.
    usable_until: Option<std::time::SystemTime>,
}

/// One configured `gcpckms` provider.
pub struct GcpKms {
    api: Arc<dyn CloudKmsApi>,
    /// The key ring's resource name.
    ring: String,
    retry: RetryPolicy,
    polling: Polling,
    /// Reusable import jobs, by protection level.
    jobs: Mutex<HashMap<i32, ActiveJob>>,
}

impl GcpKms {
    pub fn new(
        api: Arc<dyn CloudKmsApi>,
        ring: String,
        retry: RetryPolicy,
        polling: Polling,
    ) -> Self {
        Self {
            api,
            ring,
            retry,
            polling,
            jobs: Mutex::default(),
        }
    }

    async fn call<T, F, Fut>(&self, call: Call, attempt: F) -> Result<T, ApiError>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        call_api(
            &self.retry,
            &format!("cloud kms: {}", call.name()),
            attempt,
            api_time,
        )
        .await
    }

    fn failed(&self, call: Call, err: &ApiError) -> ProviderError {
        err.to_provider_error(
            "Google Cloud KMS",
            &format!("{} in {}", call.name(), self.ring),
            call.permissions(),
        )
    }

    fn key_name(&self, target: &Target) -> String {
        format!("{}/cryptoKeys/{}", self.ring, target.name)
    }

    /// Sleeps between polls, growing, within the deadline.
    async fn poll<T, F, Fut>(&self, what: &str, mut probe: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, ProviderError>>,
    {
        let started = Instant::now();
        let mut wait = self.polling.first;
        loop {
            if let Some(done) = probe().await? {
                return Ok(done);
            }
            if started.elapsed() + wait > self.polling.deadline {
                return Err(ProviderError::Unavailable(format!(
                    "{what} did not finish within {} s; repeat the request",
                    self.polling.deadline.as_secs()
                )));
            }
            // Waiting for Google's own work counts as Google's time.
            tokio::time::sleep(wait).await;
            api_time(wait);
            wait = (wait * 2).min(self.polling.max);
        }
    }

    /// Every version of a CryptoKey, following `nextPageToken`.
    async fn versions(&self, key: &str) -> Result<Vec<CryptoKeyVersion>, ApiError> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .call(Call::ListVersions, |_| self.api.list_versions(key, &token))
                .await?;
            all.extend(page.crypto_key_versions);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }

    /// Waits until a version's import finished, reading it through the
    /// version list (the permission set has no `cryptoKeyVersions.get`).
    async fn wait_imported(
        &self,
        key: &str,
        name: &str,
    ) -> Result<CryptoKeyVersion, ProviderError> {
        self.poll("the import of a version", || async {
            let versions = self
                .versions(key)
                .await
                .map_err(|e| self.failed(Call::ListVersions, &e))?;
            let Some(version) = versions.into_iter().find(|v| v.name == name) else {
                return Ok(None);
            };
            match version.state {
                CryptoKeyVersionState::PendingImport => Ok(None),
                CryptoKeyVersionState::ImportFailed => Err(ProviderError::Rejected(format!(
                    "Google Cloud KMS could not import {name}: {}",
                    version.import_failure_reason
                ))),
                _ => Ok(Some(version)),
            }
        })
        .await
    }

    /// An import job for `protection`: a kept one while it is active,
    /// else a new one, polled until ACTIVE.
    async fn job(&self, protection: Protection, fresh: bool) -> Result<ActiveJob, ProviderError> {
        let level = protection_level(protection);
        let slot = level.value().unwrap_or_default();
        let mut jobs = self.jobs.lock().await;
        if !fresh
            && let Some(job) = jobs.get(&slot)
            && job
                .usable_until
                .is_none_or(|t| std::time::SystemTime::now() < t)
        {
            return Ok(job.clone());
        }
        let id = format!("{JOB_PREFIX}{}", random_hex(8));
        let request = ImportJob::new()
            .set_import_method(ImportMethod::RsaOaep4096Sha256Aes256)
            .set_protection_level(level);
        // A job that exists after a lost answer is ours: the id is random.
        let name = match self
            .call(Call::CreateImportJob, |_| {
                self.api.create_import_job(&self.ring, &id, &request)
            })
            .await
        {
            Ok(created) => created.name,
            Err(e) if e.class == ErrorClass::AlreadyExists => {
                format!("{}/importJobs/{id}", self.ring)
            }
            Err(e) => return Err(self.failed(Call::CreateImportJob, &e)),
        };
        let active = self
            .poll("the import job's key generation", || async {
                let job = self
                    .call(Call::GetImportJob, |_| self.api.get_import_job(&name))
                    .await
                    .map_err(|e| self.failed(Call::GetImportJob, &e))?;
                match job.state {
                    ImportJobState::Active => Ok(Some(job)),
                    ImportJobState::PendingGeneration => Ok(None),
                    other => Err(ProviderError::Rejected(format!(
                        "the import job {name} is {other:?}, not ACTIVE"
                    ))),
                }
            })
            .await?;
        let public_pem = active
            .public_key
            .as_ref()
            .map(|k| k.pem.clone())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                ProviderError::Rejected(format!("the import job {name} has no public key"))
            })?;
        let usable_until = active.expire_time.as_ref().and_then(|t| {
            let expires = std::time::SystemTime::try_from(*t).ok()?;
            expires.checked_sub(Duration::from_secs(3600))
        });
        let job = ActiveJob {
            name,
            public_pem,
            usable_until,
        };
        jobs.insert(slot, job.clone());
        Ok(job)
    }

    /// The CryptoKey of a distribution: created importOnly, or found
    /// (after a lost answer or a repeat) and checked to be ours.
    async fn ensure_key(&self, target: &Target) -> Result<(), ProviderError> {
        let (purpose, algorithm) = algorithm(target.key_type, &target.purposes);
        let key = CryptoKey::new()
            .set_purpose(purpose)
            .set_version_template(
                CryptoKeyVersionTemplate::new()
                    .set_protection_level(protection_level(target.protection))
                    .set_algorithm(algorithm.clone()),
            )
            .set_import_only(true)
            .set_labels([(LABEL_DISTRIBUTION_ID, target.id.as_str())]);
        match self
            .call(Call::CreateCryptoKey, |_| {
                self.api.create_crypto_key(&self.ring, &target.name, &key)
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.class == ErrorClass::AlreadyExists => {
                let name = self.key_name(target);
                let existing = self
                    .call(Call::GetCryptoKey, |_| self.api.get_crypto_key(&name))
                    .await
                    .map_err(|e| self.failed(Call::GetCryptoKey, &e))?;
                let ours = existing.labels.get(LABEL_DISTRIBUTION_ID) == Some(&target.id)
                    && existing.import_only
                    && existing
                        .version_template
                        .as_ref()
                        .is_some_and(|t| t.algorithm == algorithm);
                if ours {
                    Ok(())
                } else {
                    Err(ProviderError::Rejected(format!(
                        "a CryptoKey {name} exists that is not this distribution's; remove the key from the provider and distribute it again"
                    )))
                }
            }
            Err(e) => Err(self.failed(Call::CreateCryptoKey, &e)),
        }
    }

    /// The version an interrupted attempt imported: one Vault has not
    /// recorded, still alive (never a destroyed or scheduled one: a lost
    /// version is imported again as a new one), and imported through one
    /// of this provider's import jobs, so that a version someone else
    /// imported is never adopted (and enabled) as Vault's.
    async fn unrecorded(
        &self,
        key: &str,
        recorded: &[String],
    ) -> Result<Option<CryptoKeyVersion>, ProviderError> {
        let versions = self
            .versions(key)
            .await
            .map_err(|e| self.failed(Call::ListVersions, &e))?;
        let ours = format!("{}/importJobs/{JOB_PREFIX}", self.ring);
        Ok(versions.into_iter().find(|v| {
            !recorded.iter().any(|r| r == last_segment(&v.name))
                && (v.import_job.is_empty() || v.import_job.starts_with(&ours))
                && matches!(
                    v.state,
                    CryptoKeyVersionState::Enabled
                        | CryptoKeyVersionState::Disabled
                        | CryptoKeyVersionState::PendingImport
                )
        }))
    }

    /// Imports one version's material and waits until it is in.
    async fn import_now(
        &self,
        target: &Target,
        material: &KeyMaterial,
        recorded: &[String],
        touched: &AtomicBool,
    ) -> Result<CryptoKeyVersion, ProviderError> {
        let key = self.key_name(target);
        let (_, algorithm) = algorithm(target.key_type, &target.purposes);
        let mut fresh_job = false;
        for _ in 0..2 {
            let job = self.job(target.protection, fresh_job).await?;
            let wrap_started = Instant::now();
            let wrapped = wrap_material(&job.public_pem, material)?;
            wrap_time(wrap_started.elapsed());
            let request = ImportCryptoKeyVersionRequest::new()
                .set_parent(key.clone())
                .set_algorithm(algorithm.clone())
                .set_import_job(job.name.clone())
                .set_wrapped_key(wrapped);
            let maybe_imported = AtomicBool::new(false);
            let result = self
                .call(Call::Import, |_| {
                    let (maybe_imported, request, key) = (&maybe_imported, &request, &key);
                    async move {
                        if maybe_imported.load(Ordering::SeqCst)
                            && let Ok(Some(version)) = self.unrecorded(key, recorded).await
                        {
                            return Ok(version);
                        }
                        let result = self.api.import_version(request).await;
                        if result.is_ok() || result.as_ref().is_err_and(|e| e.class.ambiguous()) {
                            touched.store(true, Ordering::SeqCst);
                        }
                        if result.as_ref().is_err_and(|e| e.class.ambiguous()) {
                            maybe_imported.store(true, Ordering::SeqCst);
                        }
                        result
                    }
                })
                .await;
            match result {
                Ok(version) => return self.wait_imported(&key, &version.name).await,
                // The job expired (or was never usable here): a new one.
                Err(e) if e.class == ErrorClass::InvalidState && !fresh_job => fresh_job = true,
                Err(e) => return Err(self.failed(Call::Import, &e)),
            }
        }
        Err(ProviderError::Rejected(
            "Cloud KMS refused the import with a fresh import job too".into(),
        ))
    }

    /// What a version shows of its material: the public key of enabled
    /// asymmetric versions, nothing of symmetric ones.
    async fn live_material(
        &self,
        symmetric: bool,
        version: &CryptoKeyVersion,
    ) -> Result<LiveMaterial, ProviderError> {
        use CryptoKeyVersionState as S;
        if matches!(
            version.state,
            S::Destroyed | S::ImportFailed | S::GenerationFailed
        ) {
            return Ok(LiveMaterial::Absent);
        }
        if symmetric {
            return Ok(LiveMaterial::Unverifiable(
                "Cloud KMS does not expose the material of a symmetric version, nor a check value of it"
                    .into(),
            ));
        }
        let unreadable = || {
            LiveMaterial::Unverifiable(format!(
                "Cloud KMS shows the public key of enabled versions only, and this one is {}",
                state_name(&version.state)
            ))
        };
        if version.state != S::Enabled {
            return Ok(unreadable());
        }
        let name = version.name.as_str();
        match self
            .call(Call::GetPublicKey, |_| self.api.get_public_key(name))
            .await
        {
            Ok(public) if !public.name.is_empty() && public.name != name => {
                Err(ProviderError::Unavailable(format!(
                    "Google Cloud KMS answered the public key of {} for {name}",
                    public.name
                )))
            }
            Ok(public) => spki_der_from_pem(&public.pem)
                .map(LiveMaterial::PublicKey)
                .map_err(|e| {
                    ProviderError::Unavailable(format!(
                        "Google Cloud KMS returned an unreadable public key for {name}: {e}"
                    ))
                }),
            // Disabled (or destroyed) since it was listed.
            Err(e) if e.class == ErrorClass::InvalidState => Ok(unreadable()),
            Err(e) => Err(self.failed(Call::GetPublicKey, &e)),
        }
    }

    async fn set_state(&self, name: &str, enabled: bool) -> Result<(), ProviderError> {
        let state = if enabled {
            CryptoKeyVersionState::Enabled
        } else {
            CryptoKeyVersionState::Disabled
        };
        self.call(Call::UpdateVersion, |_| {
            self.api.set_version_state(name, state.clone())
        })
        .await
        .map(|_| ())
        .map_err(|e| self.failed(Call::UpdateVersion, &e))
    }
}

/// Destroyed, or on its way to be: such a version counts as lost.
fn doomed(state: &CryptoKeyVersionState) -> bool {
    use CryptoKeyVersionState as S;
    matches!(
        state,
        S::DestroyScheduled
            | S::Destroyed
            | S::PendingExternalDestruction
            | S::ExternalDestructionFailed
    )
}

/// A version state as Google spells it (`DESTROY_SCHEDULED`).
fn state_name(state: &CryptoKeyVersionState) -> String {
    state.name().map_or_else(
        || format!("STATE_{}", state.value().unwrap_or_default()),
        str::to_owned,
    )
}

/// The DER SubjectPublicKeyInfo inside a PEM `PUBLIC KEY`, as
/// `getPublicKey` returns it: checked to be one RSA or EC SPKI, in DER
/// (so its SHA-256 is Vault's fingerprint of the same key).
pub fn spki_der_from_pem(pem: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use rsa::pkcs8::der::{Decode, Encode};
    use rsa::pkcs8::spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    const EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    let start = pem.find(BEGIN).ok_or("no PEM PUBLIC KEY block")? + BEGIN.len();
    let len = pem[start..].find(END).ok_or("no PEM PUBLIC KEY end")?;
    let body: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("the PEM body is not base64: {e}"))?;
    let spki = SubjectPublicKeyInfoRef::from_der(&der)
        .map_err(|e| format!("not a DER SubjectPublicKeyInfo: {e}"))?;
    if spki.algorithm.oid != RSA && spki.algorithm.oid != EC {
        return Err(format!("a public key of algorithm {}", spki.algorithm.oid));
    }
    let canonical = spki
        .to_der()
        .map_err(|e| format!("re-encoding the SubjectPublicKeyInfo: {e}"))?;
    if canonical != der {
        return Err("the SubjectPublicKeyInfo is not in DER".into());
    }
    Ok(canonical)
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// One import run: the CryptoKey is ensured once, and the provider's
/// import job is the run's (created on first use).
struct GcpImport<'a> {
    provider: &'a GcpKms,
    target: &'a Target,
    key_ready: Mutex<bool>,
    touched: AtomicBool,
}

#[async_trait::async_trait]
impl ImportSession for GcpImport<'_> {
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
        if !request.enabled {
            return Ok(NOT_IMPORTED.to_owned());
        }
        {
            let mut ready = self.key_ready.lock().await;
            if !*ready {
                let ensured = provider.ensure_key(target).await;
                if !matches!(
                    ensured,
                    Err(ProviderError::Permission(_) | ProviderError::Rejected(_))
                ) {
                    self.touched.store(true, Ordering::SeqCst);
                }
                ensured?;
                *ready = true;
            }
        }
        let key = provider.key_name(target);
        if request.resume
            && let Some(found) = provider.unrecorded(&key, request.recorded).await?
        {
            let version = provider.wait_imported(&key, &found.name).await?;
            if version.state == CryptoKeyVersionState::Disabled {
                provider.set_state(&version.name, true).await?;
            }
            log::info!(
                "cloud kms: reusing {} for version {}, imported by an earlier attempt",
                version.name,
                request.version
            );
            return Ok(last_segment(&version.name).to_owned());
        }
        let started = Instant::now();
        let (version, times) = timing::timed(provider.import_now(
            target,
            request.material,
            request.recorded,
            &self.touched,
        ))
        .await;
        let version = version?;
        log::info!(
            key = target.name.as_str(),
            version = request.version,
            cloud_kms_version = version.name.as_str(),
            api_us = times.api.as_micros(),
            wrap_us = times.wrap.as_micros(),
            total_us = started.elapsed().as_micros();
            "cloud kms: imported version {} of {}",
            request.version,
            target.name
        );
        Ok(last_segment(&version.name).to_owned())
    }

    fn touched(&self) -> bool {
        self.touched.load(Ordering::SeqCst)
    }

    async fn finish(self: Box<Self>) {}
}

#[async_trait::async_trait]
impl KmsProvider for GcpKms {
    fn begin_import<'a>(&'a self, target: &'a Target) -> Box<dyn ImportSession + 'a> {
        Box::new(GcpImport {
            provider: self,
            target,
            key_ready: Mutex::new(false),
            touched: AtomicBool::new(false),
        })
    }

    /// Symmetric keys encrypt with their primary version: the latest.
    async fn make_current(
        &self,
        target: &Target,
        latest: &VersionState<'_>,
    ) -> Result<(), ProviderError> {
        let (purpose, _) = algorithm(target.key_type, &target.purposes);
        if purpose != CryptoKeyPurpose::EncryptDecrypt || latest.provider_id == NOT_IMPORTED {
            return Ok(());
        }
        let key = self.key_name(target);
        self.call(Call::UpdatePrimary, |_| {
            self.api.update_primary_version(&key, latest.provider_id)
        })
        .await
        .map(|_| ())
        .map_err(|e| self.failed(Call::UpdatePrimary, &e))
    }

    async fn set_enabled(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Vec<NewId>, ProviderError> {
        let key = self.key_name(target);
        let mut new_ids = Vec::new();
        let mut recorded: Vec<String> = versions
            .iter()
            .filter(|v| v.provider_id != NOT_IMPORTED)
            .map(|v| v.provider_id.to_owned())
            .collect();
        for state in versions {
            if state.provider_id == NOT_IMPORTED {
                if state.enabled {
                    // Imported only now that it may be used.
                    let session = self.begin_import(target);
                    let id = session
                        .import(ImportRequest {
                            version: state.version,
                            material: state.material,
                            enabled: true,
                            resume: true,
                            recorded: &recorded,
                        })
                        .await;
                    session.finish().await;
                    let id = id?;
                    recorded.push(id.clone());
                    new_ids.push(NewId {
                        version: state.version,
                        provider_id: id,
                    });
                }
                continue;
            }
            self.set_state(
                &format!("{key}/cryptoKeyVersions/{}", state.provider_id),
                state.enabled,
            )
            .await?;
        }
        Ok(new_ids)
    }

    /// Every version of the CryptoKey, with its state and, for enabled
    /// asymmetric versions, its public key; the primary version of a
    /// symmetric key. Versions carry no labels: a version's Vault number
    /// comes from Vault's record alone. A CryptoKey cannot be deleted, so
    /// one whose versions are all destroyed or scheduled for destruction
    /// counts as deleted, as does one that is not there (another ring).
    async fn inspect(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Option<LiveKey>, ProviderError> {
        let name = self.key_name(target);
        let key = match self
            .call(Call::GetCryptoKey, |_| self.api.get_crypto_key(&name))
            .await
        {
            Ok(key) => key,
            Err(e) if e.class == ErrorClass::NotFound => return Ok(None),
            Err(e) => return Err(self.failed(Call::GetCryptoKey, &e)),
        };
        let listed = match self.versions(&name).await {
            Ok(listed) => listed,
            Err(e) if e.class == ErrorClass::NotFound => return Ok(None),
            Err(e) => return Err(self.failed(Call::ListVersions, &e)),
        };
        if !listed.is_empty() && listed.iter().all(|v| doomed(&v.state)) {
            return Ok(None);
        }
        let symmetric = key.purpose == CryptoKeyPurpose::EncryptDecrypt;
        let materials = futures_util::future::try_join_all(
            listed.iter().map(|v| self.live_material(symmetric, v)),
        )
        .await?;
        let mut live: Vec<LiveVersion> = listed
            .iter()
            .zip(materials)
            .map(|(version, material)| {
                let id = last_segment(&version.name);
                LiveVersion {
                    provider_id: id.to_owned(),
                    vault_version: versions
                        .iter()
                        .find(|v| v.provider_id == id)
                        .map(|v| v.version),
                    enabled: version.state == CryptoKeyVersionState::Enabled,
                    doomed: doomed(&version.state),
                    state: state_name(&version.state),
                    material,
                }
            })
            .collect();
        // Versions kept out of Google while disabled are where they should
        // be: not usable, holding nothing.
        live.extend(
            versions
                .iter()
                .filter(|v| v.provider_id == NOT_IMPORTED)
                .map(|v| LiveVersion {
                    provider_id: NOT_IMPORTED.to_owned(),
                    vault_version: Some(v.version),
                    enabled: false,
                    doomed: false,
                    state: "NOT_IMPORTED".to_owned(),
                    material: LiveMaterial::Absent,
                }),
        );
        let current = key
            .primary
            .as_ref()
            .map(|p| last_segment(&p.name).to_owned())
            .filter(|id| symmetric && !id.is_empty());
        Ok(Some(LiveKey {
            versions: live,
            has_current: symmetric,
            can_make_current: symmetric,
            current,
        }))
    }

    /// Disables the versions (`PATCH ...?updateMask=state`); never
    /// destroys them.
    async fn disable_foreign(
        &self,
        target: &Target,
        provider_ids: &[String],
    ) -> Result<(), ProviderError> {
        let key = self.key_name(target);
        for id in provider_ids.iter().filter(|id| id.as_str() != NOT_IMPORTED) {
            let name = format!("{key}/cryptoKeyVersions/{id}");
            match self
                .call(Call::UpdateVersion, |_| {
                    self.api
                        .set_version_state(&name, CryptoKeyVersionState::Disabled)
                })
                .await
            {
                Ok(_) => {}
                Err(e) if e.class == ErrorClass::NotFound => {}
                Err(e) => return Err(self.failed(Call::UpdateVersion, &e)),
            }
        }
        Ok(())
    }

    /// Destroys every version of the CryptoKey, recorded or not.
    async fn remove(
        &self,
        target: &Target,
        _versions: &[VersionState<'_>],
        _unrecorded: &[u32],
    ) -> Result<(), ProviderError> {
        let key = self.key_name(target);
        let versions = match self.versions(&key).await {
            Ok(versions) => versions,
            Err(e) if e.class == ErrorClass::NotFound => return Ok(()),
            Err(e) => return Err(self.failed(Call::ListVersions, &e)),
        };
        for version in versions {
            if matches!(
                version.state,
                CryptoKeyVersionState::Destroyed | CryptoKeyVersionState::DestroyScheduled
            ) {
                continue;
            }
            match self
                .call(Call::DestroyVersion, |_| {
                    self.api.destroy_version(&version.name)
                })
                .await
            {
                Ok(_) => {}
                // Already destroyed or scheduled (a repeat after a lost answer).
                Err(e) if matches!(e.class, ErrorClass::NotFound | ErrorClass::InvalidState) => {}
                Err(e) => return Err(self.failed(Call::DestroyVersion, &e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        for protection in [Protection::Hsm, Protection::Software] {
            let double = fake::GcpDouble::new(protection);
            super::super::conformance::run(&double, protection.as_str()).await;
        }
    }

    #[tokio::test]
    async fn passes_the_drift_contract() {
        for protection in [Protection::Hsm, Protection::Software] {
            let double = fake::GcpDouble::new(protection);
            super::super::conformance::run_drift(&double, protection.as_str()).await;
        }
    }

    /// A resumed import adopts only a version of its own import jobs,
    /// never a destroyed one nor one someone else imported (which it would
    /// enable); versions kept out of Google read as disabled and absent.
    #[tokio::test]
    async fn recovery_never_adopts_foreign_or_destroyed_versions() {
        use crate::engine::provider::conformance::{Double, Tamper};
        let double = fake::GcpDouble::new(Protection::Hsm);
        let provider = double.provider();
        let target = double.target("adopt-1700000001");
        let m: Vec<KeyMaterial> = (0..3)
            .map(|_| KeyMaterial::generate(target.key_type).unwrap())
            .collect();
        let import = |v: u32, enabled: bool, resume: bool, recorded: Vec<String>| {
            let (provider, target, m) = (&provider, &target, &m);
            async move {
                let session = provider.begin_import(target);
                let id = session
                    .import(ImportRequest {
                        version: v,
                        material: &m[v as usize - 1],
                        enabled,
                        resume,
                        recorded: &recorded,
                    })
                    .await;
                session.finish().await;
                id.unwrap()
            }
        };
        let one = import(1, false, false, vec![]).await;
        assert_eq!(one, NOT_IMPORTED);
        let two = import(2, true, false, vec![]).await;
        fn states<'a>(
            ids: &'a [(u32, String)],
            m: &'a [KeyMaterial],
            enabled_from: u32,
        ) -> Vec<VersionState<'a>> {
            ids.iter()
                .map(|(v, id)| VersionState {
                    version: *v,
                    provider_id: id,
                    enabled: *v >= enabled_from,
                    material: &m[*v as usize - 1],
                })
                .collect()
        }
        let recorded = vec![(1, one.clone()), (2, two.clone())];
        let live = provider
            .inspect(&target, &states(&recorded, &m, 2))
            .await
            .unwrap()
            .unwrap();
        let kept_out = live
            .versions
            .iter()
            .find(|l| l.vault_version == Some(1))
            .unwrap();
        assert_eq!(kept_out.provider_id, NOT_IMPORTED);
        assert!(!kept_out.enabled && !kept_out.doomed);
        assert_eq!(kept_out.material, LiveMaterial::Absent);

        // Someone imports a version and it is disabled (disable_foreign):
        // enabling version 1 imports it anew instead of adopting that one.
        let foreign = double.add_foreign(&target, &m[2]);
        provider
            .disable_foreign(&target, std::slice::from_ref(&foreign))
            .await
            .unwrap();
        let new_ids = provider
            .set_enabled(&target, &states(&recorded, &m, 1))
            .await
            .unwrap();
        assert_eq!(new_ids.len(), 1);
        assert_ne!(new_ids[0].provider_id, foreign);
        let key = format!("{}/cryptoKeys/{}", fake::RING, target.name);
        let held = double.fake.versions(&key);
        let by_id = |id: &str| held.iter().find(|v| v.id == id).unwrap().clone();
        assert_eq!(by_id(&foreign).state, CryptoKeyVersionState::Disabled);
        assert_eq!(
            by_id(&new_ids[0].provider_id).material.as_deref(),
            Some(m[0].as_bytes())
        );

        // Version 2 destroyed outside Vault: its repeat makes a new version.
        double.doom_outside(&target, &two);
        let again = import(2, true, true, vec![new_ids[0].provider_id.clone()]).await;
        assert_ne!(again, two);
        assert_ne!(again, foreign);
        assert_eq!(
            double.fake.versions(&key).len(),
            4,
            "a new version, not a reused one"
        );
    }

    #[test]
    fn public_keys_are_read_as_der_spki() {
        for t in [KeyType::Rsa2048, KeyType::EcdsaP384] {
            let m = crate::engine::material::test_support::sample(t);
            let pem = m.public_key_pem().unwrap();
            assert_eq!(
                spki_der_from_pem(&pem).unwrap(),
                m.public_key_der().unwrap()
            );
            let crlf = pem.replace('\n', "\r\n");
            assert_eq!(
                spki_der_from_pem(&crlf).unwrap(),
                m.public_key_der().unwrap()
            );
        }
        assert!(spki_der_from_pem("nothing").is_err());
        assert!(
            spki_der_from_pem("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----").is_err()
        );
        let not_spki = "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n";
        assert!(spki_der_from_pem(not_spki).is_err());
    }

    #[test]
    fn purposes_and_algorithms() {
        use Purpose::*;
        let check = |t, p: &[Purpose]| DESCRIPTOR.check_support(t, p, Protection::Hsm);
        assert!(check(KeyType::Aes256Gcm96, &[Decrypt, Encrypt]).is_ok());
        assert!(check(KeyType::Aes256Gcm96, &[Encrypt]).is_err());
        assert!(check(KeyType::Rsa2048, &[Decrypt]).is_ok());
        assert!(check(KeyType::Rsa3072, &[Sign]).is_ok());
        let err = check(KeyType::Rsa4096, &[Decrypt, Sign]).unwrap_err();
        assert!(err.contains("not both"), "{err}");
        assert!(check(KeyType::EcdsaP384, &[Sign]).is_ok());
        let err = check(KeyType::EcdsaP521, &[Sign]).unwrap_err();
        assert!(
            err.contains("not supported by the gcpckms provider"),
            "{err}"
        );
        assert!(check(KeyType::EcdsaP256, &[Verify]).is_err());
        assert_eq!(
            algorithm(KeyType::Rsa3072, &[Sign]),
            (
                CryptoKeyPurpose::AsymmetricSign,
                CryptoKeyVersionAlgorithm::RsaSignPkcs13072Sha256
            )
        );
        assert_eq!(
            algorithm(KeyType::Rsa2048, &[Decrypt]),
            (
                CryptoKeyPurpose::AsymmetricDecrypt,
                CryptoKeyVersionAlgorithm::RsaDecryptOaep2048Sha256
            )
        );
        assert!(check_key_name("a.b").is_err());
        assert!(check_key_name(&"k".repeat(60)).is_err());
        assert!(check_key_name("example-key").is_ok());
    }
}
