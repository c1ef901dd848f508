//! The daemon's side of the agent protocol.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use super::proto::{
    Attach, ErrorKind, ExecStream, ExecSync, Forget, Ping, Release, ReopenLog, Request, Response,
    Shutdown, StartContainer, Watch, WatchEvent, request,
};
use super::{MAX_ANSWER, StreamFds, frame, recv_with_fds};

/// An agent that does not answer within this is taken for dead.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Without a timeout of its own, a call waits at most this long (a year: "forever", but a
/// number every clock can add).
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a call to a pod agent failed: it could not be reached or understood, or it answered
/// with an error of its own (with its kind and errno).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("connecting to the pod agent at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the pod agent: {0}")]
    Io(std::io::Error),
    #[error("the pod agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the pod agent's answer is not understood: {0}")]
    Protocol(String),
    #[error("{message}")]
    Agent {
        kind: ErrorKind,
        errno: i32,
        message: String,
    },
}

impl CallError {
    fn from_response(response: &Response) -> CallError {
        CallError::Agent {
            kind: ErrorKind::try_from(response.error_kind).unwrap_or(ErrorKind::Internal),
            errno: response.errno,
            message: response.error.clone(),
        }
    }

    /// The kind of an error the agent answered; None when the agent was not reached.
    pub fn agent_kind(&self) -> Option<ErrorKind> {
        match self {
            CallError::Agent { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// An answer, or the error it carries.
fn checked(response: Response) -> Result<Response, CallError> {
    if response.error.is_empty() {
        Ok(response)
    } else {
        Err(CallError::from_response(&response))
    }
}

async fn call(socket: &Path, kind: request::Kind) -> Result<Response, CallError> {
    call_within(socket, kind, TIMEOUT).await
}

/// Connects to the agent and sends one request; the answer follows on the connection.
async fn send_request(socket: &Path, kind: request::Kind) -> Result<UnixStream, CallError> {
    let mut conn = UnixStream::connect(socket)
        .await
        .map_err(|source| CallError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    conn.write_all(&frame(&Request { kind: Some(kind) }))
        .await
        .map_err(CallError::Io)?;
    Ok(conn)
}

async fn call_within(
    socket: &Path,
    kind: request::Kind,
    timeout: Duration,
) -> Result<Response, CallError> {
    let exchange = async {
        let mut conn = send_request(socket, kind).await?;
        checked(read_frame(&mut conn).await?)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CallError::Timeout(timeout))?
}

pub async fn ping(socket: &Path) -> Result<Response, CallError> {
    call(socket, request::Kind::Ping(Ping {})).await
}

pub async fn shutdown(socket: &Path) -> Result<Response, CallError> {
    call(socket, request::Kind::Shutdown(Shutdown {})).await
}

/// Starts a container; answers its pid and start time once the process has exec'd.
pub async fn start(socket: &Path, request: StartContainer) -> Result<Response, CallError> {
    // Set-up (mounts, a big rootfs) may take longer than a ping.
    call_within(socket, request::Kind::Start(request), 4 * TIMEOUT).await
}

/// Lets a container started with `hold` go on; answers its pid and start time once it has
/// exec'd.
pub async fn release(socket: &Path, id: &str) -> Result<Response, CallError> {
    call_within(
        socket,
        request::Kind::Release(Release { id: id.to_string() }),
        4 * TIMEOUT,
    )
    .await
}

/// Runs a command in a container and waits for it; `timeout` zero means none.
pub async fn exec(
    socket: &Path,
    request: ExecSync,
    timeout: Duration,
) -> Result<Response, CallError> {
    // The agent enforces the timeout; this one only guards against a dead agent.
    let limit = if timeout.is_zero() {
        FOREVER
    } else {
        timeout.saturating_add(TIMEOUT).min(FOREVER)
    };
    call_within(socket, request::Kind::Exec(request), limit).await
}

pub async fn reopen_log(socket: &Path, id: &str) -> Result<(), CallError> {
    call(
        socket,
        request::Kind::ReopenLog(ReopenLog { id: id.to_string() }),
    )
    .await
    .map(|_| ())
}

pub async fn forget(socket: &Path, id: &str) -> Result<(), CallError> {
    call(socket, request::Kind::Forget(Forget { id: id.to_string() }))
        .await
        .map(|_| ())
}

/// The agent's event stream (see `Watch` in proto/agent.proto).
pub struct Watcher {
    conn: UnixStream,
}

/// Opens the agent's event stream: the first event has every container the agent knows.
pub async fn watch(socket: &Path) -> Result<(Watcher, WatchEvent), CallError> {
    let opening = async {
        let mut conn = send_request(socket, request::Kind::Watch(Watch {})).await?;
        let snapshot = read_message::<WatchEvent>(&mut conn).await?;
        Ok((Watcher { conn }, snapshot))
    };
    tokio::time::timeout(TIMEOUT, opening)
        .await
        .map_err(|_| CallError::Timeout(TIMEOUT))?
}

impl Watcher {
    /// The next start or exit; an error once the agent is gone (or the stream broke).
    pub async fn next(&mut self) -> Result<WatchEvent, CallError> {
        read_message::<WatchEvent>(&mut self.conn).await
    }
}

/// The stdio of a process the daemon streams. All descriptors are O_NONBLOCK and O_CLOEXEC.
#[derive(Debug)]
pub struct StreamedProcess {
    /// Where the client's input goes (a pipe's write end; with a tty, a dup of the terminal
    /// master). None when not asked for / not available.
    pub stdin: Option<OwnedFd>,
    /// Read end for stdout (with a tty: the merged terminal output). None when not asked for.
    pub stdout: Option<OwnedFd>,
    /// Read end for stderr; None with a tty or when not asked for.
    pub stderr: Option<OwnedFd>,
    /// With a tty: a dup of the terminal master, for TIOCSWINSZ resizes.
    pub terminal: Option<OwnedFd>,
    /// The agent connection; the final answer arrives on it.
    pub end: StreamEnd,
}

/// The connection of an exec or attach after its first answer.
#[derive(Debug)]
pub struct StreamEnd {
    conn: UnixStream,
    pid: u32,
}

impl StreamEnd {
    /// ExecStream: the command's pid, in the daemon's PID namespace; 0 for an attach.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the agent's final answer: for an exec, the command's exit (Response.exit_code);
    /// for an attach, the container's exit (exit_code) or an error string (e.g. the attacher was
    /// dropped as too slow, the agent is shutting down). The output pipes may still hold data
    /// when it comes: read them to EOF as well.
    pub async fn wait(mut self) -> Result<Response, CallError> {
        checked(read_frame(&mut self.conn).await?)
    }
}

/// Starts `request.cmd` in the running container. Dropping the returned StreamedProcess's `end`
/// (closing the connection) before the command exits makes the agent SIGKILL the command (its
/// process group too): a client that went away leaves nothing behind.
pub async fn exec_stream(socket: &Path, request: ExecStream) -> Result<StreamedProcess, CallError> {
    open_stream(socket, request::Kind::ExecStream(request)).await
}

/// Attaches to a running container's stdio.
pub async fn attach(socket: &Path, request: Attach) -> Result<StreamedProcess, CallError> {
    open_stream(socket, request::Kind::Attach(request)).await
}

async fn open_stream(socket: &Path, kind: request::Kind) -> Result<StreamedProcess, CallError> {
    let exchange = async {
        let conn = send_request(socket, kind).await?;
        let mut fds = Vec::new();
        let mut len = [0u8; 4];
        read_exact_with_fds(&conn, &mut len, &mut fds).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_ANSWER {
            return Err(CallError::Protocol(format!("an answer of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        read_exact_with_fds(&conn, &mut body, &mut fds).await?;
        let response =
            checked(Response::decode(&body[..]).map_err(|e| CallError::Protocol(e.to_string()))?)?;
        let stdio = StreamFds::from_wire(&response.fds, fds).map_err(CallError::Protocol)?;
        for fd in [&stdio.stdin, &stdio.stdout, &stdio.stderr, &stdio.terminal]
            .into_iter()
            .flatten()
        {
            // The agent sets it; the promise to the caller does not depend on that.
            let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)
                .map_err(|e| CallError::Io(std::io::Error::from(e)))?;
            fcntl(
                fd.as_fd(),
                FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
            )
            .map_err(|e| CallError::Io(std::io::Error::from(e)))?;
        }
        Ok(StreamedProcess {
            stdin: stdio.stdin,
            stdout: stdio.stdout,
            stderr: stdio.stderr,
            terminal: stdio.terminal,
            end: StreamEnd {
                conn,
                pid: response.pid,
            },
        })
    };
    // Starting a command joins namespaces and may read a big config.json.
    tokio::time::timeout(4 * TIMEOUT, exchange)
        .await
        .map_err(|_| CallError::Timeout(4 * TIMEOUT))?
}

/// Fills `buf` exactly (never reading past it: the final answer may follow right behind),
/// collecting the descriptors that come along.
async fn read_exact_with_fds(
    conn: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), CallError> {
    let mut got = 0;
    while got < buf.len() {
        conn.readable().await.map_err(CallError::Io)?;
        match conn.try_io(Interest::READABLE, || {
            recv_with_fds(conn, &mut buf[got..], fds)
        }) {
            Ok(0) => {
                return Err(CallError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CallError::Io(e)),
        }
    }
    Ok(())
}

async fn read_frame(conn: &mut UnixStream) -> Result<Response, CallError> {
    read_message::<Response>(conn).await
}

/// One length-prefixed message.
async fn read_message<M: Message + Default>(conn: &mut UnixStream) -> Result<M, CallError> {
    let len = conn.read_u32().await.map_err(CallError::Io)? as usize;
    if len > MAX_ANSWER {
        return Err(CallError::Protocol(format!("an answer of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.map_err(CallError::Io)?;
    M::decode(&body[..]).map_err(|e| CallError::Protocol(e.to_string()))
}
