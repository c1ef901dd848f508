//! The WebSocket transport of the streaming server: exec, attach and port-forward over
//! Kubernetes' channel subprotocols (`channel.k8s.io` and its `base64.`, `v4.` and `v5.`
//! variants), and SPDY tunnelled through WebSocket binary messages
//! (`SPDY/3.1+portforward.k8s.io`, what `crictl port-forward --transport=websocket` speaks).
//!
//! The daemon reads and routes the request head itself, then calls [`handshake`] for the
//! `101 Switching Protocols` answer and one of [`exec_io`], [`forward_channels`] or [`tunnel`]
//! to serve the connection. The behaviour follows Kubernetes' `wsstream` connection
//! (apimachinery `pkg/util/httpstream/wsstream/conn.go`) with the channel layouts of kubelet's
//! `cri/streaming/remotecommand/websocket.go` and `cri/streaming/portforward/websocket.go`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{self, BoxStream, SelectAll, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::channels::{CHANNEL_DEPTH, ExecIo, ExitReport, ForwardRequest};
use super::http::{Rejection, RequestHead};
use super::session::{ExpectedStreams, TerminalSize, decode_resizes, error_stream_payload};

/// Exec and attach with the stream-close signal; otherwise as v4.
pub const V5_PROTOCOL: &str = "v5.channel.k8s.io";
/// Port-forward as SPDY/3.1 carried in binary messages; the SPDY session inside speaks
/// `portforward.k8s.io`.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// What [`handshake`] answers when the client offered no subprotocol: Kubernetes serves that
/// as plain `channel.k8s.io`.
pub const NO_PROTOCOL: &str = "";

/// Subprotocols for exec and attach, most preferred first. Kubelet itself serves the v4 and
/// unversioned ones; v5 is what the API server's stream translator (and client-go's WebSocket
/// executor, hence `crictl exec --transport=websocket`) speaks.
pub const EXEC_PROTOCOLS: &[&str] = &[
    V5_PROTOCOL,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// Subprotocols for port-forward, most preferred first: the SPDY tunnel, then the channel
/// protocols kubelet's WebSocket port-forward accepts (only the v4 ones, besides none at all).
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &[
    TUNNEL_PROTOCOL,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
];

/// Most ports one channel port-forward carries: two channels each, ids 0..=253 (255 is the
/// reserved close signal), and for base64 the id digit `'0' + id` must stay one ASCII byte.
pub const MAX_FORWARD_PORTS: usize = 40;

/// The headers of the upgrade request and its answer.
const PROTOCOL_HEADER: &str = "Sec-WebSocket-Protocol";
const KEY_HEADER: &str = "Sec-WebSocket-Key";
const VERSION_HEADER: &str = "Sec-WebSocket-Version";

/// Exec channel ids, as POSIX file descriptors for the first three.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const EXEC_CHANNELS: u8 = 5;
/// v5's close signal: a message on this channel names the channel the peer closed.
const CLOSE_SIGNAL: u8 = 255;

/// Largest message or frame accepted from the client. Kubernetes' clients write 32 KiB at a
/// time and the tunnelled SPDY frames are at most 1 MiB (see `SessionConfig`).
const MAX_MESSAGE_LEN: usize = 2 * 1024 * 1024;
/// Partial resize JSON held while waiting for the rest: a size is a few dozen bytes.
const MAX_RESIZE_PENDING: usize = 4096;
/// Tunnel bytes read from the daemon per outgoing message.
const TUNNEL_CHUNK: usize = 32 * 1024;
/// Buffered between the tunnel's pump and the daemon's SPDY session, per direction.
const TUNNEL_BUFFER: usize = 64 * 1024;
/// How long the server waits, after its close frame, for the client to close. Closing the
/// socket at once would make the kernel reset it when the client's next frame arrives, and a
/// reset drops whatever output is still on its way: a slow reader would lose the end.
const FINISH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a closing handshake towards a client that has gone may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `head` asks for a WebSocket upgrade: `Upgrade: websocket` and `upgrade` among the
/// `Connection` tokens, both case-insensitive.
pub fn is_websocket_upgrade(head: &RequestHead) -> bool {
    let websocket = head
        .header("Upgrade")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    websocket && connection_upgrade(head)
}

fn connection_upgrade(head: &RequestHead) -> bool {
    head.header_values("Connection")
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether `protocol` (as [`handshake`] chose it) is SPDY tunnelled in WebSocket, to be
/// served with [`tunnel`] rather than channels.
pub fn is_tunnel(protocol: &str) -> bool {
    protocol.starts_with("SPDY/3.1+") && protocol.ends_with(".k8s.io")
}

/// Validates a WebSocket upgrade and picks its subprotocol: the first of `supported` (most
/// preferred first) that the client offers in its `Sec-WebSocket-Protocol` headers. A client
/// offering none gets [`NO_PROTOCOL`], plain `channel.k8s.io`, when `supported` has channel
/// protocols, as Kubernetes serves it. Returns the protocol and the whole `101` answer.
///
/// Refusals as Kubernetes' WebSocket server (golang.org/x/net/websocket under `wsstream`) gives
/// them: 405 for a method other than GET, 400 for a request that is not a version 13
/// WebSocket upgrade with a key, 403 when no protocol is in common.
pub fn handshake(
    head: &RequestHead,
    supported: &[&'static str],
) -> Result<(&'static str, Vec<u8>), Rejection> {
    if head.method != "GET" {
        return Err(Rejection::new(
            405,
            "Method Not Allowed",
            "a WebSocket upgrade must use GET".to_string(),
        )
        .with_header("Allow", "GET"));
    }
    if !is_websocket_upgrade(head) {
        return Err(bad_request(
            "not a websocket handshake: the request needs `Connection: Upgrade` and \
             `Upgrade: websocket`",
        ));
    }
    let key = head.header(KEY_HEADER).map(str::trim).unwrap_or_default();
    if key.is_empty() {
        return Err(bad_request("missing Sec-WebSocket-Key"));
    }
    if head.header(VERSION_HEADER).map(str::trim) != Some("13") {
        return Err(
            bad_request("unsupported Sec-WebSocket-Version").with_header(VERSION_HEADER, "13")
        );
    }

    let offered: Vec<&str> = head
        .header_values(PROTOCOL_HEADER)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let chosen = if offered.is_empty() {
        supported
            .iter()
            .any(|p| p.ends_with("channel.k8s.io"))
            .then_some(NO_PROTOCOL)
    } else {
        supported.iter().copied().find(|s| offered.contains(s))
    };
    let Some(chosen) = chosen else {
        return Err(Rejection::new(
            403,
            "Forbidden",
            format!("requested protocol(s) are not supported: {offered:?}; supports {supported:?}"),
        ));
    };

    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if !chosen.is_empty() {
        answer.push_str(&format!("{PROTOCOL_HEADER}: {chosen}\r\n"));
    }
    answer.push_str("\r\n");
    Ok((chosen, answer.into_bytes()))
}

fn bad_request(body: &str) -> Rejection {
    Rejection::new(400, "Bad Request", body.to_string())
}

/// The exec or attach streams a WebSocket client asks for with `stdin=1`, `stdout=1`,
/// `stderr=1` and `tty=1`. Every WebSocket protocol has the resize channel, so a TTY gets it
/// whatever the version; a TTY merges stderr into stdout, as kubelet has it.
pub fn expected_streams(query: &[(String, String)]) -> ExpectedStreams {
    let set = |name: &str| query.iter().any(|(n, v)| n == name && v == "1");
    let tty = set("tty");
    ExpectedStreams {
        stdin: set("stdin"),
        stdout: set("stdout"),
        stderr: set("stderr") && !tty,
        resize: tty,
    }
}

/// The ports of a channel port-forward, from its `port` query parameters (each may list
/// several, comma-separated), checked as kubelet's `NewV4Options` checks them; the refusal is
/// a 400 as kubelet answers.
pub fn parse_ports(query: &[(String, String)]) -> Result<Vec<u16>, Rejection> {
    let values: Vec<&str> = query
        .iter()
        .filter(|(n, _)| n == "port")
        .map(|(_, v)| v.as_str())
        .collect();
    if values.is_empty() {
        return Err(bad_request("query parameter \"port\" is required"));
    }
    let mut ports = Vec::new();
    for value in values {
        if value.is_empty() {
            return Err(bad_request("query parameter \"port\" cannot be empty"));
        }
        for p in value.split(',') {
            let port: u16 = p.parse().map_err(|_| {
                Rejection::new(
                    400,
                    "Bad Request",
                    format!("unable to parse {value:?} as a port"),
                )
            })?;
            if port == 0 {
                return Err(Rejection::new(
                    400,
                    "Bad Request",
                    format!("port {value:?} must be > 0"),
                ));
            }
            ports.push(port);
        }
    }
    if ports.len() > MAX_FORWARD_PORTS {
        return Err(Rejection::new(
            400,
            "Bad Request",
            format!("at most {MAX_FORWARD_PORTS} ports can be forwarded at once"),
        ));
    }
    Ok(ports)
}

/// Serves an exec or attach over the channels of `protocol` (as [`handshake`] chose it) on a
/// connection whose `101` the daemon has written; `already_read` is what it read past the
/// request head. `expected` says which streams the client asked for (see
/// [`expected_streams`]). The task ends when the connection is over.
pub fn exec_io<IO>(
    io: IO,
    already_read: BytesMut,
    protocol: &'static str,
    expected: ExpectedStreams,
) -> (ExecIo, JoinHandle<()>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (stdin_tx, stdin_rx) = optional_channel(expected.stdin);
    let (stdout_tx, stdout_rx) = optional_channel(expected.stdout);
    let (stderr_tx, stderr_rx) = optional_channel(expected.stderr);
    let (resize_tx, resize_rx) = optional_channel(expected.resize);
    let (done_tx, done_rx) = oneshot::channel();
    let (gone_tx, gone_rx) = oneshot::channel();
    let exec = ExecIo {
        stdin: stdin_rx,
        stdout: stdout_tx,
        stderr: stderr_tx,
        resize: resize_rx,
        done: done_tx,
        client_gone: gone_rx,
    };
    // Kubernetes tells the client the session is up with an empty message on the lowest
    // channel it writes.
    let ready = if expected.stdout {
        STDOUT
    } else if expected.stderr {
        STDERR
    } else {
        ERROR
    };
    let inputs = ExecInputs {
        stdin: stdin_tx,
        resize: resize_tx,
        resize_pending: BytesMut::new(),
    };
    let outputs = ExecOutputs {
        stdout: stdout_rx,
        stderr: stderr_rx,
        done: done_rx,
        ready,
    };
    let framing = Framing::of(protocol);
    let task = tokio::spawn(async move {
        let ws = server_socket(io, already_read).await;
        let (mut sink, mut stream) = ws.split();
        let outcome = {
            let read = read_exec(&mut stream, framing, inputs);
            let write = write_exec(&mut sink, framing, outputs);
            tokio::pin!(read, write);
            tokio::select! {
                () = &mut read => Outcome::ClientGone,
                written = &mut write => Outcome::Written(written),
            }
        };
        // Both halves are released here, and with them the channel ends they held.
        if finish(outcome, &mut sink, &mut stream).await {
            let _ = gone_tx.send(());
        }
    });
    (exec, task)
}

/// Serves a port-forward over channels: for the i-th of `ports`, data on channel 2i and errors
/// on 2i+1, each opened with the port number as two little-endian bytes, as kubelet does. The
/// receiver yields one [`ForwardRequest`] per port at once. Ports past [`MAX_FORWARD_PORTS`]
/// are not served (see [`parse_ports`]). The task ends when every port's handler is done or the
/// client has gone.
pub fn forward_channels<IO>(
    io: IO,
    already_read: BytesMut,
    protocol: &'static str,
    mut ports: Vec<u16>,
) -> (mpsc::Receiver<ForwardRequest>, JoinHandle<()>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if ports.len() > MAX_FORWARD_PORTS {
        tracing::debug!(
            ports = ports.len(),
            "serving only the first {MAX_FORWARD_PORTS} ports"
        );
        ports.truncate(MAX_FORWARD_PORTS);
    }
    let (requests_tx, requests_rx) = mpsc::channel(ports.len().max(1));
    let mut from_client = Vec::with_capacity(ports.len());
    let mut replies: SelectAll<BoxStream<'static, (u8, Bytes)>> = SelectAll::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data, error) = port_channels(i);
        let (in_tx, in_rx) = mpsc::channel(CHANNEL_DEPTH);
        let (out_tx, out_rx) = mpsc::channel(CHANNEL_DEPTH);
        let (err_tx, err_rx) = oneshot::channel::<String>();
        from_client.push(Some(in_tx));
        replies.push(
            ReceiverStream::new(out_rx)
                .map(move |chunk| (data, chunk))
                .boxed(),
        );
        replies.push(
            stream::once(err_rx)
                .filter_map(move |message| {
                    std::future::ready(message.ok().map(|m| (error, Bytes::from(m))))
                })
                .boxed(),
        );
        // Room for every port was made above, so this never finds the queue full.
        let _ = requests_tx.try_send(ForwardRequest {
            port,
            from_client: in_rx,
            to_client: out_tx,
            error: err_tx,
        });
    }
    let framing = Framing::of(protocol);
    let task = tokio::spawn(async move {
        // The receiver closing tells the handler the client is gone: not before that.
        let _requests = requests_tx;
        let ws = server_socket(io, already_read).await;
        let (mut sink, mut stream) = ws.split();
        let outcome = {
            let read = read_forward(&mut stream, framing, from_client);
            let write = write_forward(&mut sink, framing, &ports, replies);
            tokio::pin!(read, write);
            tokio::select! {
                () = &mut read => Outcome::ClientGone,
                written = &mut write => Outcome::Written(written),
            }
        };
        finish(outcome, &mut sink, &mut stream).await;
    });
    (requests_rx, task)
}

/// Serves SPDY tunnelled in WebSocket binary messages: returns the byte stream for the daemon's
/// SPDY session (which speaks `portforward.k8s.io` on it) and the task pumping it. The client's
/// close reads as EOF; the daemon's shutdown of its write half closes the WebSocket.
pub fn tunnel<IO>(io: IO, already_read: BytesMut) -> (DuplexStream, JoinHandle<()>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (daemon, pump) = tokio::io::duplex(TUNNEL_BUFFER);
    let task = tokio::spawn(async move {
        let ws = server_socket(io, already_read).await;
        let (mut sink, mut stream) = ws.split();
        let (mut from_daemon, mut to_daemon) = tokio::io::split(pump);
        let outcome = {
            let read = tunnel_in(&mut stream, &mut to_daemon);
            let write = tunnel_out(&mut sink, &mut from_daemon);
            tokio::pin!(read, write);
            tokio::select! {
                () = &mut read => Outcome::ClientGone,
                written = &mut write => {
                    // The client may still be sending: keep handing it to the daemon until it
                    // closes too.
                    let _ = tokio::time::timeout(FINISH_TIMEOUT, &mut read).await;
                    Outcome::Done(written)
                }
            }
        };
        finish(outcome, &mut sink, &mut stream).await;
        // Whatever way the tunnel ended, the daemon reads EOF now.
        let _ = to_daemon.shutdown().await;
    });
    (daemon, task)
}

type Sink<IO> = SplitSink<WebSocketStream<IO>, Message>;
type Source<IO> = SplitStream<WebSocketStream<IO>>;
type WsResult<T> = Result<T, tokio_tungstenite::tungstenite::Error>;

async fn server_socket<IO>(io: IO, already_read: BytesMut) -> WebSocketStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(32 * 1024)
        .write_buffer_size(32 * 1024)
        .max_message_size(Some(MAX_MESSAGE_LEN))
        .max_frame_size(Some(MAX_MESSAGE_LEN));
    WebSocketStream::from_partially_read(io, already_read.to_vec(), Role::Server, Some(config))
        .await
}

fn optional_channel<T>(wanted: bool) -> (Option<mpsc::Sender<T>>, Option<mpsc::Receiver<T>>) {
    if wanted {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    }
}

/// The data and error channel ids of the i-th forwarded port.
fn port_channels(i: usize) -> (u8, u8) {
    // At most MAX_FORWARD_PORTS ports, so the ids fit.
    let data = u8::try_from(2 * i).unwrap_or(u8::MAX - 1);
    (data, data.saturating_add(1))
}

/// How serving a connection ended.
enum Outcome {
    /// The client closed, reset or broke the protocol.
    ClientGone,
    /// The server's side is written out and its close frame sent (or writing failed).
    Written(WsResult<()>),
    /// As `Written`, and the client's side has been read to its end already.
    Done(WsResult<()>),
}

/// Ends the connection after `outcome`; returns whether the client went away on its own.
async fn finish<IO>(outcome: Outcome, sink: &mut Sink<IO>, stream: &mut Source<IO>) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match outcome {
        Outcome::ClientGone => {
            // Completes the closing handshake if the client started one; fails quietly if the
            // connection is simply gone.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
            true
        }
        Outcome::Written(Ok(())) => {
            linger(stream).await;
            false
        }
        Outcome::Done(Ok(())) => false,
        Outcome::Written(Err(e)) | Outcome::Done(Err(e)) => {
            tracing::debug!(error = %e, "websocket write failed");
            true
        }
    }
}

/// After the server's close frame: discards what the client still sends until it closes, for
/// at most [`FINISH_TIMEOUT`].
async fn linger<IO>(stream: &mut Source<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let drain = async { while let Some(Ok(_)) = stream.next().await {} };
    if tokio::time::timeout(FINISH_TIMEOUT, drain).await.is_err() {
        tracing::debug!("websocket client did not close after the server did");
    }
}

fn close_message() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("the close signal needs exactly one channel byte, got {0}")]
    BadCloseSignal(usize),
    #[error("payload is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// What one client message carries.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// An empty message, which Kubernetes skips.
    Empty,
    Data(u8, Bytes),
    /// v5: the client closed this channel.
    Close(u8),
}

/// A channel protocol's message format.
#[derive(Debug, Clone, Copy)]
struct Framing {
    /// Text messages: the channel as an ASCII digit, then the payload in base64.
    base64: bool,
    /// Channel 255 carries close signals (v5).
    close_signal: bool,
    /// The protocol whose error-channel format applies.
    status_protocol: &'static str,
}

impl Framing {
    fn of(protocol: &'static str) -> Self {
        let versioned = matches!(
            protocol,
            V5_PROTOCOL | "v4.channel.k8s.io" | "v4.base64.channel.k8s.io"
        );
        Framing {
            base64: protocol.contains("base64"),
            close_signal: protocol == V5_PROTOCOL,
            // v4's JSON status for the versioned protocols (v5 changes nothing there), the
            // older plain message for the rest.
            status_protocol: if versioned {
                "v4.channel.k8s.io"
            } else {
                protocol
            },
        }
    }

    fn encode(self, channel: u8, payload: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + payload.len().div_ceil(3) * 4);
            text.push(char::from(b'0'.wrapping_add(channel)));
            BASE64.encode_string(payload, &mut text);
            Message::text(text)
        } else {
            let mut frame = BytesMut::with_capacity(1 + payload.len());
            frame.put_u8(channel);
            frame.extend_from_slice(payload);
            Message::Binary(frame.freeze())
        }
    }

    /// Decodes a text or binary message's bytes. Like Kubernetes, the protocol decides the
    /// format, not the message type.
    fn decode(self, data: Bytes) -> Result<Frame, FrameError> {
        let Some(&first) = data.first() else {
            return Ok(Frame::Empty);
        };
        if self.close_signal && first == CLOSE_SIGNAL {
            return match data.get(1) {
                Some(&channel) if data.len() == 2 => Ok(Frame::Close(channel)),
                _ => Err(FrameError::BadCloseSignal(data.len() - 1)),
            };
        }
        if self.base64 {
            let payload = BASE64.decode(&data[1..])?;
            Ok(Frame::Data(first.wrapping_sub(b'0'), Bytes::from(payload)))
        } else {
            Ok(Frame::Data(first, data.slice(1..)))
        }
    }
}

/// The next message's bytes, skipping control messages; None once the client has closed or
/// the connection has failed.
async fn next_data<IO>(stream: &mut Source<IO>) -> Option<Bytes>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match stream.next().await? {
            Ok(message @ (Message::Binary(_) | Message::Text(_))) => {
                return Some(message.into_data());
            }
            // tungstenite answers the close frame itself; the stream ends after it.
            Ok(Message::Close(_)) => return None,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "websocket read failed");
                return None;
            }
        }
    }
}

/// The exec inputs the client feeds.
struct ExecInputs {
    stdin: Option<mpsc::Sender<Bytes>>,
    resize: Option<mpsc::Sender<TerminalSize>>,
    resize_pending: BytesMut,
}

/// Reads the client's messages until it goes, handing stdin and resizes to the handler. Waits
/// while the handler's queue is full, which stops reading the socket: the backpressure.
async fn read_exec<IO>(stream: &mut Source<IO>, framing: Framing, mut inputs: ExecInputs)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(data) = next_data(stream).await {
        let frame = match framing.decode(data) {
            Ok(frame) => frame,
            Err(e @ FrameError::BadCloseSignal(_)) => {
                // Kubernetes drops the connection on a malformed close signal.
                tracing::debug!(error = %e, "closing the websocket");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "skipping a websocket message");
                continue;
            }
        };
        match frame {
            Frame::Empty => {}
            Frame::Close(channel) if channel >= EXEC_CHANNELS => {
                tracing::debug!(
                    channel,
                    "close signal for no channel; closing the websocket"
                );
                return;
            }
            Frame::Close(STDIN) => inputs.stdin = None,
            Frame::Close(RESIZE) => inputs.resize = None,
            // Closing a channel the server only writes changes nothing.
            Frame::Close(_) => {}
            Frame::Data(STDIN, payload) => {
                if let Some(tx) = &inputs.stdin
                    && !payload.is_empty()
                    && tx.send(payload).await.is_err()
                {
                    // The handler stopped reading stdin; the rest is discarded.
                    inputs.stdin = None;
                }
            }
            Frame::Data(RESIZE, payload) => inputs.resize_data(&payload).await,
            Frame::Data(channel, _) => {
                tracing::trace!(
                    channel,
                    "ignoring data on a channel the server does not read"
                );
            }
        }
    }
}

impl ExecInputs {
    async fn resize_data(&mut self, payload: &[u8]) {
        let Some(tx) = &self.resize else { return };
        self.resize_pending.extend_from_slice(payload);
        let sizes = match decode_resizes(&mut self.resize_pending) {
            Ok(sizes) if self.resize_pending.len() <= MAX_RESIZE_PENDING => sizes,
            Ok(_) => {
                tracing::debug!("resize message too long; ignoring further resizes");
                self.resize = None;
                return;
            }
            Err(e) => {
                // As Kubernetes' decoder, stop at the first bad message.
                tracing::debug!(error = %e, "bad resize message; ignoring further resizes");
                self.resize = None;
                return;
            }
        };
        for size in sizes {
            if tx.send(size).await.is_err() {
                self.resize = None;
                return;
            }
        }
    }
}

/// The exec outputs the handler feeds.
struct ExecOutputs {
    stdout: Option<mpsc::Receiver<Bytes>>,
    stderr: Option<mpsc::Receiver<Bytes>>,
    done: oneshot::Receiver<ExitReport>,
    /// The channel of the empty message announcing the session.
    ready: u8,
}

/// Writes the handler's output until it reports the end, then the status on the error channel
/// and the close frame.
async fn write_exec<IO>(sink: &mut Sink<IO>, framing: Framing, mut out: ExecOutputs) -> WsResult<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    sink.send(framing.encode(out.ready, &[])).await?;
    let report = loop {
        tokio::select! {
            chunk = next_chunk(&mut out.stdout) => send_chunk(sink, framing, STDOUT, chunk).await?,
            chunk = next_chunk(&mut out.stderr) => send_chunk(sink, framing, STDERR, chunk).await?,
            report = &mut out.done => break report.ok(),
        }
    };
    // The handler reports after its last output, which is queued by then; a sender it still
    // holds is not waited for.
    for (channel, rx) in [(STDOUT, &mut out.stdout), (STDERR, &mut out.stderr)] {
        if let Some(rx) = rx {
            while let Ok(chunk) = rx.try_recv() {
                send_chunk(sink, framing, channel, Some(chunk)).await?;
            }
        }
    }
    if let Some(report) = report
        && let Some(status) =
            error_stream_payload(framing.status_protocol, report.code, &report.message)
    {
        sink.send(framing.encode(ERROR, &status)).await?;
    }
    sink.send(close_message()).await
}

/// The next chunk from an output the handler may have closed; pends forever on a closed one so
/// that `select!` waits for the others.
async fn next_chunk(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    let Some(receiver) = rx else {
        return std::future::pending().await;
    };
    let chunk = receiver.recv().await;
    if chunk.is_none() {
        *rx = None;
    }
    chunk
}

async fn send_chunk<IO>(
    sink: &mut Sink<IO>,
    framing: Framing,
    channel: u8,
    chunk: Option<Bytes>,
) -> WsResult<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match chunk {
        Some(chunk) if !chunk.is_empty() => sink.send(framing.encode(channel, &chunk)).await,
        _ => Ok(()),
    }
}

/// Reads the client's messages until it goes, handing each port's data to its handler.
async fn read_forward<IO>(
    stream: &mut Source<IO>,
    framing: Framing,
    mut from_client: Vec<Option<mpsc::Sender<Bytes>>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(data) = next_data(stream).await {
        let (channel, payload) = match framing.decode(data) {
            Ok(Frame::Data(channel, payload)) => (channel, payload),
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "skipping a websocket message");
                continue;
            }
        };
        // Error channels (odd) are the server's to write.
        if channel % 2 != 0 || payload.is_empty() {
            continue;
        }
        let Some(slot) = from_client.get_mut(usize::from(channel / 2)) else {
            tracing::trace!(channel, "ignoring data on a channel of no port");
            continue;
        };
        if let Some(tx) = slot
            && tx.send(payload).await.is_err()
        {
            *slot = None;
        }
    }
}

/// Announces each port on its two channels, then writes the handlers' data and errors until
/// every handler is done, then the close frame.
async fn write_forward<IO>(
    sink: &mut Sink<IO>,
    framing: Framing,
    ports: &[u16],
    mut replies: SelectAll<BoxStream<'static, (u8, Bytes)>>,
) -> WsResult<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = port_channels(i);
        sink.feed(framing.encode(data, &port.to_le_bytes())).await?;
        sink.feed(framing.encode(error, &port.to_le_bytes()))
            .await?;
    }
    sink.flush().await?;
    while let Some((channel, chunk)) = replies.next().await {
        if !chunk.is_empty() {
            sink.send(framing.encode(channel, &chunk)).await?;
        }
    }
    sink.send(close_message()).await
}

/// Client to daemon: each binary message's bytes in order. Ends at the client's close.
async fn tunnel_in<IO, W>(stream: &mut Source<IO>, to_daemon: &mut W)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let data = match stream.next().await {
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Text(_))) => {
                // client-go's tunnel fails on a text message; so does this end.
                tracing::debug!("text message in a SPDY tunnel; closing it");
                return;
            }
            Some(Ok(Message::Close(_))) | None => return,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                return;
            }
        };
        if to_daemon.write_all(&data).await.is_err() {
            // The daemon closed its end; keep reading so that the client's close is seen.
            continue;
        }
    }
}

/// Daemon to client: what the daemon writes, in binary messages; at its shutdown, the close
/// frame.
async fn tunnel_out<IO, R>(sink: &mut Sink<IO>, from_daemon: &mut R) -> WsResult<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(TUNNEL_CHUNK);
    loop {
        buf.reserve(TUNNEL_CHUNK);
        match (&mut *from_daemon)
            .take(TUNNEL_CHUNK as u64)
            .read_buf(&mut buf)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => sink.send(Message::Binary(buf.split().freeze())).await?,
        }
    }
    sink.send(close_message()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::http::read_request_head;
    use crate::streaming::session::exit_status_json;
    use tokio::io::DuplexStream;
    use tokio_tungstenite::client_async;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    const TIMEOUT: Duration = Duration::from_secs(5);

    type Client = WebSocketStream<DuplexStream>;

    async fn within<F: std::future::Future>(fut: F) -> F::Output {
        tokio::time::timeout(TIMEOUT, fut).await.expect("timed out")
    }

    fn head(method: &str, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: method.to_string(),
            path: "/exec/tok".to_string(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn upgrade(protocols: Option<&str>) -> RequestHead {
        let mut headers = vec![
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "WebSocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        if let Some(p) = protocols {
            headers.push(("Sec-WebSocket-Protocol", p));
        }
        head("GET", &headers)
    }

    /// A tungstenite client upgraded through `handshake` over an in-memory pipe; returns the
    /// client, the server's end and what the server read past the head.
    async fn connect(
        target: &str,
        protocols: Option<&str>,
        supported: &[&'static str],
    ) -> (Client, DuplexStream, BytesMut, &'static str, RequestHead) {
        let (client_io, mut server_io) = tokio::io::duplex(256 * 1024);
        let mut request = format!("ws://localhost{target}")
            .into_client_request()
            .unwrap();
        if let Some(p) = protocols {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
        }
        let client = tokio::spawn(client_async(request, client_io));
        let (head, rest) = read_request_head(&mut server_io, TIMEOUT).await.unwrap();
        let (protocol, answer) = handshake(&head, supported).unwrap();
        server_io.write_all(&answer).await.unwrap();
        let (ws, _) = within(client).await.unwrap().unwrap();
        (ws, server_io, rest, protocol, head)
    }

    /// The next data or close message.
    async fn recv(client: &mut Client) -> Message {
        loop {
            match within(client.next()).await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => return m,
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    async fn recv_binary(client: &mut Client) -> Vec<u8> {
        match recv(client).await {
            Message::Binary(b) => b.to_vec(),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    async fn recv_text(client: &mut Client) -> String {
        match recv(client).await {
            Message::Text(t) => t.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    async fn expect_close(client: &mut Client) {
        match recv(client).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    fn framed(channel: u8, payload: &[u8]) -> Message {
        let mut v = vec![channel];
        v.extend_from_slice(payload);
        Message::Binary(v.into())
    }

    /// The example of RFC 6455, section 1.3.
    #[test]
    fn accept_key_is_rfc_6455s() {
        let (protocol, answer) = handshake(&upgrade(None), EXEC_PROTOCOLS).unwrap();
        assert_eq!(protocol, NO_PROTOCOL);
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(answer.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!answer.contains("Sec-WebSocket-Protocol"));
        assert!(answer.ends_with("\r\n\r\n"));
    }

    #[test]
    fn negotiates_the_most_preferred_common_protocol() {
        let pick = |offered: &str, supported| handshake(&upgrade(Some(offered)), supported);
        let (p, answer) = pick("v4.channel.k8s.io, v5.channel.k8s.io", EXEC_PROTOCOLS).unwrap();
        assert_eq!(p, V5_PROTOCOL);
        assert!(
            String::from_utf8(answer)
                .unwrap()
                .contains("\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n")
        );
        let (p, _) = pick("base64.channel.k8s.io,bogus", EXEC_PROTOCOLS).unwrap();
        assert_eq!(p, "base64.channel.k8s.io");
        let (p, _) = pick(
            "v4.channel.k8s.io, SPDY/3.1+portforward.k8s.io",
            PORT_FORWARD_PROTOCOLS,
        )
        .unwrap();
        assert_eq!(p, TUNNEL_PROTOCOL);
        assert!(is_tunnel(p));
        assert!(!is_tunnel("v4.channel.k8s.io"));
        // Several headers count as one list.
        let mut h = upgrade(Some("bogus"));
        h.headers.push((
            "sec-websocket-protocol".into(),
            "v4.base64.channel.k8s.io".into(),
        ));
        assert_eq!(
            handshake(&h, PORT_FORWARD_PROTOCOLS).unwrap().0,
            "v4.base64.channel.k8s.io"
        );
        // Nothing offered: plain channels where channels are served, nothing for a tunnel only.
        assert_eq!(
            handshake(&upgrade(None), PORT_FORWARD_PROTOCOLS).unwrap().0,
            NO_PROTOCOL
        );
        assert_eq!(
            handshake(&upgrade(None), &[TUNNEL_PROTOCOL])
                .unwrap_err()
                .status,
            403
        );
    }

    #[test]
    fn refuses_as_kubernetes_does() {
        // No common protocol: kubelet's port-forward has no unversioned channel protocols.
        let r = handshake(&upgrade(Some("channel.k8s.io")), PORT_FORWARD_PROTOCOLS).unwrap_err();
        assert_eq!(r.status, 403);
        let r = handshake(&upgrade(Some("v3.channel.k8s.io")), EXEC_PROTOCOLS).unwrap_err();
        assert_eq!(r.status, 403);

        let mut post = upgrade(None);
        post.method = "POST".into();
        assert_eq!(handshake(&post, EXEC_PROTOCOLS).unwrap_err().status, 405);

        let no_key = head(
            "GET",
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
            ],
        );
        assert_eq!(handshake(&no_key, EXEC_PROTOCOLS).unwrap_err().status, 400);

        let mut old = upgrade(None);
        old.headers.retain(|(n, _)| n != "Sec-WebSocket-Version");
        old.headers
            .push(("Sec-WebSocket-Version".into(), "8".into()));
        let r = handshake(&old, EXEC_PROTOCOLS).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(
            r.headers
                .contains(&("Sec-WebSocket-Version", "13".to_string()))
        );

        let spdy = head("GET", &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]);
        assert!(!is_websocket_upgrade(&spdy));
        assert_eq!(handshake(&spdy, EXEC_PROTOCOLS).unwrap_err().status, 400);
        let no_connection = head("GET", &[("Upgrade", "websocket")]);
        assert!(!is_websocket_upgrade(&no_connection));
        assert!(is_websocket_upgrade(&upgrade(None)));
    }

    #[test]
    fn query_gives_streams_and_ports() {
        let q = |s: &str| crate::streaming::http::parse_query(s);
        let e = expected_streams(&q("stdin=1&stdout=1&stderr=1&tty=1"));
        assert!(e.stdin && e.stdout && !e.stderr && e.resize);
        let e = expected_streams(&q("stdout=1&stderr=1"));
        assert!(!e.stdin && e.stdout && e.stderr && !e.resize);

        assert_eq!(
            parse_ports(&q("port=80&port=8080,9090")).unwrap(),
            [80, 8080, 9090]
        );
        for bad in ["", "port=", "port=0", "port=x", "port=70000", "port=80,"] {
            assert_eq!(parse_ports(&q(bad)).unwrap_err().status, 400, "{bad}");
        }
        let many: Vec<String> = (1..=41).map(|p| format!("port={p}")).collect();
        assert!(parse_ports(&q(&many.join("&"))).is_err());
    }

    #[test]
    fn frames_decode_as_their_protocol_says() {
        let v5 = Framing::of(V5_PROTOCOL);
        assert_eq!(v5.decode(Bytes::from_static(&[])).unwrap(), Frame::Empty);
        assert_eq!(
            v5.decode(Bytes::from_static(&[255, 0])).unwrap(),
            Frame::Close(0)
        );
        assert!(matches!(
            v5.decode(Bytes::from_static(&[255, 0, 1])),
            Err(FrameError::BadCloseSignal(2))
        ));
        // Without the close signal, 255 is just a channel.
        let v4 = Framing::of("v4.channel.k8s.io");
        assert_eq!(
            v4.decode(Bytes::from_static(&[255, 0])).unwrap(),
            Frame::Data(255, Bytes::from_static(&[0]))
        );
        let b64 = Framing::of("v4.base64.channel.k8s.io");
        assert_eq!(
            b64.decode(Bytes::from_static(b"0Zm9vCg==")).unwrap(),
            Frame::Data(0, Bytes::from_static(b"foo\n"))
        );
        assert!(b64.decode(Bytes::from_static(b"0***")).is_err());
        assert_eq!(b64.encode(1, b"\n"), Message::text("1Cg=="));
        assert_eq!(v4.status_protocol, "v4.channel.k8s.io");
        assert_eq!(v5.status_protocol, "v4.channel.k8s.io");
        assert_eq!(b64.status_protocol, "v4.channel.k8s.io");
        assert_eq!(Framing::of(NO_PROTOCOL).status_protocol, NO_PROTOCOL);
    }

    /// Echoes stdin to stdout `chunks` times, then reports `report`.
    async fn echo(mut exec: ExecIo, chunks: usize, report: ExitReport) {
        let mut stdin = exec.stdin.take().unwrap();
        let stdout = exec.stdout.take().unwrap();
        for _ in 0..chunks {
            let chunk = stdin.recv().await.unwrap();
            stdout.send(chunk).await.unwrap();
        }
        drop(stdout);
        exec.done.send(report).unwrap();
    }

    #[tokio::test]
    async fn v4_exec_echoes_and_ends_with_the_status() {
        let (mut client, io, rest, protocol, head) = connect(
            "/exec/tok?command=cat&stdin=1&stdout=1",
            Some("v4.channel.k8s.io"),
            EXEC_PROTOCOLS,
        )
        .await;
        assert_eq!(protocol, "v4.channel.k8s.io");
        let expected = expected_streams(&head.query_pairs());
        let (exec, task) = exec_io(io, rest, protocol, expected);
        assert!(exec.stderr.is_none() && exec.resize.is_none());
        let handler = tokio::spawn(echo(exec, 2, ExitReport::success()));

        assert_eq!(recv_binary(&mut client).await, [STDOUT]);
        client.send(framed(STDIN, b"hello ")).await.unwrap();
        assert_eq!(recv_binary(&mut client).await, b"\x01hello ");
        client.send(framed(STDIN, b"world")).await.unwrap();
        assert_eq!(recv_binary(&mut client).await, b"\x01world");
        let status = recv_binary(&mut client).await;
        assert_eq!(status[0], ERROR);
        assert_eq!(status[1..], *exit_status_json(Some(0), "").as_bytes());
        expect_close(&mut client).await;
        // The client answers the close; the server's task then ends.
        assert!(within(client.next()).await.is_none());
        within(handler).await.unwrap();
        within(task).await.unwrap();
    }

    #[tokio::test]
    async fn base64_exec_uses_text_messages() {
        let (mut client, io, rest, protocol, _) = connect(
            "/exec/tok?stdin=1&stdout=1&stderr=1",
            Some("base64.channel.k8s.io"),
            EXEC_PROTOCOLS,
        )
        .await;
        let expected = expected_streams(&crate::streaming::http::parse_query(
            "stdin=1&stdout=1&stderr=1",
        ));
        let (exec, task) = exec_io(io, rest, protocol, expected);
        let report = ExitReport {
            code: Some(2),
            message: "error executing command [cat], exit code 2".into(),
        };
        let handler = tokio::spawn(echo(exec, 1, report.clone()));

        assert_eq!(recv_text(&mut client).await, "1");
        client.send(Message::text("0aGk=")).await.unwrap();
        assert_eq!(recv_text(&mut client).await, "1aGk=");
        // The unversioned protocol's error channel carries the plain message.
        let status = recv_text(&mut client).await;
        let decoded = BASE64.decode(&status[1..]).unwrap();
        assert_eq!(&status[..1], "3");
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            format!(
                "command terminated with non-zero exit code: {}",
                report.message
            )
        );
        expect_close(&mut client).await;
        drop(client);
        within(handler).await.unwrap();
        within(task).await.unwrap();
    }

    #[tokio::test]
    async fn v5_close_signal_closes_stdin() {
        let (mut client, io, rest, protocol, _) =
            connect("/attach/tok", Some(V5_PROTOCOL), EXEC_PROTOCOLS).await;
        assert_eq!(protocol, V5_PROTOCOL);
        let expected = ExpectedStreams {
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        let (mut exec, task) = exec_io(io, rest, protocol, expected);
        let mut stdin = exec.stdin.take().unwrap();

        assert_eq!(recv_binary(&mut client).await, [STDOUT]);
        client.send(framed(STDIN, b"last")).await.unwrap();
        client
            .send(Message::Binary(vec![CLOSE_SIGNAL, STDIN].into()))
            .await
            .unwrap();
        assert_eq!(within(stdin.recv()).await.unwrap(), "last");
        assert!(within(stdin.recv()).await.is_none());

        drop(exec.stdout.take());
        exec.done
            .send(ExitReport::failed("container is gone"))
            .unwrap();
        let status = recv_binary(&mut client).await;
        assert_eq!(
            status[1..],
            *exit_status_json(None, "container is gone").as_bytes()
        );
        expect_close(&mut client).await;
        drop(client);
        within(task).await.unwrap();
    }

    #[tokio::test]
    async fn resizes_reach_the_handler() {
        let (mut client, io, rest, protocol, head) = connect(
            "/exec/tok?stdin=1&stdout=1&tty=1",
            Some("v4.channel.k8s.io"),
            EXEC_PROTOCOLS,
        )
        .await;
        let (mut exec, _task) = exec_io(io, rest, protocol, expected_streams(&head.query_pairs()));
        let mut resize = exec.resize.take().unwrap();
        assert_eq!(recv_binary(&mut client).await, [STDOUT]);

        // One size split over two messages, then two in one.
        client
            .send(framed(RESIZE, br#"{"Width":80,"#))
            .await
            .unwrap();
        client
            .send(framed(RESIZE, br#""Height":24}"#))
            .await
            .unwrap();
        client
            .send(framed(
                RESIZE,
                br#"{"Width":100,"Height":30} {"Width":120,"Height":40}"#,
            ))
            .await
            .unwrap();
        for (width, height) in [(80, 24), (100, 30), (120, 40)] {
            assert_eq!(
                within(resize.recv()).await.unwrap(),
                TerminalSize { width, height }
            );
        }
        // A bad one ends the resizes.
        client.send(framed(RESIZE, b"nonsense")).await.unwrap();
        assert!(within(resize.recv()).await.is_none());
    }

    #[tokio::test]
    async fn client_leaving_fires_client_gone() {
        let (mut client, io, rest, protocol, _) = connect("/exec/tok", None, EXEC_PROTOCOLS).await;
        assert_eq!(protocol, NO_PROTOCOL);
        let expected = ExpectedStreams {
            stdin: true,
            stderr: true,
            ..Default::default()
        };
        let (mut exec, task) = exec_io(io, rest, protocol, expected);
        assert_eq!(recv_binary(&mut client).await, [STDERR]);
        client.close(None).await.unwrap();
        within(&mut exec.client_gone).await.unwrap();
        assert!(within(exec.stdin.as_mut().unwrap().recv()).await.is_none());
        // Output to a client that has gone fails rather than queueing.
        let stderr = exec.stderr.take().unwrap();
        within(task).await.unwrap();
        assert!(stderr.send(Bytes::from_static(b"x")).await.is_err());
    }

    #[tokio::test]
    async fn reads_what_the_daemon_read_past_the_head() {
        let (mut client_io, server_io) = tokio::io::duplex(64 * 1024);
        // A masked client frame on stdin, sent right behind the request head.
        let mask = [1u8, 2, 3, 4];
        let payload = b"\x00early";
        let mut frame = vec![0x82, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let expected = ExpectedStreams {
            stdin: true,
            ..Default::default()
        };
        let (mut exec, _task) = exec_io(server_io, BytesMut::from(&frame[..]), "", expected);
        assert_eq!(
            within(exec.stdin.as_mut().unwrap().recv()).await.unwrap(),
            "early"
        );
        // The ready message goes to the error channel when nothing else is written.
        let mut buf = [0u8; 3];
        within(client_io.read_exact(&mut buf)).await.unwrap();
        assert_eq!(buf, [0x82, 1, ERROR]);
    }

    #[tokio::test]
    async fn port_forward_channels_carry_each_port() {
        let (mut client, io, rest, protocol, head) = connect(
            "/portforward/tok?port=80&port=8080",
            Some("v4.channel.k8s.io"),
            PORT_FORWARD_PROTOCOLS,
        )
        .await;
        let ports = parse_ports(&head.query_pairs()).unwrap();
        let (mut requests, task) = forward_channels(io, rest, protocol, ports);
        let mut first = within(requests.recv()).await.unwrap();
        let mut second = within(requests.recv()).await.unwrap();
        assert_eq!((first.port, second.port), (80, 8080));

        assert_eq!(recv_binary(&mut client).await, [0, 80, 0]);
        assert_eq!(recv_binary(&mut client).await, [1, 80, 0]);
        assert_eq!(recv_binary(&mut client).await, [2, 0x90, 0x1f]);
        assert_eq!(recv_binary(&mut client).await, [3, 0x90, 0x1f]);

        client.send(framed(2, b"ping")).await.unwrap();
        // Error channels are the server's: ignored.
        client.send(framed(1, b"ignored")).await.unwrap();
        client.send(framed(0, b"to 80")).await.unwrap();
        assert_eq!(within(second.from_client.recv()).await.unwrap(), "ping");
        assert_eq!(within(first.from_client.recv()).await.unwrap(), "to 80");

        second
            .to_client
            .send(Bytes::from_static(b"pong"))
            .await
            .unwrap();
        assert_eq!(recv_binary(&mut client).await, b"\x02pong");
        first.error.send("connection refused".into()).unwrap();
        assert_eq!(recv_binary(&mut client).await, b"\x01connection refused");
        drop(first.to_client);
        drop(second);
        expect_close(&mut client).await;
        drop(client);
        within(task).await.unwrap();
        // Only now, with the session over, does the request channel close.
        assert!(within(requests.recv()).await.is_none());
    }

    #[tokio::test]
    async fn port_forward_base64_announces_ports_in_text() {
        let (mut client, io, rest, protocol, _) = connect(
            "/portforward/tok?port=5432",
            Some("v4.base64.channel.k8s.io"),
            PORT_FORWARD_PROTOCOLS,
        )
        .await;
        let (mut requests, _task) = forward_channels(io, rest, protocol, vec![5432]);
        let mut request = within(requests.recv()).await.unwrap();
        let port = BASE64.encode(5432u16.to_le_bytes());
        assert_eq!(recv_text(&mut client).await, format!("0{port}"));
        assert_eq!(recv_text(&mut client).await, format!("1{port}"));
        client.send(Message::text("0aGk=")).await.unwrap();
        assert_eq!(within(request.from_client.recv()).await.unwrap(), "hi");
    }

    #[tokio::test]
    async fn tunnel_carries_bytes_both_ways() {
        let (mut client, io, rest, protocol, _) = connect(
            "/portforward/tok",
            Some(TUNNEL_PROTOCOL),
            PORT_FORWARD_PROTOCOLS,
        )
        .await;
        assert!(is_tunnel(protocol));
        let (mut daemon, task) = tunnel(io, rest);

        client
            .send(Message::Binary(Bytes::from_static(b"SPDY ")))
            .await
            .unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"frames")))
            .await
            .unwrap();
        let mut got = [0u8; 11];
        within(daemon.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"SPDY frames");

        daemon.write_all(b"reply").await.unwrap();
        assert_eq!(recv_binary(&mut client).await, b"reply");

        // The client's close is the daemon's EOF.
        client.close(None).await.unwrap();
        let mut rest = Vec::new();
        within(daemon.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty());
        within(task).await.unwrap();
    }

    #[tokio::test]
    async fn tunnel_shutdown_by_the_daemon_closes_the_websocket() {
        let (mut client, io, rest, _, _) = connect(
            "/portforward/tok",
            Some(TUNNEL_PROTOCOL),
            PORT_FORWARD_PROTOCOLS,
        )
        .await;
        let (mut daemon, task) = tunnel(io, rest);
        daemon.write_all(b"bye").await.unwrap();
        daemon.shutdown().await.unwrap();
        assert_eq!(recv_binary(&mut client).await, b"bye");
        expect_close(&mut client).await;
        assert!(within(client.next()).await.is_none());
        within(task).await.unwrap();
        let mut rest = Vec::new();
        within(daemon.read_to_end(&mut rest)).await.unwrap();
    }
}
