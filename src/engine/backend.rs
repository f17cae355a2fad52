//! The keymgmt backend: its state per mount, and the list of its paths.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::RwLock;

use super::distribution::DistributionStore;
use super::keys::{KEY_PREFIX, KeyStore};
use super::kms::{KMS_PREFIX, ProviderStore};
use super::locks::NamedLocks;
use super::provider::{CloudConnector, KmsProvider, ProviderConnector};
use super::{path_distribution, path_keys, path_kms};
use crate::framework::{Backend, Error, Lifecycle, Path};
use crate::runtime::backend::{BackendConfig, BackendFactory, LogicalBackend};
use crate::runtime::proto::pb;
use crate::runtime::storage::Storage;
use crate::runtime::system_view::SystemView;

const BACKEND_HELP: &str = "\
The Key Management secrets engine generates and owns keys, distributes copies of them to \
cloud KMS providers (Azure Key Vault, AWS KMS, Google Cloud KMS) through each provider's \
secure key import specification, and manages their lifecycle there: rotation, enabling and \
disabling versions, and removal.";

/// One mount's state.
pub struct KeyManagement {
    pub keys: KeyStore,
    pub providers: ProviderStore,
    pub distributions: DistributionStore,
    /// Serialises writes per `key/<name>` and `kms/<name>`.
    pub locks: NamedLocks,
    connector: Arc<dyn ProviderConnector>,
    /// The host's view of the server, when mounted in one.
    system: Option<Arc<dyn SystemView>>,
    /// Connected provider clients (they cache tokens), by provider name.
    clients: RwLock<HashMap<String, Arc<dyn KmsProvider>>>,
}

impl KeyManagement {
    pub fn new(storage: Arc<dyn Storage>, connector: Arc<dyn ProviderConnector>) -> Self {
        Self {
            keys: KeyStore::new(storage.clone()),
            providers: ProviderStore::new(storage.clone()),
            distributions: DistributionStore::new(storage),
            locks: NamedLocks::default(),
            connector,
            system: None,
            clients: RwLock::default(),
        }
    }

    /// The connected client of a provider, made on first use.
    pub async fn client(&self, provider: &str) -> Result<Arc<dyn KmsProvider>, Error> {
        if let Some(client) = self.clients.read().await.get(provider) {
            return Ok(client.clone());
        }
        let config = self.providers.require(provider).await?;
        let client = self
            .connector
            .connect(&config)
            .map_err(super::propagate::provider_error)?;
        self.clients
            .write()
            .await
            .insert(provider.to_owned(), client.clone());
        Ok(client)
    }

    /// Forgets a provider's client after its configuration changed.
    pub async fn forget_client(&self, provider: &str) {
        self.clients.write().await.remove(provider);
    }
}

#[async_trait::async_trait]
impl Lifecycle for KeyManagement {
    /// Loads the key names, so that lookups of missing keys (every
    /// creation) are answered without a storage round trip.
    async fn initialize(&self) -> Result<(), Error> {
        if let Some(system) = &self.system {
            match system.server_version().await {
                Ok(version) => {
                    log::info!(server_version = version.as_str(); "keymgmt mount initialized")
                }
                Err(err) => log::warn!("reading the server version: {err}"),
            }
        }
        if let Err(err) = self.keys.list().await {
            // Not fatal: lookups fall back to storage until a list succeeds.
            log::warn!("loading key names: {err}");
        }
        Ok(())
    }

    async fn invalidate(&self, key: &str) {
        self.keys.invalidate(key).await;
        if let Some(provider) = key.strip_prefix(KMS_PREFIX) {
            self.forget_client(provider).await;
        }
    }
}

/// Every path of the engine, in routing order.
pub fn paths() -> Vec<Path<KeyManagement>> {
    let mut paths = Vec::new();
    paths.extend(path_keys::paths());
    paths.extend(path_kms::paths());
    paths.extend(path_distribution::paths());
    paths
}

/// Builds the framework backend around a fresh state.
pub fn backend(
    storage: Arc<dyn Storage>,
    connector: Arc<dyn ProviderConnector>,
) -> Backend<KeyManagement> {
    framework_backend(KeyManagement::new(storage, connector))
}

fn framework_backend(engine: KeyManagement) -> Backend<KeyManagement> {
    let special = pb::Paths {
        // Key material and provider credentials get seal wrapping where
        // the server offers it.
        seal_wrap_storage: vec![KEY_PREFIX.to_owned(), KMS_PREFIX.to_owned()],
        ..Default::default()
    };
    Backend::new(Arc::new(engine), paths(), BACKEND_HELP, special)
}

/// The factory the runtime calls for each mount.
pub struct Factory;

impl BackendFactory for Factory {
    fn create(&self, config: BackendConfig) -> Result<Arc<dyn LogicalBackend>, String> {
        let mut engine = KeyManagement::new(config.storage, Arc::new(CloudConnector));
        engine.system = Some(config.system);
        Ok(Arc::new(framework_backend(engine)))
    }
}
