//! KMS providers: one trait, one module per cloud.
//!
//! The engine orchestrates distribution (which versions exist where, what
//! is recorded in Vault) and each provider only knows how to talk to its
//! cloud. Adding a provider means adding a module here and one arm to
//! [`ProviderKind`].

use std::collections::BTreeMap;
use std::fmt;

use crate::engine::key_type::KeyType;
use crate::engine::material::KeyMaterial;
use crate::framework::Secret;

/// Operations a distributed key may be given in the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
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
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hsm" => Some(Self::Hsm),
            "software" => Some(Self::Software),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hsm => "hsm",
            Self::Software => "software",
        }
    }
}

/// The supported KMS providers, by their API names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProviderKind {
    #[serde(rename = "azurekeyvault")]
    AzureKeyVault,
    #[serde(rename = "awskms")]
    AwsKms,
    #[serde(rename = "gcpckms")]
    GcpCkms,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [Self::AzureKeyVault, Self::AwsKms, Self::GcpCkms];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AzureKeyVault => "azurekeyvault",
            Self::AwsKms => "awskms",
            Self::GcpCkms => "gcpckms",
        }
    }

    /// Credential keys the provider understands.
    pub fn credential_keys(self) -> &'static [&'static str] {
        match self {
            Self::AzureKeyVault => &["tenant_id", "client_id", "client_secret", "environment"],
            Self::AwsKms => &["access_key", "secret_key", "session_token", "endpoint"],
            Self::GcpCkms => &["service_account_file", "project", "location"],
        }
    }

    /// The purposes a key type can have in this provider; `None` when the
    /// provider cannot import the type at all.
    fn allowed_purposes(self, key_type: KeyType) -> Option<&'static [Purpose]> {
        use KeyType::*;
        use Purpose::*;
        Some(match (self, key_type) {
            (Self::AzureKeyVault, Rsa2048 | Rsa3072 | Rsa4096) => {
                &[Encrypt, Decrypt, Sign, Verify, Wrap, Unwrap]
            }
            // Azure imports EC keys on all three NIST curves.
            (Self::AzureKeyVault, EcdsaP256 | EcdsaP384 | EcdsaP521) => &[Sign, Verify],
            (Self::AwsKms, Aes256Gcm96) => &[Encrypt, Decrypt],
            (Self::GcpCkms, Aes256Gcm96) => &[Encrypt, Decrypt],
            (Self::GcpCkms, Rsa2048 | Rsa3072 | Rsa4096) => &[Decrypt, Sign],
            (Self::GcpCkms, EcdsaP256 | EcdsaP384) => &[Sign],
            _ => return None,
        })
    }

    /// Key types the provider can import.
    pub fn supported_types(self) -> Vec<KeyType> {
        KeyType::ALL
            .into_iter()
            .filter(|t| self.allowed_purposes(*t).is_some())
            .collect()
    }

    /// Which key types, purposes and protections the provider can import.
    /// Checked before any call to the cloud; the error says what is allowed.
    pub fn check_support(
        self,
        key_type: KeyType,
        purposes: &[Purpose],
        protection: Protection,
    ) -> Result<(), String> {
        let provider = self.as_str();
        let Some(allowed) = self.allowed_purposes(key_type) else {
            return Err(format!(
                "key type {key_type} is not supported by the {provider} provider; supported types: {}",
                self.supported_types()
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if let Some(bad) = purposes.iter().find(|p| !allowed.contains(p)) {
            return Err(format!(
                "purpose {:?} is not supported for {key_type} keys by the {provider} provider; allowed: {}",
                bad.as_str(),
                allowed
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self == Self::GcpCkms
            && key_type.is_asymmetric()
            && purposes.contains(&Purpose::Decrypt)
            && purposes.contains(&Purpose::Sign)
        {
            return Err(format!(
                "the {provider} provider gives an asymmetric key one purpose: \"decrypt\" or \"sign\", not both"
            ));
        }
        if self == Self::AwsKms && protection == Protection::Software {
            return Err(format!(
                "the {provider} provider supports only protection \"hsm\""
            ));
        }
        Ok(())
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
    pub key_type: KeyType,
    pub purposes: Vec<Purpose>,
    pub protection: Protection,
}

/// A provider-side key version and whether it should be usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionState {
    pub version: u32,
    pub provider_id: String,
    pub enabled: bool,
}

/// A failed call to a provider. Messages must never carry credentials,
/// tokens or key material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The credentials lack a permission, or are wrong.
    #[error("{0}")]
    Permission(String),
    /// The request was refused as invalid by the provider.
    #[error("{0}")]
    Rejected(String),
    /// Network failure, throttling or a server error that outlived retries.
    #[error("{0}")]
    Unavailable(String),
    /// The provider is misconfigured in Vault (bad credentials map, etc.).
    #[error("{0}")]
    Config(String),
}

/// One cloud's side of distribution. Every method must be safe to repeat
/// after a failure part-way through.
#[async_trait::async_trait]
pub trait KmsProvider: Send + Sync {
    /// Imports one version's material under `target.name` and returns the
    /// provider's id for the new version. The new version becomes current.
    async fn import_version(
        &self,
        target: &Target,
        version: u32,
        material: &KeyMaterial,
    ) -> Result<String, ProviderError>;

    /// Called once after a run of `import_version` calls for one target,
    /// whether they succeeded or not, so the provider can release what it
    /// set up for the run (Azure deletes its key-exchange key).
    async fn finish_imports(&self, _target: &Target) {}

    /// Enables and disables provider-side versions.
    async fn set_enabled(
        &self,
        target: &Target,
        versions: &[VersionState],
    ) -> Result<(), ProviderError>;

    /// Deletes the key (all versions) from the provider.
    async fn remove(&self, target: &Target, versions: &[VersionState])
    -> Result<(), ProviderError>;
}

/// Builds a provider client from its stored configuration. The engine holds
/// one of these, so tests can substitute an in-process provider.
pub trait ProviderConnector: Send + Sync + 'static {
    fn connect(
        &self,
        config: &ProviderConfig,
    ) -> Result<std::sync::Arc<dyn KmsProvider>, ProviderError>;
}

/// The production connector: the cloud modules compiled into this build.
pub struct CloudConnector;

impl ProviderConnector for CloudConnector {
    fn connect(
        &self,
        config: &ProviderConfig,
    ) -> Result<std::sync::Arc<dyn KmsProvider>, ProviderError> {
        match config.kind {
            ProviderKind::AzureKeyVault => azure::connect(config),
            _ => Err(ProviderError::Config(format!(
                "distribution to {} is not available in this build yet",
                config.kind.as_str()
            ))),
        }
    }
}

pub mod azure;
#[cfg(test)]
pub mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_follows_the_reference() {
        use KeyType::*;
        use ProviderKind::*;
        use Purpose::*;
        let ok = |k: ProviderKind, t, p: &[Purpose]| k.check_support(t, p, Protection::Hsm).is_ok();
        assert!(ok(AzureKeyVault, Rsa2048, &Purpose::ALL));
        assert!(!ok(AzureKeyVault, Aes256Gcm96, &[Encrypt]));
        assert!(ok(AwsKms, Aes256Gcm96, &[Encrypt, Decrypt]));
        assert!(!ok(AwsKms, Rsa2048, &[Encrypt]));
        assert!(!ok(AwsKms, Aes256Gcm96, &[Sign]));
        assert!(ok(GcpCkms, Rsa3072, &[Decrypt]));
        assert!(!ok(GcpCkms, Rsa3072, &[Decrypt, Sign]));
        assert!(ok(GcpCkms, EcdsaP384, &[Sign]));
        assert!(!ok(GcpCkms, EcdsaP521, &[Sign]));
        let err = AwsKms
            .check_support(Rsa2048, &[Encrypt], Protection::Hsm)
            .unwrap_err();
        assert!(err.contains("supported types: aes256-gcm96"), "{err}");
        assert!(
            AwsKms
                .check_support(Aes256Gcm96, &[Encrypt], Protection::Software)
                .is_err()
        );
    }
}
