//! The host's SystemView: facts about the server and the mount.

use tonic::transport::Channel;

use super::proto::pb;
use super::proto::pb::system_view_client::SystemViewClient;

#[derive(Debug, thiserror::Error)]
#[error("system view: {0}")]
pub struct SystemViewError(String);

/// The subset of the host's SystemView this plugin uses.
#[async_trait::async_trait]
pub trait SystemView: Send + Sync {
    /// The server's version, e.g. `2.7.2`.
    async fn server_version(&self) -> Result<String, SystemViewError>;
}

/// SystemView served by the host on the brokered connection.
pub struct GrpcSystemView {
    client: SystemViewClient<Channel>,
}

impl GrpcSystemView {
    pub fn new(channel: Channel) -> Self {
        Self {
            client: SystemViewClient::new(channel),
        }
    }
}

#[async_trait::async_trait]
impl SystemView for GrpcSystemView {
    async fn server_version(&self) -> Result<String, SystemViewError> {
        let reply = self
            .client
            .clone()
            .plugin_env(pb::Empty {})
            .await
            .map_err(|s| SystemViewError(s.message().to_owned()))?
            .into_inner();
        if !reply.err.is_empty() {
            return Err(SystemViewError(reply.err));
        }
        Ok(reply
            .plugin_environment
            .map(|e| e.vault_version)
            .unwrap_or_default())
    }
}
