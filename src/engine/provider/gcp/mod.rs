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
    ImportRequest, ImportSession, KmsProvider, NewId, Protection, ProviderConfig, ProviderError,
    Purpose, Target, VersionState,
};
use crate::engine::key_type::KeyType;
use crate::engine::material::KeyMaterial;
use crate::engine::wrap::{OaepHash, rsa_aes_key_wrap, rsa_public_from_spki_pem};
use crate::framework::error::quote;
use client::{CloudKmsApi, RestKms};
use config::Settings;

/// The recorded id of a version not imported while it is disabled.
pub const NOT_IMPORTED: &str = "not-imported";

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
        let id = format!("keymgmt-{}", random_hex(8));
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
    /// recorded.
    async fn unrecorded(
        &self,
        key: &str,
        recorded: &[String],
    ) -> Result<Option<CryptoKeyVersion>, ProviderError> {
        let versions = self
            .versions(key)
            .await
            .map_err(|e| self.failed(Call::ListVersions, &e))?;
        Ok(versions.into_iter().find(|v| {
            !recorded.iter().any(|r| r == last_segment(&v.name))
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
