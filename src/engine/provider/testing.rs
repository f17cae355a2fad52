//! An in-process provider for the engine's unit tests: it keeps what it
//! is sent and fails on demand, so that the engine's orchestration can be
//! checked without a cloud.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    ImportRequest, ImportSession, KmsProvider, LiveKey, LiveMaterial, LiveVersion, NewId,
    ProviderConfig, ProviderConnector, ProviderError, Target, VersionState,
};

#[derive(Debug, Clone, PartialEq)]
pub struct ImportedVersion {
    pub version: u32,
    pub id: String,
    pub public_key: Option<String>,
    pub public_der: Option<Vec<u8>>,
    pub secret: Vec<u8>,
    pub enabled: bool,
    /// Created outside Vault (drift tests).
    pub foreign: bool,
    /// Scheduled for deletion outside Vault (drift tests).
    pub doomed: bool,
}

#[derive(Default)]
pub struct State {
    /// Provider key name -> versions in import order.
    pub keys: BTreeMap<String, Vec<ImportedVersion>>,
    pub removed: Vec<String>,
    /// Number of upcoming imports that fail, after the provider was
    /// reached (an unavailable service).
    pub fail_imports: u32,
    /// Number of upcoming imports refused before anything reaches the
    /// provider (a missing permission).
    pub deny_imports: u32,
    pub fail_set_enabled: u32,
    pub fail_remove: u32,
    pub fail_connect: bool,
    pub connects: u32,
    /// Finished import sessions, by provider key name.
    pub finished: Vec<String>,
    /// `make_current` calls: provider key name and version.
    pub current: Vec<(String, u32)>,
    pub replicated: Vec<(String, Vec<u32>)>,
    /// `unrecorded` of every `remove` call.
    pub unrecorded: Vec<Vec<u32>>,
    /// What `ImportSession::concurrency` answers (0 stands for 1).
    pub concurrency: usize,
    /// How long each import waits, unlocked, before it lands.
    pub import_delay: Duration,
    pub in_flight: usize,
    /// Import calls so far, and the one (1-based) that is to fail.
    pub import_calls: u32,
    pub fail_import_call: Option<u32>,
    /// Whether removed names stay taken, as Azure's soft delete keeps them.
    pub soft_delete: bool,
    pub max_in_flight: usize,
    /// The provider id applications get when they name a key, where it
    /// was set outside Vault (drift tests); otherwise the version of the
    /// last `make_current`.
    pub current_outside: BTreeMap<String, String>,
    /// How long `name_available` and `concurrency` each take, unlocked.
    pub probe_delay: Duration,
    pub probes_in_flight: usize,
    pub max_probes_in_flight: usize,
    /// Provider key names `concurrency` was asked about.
    pub concurrency_asked: Vec<String>,
}

impl State {
    /// The current provider id of a provider key.
    pub fn current_id(&self, name: &str) -> Option<String> {
        if let Some(id) = self.current_outside.get(name) {
            return Some(id.clone());
        }
        let (_, version) = self.current.iter().rev().find(|(n, _)| n == name)?;
        self.keys
            .get(name)?
            .iter()
            .find(|v| v.version == *version && !v.foreign)
            .map(|v| v.id.clone())
    }
}

#[derive(Clone, Default)]
pub struct TestProvider {
    pub state: Arc<Mutex<State>>,
}

impl TestProvider {
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// A read-only round trip: waits `probe_delay`, counted in flight.
    async fn probe(&self) {
        let delay = {
            let mut state = self.state();
            state.probes_in_flight += 1;
            state.max_probes_in_flight = state.max_probes_in_flight.max(state.probes_in_flight);
            state.probe_delay
        };
        tokio::time::sleep(delay).await;
        self.state().probes_in_flight -= 1;
    }
}

impl ProviderConnector for TestProvider {
    fn connect(&self, _config: &ProviderConfig) -> Result<Arc<dyn KmsProvider>, ProviderError> {
        let mut state = self.state();
        state.connects += 1;
        if state.fail_connect {
            return Err(ProviderError::Config(
                "credentials.tenant_id: injected configuration error".into(),
            ));
        }
        Ok(Arc::new(self.clone()))
    }
}

/// Versions 1.. with the given ids and materials, version 1 disabled (as
/// below `min_enabled_version` 2) and the rest enabled.
pub fn first_disabled<'a>(
    ids: &'a [String],
    materials: &'a [crate::engine::material::KeyMaterial],
) -> Vec<VersionState<'a>> {
    ids.iter()
        .zip(materials)
        .enumerate()
        .map(|(i, (id, material))| VersionState {
            version: i as u32 + 1,
            provider_id: id,
            enabled: i > 0,
            material,
        })
        .collect()
}

fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

struct Session {
    provider: TestProvider,
    target: Target,
    touched: AtomicBool,
}

#[async_trait::async_trait]
impl ImportSession for Session {
    async fn import(&self, request: ImportRequest<'_>) -> Result<String, ProviderError> {
        let delay = {
            let mut state = self.provider.state();
            if take(&mut state.deny_imports) {
                return Err(ProviderError::Permission("injected denial".into()));
            }
            self.touched.store(true, Ordering::SeqCst);
            state.import_calls += 1;
            if take(&mut state.fail_imports) || state.fail_import_call == Some(state.import_calls) {
                return Err(ProviderError::Unavailable("injected import failure".into()));
            }
            state.in_flight += 1;
            state.max_in_flight = state.max_in_flight.max(state.in_flight);
            state.import_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.provider.state();
        state.in_flight -= 1;
        let versions = state.keys.entry(self.target.name.clone()).or_default();
        if let Some(existing) = versions
            .iter()
            .find(|v| v.version == request.version && !v.foreign && !v.doomed)
        {
            return Ok(existing.id.clone());
        }
        let id = format!("{}-v{}", self.target.name, versions.len() + 1);
        versions.push(ImportedVersion {
            version: request.version,
            id: id.clone(),
            public_key: request.material.public_key_pem(),
            public_der: request.material.public_key_der(),
            secret: request.material.as_bytes().to_vec(),
            enabled: request.enabled,
            foreign: false,
            doomed: false,
        });
        Ok(id)
    }

    async fn concurrency(&self, _versions: usize) -> Result<usize, ProviderError> {
        self.provider.probe().await;
        let mut state = self.provider.state();
        state.concurrency_asked.push(self.target.name.clone());
        Ok(state.concurrency.max(1))
    }

    fn touched(&self) -> bool {
        self.touched.load(Ordering::SeqCst)
    }

    async fn finish(self: Box<Self>) {
        self.provider
            .state()
            .finished
            .push(self.target.name.clone());
    }
}

#[async_trait::async_trait]
impl KmsProvider for TestProvider {
    fn begin_import<'a>(&'a self, target: &'a Target) -> Box<dyn ImportSession + 'a> {
        Box::new(Session {
            provider: self.clone(),
            target: target.clone(),
            touched: AtomicBool::new(false),
        })
    }

    async fn make_current(
        &self,
        target: &Target,
        latest: &VersionState<'_>,
    ) -> Result<(), ProviderError> {
        let mut state = self.state();
        state.current_outside.remove(&target.name);
        state.current.push((target.name.clone(), latest.version));
        Ok(())
    }

    async fn set_enabled(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<Vec<NewId>, ProviderError> {
        let mut state = self.state();
        if take(&mut state.fail_set_enabled) {
            return Err(ProviderError::Unavailable(
                "injected set_enabled failure".into(),
            ));
        }
        let stored = state
            .keys
            .get_mut(&target.name)
            .ok_or_else(|| ProviderError::Rejected("no such key".into()))?;
        for wanted in versions {
            let v = stored
                .iter_mut()
                .find(|v| v.id == wanted.provider_id)
                .ok_or_else(|| {
                    ProviderError::Rejected(format!("no version {}", wanted.provider_id))
                })?;
            v.enabled = wanted.enabled;
        }
        Ok(Vec::new())
    }

    async fn name_available(&self, target: &Target) -> Result<bool, ProviderError> {
        self.probe().await;
        let state = self.state();
        Ok(!(state.soft_delete && state.removed.contains(&target.name)))
    }

    async fn remove(
        &self,
        target: &Target,
        _versions: &[VersionState<'_>],
        unrecorded: &[u32],
    ) -> Result<(), ProviderError> {
        let mut state = self.state();
        if take(&mut state.fail_remove) {
            return Err(ProviderError::Unavailable("injected remove failure".into()));
        }
        state.keys.remove(&target.name);
        state.removed.push(target.name.clone());
        state.unrecorded.push(unrecorded.to_vec());
        Ok(())
    }

    async fn inspect(
        &self,
        target: &Target,
        _versions: &[VersionState<'_>],
    ) -> Result<Option<LiveKey>, ProviderError> {
        let state = self.state();
        let Some(stored) = state.keys.get(&target.name) else {
            return Ok(None);
        };
        let versions = stored
            .iter()
            .map(|v| LiveVersion {
                provider_id: v.id.clone(),
                vault_version: (!v.foreign).then_some(v.version),
                enabled: v.enabled && !v.doomed,
                doomed: v.doomed,
                state: match (v.doomed, v.enabled) {
                    (true, _) => "PendingDeletion",
                    (false, true) => "Enabled",
                    (false, false) => "Disabled",
                }
                .into(),
                material: match &v.public_der {
                    Some(der) => LiveMaterial::PublicKey(der.clone()),
                    None => LiveMaterial::Unverifiable("AES material cannot be read".into()),
                },
            })
            .collect();
        Ok(Some(LiveKey {
            versions,
            has_current: true,
            current: state.current_id(&target.name),
            can_make_current: true,
        }))
    }

    async fn disable_foreign(
        &self,
        target: &Target,
        provider_ids: &[String],
    ) -> Result<(), ProviderError> {
        let mut state = self.state();
        let stored = state
            .keys
            .get_mut(&target.name)
            .ok_or_else(|| ProviderError::Rejected("no such key".into()))?;
        for v in stored.iter_mut() {
            if v.foreign && provider_ids.contains(&v.id) {
                v.enabled = false;
            }
        }
        Ok(())
    }

    async fn replicate(
        &self,
        target: &Target,
        versions: &[VersionState<'_>],
    ) -> Result<(), ProviderError> {
        self.state().replicated.push((
            target.name.clone(),
            versions.iter().map(|v| v.version).collect(),
        ));
        Ok(())
    }
}
