//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cri;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::filter::labels_match;
use crate::sandbox::record::{SandboxRecord, SandboxState};
use crate::sandbox::resize::PodCgroupOwner;

fn state(record: &SandboxRecord) -> i32 {
    match record.state {
        SandboxState::Ready => cri::PodSandboxState::SandboxReady as i32,
        SandboxState::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

pub async fn run(
    ctx: &Arc<Context>,
    req: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse> {
    let config = req
        .config
        .ok_or_else(|| Error::invalid("config", "missing"))?;
    let id = ctx.sandboxes.run(config, req.runtime_handler).await?;
    // From now on the agent's news of its containers is followed.
    crate::container::watch::spawn(ctx.clone(), id.clone(), None);
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
}

pub async fn stop(ctx: &Context, id: &str) -> Result<cri::StopPodSandboxResponse> {
    let Some(pod) = ctx.sandboxes.get(id)? else {
        return Ok(cri::StopPodSandboxResponse {});
    };
    let _pod = ctx.sandboxes.lock_exclusive(&pod.id).await;
    // Killing the containers and CNI DEL do not depend on each other.
    let (containers, network) = tokio::join!(
        ctx.containers.stop_all_in(&pod.id),
        ctx.sandboxes.detach_network_of(&pod.id)
    );
    containers?;
    network?;
    ctx.sandboxes.stop(&pod.id).await?;
    Ok(cri::StopPodSandboxResponse {})
}

pub async fn remove(ctx: &Context, id: &str) -> Result<cri::RemovePodSandboxResponse> {
    let Some(pod) = ctx.sandboxes.get(id)? else {
        return Ok(cri::RemovePodSandboxResponse {});
    };
    let _pod = ctx.sandboxes.lock_exclusive(&pod.id).await;
    let remove_containers = async {
        ctx.containers.stop_all_in(&pod.id).await?;
        ctx.containers.remove_all_in(&ctx.sandboxes, &pod.id).await
    };
    let (containers, network) =
        tokio::join!(remove_containers, ctx.sandboxes.detach_network_of(&pod.id));
    containers?;
    network?;
    ctx.sandboxes.remove(&pod.id).await?;
    ctx.sandboxes.forget_lock(&pod.id);
    Ok(cri::RemovePodSandboxResponse {})
}

pub async fn status(
    ctx: &Context,
    req: &cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse> {
    let record = ctx
        .sandboxes
        .get(&req.pod_sandbox_id)?
        .ok_or_else(|| Error::NotFound {
            kind: "pod sandbox",
            id: req.pod_sandbox_id.clone(),
        })?;
    let mut ips = record.ips.iter();
    let network = cri::PodSandboxNetworkStatus {
        ip: ips.next().cloned().unwrap_or_default(),
        additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
    };
    let mut info = HashMap::new();
    if req.verbose {
        let details = serde_json::json!({
            "pid": record.agent.map(|a| a.pid),
            // PID 1 of the pod's PID namespace: the agent itself (a pod from before that
            // recorded a PID 1 of its own).
            "pidNamespaceInit": record
                .pid_init
                .or(record.agent.filter(|_| record.pod_pid()))
                .map(|a| a.pid),
            "netns": record.netns,
            "cgroup": record.cgroup,
            "runtimeHandler": record.runtime_handler,
            "config": record.config,
            "cni": record.cni_result,
            "resources": resources_info(&record),
        });
        info.insert("info".to_string(), details.to_string());
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(cri::PodSandboxStatus {
            id: record.id.clone(),
            metadata: Some(record.metadata()),
            state: state(&record),
            created_at: record.created_at,
            network: Some(network),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(record.namespace_options()),
                }),
            }),
            labels: record.config.labels.clone(),
            annotations: record.config.annotations.clone(),
            runtime_handler: record.runtime_handler.clone(),
        }),
        info,
        containers_statuses: ctx
            .containers
            .list()
            .iter()
            .filter(|c| c.sandbox_id == record.id)
            .map(super::container::status_of)
            .collect(),
        timestamp: crate::clock::now_ns(),
    })
}

/// The pod's resources as verbose PodSandboxStatus reports them: the latest of
/// RunPodSandbox and UpdatePodSandboxResources, the pod's cgroup and who limits it.
fn resources_info(record: &SandboxRecord) -> serde_json::Value {
    let linux = record.config.linux.clone().unwrap_or_default();
    serde_json::json!({
        "resources": linux.resources,
        "overhead": linux.overhead,
        "podCgroup": record.cgroup_parent().ok(),
        "podCgroupLimitedBy": PodCgroupOwner::of(record).as_str(),
    })
}

/// UpdatePodSandboxResources (see sandbox/resize.rs).
pub async fn update_resources(
    ctx: &Context,
    req: cri::UpdatePodSandboxResourcesRequest,
) -> Result<cri::UpdatePodSandboxResourcesResponse> {
    for (field, value) in [("resources", &req.resources), ("overhead", &req.overhead)] {
        if let Some(r) = value {
            crate::container::validate::resources(field, r)?;
        }
    }
    ctx.sandboxes
        .update_resources(&req.pod_sandbox_id, req.resources, req.overhead)
        .await?;
    Ok(cri::UpdatePodSandboxResourcesResponse {})
}

pub fn list(ctx: &Context, req: cri::ListPodSandboxRequest) -> Result<cri::ListPodSandboxResponse> {
    Ok(cri::ListPodSandboxResponse {
        items: matching(ctx, req.filter)?,
    })
}

/// The pods the filter selects (ListPodSandbox, StreamPodSandboxes).
pub fn matching(
    ctx: &Context,
    filter: Option<cri::PodSandboxFilter>,
) -> Result<Vec<cri::PodSandbox>> {
    let filter = filter.unwrap_or_default();
    let items = ctx
        .sandboxes
        .list()?
        .into_iter()
        .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
        .filter(|r| filter.state.is_none_or(|s| s.state == state(r)))
        .filter(|r| labels_match(&r.config.labels, &filter.label_selector))
        .map(|r| cri::PodSandbox {
            id: r.id.clone(),
            metadata: Some(r.metadata()),
            state: state(&r),
            created_at: r.created_at,
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
            runtime_handler: r.runtime_handler.clone(),
        })
        .collect();
    Ok(items)
}
