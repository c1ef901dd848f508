//! The daemon's side of the agent protocol.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use super::proto::{
    Attach, ExecStream, ExecSync, Forget, Ping, ReopenLog, Request, Response, Shutdown,
    StartContainer, request,
};
use super::{MAX_FRAME, StreamFds, frame, recv_with_fds};

/// An agent that does not answer within this is taken for dead.
const TIMEOUT: Duration = Duration::from_secs(5);

async fn call(socket: &Path, kind: request::Kind) -> Result<Response, String> {
    call_within(socket, kind, TIMEOUT).await
}

/// Connects to the agent and sends one request; the answer follows on the connection.
async fn send_request(socket: &Path, kind: request::Kind) -> Result<UnixStream, String> {
    let mut conn = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    conn.write_all(&frame(&Request { kind: Some(kind) }))
        .await
        .map_err(|e| format!("sending: {e}"))?;
    Ok(conn)
}

async fn call_within(
    socket: &Path,
    kind: request::Kind,
    timeout: Duration,
) -> Result<Response, String> {
    let exchange = async {
        let mut conn = send_request(socket, kind).await?;
        let response = read_frame(&mut conn).await?;
        if response.error.is_empty() {
            Ok(response)
        } else {
            Err(response.error)
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
}

pub async fn ping(socket: &Path) -> Result<Response, String> {
    call(socket, request::Kind::Ping(Ping {})).await
}

pub async fn shutdown(socket: &Path) -> Result<Response, String> {
    call(socket, request::Kind::Shutdown(Shutdown {})).await
}

/// Starts a container; answers its pid once the process has exec'd.
pub async fn start(socket: &Path, request: StartContainer) -> Result<u32, String> {
    // Set-up (mounts, a big rootfs) may take longer than a ping.
    call_within(socket, request::Kind::Start(request), 4 * TIMEOUT)
        .await
        .map(|r| r.container_pid)
}

/// Runs a command in a container and waits for it; `timeout` zero means none.
pub async fn exec(socket: &Path, request: ExecSync, timeout: Duration) -> Result<Response, String> {
    // The agent enforces the timeout; this one only guards against a dead agent.
    let limit = if timeout.is_zero() {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        timeout + TIMEOUT
    };
    call_within(socket, request::Kind::Exec(request), limit).await
}

pub async fn reopen_log(socket: &Path, id: &str) -> Result<(), String> {
    call(
        socket,
        request::Kind::ReopenLog(ReopenLog { id: id.to_string() }),
    )
    .await
    .map(|_| ())
}

pub async fn forget(socket: &Path, id: &str) -> Result<(), String> {
    call(socket, request::Kind::Forget(Forget { id: id.to_string() }))
        .await
        .map(|_| ())
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
    pub async fn wait(mut self) -> Result<Response, String> {
        let response = read_frame(&mut self.conn).await?;
        if response.error.is_empty() {
            Ok(response)
        } else {
            Err(response.error)
        }
    }
}

/// Starts `request.cmd` in the running container. Dropping the returned StreamedProcess's `end`
/// (closing the connection) before the command exits makes the agent SIGKILL the command (its
/// process group too): a client that went away leaves nothing behind.
pub async fn exec_stream(socket: &Path, request: ExecStream) -> Result<StreamedProcess, String> {
    open_stream(socket, request::Kind::ExecStream(request)).await
}

/// Attaches to a running container's stdio.
pub async fn attach(socket: &Path, request: Attach) -> Result<StreamedProcess, String> {
    open_stream(socket, request::Kind::Attach(request)).await
}

async fn open_stream(socket: &Path, kind: request::Kind) -> Result<StreamedProcess, String> {
    let exchange = async {
        let conn = send_request(socket, kind).await?;
        let mut fds = Vec::new();
        let mut len = [0u8; 4];
        read_exact_with_fds(&conn, &mut len, &mut fds).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(format!("answer of {len} bytes refused"));
        }
        let mut body = vec![0u8; len];
        read_exact_with_fds(&conn, &mut body, &mut fds).await?;
        let response = Response::decode(&body[..]).map_err(|e| format!("bad answer: {e}"))?;
        if !response.error.is_empty() {
            return Err(response.error);
        }
        let stdio = StreamFds::from_wire(&response.fds, fds)?;
        for fd in [&stdio.stdin, &stdio.stdout, &stdio.stderr, &stdio.terminal]
            .into_iter()
            .flatten()
        {
            // The agent sets it; the promise to the caller does not depend on that.
            let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| format!("fcntl: {e}"))?;
            fcntl(
                fd.as_fd(),
                FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
            )
            .map_err(|e| format!("fcntl: {e}"))?;
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
        .map_err(|_| format!("no answer within {}s", (4 * TIMEOUT).as_secs()))?
}

/// Fills `buf` exactly (never reading past it: the final answer may follow right behind),
/// collecting the descriptors that come along.
async fn read_exact_with_fds(
    conn: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), String> {
    let mut got = 0;
    while got < buf.len() {
        conn.readable().await.map_err(|e| format!("reading: {e}"))?;
        match conn.try_io(Interest::READABLE, || {
            recv_with_fds(conn, &mut buf[got..], fds)
        }) {
            Ok(0) => return Err("reading: the agent closed the connection".to_string()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
    Ok(())
}

async fn read_frame(conn: &mut UnixStream) -> Result<Response, String> {
    let len = conn.read_u32().await.map_err(|e| format!("reading: {e}"))? as usize;
    if len > MAX_FRAME {
        return Err(format!("answer of {len} bytes refused"));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    Response::decode(&body[..]).map_err(|e| format!("bad answer: {e}"))
}
