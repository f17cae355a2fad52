//! The host's SystemView: facts about the server and the mount.

use tonic::transport::Channel;

use super::proto::pb;
use super::proto::pb::system_view_client::SystemViewClient;

#[derive(Debug, thiserror::Error)]
#[error("system view: {0}")]
pub struct SystemViewError(String);

/// The node's replication state, a bit set (Vault's
/// `consts.ReplicationState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationState(pub u32);

impl ReplicationState {
    /// `PerformanceStandby`: an HA standby that serves reads. Observed on
    /// OpenBao 2.7.2: 24576 on a standby, 8224 on the active node, 12288 on
    /// a server without HA.
    pub const PERFORMANCE_STANDBY: u32 = 1 << 14;

    /// Whether this node may not write storage: writes must be forwarded
    /// to the active node before any work is done.
    pub fn is_standby(self) -> bool {
        self.0 & Self::PERFORMANCE_STANDBY != 0
    }
}

/// The subset of the host's SystemView this plugin uses.
#[async_trait::async_trait]
pub trait SystemView: Send + Sync {
    /// The server's version, e.g. `2.7.2`.
    async fn server_version(&self) -> Result<String, SystemViewError>;

    /// This node's replication state, read from the host on every call: it
    /// changes when the node is promoted or demoted.
    async fn replication_state(&self) -> Result<ReplicationState, SystemViewError>;
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

    async fn replication_state(&self) -> Result<ReplicationState, SystemViewError> {
        let reply = self
            .client
            .clone()
            .replication_state(pb::Empty {})
            .await
            .map_err(|s| SystemViewError(s.message().to_owned()))?
            .into_inner();
        Ok(ReplicationState(u32::try_from(reply.state).unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_bit_matches_observed_states() {
        assert!(ReplicationState(24576).is_standby());
        assert!(!ReplicationState(8224).is_standby());
        assert!(!ReplicationState(12288).is_standby());
        assert!(!ReplicationState(0).is_standby());
    }
}
