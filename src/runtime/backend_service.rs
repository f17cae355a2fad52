//! `pb.Backend`: routes each host call to the mount it is for.
//!
//! With multiplexing on, one process serves every mount of the plugin and
//! the host tags each Backend call with gRPC metadata `multiplex_id`; each
//! id gets its own backend instance and brokered connection from Setup.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::RwLock;
use tonic::{Request, Response, Status};

use super::backend::{BackendConfig, BackendFactory, LogicalBackend};
use super::broker::{self, Broker};
use super::proto::pb;
use super::proto::pb::backend_server::Backend;
use super::storage::GrpcStorage;
use super::system_view::GrpcSystemView;

const MULTIPLEX_ID: &str = "multiplex_id";
/// Vault's TypeLogical: a secrets engine.
const TYPE_LOGICAL: u32 = 1;

pub struct BackendService {
    factory: Arc<dyn BackendFactory>,
    broker: Arc<Broker>,
    tls: Arc<rustls::ClientConfig>,
    instances: RwLock<HashMap<String, Arc<dyn LogicalBackend>>>,
}

impl BackendService {
    pub fn new(
        factory: Arc<dyn BackendFactory>,
        broker: Arc<Broker>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            factory,
            broker,
            tls,
            instances: RwLock::default(),
        }
    }

    /// The multiplex id of a call; hosts that do not multiplex send none.
    fn mount_id<T>(request: &Request<T>) -> String {
        request
            .metadata()
            .get(MULTIPLEX_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    async fn instance<T>(&self, request: &Request<T>) -> Result<Arc<dyn LogicalBackend>, Status> {
        let id = Self::mount_id(request);
        self.instances
            .read()
            .await
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(format!("no backend is set up for multiplex id {id:?}"))
            })
    }

    async fn setup(&self, id: &str, args: pb::SetupArgs) -> Result<(), String> {
        let announced = self
            .broker
            .wait_for(args.broker_id)
            .await
            .map_err(|e| e.to_string())?;
        let channel = broker::dial(&announced, self.tls.clone())
            .await
            .map_err(|e| e.to_string())?;
        let backend = self.factory.create(BackendConfig {
            storage: Arc::new(GrpcStorage::new(channel.clone())),
            system: Arc::new(GrpcSystemView::new(channel)),
            config: args.config,
            backend_uuid: args.backend_uuid,
        })?;
        if let Some(previous) = self.instances.write().await.insert(id.to_owned(), backend) {
            previous.cleanup().await;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Backend for BackendService {
    async fn setup(
        &self,
        request: Request<pb::SetupArgs>,
    ) -> Result<Response<pb::SetupReply>, Status> {
        let id = Self::mount_id(&request);
        let args = request.into_inner();
        let mount = args.config.get("plugin_name").cloned().unwrap_or_default();
        let err = match self.setup(&id, args).await {
            Ok(()) => {
                log::debug!(multiplex_id = id.as_str(), plugin_name = mount.as_str(); "backend set up");
                String::new()
            }
            Err(err) => {
                log::error!(multiplex_id = id.as_str(); "backend setup failed: {err}");
                err
            }
        };
        Ok(Response::new(pb::SetupReply { err }))
    }

    async fn initialize(
        &self,
        request: Request<pb::InitializeArgs>,
    ) -> Result<Response<pb::InitializeReply>, Status> {
        let backend = self.instance(&request).await?;
        let err = backend.initialize().await.err().map(|msg| pb::ProtoError {
            err_type: 0,
            err_msg: msg,
            err_code: 0,
        });
        Ok(Response::new(pb::InitializeReply { err }))
    }

    async fn handle_request(
        &self,
        request: Request<pb::HandleRequestArgs>,
    ) -> Result<Response<pb::HandleRequestReply>, Status> {
        let backend = self.instance(&request).await?;
        let Some(inner) = request.into_inner().request else {
            return Err(Status::invalid_argument("HandleRequest without a request"));
        };
        Ok(Response::new(backend.handle_request(inner).await))
    }

    async fn handle_existence_check(
        &self,
        request: Request<pb::HandleExistenceCheckArgs>,
    ) -> Result<Response<pb::HandleExistenceCheckReply>, Status> {
        let backend = self.instance(&request).await?;
        let Some(inner) = request.into_inner().request else {
            return Err(Status::invalid_argument(
                "HandleExistenceCheck without a request",
            ));
        };
        Ok(Response::new(backend.existence_check(inner).await))
    }

    async fn special_paths(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::SpecialPathsReply>, Status> {
        let backend = self.instance(&request).await?;
        Ok(Response::new(pb::SpecialPathsReply {
            paths: Some(backend.special_paths()),
        }))
    }

    async fn cleanup(&self, request: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        let id = Self::mount_id(&request);
        // The host may send Cleanup twice for one mount (seen on disable).
        let removed = self.instances.write().await.remove(&id);
        if let Some(backend) = removed {
            backend.cleanup().await;
            log::debug!(multiplex_id = id.as_str(); "backend cleaned up");
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn invalidate_key(
        &self,
        request: Request<pb::InvalidateKeyArgs>,
    ) -> Result<Response<pb::Empty>, Status> {
        let backend = self.instance(&request).await?;
        backend.invalidate(&request.into_inner().key).await;
        Ok(Response::new(pb::Empty {}))
    }

    async fn r#type(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::TypeReply>, Status> {
        Ok(Response::new(pb::TypeReply {
            r#type: TYPE_LOGICAL,
        }))
    }
}
