//! GetContainerEvents: each subscriber gets the containers' lifecycle events in order, with
//! the pod's status and its containers' statuses as they are when the event is sent (the
//! event's own container as it was at the event, if it is gone by then). A
//! subscriber that falls more than the buffer behind gets an error and its stream ends; the
//! runtime never waits for it.

use std::pin::Pin;
use std::sync::Arc;

use crate::cri;
use futures_util::StreamExt;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::Status;

use crate::container::ContainerEvent;
use crate::context::Context;

type Events = Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

pub fn subscribe(ctx: Arc<Context>) -> Events {
    let receiver = ctx.containers.subscribe();
    let stream = BroadcastStream::new(receiver)
        .then(move |item| {
            let ctx = ctx.clone();
            async move {
                match item {
                    Ok(event) => Ok(response(&ctx, event).await),
                    Err(BroadcastStreamRecvError::Lagged(missed)) => {
                        Err(Status::resource_exhausted(format!(
                            "this subscriber fell {missed} events behind and was dropped; subscribe again"
                        )))
                    }
                }
            }
        })
        // The error ends the stream.
        .scan(false, |ended, item| {
            let out = if *ended { None } else { Some(item) };
            if matches!(out, Some(Err(_))) {
                *ended = true;
            }
            futures_util::future::ready(out)
        });
    Box::pin(stream)
}

async fn response(ctx: &Context, event: ContainerEvent) -> cri::ContainerEventResponse {
    let pod_status = super::sandbox::status(
        ctx,
        &cri::PodSandboxStatusRequest {
            pod_sandbox_id: event.pod_id.clone(),
            verbose: false,
        },
    )
    .await
    .ok();
    let (pod_sandbox_status, mut containers_statuses) = match pod_status {
        Some(r) => (r.status, r.containers_statuses),
        None => (None, vec![]),
    };
    // Removed before this event went out: report it as it was at the event.
    let deleted = event.kind == cri::ContainerEventType::ContainerDeletedEvent;
    if !deleted
        && !containers_statuses
            .iter()
            .any(|c| c.id == event.container_id)
    {
        containers_statuses.push(super::container::status_of(&event.record));
    }
    cri::ContainerEventResponse {
        container_id: event.container_id,
        container_event_type: event.kind as i32,
        created_at: event.at,
        pod_sandbox_status,
        containers_statuses,
    }
}
