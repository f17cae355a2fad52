//! The Unix socket the host dials, and the TLS connections accepted on it.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::shutdown::Shutdown;

/// The path of our listening socket, unlinked when dropped so a stopped
/// plugin leaves nothing behind in the temp directory.
pub struct SocketPath(pub PathBuf);

/// Binds `<dir>/plugin<random>`, as go-plugin names its sockets.
pub fn bind(dir: &Path) -> io::Result<(SocketPath, UnixListener)> {
    for _ in 0..16 {
        let path = dir.join(format!("plugin{}", rand::random::<u32>()));
        match UnixListener::bind(&path) {
            Ok(listener) => return Ok((SocketPath(path), listener)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free socket name",
    ))
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Counts live host connections; when the last one closes, the host is
/// gone and the process should exit.
#[derive(Clone)]
struct ConnectionCount {
    live: Arc<AtomicUsize>,
    shutdown: Shutdown,
}

/// An accepted, authenticated connection from the host.
pub struct HostConnection {
    stream: TlsStream<UnixStream>,
    count: ConnectionCount,
}

impl Drop for HostConnection {
    fn drop(&mut self) {
        if self.count.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            log::debug!("last host connection closed");
            self.count.shutdown.trigger();
        }
    }
}

impl tonic::transport::server::Connected for HostConnection {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for HostConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for HostConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections and completes each TLS handshake in its own task,
/// so one slow or hostile peer cannot hold up the others.
pub fn accept_tls(
    listener: UnixListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: Shutdown,
) -> ReceiverStream<io::Result<HostConnection>> {
    let (sender, receiver) = mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let count = ConnectionCount {
        live: Arc::default(),
        shutdown,
    };
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::error!("accepting a host connection: {e}");
                    continue;
                }
            };
            let (acceptor, sender, count) = (acceptor.clone(), sender.clone(), count.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(stream) => {
                        count.live.fetch_add(1, Ordering::SeqCst);
                        let _ = sender.send(Ok(HostConnection { stream, count })).await;
                    }
                    Err(e) => log::warn!("TLS handshake with the host failed: {e}"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
