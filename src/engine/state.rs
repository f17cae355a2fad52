//! One mount's state: its stores, its locks and its connected providers.
//!
//! Kept apart from the list of paths (`backend.rs`), so that path modules
//! depend on the state and the backend on the paths, never the reverse.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::RwLock;

use super::clock::{Clock, SystemClock};
use super::distribution::DistributionStore;
use super::keys::KeyStore;
use super::kms::{KMS_PREFIX, ProviderStore};
use super::locks::NamedLocks;
use super::pending::PendingStore;
use super::provider::{KmsProvider, ProviderConnector};
use super::schedule::ScheduleIndex;
use super::settings::Settings;
use crate::framework::{Error, Lifecycle};
use crate::runtime::storage::Storage;
use crate::runtime::system_view::SystemView;

/// One mount's state.
pub struct KeyManagement {
    pub keys: KeyStore,
    pub providers: ProviderStore,
    pub distributions: DistributionStore,
    /// When scheduled keys are due.
    pub schedule: ScheduleIndex,
    /// Pushes of versions that some provider still lacks.
    pub pending: PendingStore,
    /// Serialises writes per key and per provider.
    pub locks: NamedLocks,
    pub settings: Settings,
    pub(super) clock: Arc<dyn Clock>,
    /// Held while a periodic call works.
    pub(super) periodic_running: tokio::sync::Mutex<()>,
    /// The pending key the last periodic call stopped at.
    pub(super) pending_cursor: std::sync::Mutex<Option<String>>,
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
            distributions: DistributionStore::new(storage.clone()),
            schedule: ScheduleIndex::new(storage.clone()),
            pending: PendingStore::new(storage),
            locks: NamedLocks::default(),
            settings: Settings::default(),
            clock: Arc::new(SystemClock),
            periodic_running: tokio::sync::Mutex::new(()),
            pending_cursor: std::sync::Mutex::new(None),
            connector,
            system: None,
            clients: RwLock::default(),
        }
    }

    /// The same state, with the host's system view.
    pub fn with_system(mut self, system: Arc<dyn SystemView>) -> Self {
        self.system = Some(system);
        self
    }

    /// The same state, with another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The same state, with settings other than the defaults.
    pub fn with_settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// The connected client of a provider, made on first use.
    pub async fn client(&self, provider: &str) -> Result<Arc<dyn KmsProvider>, Error> {
        if let Some(client) = self.clients.read().await.get(provider) {
            return Ok(client.clone());
        }
        let config = self.providers.require(provider).await?;
        let client = self.connector.connect(&config)?;
        self.clients
            .write()
            .await
            .insert(provider.to_owned(), client.clone());
        Ok(client)
    }

    /// The provider's client for an operation described by `context`,
    /// which prefixes a failure to connect.
    pub async fn client_for(
        &self,
        provider: &str,
        context: &str,
    ) -> Result<Arc<dyn KmsProvider>, Error> {
        self.client(provider).await.map_err(|e| e.context(context))
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
            // OpenBao sets a mount up again when its node is promoted or
            // demoted, so the role read here holds for this instance's life.
            match system.replication_state().await {
                Ok(state) => {
                    self.keys.set_standby(state.is_standby());
                    self.pending.set_standby(state.is_standby());
                }
                Err(err) => {
                    log::warn!("reading the replication state: {err}; caching as on a standby");
                    self.keys.set_standby(true);
                    self.pending.set_standby(true);
                }
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
        self.pending.invalidate(key).await;
        if let Some(provider) = key.strip_prefix(KMS_PREFIX) {
            self.forget_client(provider).await;
        }
    }

    /// Scheduled rotations and retries of failed pushes (`periodic.rs`).
    /// The framework calls it on the active node only.
    async fn periodic(&self) -> Result<(), Error> {
        self.run_periodic().await
    }
}
