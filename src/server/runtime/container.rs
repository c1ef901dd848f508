//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, ExecSync, ReopenContainerLog.

use std::collections::HashMap;
use std::time::Duration;

use crate::cri;

use crate::container::record::{ContainerRecord, ProcessUser};
use crate::context::Context;
use crate::error::{Error, Result};

pub async fn create(
    ctx: &Context,
    req: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse> {
    let config = req
        .config
        .ok_or_else(|| Error::invalid("config", "missing"))?;
    let pod_id = ctx
        .sandboxes
        .get(&req.pod_sandbox_id)?
        .map_or(req.pod_sandbox_id.clone(), |p| p.id);
    let _pod = ctx.sandboxes.lock_shared(&pod_id).await;
    let id = ctx
        .containers
        .create(&ctx.sandboxes, &pod_id, config)
        .await?;
    Ok(cri::CreateContainerResponse { container_id: id })
}

pub async fn start(ctx: &Context, id: &str) -> Result<cri::StartContainerResponse> {
    let record = ctx.containers.get(id).ok_or_else(|| Error::NotFound {
        kind: "container",
        id: id.to_string(),
    })?;
    let _pod = ctx.sandboxes.lock_shared(&record.sandbox_id).await;
    ctx.containers.start(&ctx.sandboxes, &record.id).await?;
    Ok(cri::StartContainerResponse {})
}

/// Timeouts beyond this are this long: forever for a container, and a deadline that still
/// fits in a clock reading (kubelet passes a pod's grace period, an int64, as it is).
const LONGEST_TIMEOUT_SECS: i64 = 100 * 365 * 24 * 3600;

/// A timeout in seconds from the wire: negative is zero, huge is [`LONGEST_TIMEOUT_SECS`].
fn timeout_from_secs(secs: i64) -> Duration {
    Duration::from_secs(secs.clamp(0, LONGEST_TIMEOUT_SECS).unsigned_abs())
}

pub async fn stop(ctx: &Context, id: &str, timeout: i64) -> Result<cri::StopContainerResponse> {
    let timeout = timeout_from_secs(timeout);
    ctx.containers.stop(id, timeout).await?;
    Ok(cri::StopContainerResponse {})
}

pub async fn remove(ctx: &Context, id: &str) -> Result<cri::RemoveContainerResponse> {
    ctx.containers.remove(&ctx.sandboxes, id).await?;
    Ok(cri::RemoveContainerResponse {})
}

/// The CRI view of a container.
pub fn status_of(record: &ContainerRecord) -> cri::ContainerStatus {
    let config = &record.config;
    cri::ContainerStatus {
        id: record.id.clone(),
        metadata: config.metadata.clone(),
        state: record.state.cri() as i32,
        created_at: record.created_at,
        started_at: record.started_at,
        finished_at: record.finished_at,
        exit_code: record.exit_code,
        image: config.image.clone(),
        image_ref: record.image_ref.clone(),
        image_id: record.image_id.clone(),
        reason: record.reason.clone(),
        message: record.message.clone(),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        mounts: config.mounts.clone(),
        log_path: record
            .log_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        resources: config.linux.as_ref().map(|l| cri::ContainerResources {
            linux: l.resources.clone(),
            windows: None,
        }),
        user: user_of(record),
        stop_signal: crate::container::stop_signal::reported(config.stop_signal, record.stop_signal)
            as i32,
    }
}

/// The ids the container's process really has while it runs (read from /proc, the process
/// checked by its start time), else those it was given.
fn user_of(record: &ContainerRecord) -> Option<cri::ContainerUser> {
    let running = record
        .process
        .filter(|p| crate::sandbox::record::start_time(p.pid) == Some(p.start_time))
        .and_then(|p| ProcessUser::of_process(p.pid));
    let user = running.or_else(|| record.user.clone())?;
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid: user.uid.into(),
            gid: user.gid.into(),
            supplemental_groups: user.groups.iter().map(|&g| g.into()).collect(),
        }),
    })
}

pub async fn status(
    ctx: &Context,
    req: &cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse> {
    let record = ctx
        .containers
        .get(&req.container_id)
        .ok_or_else(|| Error::NotFound {
            kind: "container",
            id: req.container_id.clone(),
        })?;
    let mut info = HashMap::new();
    if req.verbose {
        let details = serde_json::json!({
            "sandboxID": record.sandbox_id,
            "pid": record.process.map(|p| p.pid),
            "cgroup": record.cgroup,
            "chainIDs": record.chain_ids,
            "config": record.config,
            "runtimeSpec": std::fs::read_to_string(
                ctx.config.root.join("containers").join(&record.id).join("config.json")
            ).ok().and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()),
        });
        info.insert("info".to_string(), details.to_string());
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(status_of(&record)),
        info,
    })
}

pub async fn list(
    ctx: &Context,
    req: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse> {
    Ok(cri::ListContainersResponse {
        containers: matching(ctx, req.filter),
    })
}

/// The containers the filter selects (ListContainers, StreamContainers).
pub fn matching(ctx: &Context, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
    let filter = filter.unwrap_or_default();
    ctx.containers
        .list_matching(&filter.id, &filter.pod_sandbox_id, &filter.label_selector)
        .into_iter()
        .filter(|r| filter.state.is_none_or(|s| s.state == r.state.cri() as i32))
        .map(|r| cri::Container {
            id: r.id.clone(),
            pod_sandbox_id: r.sandbox_id.clone(),
            metadata: r.config.metadata.clone(),
            image: r.config.image.clone(),
            image_ref: r.image_ref.clone(),
            image_id: r.image_id.clone(),
            state: r.state.cri() as i32,
            created_at: r.created_at,
            labels: r.config.labels.clone(),
            annotations: r.config.annotations.clone(),
        })
        .collect()
}

pub async fn exec_sync(ctx: &Context, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse> {
    crate::container::validate::exec_command("cmd", &req.cmd)?;
    if let Some(record) = ctx.containers.get(&req.container_id) {
        let bundle = ctx.config.root.join("containers").join(&record.id);
        crate::container::validate::exec_program_in(&record, &bundle, &req.cmd)?;
    }
    let timeout = timeout_from_secs(req.timeout);
    let (stdout, stderr, exit_code) = ctx
        .containers
        .exec_sync(&ctx.sandboxes, &req.container_id, req.cmd, timeout)
        .await?;
    Ok(cri::ExecSyncResponse {
        stdout,
        stderr,
        exit_code,
    })
}

pub async fn reopen_log(ctx: &Context, id: &str) -> Result<cri::ReopenContainerLogResponse> {
    ctx.containers.reopen_log(&ctx.sandboxes, id).await?;
    Ok(cri::ReopenContainerLogResponse {})
}

pub async fn update_resources(
    ctx: &Context,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse> {
    if let Some(resources) = &req.linux {
        crate::container::validate::resources("linux", resources)?;
    }
    ctx.containers
        .update_resources(&req.container_id, req.linux)
        .await?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_timeouts_fit_a_deadline() {
        assert_eq!(timeout_from_secs(-5), Duration::ZERO);
        assert_eq!(timeout_from_secs(30), Duration::from_secs(30));
        let longest = timeout_from_secs(i64::MAX);
        assert_eq!(longest.as_secs(), LONGEST_TIMEOUT_SECS as u64);
        assert!(std::time::Instant::now().checked_add(longest).is_some());
        assert!(u64::try_from(longest.as_millis()).is_ok());
    }
}
