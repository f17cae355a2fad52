//! go-plugin's connection broker, plugin side.
//!
//! For each mount the host opens a listener serving Storage and SystemView,
//! announces it with a `ConnInfo` on the `StartStream` stream, and passes
//! the same id as `broker_id` in `Setup`. The two race (either may come
//! first), so announcements are buffered by id until Setup claims them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use super::proto::plugin::ConnInfo;
use super::proto::plugin::grpc_broker_server::GrpcBroker;
use super::shutdown::Shutdown;

/// How long Setup waits for the host's announcement (go-plugin uses 5 s).
const ANNOUNCEMENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the host did not announce broker connection {0} within 5 s")]
    NotAnnounced(u32),
    #[error("the host announced an unsupported network {0:?}")]
    UnsupportedNetwork(String),
    #[error("dialing the host's broker connection: {0}")]
    Dial(#[from] tonic::transport::Error),
}

/// Connection announcements received from the host, by service id.
#[derive(Default)]
pub struct Broker {
    announced: Mutex<HashMap<u32, ConnInfo>>,
    arrived: Notify,
}

impl Broker {
    fn announce(&self, info: ConnInfo) {
        if let Ok(mut announced) = self.announced.lock() {
            announced.insert(info.service_id, info);
        }
        self.arrived.notify_waiters();
    }

    fn claim(&self, id: u32) -> Option<ConnInfo> {
        self.announced.lock().ok()?.remove(&id)
    }

    /// Waits for the announcement of `id` and removes it from the buffer.
    pub async fn wait_for(&self, id: u32) -> Result<ConnInfo, BrokerError> {
        self.wait_within(id, ANNOUNCEMENT_TIMEOUT).await
    }

    async fn wait_within(&self, id: u32, timeout: Duration) -> Result<ConnInfo, BrokerError> {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                if let Some(info) = self.claim(id) {
                    return info;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| BrokerError::NotAnnounced(id))
    }
}

/// Dials an announced connection with the pinned mutual TLS.
pub async fn dial(info: &ConnInfo, tls: Arc<rustls::ClientConfig>) -> Result<Channel, BrokerError> {
    let network = info.network.clone();
    if network != "unix" && network != "tcp" {
        return Err(BrokerError::UnsupportedNetwork(network));
    }
    let address = info.address.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (network, address, tls) = (network.clone(), address.clone(), tls.clone());
        async move {
            let name = rustls::pki_types::ServerName::try_from("localhost")
                .map_err(std::io::Error::other)?;
            let connector = tokio_rustls::TlsConnector::from(tls);
            let stream: Box<dyn HostIo> = if network == "unix" {
                Box::new(
                    connector
                        .connect(name, tokio::net::UnixStream::connect(&address).await?)
                        .await?,
                )
            } else {
                Box::new(
                    connector
                        .connect(name, tokio::net::TcpStream::connect(&address).await?)
                        .await?,
                )
            };
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is only a placeholder: the connector decides where to go.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await?;
    Ok(channel)
}

/// An established TLS stream to the host over either network.
trait HostIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> HostIo for T {}

/// The `plugin.GRPCBroker` service.
pub struct BrokerService {
    broker: Arc<Broker>,
    shutdown: Shutdown,
}

impl BrokerService {
    pub fn new(broker: Arc<Broker>, shutdown: Shutdown) -> Self {
        Self { broker, shutdown }
    }
}

type ConnInfoStream = Pin<Box<dyn Stream<Item = Result<ConnInfo, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcBroker for BrokerService {
    type StartStreamStream = ConnInfoStream;

    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let broker = self.broker.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            while let Ok(Some(info)) = inbound.message().await {
                broker.announce(info);
            }
            // The host holds this stream for as long as it holds us; when it
            // ends, the host is gone (or killing us) and nobody will send
            // Shutdown, so exit rather than linger as an orphan.
            log::info!("host closed the broker stream; exiting");
            shutdown.trigger();
        });
        // We offer no services to the host, so our side only stays open.
        let outbound = futures_util::stream::pending();
        Ok(Response::new(Box::pin(outbound)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u32) -> ConnInfo {
        ConnInfo {
            service_id: id,
            network: "unix".into(),
            address: format!("/tmp/p{id}"),
            knock: None,
        }
    }

    #[tokio::test]
    async fn announcement_before_or_after_the_claim() {
        let broker = Arc::new(Broker::default());
        broker.announce(info(1));
        assert_eq!(broker.wait_for(1).await.unwrap().address, "/tmp/p1");
        let waiter = {
            let broker = broker.clone();
            tokio::spawn(async move { broker.wait_for(2).await })
        };
        tokio::task::yield_now().await;
        broker.announce(info(3));
        broker.announce(info(2));
        assert_eq!(waiter.await.unwrap().unwrap().address, "/tmp/p2");
        assert_eq!(broker.claim(3).unwrap().service_id, 3);
    }

    #[tokio::test]
    async fn a_missing_announcement_times_out() {
        let broker = Broker::default();
        assert!(matches!(
            broker.wait_within(7, Duration::from_millis(20)).await,
            Err(BrokerError::NotAnnounced(7))
        ));
    }
}
