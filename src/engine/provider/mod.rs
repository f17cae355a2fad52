//! KMS providers: one trait, one folder per provider, one registry.
//!
//! The engine orchestrates distribution (which versions exist where, what
//! Vault has recorded) and a provider only knows how to talk to its cloud
//! or device. Each provider's folder exports one [`Descriptor`]: its API
//! name, credentials, support matrix, configuration checks and how to
//! connect. [`registry`] lists the descriptors, and everything else (path
//! help, `allowed` lists, OpenAPI enums, error messages) is derived from it.
//! Adding a provider means adding its folder and one registry line.
//!
//! The extension point is [`KmsProvider`] with its [`ImportSession`]: a
//! provider imports the versions of one distribution inside a session (an
//! Azure key-exchange key, an AWS tag scan or a GCP import job is the state
//! of one session), and enables, disables and removes versions.

pub mod client;
pub mod registry;

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod pkcs11;

#[cfg(test)]
pub mod conformance;
#[cfg(test)]
pub mod testing;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::engine::key_type::KeyType;
use crate::engine::material::KeyMaterial;
use crate::framework::{Error, Secret};

pub use registry::{Descriptor, ProviderKind};

/// Operations a distributed key may be given in the provider.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    Decrypt,
    Encrypt,
    Sign,
    Unwrap,
    Verify,
    Wrap,
}

impl Purpose {
    pub const ALL: [Purpose; 6] = [
        Self::Encrypt,
        Self::Decrypt,
        Self::Sign,
        Self::Verify,
        Self::Wrap,
        Self::Unwrap,
    ];

    /// The wire names of [`Purpose::ALL`], in the same order.
    pub const NAMES: [&'static str; 6] = {
        let mut names = [""; 6];
        let mut i = 0;
        while i < names.len() {
            names[i] = Self::ALL[i].as_str();
            i += 1;
        }
        names
    };

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Sign => "sign",
            Self::Verify => "verify",
            Self::Wrap => "wrap",
            Self::Unwrap => "unwrap",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where operations with the key run in the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protection {
    Hsm,
    Software,
}

impl Protection {
    pub const ALL: [Protection; 2] = [Self::Hsm, Self::Software];
    pub const NAMES: [&'static str; 2] = [Self::Hsm.as_str(), Self::Software.as_str()];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hsm => "hsm",
            Self::Software => "software",
        }
    }
}

/// A provider's connection settings, as stored in Vault.
#[derive(Clone)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub key_collection: String,
    pub credentials: BTreeMap<String, Secret>,
}

/// What one distribution needs to know on every provider call.
#[derive(Debug, Clone)]
pub struct Target {
    /// The provider-side key name: `<key>-<unix seconds of distribution>`.
    pub name: String,
    /// Unique id of the distribution, written into provider-side tags so
    /// that objects created but never recorded can be found again, even
    /// when two mounts distribute keys of the same name in one second.
    pub id: String,
    /// The Vault key's name.
    pub key_name: String,
    pub key_type: KeyType,
    pub purposes: Vec<Purpose>,
    pub protection: Protection,
    /// Regions of a multi-Region key (awskms); empty otherwise.
    pub replica_regions: Vec<String>,
    /// Whether the key has been replicated to `replica_regions`; from
    /// then on every version is kept in every replica region.
    pub replicated: bool,
}

#[cfg(test)]
impl Target {
    /// A single-region target with a fixed id.
    pub fn for_test(
        name: &str,
        key_type: KeyType,
        purposes: &[Purpose],
        protection: Protection,
    ) -> Self {
        Self {
            name: name.to_owned(),
            id: format!("id-{name}"),
            key_name: name.rsplit_once('-').map_or(name, |(k, _)| k).to_owned(),
            key_type,
            purposes: purposes.to_vec(),
            protection,
            replica_regions: Vec::new(),
            replicated: false,
        }
    }
}

/// A distributed version, with what the provider should make of it.
#[derive(Debug, Clone, Copy)]
pub struct VersionState<'a> {
    pub version: u32,
    /// The provider's id for the version, as recorded.
    pub provider_id: &'a str,
    /// Whether it should be usable (`version >= min_enabled_version`).
    pub enabled: bool,
    /// Its material, for providers that bring in material only when a
    /// version is enabled (AWS keeps disabled versions unimported).
    pub material: &'a KeyMaterial,
}

/// One version to import in a session.
#[derive(Debug, Clone, Copy)]
pub struct ImportRequest<'a> {
    pub version: u32,
    pub material: &'a KeyMaterial,
    /// Whether the version may be usable. A version below
    /// `min_enabled_version` must never be usable, not even for a moment.
    pub enabled: bool,
    /// An earlier attempt started this version and may have reached the
    /// provider without Vault hearing back: look for it before creating.
    pub resume: bool,
    /// The provider ids Vault has recorded for the target's other
    /// versions. In a session that imports one version at a time, a
    /// provider-side version not among them can only be the one an
    /// interrupted attempt made.
    pub recorded: &'a [String],
}

/// A version whose provider id changed, for the engine to record (a
/// version a provider imports only once it is enabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewId {
    pub version: u32,
    pub provider_id: String,
}

/// What a provider holds of one target, read live, for drift detection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveKey {
    /// Every provider-side version of the target, Vault's or not,
    /// including those scheduled for deletion.
    pub versions: Vec<LiveVersion>,
    /// Whether the provider has a version that applications get when they
    /// name the key (an AWS alias, Azure's newest version, a GCP primary).
    pub has_current: bool,
    /// That version's provider id, when `has_current` and one is set.
    pub current: Option<String>,
    /// Whether `make_current` can change it (an alias, a primary); Azure's
    /// newest version is current and nothing can change that.
    pub can_make_current: bool,
}

/// One provider-side version, as the provider reports it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveVersion {
    pub provider_id: String,
    /// The Vault version its tags, labels or id name, where it has them.
    pub vault_version: Option<u32>,
    /// Whether applications can use it now.
    pub enabled: bool,
    /// Scheduled for deletion or destruction, or already destroyed: it
    /// counts as missing, and reconciling imports the Vault version again.
    pub doomed: bool,
    /// The provider's own word for its state (`PendingDeletion`,
    /// `DESTROY_SCHEDULED`), shown to operators as it is.
    pub state: String,
    pub material: LiveMaterial,
}

/// What the provider shows of a version's material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveMaterial {
    /// The SubjectPublicKeyInfo DER of an asymmetric version.
    PublicKey(Vec<u8>),
    /// A key check value (the first 3 bytes of AES-ECB of a zero block),
    /// as an HSM reports it.
    CheckValue(Vec<u8>),
    /// The version holds no material (AWS keeps disabled versions
    /// unimported).
    Absent,
    /// The provider shows nothing to compare with, and why: AES keys in
    /// the clouds, or a disabled version whose public key cannot be read.
    Unverifiable(String),
}

/// A failed call to a provider. Messages must never carry credentials,
/// tokens or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The credentials are wrong or lack a permission.
    #[error("{0}")]
    Permission(String),
    /// The provider refused the request as invalid, or cannot do it.
    #[error("{0}")]
    Rejected(String),
    /// Network failure, throttling or a server error that outlived retries.
    #[error("{0}")]
    Unavailable(String),
    /// The provider is misconfigured in Vault.
    #[error("{0}")]
    Config(String),
}

impl ProviderError {
    /// The same class of error with `context` in front of the message.
    pub fn context(self, context: &str) -> Self {
        let with = |m: String| format!("{context}: {m}");
        match self {
            Self::Permission(m) => Self::Permission(with(m)),
            Self::Rejected(m) => Self::Rejected(with(m)),
            Self::Unavailable(m) => Self::Unavailable(with(m)),
            Self::Config(m) => Self::Config(with(m)),
        }
    }
}

/// The one mapping of provider failures to what the user sees: what the
/// operator must fix is a 400, a provider that could not be reached or
/// failed is a 502 (the request can be repeated as it is).
impl From<ProviderError> for Error {
    fn from(err: ProviderError) -> Self {
        match err {
            ProviderError::Permission(m)
            | ProviderError::Rejected(m)
            | ProviderError::Config(m) => Error::BadRequest(m),
            ProviderError::Unavailable(m) => Error::BadGateway(m),
        }
    }
}

/// One run of imports for one distribution: a distribution, or the import
/// of new versions after a rotation. The session holds what the provider
/// sets up for the run; it makes no call before the first import.
#[async_trait::async_trait]
pub trait ImportSession: Send + Sync {
    /// Imports one version and returns the provider's id for it. Safe to
    /// repeat: an import that reached the provider before is found and its
    /// id returned, never duplicated.
    async fn import(&self, request: ImportRequest<'_>) -> Result<String, ProviderError>;

    /// How many of `versions` imports may run at once. More than one only
    /// where an interrupted import can be told apart from the others in
    /// flight (by a per-version tag or id), because a retry must find it
    /// instead of importing the version twice. Asked before a batch of
    /// several imports; it may call the provider, but only to read: for a
    /// new distribution it runs together with `name_available`. The engine
    /// imports the latest version after the batch, alone, so that it is
    /// the newest.
    async fn concurrency(&self, _versions: usize) -> Result<usize, ProviderError> {
        Ok(1)
    }

    /// Whether a call that may have created or changed something of the
    /// target in the provider was sent. The engine keeps no record of a
    /// failed distribution that touched nothing.
    fn touched(&self) -> bool;

    /// Releases what the run set up (Azure deletes its key-exchange key).
    /// Called once, whatever happened.
    async fn finish(self: Box<Self>);
}

/// One configured provider. Every method must be safe to repeat after a
/// failure part-way through.
#[async_trait::async_trait]
pub trait KmsProvider: Send + Sync {
    /// Starts an import run for `target`.
    fn begin_import<'a>(&'a self, target: &'a Target) -> Box<dyn ImportSession + 'a>;

    /// Whether `target.name` may be given to a new key: false when the
    /// provider still holds a deleted key under it (Azure's soft delete).
    /// Asked before the first import of a distribution; the engine then
    /// picks another name.
    async fn name_available(&self, _target: &Target) -> Result<bool, ProviderError> {
        Ok(true)
    }

    /// Makes `latest` the version applications get when they name the key
    /// (an AWS alias, a GCP primary version). Called after every run of
    /// imports that completed; must be cheap when nothing changes.
    async fn make_current(
        &self,
        _target: &Target,
        _latest: &VersionState<'_>,
    ) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Enables and disables provider-side versions. Returns the versions
    /// that got a provider id only now.
    async fn set_enabled(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Vec<NewId>, ProviderError>;

    /// Deletes the key (all versions) from the provider. `unrecorded`
    /// lists versions whose import was started but never recorded, so that
    /// what they may have created is deleted too. A key already gone is
    /// success.
    async fn remove(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
        unrecorded: &[u32],
    ) -> Result<(), ProviderError>;

    /// Reads what the provider holds of `target` now: every version with
    /// its state and what it shows of its material, and which version is
    /// current. `versions` are the versions Vault has recorded. `None`
    /// when the key itself no longer exists in the provider. Read-only:
    /// it changes nothing, whatever it finds.
    async fn inspect(
        &self,
        _target: &Target,
        _versions: &[VersionState<'_>],
    ) -> Result<Option<LiveKey>, ProviderError> {
        Err(ProviderError::Rejected(
            "this KMS provider cannot read the state of its keys".into(),
        ))
    }

    /// Disables provider-side versions that Vault did not create, so that
    /// applications cannot use them (`reconcile` with
    /// `disable_foreign=true`). Never deletes them.
    async fn disable_foreign(
        &self,
        _target: &Target,
        _provider_ids: &[String],
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Rejected(
            "this KMS provider cannot disable versions that Vault did not create".into(),
        ))
    }

    /// Copies every version into the target's replica regions (AWS
    /// multi-Region keys). Only called for providers whose descriptor says
    /// they replicate.
    async fn replicate(
        &self,
        _target: &Target,
        _versions: &[VersionState<'_>],
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Rejected(
            "this KMS provider does not replicate keys".into(),
        ))
    }
}

/// Builds a provider client from its stored configuration. The engine holds
/// one of these, so that tests can substitute an in-process provider.
pub trait ProviderConnector: Send + Sync + 'static {
    fn connect(&self, config: &ProviderConfig) -> Result<Arc<dyn KmsProvider>, ProviderError>;
}

/// The production connector: the registry's providers.
pub struct RegistryConnector;

impl ProviderConnector for RegistryConnector {
    fn connect(&self, config: &ProviderConfig) -> Result<Arc<dyn KmsProvider>, ProviderError> {
        (config.kind.descriptor().connect)(config)
    }
}
