//! The `azurekeyvault` provider: distribution into Azure Key Vault and
//! Managed HSM through the official Azure SDK crates.
//!
//! Mapping (keymgmt-api reference §5.1): the Azure key is named
//! `target.name` (`<key>-<unix seconds>`); every Vault version is imported
//! with `PUT /keys/{name}` and becomes one Azure key version, the newest
//! being current; `min_enabled_version` is `PATCH attributes.enabled` per
//! version; removal is `DELETE /keys/{name}` (soft delete).
//!
//! `protection=hsm` is Azure BYOK: one RSA-HSM key-exchange key per import
//! run (a distribution, or the import after a rotation), each version's
//! PKCS#8 private key wrapped under it with `CKM_RSA_AES_KEY_WRAP`
//! (RSA-OAEP-SHA1) and sent as `key_hsm`, then the KEK deleted whatever
//! happened. `protection=software` sends the plain JWK
//! over TLS with `Hsm: false`.
//!
//! Repeating an import is safe: each Azure version is tagged
//! `vault_version=<n>`, and before every import attempt the key's current
//! version is read; if it carries the tag and our public key, a previous
//! attempt succeeded without us hearing back and its id is returned. The
//! current version suffices because the engine imports versions in order
//! and records each before the next. (Listing versions would need the
//! `list` permission, which Vault's documented permission set lacks.)
//! What this cannot catch is an import the service is still processing
//! when our 30 s request timeout fires: if it completes after our retry,
//! the key gets a second version with the same material and tag.

mod auth;
// Crate-visible for the fuzz targets (`crate::fuzzing`).
pub(crate) mod byok;
mod client;
pub mod config;
#[cfg(test)]
pub mod fake;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use azure_core::error::{Error as AzureError, ErrorKind};
use azure_core::http::StatusCode;
use azure_security_keyvault_keys::models::Key;
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use bytes::Bytes;
use zeroize::{Zeroize, Zeroizing};

use super::client::process_env;
use super::client::retry::RetryPolicy;
use super::registry::{Credential, Descriptor, any_purposes};
use super::{
    ImportRequest, ImportSession, KmsProvider, NewId, Protection, ProviderConfig, ProviderError,
    Purpose, Target, VersionState,
};
use crate::engine::key_type::KeyType;
use crate::engine::material::KeyMaterial;
use client::{KeyVault, KeyVaultApi, Op, SdkKeyVault};
use config::Settings;

/// The Key Vault REST api-version: 7.6 is the version whose specification
/// the implementation and its test fake follow.
pub const API_VERSION: &str = "7.6";

/// Longest Azure key name.
const MAX_NAME_LEN: usize = 127;

/// Every RSA purpose: Azure keys take any `key_ops`.
const RSA_PURPOSES: &[Purpose] = &Purpose::ALL;
/// EC keys sign and verify.
const EC_PURPOSES: &[Purpose] = &[Purpose::Sign, Purpose::Verify];

/// The `azurekeyvault` provider.
pub static DESCRIPTOR: Descriptor = Descriptor {
    name: "azurekeyvault",
    title: "Azure Key Vault",
    key_collection: "the Key Vault name, a Managed HSM host name or an https:// URL",
    credentials: &[
        Credential {
            key: "tenant_id",
            env: Some(config::ENV_TENANT_ID),
            secret: false,
            description: "Directory (tenant) id; required, also with a managed identity.",
        },
        Credential {
            key: "client_id",
            env: Some(config::ENV_CLIENT_ID),
            secret: false,
            description: "Application (client) id; without it and a secret, the managed identity is used.",
        },
        Credential {
            key: "client_secret",
            env: Some(config::ENV_CLIENT_SECRET),
            secret: true,
            description: "Client secret of the application.",
        },
        Credential {
            key: "environment",
            env: Some(config::ENV_ENVIRONMENT),
            secret: false,
            description: "AzurePublicCloud (default), AzureUSGovernmentCloud or AzureChinaCloud.",
        },
    ],
    support: &[
        (KeyType::Rsa2048, RSA_PURPOSES),
        (KeyType::Rsa3072, RSA_PURPOSES),
        (KeyType::Rsa4096, RSA_PURPOSES),
        // Azure imports EC keys on all three NIST curves.
        (KeyType::EcdsaP256, EC_PURPOSES),
        (KeyType::EcdsaP384, EC_PURPOSES),
        (KeyType::EcdsaP521, EC_PURPOSES),
    ],
    check_purposes: any_purposes,
    protections: &[Protection::Hsm, Protection::Software],
    import_spec: "Azure BYOK (`protection=hsm`), JWK over TLS (`protection=software`)",
    replicates: false,
    validate: config::validate,
    check_key_name,
    connect,
};

/// Builds the provider for a stored configuration; called once per
/// provider and cached by the engine.
pub fn connect(config: &ProviderConfig) -> Result<Arc<dyn KmsProvider>, ProviderError> {
    let settings = Settings::resolve(config, &process_env)?;
    let http = auth::http_client(&settings)?;
    let credential = auth::credential(&settings, &http)?;
    let options = KeyClientOptions {
        api_version: API_VERSION.to_owned(),
        client_options: auth::client_options(&http),
        // A redirected endpoint cannot match the challenge's resource host.
        verify_challenge_resource: Some(!settings.endpoint_overridden),
    };
    let client = KeyClient::new(settings.endpoint.as_str(), credential, Some(options))
        .map_err(|e| ProviderError::Config(format!("Azure Key Vault client: {e}")))?;
    Ok(Arc::new(AzureKeyVault::new(
        Arc::new(SdkKeyVault::new(client)),
        settings.retry,
    )))
}

/// One configured `azurekeyvault` provider.
pub struct AzureKeyVault {
    vault: KeyVault,
}

impl AzureKeyVault {
    /// The provider over any Key Vault API (the SDK, or a test double).
    pub fn new(api: Arc<dyn KeyVaultApi>, retry: RetryPolicy) -> Self {
        Self {
            vault: KeyVault::new(api, retry),
        }
    }
}

/// A key-exchange key created in the vault for one import run.
struct KekInVault {
    name: String,
    key: Key,
}

/// The length of `-<unix seconds>` that distribution appends to a Vault
/// key name; ten digits until 2286.
const SUFFIX_LEN: usize = 11;

/// A Vault key can be distributed to Azure when `<key>-<unix seconds>` is
/// an Azure key name.
fn check_key_name(key: &str) -> Result<(), String> {
    check_name(&format!("{key}-{}", "1".repeat(SUFFIX_LEN - 1))).map_err(|e| e.to_string())
}

/// Azure key names are `^[0-9a-zA-Z-]{1,127}$`; a Vault key name outside
/// that cannot be distributed, and saying so beats a 400 from Azure.
fn check_name(name: &str) -> Result<(), ProviderError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(ProviderError::Rejected(format!(
            "Azure Key Vault key names may contain only letters, digits and hyphens, up to {MAX_NAME_LEN} characters; {name:?} cannot be created there"
        )))
    }
}

/// The Azure version id of `key` if it holds Vault version `version` of
/// `material` (tag and public key both match).
fn matching_version(key: &Key, version: u32, material: &KeyMaterial) -> Option<String> {
    let tag = key.tags.as_ref()?.get(byok::VERSION_TAG)?;
    let jwk = key.key.as_ref()?;
    if *tag != version.to_string() || !byok::public_key_matches(material, jwk) {
        return None;
    }
    client::version_of(jwk.kid.as_deref()?).map(str::to_owned)
}

fn kid_version(key: &Key) -> Result<String, AzureError> {
    key.key
        .as_ref()
        .and_then(|k| k.kid.as_deref())
        .and_then(client::version_of)
        .map(str::to_owned)
        .ok_or_else(|| {
            AzureError::with_message(
                ErrorKind::DataConversion,
                "Key Vault returned no versioned key id",
            )
        })
}

/// A request body that may hold private key material: shared with the SDK
/// as `Bytes` (so retries reuse it without copies) and wiped on drop once
/// the SDK has let go of it.
struct SecretBody(Bytes);

impl SecretBody {
    fn new(mut plain: Zeroizing<Vec<u8>>) -> Self {
        // Moves the allocation; the emptied Zeroizing has nothing to wipe.
        Self(Bytes::from(std::mem::take(&mut *plain)))
    }

    fn bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl Drop for SecretBody {
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.0));
    }
}

/// Zeroes `bytes` if this is the last reference; returns whether it did.
fn wipe(bytes: Bytes) -> bool {
    match bytes.try_into_mut() {
        Ok(mut unique) => {
            unique.as_mut().zeroize();
            true
        }
        Err(_) => false,
    }
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl AzureKeyVault {
    /// The Azure version already holding Vault `version`, if a previous
    /// attempt imported it.
    async fn existing(
        &self,
        target: &Target,
        version: u32,
        material: &KeyMaterial,
    ) -> Result<Option<String>, ProviderError> {
        let vault = &self.vault;
        let key = vault
            .call(Op::Get, |_| vault.api.latest(&target.name))
            .await?;
        Ok(key.and_then(|k| matching_version(&k, version, material)))
    }

    /// Imports `body` under `target.name`, checking before each retry
    /// whether a lost earlier attempt already succeeded.
    async fn import_body(
        &self,
        target: &Target,
        version: u32,
        material: &KeyMaterial,
        body: &SecretBody,
    ) -> Result<String, ProviderError> {
        let vault = &self.vault;
        let name = target.name.as_str();
        vault
            .call_found(Op::Import, &format!("key {name:?}"), |failures| {
                let content = body.bytes();
                async move {
                    if failures > 0 {
                        match vault.api.latest(name).await {
                            Ok(key) => {
                                if let Some(id) = matching_version(&key, version, material) {
                                    return Ok(id);
                                }
                            }
                            Err(e) if e.http_status() == Some(StatusCode::NotFound) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    kid_version(&vault.api.import_key(name, content).await?)
                }
            })
            .await
    }

    /// Creates a key-exchange key. If the creation failed in a way that may
    /// still have made one (retries ran out, a response was lost), it is
    /// deleted before the error is returned.
    async fn create_kek(&self) -> Result<KekInVault, ProviderError> {
        let vault = &self.vault;
        let name = format!("keymgmt-kek-{}", random_hex(16));
        let now = time::OffsetDateTime::now_utc();
        let created = vault
            .call_found(Op::CreateKek, "the key-exchange key", |_| {
                vault.api.create_key(&name, byok::kek_parameters(now))
            })
            .await;
        match created {
            Ok(key) => Ok(KekInVault { name, key }),
            Err(err @ ProviderError::Unavailable(_)) => {
                self.delete_kek(&name).await;
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// Deletes a key-exchange key; a failure is logged, not returned: the
    /// KEK expires within a day anyway, and the import it served is done.
    async fn delete_kek(&self, name: &str) {
        let vault = &self.vault;
        // 404 is fine.
        if let Err(e) = vault.call(Op::Delete, |_| vault.api.delete_key(name)).await {
            log::warn!(
                "azure key vault: could not delete key-exchange key {name} in {} (it expires within a day; delete it by hand): {e}",
                vault.vault()
            );
        }
    }

    /// BYOK: wraps under `kek` and imports. Returns the version id and the
    /// time spent wrapping.
    async fn wrap_and_import(
        &self,
        target: &Target,
        request: &ImportRequest<'_>,
        kek: &Key,
    ) -> Result<(String, std::time::Duration), ProviderError> {
        let kek = byok::Kek::of(kek)?;
        let wrap_started = Instant::now();
        let blob = byok::transfer_blob(&kek, request.material)?;
        let parameters = byok::hsm_import(
            target,
            request.version,
            request.material,
            blob,
            request.enabled,
        )?;
        let wrap_time = wrap_started.elapsed();
        // Ciphertext only, but one buffer keeps retries copy-free.
        let body = serde_json::to_vec(&parameters).map_err(|e| {
            ProviderError::Rejected(format!("encoding the import request failed: {e}"))
        })?;
        let body = SecretBody::new(Zeroizing::new(body));
        let id = self
            .import_body(target, request.version, request.material, &body)
            .await?;
        Ok((id, wrap_time))
    }
}

/// One import run: `protection=hsm` creates one key-exchange key on first
/// use, shared by every version of the run and deleted by `finish`.
struct AzureImport<'a> {
    provider: &'a AzureKeyVault,
    target: &'a Target,
    kek: tokio::sync::Mutex<Option<KekInVault>>,
    touched: AtomicBool,
}

impl AzureImport<'_> {
    /// Records whether an import may have changed the target: anything
    /// but a refusal may have (a lost answer, an outage mid-way).
    fn note(&self, result: Result<String, ProviderError>) -> Result<String, ProviderError> {
        if !matches!(
            result,
            Err(ProviderError::Permission(_)
                | ProviderError::Rejected(_)
                | ProviderError::Config(_))
        ) {
            self.touched.store(true, Ordering::SeqCst);
        }
        result
    }

    async fn kek(&self) -> Result<Key, ProviderError> {
        let mut kek = self.kek.lock().await;
        if let Some(kek) = kek.as_ref() {
            return Ok(kek.key.clone());
        }
        let created = self.provider.create_kek().await?;
        let key = created.key.clone();
        *kek = Some(created);
        Ok(key)
    }
}

#[async_trait::async_trait]
impl ImportSession for AzureImport<'_> {
    async fn import(&self, request: ImportRequest<'_>) -> Result<String, ProviderError> {
        let (target, provider) = (self.target, self.provider);
        check_name(&target.name)?;
        byok::azure_kty(request.material, target.protection)?;
        let started = Instant::now();
        let version = request.version;
        // One GET, whether or not an earlier attempt is known to have
        // started: it is cheap, and it also covers a lost response.
        if let Some(id) = provider.existing(target, version, request.material).await? {
            log::info!(
                "azure key vault: version {version} of {} is already in {} as {id}; recording it",
                target.name,
                provider.vault.vault()
            );
            return Ok(id);
        }
        let (id, wrap) = match target.protection {
            Protection::Software => {
                let body = SecretBody::new(byok::software_import_body(
                    target,
                    version,
                    request.material,
                    request.enabled,
                )?);
                let imported = provider
                    .import_body(target, version, request.material, &body)
                    .await;
                (self.note(imported)?, std::time::Duration::ZERO)
            }
            Protection::Hsm => {
                let kek = self.kek().await?;
                let imported = provider.wrap_and_import(target, &request, &kek).await;
                match imported {
                    Ok((id, wrap)) => (self.note(Ok(id))?, wrap),
                    Err(e) => return self.note(Err(e)),
                }
            }
        };
        let total = started.elapsed();
        log::info!(
            key = target.name.as_str(),
            version = version,
            azure_version = id.as_str(),
            protection = target.protection.as_str(),
            enabled = request.enabled,
            wrap_us = wrap.as_micros(),
            total_us = total.as_micros();
            "azure key vault: imported version {version} of {} into {}",
            target.name,
            provider.vault.vault()
        );
        Ok(id)
    }

    fn touched(&self) -> bool {
        self.touched.load(Ordering::SeqCst)
    }

    async fn finish(self: Box<Self>) {
        if let Some(kek) = self.kek.into_inner() {
            self.provider.delete_kek(&kek.name).await;
        }
    }
}

#[async_trait::async_trait]
impl KmsProvider for AzureKeyVault {
    fn begin_import<'a>(&'a self, target: &'a Target) -> Box<dyn ImportSession + 'a> {
        Box::new(AzureImport {
            provider: self,
            target,
            kek: tokio::sync::Mutex::default(),
            touched: AtomicBool::new(false),
        })
    }

    async fn set_enabled(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Vec<NewId>, ProviderError> {
        check_name(&target.name)?;
        let vault = &self.vault;
        for state in versions {
            vault
                .call_found(
                    Op::Update,
                    &format!(
                        "version {} ({}) of key {:?}",
                        state.version, state.provider_id, target.name
                    ),
                    |_| {
                        vault
                            .api
                            .set_enabled(&target.name, state.provider_id, state.enabled)
                    },
                )
                .await?;
        }
        Ok(Vec::new())
    }

    async fn remove(
        &self,
        target: &Target,
        _versions: &[VersionState<'_>],
        _unrecorded: &[u32],
    ) -> Result<(), ProviderError> {
        check_name(&target.name)?;
        let vault = &self.vault;
        // One DELETE removes every version, recorded or not. 404: already
        // deleted (e.g. a repeat after a lost response).
        vault
            .call(Op::Delete, |_| vault.api.delete_key(&target.name))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        for protection in [Protection::Hsm, Protection::Software] {
            let double = fake::AzureDouble::new(protection);
            super::super::conformance::run(&double, protection.as_str()).await;
            assert_eq!(double.fake.live_keks(), 0, "every exchange key is deleted");
        }
    }

    #[test]
    fn key_names() {
        assert!(check_name("example-key-1700000000").is_ok());
        assert!(check_name(&"a".repeat(127)).is_ok());
        assert!(check_name(&"a".repeat(128)).is_err());
        let err = check_name("my_key-1700000000").unwrap_err();
        assert!(
            err.to_string().contains("only letters, digits and hyphens"),
            "{err}"
        );
        assert!(check_name("").is_err());
    }

    #[test]
    fn secret_bodies_are_wiped_once_unshared() {
        let body = SecretBody::new(Zeroizing::new(b"{\"d\":\"secret\"}".to_vec()));
        let shared = body.bytes();
        drop(shared);
        let shared = Bytes::from(b"secret".to_vec());
        let other = shared.clone();
        assert!(!wipe(shared), "a shared buffer cannot be wiped");
        assert!(wipe(other), "the last reference is wiped");
        drop(body);
    }

    #[test]
    fn connect_reads_the_configuration() {
        use crate::framework::Secret;
        let config = ProviderConfig {
            kind: super::super::ProviderKind::parse("azurekeyvault").unwrap(),
            key_collection: "bad_name".into(),
            credentials: [("tenant_id".to_owned(), Secret::new("t".into()))].into(),
        };
        let err = connect(&config).err().unwrap();
        assert!(err.to_string().contains("key_collection"), "{err}");
    }
}
