//! The small services go-plugin and Vault expect besides `pb.Backend`:
//! controller (Shutdown), stdio, health, plugin version and multiplexing.

use std::pin::Pin;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::proto::grpc_health::health_check_response::ServingStatus;
use super::proto::grpc_health::health_server::Health;
use super::proto::grpc_health::{HealthCheckRequest, HealthCheckResponse};
use super::proto::logical;
use super::proto::logical::plugin_version_server::PluginVersion;
use super::proto::multiplexing::plugin_multiplexing_server::PluginMultiplexing;
use super::proto::multiplexing::{MultiplexingSupportRequest, MultiplexingSupportResponse};
use super::proto::plugin;
use super::proto::plugin::grpc_controller_server::GrpcController;
use super::proto::plugin::grpc_stdio_server::GrpcStdio;
use super::shutdown::Shutdown;

/// `plugin.GRPCController`: the host asks us to exit.
pub struct Controller {
    pub shutdown: Shutdown,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _: Request<plugin::Empty>) -> Result<Response<plugin::Empty>, Status> {
        log::debug!("host requested shutdown");
        self.shutdown.trigger();
        Ok(Response::new(plugin::Empty {}))
    }
}

/// `plugin.GRPCStdio`: we never write to stdout after the handshake and
/// stderr goes straight to the host's pipe, so the stream stays empty.
pub struct Stdio;

type StdioStream = Pin<Box<dyn Stream<Item = Result<plugin::StdioData, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = StdioStream;

    async fn stream_stdio(
        &self,
        _: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(Box::pin(futures_util::stream::pending())))
    }
}

/// `grpc.health.v1.Health`: go-plugin checks the service named "plugin".
pub struct HealthCheck;

#[tonic::async_trait]
impl Health for HealthCheck {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match request.into_inner().service.as_str() {
            "" | "plugin" => Ok(Response::new(HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            })),
            other => Err(Status::not_found(format!("unknown service {other:?}"))),
        }
    }
}

/// `logical.PluginVersion`: the crate version, `v`-prefixed semver, which
/// must equal the `-version` given at registration when one is given.
pub struct Version;

pub fn plugin_version() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

#[tonic::async_trait]
impl PluginVersion for Version {
    async fn version(
        &self,
        _: Request<logical::Empty>,
    ) -> Result<Response<logical::VersionReply>, Status> {
        Ok(Response::new(logical::VersionReply {
            plugin_version: plugin_version(),
        }))
    }
}

/// `pluginutil.multiplexing.PluginMultiplexing`: one process serves every
/// mount. The answer must never change between launches (the host leaks
/// processes when it flips).
pub struct Multiplexing;

#[tonic::async_trait]
impl PluginMultiplexing for Multiplexing {
    async fn multiplexing_support(
        &self,
        _: Request<MultiplexingSupportRequest>,
    ) -> Result<Response<MultiplexingSupportResponse>, Status> {
        Ok(Response::new(MultiplexingSupportResponse {
            supported: true,
        }))
    }
}
