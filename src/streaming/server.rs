//! The streaming HTTP server: where the URLs that Exec, Attach and PortForward return lead.
//! Each connection carries one request: its head names a route and a single-use token, then
//! the connection is upgraded (SPDY/3.1, or WebSocket) and handed to a [`Backend`] as
//! transport-neutral channels.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

use super::channels::{ExecIo, ForwardRequest};
use super::http::{self, Rejection, Route};
use super::session::{ExpectedStreams, Session, SessionConfig};
use super::spdy_io;
use super::tokens::{StreamRequest, TokenError, TokenStore};
use super::websocket;

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an exec or attach client may take to open its streams after the upgrade, as
/// Kubernetes' streaming server allows.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 1024;

/// What runs the requests behind the tokens.
pub trait Backend: Send + Sync + 'static {
    /// Runs an exec or attach; `request` is `StreamRequest::Exec` or `StreamRequest::Attach`.
    fn exec_or_attach(&self, request: StreamRequest, io: ExecIo) -> BoxFuture<'static, ()>;
    /// Serves the forwarded connections of one port-forward session into `pod_id`.
    fn port_forward(
        &self,
        pod_id: String,
        requests: mpsc::Receiver<ForwardRequest>,
    ) -> BoxFuture<'static, ()>;
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding the streaming server to {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("streaming TLS: {0}")]
    Tls(String),
}

/// The bound server: hands out URLs; [`StreamingServer::serve`] answers them.
pub struct StreamingServer {
    base_url: String,
    tokens: Arc<TokenStore>,
    listener: std::sync::Mutex<Option<TcpListener>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl StreamingServer {
    /// Binds `address` (port 0: a free port); with `tls` (certificate chain and key, PEM), the
    /// URLs are https.
    pub async fn bind(
        address: &str,
        tls: Option<(&Path, &Path)>,
        token_ttl: Duration,
    ) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServerError::Bind {
                address: address.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            address: address.to_string(),
            source,
        })?;
        let tls = tls.map(|(cert, key)| tls_acceptor(cert, key)).transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(StreamingServer {
            base_url: format!("{scheme}://{}", reachable(local)),
            tokens: Arc::new(TokenStore::with_clock(
                token_ttl,
                super::tokens::MAX_PENDING,
                Arc::new(std::time::Instant::now),
            )),
            listener: std::sync::Mutex::new(Some(listener)),
            tls,
        })
    }

    /// `http://host:port`, as URLs start.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Stores `request` and returns the URL that serves it once.
    pub fn url_for(&self, request: StreamRequest) -> Result<String, TokenError> {
        let route = match &request {
            StreamRequest::Exec { .. } => "exec",
            StreamRequest::Attach { .. } => "attach",
            StreamRequest::PortForward { .. } => "portforward",
        };
        let token = self.tokens.insert(request)?;
        Ok(format!("{}/{route}/{token}", self.base_url))
    }

    /// Starts accepting connections on a task of its own; `backend` serves them.
    /// Later calls do nothing.
    pub fn serve(&self, backend: Arc<dyn Backend>) {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(listener) = listener else {
            return;
        };
        let tokens = self.tokens.clone();
        let tls = self.tls.clone();
        tokio::spawn(accept_loop(listener, tls, tokens, backend));
    }
}

/// The address to put in URLs: a wildcard bind is reached on loopback (kubelet runs on the
/// same node and proxies the stream).
fn reachable(local: SocketAddr) -> String {
    match local {
        SocketAddr::V4(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        SocketAddr::V6(a) if a.ip().is_unspecified() => format!("[::1]:{}", a.port()),
        other => other.to_string(),
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::Tls(format!("reading {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServerError::Tls(format!("reading {}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tokens: Arc<TokenStore>,
    backend: Arc<dyn Backend>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, typically: back off rather than spin.
                tracing::warn!(error = %e, "streaming server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tokens = tokens.clone();
        let backend = backend.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, &tokens, backend).await,
                Some(tls) => match tokio::time::timeout(HEAD_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, &tokens, backend).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

/// One connection: the head, the token, the upgrade, then the backend.
async fn serve_connection<IO>(mut io: IO, tokens: &TokenStore, backend: Arc<dyn Backend>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (head, rest) = match http::read_request_head(&mut io, HEAD_TIMEOUT).await {
        Ok(read) => read,
        Err(e) => {
            if let Some(rejection) = e.rejection() {
                let _ = rejection.write_to(&mut io).await;
            }
            tracing::debug!(error = %e, "streaming request refused");
            return;
        }
    };
    let request = match route_request(&head, tokens) {
        Ok(found) => found,
        Err(rejection) => {
            let _ = rejection.write_to(&mut io).await;
            return;
        }
    };
    let span = match &request {
        StreamRequest::Exec { container_id, .. } => {
            tracing::info_span!("Exec", container_id = %container_id)
        }
        StreamRequest::Attach { container_id, .. } => {
            tracing::info_span!("Attach", container_id = %container_id)
        }
        StreamRequest::PortForward { pod_id, .. } => {
            tracing::info_span!("PortForward", pod_id = %pod_id)
        }
    };
    let served = async {
        if websocket::is_websocket_upgrade(&head) {
            serve_websocket(io, head, rest, request, backend).await
        } else {
            serve_spdy(io, &head, rest, request, backend).await
        }
    };
    if let Err(rejection) = served.instrument(span.clone()).await {
        tracing::debug!(parent: &span, status = rejection.status, "upgrade refused");
    }
}

/// The request behind the URL's token, if the token is good and was issued for this route.
fn route_request(
    head: &http::RequestHead,
    tokens: &TokenStore,
) -> Result<StreamRequest, Rejection> {
    let (route, token) = http::route(head)?;
    let request = tokens.take(token).ok_or_else(Rejection::not_found)?;
    let matches = matches!(
        (route, &request),
        (Route::Exec, StreamRequest::Exec { .. })
            | (Route::Attach, StreamRequest::Attach { .. })
            | (Route::PortForward, StreamRequest::PortForward { .. })
    );
    if !matches {
        return Err(Rejection::not_found());
    }
    Ok(request)
}

fn route_of(request: &StreamRequest) -> Route {
    match request {
        StreamRequest::Exec { .. } => Route::Exec,
        StreamRequest::Attach { .. } => Route::Attach,
        StreamRequest::PortForward { .. } => Route::PortForward,
    }
}

/// Which streams an exec or attach client opens, from what its CRI request said.
fn expected_streams(protocol: &str, request: &StreamRequest) -> ExpectedStreams {
    match request {
        StreamRequest::Exec {
            tty,
            stdin,
            stdout,
            stderr,
            ..
        }
        | StreamRequest::Attach {
            tty,
            stdin,
            stdout,
            stderr,
            ..
        } => ExpectedStreams::new(protocol, *stdin, *stdout, *stderr, *tty),
        StreamRequest::PortForward { .. } => ExpectedStreams::default(),
    }
}

async fn serve_spdy<IO>(
    mut io: IO,
    head: &http::RequestHead,
    rest: bytes::BytesMut,
    request: StreamRequest,
    backend: Arc<dyn Backend>,
) -> Result<(), Rejection>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let protocol = match http::handshake(head, route_of(&request).protocols()) {
        Ok(protocol) => protocol,
        Err(rejection) => {
            let _ = rejection.write_to(&mut io).await;
            return Err(rejection);
        }
    };
    if io
        .write_all(&http::switching_protocols(protocol))
        .await
        .is_err()
    {
        return Ok(());
    }
    let session = Session::new(io, rest, SessionConfig::default());
    match request {
        StreamRequest::PortForward { pod_id, .. } => {
            let (requests, driver) = spdy_io::forward_requests(session);
            backend.port_forward(pod_id, requests).await;
            let _ = driver.await;
        }
        request => {
            let expected = expected_streams(protocol, &request);
            match spdy_io::exec_io(session, protocol, expected, STREAM_CREATION_TIMEOUT).await {
                Ok((exec_io, driver)) => {
                    backend.exec_or_attach(request, exec_io).await;
                    let _ = driver.await;
                }
                Err(e) => tracing::info!(error = %e, "the client did not open its streams"),
            }
        }
    }
    Ok(())
}

async fn serve_websocket<IO>(
    mut io: IO,
    head: http::RequestHead,
    rest: bytes::BytesMut,
    request: StreamRequest,
    backend: Arc<dyn Backend>,
) -> Result<(), Rejection>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let supported = match request {
        StreamRequest::PortForward { .. } => websocket::PORT_FORWARD_PROTOCOLS,
        _ => websocket::EXEC_PROTOCOLS,
    };
    let accepted = websocket::handshake(&head, supported).and_then(|(protocol, answer)| {
        // Channel port-forward names its ports in the query (the CRI request's when it
        // names none); a tunnel carries them in SPDY stream headers.
        let ports = match &request {
            StreamRequest::PortForward { ports, .. } if !websocket::is_tunnel(protocol) => {
                let query = head.query_pairs();
                if query.iter().any(|(name, _)| name == "port") {
                    websocket::parse_ports(&query)?
                } else {
                    ports.clone()
                }
            }
            _ => Vec::new(),
        };
        Ok((protocol, answer, ports))
    });
    let (protocol, answer, ports) = match accepted {
        Ok(accepted) => accepted,
        Err(rejection) => {
            let _ = rejection.write_to(&mut io).await;
            return Err(rejection);
        }
    };
    if io.write_all(&answer).await.is_err() {
        return Ok(());
    }
    match request {
        StreamRequest::PortForward { pod_id, .. } if websocket::is_tunnel(protocol) => {
            let (tunnel, pump) = websocket::tunnel(io, rest);
            let session = Session::new(tunnel, bytes::BytesMut::new(), SessionConfig::default());
            let (requests, driver) = spdy_io::forward_requests(session);
            backend.port_forward(pod_id, requests).await;
            let _ = driver.await;
            let _ = pump.await;
        }
        StreamRequest::PortForward { pod_id, .. } => {
            let (requests, driver) = websocket::forward_channels(io, rest, protocol, ports);
            backend.port_forward(pod_id, requests).await;
            let _ = driver.await;
        }
        request => {
            // Every WebSocket protocol has the resize channel.
            let mut expected = expected_streams(protocol, &request);
            expected.resize = matches!(
                request,
                StreamRequest::Exec { tty: true, .. } | StreamRequest::Attach { tty: true, .. }
            );
            let (exec_io, driver) = websocket::exec_io(io, rest, protocol, expected);
            backend.exec_or_attach(request, exec_io).await;
            let _ = driver.await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_reached_on_loopback() {
        assert_eq!(reachable("0.0.0.0:1234".parse().unwrap()), "127.0.0.1:1234");
        assert_eq!(reachable("[::]:99".parse().unwrap()), "[::1]:99");
        assert_eq!(reachable("10.0.0.2:7".parse().unwrap()), "10.0.0.2:7");
    }
}
