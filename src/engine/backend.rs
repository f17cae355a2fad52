//! The keymgmt backend: the list of its paths around one mount's state.

use std::sync::Arc;

use super::keys::KEY_PREFIX;
use super::kms::KMS_PREFIX;
use super::provider::client::process_env;
use super::provider::{ProviderConnector, RegistryConnector};
use super::settings::Settings;
use super::state::KeyManagement;
use super::{path_distribution, path_keys, path_kms};
use crate::framework::{Backend, BackendInfo, Path};
use crate::runtime::backend::{BackendConfig, BackendFactory, LogicalBackend};
use crate::runtime::proto::pb;
use crate::runtime::storage::Storage;

const INFO: BackendInfo = BackendInfo {
    title: "Key Management secrets engine",
    help: "\
The Key Management secrets engine generates and owns keys, distributes copies of them to \
KMS providers through each provider's secure key import specification, and manages their \
lifecycle there: rotation, enabling and disabling versions, and removal.",
};

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

pub(super) fn framework_backend(engine: KeyManagement) -> Backend<KeyManagement> {
    let special = pb::Paths {
        // Key material and provider credentials get seal wrapping where
        // the server offers it (Vault Enterprise; OpenBao has none).
        seal_wrap_storage: vec![KEY_PREFIX.to_owned(), KMS_PREFIX.to_owned()],
        ..Default::default()
    };
    Backend::new(Arc::new(engine), paths(), INFO, special)
}

/// The factory the runtime calls for each mount.
pub struct Factory;

impl BackendFactory for Factory {
    fn create(&self, config: BackendConfig) -> Result<Arc<dyn LogicalBackend>, String> {
        let settings = Settings::from_env(&process_env)?;
        let engine = KeyManagement::new(config.storage, Arc::new(RegistryConnector))
            .with_settings(settings)
            .with_system(config.system.clone());
        Ok(Arc::new(
            framework_backend(engine).with_system(config.system),
        ))
    }
}
