//! The pod agents' news: one task per pod follows its agent's event stream (proto/agent.proto,
//! Watch) and applies every container start and exit as it happens, so ContainerStatus and
//! the STOPPED event follow an exit within milliseconds without polling. Each (re)connection
//! begins with everything the agent knows, so what happened while the daemon was down or the
//! stream was broken is applied then. When the agent is gone, its containers are exited.

use std::sync::Arc;
use std::time::Duration;

use crate::agent::client::{self, Watcher};
use crate::agent::proto::WatchEvent;
use crate::context::Context;

/// Between attempts to reach an agent that lives but does not answer.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// At start-up, before the daemon serves: every pod's containers brought in line with what
/// their agents say (or exited, for pods whose agent is gone), then followed.
pub async fn sync_all(ctx: &Arc<Context>) -> crate::error::Result<()> {
    for pod in ctx.sandboxes.list()? {
        let live = pod.agent.is_some_and(|a| a.is_alive());
        let opened = if live {
            client::watch(&ctx.sandboxes.agent_socket(&pod.id))
                .await
                .ok()
        } else {
            None
        };
        match opened {
            Some((watcher, snapshot)) => {
                let held: Vec<String> = snapshot
                    .containers
                    .iter()
                    .filter(|c| c.held)
                    .map(|c| c.id.clone())
                    .collect();
                apply(ctx, &pod.id, snapshot).await;
                spawn(ctx.clone(), pod.id.clone(), Some(watcher));
                finish_held_starts(ctx, &held).await;
            }
            None if live => spawn(ctx.clone(), pod.id.clone(), None),
            None => ctx.containers.apply_agent_gone(&pod.id).await?,
        }
    }
    Ok(())
}

/// Starts the daemon did not live to finish (the process forked and held, never released):
/// finished now, as StartContainer would (placed in its scope, then released).
async fn finish_held_starts(ctx: &Context, held: &[String]) {
    for id in held {
        match ctx.containers.start(&ctx.sandboxes, id).await {
            Ok(()) => tracing::info!(container_id = %id, "finished a start the daemon died in"),
            Err(e) => tracing::warn!(container_id = %id, error = %e,
                "finishing a start the daemon died in"),
        }
    }
}

/// Follows a pod's agent in the background until the agent is gone.
pub fn spawn(ctx: Arc<Context>, pod_id: String, opened: Option<Watcher>) {
    tokio::spawn(async move { follow(ctx, pod_id, opened).await });
}

async fn follow(ctx: Arc<Context>, pod_id: String, mut opened: Option<Watcher>) {
    let socket = ctx.sandboxes.agent_socket(&pod_id);
    let mut retry = RETRY_FIRST;
    loop {
        let watcher = match opened.take() {
            Some(watcher) => Some(watcher),
            None => match client::watch(&socket).await {
                Ok((watcher, snapshot)) => {
                    apply(&ctx, &pod_id, snapshot).await;
                    Some(watcher)
                }
                Err(_) => None,
            },
        };
        if let Some(mut watcher) = watcher {
            retry = RETRY_FIRST;
            while let Ok(event) = watcher.next().await {
                apply(&ctx, &pod_id, event).await;
            }
        }
        if !agent_alive(&ctx, &pod_id) {
            if let Err(e) = ctx.containers.apply_agent_gone(&pod_id).await {
                tracing::error!(pod_id = %pod_id, error = %e, "recording the exits of a pod whose agent is gone");
            }
            return;
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

fn agent_alive(ctx: &Context, pod_id: &str) -> bool {
    matches!(ctx.sandboxes.get(pod_id), Ok(Some(pod)) if pod.agent.is_some_and(|a| a.is_alive()))
}

async fn apply(ctx: &Context, pod_id: &str, event: WatchEvent) {
    for process in &event.containers {
        if let Err(e) = ctx.containers.apply_agent_news(pod_id, process).await {
            tracing::error!(pod_id = %pod_id, container_id = %process.id, error = %e,
                "recording what the pod agent reported");
        }
    }
}
