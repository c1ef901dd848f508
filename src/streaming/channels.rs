//! What an exec, attach or port-forward handler sees of the client, whatever the transport
//! (SPDY streams or WebSocket channels): plain channels of bytes. Each transport adapter turns
//! its streams into these and back, so the handlers are written once.

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::session::TerminalSize;

/// Chunks queued per direction before the sender waits: the backpressure that keeps a slow
/// client from growing the daemon's memory.
pub const CHANNEL_DEPTH: usize = 8;

/// How an exec or attach ended, for the transport to write on its error stream or channel in
/// its protocol's format (see `session::error_stream_payload`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitReport {
    /// The command's exit code; None when it could not be run or followed to the end.
    pub code: Option<i32>,
    /// For a non-zero code, `session::exec_failure_message`; for None, the cause.
    pub message: String,
}

impl ExitReport {
    pub fn success() -> Self {
        ExitReport {
            code: Some(0),
            message: String::new(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        ExitReport {
            code: None,
            message: message.into(),
        }
    }
}

/// One exec or attach session's streams. A stream the client did not ask for is None.
#[derive(Debug)]
pub struct ExecIo {
    /// The client's input in order; the channel closes when the client closes stdin (or goes).
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Dropping a sender half-closes that stream towards the client.
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Terminal sizes the client sends (tty sessions on protocols that have them).
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    /// Send the end once stdout and stderr are done; the transport writes it, flushes and
    /// closes the connection. Dropped unsent, the connection just closes.
    pub done: oneshot::Sender<ExitReport>,
    /// Resolves when the client has gone (connection closed or reset): the handler should stop
    /// and clean up.
    pub client_gone: oneshot::Receiver<()>,
}

/// One forwarded connection the client asks for: to `port` inside the pod. Transports hand
/// these out on a channel that closes only when the client's connection ends, which tells the
/// handler to close whatever is still open.
#[derive(Debug)]
pub struct ForwardRequest {
    pub port: u16,
    /// Bytes from the client; closes at the client's half-close.
    pub from_client: mpsc::Receiver<Bytes>,
    /// Bytes to the client; dropping it half-closes the data stream.
    pub to_client: mpsc::Sender<Bytes>,
    /// A failure to report on this request's error stream (e.g. the port refused the
    /// connection); dropped unsent, the error stream closes empty.
    pub error: oneshot::Sender<String>,
}
