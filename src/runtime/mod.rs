//! The plugin runtime: everything between the host and a secrets engine.
//!
//! It speaks go-plugin protocol v5 with AutoMTLS, as Vault and OpenBao
//! launch backend plugins: check the launch environment, listen on a Unix
//! socket behind mutual TLS, print the handshake line, serve `pb.Backend`
//! and go-plugin's services, and exit when the host says so or goes away.

pub mod backend;
pub mod backend_service;
pub mod broker;
pub mod control;
pub mod handshake;
pub mod listener;
pub mod logging;
pub mod proto;
pub mod shutdown;
pub mod storage;
pub mod system_view;
pub mod tls;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Server;

use self::backend::BackendFactory;
use self::handshake::HostEnvironment;
use self::proto::{grpc_health, logical, multiplexing, pb, plugin};
use self::shutdown::Shutdown;

/// go-plugin hosts send and accept messages up to `math.MaxInt32` bytes.
pub const MAX_MESSAGE_SIZE: usize = i32::MAX as usize;

/// How long in-flight calls get to finish once we decide to exit; the host
/// itself waits 2 s after Shutdown before it kills us.
const GRACE: Duration = Duration::from_millis(1500);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Handshake(#[from] handshake::HandshakeError),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error("listening socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the plugin until the host is done with it. Returns the process
/// exit code.
pub fn run(factory: Arc<dyn BackendFactory>) -> i32 {
    logging::init();
    let host = match HostEnvironment::from_env() {
        Ok(host) => host,
        Err(err) => {
            // Plain text: most likely a person ran the binary by hand.
            eprintln!("{err}");
            return 1;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("starting the async runtime: {err}");
            return 1;
        }
    };
    match runtime.block_on(serve(host, factory)) {
        Ok(()) => 0,
        Err(err) => {
            log::error!("plugin failed: {err}");
            1
        }
    }
}

async fn serve(
    host: HostEnvironment,
    factory: Arc<dyn BackendFactory>,
) -> Result<(), RuntimeError> {
    let shutdown = Shutdown::new();
    watch_signals(shutdown.clone())?;

    let identity = tls::PluginIdentity::generate()?;
    let server_tls = Arc::new(tls::server_config(&identity, &host.host_certificate)?);
    let client_tls = Arc::new(tls::client_config(&identity, &host.host_certificate)?);
    let (socket, listener) = listener::bind(&host.socket_dir)?;
    let incoming = listener::accept_tls(listener, server_tls, shutdown.clone());

    let broker = Arc::new(broker::Broker::default());
    let backend = backend_service::BackendService::new(factory, broker.clone(), client_tls);
    let router = Server::builder()
        .add_service(
            pb::backend_server::BackendServer::new(backend)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(plugin::grpc_broker_server::GrpcBrokerServer::new(
            broker::BrokerService::new(broker, shutdown.clone()),
        ))
        .add_service(plugin::grpc_controller_server::GrpcControllerServer::new(
            control::Controller {
                shutdown: shutdown.clone(),
            },
        ))
        .add_service(plugin::grpc_stdio_server::GrpcStdioServer::new(
            control::Stdio,
        ))
        .add_service(grpc_health::health_server::HealthServer::new(
            control::HealthCheck,
        ))
        .add_service(logical::plugin_version_server::PluginVersionServer::new(
            control::Version,
        ))
        .add_service(
            multiplexing::plugin_multiplexing_server::PluginMultiplexingServer::new(
                control::Multiplexing,
            ),
        );

    let line = handshake::handshake_line(&socket.0, &identity.certificate);
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
    }
    log::info!(version = control::plugin_version().as_str(), pid = std::process::id(); "keymgmt plugin started");

    let stopped = shutdown.clone();
    let server =
        router.serve_with_incoming_shutdown(incoming, async move { stopped.triggered().await });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            if let Err(err) = result {
                log::error!("gRPC server stopped: {err}");
            }
        }
        () = async { shutdown.triggered().await; tokio::time::sleep(GRACE).await } => {
            log::debug!("in-flight calls did not finish within the grace period");
        }
    }
    drop(socket);
    log::info!("keymgmt plugin exiting");
    Ok(())
}

/// SIGINT is ignored, as go-plugin does: a Ctrl-C meant for the server's
/// terminal reaches our process group too, and the server decides when we
/// stop. SIGTERM is a request to exit.
fn watch_signals(shutdown: Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => log::debug!("ignoring SIGINT"),
                _ = terminate.recv() => {
                    log::info!("SIGTERM received");
                    shutdown.trigger();
                }
            }
        }
    });
    Ok(())
}
