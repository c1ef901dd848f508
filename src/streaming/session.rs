//! The server side of one SPDY/3.1 connection after the HTTP upgrade: the client opens the
//! streams (one per channel: error, stdin, stdout, stderr, resize; or data and error per
//! forwarded port), the server answers each and moves bytes on them.
//!
//! Two tasks run per connection: a reader that decodes frames, answers what the protocol
//! answers by itself (SYN_REPLY, PING) and hands streams and their data to the user; and a
//! writer that encodes and sends every outgoing frame in order, fed by one channel. Both
//! directions keep their own header compression state, so each task owns its own [`Codec`].
//!
//! Flow control is not enforced, as Kubernetes' clients do not enforce it either: the reader
//! waits for a stream's consumer when that stream's queue is full, which holds up the whole
//! connection. A consumer must therefore keep reading `incoming` or drop it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::spdy::{Codec, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, SpdyError, status};

/// Largest DATA frame this side sends; larger writes are split.
const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Bytes of encoded frames the writer gathers before one write to the socket.
const WRITE_BATCH: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("SPDY: {0}")]
    Spdy(#[from] SpdyError),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection is closed")]
    Closed,
    #[error("stream {0} was reset by the client")]
    Reset(u32),
    #[error("stream {0} is already closed for sending")]
    StreamClosed(u32),
    #[error("timed out waiting for the client to create streams")]
    StreamTimeout,
    #[error("the client created no error stream")]
    NoErrorStream,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Largest frame accepted from the client.
    pub max_frame_len: usize,
    /// Most streams open at once; further SYN_STREAMs are refused.
    pub max_streams: usize,
    /// DATA payloads queued per stream before the reader waits for the consumer.
    pub data_buffer: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            // Kubernetes' clients write 32 KiB at a time; this leaves ample room.
            max_frame_len: 1024 * 1024,
            max_streams: 100,
            data_buffer: 4,
        }
    }
}

/// A stream the client opened, already answered with SYN_REPLY.
#[derive(Debug)]
pub struct Stream {
    pub id: u32,
    /// As the client sent them, names lowercase.
    pub headers: Vec<(String, String)>,
    /// DATA payloads in order; closed when the client half-closes (FIN), resets the stream
    /// or the connection ends.
    pub incoming: mpsc::Receiver<Bytes>,
    pub out: StreamWriter,
}

impl Stream {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `streamtype` header Kubernetes' clients label each stream with.
    pub fn stream_type(&self) -> Option<&str> {
        self.header("streamtype")
    }
}

/// State the reader and the stream's writer handles share.
#[derive(Debug, Default)]
struct Shared {
    reset: AtomicBool,
    local_closed: AtomicBool,
}

/// Sends on one stream. Clones share the stream: one `finish` closes it for all.
#[derive(Debug, Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether the client reset the stream; sending on it is pointless then.
    pub fn is_reset(&self) -> bool {
        self.shared.reset.load(Ordering::Acquire)
    }

    /// Sends `data` as one or more DATA frames; nothing for empty data.
    pub async fn send(&self, mut data: Bytes) -> Result<(), SessionError> {
        self.check_open()?;
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_CHUNK));
            self.push(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes the stream with an empty DATA frame carrying FIN. Later calls do nothing.
    pub async fn finish(&self) -> Result<(), SessionError> {
        if self.is_reset() || self.shared.local_closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.push(Frame::Data {
            stream_id: self.id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }

    /// Aborts the stream in both directions with one of [`status`].
    pub async fn reset(&self, code: u32) -> Result<(), SessionError> {
        self.shared.local_closed.store(true, Ordering::Release);
        self.push(Frame::RstStream {
            stream_id: self.id,
            status: code,
        })
        .await
    }

    fn check_open(&self) -> Result<(), SessionError> {
        if self.is_reset() {
            return Err(SessionError::Reset(self.id));
        }
        if self.shared.local_closed.load(Ordering::Acquire) {
            return Err(SessionError::StreamClosed(self.id));
        }
        Ok(())
    }

    async fn push(&self, frame: Frame) -> Result<(), SessionError> {
        self.frames
            .send(frame)
            .await
            .map_err(|_| SessionError::Closed)
    }
}

/// One upgraded connection. Dropping it stops reading from the client; frames already queued
/// are still written as long as some [`StreamWriter`] is alive.
#[derive(Debug)]
pub struct Session {
    streams: mpsc::Receiver<Stream>,
    frames: Option<mpsc::Sender<Frame>>,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<Result<(), SessionError>>>,
    last_stream_id: Arc<AtomicU32>,
}

impl Session {
    /// Starts serving SPDY on `io`. `already_read` holds bytes read past the HTTP request
    /// head, which are the start of the SPDY stream.
    pub fn new<IO>(io: IO, already_read: BytesMut, config: SessionConfig) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(io);
        // Enough for a burst of replies and data without making every send wait.
        let (frames_tx, frames_rx) = mpsc::channel(64);
        let (streams_tx, streams_rx) = mpsc::channel(16);
        let last_stream_id = Arc::new(AtomicU32::new(0));
        let reader = Reader {
            frames: frames_tx.clone(),
            accept: Some(streams_tx),
            streams: HashMap::new(),
            last_stream_id: last_stream_id.clone(),
            config,
        };
        let reader = tokio::spawn(async move {
            if let Err(e) = reader.run(read_half, already_read).await {
                tracing::debug!(error = %e, "streaming connection ended");
            }
        });
        let writer = tokio::spawn(write_loop(write_half, frames_rx));
        Session {
            streams: streams_rx,
            frames: Some(frames_tx),
            reader,
            writer: Some(writer),
            last_stream_id,
        }
    }

    /// The next stream the client opens; `None` once it will open no more (the connection
    /// ended or the client sent GOAWAY).
    pub async fn accept(&mut self) -> Option<Stream> {
        self.streams.recv().await
    }

    /// Ends the connection: sends GOAWAY, stops reading, and waits up to `grace` for the
    /// queued frames to be written; that needs every [`StreamWriter`] to be dropped first.
    pub async fn close(&mut self, grace: Duration) -> Result<(), SessionError> {
        self.reader.abort();
        if let Some(frames) = self.frames.take() {
            let goaway = Frame::GoAway {
                last_good_stream_id: self.last_stream_id.load(Ordering::Acquire),
                status: 0,
            };
            // A writer that is gone already has nothing left to flush.
            let _ = frames.send(goaway).await;
        }
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        match tokio::time::timeout(grace, &mut writer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SessionError::Closed),
            Err(_) => {
                writer.abort();
                Err(SessionError::Closed)
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct Entry {
    /// `None` once the client half-closed the stream.
    data: Option<mpsc::Sender<Bytes>>,
    shared: Arc<Shared>,
}

struct Reader {
    frames: mpsc::Sender<Frame>,
    /// `None` once new streams are no longer taken: GOAWAY from the client, or nobody accepts.
    accept: Option<mpsc::Sender<Stream>>,
    streams: HashMap<u32, Entry>,
    last_stream_id: Arc<AtomicU32>,
    config: SessionConfig,
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        mut io: R,
        mut buf: BytesMut,
    ) -> Result<(), SessionError> {
        let mut codec = Codec::new();
        codec.set_max_frame_len(self.config.max_frame_len);
        loop {
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => self.handle(frame).await?,
                    Ok(None) => break,
                    Err(e) => {
                        // The header compression state is lost: nothing more can be read.
                        let _ = self
                            .frames
                            .send(Frame::GoAway {
                                last_good_stream_id: self.last_stream_id.load(Ordering::Acquire),
                                status: status::PROTOCOL_ERROR,
                            })
                            .await;
                        return Err(e.into());
                    }
                }
            }
            buf.reserve(8 * 1024);
            if io.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), SessionError> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => self.open(stream_id, flags, headers).await?,
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let Some(entry) = self.streams.get(&stream_id) else {
                    // Late data on a stream already reset or finished: nothing to deliver to.
                    return Ok(());
                };
                if let Some(tx) = entry.data.clone()
                    && !data.is_empty()
                {
                    // A consumer that dropped its receiver does not want the data.
                    let _ = tx.send(data).await;
                }
                if flags & FLAG_FIN != 0 {
                    self.remote_finished(stream_id);
                }
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0 {
                    self.remote_finished(stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(entry) = self.streams.remove(&stream_id) {
                    entry.shared.reset.store(true, Ordering::Release);
                }
            }
            // Odd ids are the client's own pings, to be echoed; even ones would answer ours.
            Frame::Ping { id } if !id.is_multiple_of(2) => self.send(Frame::Ping { id }).await?,
            Frame::GoAway { .. } => self.accept = None,
            // Settings and windows only matter for flow control, which is not enforced; the
            // server opens no streams, so a SYN_REPLY answers nothing.
            Frame::Ping { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::SynReply { .. } => {}
        }
        Ok(())
    }

    async fn open(
        &mut self,
        stream_id: u32,
        flags: u8,
        headers: Vec<(String, String)>,
    ) -> Result<(), SessionError> {
        let last = self.last_stream_id.load(Ordering::Acquire);
        // Client streams are odd and increasing.
        if stream_id.is_multiple_of(2) || stream_id <= last {
            return self.refuse(stream_id, status::PROTOCOL_ERROR).await;
        }
        self.last_stream_id.store(stream_id, Ordering::Release);
        let Some(accept) = self.accept.clone() else {
            return self.refuse(stream_id, status::REFUSED_STREAM).await;
        };
        if self.streams.len() >= self.config.max_streams {
            // Streams closed both ways linger until room is needed.
            self.streams
                .retain(|_, e| e.data.is_some() || !e.shared.local_closed.load(Ordering::Acquire));
        }
        if self.streams.len() >= self.config.max_streams {
            return self.refuse(stream_id, status::REFUSED_STREAM).await;
        }

        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(self.config.data_buffer.max(1));
        if flags & FLAG_UNIDIRECTIONAL != 0 {
            // The client will not listen, so nothing may be sent, not even a reply.
            shared.local_closed.store(true, Ordering::Release);
        } else {
            self.send(Frame::SynReply {
                stream_id,
                flags: 0,
                headers: Vec::new(),
            })
            .await?;
        }
        let remote_open = flags & FLAG_FIN == 0;
        self.streams.insert(
            stream_id,
            Entry {
                data: remote_open.then_some(tx),
                shared: shared.clone(),
            },
        );
        let stream = Stream {
            id: stream_id,
            headers,
            incoming: rx,
            out: StreamWriter {
                id: stream_id,
                frames: self.frames.clone(),
                shared,
            },
        };
        if accept.send(stream).await.is_err() {
            self.accept = None;
        }
        Ok(())
    }

    fn remote_finished(&mut self, stream_id: u32) {
        if let Some(entry) = self.streams.get_mut(&stream_id) {
            entry.data = None;
        }
    }

    async fn refuse(&mut self, stream_id: u32, code: u32) -> Result<(), SessionError> {
        self.send(Frame::RstStream {
            stream_id,
            status: code,
        })
        .await
    }

    async fn send(&self, frame: Frame) -> Result<(), SessionError> {
        self.frames
            .send(frame)
            .await
            .map_err(|_| SessionError::Closed)
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut frames: mpsc::Receiver<Frame>,
) -> Result<(), SessionError> {
    let mut codec = Codec::new();
    let mut out = BytesMut::with_capacity(WRITE_BATCH);
    while let Some(frame) = frames.recv().await {
        codec.encode(&frame, &mut out)?;
        // Whatever else is already queued goes out in the same write.
        while out.len() < WRITE_BATCH {
            let Ok(frame) = frames.try_recv() else {
                break;
            };
            codec.encode(&frame, &mut out)?;
        }
        io.write_all(&out).await?;
        io.flush().await?;
        out.clear();
    }
    io.shutdown().await?;
    Ok(())
}

/// Whether `protocol` has a resize stream (v3 and later).
pub fn supports_resize(protocol: &str) -> bool {
    matches!(protocol, "v3.channel.k8s.io" | "v4.channel.k8s.io")
}

/// Which streams an exec or attach client opens besides the error stream, which it always
/// opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpectedStreams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// The terminal resize stream, with a TTY on v3 and later.
    pub resize: bool,
}

impl ExpectedStreams {
    /// As Kubernetes' streaming server derives them: a TTY merges stderr into stdout, and only
    /// v3 and later have a resize stream.
    pub fn new(protocol: &str, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Self {
        ExpectedStreams {
            stdin,
            stdout,
            stderr: stderr && !tty,
            resize: tty && supports_resize(protocol),
        }
    }

    /// From the `stdin=1`, `stdout=1`, `stderr=1`, `tty=1` query parameters.
    pub fn from_query(protocol: &str, query: &[(String, String)]) -> Self {
        let set = |name: &str| query.iter().any(|(n, v)| n == name && v == "1");
        Self::new(
            protocol,
            set("stdin"),
            set("stdout"),
            set("stderr"),
            set("tty"),
        )
    }

    fn count(&self) -> usize {
        1 + [self.stdin, self.stdout, self.stderr, self.resize]
            .iter()
            .filter(|&&b| b)
            .count()
    }
}

/// The `command` query parameters, in order.
pub fn command_from_query(query: &[(String, String)]) -> Vec<String> {
    query
        .iter()
        .filter(|(n, _)| n == "command")
        .map(|(_, v)| v.clone())
        .collect()
}

/// The streams of one exec or attach.
#[derive(Debug)]
pub struct ExecStreams {
    pub error: Stream,
    pub stdin: Option<Stream>,
    pub stdout: Option<Stream>,
    pub stderr: Option<Stream>,
    pub resize: Option<Stream>,
}

/// Collects the streams of an exec or attach by their `streamtype` header, as Kubernetes'
/// streaming server does: it counts every stream of a known type until as many arrived as
/// `expected` says, ignores streams of other types, and gives up after `timeout`.
pub async fn wait_for_exec_streams(
    session: &mut Session,
    expected: ExpectedStreams,
    timeout: Duration,
) -> Result<ExecStreams, SessionError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None, None);
    let mut received = 0;
    while received < expected.count() {
        let stream = match tokio::time::timeout_at(deadline, session.accept()).await {
            Ok(Some(stream)) => stream,
            Ok(None) => return Err(SessionError::Closed),
            Err(_) => return Err(SessionError::StreamTimeout),
        };
        let slot = match stream.stream_type() {
            Some("error") => &mut error,
            Some("stdin") => &mut stdin,
            Some("stdout") => &mut stdout,
            Some("stderr") => &mut stderr,
            Some("resize") => &mut resize,
            other => {
                tracing::debug!(stream_type = ?other, "ignoring a stream of unexpected type");
                continue;
            }
        };
        *slot = Some(stream);
        received += 1;
    }
    Ok(ExecStreams {
        error: error.ok_or(SessionError::NoErrorStream)?,
        stdin,
        stdout,
        stderr,
        resize,
    })
}

/// Kubernetes' `metav1.Status`, as much of it as the error stream carries; field names and
/// order as its JSON encoding has them.
#[derive(Serialize)]
struct Status<'a> {
    metadata: Empty,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

/// The v4 error-stream payload ending an exec: success for exit code 0; for another code, a
/// `NonZeroExitCode` failure whose message ends with `message` (see
/// [`exec_failure_message`]); with no exit code at all, an internal error saying `message`.
pub fn exit_status_json(code: Option<i32>, message: &str) -> String {
    let status = match code {
        Some(0) => Status {
            metadata: Empty {},
            status: "Success",
            message: None,
            reason: None,
            details: None,
            code: None,
        },
        Some(code) => Status {
            metadata: Empty {},
            status: "Failure",
            message: Some(format!(
                "command terminated with non-zero exit code: {message}"
            )),
            reason: Some("NonZeroExitCode"),
            details: Some(Details {
                causes: vec![Cause {
                    reason: Some("ExitCode"),
                    message: code.to_string(),
                }],
            }),
            code: None,
        },
        None => Status {
            metadata: Empty {},
            status: "Failure",
            message: Some(format!("Internal error occurred: {message}")),
            reason: Some("InternalError"),
            details: Some(Details {
                causes: vec![Cause {
                    reason: None,
                    message: message.to_string(),
                }],
            }),
            code: Some(500),
        },
    };
    // Plain structs of strings and numbers always serialize.
    serde_json::to_string(&status).unwrap_or_default()
}

/// How a failed command is described inside the status: `error executing command [sh -c
/// exit 3], exit code 3`.
pub fn exec_failure_message(cmd: &[String], code: i32) -> String {
    format!(
        "error executing command [{}], exit code {code}",
        cmd.join(" ")
    )
}

/// What to write on the error stream for `protocol` at the end of an exec or attach, if
/// anything: v4 sends a status on success too; older protocols send only a failure's message,
/// as plain text.
pub fn error_stream_payload(protocol: &str, code: Option<i32>, message: &str) -> Option<Bytes> {
    if protocol == "v4.channel.k8s.io" {
        return Some(Bytes::from(exit_status_json(code, message)));
    }
    match code {
        Some(0) => None,
        Some(_) => Some(Bytes::from(format!(
            "command terminated with non-zero exit code: {message}"
        ))),
        None => Some(Bytes::from(message.to_string())),
    }
}

/// A terminal size as the resize stream carries it: `{"Width":80,"Height":24}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Takes every complete size message off the front of `buf`, leaving a partial one for the
/// next DATA frame. Messages follow each other with or without whitespace between them.
pub fn decode_resizes(buf: &mut BytesMut) -> Result<Vec<TerminalSize>, serde_json::Error> {
    let mut sizes = Vec::new();
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
    let mut used = 0;
    loop {
        match values.next() {
            Some(Ok(size)) => {
                sizes.push(size);
                used = values.byte_offset();
            }
            None => {
                used = values.byte_offset();
                break;
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => return Err(e),
        }
    }
    buf.advance(used);
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::http::{self, Route};
    use tokio::io::DuplexStream;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A SPDY client over an in-memory pipe, with its own codec.
    struct Client {
        io: DuplexStream,
        codec: Codec,
        buf: BytesMut,
    }

    impl Client {
        async fn send(&mut self, frame: Frame) {
            let mut out = BytesMut::new();
            self.codec.encode(&frame, &mut out).unwrap();
            self.io.write_all(&out).await.unwrap();
        }

        async fn syn(&mut self, stream_id: u32, stream_type: &str) {
            self.send(Frame::SynStream {
                stream_id,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), stream_type.into())],
            })
            .await;
        }

        /// The next frame, or `None` at end of stream.
        async fn recv(&mut self) -> Option<Frame> {
            tokio::time::timeout(TIMEOUT, async {
                loop {
                    if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                        return Some(frame);
                    }
                    if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                        return None;
                    }
                }
            })
            .await
            .expect("no frame in time")
        }

        async fn recv_all(&mut self) -> Vec<Frame> {
            let mut frames = Vec::new();
            while let Some(frame) = self.recv().await {
                frames.push(frame);
            }
            frames
        }
    }

    fn pair() -> (Client, Session) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = Session::new(server, BytesMut::new(), SessionConfig::default());
        let client = Client {
            io: client,
            codec: Codec::new(),
            buf: BytesMut::new(),
        };
        (client, session)
    }

    fn reply(stream_id: u32) -> Frame {
        Frame::SynReply {
            stream_id,
            flags: 0,
            headers: vec![],
        }
    }

    /// DATA payloads sent on `stream_id`, and whether FIN came after them.
    fn data_of(frames: &[Frame], stream_id: u32) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        let mut fin = false;
        for frame in frames {
            if let Frame::Data {
                stream_id: id,
                flags,
                data: d,
            } = frame
                && *id == stream_id
            {
                assert!(!fin, "data after FIN on {stream_id}");
                data.extend_from_slice(d);
                fin = flags & FLAG_FIN != 0;
            }
        }
        (data, fin)
    }

    /// The whole path a `kubectl exec` takes: HTTP upgrade, streams, output, status, close.
    #[tokio::test]
    async fn exec_over_an_upgraded_connection() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let (head, rest) = http::read_request_head(&mut server, TIMEOUT).await.unwrap();
            let (route, token) = http::route(&head).unwrap();
            assert_eq!((route, token), (Route::Exec, "tok"));
            let protocol = http::handshake(&head, route.protocols()).unwrap();
            server
                .write_all(&http::switching_protocols(protocol))
                .await
                .unwrap();
            let expected = ExpectedStreams::from_query(protocol, &head.query_pairs());
            assert_eq!(command_from_query(&head.query_pairs()), ["echo", "hi"]);
            let mut session = Session::new(server, rest, SessionConfig::default());
            let streams = wait_for_exec_streams(&mut session, expected, TIMEOUT)
                .await
                .unwrap();
            assert!(streams.stdin.is_none() && streams.resize.is_none());
            let stdout = streams.stdout.unwrap();
            let stderr = streams.stderr.unwrap();
            stdout.out.send(Bytes::from_static(b"hi\n")).await.unwrap();
            stdout.out.finish().await.unwrap();
            stderr.out.finish().await.unwrap();
            let status = error_stream_payload(protocol, Some(0), "").unwrap();
            streams.error.out.send(status).await.unwrap();
            streams.error.out.finish().await.unwrap();
            drop((stdout, stderr, streams.error));
            session.close(TIMEOUT).await.unwrap();
        });

        client
            .write_all(
                b"POST /exec/tok?command=echo&command=hi&stdout=1&stderr=1 HTTP/1.1\r\n\
                  Host: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                  X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
                  X-Stream-Protocol-Version: v3.channel.k8s.io\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let response = loop {
            client.read_buf(&mut buf).await.unwrap();
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break buf.split_to(end + 4);
            }
        };
        let response = std::str::from_utf8(&response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{response}"
        );
        assert!(response.contains("X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"));

        let mut client = Client {
            io: client,
            codec: Codec::new(),
            buf,
        };
        client.syn(1, "error").await;
        client.syn(3, "stdout").await;
        client.syn(5, "stderr").await;
        client.send(Frame::Ping { id: 1 }).await;
        let frames = client.recv_all().await;
        server.await.unwrap();

        for id in [1, 3, 5] {
            let first = frames.iter().find(|f| match f {
                Frame::SynReply { stream_id, .. } | Frame::Data { stream_id, .. } => {
                    *stream_id == id
                }
                _ => false,
            });
            assert_eq!(first, Some(&reply(id)), "{frames:?}");
        }
        assert!(frames.contains(&Frame::Ping { id: 1 }), "{frames:?}");
        assert_eq!(data_of(&frames, 3), (b"hi\n".to_vec(), true));
        assert_eq!(data_of(&frames, 5), (vec![], true));
        assert_eq!(
            data_of(&frames, 1),
            (br#"{"metadata":{},"status":"Success"}"#.to_vec(), true)
        );
        assert_eq!(
            frames.last(),
            Some(&Frame::GoAway {
                last_good_stream_id: 5,
                status: 0
            })
        );
    }

    #[tokio::test]
    async fn client_data_arrives_in_order_and_fin_closes_it() {
        let (mut client, mut session) = pair();
        client.syn(1, "stdin").await;
        let mut stdin = session.accept().await.unwrap();
        assert_eq!(stdin.stream_type(), Some("stdin"));
        assert_eq!(client.recv().await, Some(reply(1)));
        for (chunk, flags) in [(&b"ab"[..], 0), (b"", 0), (b"cd", FLAG_FIN)] {
            client
                .send(Frame::Data {
                    stream_id: 1,
                    flags,
                    data: Bytes::copy_from_slice(chunk),
                })
                .await;
        }
        assert_eq!(stdin.incoming.recv().await.unwrap(), "ab");
        assert_eq!(stdin.incoming.recv().await.unwrap(), "cd");
        assert_eq!(stdin.incoming.recv().await, None);
        // Half-closed by the client only: the server may still send.
        stdin.out.send(Bytes::from_static(b"x")).await.unwrap();
        stdin.out.finish().await.unwrap();
        assert!(matches!(
            stdin.out.send(Bytes::from_static(b"y")).await,
            Err(SessionError::StreamClosed(1))
        ));
        assert_eq!(
            client.recv().await,
            Some(Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"x")
            })
        );
        assert_eq!(data_of(&[client.recv().await.unwrap()], 1), (vec![], true));
    }

    #[tokio::test]
    async fn large_writes_are_split() {
        let (mut client, mut session) = pair();
        client.syn(1, "stdout").await;
        let stdout = session.accept().await.unwrap();
        assert_eq!(client.recv().await, Some(reply(1)));
        let big = Bytes::from(vec![7u8; 2 * MAX_DATA_CHUNK + 1]);
        stdout.out.send(big.clone()).await.unwrap();
        let mut got = Vec::new();
        while got.len() < big.len() {
            let Some(Frame::Data { data, .. }) = client.recv().await else {
                panic!("expected data");
            };
            assert!(data.len() <= MAX_DATA_CHUNK);
            got.extend_from_slice(&data);
        }
        assert_eq!(got, big);
    }

    #[tokio::test]
    async fn pings_are_echoed_and_flow_control_frames_accepted() {
        let (mut client, _session) = pair();
        client
            .send(Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 1 << 20)],
            })
            .await;
        client
            .send(Frame::WindowUpdate {
                stream_id: 0,
                delta: 1000,
            })
            .await;
        // An even id would be a reply to a ping of ours: not echoed.
        client.send(Frame::Ping { id: 2 }).await;
        client.send(Frame::Ping { id: 7 }).await;
        assert_eq!(client.recv().await, Some(Frame::Ping { id: 7 }));
    }

    #[tokio::test]
    async fn a_reset_stream_refuses_sends() {
        let (mut client, mut session) = pair();
        client.syn(1, "stdout").await;
        let stdout = session.accept().await.unwrap();
        client
            .send(Frame::RstStream {
                stream_id: 1,
                status: status::CANCEL,
            })
            .await;
        // The PING's echo proves the reset before it was handled.
        client.send(Frame::Ping { id: 1 }).await;
        assert_eq!(client.recv().await, Some(reply(1)));
        assert_eq!(client.recv().await, Some(Frame::Ping { id: 1 }));
        assert!(stdout.out.is_reset());
        assert!(matches!(
            stdout.out.send(Bytes::from_static(b"x")).await,
            Err(SessionError::Reset(1))
        ));
        let mut incoming = stdout.incoming;
        assert_eq!(incoming.recv().await, None);
    }

    #[tokio::test]
    async fn bad_stream_ids_and_streams_after_goaway_are_refused() {
        let (mut client, mut session) = pair();
        client.syn(2, "stdout").await;
        assert_eq!(
            client.recv().await,
            Some(Frame::RstStream {
                stream_id: 2,
                status: status::PROTOCOL_ERROR
            })
        );
        client.syn(5, "stdout").await;
        assert_eq!(client.recv().await, Some(reply(5)));
        client.syn(3, "stdout").await;
        assert_eq!(
            client.recv().await,
            Some(Frame::RstStream {
                stream_id: 3,
                status: status::PROTOCOL_ERROR
            })
        );
        client
            .send(Frame::GoAway {
                last_good_stream_id: 0,
                status: 0,
            })
            .await;
        client.syn(7, "stdout").await;
        assert_eq!(
            client.recv().await,
            Some(Frame::RstStream {
                stream_id: 7,
                status: status::REFUSED_STREAM
            })
        );
        assert_eq!(session.accept().await.map(|s| s.id), Some(5));
        assert!(session.accept().await.is_none());
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_are_refused() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let config = SessionConfig {
            max_streams: 2,
            ..SessionConfig::default()
        };
        let mut session = Session::new(server, BytesMut::new(), config);
        let mut client = Client {
            io: client,
            codec: Codec::new(),
            buf: BytesMut::new(),
        };
        client.syn(1, "a").await;
        client.syn(3, "b").await;
        client.syn(5, "c").await;
        assert_eq!(client.recv().await, Some(reply(1)));
        assert_eq!(client.recv().await, Some(reply(3)));
        assert_eq!(
            client.recv().await,
            Some(Frame::RstStream {
                stream_id: 5,
                status: status::REFUSED_STREAM
            })
        );
        // Once a stream is closed both ways, its place is free again.
        let first = session.accept().await.unwrap();
        first.out.finish().await.unwrap();
        client
            .send(Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::new(),
            })
            .await;
        assert_eq!(data_of(&[client.recv().await.unwrap()], 1), (vec![], true));
        client.syn(7, "d").await;
        assert_eq!(client.recv().await, Some(reply(7)));
    }

    #[tokio::test]
    async fn garbage_ends_the_connection_with_goaway() {
        let (mut client, _session) = pair();
        client.syn(1, "stdout").await;
        // A control frame of SPDY version 2.
        client
            .io
            .write_all(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])
            .await
            .unwrap();
        assert_eq!(client.recv().await, Some(reply(1)));
        assert_eq!(
            client.recv().await,
            Some(Frame::GoAway {
                last_good_stream_id: 1,
                status: status::PROTOCOL_ERROR
            })
        );
    }

    #[tokio::test]
    async fn the_session_ends_when_the_client_hangs_up() {
        let (mut client, mut session) = pair();
        client.syn(1, "stdin").await;
        let mut stdin = session.accept().await.unwrap();
        drop(client);
        assert!(session.accept().await.is_none());
        assert_eq!(stdin.incoming.recv().await, None);
    }

    #[tokio::test]
    async fn exec_streams_with_stdin_and_tty() {
        let (mut client, mut session) = pair();
        let expected = ExpectedStreams::new("v4.channel.k8s.io", true, true, true, true);
        assert_eq!(
            expected,
            ExpectedStreams {
                stdin: true,
                stdout: true,
                stderr: false,
                resize: true
            }
        );
        for (id, kind) in [(1, "error"), (3, "unknown"), (5, "stdin"), (7, "stdout")] {
            client.syn(id, kind).await;
        }
        client.syn(9, "resize").await;
        let streams = wait_for_exec_streams(&mut session, expected, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(streams.error.id, 1);
        assert_eq!(streams.stdin.map(|s| s.id), Some(5));
        assert_eq!(streams.stdout.map(|s| s.id), Some(7));
        assert!(streams.stderr.is_none());
        assert_eq!(streams.resize.map(|s| s.id), Some(9));
    }

    #[tokio::test]
    async fn waiting_for_exec_streams_gives_up() {
        let (mut client, mut session) = pair();
        let expected = ExpectedStreams::new("v4.channel.k8s.io", false, true, false, false);
        client.syn(1, "error").await;
        assert!(matches!(
            wait_for_exec_streams(&mut session, expected, Duration::from_millis(50)).await,
            Err(SessionError::StreamTimeout)
        ));

        let (mut client, mut session) = pair();
        client.syn(1, "stdout").await;
        client.syn(3, "stdout").await;
        assert!(matches!(
            wait_for_exec_streams(&mut session, expected, TIMEOUT).await,
            Err(SessionError::NoErrorStream)
        ));

        let (mut client, mut session) = pair();
        client.syn(1, "error").await;
        drop(client);
        assert!(matches!(
            wait_for_exec_streams(&mut session, expected, TIMEOUT).await,
            Err(SessionError::Closed)
        ));
    }

    #[test]
    fn expected_streams_follow_the_protocol() {
        let q = |s: &str| http::parse_query(s);
        assert_eq!(
            ExpectedStreams::from_query("v2.channel.k8s.io", &q("stdin=1&tty=1&stdout=1")),
            ExpectedStreams {
                stdin: true,
                stdout: true,
                stderr: false,
                resize: false
            }
        );
        assert_eq!(
            ExpectedStreams::from_query("v3.channel.k8s.io", &q("stderr=1&tty=true")),
            ExpectedStreams {
                stderr: true,
                ..Default::default()
            }
        );
        assert_eq!(ExpectedStreams::default().count(), 1);
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(
            exit_status_json(Some(0), "ignored"),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let cmd = ["sh", "-c", "exit 3"].map(String::from);
        assert_eq!(
            exit_status_json(Some(3), &exec_failure_message(&cmd, 3)),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            exit_status_json(None, "no such container"),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: no such container","reason":"InternalError","details":{"causes":[{"message":"no such container"}]},"code":500}"#
        );
        assert_eq!(error_stream_payload("v3.channel.k8s.io", Some(0), ""), None);
        assert_eq!(
            error_stream_payload("v2.channel.k8s.io", Some(2), "x").unwrap(),
            "command terminated with non-zero exit code: x"
        );
        assert_eq!(
            error_stream_payload("channel.k8s.io", None, "boom").unwrap(),
            "boom"
        );
    }

    #[test]
    fn resize_messages() {
        let mut buf = BytesMut::from(&br#"{"Width":80,"Height":24}{"Width":100,"#[..]);
        assert_eq!(
            decode_resizes(&mut buf).unwrap(),
            [TerminalSize {
                width: 80,
                height: 24
            }]
        );
        assert_eq!(&buf[..], br#"{"Width":100,"#);
        buf.extend_from_slice(b"\"Height\":50}\n");
        assert_eq!(
            decode_resizes(&mut buf).unwrap(),
            [TerminalSize {
                width: 100,
                height: 50
            }]
        );
        assert!(decode_resizes(&mut buf).unwrap().is_empty());
        let mut bad = BytesMut::from(&b"[1]"[..]);
        assert!(decode_resizes(&mut bad).is_err());
    }
}
