//! The contract between the plugin runtime and a secrets engine.

use std::collections::HashMap;
use std::sync::Arc;

use super::proto::pb;
use super::storage::Storage;
use super::system_view::SystemView;

/// What a mount's backend instance is given when the host sets it up.
pub struct BackendConfig {
    pub storage: Arc<dyn Storage>,
    pub system: Arc<dyn SystemView>,
    /// Mount options plus `plugin_name`, `plugin_type`, `plugin_version`.
    pub config: HashMap<String, String>,
    pub backend_uuid: String,
}

/// One mount's backend. The runtime owns protocol concerns (instances per
/// multiplex id, the broker, TLS); the backend owns request semantics.
#[async_trait::async_trait]
pub trait LogicalBackend: Send + Sync {
    async fn handle_request(&self, request: pb::Request) -> pb::HandleRequestReply;
    async fn existence_check(&self, request: pb::Request) -> pb::HandleExistenceCheckReply;
    fn special_paths(&self) -> pb::Paths;
    /// Runs once storage is usable (storage must not be touched in Setup).
    async fn initialize(&self) -> Result<(), String>;
    /// The mount is going away (unmount, seal, reload).
    async fn cleanup(&self);
    /// Another node changed `key` in storage; drop anything cached for it.
    async fn invalidate(&self, key: &str);
}

/// Makes one backend instance per mount.
pub trait BackendFactory: Send + Sync + 'static {
    fn create(&self, config: BackendConfig) -> Result<Arc<dyn LogicalBackend>, String>;
}
