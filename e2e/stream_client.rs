//! Clients for Kubernetes' streaming protocols, speaking them the way Kubernetes' own clients
//! do, so that the e2e tests exercise crius's streaming server as kubelet, kubectl and crictl
//! would:
//!
//! - SPDY/3.1 exec and attach as client-go's SPDY executor (`remotecommand` v1 to v5),
//! - SPDY/3.1 port-forward as client-go's `PortForwarder`, also tunneled over a WebSocket as
//!   crictl's `--transport=websocket` port-forward does,
//! - WebSocket exec and attach as client-go's WebSocket executor (crictl
//!   `--transport=websocket`), and the channel-based WebSocket port-forward kubelet serves.
//!
//! Behaviour was checked against client-go v1.32 (tools/remotecommand, tools/portforward,
//! apimachinery's httpstream) and moby/spdystream; the notes on each item say which part of
//! it is mirrored.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use crius::streaming::spdy::{Codec, FLAG_FIN, Frame, status};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// What client-go's SPDY executor offers (`NewSPDYExecutor`, as crictl and kubectl use it),
/// most preferred first, one `X-Stream-Protocol-Version` header line each.
pub const SPDY_EXEC_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The only port-forward protocol client-go's port-forwarder offers and accepts.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// What client-go's WebSocket executor offers by default (`NewWebSocketExecutor`).
pub const WS_EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io"];
/// The channel protocols kubelet's WebSocket port-forward accepts, binary first.
pub const WS_PORT_FORWARD_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];
/// crictl's `--transport=websocket` port-forward: SPDY frames inside binary WebSocket messages.
pub const WS_TUNNEL_PORT_FORWARD_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// client-go waits this long for each SYN_REPLY (`createStreamResponseTimeout`).
pub const CREATE_STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Go's `io.Copy` reads 32 KiB at a time and spdystream sends one DATA frame per write, as
/// client-go's WebSocket streams send one message per write.
const WRITE_CHUNK: usize = 32 * 1024;
/// Bounds on a refusal's head and body, so a broken server cannot make a test buffer forever.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

// WebSocket channel numbers (apimachinery's util/remotecommand).
pub const CHANNEL_STDIN: u8 = 0;
pub const CHANNEL_STDOUT: u8 = 1;
pub const CHANNEL_STDERR: u8 = 2;
pub const CHANNEL_ERROR: u8 = 3;
pub const CHANNEL_RESIZE: u8 = 4;
/// v5's half-close message: `[255, channel]`.
pub const CHANNEL_CLOSE: u8 = 255;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered the upgrade request with something other than a switch to the
    /// protocol (e.g. 404 for an unknown or used token).
    #[error("upgrade refused: HTTP {status}: {body}")]
    Refused {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("stream {id} was reset with status {status}")]
    Reset { id: u32, status: u32 },
    #[error("the connection is closed")]
    Closed,
    #[error("websocket: {0}")]
    WebSocket(String),
}

impl ClientError {
    /// The HTTP status of a refused upgrade.
    pub fn refused_status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

type Result<T, E = ClientError> = std::result::Result<T, E>;

/// `http://host:port/path?query` (or `ws://`) split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUrl {
    pub authority: String,
    /// Path and query, as sent on the request line.
    pub target: String,
}

pub fn parse_url(url: &str) -> Result<StreamUrl> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| ClientError::Protocol(format!("not an http:// or ws:// URL: {url}")))?;
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() {
        return Err(ClientError::Protocol(format!("no host in {url}")));
    }
    Ok(StreamUrl {
        authority: authority.to_string(),
        target,
    })
}

/// What an exec or attach asks for; must match the CRI request the URL was issued for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// How the remote command ended, as client-go's error-stream decoders report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    Success,
    /// v4/v5 `NonZeroExitCode` with an `ExitCode` cause.
    Exit(i32),
    /// Anything else: the message client-go's decoder would return as an error.
    Failure(String),
}

/// Decodes an error-stream payload as client-go does for `protocol`: v4 and v5 carry a
/// `metav1.Status` (errorDecoderV4), older protocols a plain message (errorDecoderV2); an
/// empty payload is success for all of them (watchErrorStream).
pub fn decode_error_stream(protocol: &str, payload: &[u8]) -> ExecStatus {
    if payload.is_empty() {
        return ExecStatus::Success;
    }
    let json = protocol.starts_with("v4.") || protocol.starts_with("v5.");
    if !json {
        return ExecStatus::Failure(format!(
            "error executing remote command: {}",
            String::from_utf8_lossy(payload)
        ));
    }
    let value: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            return ExecStatus::Failure(format!(
                "error stream protocol error: {e} in {:?}",
                String::from_utf8_lossy(payload)
            ));
        }
    };
    let str_of =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|s| s.as_str()).map(String::from);
    match str_of(&value, "status").as_deref() {
        Some("Success") => ExecStatus::Success,
        Some("Failure") => {
            if str_of(&value, "reason").as_deref() != Some("NonZeroExitCode") {
                return ExecStatus::Failure(str_of(&value, "message").unwrap_or_default());
            }
            let Some(causes) = value.pointer("/details/causes").and_then(|c| c.as_array()) else {
                return ExecStatus::Failure(
                    "error stream protocol error: details must be set".into(),
                );
            };
            // The cause's `reason` is metav1.StatusCause.Type; the code must fit in a u8.
            for cause in causes {
                if str_of(cause, "reason").as_deref() != Some("ExitCode") {
                    continue;
                }
                let message = str_of(cause, "message").unwrap_or_default();
                return match message.parse::<u8>() {
                    Ok(code) => ExecStatus::Exit(i32::from(code)),
                    Err(_) => ExecStatus::Failure(format!(
                        "error stream protocol error: invalid exit code value {message:?}"
                    )),
                };
            }
            ExecStatus::Failure("error stream protocol error: no ExitCode cause given".into())
        }
        _ => ExecStatus::Failure("error stream protocol error: unknown error".into()),
    }
}

/// What an exec or attach produced once it ran to completion.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    pub protocol: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream's raw payload.
    pub error: Vec<u8>,
    pub status: ExecStatus,
}

impl ExecOutcome {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// The terminal size message of the resize stream or channel, as Go's `json.Encoder` writes
/// it (with a trailing newline).
pub fn resize_message(width: u16, height: u16) -> Vec<u8> {
    format!("{{\"Width\":{width},\"Height\":{height}}}\n").into_bytes()
}

fn protocol_has_resize(protocol: &str) -> bool {
    matches!(
        protocol,
        "v3.channel.k8s.io" | "v4.channel.k8s.io" | "v5.channel.k8s.io"
    )
}

/// Something that yields a stream's payloads in order, `None` at its end.
trait ByteSource {
    async fn next_bytes(&mut self) -> Option<Bytes>;
}

impl ByteSource for mpsc::UnboundedReceiver<Bytes> {
    async fn next_bytes(&mut self) -> Option<Bytes> {
        self.recv().await
    }
}

async fn read_all<S: ByteSource>(source: Option<&mut S>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(source) = source {
        while let Some(b) = source.next_bytes().await {
            out.extend_from_slice(&b);
        }
    }
    out
}

/// Output read so far by `read_stdout_until`, and how far earlier calls matched.
#[derive(Debug, Default)]
struct Seen {
    bytes: Vec<u8>,
    mark: usize,
}

impl Seen {
    fn take_through(&mut self, needle: &[u8]) -> Option<Vec<u8>> {
        let hay = &self.bytes[self.mark..];
        let pos = if needle.is_empty() {
            Some(0)
        } else {
            hay.windows(needle.len()).position(|w| w == needle)
        }?;
        let end = self.mark + pos + needle.len();
        let out = self.bytes[self.mark..end].to_vec();
        self.mark = end;
        Some(out)
    }
}

/// Reads `source` into `seen` until `needle` shows up after the previous match; returns the
/// output from there through the needle.
async fn read_until<S: ByteSource>(
    source: Option<&mut S>,
    seen: &mut Seen,
    needle: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let source = source.ok_or_else(|| ClientError::Protocol("no stdout stream".into()))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(out) = seen.take_through(needle) {
            return Ok(out);
        }
        let tail = || String::from_utf8_lossy(&seen.bytes[seen.mark..]).into_owned();
        match tokio::time::timeout_at(deadline, source.next_bytes()).await {
            Ok(Some(b)) => seen.bytes.extend_from_slice(&b),
            Ok(None) => {
                return Err(ClientError::Protocol(format!(
                    "stdout ended before {:?}; got {:?}",
                    String::from_utf8_lossy(needle),
                    tail()
                )));
            }
            Err(_) => {
                return Err(ClientError::Timeout(format!(
                    "waiting for {:?} on stdout; got {:?}",
                    String::from_utf8_lossy(needle),
                    tail()
                )));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SPDY
// ---------------------------------------------------------------------------------------------

/// Sends the upgrade request as client-go's `SpdyRoundTripper` does and reads the answer.
/// Returns the connection, bytes read past the response head and the negotiated protocol
/// (empty if the server named none, which client-go takes as `channel.k8s.io`).
pub async fn spdy_upgrade(url: &str, protocols: &[&str]) -> Result<(TcpStream, BytesMut, String)> {
    let parsed = parse_url(url)?;
    let tcp = TcpStream::connect(&parsed.authority).await?;
    // Go's net.Dial sets TCP_NODELAY; without it small frames wait on delayed ACKs.
    tcp.set_nodelay(true)?;
    spdy_upgrade_on(tcp, url, protocols).await
}

/// [`spdy_upgrade`] on a connection already made (e.g. TLS).
pub async fn spdy_upgrade_on<IO: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: IO,
    url: &str,
    protocols: &[&str],
) -> Result<(IO, BytesMut, String)> {
    let url = parse_url(url)?;
    // Go's Request.Write: Host, User-Agent, Content-Length (0 for a body-less POST), then the
    // headers sorted by name, each value of X-Stream-Protocol-Version on a line of its own.
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: crius-e2e\r\nContent-Length: 0\r\n\
         Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n",
        url.target, url.authority
    );
    for p in protocols {
        head.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await?;

    let (status, headers, mut rest) = read_response_head(&mut tcp).await?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
            .unwrap_or_default()
    };
    // SpdyRoundTripper.NewConnection: anything else is a failed upgrade, body as the error.
    let upgraded = status == 101
        && header("Connection").contains("upgrade")
        && header("Upgrade").contains("spdy/3.1");
    if !upgraded {
        let body = read_body(&mut tcp, &headers, &mut rest).await;
        return Err(ClientError::Refused {
            status,
            headers,
            body,
        });
    }
    let protocol = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("X-Stream-Protocol-Version"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    Ok((tcp, rest, protocol))
}

type Head = (u16, Vec<(String, String)>, BytesMut);

async fn read_response_head<IO: AsyncRead + Unpin>(io: &mut IO) -> Result<Head> {
    let mut buf = BytesMut::with_capacity(4096);
    let end = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(i + 4);
            }
            if buf.len() > MAX_HEAD {
                return Err(ClientError::Protocol("response head too large".into()));
            }
            if io.read_buf(&mut buf).await? == 0 {
                return Err(ClientError::Protocol(
                    "connection closed before the response head".into(),
                ));
            }
        }
    })
    .await
    .map_err(|_| ClientError::Timeout("response head".into()))??;
    let head = buf.split_to(end);
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Protocol(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers, buf))
}

/// A refusal's body: Content-Length bytes, or up to EOF; best effort.
async fn read_body<IO: AsyncRead + Unpin>(
    io: &mut IO,
    headers: &[(String, String)],
    buf: &mut BytesMut,
) -> String {
    let len = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let want = len.unwrap_or(MAX_BODY).min(MAX_BODY);
    let _ = tokio::time::timeout(HEAD_TIMEOUT, async {
        while buf.len() < want {
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    buf.truncate(want);
    String::from_utf8_lossy(buf).trim().to_string()
}

enum Event {
    Reply,
    Data(Bytes),
    Fin,
    Reset(u32),
}

enum Out {
    Frame(Frame),
    Shutdown(oneshot::Sender<()>),
}

/// How a stream stopped delivering data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server half-closed it (FIN).
    Fin,
    /// The server reset it (RST_STREAM with this status).
    Reset(u32),
    /// The connection ended first.
    ConnectionClosed,
}

struct Entry {
    events: mpsc::UnboundedSender<Event>,
    local_finished: Arc<AtomicBool>,
}

struct Shared {
    streams: HashMap<u32, Entry>,
    next_id: u32,
    next_ping: u32,
    pings: HashMap<u32, oneshot::Sender<()>>,
    goaway: Option<(u32, u32)>,
    /// Why the reader stopped, once it has.
    ended: Option<String>,
}

/// A client-side SPDY/3.1 connection, as spdystream's client: streams with odd ids in
/// creation order, server PINGs (even ids) echoed, SETTINGS and WINDOW_UPDATE ignored (no
/// flow control, as Kubernetes' clients), no new streams after GOAWAY.
pub struct SpdyConnection {
    protocol: String,
    out: mpsc::UnboundedSender<Out>,
    shared: Arc<Mutex<Shared>>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<Result<(), String>>>,
}

impl SpdyConnection {
    /// Upgrades `url` offering `protocols` and starts SPDY on the connection.
    pub async fn dial(url: &str, protocols: &[&str]) -> Result<SpdyConnection> {
        let (tcp, rest, protocol) = spdy_upgrade(url, protocols).await?;
        Ok(Self::start(tcp, rest, protocol))
    }

    /// Runs the client side of SPDY on `io`; `already_read` holds the first bytes of it.
    pub fn start<IO>(io: IO, already_read: BytesMut, protocol: String) -> SpdyConnection
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(Shared {
            streams: HashMap::new(),
            next_id: 1,
            next_ping: 1,
            pings: HashMap::new(),
            goaway: None,
            ended: None,
        }));
        let reader = tokio::spawn(spdy_read_loop(
            rd,
            already_read,
            shared.clone(),
            out.clone(),
        ));
        let writer = tokio::spawn(spdy_write_loop(wr, out_rx));
        SpdyConnection {
            protocol,
            out,
            shared,
            reader: Some(reader),
            writer: Some(writer),
        }
    }

    /// The negotiated subprotocol ("" if the server named none).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The server's GOAWAY, `(last_good_stream_id, status)`, if one came.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        self.shared.lock().unwrap().goaway
    }

    /// Why the connection stopped reading ("eof" or an error), if it has.
    pub fn ended(&self) -> Option<String> {
        self.shared.lock().unwrap().ended.clone()
    }

    /// Opens a stream with `headers` and waits for its SYN_REPLY, as client-go's
    /// `CreateStream` does; a RST_STREAM instead is [`ClientError::Reset`].
    pub async fn create_stream(
        &self,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<SpdyStream> {
        let (tx, rx) = mpsc::unbounded_channel();
        let local_finished = Arc::new(AtomicBool::new(false));
        let id = {
            // Id allocation and the SYN_STREAM's place in the write queue happen under one
            // lock, so ids reach the wire in increasing order even with concurrent callers.
            let mut shared = self.shared.lock().unwrap();
            if shared.goaway.is_some() || shared.ended.is_some() {
                return Err(ClientError::Closed);
            }
            let id = shared.next_id;
            shared.next_id += 2;
            shared.streams.insert(
                id,
                Entry {
                    events: tx,
                    local_finished: local_finished.clone(),
                },
            );
            let frame = Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            };
            self.out
                .send(Out::Frame(frame))
                .map_err(|_| ClientError::Closed)?;
            id
        };
        let mut stream = SpdyStream {
            id,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            events: rx,
            pending: VecDeque::new(),
            out: self.out.clone(),
            local_finished,
            end: None,
        };
        stream.wait_reply(timeout).await?;
        Ok(stream)
    }

    /// Sends a PING (odd id, as the client's) and waits for its echo.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut shared = self.shared.lock().unwrap();
            let id = shared.next_ping;
            shared.next_ping += 2;
            shared.pings.insert(id, tx);
            id
        };
        let start = Instant::now();
        self.out
            .send(Out::Frame(Frame::Ping { id }))
            .map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(format!("echo of PING {id}"))),
        }
    }

    /// Closes as client-go's `connection.Close`: RST_STREAM (CANCEL) on every stream this side
    /// has not half-closed, GOAWAY, then the connection itself.
    pub async fn close(&mut self) -> Result<()> {
        {
            let shared = self.shared.lock().unwrap();
            let mut ids: Vec<_> = shared.streams.keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                if !shared.streams[&id]
                    .local_finished
                    .swap(true, Ordering::AcqRel)
                {
                    let _ = self.out.send(Out::Frame(Frame::RstStream {
                        stream_id: id,
                        status: status::CANCEL,
                    }));
                }
            }
        }
        // The server opens no streams, so the last good one of its is 0.
        let _ = self.out.send(Out::Frame(Frame::GoAway {
            last_good_stream_id: 0,
            status: 0,
        }));
        let (done, flushed) = oneshot::channel();
        let _ = self.out.send(Out::Shutdown(done));
        let _ = tokio::time::timeout(Duration::from_secs(5), flushed).await;
        let result = match self.writer.take() {
            Some(writer) => match tokio::time::timeout(Duration::from_secs(5), writer).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(e))) => Err(ClientError::Protocol(e)),
                Ok(Err(e)) => Err(ClientError::Protocol(e.to_string())),
                Err(_) => Err(ClientError::Timeout("flushing the connection".into())),
            },
            None => Ok(()),
        };
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
        result
    }

    /// Drops the connection on the floor: no RST_STREAM, no GOAWAY, just the TCP close, as
    /// when a client is killed mid-stream.
    pub fn abort(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}

impl Drop for SpdyConnection {
    fn drop(&mut self) {
        self.abort();
    }
}

async fn spdy_read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    mut buf: BytesMut,
    shared: Arc<Mutex<Shared>>,
    out: mpsc::UnboundedSender<Out>,
) {
    let mut codec = Codec::new();
    let why = loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                dispatch(frame, &shared, &out);
                continue;
            }
            Ok(None) => {}
            Err(e) => break format!("decoding: {e}"),
        }
        buf.reserve(16 * 1024);
        match rd.read_buf(&mut buf).await {
            Ok(0) => break "eof".to_string(),
            Ok(_) => {}
            Err(e) => break format!("reading: {e}"),
        }
    };
    let mut shared = shared.lock().unwrap();
    shared.ended = Some(why);
    // Dropping the senders ends every stream's reads with ConnectionClosed.
    shared.streams.clear();
    shared.pings.clear();
}

fn dispatch(frame: Frame, shared: &Mutex<Shared>, out: &mpsc::UnboundedSender<Out>) {
    let mut shared = shared.lock().unwrap();
    let send = |shared: &Shared, id: u32, event: Event| {
        if let Some(entry) = shared.streams.get(&id) {
            let _ = entry.events.send(event);
        }
    };
    match frame {
        Frame::SynReply {
            stream_id, flags, ..
        } => {
            send(&shared, stream_id, Event::Reply);
            if flags & FLAG_FIN != 0 {
                send(&shared, stream_id, Event::Fin);
            }
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            if !data.is_empty() {
                send(&shared, stream_id, Event::Data(data));
            }
            if flags & FLAG_FIN != 0 {
                send(&shared, stream_id, Event::Fin);
            }
        }
        Frame::Headers {
            stream_id, flags, ..
        } => {
            if flags & FLAG_FIN != 0 {
                send(&shared, stream_id, Event::Fin);
            }
        }
        Frame::RstStream { stream_id, status } => {
            if let Some(entry) = shared.streams.remove(&stream_id) {
                // A reset stream is closed both ways: nothing more may be sent on it.
                entry.local_finished.store(true, Ordering::Release);
                let _ = entry.events.send(Event::Reset(status));
            }
        }
        Frame::Ping { id } => {
            // spdystream echoes pings of the other parity (the server's are even) and takes
            // its own back as answers.
            if id % 2 == 0 {
                let _ = out.send(Out::Frame(Frame::Ping { id }));
            } else if let Some(waiter) = shared.pings.remove(&id) {
                let _ = waiter.send(());
            }
        }
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => shared.goaway = Some((last_good_stream_id, status)),
        Frame::SynStream { stream_id, .. } => {
            // Kubernetes' servers never open streams; refuse rather than leave it dangling.
            let _ = out.send(Out::Frame(Frame::RstStream {
                stream_id,
                status: status::REFUSED_STREAM,
            }));
        }
        Frame::Settings { .. } | Frame::WindowUpdate { .. } => {}
    }
}

async fn spdy_write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
) -> Result<(), String> {
    let mut codec = Codec::new();
    let mut buf = BytesMut::new();
    while let Some(out) = rx.recv().await {
        match out {
            Out::Frame(frame) => {
                codec.encode(&frame, &mut buf).map_err(|e| e.to_string())?;
                wr.write_all(&buf).await.map_err(|e| e.to_string())?;
                buf.clear();
            }
            Out::Shutdown(done) => {
                let _ = wr.flush().await;
                let _ = wr.shutdown().await;
                let _ = done.send(());
                return Ok(());
            }
        }
    }
    Ok(())
}

/// One client-created SPDY stream.
pub struct SpdyStream {
    id: u32,
    headers: Vec<(String, String)>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Events that came before the SYN_REPLY, kept for `read`.
    pending: VecDeque<Event>,
    out: mpsc::UnboundedSender<Out>,
    local_finished: Arc<AtomicBool>,
    end: Option<StreamEnd>,
}

impl std::fmt::Debug for SpdyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyStream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .field("end", &self.end)
            .finish()
    }
}

impl SpdyStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// How the stream ended for reading, once `read` returned `None`.
    pub fn end(&self) -> Option<StreamEnd> {
        self.end
    }

    async fn wait_reply(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => {
                    return Err(ClientError::Timeout(format!(
                        "SYN_REPLY for stream {}",
                        self.id
                    )));
                }
                Ok(None) => return Err(ClientError::Closed),
                Ok(Some(Event::Reply)) => return Ok(()),
                Ok(Some(Event::Reset(status))) => {
                    return Err(ClientError::Reset {
                        id: self.id,
                        status,
                    });
                }
                Ok(Some(other)) => self.pending.push_back(other),
            }
        }
    }

    /// Sends `data`, one DATA frame per 32 KiB.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        if self.local_finished.load(Ordering::Acquire) {
            return Err(ClientError::Protocol(format!(
                "stream {} is closed for writing",
                self.id
            )));
        }
        for chunk in data.chunks(WRITE_CHUNK) {
            self.out
                .send(Out::Frame(Frame::Data {
                    stream_id: self.id,
                    flags: 0,
                    data: Bytes::copy_from_slice(chunk),
                }))
                .map_err(|_| ClientError::Closed)?;
        }
        Ok(())
    }

    /// Half-closes: an empty DATA frame with FIN (spdystream's `Close`). Once only.
    pub fn close(&self) -> Result<()> {
        if self.local_finished.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.out
            .send(Out::Frame(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            }))
            .map_err(|_| ClientError::Closed)
    }

    /// RST_STREAM with CANCEL, unless this side already finished (spdystream's `Reset`).
    pub fn reset(&self) -> Result<()> {
        if self.local_finished.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.out
            .send(Out::Frame(Frame::RstStream {
                stream_id: self.id,
                status: status::CANCEL,
            }))
            .map_err(|_| ClientError::Closed)
    }

    /// The next DATA payload; `None` once the stream ended (see [`SpdyStream::end`]).
    pub async fn read(&mut self) -> Option<Bytes> {
        if self.end.is_some() {
            return None;
        }
        loop {
            let event = match self.pending.pop_front() {
                Some(e) => Some(e),
                None => self.events.recv().await,
            };
            match event {
                Some(Event::Data(d)) => return Some(d),
                Some(Event::Reply) => continue,
                Some(Event::Fin) => self.end = Some(StreamEnd::Fin),
                Some(Event::Reset(s)) => self.end = Some(StreamEnd::Reset(s)),
                None => self.end = Some(StreamEnd::ConnectionClosed),
            }
            return None;
        }
    }

    pub async fn read_to_end(&mut self) -> Vec<u8> {
        read_all(Some(self)).await
    }
}

impl ByteSource for SpdyStream {
    async fn next_bytes(&mut self) -> Option<Bytes> {
        self.read().await
    }
}

/// An exec or attach over SPDY, its streams created as client-go's v2 to v5 protocols do:
/// error, then stdin, stdout, stderr (not with a TTY), then resize (TTY, v3 and later), each
/// after the previous one's SYN_REPLY.
pub struct SpdyExec {
    conn: SpdyConnection,
    pub error: SpdyStream,
    pub stdin: Option<SpdyStream>,
    pub stdout: Option<SpdyStream>,
    pub stderr: Option<SpdyStream>,
    pub resize: Option<SpdyStream>,
    stdout_seen: Seen,
}

/// Exec or attach at `url` offering client-go's SPDY protocols.
pub async fn spdy_exec(url: &str, opts: ExecOptions) -> Result<SpdyExec> {
    spdy_exec_with(url, opts, SPDY_EXEC_PROTOCOLS).await
}

pub async fn spdy_exec_with(url: &str, opts: ExecOptions, protocols: &[&str]) -> Result<SpdyExec> {
    let conn = SpdyConnection::dial(url, protocols).await?;
    spdy_exec_on(conn, opts).await
}

/// Creates the exec streams on a connection already upgraded.
pub async fn spdy_exec_on(conn: SpdyConnection, opts: ExecOptions) -> Result<SpdyExec> {
    let create = |kind: &'static str| {
        let conn = &conn;
        async move {
            conn.create_stream(&[("streamtype", kind)], CREATE_STREAM_TIMEOUT)
                .await
        }
    };
    let error = create("error").await?;
    let stdin = if opts.stdin {
        Some(create("stdin").await?)
    } else {
        None
    };
    let stdout = if opts.stdout {
        Some(create("stdout").await?)
    } else {
        None
    };
    let stderr = if opts.stderr && !opts.tty {
        Some(create("stderr").await?)
    } else {
        None
    };
    let resize = if opts.tty && protocol_has_resize(conn.protocol()) {
        Some(create("resize").await?)
    } else {
        None
    };
    Ok(SpdyExec {
        conn,
        error,
        stdin,
        stdout,
        stderr,
        resize,
        stdout_seen: Seen::default(),
    })
}

/// Runs an exec or attach to completion: sends `stdin` (when `opts.stdin`) then half-closes
/// it (client-go's v2+ `copyStdin`), collects stdout, stderr and the error stream, and closes
/// as client-go does. Gives up after `timeout`.
pub async fn spdy_run(
    url: &str,
    opts: ExecOptions,
    stdin: &[u8],
    timeout: Duration,
) -> Result<ExecOutcome> {
    let deadline = Instant::now() + timeout;
    let exec = tokio::time::timeout_at(deadline, spdy_exec(url, opts))
        .await
        .map_err(|_| ClientError::Timeout("creating the exec streams".into()))??;
    if exec.stdin.is_some() {
        exec.send_stdin(stdin)?;
        // client-go's v1 never half-closes stdin.
        if exec.protocol() != "channel.k8s.io" && !exec.protocol().is_empty() {
            exec.close_stdin()?;
        }
    }
    exec.wait(deadline.saturating_duration_since(Instant::now()))
        .await
}

impl SpdyExec {
    pub fn protocol(&self) -> &str {
        self.conn.protocol()
    }

    pub fn connection(&self) -> &SpdyConnection {
        &self.conn
    }

    pub fn send_stdin(&self, data: &[u8]) -> Result<()> {
        self.stdin
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("no stdin stream".into()))?
            .write(data)
    }

    pub fn close_stdin(&self) -> Result<()> {
        self.stdin
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("no stdin stream".into()))?
            .close()
    }

    /// Sends a terminal size on the resize stream.
    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        self.resize
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("no resize stream".into()))?
            .write(&resize_message(width, height))
    }

    /// Reads stdout until `needle` appears after the previous match; returns stdout from the
    /// previous match through the needle. Everything read still shows up in `wait`'s stdout.
    pub async fn read_stdout_until(&mut self, needle: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        read_until(self.stdout.as_mut(), &mut self.stdout_seen, needle, timeout).await
    }

    /// Waits, like client-go's `stream`, for stdout and stderr to end, then for the error
    /// stream; decodes its payload; closes the connection as client-go does.
    pub async fn wait(mut self, timeout: Duration) -> Result<ExecOutcome> {
        let collected = tokio::time::timeout(timeout, async {
            let (stdout, stderr) = tokio::join!(
                read_all(self.stdout.as_mut()),
                read_all(self.stderr.as_mut())
            );
            let error = self.error.read_to_end().await;
            (stdout, stderr, error)
        })
        .await;
        let Ok((stdout, stderr, error)) = collected else {
            self.conn.abort();
            return Err(ClientError::Timeout("exec to finish".into()));
        };
        // A failed flush changes nothing about what the command did.
        let _ = self.conn.close().await;
        let protocol = self.conn.protocol().to_string();
        let mut all_stdout = std::mem::take(&mut self.stdout_seen.bytes);
        all_stdout.extend_from_slice(&stdout);
        Ok(ExecOutcome {
            status: decode_error_stream(&protocol, &error),
            protocol,
            stdout: all_stdout,
            stderr,
            error,
        })
    }

    /// Drops the connection mid-stream without closing anything.
    pub fn abort(mut self) {
        self.conn.abort();
    }
}

/// Port-forward over SPDY as client-go's `PortForwarder`: per forwarded connection an error
/// stream (half-closed at once) then a data stream, both with `port` and `requestid`.
pub struct SpdyPortForward {
    conn: SpdyConnection,
    /// client-go numbers connections from 0.
    next_request_id: AtomicU32,
    /// The WebSocket pump when tunneled.
    bridge: Option<JoinHandle<()>>,
}

/// One forwarded connection's streams.
#[derive(Debug)]
pub struct ForwardedConn {
    pub port: u16,
    pub request_id: u32,
    pub error: SpdyStream,
    pub data: SpdyStream,
}

/// What one forwarded connection got back.
#[derive(Debug, Clone)]
pub struct ForwardOutcome {
    pub data: Vec<u8>,
    /// The error stream's text; empty when the server reported nothing.
    pub error: String,
    pub data_end: Option<StreamEnd>,
}

/// Port-forward at `url`, offering `portforward.k8s.io` as client-go does.
pub async fn spdy_port_forward(url: &str) -> Result<SpdyPortForward> {
    let conn = SpdyConnection::dial(url, &[PORT_FORWARD_PROTOCOL]).await?;
    if conn.protocol() != PORT_FORWARD_PROTOCOL {
        return Err(ClientError::Protocol(format!(
            "unable to negotiate protocol: server returned {:?}",
            conn.protocol()
        )));
    }
    Ok(SpdyPortForward {
        conn,
        next_request_id: AtomicU32::new(0),
        bridge: None,
    })
}

/// Port-forward as crictl's `--transport=websocket`: a WebSocket GET offering
/// `SPDY/3.1+portforward.k8s.io`, then SPDY inside binary messages.
pub async fn spdy_over_ws_port_forward(url: &str) -> Result<SpdyPortForward> {
    let (ws, protocol) = ws_connect(url, &[WS_TUNNEL_PORT_FORWARD_PROTOCOL]).await?;
    let inner = protocol
        .strip_prefix("SPDY/3.1+")
        .filter(|p| *p == PORT_FORWARD_PROTOCOL)
        .ok_or_else(|| ClientError::Protocol(format!("server chose {protocol:?}")))?
        .to_string();
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let bridge = tokio::spawn(ws_bridge(ws, theirs));
    Ok(SpdyPortForward {
        conn: SpdyConnection::start(ours, BytesMut::new(), inner),
        next_request_id: AtomicU32::new(0),
        bridge: Some(bridge),
    })
}

/// Moves bytes between `io` and binary WebSocket messages (client-go's TunnelingConnection)
/// until both directions end.
pub async fn ws_bridge<S, IO>(ws: WebSocketStream<S>, io: IO)
where
    S: AsyncRead + AsyncWrite + Unpin,
    IO: AsyncRead + AsyncWrite,
{
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let up = async {
        let mut buf = vec![0u8; WRITE_CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
    };
    let down = async {
        while let Some(Ok(msg)) = stream.next().await {
            let go_on = match msg {
                Message::Binary(b) => wr.write_all(&b).await.is_ok(),
                Message::Close(_) => false,
                _ => true,
            };
            if !go_on {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::join!(up, down);
}

impl SpdyPortForward {
    pub fn connection(&self) -> &SpdyConnection {
        &self.conn
    }

    /// Opens a forwarded connection to `port` as client-go's `handleConnection`: error stream
    /// (`streamtype: error`, `port`, `requestid`), half-closed at once, then the data stream
    /// with the same headers and `streamtype: data`.
    pub async fn open(&self, port: u16) -> Result<ForwardedConn> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::SeqCst);
        let (port_s, id_s) = (port.to_string(), request_id.to_string());
        let error = self
            .conn
            .create_stream(
                &[
                    ("streamtype", "error"),
                    ("port", &port_s),
                    ("requestid", &id_s),
                ],
                CREATE_STREAM_TIMEOUT,
            )
            .await?;
        error.close()?;
        let data = self
            .conn
            .create_stream(
                &[
                    ("streamtype", "data"),
                    ("port", &port_s),
                    ("requestid", &id_s),
                ],
                CREATE_STREAM_TIMEOUT,
            )
            .await?;
        Ok(ForwardedConn {
            port,
            request_id,
            error,
            data,
        })
    }

    /// Sends `request` to `port`, half-closes, and reads the reply to its end and the error
    /// stream, within `timeout`.
    pub async fn roundtrip(
        &self,
        port: u16,
        request: &[u8],
        timeout: Duration,
    ) -> Result<ForwardOutcome> {
        let deadline = Instant::now() + timeout;
        let conn = tokio::time::timeout_at(deadline, self.open(port))
            .await
            .map_err(|_| ClientError::Timeout(format!("opening streams for port {port}")))??;
        conn.data.write(request)?;
        conn.data.close()?;
        conn.finish(deadline.saturating_duration_since(Instant::now()))
            .await
    }

    /// Closes as client-go does when port-forwarding stops (RST unfinished streams, GOAWAY).
    pub async fn close(mut self) -> Result<()> {
        let result = self.conn.close().await;
        if let Some(b) = self.bridge.take() {
            // Let the pump flush the last frames, then stop it.
            let _ = tokio::time::timeout(Duration::from_secs(1), b).await;
        }
        result
    }

    pub fn abort(mut self) {
        self.conn.abort();
        if let Some(b) = self.bridge.take() {
            b.abort();
        }
    }
}

impl Drop for SpdyPortForward {
    fn drop(&mut self) {
        if let Some(b) = self.bridge.take() {
            b.abort();
        }
    }
}

impl ForwardedConn {
    pub fn write(&self, data: &[u8]) -> Result<()> {
        self.data.write(data)
    }

    pub fn close_write(&self) -> Result<()> {
        self.data.close()
    }

    pub async fn read(&mut self) -> Option<Bytes> {
        self.data.read().await
    }

    /// Reads the data stream to its end, resets it as client-go does (nothing is sent if this
    /// side already half-closed), then reads the error stream to its end.
    pub async fn finish(mut self, timeout: Duration) -> Result<ForwardOutcome> {
        tokio::time::timeout(timeout, async {
            let data = self.data.read_to_end().await;
            let _ = self.data.reset();
            let error = self.error.read_to_end().await;
            ForwardOutcome {
                data,
                error: String::from_utf8_lossy(&error).into_owned(),
                data_end: self.data.end(),
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(format!("port {} to finish", self.port)))
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// Opens a WebSocket (GET) to `url` offering `protocols` in one `Sec-WebSocket-Protocol`
/// header, comma-separated, as gorilla/websocket does. Returns the negotiated protocol.
pub async fn ws_connect(
    url: &str,
    protocols: &[&str],
) -> Result<(WebSocketStream<TcpStream>, String)> {
    let url = parse_url(url)?;
    let tcp = TcpStream::connect(&url.authority).await?;
    tcp.set_nodelay(true)?;
    let mut request = format!("ws://{}{}", url.authority, url.target)
        .into_client_request()
        .map_err(|e| ClientError::WebSocket(e.to_string()))?;
    if !protocols.is_empty() {
        let value = protocols
            .join(", ")
            .parse()
            .map_err(|e| ClientError::Protocol(format!("protocol header: {e}")))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", value);
    }
    let (ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(response) => ClientError::Refused {
                status: response.status().as_u16(),
                headers: response
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect(),
                body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .trim()
                    .to_string(),
            },
            other => ClientError::WebSocket(other.to_string()),
        })?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    // client-go's RoundTripper refuses a protocol it did not offer, or none.
    if !protocols.contains(&protocol.as_str()) {
        return Err(ClientError::Protocol(format!(
            "invalid protocol, expected one of {protocols:?}, got {protocol:?}"
        )));
    }
    Ok((ws, protocol))
}

/// How a WebSocket connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEnd {
    /// A close frame, with its code and reason if it had them.
    Closed(Option<(u16, String)>),
    /// The TCP connection ended without a close frame.
    Eof,
    Error(String),
}

enum WsOut {
    Msg(Message),
    Close,
}

/// Writes channel messages: binary `[channel, payload...]`, or for the base64 protocols text
/// `"<digit><base64 payload>"`.
#[derive(Clone)]
pub struct WsWriter {
    out: mpsc::UnboundedSender<WsOut>,
    base64: bool,
    stream_close: bool,
}

impl WsWriter {
    pub fn send(&self, channel: u8, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(WRITE_CHUNK) {
            let msg = if self.base64 {
                Message::Text(format!("{}{}", char::from(b'0' + channel), B64.encode(chunk)).into())
            } else {
                let mut frame = Vec::with_capacity(chunk.len() + 1);
                frame.push(channel);
                frame.extend_from_slice(chunk);
                Message::Binary(frame.into())
            };
            self.out
                .send(WsOut::Msg(msg))
                .map_err(|_| ClientError::Closed)?;
        }
        Ok(())
    }

    /// v5's half-close of `channel`.
    pub fn close_channel(&self, channel: u8) -> Result<()> {
        if !self.stream_close {
            return Err(ClientError::Protocol(
                "only v5.channel.k8s.io can half-close a channel".into(),
            ));
        }
        self.out
            .send(WsOut::Msg(Message::Binary(
                vec![CHANNEL_CLOSE, channel].into(),
            )))
            .map_err(|_| ClientError::Closed)
    }

    /// Sends a raw message, for tests of malformed input.
    pub fn send_raw(&self, msg: Message) -> Result<()> {
        self.out
            .send(WsOut::Msg(msg))
            .map_err(|_| ClientError::Closed)
    }
}

/// A WebSocket carrying numbered channels, demultiplexed by a reader task.
pub struct WsConnection {
    protocol: String,
    writer_handle: WsWriter,
    end: Arc<Mutex<Option<WsEnd>>>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl WsConnection {
    /// Starts the reader and writer; returns receivers for channels `0..channels`. Messages
    /// for other channels are dropped, as client-go does.
    fn start<S>(
        ws: WebSocketStream<S>,
        protocol: String,
        channels: usize,
    ) -> (WsConnection, Vec<mpsc::UnboundedReceiver<Bytes>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let base64 = protocol.contains("base64.");
        let (mut sink, mut stream) = ws.split();
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..channels).map(|_| mpsc::unbounded_channel()).unzip();
        let end = Arc::new(Mutex::new(None));
        let end_r = end.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                let msg = match stream.next().await {
                    None => break WsEnd::Eof,
                    Some(Err(e)) => break WsEnd::Error(e.to_string()),
                    Some(Ok(msg)) => msg,
                };
                let (channel, payload) = match msg {
                    Message::Binary(b) if b.is_empty() => continue,
                    Message::Binary(b) => (b[0], b.slice(1..)),
                    Message::Text(t) if base64 => {
                        let Some((&digit, rest)) = t.as_bytes().split_first() else {
                            continue;
                        };
                        match B64.decode(rest) {
                            Ok(d) => (digit.wrapping_sub(b'0'), Bytes::from(d)),
                            Err(e) => break WsEnd::Error(format!("bad base64: {e}")),
                        }
                    }
                    // client-go's executor gives up on anything but binary messages.
                    Message::Text(_) => break WsEnd::Error("unexpected text message".into()),
                    Message::Close(frame) => {
                        break WsEnd::Closed(frame.map(|f| (f.code.into(), f.reason.to_string())));
                    }
                    // Pongs to pings are queued by tungstenite itself.
                    _ => continue,
                };
                // Servers send an empty message on a channel to signal that streaming began.
                if let Some(tx) = senders.get(usize::from(channel))
                    && !payload.is_empty()
                {
                    let _ = tx.send(payload);
                }
            };
            *end_r.lock().unwrap() = Some(why);
        });
        let (out, mut out_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(async move {
            while let Some(out) = out_rx.recv().await {
                match out {
                    WsOut::Msg(msg) => {
                        if sink.send(msg).await.is_err() {
                            break;
                        }
                    }
                    WsOut::Close => {
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Normal,
                                reason: "".into(),
                            })))
                            .await;
                        break;
                    }
                }
            }
        });
        let stream_close = protocol == "v5.channel.k8s.io";
        (
            WsConnection {
                protocol,
                writer_handle: WsWriter {
                    out,
                    base64,
                    stream_close,
                },
                end,
                reader: Some(reader),
                writer: Some(writer),
            },
            receivers,
        )
    }

    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    pub fn writer(&self) -> WsWriter {
        self.writer_handle.clone()
    }

    /// How the connection ended, once the reader saw it end.
    pub fn end(&self) -> Option<WsEnd> {
        self.end.lock().unwrap().clone()
    }

    /// Sends a normal close frame.
    pub fn close(&self) {
        let _ = self.writer_handle.out.send(WsOut::Close);
    }

    /// Drops the TCP connection without a close frame (also what client-go's executor does
    /// when it is done: gorilla's `Close` does not send one).
    pub fn abort(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}

impl Drop for WsConnection {
    fn drop(&mut self) {
        self.abort();
    }
}

/// An exec or attach over WebSocket (client-go's WebSocket executor; channels 0-4).
pub struct WsExec {
    conn: WsConnection,
    opts: ExecOptions,
    stdout: mpsc::UnboundedReceiver<Bytes>,
    stderr: mpsc::UnboundedReceiver<Bytes>,
    error: mpsc::UnboundedReceiver<Bytes>,
    stdout_seen: Seen,
}

/// Exec or attach at `url` offering what client-go's WebSocket executor offers (v5 only).
pub async fn ws_exec(url: &str, opts: ExecOptions) -> Result<WsExec> {
    ws_exec_with(url, opts, WS_EXEC_PROTOCOLS).await
}

pub async fn ws_exec_with(url: &str, opts: ExecOptions, protocols: &[&str]) -> Result<WsExec> {
    let (ws, protocol) = ws_connect(url, protocols).await?;
    let (conn, mut channels) = WsConnection::start(ws, protocol, 5);
    let mut take =
        |c: u8| std::mem::replace(&mut channels[usize::from(c)], mpsc::unbounded_channel().1);
    Ok(WsExec {
        stdout: take(CHANNEL_STDOUT),
        stderr: take(CHANNEL_STDERR),
        error: take(CHANNEL_ERROR),
        conn,
        opts,
        stdout_seen: Seen::default(),
    })
}

/// Runs an exec or attach over WebSocket to completion: sends `stdin` and, on v5, closes it
/// with `[255, 0]`; collects the channels until the server ends the connection.
pub async fn ws_run(
    url: &str,
    opts: ExecOptions,
    stdin: &[u8],
    timeout: Duration,
) -> Result<ExecOutcome> {
    ws_run_with(url, opts, stdin, timeout, WS_EXEC_PROTOCOLS).await
}

pub async fn ws_run_with(
    url: &str,
    opts: ExecOptions,
    stdin: &[u8],
    timeout: Duration,
    protocols: &[&str],
) -> Result<ExecOutcome> {
    let deadline = Instant::now() + timeout;
    let exec = tokio::time::timeout_at(deadline, ws_exec_with(url, opts, protocols))
        .await
        .map_err(|_| ClientError::Timeout("WebSocket handshake".into()))??;
    if opts.stdin {
        exec.send_stdin(stdin)?;
        if exec.conn.writer_handle.stream_close {
            exec.close_stdin()?;
        }
    }
    exec.wait(deadline.saturating_duration_since(Instant::now()))
        .await
}

impl WsExec {
    pub fn protocol(&self) -> &str {
        self.conn.protocol()
    }

    pub fn connection(&self) -> &WsConnection {
        &self.conn
    }

    pub fn send_stdin(&self, data: &[u8]) -> Result<()> {
        self.conn.writer_handle.send(CHANNEL_STDIN, data)
    }

    /// `[255, 0]`; v5 only.
    pub fn close_stdin(&self) -> Result<()> {
        self.conn.writer_handle.close_channel(CHANNEL_STDIN)
    }

    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        self.conn
            .writer_handle
            .send(CHANNEL_RESIZE, &resize_message(width, height))
    }

    pub async fn read_stdout_until(&mut self, needle: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        read_until(
            Some(&mut self.stdout),
            &mut self.stdout_seen,
            needle,
            timeout,
        )
        .await
    }

    /// Reads stdout, stderr and error until the server ends the connection, decodes the error
    /// channel, then drops the connection as client-go does.
    pub async fn wait(mut self, timeout: Duration) -> Result<ExecOutcome> {
        let collected = tokio::time::timeout(timeout, async {
            tokio::join!(
                read_all(Some(&mut self.stdout)),
                read_all(Some(&mut self.stderr)),
                read_all(Some(&mut self.error)),
            )
        })
        .await;
        self.conn.abort();
        let (stdout, stderr, error) =
            collected.map_err(|_| ClientError::Timeout("exec to finish".into()))?;
        if let Some(WsEnd::Error(e)) = self.conn.end() {
            return Err(ClientError::WebSocket(e));
        }
        let protocol = self.conn.protocol().to_string();
        let mut all_stdout = std::mem::take(&mut self.stdout_seen.bytes);
        all_stdout.extend_from_slice(&stdout);
        Ok(ExecOutcome {
            status: decode_error_stream(&protocol, &error),
            protocol,
            stdout: all_stdout,
            stderr,
            error,
        })
    }

    pub fn abort(mut self) {
        self.conn.abort();
    }

    pub fn options(&self) -> ExecOptions {
        self.opts
    }
}

/// A channel whose first two bytes are the little-endian port number kubelet announces.
pub struct PortChannel {
    rx: mpsc::UnboundedReceiver<Bytes>,
    prefix: Vec<u8>,
}

impl PortChannel {
    /// The announced port, once its two bytes were read.
    pub fn announced_port(&self) -> Option<u16> {
        (self.prefix.len() == 2).then(|| u16::from_le_bytes([self.prefix[0], self.prefix[1]]))
    }

    /// The next payload with the port prefix stripped; `None` when the connection ended.
    pub async fn read(&mut self) -> Option<Bytes> {
        loop {
            let mut b = self.rx.recv().await?;
            if self.prefix.len() < 2 {
                let take = (2 - self.prefix.len()).min(b.len());
                self.prefix.extend_from_slice(&b.split_to(take));
            }
            if !b.is_empty() {
                return Some(b);
            }
        }
    }

    pub async fn read_to_end(&mut self) -> Vec<u8> {
        read_all(Some(self)).await
    }
}

impl ByteSource for PortChannel {
    async fn next_bytes(&mut self) -> Option<Bytes> {
        self.read().await
    }
}

/// One port of a WebSocket port-forward: data on channel `2i`, errors on `2i+1`.
pub struct WsForwardedPort {
    pub port: u16,
    pub index: usize,
    writer: WsWriter,
    pub data: PortChannel,
    pub error: PortChannel,
}

impl WsForwardedPort {
    pub fn write(&self, data: &[u8]) -> Result<()> {
        self.writer.send((2 * self.index) as u8, data)
    }
}

/// Kubelet's channel-based WebSocket port-forward: the ports are the URL's `port` query
/// parameters (comma-separated values allowed), two channels each.
pub struct WsPortForward {
    conn: WsConnection,
    pub ports: Vec<WsForwardedPort>,
}

pub async fn ws_port_forward(url: &str, protocols: &[&str]) -> Result<WsPortForward> {
    let parsed = parse_url(url)?;
    let query = parsed.target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let ports: Vec<u16> = crius::streaming::http::parse_query(query)
        .into_iter()
        .filter(|(n, _)| n == "port")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|p| p.trim().parse::<u16>())
                .collect::<Vec<_>>()
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| ClientError::Protocol(format!("bad port in {url}: {e}")))?;
    let (ws, protocol) = ws_connect(url, protocols).await?;
    let (conn, channels) = WsConnection::start(ws, protocol, 2 * ports.len());
    let mut channels = channels.into_iter();
    let ports = ports
        .into_iter()
        .enumerate()
        .map(|(index, port)| WsForwardedPort {
            port,
            index,
            writer: conn.writer(),
            data: PortChannel {
                rx: channels.next().expect("two channels per port"),
                prefix: Vec::new(),
            },
            error: PortChannel {
                rx: channels.next().expect("two channels per port"),
                prefix: Vec::new(),
            },
        })
        .collect();
    Ok(WsPortForward { conn, ports })
}

impl WsPortForward {
    pub fn connection(&self) -> &WsConnection {
        &self.conn
    }

    pub fn abort(mut self) {
        self.conn.abort();
    }
}

/// The clients against crius's server-side pieces (SPDY) and a tiny tungstenite server
/// (WebSocket), over loopback TCP.
#[cfg(test)]
// The benchmarks include this file too, where not every test is built.
#[allow(unused_imports)]
mod tests {
    use super::*;
    use crius::streaming::http::{self, RequestHead, Route};
    use crius::streaming::session::{
        ExpectedStreams, Session, SessionConfig, Stream, decode_resizes, error_stream_payload,
        exit_status_json, wait_for_exec_streams,
    };
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    const T: Duration = Duration::from_secs(5);

    async fn listen() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        (l, base)
    }

    /// Accepts one connection as crius's streaming server does: the head, the route (404 for
    /// tokens other than "good"), the SPDY handshake, the session.
    async fn accept_spdy(l: &TcpListener) -> Option<(RequestHead, &'static str, Session)> {
        let (mut tcp, _) = l.accept().await.unwrap();
        let (head, rest) = http::read_request_head(&mut tcp, T).await.unwrap();
        let (route, token) = match http::route(&head) {
            Ok(found) => found,
            Err(rejection) => {
                rejection.write_to(&mut tcp).await.unwrap();
                return None;
            }
        };
        if token != "good" {
            http::Rejection::not_found()
                .write_to(&mut tcp)
                .await
                .unwrap();
            return None;
        }
        let protocol = match http::handshake(&head, route.protocols()) {
            Ok(p) => p,
            Err(rejection) => {
                rejection.write_to(&mut tcp).await.unwrap();
                return None;
            }
        };
        tcp.write_all(&http::switching_protocols(protocol))
            .await
            .unwrap();
        Some((
            head,
            protocol,
            Session::new(tcp, rest, SessionConfig::default()),
        ))
    }

    async fn drain(stream: &mut Stream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = stream.incoming.recv().await {
            out.extend_from_slice(&b);
        }
        out
    }

    #[tokio::test]
    async fn spdy_exec_v4_with_stdin_stdout_stderr() {
        let (l, base) = listen().await;
        let server = tokio::spawn(async move {
            let (head, protocol, mut session) = accept_spdy(&l).await.unwrap();
            assert_eq!(head.method, "POST");
            assert_eq!(head.path, "/exec/good");
            let offered: Vec<_> = head.header_values("X-Stream-Protocol-Version").collect();
            assert_eq!(offered, SPDY_EXEC_PROTOCOLS);
            // crius speaks v4 at most, so that is what client-go's offer lands on.
            assert_eq!(protocol, "v4.channel.k8s.io");
            let expected = ExpectedStreams::new(protocol, true, true, true, false);
            let mut streams = wait_for_exec_streams(&mut session, expected, T)
                .await
                .unwrap();
            let mut stdin = streams.stdin.take().unwrap();
            let stdout = streams.stdout.take().unwrap();
            let stderr = streams.stderr.take().unwrap();
            assert!(streams.resize.is_none());
            // Created in client-go's order, each after the previous one's reply.
            let ids: Vec<_> = [&streams.error, &stdin, &stdout, &stderr]
                .iter()
                .map(|s| (s.id, s.stream_type().unwrap().to_string()))
                .collect();
            assert_eq!(
                ids,
                [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")]
                    .map(|(i, t)| (i, t.to_string()))
            );
            assert_eq!(stdin.headers, [("streamtype".into(), "stdin".into())]);

            let input = drain(&mut stdin).await;
            stdout.out.send(Bytes::from(input)).await.unwrap();
            stdout.out.finish().await.unwrap();
            stderr.out.send(Bytes::from_static(b"oops")).await.unwrap();
            stderr.out.finish().await.unwrap();
            let status = error_stream_payload(protocol, Some(3), "exit 3").unwrap();
            streams.error.out.send(status).await.unwrap();
            streams.error.out.finish().await.unwrap();
            drop((stdin, stdout, stderr, streams.error));
            session.close(T).await.unwrap();
        });

        let opts = ExecOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let out = spdy_run(&format!("{base}/exec/good"), opts, &big, T)
            .await
            .unwrap();
        server.await.unwrap();
        assert_eq!(out.protocol, "v4.channel.k8s.io");
        assert_eq!(out.stdout, big);
        assert_eq!(out.stderr_str(), "oops");
        assert_eq!(out.status, ExecStatus::Exit(3));
    }

    #[tokio::test]
    async fn spdy_tty_exec_is_interactive() {
        let (l, base) = listen().await;
        let server = tokio::spawn(async move {
            let (_, protocol, mut session) = accept_spdy(&l).await.unwrap();
            // stderr asked for but merged by the TTY; a resize stream instead.
            let expected = ExpectedStreams::new(protocol, true, true, true, true);
            let mut streams = wait_for_exec_streams(&mut session, expected, T)
                .await
                .unwrap();
            assert!(streams.stderr.is_none());
            let mut resize = streams.resize.take().unwrap();
            assert_eq!((resize.id, resize.stream_type()), (7, Some("resize")));
            let mut stdin = streams.stdin.take().unwrap();
            let stdout = streams.stdout.take().unwrap();
            let mut buf = BytesMut::new();
            let chunk = resize.incoming.recv().await.unwrap();
            buf.extend_from_slice(&chunk);
            let size = decode_resizes(&mut buf).unwrap()[0];
            let msg = format!("size {}x{}\n", size.width, size.height);
            stdout.out.send(Bytes::from(msg)).await.unwrap();
            while let Some(b) = stdin.incoming.recv().await {
                stdout.out.send(b).await.unwrap();
            }
            stdout.out.send(Bytes::from_static(b"bye\n")).await.unwrap();
            stdout.out.finish().await.unwrap();
            let status = error_stream_payload(protocol, Some(0), "").unwrap();
            streams.error.out.send(status).await.unwrap();
            streams.error.out.finish().await.unwrap();
            drop((stdin, stdout, resize, streams.error));
            session.close(T).await.unwrap();
        });

        let opts = ExecOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: true,
        };
        let mut exec = spdy_exec(&format!("{base}/attach/good"), opts)
            .await
            .unwrap();
        assert!(exec.stderr.is_none());
        exec.resize(80, 24).unwrap();
        assert_eq!(
            exec.read_stdout_until(b"80x24\n", T).await.unwrap(),
            b"size 80x24\n"
        );
        exec.send_stdin(b"ping\n").unwrap();
        assert_eq!(exec.read_stdout_until(b"ping", T).await.unwrap(), b"ping");
        exec.close_stdin().unwrap();
        let out = exec.wait(T).await.unwrap();
        server.await.unwrap();
        assert_eq!(out.stdout_str(), "size 80x24\nping\nbye\n");
        assert_eq!(out.status, ExecStatus::Success);
    }

    #[tokio::test]
    async fn spdy_bad_token_is_refused_with_404() {
        let (l, base) = listen().await;
        let server = tokio::spawn(async move { assert!(accept_spdy(&l).await.is_none()) });
        let err = spdy_exec(&format!("{base}/exec/nope"), ExecOptions::default())
            .await
            .err()
            .unwrap();
        server.await.unwrap();
        match err {
            ClientError::Refused { status, body, .. } => {
                assert_eq!(status, 404);
                assert_eq!(body, "404 page not found");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn spdy_abort_ends_the_servers_streams() {
        let (l, base) = listen().await;
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(async move {
            let (_, protocol, mut session) = accept_spdy(&l).await.unwrap();
            let expected = ExpectedStreams::new(protocol, true, true, false, false);
            let mut streams = wait_for_exec_streams(&mut session, expected, T)
                .await
                .unwrap();
            let stdout = streams.stdout.take().unwrap();
            stdout
                .out
                .send(Bytes::from_static(b"ready\n"))
                .await
                .unwrap();
            let mut stdin = streams.stdin.take().unwrap();
            assert_eq!(stdin.incoming.recv().await.unwrap(), "partial");
            tx.send(()).unwrap();
            // The client vanished: stdin ends without FIN and no more streams come.
            assert_eq!(stdin.incoming.recv().await, None);
            assert!(session.accept().await.is_none());
        });
        let opts = ExecOptions {
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        let mut exec = spdy_exec(&format!("{base}/exec/good"), opts).await.unwrap();
        exec.read_stdout_until(b"ready", T).await.unwrap();
        exec.send_stdin(b"partial").unwrap();
        rx.await.unwrap();
        exec.abort();
        tokio::time::timeout(T, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn spdy_port_forward_concurrent_connections() {
        let (l, base) = listen().await;
        let server = tokio::spawn(async move {
            let (head, protocol, mut session) = accept_spdy(&l).await.unwrap();
            assert_eq!(head.method, "POST");
            assert_eq!(protocol, PORT_FORWARD_PROTOCOL);
            let mut errors: HashMap<String, Stream> = HashMap::new();
            let mut tasks = Vec::new();
            let mut seen = Vec::new();
            while tasks.len() < 2 {
                let stream = session.accept().await.unwrap();
                let kind = stream.stream_type().unwrap().to_string();
                let port = stream.header("port").unwrap().to_string();
                let request = stream.header("requestid").unwrap().to_string();
                seen.push((stream.id, kind.clone(), port.clone(), request.clone()));
                if kind == "error" {
                    errors.insert(request, stream);
                    continue;
                }
                // client-go creates (and half-closes) the error stream first.
                let mut error = errors.remove(&request).expect("error stream first");
                tasks.push(tokio::spawn(async move {
                    assert_eq!(error.incoming.recv().await, None);
                    let mut data = stream;
                    if port == "81" {
                        let msg = "connection refused";
                        error.out.send(Bytes::from(msg)).await.unwrap();
                    } else {
                        let got = drain(&mut data).await;
                        let reply = String::from_utf8(got).unwrap().to_uppercase();
                        data.out.send(Bytes::from(reply)).await.unwrap();
                    }
                    error.out.finish().await.unwrap();
                    data.out.finish().await.unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            session.close(T).await.ok();
            seen
        });

        let pf = spdy_port_forward(&format!("{base}/portforward/good"))
            .await
            .unwrap();
        let (a, b) = tokio::join!(
            pf.roundtrip(80, b"hello", T),
            pf.roundtrip(81, b"nobody", T)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!((a.data.as_slice(), a.error.as_str()), (&b"HELLO"[..], ""));
        assert_eq!(a.data_end, Some(StreamEnd::Fin));
        assert_eq!(b.error, "connection refused");
        assert!(b.data.is_empty());
        pf.close().await.unwrap();
        let mut seen = server.await.unwrap();
        // Request ids count from 0 per port-forward; each pair is error then data.
        seen.sort_by_key(|s| s.0);
        let mut pairs: HashMap<String, Vec<(u32, String, String)>> = HashMap::new();
        for (id, kind, port, request) in seen {
            pairs.entry(request).or_default().push((id, kind, port));
        }
        let mut requests: Vec<_> = pairs.keys().cloned().collect();
        requests.sort();
        assert_eq!(requests, ["0", "1"]);
        for streams in pairs.values() {
            assert_eq!(streams.len(), 2);
            assert_eq!(streams[0].1, "error");
            assert_eq!(streams[1].1, "data");
            assert!(streams[0].0 < streams[1].0);
            assert_eq!(streams[0].2, streams[1].2);
        }
    }

    #[tokio::test]
    async fn spdy_client_pings_are_echoed() {
        let (l, base) = listen().await;
        let server = tokio::spawn(async move {
            let (_, _, mut session) = accept_spdy(&l).await.unwrap();
            // Keep the session up until the client closes.
            assert!(session.accept().await.is_none());
        });
        let pf = spdy_port_forward(&format!("{base}/portforward/good"))
            .await
            .unwrap();
        pf.connection().ping(T).await.unwrap();
        pf.connection().ping(T).await.unwrap();
        pf.close().await.unwrap();
        server.await.unwrap();
    }

    #[test]
    fn error_stream_decoding() {
        let v4 = "v4.channel.k8s.io";
        assert_eq!(decode_error_stream(v4, b""), ExecStatus::Success);
        let ok = exit_status_json(Some(0), "");
        assert_eq!(decode_error_stream(v4, ok.as_bytes()), ExecStatus::Success);
        let three = exit_status_json(Some(3), "x");
        assert_eq!(
            decode_error_stream(v4, three.as_bytes()),
            ExecStatus::Exit(3)
        );
        assert_eq!(
            decode_error_stream("v5.channel.k8s.io", three.as_bytes()),
            ExecStatus::Exit(3)
        );
        let internal = exit_status_json(None, "no such container");
        assert_eq!(
            decode_error_stream(v4, internal.as_bytes()),
            ExecStatus::Failure("Internal error occurred: no such container".into())
        );
        let no_details = br#"{"status":"Failure","reason":"NonZeroExitCode"}"#;
        assert!(matches!(
            decode_error_stream(v4, no_details),
            ExecStatus::Failure(m) if m.contains("details must be set")
        ));
        let big = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"300"}]}}"#;
        assert!(matches!(
            decode_error_stream(v4, big),
            ExecStatus::Failure(m) if m.contains("invalid exit code")
        ));
        assert_eq!(
            decode_error_stream("v3.channel.k8s.io", b"boom"),
            ExecStatus::Failure("error executing remote command: boom".into())
        );
        assert_eq!(
            resize_message(80, 24),
            b"{\"Width\":80,\"Height\":24}\n".to_vec()
        );
    }

    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:1234/exec/tok?a=1").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.target.as_str()),
            ("127.0.0.1:1234", "/exec/tok?a=1")
        );
        assert_eq!(parse_url("ws://h:1").unwrap().target, "/");
        assert_eq!(parse_url("https://h:2/x").unwrap().authority, "h:2");
        assert!(parse_url("ftp://h/x").is_err());
    }

    // --- WebSocket -------------------------------------------------------------------------

    /// Accepts one WebSocket, picking the first offered protocol in `supported`.
    // tungstenite's callback signature is fixed; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    async fn accept_ws(
        l: &TcpListener,
        supported: &'static [&'static str],
    ) -> (WebSocketStream<TcpStream>, String, Vec<String>) {
        let (tcp, _) = l.accept().await.unwrap();
        let chosen = Arc::new(Mutex::new((String::new(), Vec::new(), String::new())));
        let c = chosen.clone();
        let callback =
            move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                let offered: Vec<String> = req
                    .headers()
                    .get_all("Sec-WebSocket-Protocol")
                    .iter()
                    .map(|v| v.to_str().unwrap().to_string())
                    .collect();
                let list: Vec<String> = offered
                    .iter()
                    .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
                    .collect();
                let pick = list
                    .iter()
                    .find(|p| supported.contains(&p.as_str()))
                    .cloned()
                    .unwrap_or_default();
                resp.headers_mut()
                    .insert("Sec-WebSocket-Protocol", pick.parse().unwrap());
                *c.lock().unwrap() = (pick, offered, req.method().to_string());
                Ok(resp)
            };
        let ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
            .await
            .unwrap();
        let (pick, offered, method) = chosen.lock().unwrap().clone();
        assert_eq!(method, "GET");
        (ws, pick, offered)
    }

    #[tokio::test]
    async fn ws_exec_v5_frames_channels_and_closes_stdin() {
        let (l, base) = listen().await;
        let server = tokio::spawn(async move {
            let (mut ws, protocol, offered) = accept_ws(&l, &["v5.channel.k8s.io"]).await;
            assert_eq!(offered, ["v5.channel.k8s.io"]);
            assert_eq!(protocol, "v5.channel.k8s.io");
            // Kubelet's "streaming began" signal: an empty stdout message.
            ws.send(Message::Binary(vec![1].into())).await.unwrap();
            let mut stdin = Vec::new();
            let mut resized = None;
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Binary(b) = msg else { continue };
                match (b[0], &b[1..]) {
                    (0, data) => stdin.extend_from_slice(data),
                    (4, data) => resized = Some(data.to_vec()),
                    (255, [0]) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(resized.unwrap(), resize_message(100, 40));
            let mut out = vec![1];
            out.extend_from_slice(&stdin);
            ws.send(Message::Binary(out.into())).await.unwrap();
            ws.send(Message::Binary(b"\x02warn".to_vec().into()))
                .await
                .unwrap();
            let mut err = vec![3];
            err.extend_from_slice(exit_status_json(Some(7), "x").as_bytes());
            ws.send(Message::Binary(err.into())).await.unwrap();
            ws.close(None).await.unwrap();
        });
        let opts = ExecOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let exec = ws_exec(&format!("{base}/exec/good"), opts).await.unwrap();
        exec.resize(100, 40).unwrap();
        exec.send_stdin(b"hi there").unwrap();
        exec.close_stdin().unwrap();
        let out = exec.wait(T).await.unwrap();
        server.await.unwrap();
        assert_eq!(out.stdout_str(), "hi there");
        assert_eq!(out.stderr_str(), "warn");
        assert_eq!(out.status, ExecStatus::Exit(7));
    }

    #[tokio::test]
    async fn ws_exec_base64_uses_text_messages() {
        let (l, base) = listen().await;
        let server = tokio::spawn(async move {
            let (mut ws, protocol, _) = accept_ws(&l, &["v4.base64.channel.k8s.io"]).await;
            assert_eq!(protocol, "v4.base64.channel.k8s.io");
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("expected text")
            };
            assert_eq!(t.as_str(), format!("0{}", B64.encode("abc")));
            ws.send(Message::Text(format!("1{}", B64.encode("ABC")).into()))
                .await
                .unwrap();
            ws.send(Message::Text(
                format!("3{}", B64.encode(exit_status_json(Some(0), ""))).into(),
            ))
            .await
            .unwrap();
            ws.close(None).await.unwrap();
        });
        let opts = ExecOptions {
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        let url = format!("{base}/exec/good");
        let protocols = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];
        let out = ws_run_with(&url, opts, b"abc", T, &protocols)
            .await
            .unwrap();
        server.await.unwrap();
        assert_eq!(out.stdout_str(), "ABC");
        assert_eq!(out.status, ExecStatus::Success);
        // Only v5 can half-close.
        let w = WsWriter {
            out: mpsc::unbounded_channel().0,
            base64: true,
            stream_close: false,
        };
        assert!(w.close_channel(0).is_err());
    }

    #[tokio::test]
    async fn ws_bad_token_is_refused_with_404() {
        let (l, base) = listen().await;
        let server = tokio::spawn(async move {
            let (mut tcp, _) = l.accept().await.unwrap();
            let (head, _) = http::read_request_head(&mut tcp, T).await.unwrap();
            assert_eq!(head.method, "GET");
            assert!(
                head.header("Upgrade")
                    .unwrap()
                    .eq_ignore_ascii_case("websocket")
            );
            http::Rejection::not_found()
                .write_to(&mut tcp)
                .await
                .unwrap();
        });
        let err = ws_exec(&format!("{base}/exec/nope"), ExecOptions::default())
            .await
            .err()
            .unwrap();
        server.await.unwrap();
        assert_eq!(err.refused_status(), Some(404), "{err:?}");
        assert!(matches!(err, ClientError::Refused { body, .. } if body == "404 page not found"));
    }

    #[tokio::test]
    async fn ws_port_forward_strips_the_port_prefix() {
        let (l, base) = listen().await;
        let server = tokio::spawn(async move {
            let (mut ws, protocol, _) = accept_ws(&l, WS_PORT_FORWARD_PROTOCOLS).await;
            assert_eq!(protocol, "v4.channel.k8s.io");
            // Each port's data and error channels open with the port, little-endian.
            for (ch, port) in [(0u8, 8080u16), (1, 8080), (2, 9090), (3, 9090)] {
                let mut m = vec![ch];
                m.extend_from_slice(&port.to_le_bytes());
                ws.send(Message::Binary(m.into())).await.unwrap();
            }
            let Some(Ok(Message::Binary(b))) = ws.next().await else {
                panic!("expected data")
            };
            assert_eq!(&b[..], b"\x00GET /");
            ws.send(Message::Binary(b"\x00HTTP/1.1 200 OK".to_vec().into()))
                .await
                .unwrap();
            ws.send(Message::Binary(b"\x03refused".to_vec().into()))
                .await
                .unwrap();
            ws.close(None).await.unwrap();
        });
        let url = format!("{base}/portforward/good?port=8080&port=9090");
        let mut pf = ws_port_forward(&url, WS_PORT_FORWARD_PROTOCOLS)
            .await
            .unwrap();
        assert_eq!(
            pf.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
            [8080, 9090]
        );
        pf.ports[0].write(b"GET /").unwrap();
        let data = pf.ports[0].data.read_to_end().await;
        assert_eq!(data, b"HTTP/1.1 200 OK");
        assert_eq!(pf.ports[0].data.announced_port(), Some(8080));
        assert_eq!(pf.ports[1].error.read_to_end().await, b"refused");
        assert_eq!(pf.ports[1].error.announced_port(), Some(9090));
        server.await.unwrap();
        assert!(matches!(pf.connection().end(), Some(WsEnd::Closed(_))));
    }

    #[tokio::test]
    async fn spdy_port_forward_tunneled_over_websocket() {
        let (l, base) = listen().await;
        let server = tokio::spawn(async move {
            let (ws, protocol, _) = accept_ws(&l, &[WS_TUNNEL_PORT_FORWARD_PROTOCOL]).await;
            assert_eq!(protocol, WS_TUNNEL_PORT_FORWARD_PROTOCOL);
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let bridge = tokio::spawn(ws_bridge(ws, theirs));
            let mut session = Session::new(ours, BytesMut::new(), SessionConfig::default());
            let error = session.accept().await.unwrap();
            assert_eq!(error.stream_type(), Some("error"));
            let mut data = session.accept().await.unwrap();
            assert_eq!(data.header("port"), Some("5000"));
            let got = drain(&mut data).await;
            data.out.send(Bytes::from(got)).await.unwrap();
            data.out.finish().await.unwrap();
            error.out.finish().await.unwrap();
            drop((error, data));
            assert!(session.accept().await.is_none());
            bridge.abort();
        });
        let pf = spdy_over_ws_port_forward(&format!("{base}/portforward/good"))
            .await
            .unwrap();
        let out = pf.roundtrip(5000, b"echo me", T).await.unwrap();
        assert_eq!(
            (out.data.as_slice(), out.error.as_str()),
            (&b"echo me"[..], "")
        );
        pf.close().await.unwrap();
        tokio::time::timeout(T, server).await.unwrap().unwrap();
    }

    #[test]
    fn routes_match_the_server() {
        // The paths the clients use are the ones crius routes.
        let head = |path: &str| RequestHead {
            method: "POST".into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
        };
        assert_eq!(http::route(&head("/exec/t")).unwrap().0, Route::Exec);
        assert_eq!(
            http::route(&head("/portforward/t")).unwrap().0,
            Route::PortForward
        );
    }
}
