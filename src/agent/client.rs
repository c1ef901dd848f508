//! The daemon's side of the agent protocol.

use std::path::Path;
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::proto::{Ping, Request, Response, Shutdown, request};
use super::{MAX_FRAME, frame};

/// An agent that does not answer within this is taken for dead.
const TIMEOUT: Duration = Duration::from_secs(5);

async fn call(socket: &Path, kind: request::Kind) -> Result<Response, String> {
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
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))?
}

pub async fn ping(socket: &Path) -> Result<Response, String> {
    call(socket, request::Kind::Ping(Ping {})).await
}

pub async fn shutdown(socket: &Path) -> Result<Response, String> {
    call(socket, request::Kind::Shutdown(Shutdown {})).await
}
