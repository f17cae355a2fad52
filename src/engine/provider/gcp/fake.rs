//! An in-memory Cloud KMS for the unit tests: the [`CloudKmsApi`] calls
//! with Cloud KMS's states (import jobs that start in
//! `PENDING_GENERATION`, versions that start in `PENDING_IMPORT`), wrapped
//! keys really unwrapped and checked against the CryptoKey's algorithm,
//! paged version lists, and faults injected per call. The black-box tests
//! use the HTTPS fake in `plugin-tests/`, checked against Google's
//! discovery document.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use aes_kw::KekAes256;
use google_cloud_kms_v1::model::crypto_key::CryptoKeyPurpose;
use google_cloud_kms_v1::model::crypto_key_version::{
    CryptoKeyVersionAlgorithm as Algorithm, CryptoKeyVersionState as State,
};
use google_cloud_kms_v1::model::import_job::{ImportJobState, WrappingPublicKey};
use google_cloud_kms_v1::model::{
    CryptoKey, CryptoKeyVersion, ImportCryptoKeyVersionRequest, ImportJob,
    ListCryptoKeyVersionsResponse, PublicKey,
};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{Oaep, RsaPrivateKey};
use zeroize::Zeroizing;

use super::Call;
use super::client::CloudKmsApi;
use crate::engine::key_type::KeyType;
use crate::engine::material::KeyMaterial;
use crate::engine::material::test_support::sample;
use crate::engine::provider::client::{ApiError, ErrorClass};

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 `UNAVAILABLE` before doing anything.
    Unavailable,
    /// The call takes effect, then the connection drops.
    Lost,
    /// 403 `PERMISSION_DENIED`.
    Denied,
}

#[derive(Debug, Clone)]
pub struct FakeVersion {
    pub id: String,
    pub state: State,
    pub algorithm: Algorithm,
    /// The unwrapped material (canonical form).
    pub material: Option<Vec<u8>>,
    /// The import job that brought the material in.
    pub import_job: String,
    /// Lists seen while PENDING_IMPORT: the first list shows it pending.
    polls: u32,
}

struct FakeKey {
    key: CryptoKey,
    versions: Vec<FakeVersion>,
    primary: Option<String>,
}

#[derive(Default)]
struct Inner {
    keys: BTreeMap<String, FakeKey>,
    /// Import jobs: state and how often they were read.
    jobs: HashMap<String, (ImportJob, u32)>,
    faults: VecDeque<(Call, Fault)>,
}

#[derive(Default)]
pub struct FakeCloudKms {
    inner: Mutex<Inner>,
}

/// Versions per page: small, so that paging is always exercised.
const PAGE: usize = 2;

fn err(class: ErrorClass, status: &str, message: &str) -> ApiError {
    ApiError::new(class, status, message)
}

fn not_found(name: &str) -> ApiError {
    err(
        ErrorClass::NotFound,
        "NOT_FOUND",
        &format!("{name} not found"),
    )
}

/// The import job wrapping key: a fixed sample, because generating RSA-4096
/// per test is slow and the size does not matter here.
fn job_key() -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_der(sample(KeyType::Rsa2048).as_bytes()).expect("sample RSA key")
}

fn key_type_of(algorithm: &Algorithm) -> Option<KeyType> {
    Some(match algorithm {
        Algorithm::GoogleSymmetricEncryption => KeyType::Aes256Gcm96,
        Algorithm::RsaDecryptOaep2048Sha256 | Algorithm::RsaSignPkcs12048Sha256 => KeyType::Rsa2048,
        Algorithm::RsaDecryptOaep3072Sha256 | Algorithm::RsaSignPkcs13072Sha256 => KeyType::Rsa3072,
        Algorithm::RsaDecryptOaep4096Sha256 | Algorithm::RsaSignPkcs14096Sha256 => KeyType::Rsa4096,
        Algorithm::EcSignP256Sha256 => KeyType::EcdsaP256,
        Algorithm::EcSignP384Sha384 => KeyType::EcdsaP384,
        _ => return None,
    })
}

impl FakeCloudKms {
    pub fn inject(&self, call: Call, fault: Fault, times: u32) {
        let mut inner = self.inner.lock().unwrap();
        for _ in 0..times {
            inner.faults.push_back((call, fault));
        }
    }

    pub fn clear_faults(&self) {
        self.inner.lock().unwrap().faults.clear();
    }

    pub fn versions(&self, key: &str) -> Vec<FakeVersion> {
        self.inner
            .lock()
            .unwrap()
            .keys
            .get(key)
            .map(|k| k.versions.clone())
            .unwrap_or_default()
    }

    pub fn primary(&self, key: &str) -> Option<String> {
        self.inner.lock().unwrap().keys.get(key)?.primary.clone()
    }

    /// Changes a version's state directly, as someone in the console would.
    pub fn set_state_outside(&self, key: &str, id: &str, state: State) {
        if let Some(v) = self
            .inner
            .lock()
            .unwrap()
            .keys
            .get_mut(key)
            .and_then(|k| k.versions.iter_mut().find(|v| v.id == id))
        {
            v.state = state;
        }
    }

    /// Imports `material` as a new enabled version through an import job
    /// of someone else's, and makes it primary where the key has one, as
    /// an operator with the console would. Returns its id.
    pub fn add_foreign(&self, key: &str, material: &KeyMaterial) -> String {
        let mut inner = self.inner.lock().unwrap();
        let k = inner.keys.get_mut(key).expect("the key exists");
        let id = (k.versions.len() + 1).to_string();
        let algorithm = k.key.version_template.clone().unwrap_or_default().algorithm;
        k.versions.push(FakeVersion {
            id: id.clone(),
            state: State::Enabled,
            algorithm,
            material: Some(material.as_bytes().to_vec()),
            import_job: format!("{RING}/importJobs/operator-job"),
            polls: 0,
        });
        if k.key.purpose == CryptoKeyPurpose::EncryptDecrypt {
            k.primary = Some(id.clone());
        }
        id
    }

    /// Destroys every version, as someone in the console would.
    pub fn destroy_outside(&self, key: &str) {
        if let Some(k) = self.inner.lock().unwrap().keys.get_mut(key) {
            k.versions
                .iter_mut()
                .for_each(|v| v.state = State::DestroyScheduled);
        }
    }

    fn begin(&self, call: Call) -> Result<bool, ApiError> {
        let mut inner = self.inner.lock().unwrap();
        let Some(pos) = inner.faults.iter().position(|(c, _)| *c == call) else {
            return Ok(false);
        };
        let (_, fault) = inner.faults.remove(pos).expect("position is valid");
        match fault {
            Fault::Unavailable => Err(err(ErrorClass::Unavailable, "UNAVAILABLE", "injected")),
            Fault::Denied => Err(err(
                ErrorClass::AccessDenied,
                "PERMISSION_DENIED",
                &format!("Permission '{}' denied (injected)", call.permissions()),
            )),
            Fault::Lost => Ok(true),
        }
    }

    fn end<T>(lost: bool, result: Result<T, ApiError>) -> Result<T, ApiError> {
        match (lost, result) {
            (true, Ok(_)) => Err(err(
                ErrorClass::Network,
                "connection failed",
                "reset (injected)",
            )),
            (_, result) => result,
        }
    }

    fn version_model(key: &str, v: &FakeVersion) -> CryptoKeyVersion {
        CryptoKeyVersion::new()
            .set_name(format!("{key}/cryptoKeyVersions/{}", v.id))
            .set_state(v.state.clone())
            .set_algorithm(v.algorithm.clone())
            .set_import_job(v.import_job.clone())
    }

    /// The CryptoKey with its primary version, as Google answers it.
    fn key_model(name: &str, key: &FakeKey) -> CryptoKey {
        let primary = key
            .primary
            .as_ref()
            .and_then(|id| key.versions.iter().find(|v| &v.id == id))
            .map(|v| Self::version_model(name, v));
        key.key.clone().set_or_clear_primary(primary)
    }

    fn unwrap(wrapped: &[u8], key_type: KeyType) -> Result<Vec<u8>, String> {
        let private = job_key();
        let split = rsa::traits::PublicKeyParts::size(&private);
        if wrapped.len() <= split {
            return Err("wrapped key too short".into());
        }
        let ephemeral = Zeroizing::new(
            private
                .decrypt(Oaep::new::<sha2::Sha256>(), &wrapped[..split])
                .map_err(|_| "RSA-OAEP-SHA256 unwrap failed")?,
        );
        let kek: [u8; 32] = ephemeral.as_slice().try_into().map_err(|_| "not AES-256")?;
        let plain = Zeroizing::new(
            KekAes256::from(kek)
                .unwrap_with_padding_vec(&wrapped[split..])
                .map_err(|_| "AES-KWP unwrap failed")?,
        );
        let material = KeyMaterial::from_bytes(key_type, plain)
            .map_err(|_| "the key material does not match the algorithm")?;
        Ok(material.as_bytes().to_vec())
    }
}

#[async_trait::async_trait]
impl CloudKmsApi for FakeCloudKms {
    async fn create_crypto_key(
        &self,
        parent: &str,
        id: &str,
        key: &CryptoKey,
    ) -> Result<CryptoKey, ApiError> {
        let lost = self.begin(Call::CreateCryptoKey)?;
        let result = {
            let mut inner = self.inner.lock().unwrap();
            let name = format!("{parent}/cryptoKeys/{id}");
            match inner.keys.entry(name.clone()) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    Err(err(ErrorClass::AlreadyExists, "ALREADY_EXISTS", "exists"))
                }
                std::collections::btree_map::Entry::Vacant(_) if !key.import_only => Err(err(
                    ErrorClass::Invalid,
                    "INVALID_ARGUMENT",
                    "keymgmt keys are importOnly",
                )),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    let stored = key.clone().set_name(name);
                    slot.insert(FakeKey {
                        key: stored.clone(),
                        versions: Vec::new(),
                        primary: None,
                    });
                    Ok(stored)
                }
            }
        };
        Self::end(lost, result)
    }

    async fn get_crypto_key(&self, name: &str) -> Result<CryptoKey, ApiError> {
        let lost = self.begin(Call::GetCryptoKey)?;
        let result = self
            .inner
            .lock()
            .unwrap()
            .keys
            .get(name)
            .map(|k| Self::key_model(name, k))
            .ok_or_else(|| not_found(name));
        Self::end(lost, result)
    }

    async fn create_import_job(
        &self,
        parent: &str,
        id: &str,
        job: &ImportJob,
    ) -> Result<ImportJob, ApiError> {
        let lost = self.begin(Call::CreateImportJob)?;
        let name = format!("{parent}/importJobs/{id}");
        let stored = job
            .clone()
            .set_name(name.clone())
            .set_state(ImportJobState::PendingGeneration);
        let result = {
            let mut inner = self.inner.lock().unwrap();
            match inner.jobs.entry(name) {
                std::collections::hash_map::Entry::Occupied(_) => Err(err(
                    ErrorClass::AlreadyExists,
                    "ALREADY_EXISTS",
                    "the import job exists",
                )),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert((stored.clone(), 0));
                    Ok(stored)
                }
            }
        };
        Self::end(lost, result)
    }

    async fn get_import_job(&self, name: &str) -> Result<ImportJob, ApiError> {
        let lost = self.begin(Call::GetImportJob)?;
        let result = {
            let mut inner = self.inner.lock().unwrap();
            match inner.jobs.get_mut(name) {
                None => Err(not_found(name)),
                Some((job, reads)) => {
                    // ACTIVE from the second read on: the provider must poll.
                    *reads += 1;
                    if *reads >= 2 && job.state == ImportJobState::PendingGeneration {
                        let pem = job_key()
                            .to_public_key()
                            .to_public_key_pem(LineEnding::LF)
                            .expect("PEM");
                        *job = job
                            .clone()
                            .set_state(ImportJobState::Active)
                            .set_public_key(WrappingPublicKey::new().set_pem(pem));
                    }
                    Ok(job.clone())
                }
            }
        };
        Self::end(lost, result)
    }

    async fn import_version(
        &self,
        request: &ImportCryptoKeyVersionRequest,
    ) -> Result<CryptoKeyVersion, ApiError> {
        let lost = self.begin(Call::Import)?;
        let result = {
            let mut inner = self.inner.lock().unwrap();
            let job_active = inner
                .jobs
                .get(&request.import_job)
                .is_some_and(|(j, _)| j.state == ImportJobState::Active);
            match inner.keys.get_mut(&request.parent) {
                None => Err(not_found(&request.parent)),
                Some(_) if !job_active => Err(err(
                    ErrorClass::InvalidState,
                    "FAILED_PRECONDITION",
                    "the import job is not ACTIVE",
                )),
                Some(key) => {
                    let template = key.key.version_template.clone().unwrap_or_default();
                    if template.algorithm != request.algorithm {
                        Err(err(
                            ErrorClass::Invalid,
                            "INVALID_ARGUMENT",
                            "algorithm differs from the template",
                        ))
                    } else {
                        let key_type = key_type_of(&request.algorithm);
                        let material =
                            key_type.and_then(|t| Self::unwrap(&request.wrapped_key, t).ok());
                        let id = (key.versions.len() + 1).to_string();
                        let version = FakeVersion {
                            id,
                            state: if material.is_some() {
                                State::PendingImport
                            } else {
                                State::ImportFailed
                            },
                            algorithm: request.algorithm.clone(),
                            material,
                            import_job: request.import_job.clone(),
                            polls: 0,
                        };
                        let model = Self::version_model(&request.parent, &version);
                        key.versions.push(version);
                        Ok(model)
                    }
                }
            }
        };
        Self::end(lost, result)
    }

    async fn list_versions(
        &self,
        parent: &str,
        page_token: &str,
    ) -> Result<ListCryptoKeyVersionsResponse, ApiError> {
        let lost = self.begin(Call::ListVersions)?;
        let result = {
            let mut inner = self.inner.lock().unwrap();
            match inner.keys.get_mut(parent) {
                None => Err(not_found(parent)),
                Some(key) => {
                    for v in &mut key.versions {
                        if v.state == State::PendingImport {
                            v.polls += 1;
                            if v.polls >= 2 {
                                v.state = State::Enabled;
                            }
                        }
                    }
                    let start: usize = page_token.parse().unwrap_or(0);
                    let end = (start + PAGE).min(key.versions.len());
                    let page = key.versions[start.min(end)..end]
                        .iter()
                        .map(|v| Self::version_model(parent, v))
                        .collect::<Vec<_>>();
                    let next = if end < key.versions.len() {
                        end.to_string()
                    } else {
                        String::new()
                    };
                    Ok(ListCryptoKeyVersionsResponse::new()
                        .set_crypto_key_versions(page)
                        .set_next_page_token(next))
                }
            }
        };
        Self::end(lost, result)
    }

    async fn set_version_state(
        &self,
        name: &str,
        state: State,
    ) -> Result<CryptoKeyVersion, ApiError> {
        let lost = self.begin(Call::UpdateVersion)?;
        let result = {
            let mut inner = self.inner.lock().unwrap();
            let (key_name, id) = name
                .rsplit_once("/cryptoKeyVersions/")
                .unwrap_or((name, ""));
            match inner
                .keys
                .get_mut(key_name)
                .and_then(|k| k.versions.iter_mut().find(|v| v.id == id))
            {
                None => Err(not_found(name)),
                Some(v) if !matches!(v.state, State::Enabled | State::Disabled) => Err(err(
                    ErrorClass::InvalidState,
                    "FAILED_PRECONDITION",
                    &format!("{name} is {:?}", v.state),
                )),
                Some(_) if !matches!(state, State::Enabled | State::Disabled) => {
                    Err(err(ErrorClass::Invalid, "INVALID_ARGUMENT", "state"))
                }
                Some(v) => {
                    v.state = state;
                    Ok(Self::version_model(key_name, v))
                }
            }
        };
        Self::end(lost, result)
    }

    async fn destroy_version(&self, name: &str) -> Result<CryptoKeyVersion, ApiError> {
        let lost = self.begin(Call::DestroyVersion)?;
        let result = {
            let mut inner = self.inner.lock().unwrap();
            let (key_name, id) = name
                .rsplit_once("/cryptoKeyVersions/")
                .unwrap_or((name, ""));
            match inner
                .keys
                .get_mut(key_name)
                .and_then(|k| k.versions.iter_mut().find(|v| v.id == id))
            {
                None => Err(not_found(name)),
                Some(v) if matches!(v.state, State::DestroyScheduled | State::Destroyed) => {
                    Err(err(
                        ErrorClass::InvalidState,
                        "FAILED_PRECONDITION",
                        "already scheduled for destruction",
                    ))
                }
                Some(v) => {
                    v.state = State::DestroyScheduled;
                    Ok(Self::version_model(key_name, v))
                }
            }
        };
        Self::end(lost, result)
    }

    async fn get_public_key(&self, name: &str) -> Result<PublicKey, ApiError> {
        let lost = self.begin(Call::GetPublicKey)?;
        let result = {
            let inner = self.inner.lock().unwrap();
            let (key_name, id) = name
                .rsplit_once("/cryptoKeyVersions/")
                .unwrap_or((name, ""));
            let key = inner.keys.get(key_name);
            match key.and_then(|k| k.versions.iter().find(|v| v.id == id).map(|v| (k, v))) {
                None => Err(not_found(name)),
                Some((k, _)) if k.key.purpose == CryptoKeyPurpose::EncryptDecrypt => Err(err(
                    ErrorClass::InvalidState,
                    "FAILED_PRECONDITION",
                    "GetPublicKey needs an asymmetric key",
                )),
                Some((_, v)) if v.state != State::Enabled => Err(err(
                    ErrorClass::InvalidState,
                    "FAILED_PRECONDITION",
                    &format!("{name} is not enabled"),
                )),
                Some((_, v)) => {
                    let pem = key_type_of(&v.algorithm)
                        .zip(v.material.clone())
                        .and_then(|(t, m)| KeyMaterial::from_bytes(t, Zeroizing::new(m)).ok())
                        .and_then(|m| m.public_key_pem())
                        .unwrap_or_default();
                    Ok(PublicKey::new()
                        .set_name(name)
                        .set_algorithm(v.algorithm.clone())
                        .set_pem(pem))
                }
            }
        };
        Self::end(lost, result)
    }

    async fn update_primary_version(
        &self,
        name: &str,
        version_id: &str,
    ) -> Result<CryptoKey, ApiError> {
        let lost = self.begin(Call::UpdatePrimary)?;
        let result = {
            let mut inner = self.inner.lock().unwrap();
            match inner.keys.get_mut(name) {
                None => Err(not_found(name)),
                Some(key) if key.key.purpose != CryptoKeyPurpose::EncryptDecrypt => Err(err(
                    ErrorClass::InvalidState,
                    "FAILED_PRECONDITION",
                    "not ENCRYPT_DECRYPT",
                )),
                Some(key)
                    if !key
                        .versions
                        .iter()
                        .any(|v| v.id == version_id && v.state == State::Enabled) =>
                {
                    Err(err(
                        ErrorClass::InvalidState,
                        "FAILED_PRECONDITION",
                        "the version is not ENABLED",
                    ))
                }
                Some(key) => {
                    key.primary = Some(version_id.to_owned());
                    Ok(Self::key_model(name, key))
                }
            }
        };
        Self::end(lost, result)
    }
}

/// The ring the doubles' providers use.
pub const RING: &str = "projects/p/locations/global/keyRings/r";

/// The GCP provider over the fake, for the conformance suite. HSM runs use
/// AES keys and software runs EC keys, so both paths are covered.
pub struct GcpDouble {
    pub fake: std::sync::Arc<FakeCloudKms>,
    pub protection: crate::engine::provider::Protection,
}

impl GcpDouble {
    pub fn new(protection: crate::engine::provider::Protection) -> Self {
        Self {
            fake: std::sync::Arc::new(FakeCloudKms::default()),
            protection,
        }
    }

    fn key_name(target: &crate::engine::provider::Target) -> String {
        format!("{RING}/cryptoKeys/{}", target.name)
    }
}

impl crate::engine::provider::conformance::Double for GcpDouble {
    fn provider(&self) -> std::sync::Arc<dyn crate::engine::provider::KmsProvider> {
        let retry = crate::engine::provider::client::retry::RetryPolicy::with_base(
            std::time::Duration::from_millis(1),
        );
        let polling = super::Polling {
            first: std::time::Duration::from_millis(1),
            max: std::time::Duration::from_millis(5),
            deadline: std::time::Duration::from_secs(5),
        };
        std::sync::Arc::new(super::GcpKms::new(
            self.fake.clone(),
            RING.into(),
            retry,
            polling,
        ))
    }

    fn target(&self, name: &str) -> crate::engine::provider::Target {
        use crate::engine::provider::{Protection, Purpose, Target};
        match self.protection {
            Protection::Hsm => Target::for_test(
                name,
                KeyType::Aes256Gcm96,
                &[Purpose::Decrypt, Purpose::Encrypt],
                Protection::Hsm,
            ),
            Protection::Software => Target::for_test(
                name,
                KeyType::EcdsaP256,
                &[Purpose::Sign],
                Protection::Software,
            ),
        }
    }

    fn import_sites(&self) -> &'static [&'static str] {
        &["create", "job", "import"]
    }

    fn create_site(&self) -> &'static str {
        "create"
    }

    fn inject(&self, site: &str, fault: crate::engine::provider::conformance::Fault, times: u32) {
        use crate::engine::provider::conformance::Fault as F;
        let call = match site {
            "create" => Call::CreateCryptoKey,
            "job" => Call::CreateImportJob,
            "import" => Call::Import,
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
        // Cloud KMS versions carry no tags: the Vault version is the one
        // whose material the version holds.
        self.fake
            .versions(&Self::key_name(target))
            .into_iter()
            .map(|v| {
                let vault_version = materials
                    .iter()
                    .find(|(_, m)| v.material.as_deref() == Some(m.as_bytes()))
                    .map(|(n, _)| *n);
                crate::engine::provider::conformance::Observed {
                    provider_id: v.id.clone(),
                    vault_version,
                    usable: v.state == State::Enabled,
                    material_matches: vault_version.is_some(),
                }
            })
            .collect()
    }

    fn current(&self, target: &crate::engine::provider::Target) -> Option<String> {
        let key = Self::key_name(target);
        match self.protection {
            // Symmetric: the primary version.
            crate::engine::provider::Protection::Hsm => self.fake.primary(&key),
            // Asymmetric keys have no primary: every enabled version is used
            // by its own name, so the newest one stands for "current".
            crate::engine::provider::Protection::Software => self
                .fake
                .versions(&key)
                .into_iter()
                .rfind(|v| v.state == State::Enabled)
                .map(|v| v.id),
        }
    }

    fn delete_outside(&self, target: &crate::engine::provider::Target) {
        self.fake.destroy_outside(&Self::key_name(target));
    }
}

impl crate::engine::provider::conformance::Tamper for GcpDouble {
    fn set_enabled_outside(
        &self,
        target: &crate::engine::provider::Target,
        provider_id: &str,
        enabled: bool,
    ) {
        let state = if enabled {
            State::Enabled
        } else {
            State::Disabled
        };
        self.fake
            .set_state_outside(&Self::key_name(target), provider_id, state);
    }

    fn add_foreign(
        &self,
        target: &crate::engine::provider::Target,
        material: &KeyMaterial,
    ) -> String {
        self.fake.add_foreign(&Self::key_name(target), material)
    }

    /// Destroys one version (scheduled for destruction, as Google does).
    fn doom_outside(&self, target: &crate::engine::provider::Target, provider_id: &str) -> bool {
        self.fake.set_state_outside(
            &Self::key_name(target),
            provider_id,
            State::DestroyScheduled,
        );
        true
    }
}

impl std::fmt::Debug for FakeCloudKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeCloudKms")
    }
}
