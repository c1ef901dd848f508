//! Port forwarding: each connection a client asks for is a TCP connection to localhost:<port>
//! inside the pod's network namespace. The socket is created by a short-lived thread that
//! entered the namespace (a socket stays in the namespace it was made in); connecting and
//! copying then happen on the runtime like any other socket.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Sandboxes;
use super::record::SandboxState;
use crate::error::{Error, Result};
use crate::streaming::channels::ForwardRequest;

impl Sandboxes {
    /// The check PortForward makes before handing out a URL: the pod exists and is ready.
    pub fn require_ready(&self, id: &str) -> Result<()> {
        let record = self.get(id)?.ok_or_else(|| Error::NotFound {
            kind: "pod sandbox",
            id: id.to_string(),
        })?;
        if record.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {id} is not ready"
            )));
        }
        Ok(())
    }

    /// Serves every connection of one port-forward session into pod `id`, until the client's
    /// session ends; then the connections still open are closed.
    pub async fn port_forward(&self, id: &str, mut requests: mpsc::Receiver<ForwardRequest>) {
        // None: the pod shares the host's network namespace.
        let netns = match self.get(id) {
            Ok(Some(record)) if record.state == SandboxState::Ready => record.netns,
            Ok(_) => {
                fail_all(&mut requests, &format!("pod sandbox {id} is not ready")).await;
                return;
            }
            Err(e) => {
                fail_all(&mut requests, &e.to_string()).await;
                return;
            }
        };
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => {
                        connections.spawn(forward(netns.clone(), request));
                    }
                    // The session is over: dropping the set closes what is left.
                    None => return,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

async fn fail_all(requests: &mut mpsc::Receiver<ForwardRequest>, message: &str) {
    while let Some(request) = requests.recv().await {
        let _ = request.error.send(message.to_string());
    }
}

/// One forwarded connection, copied both ways until both sides are done.
async fn forward(netns: Option<PathBuf>, request: ForwardRequest) {
    let ForwardRequest {
        port,
        mut from_client,
        to_client,
        error,
    } = request;
    let stream = match connect(netns.as_deref(), port).await {
        Ok(stream) => stream,
        Err(e) => {
            let place = netns.as_ref().map_or("the host network".to_string(), |p| {
                format!("network namespace {}", p.display())
            });
            let message = format!("failed to connect to localhost:{port} inside {place}: {e}");
            tracing::info!(port, error = %e, "port-forward connection failed");
            let _ = error.send(message);
            return;
        }
    };
    let (mut reader, mut writer) = stream.into_split();
    let upstream = async move {
        while let Some(chunk) = from_client.recv().await {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The client half-closed: so do we, and the server still answers.
        let _ = writer.shutdown().await;
    };
    let downstream = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to_client
                        .send(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    // The server closing its side ends the connection; the client closing its side only
    // half-closes it, and the server's answer still comes back.
    tokio::pin!(downstream);
    tokio::select! {
        _ = &mut downstream => {}
        _ = upstream => downstream.await,
    }
    drop(error);
}

/// A TCP connection to localhost:`port` in `netns` (IPv4 first, then IPv6).
async fn connect(netns: Option<&Path>, port: u16) -> std::io::Result<TcpStream> {
    let (v4, v6) = sockets_in(netns).await?;
    let v4_target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let first = match v4 {
        Some(socket) => socket.connect(v4_target).await,
        None => Err(std::io::Error::from(std::io::ErrorKind::Unsupported)),
    };
    match (first, v6) {
        (Ok(stream), _) => Ok(stream),
        (Err(e), Some(v6)) => v6
            .connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
            .await
            .map_err(|_| e),
        (Err(e), None) => Err(e),
    }
}

/// An unconnected IPv4 and IPv6 TCP socket made inside `netns`.
async fn sockets_in(
    netns: Option<&Path>,
) -> std::io::Result<(Option<TcpSocket>, Option<TcpSocket>)> {
    let Some(netns) = netns else {
        return Ok((TcpSocket::new_v4().ok(), TcpSocket::new_v6().ok()));
    };
    let netns = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // setns changes only the calling thread, which ends right after: no runtime thread ever
    // runs in the pod's namespace.
    std::thread::Builder::new()
        .name("crius-netns".into())
        .spawn(move || {
            let _ = tx.send(make_sockets(&netns));
        })?;
    let (v4, v6) = rx
        .await
        .map_err(|_| std::io::Error::other("the namespace thread died"))??;
    let wrap = |fd: Option<OwnedFd>| {
        fd.map(|fd| TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
    };
    Ok((wrap(v4), wrap(v6)))
}

fn make_sockets(netns: &Path) -> std::io::Result<(Option<OwnedFd>, Option<OwnedFd>)> {
    let ns = std::fs::File::open(netns)?;
    nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    let make = |family| {
        socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .ok()
    };
    let v4 = make(AddressFamily::Inet);
    let v6 = make(AddressFamily::Inet6);
    if v4.is_none() && v6.is_none() {
        return Err(std::io::Error::other("cannot create a socket in the pod"));
    }
    Ok((v4, v6))
}
