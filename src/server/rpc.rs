//! One tracing span per RPC: the method, the ids it concerns, how long it took and the status
//! code it ended with. Every handler runs through [`handle`].

use std::future::Future;
use std::time::Instant;

use tonic::{Code, Response, Status};
use tracing::Instrument;

use crate::error::Error;

/// The objects an RPC concerns, as far as its request names them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ids<'a> {
    pub pod: Option<&'a str>,
    pub container: Option<&'a str>,
    pub image: Option<&'a str>,
}

impl<'a> Ids<'a> {
    pub fn none() -> Self {
        Ids::default()
    }
    pub fn pod(id: &'a str) -> Self {
        Ids {
            pod: Some(id),
            ..Default::default()
        }
    }
    pub fn container(id: &'a str) -> Self {
        Ids {
            container: Some(id),
            ..Default::default()
        }
    }
    pub fn image(id: &'a str) -> Self {
        Ids {
            image: Some(id),
            ..Default::default()
        }
    }
}

/// Runs an RPC body inside its span and logs its outcome once: successes at debug (kubelet polls
/// constantly), caller errors at info, server-side failures at error.
pub async fn handle<T, F>(
    method: &'static str,
    ids: Ids<'_>,
    body: F,
) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T, Error>>,
{
    let span = tracing::info_span!(
        "rpc",
        method,
        pod_id = ids.pod.filter(|s| !s.is_empty()),
        container_id = ids.container.filter(|s| !s.is_empty()),
        image = ids.image.filter(|s| !s.is_empty()),
    );
    async move {
        let started = Instant::now();
        let result = body.await.map_err(Status::from);
        let took = started.elapsed();
        let duration_us = took.as_micros() as u64;
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        crate::metrics::METRICS.observe_rpc(method, &format!("{code:?}"), took);
        match &result {
            Ok(_) => tracing::debug!(code = ?Code::Ok, duration_us, "rpc done"),
            Err(status) => match status.code() {
                Code::Internal | Code::Unknown | Code::DataLoss | Code::Unavailable => {
                    tracing::error!(code = ?status.code(), duration_us, error = status.message(), "rpc failed")
                }
                code => tracing::info!(?code, duration_us, error = status.message(), "rpc failed"),
            },
        }
        result.map(Response::new)
    }
    .instrument(span)
    .await
}

/// The answer of an RPC that a later part of crius builds.
pub async fn unimplemented<T>(method: &'static str) -> Result<Response<T>, Status> {
    handle(method, Ids::none(), async move {
        Err(Error::Unimplemented { method })
    })
    .await
}

/// The caller's deadline from the `grpc-timeout` header ("<n><unit>", unit H M S m u n).
pub fn caller_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Runs `work` until the caller's deadline, a little before it: the answer is then
/// DEADLINE_EXCEEDED naming `what`, not the transport's generic cancellation. Work spawned
/// elsewhere (a pull) goes on for the callers that wait longer.
pub async fn within<T>(
    deadline: Option<std::time::Duration>,
    what: String,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let Some(deadline) = deadline else {
        return work.await;
    };
    let margin = (deadline / 10).max(std::time::Duration::from_millis(1));
    let expired = || {
        Err(Error::DeadlineExceeded(format!(
            "{what}: the caller's deadline of {deadline:?} passed"
        )))
    };
    // No budget left: not even work that would answer at once is started.
    let budget = deadline.saturating_sub(margin);
    if budget.is_zero() {
        return expired();
    }
    match tokio::time::timeout(budget, work).await {
        Ok(result) => result,
        Err(_) => expired(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_timeouts() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(super::caller_deadline(&m), None);
        m.insert("grpc-timeout", "1m".parse().unwrap());
        assert_eq!(
            super::caller_deadline(&m),
            Some(std::time::Duration::from_millis(1))
        );
        m.insert("grpc-timeout", "120S".parse().unwrap());
        assert_eq!(
            super::caller_deadline(&m),
            Some(std::time::Duration::from_secs(120))
        );
    }
}
