//! The daemon's side of the agent protocol.

use std::path::Path;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::proto::{
    ExecSync, Forget, Ping, ReopenLog, Request, Response, Shutdown, StartContainer, request,
};
use super::{MAX_FRAME, frame};

/// An agent that does not answer within this is taken for dead.
const TIMEOUT: Duration = Duration::from_secs(5);

async fn call(socket: &Path, kind: request::Kind) -> Result<Response, String> {
    call_within(socket, kind, TIMEOUT).await
}

async fn call_within(
    socket: &Path,
    kind: request::Kind,
    timeout: Duration,
) -> Result<Response, String> {
    let exchange = async {
        let mut conn = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        conn.write_all(&frame(&Request { kind: Some(kind) }))
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let len = conn.read_u32().await.map_err(|e| format!("reading: {e}"))? as usize;
        if len > MAX_FRAME {
            return Err(format!("answer of {len} bytes refused"));
        }
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        let response = Response::decode(&body[..]).map_err(|e| format!("bad answer: {e}"))?;
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
