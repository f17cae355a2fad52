//! An in-process provider for unit tests: it keeps what it is sent and
//! fails on demand, so the engine's orchestration can be checked without a
//! cloud.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{KmsProvider, ProviderConfig, ProviderConnector, ProviderError, Target, VersionState};
use crate::engine::material::KeyMaterial;

#[derive(Debug, Clone, PartialEq)]
pub struct ImportedVersion {
    pub version: u32,
    pub id: String,
    pub public_key: Option<String>,
    pub secret: Vec<u8>,
    pub enabled: bool,
}

#[derive(Default)]
pub struct State {
    /// Provider key name -> versions in import order.
    pub keys: BTreeMap<String, Vec<ImportedVersion>>,
    pub removed: Vec<String>,
    /// Number of upcoming imports that fail.
    pub fail_imports: u32,
    pub fail_set_enabled: u32,
    pub fail_remove: u32,
    pub connects: u32,
    /// `finish_imports` calls, by provider key name.
    pub finished: Vec<String>,
}

#[derive(Clone, Default)]
pub struct TestProvider {
    pub state: Arc<Mutex<State>>,
}

impl TestProvider {
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl ProviderConnector for TestProvider {
    fn connect(&self, _config: &ProviderConfig) -> Result<Arc<dyn KmsProvider>, ProviderError> {
        self.state().connects += 1;
        Ok(Arc::new(self.clone()))
    }
}

fn take(counter: &mut u32) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

#[async_trait::async_trait]
impl KmsProvider for TestProvider {
    async fn import_version(
        &self,
        target: &Target,
        version: u32,
        material: &KeyMaterial,
    ) -> Result<String, ProviderError> {
        let mut state = self.state();
        if take(&mut state.fail_imports) {
            return Err(ProviderError::Unavailable("injected import failure".into()));
        }
        let versions = state.keys.entry(target.name.clone()).or_default();
        let id = format!("{}-v{}", target.name, versions.len() + 1);
        versions.push(ImportedVersion {
            version,
            id: id.clone(),
            public_key: material.public_key_pem(),
            secret: material.as_bytes().to_vec(),
            enabled: true,
        });
        Ok(id)
    }

    async fn finish_imports(&self, target: &Target) {
        self.state().finished.push(target.name.clone());
    }

    async fn set_enabled(
        &self,
        target: &Target,
        versions: &[VersionState],
    ) -> Result<(), ProviderError> {
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
        Ok(())
    }

    async fn remove(
        &self,
        target: &Target,
        _versions: &[VersionState],
    ) -> Result<(), ProviderError> {
        let mut state = self.state();
        if take(&mut state.fail_remove) {
            return Err(ProviderError::Unavailable("injected remove failure".into()));
        }
        state.keys.remove(&target.name);
        state.removed.push(target.name.clone());
        Ok(())
    }
}
