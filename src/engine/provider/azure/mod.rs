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
//! `vault_version=<n>`. Where the identity has the `list` permission
//! (Vault's documented permission set lacks it), the run lists the key's
//! versions once, imports the earlier versions in parallel, and looks for
//! a resumed or lost import among the listed versions with that tag,
//! comparing the public key. Without `list`, versions are imported one at
//! a time and the key's current version is read before each import: that
//! suffices because each is recorded before the next starts.
//! What neither can catch is an import the service is still processing
//! when our 30 s request timeout fires: if it completes after our retry,
//! the key gets a second version with the same material and tag.
//!
//! Names: a distribution's name is checked against the vault's
//! soft-deleted keys before its first import, and the engine picks another
//! if a deleted key holds it. Exchange keys are purged after deletion, in
//! the background, where the identity has the `purge` permission.

mod auth;
// Crate-visible for the fuzz targets (`crate::fuzzing`).
pub(crate) mod byok;
mod client;
pub mod config;
#[cfg(test)]
pub mod fake;
mod inspect;
mod spki;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use azure_core::error::{Error as AzureError, ErrorKind};
use azure_core::http::StatusCode;
use azure_security_keyvault_keys::models::{Key, KeyProperties};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use bytes::Bytes;
use zeroize::{Zeroize, Zeroizing};

use super::client::process_env;
use super::client::retry::{self, RetryPolicy};
use super::client::timing::{self, wrap_time};
use super::registry::{Credential, Descriptor, any_purposes};
use super::{
    ImportRequest, ImportSession, KmsProvider, LiveKey, NewId, Protection, ProviderConfig,
    ProviderError, Purpose, Target, VersionState,
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
    vault: Arc<KeyVault>,
    /// Set once purging an exchange key was denied, so that it is said once.
    purge_denied: Arc<AtomicBool>,
    /// Set once listing versions was denied, so that it is said once.
    list_denied: AtomicBool,
}

impl AzureKeyVault {
    /// The provider over any Key Vault API (the SDK, or a test double).
    pub fn new(api: Arc<dyn KeyVaultApi>, retry: RetryPolicy) -> Self {
        Self {
            vault: Arc::new(KeyVault::new(api, retry)),
            purge_denied: Arc::default(),
            list_denied: AtomicBool::new(false),
        }
    }
}

/// What listing a key's versions gave.
enum Listing {
    Listed(Vec<KeyProperties>),
    /// 404: the key does not exist.
    Missing,
    /// The identity lacks the `list` permission.
    Denied,
}

/// Azure version ids of a key by the Vault version they are tagged with.
type Tagged = Vec<(u32, String)>;

fn tagged(listed: Vec<KeyProperties>) -> Tagged {
    listed
        .into_iter()
        .filter_map(|p| {
            let tag = p.tags.as_ref()?.get(byok::VERSION_TAG)?.parse().ok()?;
            Some((tag, client::version_of(p.kid.as_deref()?)?.to_owned()))
        })
        .collect()
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
        enabled: bool,
    ) -> Result<Option<String>, ProviderError> {
        let vault = &self.vault;
        let name = target.name.as_str();
        let found = vault
            .call(Op::Get, |_| async move {
                match vault.api.latest(name).await {
                    Ok(key) => Ok(matching_version(&key, version, material)),
                    // Key Vault shows nothing of a disabled newest version:
                    // its tag is found in the listing, where allowed.
                    Err(e) if client::is_key_disabled(&e) => {
                        self.find_listed(name, version, material, enabled).await
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(found.flatten())
    }

    /// The Azure version among the key's listed versions that holds Vault
    /// `version`; `None` also when the identity may not list.
    async fn find_listed(
        &self,
        name: &str,
        version: u32,
        material: &KeyMaterial,
        enabled: bool,
    ) -> Result<Option<String>, AzureError> {
        match self.vault.api.versions(name).await {
            Ok(listed) => {
                self.find_tagged(name, &tagged(listed), version, material, enabled)
                    .await
            }
            Err(e)
                if matches!(
                    e.http_status(),
                    Some(StatusCode::NotFound | StatusCode::Forbidden)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The key's versions by their Vault version tag; `None` when the
    /// identity may not list them.
    async fn tagged_versions(&self, name: &str) -> Result<Option<Tagged>, ProviderError> {
        Ok(match self.listing(name).await? {
            Listing::Listed(listed) => Some(tagged(listed)),
            Listing::Missing => Some(Vec::new()),
            Listing::Denied => None,
        })
    }

    /// `GET /keys/{name}/versions`, every page; a denial is said once.
    async fn listing(&self, name: &str) -> Result<Listing, ProviderError> {
        let vault = &self.vault;
        match vault.call(Op::List, |_| vault.api.versions(name)).await {
            Ok(Some(listed)) => Ok(Listing::Listed(listed)),
            Ok(None) => Ok(Listing::Missing),
            Err(ProviderError::Permission(_)) => {
                if !self.list_denied.swap(true, Ordering::SeqCst) {
                    log::info!(
                        "azure key vault: the identity may not list key versions in {}; versions are imported one at a time and drift checks read only the recorded and the current versions (grant the list key permission to import them in parallel and to see every version)",
                        vault.vault()
                    );
                }
                Ok(Listing::Denied)
            }
            Err(e) => Err(e),
        }
    }

    /// The Azure version among `tagged` that holds Vault `version` of
    /// `material` (tag and public key both match). Key Vault shows nothing
    /// of a disabled version, so for an import made disabled (`!enabled`)
    /// a disabled version with the tag is taken on its tag alone.
    async fn find_tagged(
        &self,
        name: &str,
        tagged: &[(u32, String)],
        version: u32,
        material: &KeyMaterial,
        enabled: bool,
    ) -> Result<Option<String>, AzureError> {
        for (_, id) in tagged.iter().filter(|(v, _)| *v == version) {
            match self.vault.api.version(name, id).await {
                Ok(key) => {
                    if let Some(found) = matching_version(&key, version, material) {
                        return Ok(Some(found));
                    }
                }
                Err(e) if client::is_key_disabled(&e) && !enabled => {
                    return Ok(Some(id.clone()));
                }
                Err(e)
                    if e.http_status() == Some(StatusCode::NotFound)
                        || client::is_key_disabled(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Whether an earlier attempt whose answer was lost imported `version`:
    /// the latest version tells when imports run one at a time; otherwise
    /// the versions are listed again.
    async fn lost_import(
        &self,
        name: &str,
        version: u32,
        material: &KeyMaterial,
        enabled: bool,
        parallel: bool,
    ) -> Result<Option<String>, AzureError> {
        let api = &self.vault.api;
        let not_found = |e: &AzureError| e.http_status() == Some(StatusCode::NotFound);
        if parallel {
            return match api.versions(name).await {
                Ok(listed) => {
                    self.find_tagged(name, &tagged(listed), version, material, enabled)
                        .await
                }
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e),
            };
        }
        match api.latest(name).await {
            Ok(key) => Ok(matching_version(&key, version, material)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) if client::is_key_disabled(&e) => {
                self.find_listed(name, version, material, enabled).await
            }
            Err(e) => Err(e),
        }
    }

    /// Imports `body` under `target.name`, checking before each retry
    /// whether a lost earlier attempt already succeeded.
    async fn import_body(
        &self,
        target: &Target,
        version: u32,
        material: &KeyMaterial,
        enabled: bool,
        body: &SecretBody,
        parallel: bool,
    ) -> Result<String, ProviderError> {
        let vault = &self.vault;
        let name = target.name.as_str();
        vault
            .call_found(Op::Import, &format!("key {name:?}"), |failures| {
                let content = body.bytes();
                async move {
                    if failures > 0
                        && let Some(id) = self
                            .lost_import(name, version, material, enabled, parallel)
                            .await?
                    {
                        return Ok(id);
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

    /// Deletes a key-exchange key, then purges it in the background; a
    /// failure is logged, not returned: the KEK expires within a day
    /// anyway, and the import it served is done.
    async fn delete_kek(&self, name: &str) {
        let vault = &self.vault;
        // 404 is fine.
        match vault.call(Op::Delete, |_| vault.api.delete_key(name)).await {
            Ok(_) => self.purge_later(name.to_owned()),
            Err(e) => log::warn!(
                "azure key vault: could not delete key-exchange key {name} in {} (it expires within a day; delete it by hand): {e}",
                vault.vault()
            ),
        }
    }

    /// Purges a deleted key-exchange key, so that it does not sit among the
    /// vault's deleted keys for the whole retention period. Azure finishes
    /// a deletion asynchronously, so a 409 (still being deleted) is retried
    /// like a transient failure. Without the `purge` permission it is said
    /// once per provider, and the deleted exchange keys stay until their
    /// retention ends.
    fn purge_later(&self, name: String) {
        let (vault, denied) = (self.vault.clone(), self.purge_denied.clone());
        if denied.load(Ordering::SeqCst) {
            return;
        }
        tokio::spawn(async move {
            let label = format!("azure key vault: purging key-exchange key {name}");
            let result = retry::run(&vault.policy(), &label, |_| {
                let (vault, name) = (&vault, &name);
                async move {
                    let Err(e) = vault.api.purge(name).await else {
                        return Ok(());
                    };
                    match e.http_status().map(u16::from) {
                        Some(404) => Ok(()),
                        Some(409) => Err(retry::Failure::Transient {
                            retry_after: None,
                            detail: "the key is still being deleted".into(),
                        }),
                        _ => match client::classify(&e, Op::Purge, vault.vault()) {
                            client::Failure::Transient {
                                retry_after,
                                detail,
                            } => Err(retry::Failure::Transient {
                                retry_after,
                                detail,
                            }),
                            client::Failure::NotFound => Ok(()),
                            client::Failure::Fatal(e) => Err(retry::Failure::Final(e)),
                        },
                    }
                }
            })
            .await;
            match result {
                Ok(()) => log::debug!("azure key vault: purged key-exchange key {name}"),
                Err(retry::Stop::Final(ProviderError::Permission(_))) => {
                    if !denied.swap(true, Ordering::SeqCst) {
                        log::warn!(
                            "azure key vault: the identity may not purge deleted keys in {}; deleted key-exchange keys stay among the vault's deleted keys until its retention period ends (grant the purge key permission to remove them)",
                            vault.vault()
                        );
                    }
                }
                Err(retry::Stop::Final(e)) => {
                    log::warn!("azure key vault: could not purge key-exchange key {name}: {e}")
                }
                Err(retry::Stop::GaveUp { detail, .. }) => {
                    log::warn!("azure key vault: could not purge key-exchange key {name}: {detail}")
                }
            }
        });
    }

    /// BYOK: wraps under `kek` and imports. Returns the version id.
    async fn wrap_and_import(
        &self,
        target: &Target,
        request: &ImportRequest<'_>,
        kek: &Key,
        parallel: bool,
    ) -> Result<String, ProviderError> {
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
        wrap_time(wrap_started.elapsed());
        // Ciphertext only, but one buffer keeps retries copy-free.
        let body = serde_json::to_vec(&parameters).map_err(|e| {
            ProviderError::Rejected(format!("encoding the import request failed: {e}"))
        })?;
        let body = SecretBody::new(Zeroizing::new(body));
        self.import_body(
            target,
            request.version,
            request.material,
            request.enabled,
            &body,
            parallel,
        )
        .await
    }
}

/// One import run: `protection=hsm` creates one key-exchange key on first
/// use, shared by every version of the run and deleted by `finish`.
struct AzureImport<'a> {
    provider: &'a AzureKeyVault,
    target: &'a Target,
    kek: tokio::sync::Mutex<Option<KekInVault>>,
    touched: AtomicBool,
    /// The key's tagged versions when the run began, listed at most once;
    /// `None` inside when the identity may not list.
    listing: tokio::sync::OnceCell<Option<Tagged>>,
    /// Whether imports of this run may be in flight together.
    parallel: AtomicBool,
}

impl AzureImport<'_> {
    async fn listing(&self) -> Result<&Option<Tagged>, ProviderError> {
        self.listing
            .get_or_try_init(|| self.provider.tagged_versions(&self.target.name))
            .await
    }

    /// The Azure version an earlier attempt made for `request`, if any.
    /// Imports in flight together are told apart by listing; one at a
    /// time, the latest version tells.
    async fn earlier(&self, request: &ImportRequest<'_>) -> Result<Option<String>, ProviderError> {
        let (provider, name) = (self.provider, &self.target.name);
        if (self.parallel.load(Ordering::SeqCst) || request.resume)
            && let Some(tagged) = self.listing().await?
        {
            let vault = &provider.vault;
            return vault
                .call(Op::Get, |_| {
                    provider.find_tagged(
                        name,
                        tagged,
                        request.version,
                        request.material,
                        request.enabled,
                    )
                })
                .await
                .map(Option::flatten);
        }
        provider
            .existing(
                self.target,
                request.version,
                request.material,
                request.enabled,
            )
            .await
    }

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
        let parallel = self.parallel.load(Ordering::SeqCst);
        // One at a time, one GET whether or not an earlier attempt is known
        // to have started: it is cheap. In parallel only a resumed import
        // looks, in the versions listed when the run began.
        let earlier = match parallel && !request.resume {
            true => None,
            false => self.earlier(&request).await?,
        };
        if let Some(id) = earlier {
            log::info!(
                "azure key vault: version {version} of {} is already in {} as {id}; recording it",
                target.name,
                provider.vault.vault()
            );
            return Ok(id);
        }
        // Neither the body nor the exchange key touches the target.
        let (imported, times) = match target.protection {
            Protection::Software => {
                let body = SecretBody::new(byok::software_import_body(
                    target,
                    version,
                    request.material,
                    request.enabled,
                )?);
                timing::timed(provider.import_body(
                    target,
                    version,
                    request.material,
                    request.enabled,
                    &body,
                    parallel,
                ))
                .await
            }
            Protection::Hsm => {
                let kek = self.kek().await?;
                timing::timed(provider.wrap_and_import(target, &request, &kek, parallel)).await
            }
        };
        let id = self.note(imported)?;
        let total = started.elapsed();
        log::info!(
            key = target.name.as_str(),
            version = version,
            azure_version = id.as_str(),
            protection = target.protection.as_str(),
            enabled = request.enabled,
            wrap_us = times.wrap.as_micros(),
            total_us = total.as_micros();
            "azure key vault: imported version {version} of {} into {}",
            target.name,
            provider.vault.vault()
        );
        Ok(id)
    }

    /// In parallel where the identity may list the key's versions: a
    /// resumed or lost import is then found by its tag among them.
    async fn concurrency(&self, versions: usize) -> Result<usize, ProviderError> {
        check_name(&self.target.name)?;
        match self.listing().await? {
            Some(_) => {
                self.parallel.store(true, Ordering::SeqCst);
                Ok(versions)
            }
            None => Ok(1),
        }
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
            listing: tokio::sync::OnceCell::new(),
            parallel: AtomicBool::new(false),
        })
    }

    /// A soft-deleted key keeps its name until it is purged: an import
    /// under that name would get 409.
    async fn name_available(&self, target: &Target) -> Result<bool, ProviderError> {
        check_name(&target.name)?;
        let vault = &self.vault;
        match vault
            .call(Op::GetDeleted, |_| vault.api.deleted(&target.name))
            .await
        {
            Ok(deleted) => Ok(deleted.is_none()),
            // Cannot tell; an import under a taken name fails with 409 and
            // the repeat checks again.
            Err(ProviderError::Permission(e)) => {
                log::warn!(
                    "azure key vault: cannot check for a deleted key named {}: {e}",
                    target.name
                );
                Ok(true)
            }
            Err(e) => Err(e),
        }
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

    /// Every version with `list` (the enabled ones read for their public
    /// key), only the recorded and the current one without it; see
    /// [`inspect`].
    async fn inspect(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Option<LiveKey>, ProviderError> {
        self.inspect_key(target, versions).await
    }

    /// `PATCH attributes.enabled=false` on each version: Azure cannot
    /// delete a single version, and this never deletes anything.
    async fn disable_foreign(
        &self,
        target: &Target,
        provider_ids: &[String],
    ) -> Result<(), ProviderError> {
        self.disable_versions(target, provider_ids).await
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
    use crate::engine::provider::LiveMaterial;
    use crate::engine::provider::testing::first_disabled;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        for protection in [Protection::Hsm, Protection::Software] {
            let double = fake::AzureDouble::new(protection);
            super::super::conformance::run(&double, protection.as_str()).await;
            assert_eq!(double.fake.live_keks(), 0, "every exchange key is deleted");
            purged(&double.fake).await;
        }
    }

    #[tokio::test]
    async fn passes_the_drift_contract() {
        for protection in [Protection::Hsm, Protection::Software] {
            let double = fake::AzureDouble::new(protection);
            super::super::conformance::run_drift(&double, protection.as_str()).await;
        }
    }

    fn provider_over(fake: &Arc<fake::FakeKeyVault>) -> AzureKeyVault {
        AzureKeyVault::new(
            fake.clone(),
            RetryPolicy::with_base(std::time::Duration::from_millis(1)),
        )
    }

    /// Imports `count` versions one at a time, version 1 disabled.
    async fn import_versions(
        provider: &AzureKeyVault,
        target: &Target,
        count: u32,
    ) -> (Vec<KeyMaterial>, Vec<String>) {
        let mut materials = Vec::new();
        let mut ids = Vec::new();
        for version in 1..=count {
            let material = KeyMaterial::generate(target.key_type).unwrap();
            let session = provider.begin_import(target);
            let id = session
                .import(ImportRequest {
                    version,
                    material: &material,
                    enabled: version > 1,
                    resume: false,
                    recorded: &ids,
                })
                .await
                .unwrap_or_else(|e| panic!("version {version}: {e}"));
            session.finish().await;
            materials.push(material);
            ids.push(id);
        }
        (materials, ids)
    }

    #[tokio::test]
    async fn disabled_versions_are_unverifiable_and_never_block_imports() {
        for list in [true, false] {
            let fake = Arc::new(fake::FakeKeyVault::new());
            if !list {
                fake.inject(fake::Call::List, fake::Fault::Denied, 1000);
            }
            let provider = provider_over(&fake);
            let target = target("k-1700000000");
            // Version 1 is disabled and the newest when version 2 is
            // imported: Key Vault refuses to show it.
            let (materials, ids) = import_versions(&provider, &target, 2).await;
            assert_eq!(fake.versions(&target.name).len(), 2, "list {list}");
            let live = provider
                .inspect(&target, &first_disabled(&ids, &materials))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(live.versions.len(), 2, "list {list}: {live:?}");
            let v1 = live
                .versions
                .iter()
                .find(|v| v.provider_id == ids[0])
                .unwrap();
            assert!(!v1.enabled, "{v1:?}");
            assert!(
                matches!(v1.material, LiveMaterial::Unverifiable(_)),
                "{v1:?}"
            );
            let v2 = live
                .versions
                .iter()
                .find(|v| v.provider_id == ids[1])
                .unwrap();
            assert_eq!(
                v2.material,
                LiveMaterial::PublicKey(materials[1].public_key_der().unwrap())
            );
            assert_eq!(v2.vault_version, Some(2));
            assert_eq!(live.current.as_ref(), Some(&ids[1]), "list {list}");
        }
    }

    #[tokio::test]
    async fn without_list_only_recorded_and_current_versions_are_seen() {
        let fake = Arc::new(fake::FakeKeyVault::new());
        let provider = provider_over(&fake);
        let target = target("k-1700000000");
        let (materials, ids) = import_versions(&provider, &target, 2).await;
        let foreign = KeyMaterial::generate(target.key_type).unwrap();
        let first = fake.add_outside(&target.name, foreign.public_key_der().unwrap(), "EC");
        let second = fake.add_outside(&target.name, foreign.public_key_der().unwrap(), "EC");
        fake.inject(fake::Call::List, fake::Fault::Denied, 1000);
        let states = first_disabled(&ids, &materials);
        let live = provider.inspect(&target, &states).await.unwrap().unwrap();
        let seen: Vec<&str> = live
            .versions
            .iter()
            .map(|v| v.provider_id.as_str())
            .collect();
        assert!(!seen.contains(&first.as_str()), "{seen:?}");
        assert!(seen.contains(&second.as_str()), "the current one: {seen:?}");
        assert_eq!(live.current.as_ref(), Some(&second));
        // Disabled, the current foreign version is no longer seen at all.
        provider
            .disable_foreign(&target, std::slice::from_ref(&second))
            .await
            .unwrap();
        let live = provider.inspect(&target, &states).await.unwrap().unwrap();
        assert_eq!(live.current, None);
        assert_eq!(live.versions.len(), 2, "{live:?}");
        // With list, it is seen, disabled and current.
        fake.clear_faults();
        let live = provider.inspect(&target, &states).await.unwrap().unwrap();
        assert_eq!(live.versions.len(), 4, "{live:?}");
        assert_eq!(live.current.as_ref(), Some(&second));
        let found = live
            .versions
            .iter()
            .find(|v| v.provider_id == second)
            .unwrap();
        assert!(!found.enabled && found.vault_version.is_none(), "{found:?}");
        assert!(
            fake.versions(&target.name).iter().any(|v| v.id == second),
            "never deleted"
        );
    }

    #[tokio::test]
    async fn a_lost_disabled_import_is_found_by_its_tag() {
        let fake = Arc::new(fake::FakeKeyVault::new());
        let provider = provider_over(&fake);
        let target = target("k-1700000000");
        let material = KeyMaterial::generate(target.key_type).unwrap();
        fake.inject(fake::Call::Import, fake::Fault::Lost, 1);
        let session = provider.begin_import(&target);
        let id = session
            .import(ImportRequest {
                version: 1,
                material: &material,
                enabled: false,
                resume: false,
                recorded: &[],
            })
            .await
            .unwrap();
        session.finish().await;
        let versions = fake.versions(&target.name);
        assert_eq!(versions.len(), 1, "{versions:?}");
        assert_eq!(versions[0].id, id);
        assert!(!versions[0].enabled);
    }

    /// Waits for the background purges of deleted exchange keys.
    async fn purged(fake: &fake::FakeKeyVault) {
        for _ in 0..200 {
            if fake.deleted_keks() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!(
            "{} deleted exchange keys were not purged",
            fake.deleted_keks()
        );
    }

    fn target(name: &str) -> Target {
        let double = fake::AzureDouble::new(Protection::Hsm);
        crate::engine::provider::conformance::Double::target(&double, name)
    }

    #[tokio::test]
    async fn without_list_imports_run_one_at_a_time() {
        let fake = Arc::new(fake::FakeKeyVault::new());
        let provider = AzureKeyVault::new(
            fake.clone(),
            RetryPolicy::with_base(std::time::Duration::from_millis(1)),
        );
        let target = target("k-1700000000");
        let session = provider.begin_import(&target);
        assert_eq!(session.concurrency(5).await.unwrap(), 5, "list allowed");
        session.finish().await;
        fake.inject(fake::Call::List, fake::Fault::Denied, 1);
        let session = provider.begin_import(&target);
        assert_eq!(session.concurrency(5).await.unwrap(), 1, "list denied");
        session.finish().await;
    }

    #[tokio::test]
    async fn a_name_held_by_a_deleted_key_is_not_available() {
        let fake = Arc::new(fake::FakeKeyVault::new());
        let provider = AzureKeyVault::new(
            fake.clone(),
            RetryPolicy::with_base(std::time::Duration::from_millis(1)),
        );
        let target = target("k-1700000000");
        assert!(provider.name_available(&target).await.unwrap());
        fake.hold_deleted(&target.name);
        assert!(!provider.name_available(&target).await.unwrap());
        // Without the permission to look, the name counts as free.
        fake.inject(fake::Call::GetDeleted, fake::Fault::Denied, 1);
        assert!(provider.name_available(&target).await.unwrap());
    }

    #[tokio::test]
    async fn exchange_keys_are_purged_unless_denied() {
        let double = fake::AzureDouble::new(Protection::Hsm);
        let fake = double.fake.clone();
        fake.inject(fake::Call::Purge, fake::Fault::Denied, 1);
        let provider = crate::engine::provider::conformance::Double::provider(&double);
        let target = target("k-1700000000");
        let material = KeyMaterial::generate(target.key_type).unwrap();
        for version in 1..=2 {
            let session = provider.begin_import(&target);
            session
                .import(ImportRequest {
                    version,
                    material: &material,
                    enabled: true,
                    resume: false,
                    recorded: &[],
                })
                .await
                .unwrap();
            session.finish().await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Denied once: said once, and not tried again by this provider.
        assert_eq!(fake.calls(fake::Call::Purge), 1);
        assert_eq!(fake.deleted_keks(), 2);
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
