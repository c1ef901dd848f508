//! SPDY sessions turned into the transport-neutral channels of [`super::channels`]: the
//! streams of an exec or attach become an [`ExecIo`], and port-forward stream pairs become
//! [`ForwardRequest`]s.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::channels::{CHANNEL_DEPTH, ExecIo, ExitReport, ForwardRequest};
use super::session::{
    ExpectedStreams, Session, SessionError, Stream, StreamWriter, decode_resizes,
    error_stream_payload, wait_for_exec_streams,
};
use super::spdy::status;

/// How long queued frames may take to reach the client once a session is over.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long the client may take to open both streams of a port-forward request, as
/// Kubernetes' streaming server allows.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits (up to `timeout`) for the client's exec or attach streams, then serves them as an
/// [`ExecIo`]. The returned task owns the session: it writes the end report on the error
/// stream once the handler sends it and the output is flushed, then closes the connection.
pub async fn exec_io(
    mut session: Session,
    protocol: &'static str,
    expected: ExpectedStreams,
    timeout: Duration,
) -> Result<(ExecIo, JoinHandle<()>), SessionError> {
    let streams = wait_for_exec_streams(&mut session, expected, timeout).await?;
    let mut pumps = Vec::new();
    let stdin = streams.stdin.map(|s| {
        // The server never writes on the client's stdin stream.
        s.incoming
    });
    let stdout = streams.stdout.map(|s| {
        let (tx, pump) = outgoing(s.out);
        pumps.push(pump);
        tx
    });
    let stderr = streams.stderr.map(|s| {
        let (tx, pump) = outgoing(s.out);
        pumps.push(pump);
        tx
    });
    let resize = streams.resize.map(|s| resizes(s.incoming));
    let (done, done_rx) = oneshot::channel();
    let (gone_tx, client_gone) = oneshot::channel();
    let error = streams.error.out;
    let driver = tokio::spawn(async move {
        let report = until_done(&mut session, done_rx, gone_tx).await;
        for pump in pumps {
            let _ = pump.await;
        }
        if let Some(report) = report
            && let Some(payload) = error_stream_payload(protocol, report.code, &report.message)
        {
            let _ = error.send(payload).await;
        }
        let _ = error.finish().await;
        drop(error);
        if let Err(e) = session.close(CLOSE_GRACE).await {
            tracing::debug!(error = %e, "closing a streaming session");
        }
    });
    let io = ExecIo {
        stdin,
        stdout,
        stderr,
        resize,
        done,
        client_gone,
    };
    Ok((io, driver))
}

/// Keeps accepting (and dropping) streams so the session notices the client leaving; returns
/// the handler's report, or None if the handler dropped it or the client went first.
async fn until_done(
    session: &mut Session,
    mut done: oneshot::Receiver<ExitReport>,
    gone: oneshot::Sender<()>,
) -> Option<ExitReport> {
    let mut gone = Some(gone);
    loop {
        tokio::select! {
            report = &mut done => return report.ok(),
            stream = session.accept(), if gone.is_some() => match stream {
                Some(extra) => {
                    tracing::debug!(stream = extra.id, "ignoring an extra stream");
                    let _ = extra.out.reset(status::REFUSED_STREAM).await;
                }
                None => {
                    if let Some(gone) = gone.take() {
                        let _ = gone.send(());
                    }
                }
            },
        }
    }
}

/// A channel whose chunks are sent on `out`, which is half-closed when the channel closes.
fn outgoing(out: StreamWriter) -> (mpsc::Sender<Bytes>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let pump = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if out.send(chunk).await.is_err() {
                // The client reset the stream or left: the sender sees the channel close.
                return;
            }
        }
        let _ = out.finish().await;
    });
    (tx, pump)
}

/// Terminal sizes decoded from the resize stream.
fn resizes(mut incoming: mpsc::Receiver<Bytes>) -> mpsc::Receiver<super::session::TerminalSize> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(chunk) = incoming.recv().await {
            buf.extend_from_slice(&chunk);
            match decode_resizes(&mut buf) {
                Ok(sizes) => {
                    for size in sizes {
                        if tx.send(size).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bad resize message; ignoring the resize stream");
                    return;
                }
            }
        }
    });
    rx
}

/// Serves a port-forward session: each `requestid` gets an error and a data stream from the
/// client; once both are open they become one [`ForwardRequest`]. The channel closes when the
/// connection does, and the returned task then closes the session.
pub fn forward_requests(mut session: Session) -> (mpsc::Receiver<ForwardRequest>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let driver = tokio::spawn(async move {
        let mut pending: HashMap<String, Pair> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let stream = tokio::select! {
                stream = session.accept() => stream,
                _ = tick.tick() => {
                    expire_pairs(&mut pending).await;
                    continue;
                }
            };
            let Some(stream) = stream else { break };
            let Some(request_id) = stream.header("requestid").map(str::to_string) else {
                refuse(&stream.out, "stream has no requestID header").await;
                continue;
            };
            let is_error = match stream.stream_type() {
                Some("error") => true,
                Some("data") => false,
                other => {
                    let message = format!("invalid stream type {other:?}");
                    refuse(&stream.out, &message).await;
                    continue;
                }
            };
            let pair = pending.entry(request_id.clone()).or_insert_with(|| Pair {
                error: None,
                data: None,
                since: tokio::time::Instant::now(),
            });
            if is_error {
                pair.error = Some(stream);
            } else {
                pair.data = Some(stream);
            }
            if pair.error.is_none() || pair.data.is_none() {
                continue;
            }
            if let Some(Pair {
                error: Some(error),
                data: Some(data),
                ..
            }) = pending.remove(&request_id)
                && let Some(request) = pair_to_request(error, data).await
                && tx.send(request).await.is_err()
            {
                break;
            }
        }
        drop(tx);
        drop(pending);
        let _ = session.close(CLOSE_GRACE).await;
    });
    (rx, driver)
}

struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    since: tokio::time::Instant,
}

/// Drops requests whose second stream never came, telling the client on the one that did.
async fn expire_pairs(pending: &mut HashMap<String, Pair>) {
    let now = tokio::time::Instant::now();
    let stale: Vec<String> = pending
        .iter()
        .filter(|(_, p)| now.duration_since(p.since) >= PAIR_TIMEOUT)
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        if let Some(pair) = pending.remove(&id) {
            let message = format!("timed out waiting for the streams of request {id}");
            if let Some(error) = &pair.error {
                let _ = error.out.send(Bytes::from(message)).await;
                let _ = error.out.finish().await;
            }
            if let Some(data) = &pair.data {
                let _ = data.out.reset(status::CANCEL).await;
            }
        }
    }
}

async fn refuse(out: &StreamWriter, message: &str) {
    tracing::debug!(stream = out.id(), message, "refusing a port-forward stream");
    let _ = out.reset(status::PROTOCOL_ERROR).await;
}

/// The request the two streams stand for; a bad `port` header is reported on the error
/// stream and yields nothing.
async fn pair_to_request(error: Stream, data: Stream) -> Option<ForwardRequest> {
    let port = data
        .header("port")
        .or_else(|| error.header("port"))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p > 0);
    let Some(port) = port else {
        let header = data.header("port").unwrap_or("").to_string();
        let message = format!("invalid port {header:?}: a port in 1-65535 is required");
        let _ = error.out.send(Bytes::from(message)).await;
        let _ = error.out.finish().await;
        let _ = data.out.reset(status::CANCEL).await;
        return None;
    };
    let (to_client, pump) = outgoing(data.out);
    let (error_tx, error_rx) = oneshot::channel::<String>();
    let error_out = error.out;
    tokio::spawn(async move {
        if let Ok(message) = error_rx.await {
            let _ = error_out.send(Bytes::from(message)).await;
        }
        // The data has gone out before the error stream closes: client-go ends the
        // connection when its error stream does.
        let _ = pump.await;
        let _ = error_out.finish().await;
    });
    Some(ForwardRequest {
        port,
        from_client: data.incoming,
        to_client,
        error: error_tx,
    })
}
