//! What is done to a running container: ExecSync, ReopenContainerLog, and
//! UpdateContainerResources (which a created container takes too).

use std::time::Duration;

use super::Containers;
use super::record::{ContainerRecord, ContainerState};
use crate::agent::{self, proto};
use crate::cgroups;
use crate::cri;
use crate::error::{Error, Result, agent_error};
use crate::sandbox::Sandboxes;

impl Containers {
    /// The container, if it exists and runs (Exec, Attach, ExecSync, ReopenContainerLog).
    pub fn require_running(&self, id: &str) -> Result<ContainerRecord> {
        let record = self.get(id).ok_or_else(|| super::not_found(id))?;
        if record.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running (it is {})",
                record.id,
                record.state.cri().as_str_name()
            )));
        }
        Ok(record)
    }

    /// ExecSync: runs `cmd` in the container through the agent. A timeout kills the command
    /// and answers DEADLINE_EXCEEDED; zero means none.
    pub async fn exec_sync(
        &self,
        sandboxes: &Sandboxes,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        if cmd.is_empty() {
            return Err(Error::invalid("cmd", "empty"));
        }
        let record = self.require_running(id)?;
        let request = proto::ExecSync {
            id: record.id.clone(),
            bundle: self.bundle(&record.id).to_string_lossy().into_owned(),
            cmd,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            cgroup_procs: cgroups::container::procs_files(self.cgroup_version, &record.cgroup),
        };
        let socket = sandboxes.agent_socket(&record.sandbox_id);
        let answer = agent::client::exec(&socket, request, timeout)
            .await
            .map_err(agent_error(format!("exec in container {}", record.id)))?;
        if answer.timed_out {
            return Err(Error::DeadlineExceeded(format!(
                "command in container {} timed out after {}s",
                record.id,
                timeout.as_secs_f64()
            )));
        }
        Ok((answer.stdout, answer.stderr, answer.exit_code))
    }

    /// ReopenContainerLog: the agent reopens the log file kubelet just rotated.
    pub async fn reopen_log(&self, sandboxes: &Sandboxes, id: &str) -> Result<()> {
        let record = self.require_running(id)?;
        agent::client::reopen_log(&sandboxes.agent_socket(&record.sandbox_id), &record.id)
            .await
            .map_err(agent_error(format!("reopening the log of {}", record.id)))
    }

    /// UpdateContainerResources: new limits on the container's cgroup, kept in its record
    /// (ContainerStatus reports them). A refused change leaves the old limits.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> Result<()> {
        let resources = resources.ok_or_else(|| Error::invalid("linux", "missing"))?;
        let entry = self.require(id)?;
        let _op = entry.op.lock().await;
        let record = entry.current().ok_or_else(|| super::not_found(id))?;
        if record.state == ContainerState::Exited {
            return Err(Error::FailedPrecondition(format!(
                "container {} has exited",
                record.id
            )));
        }
        let old = record
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone());
        if let Some(systemd) = self.driver.systemd() {
            // On the unit too, so systemd never puts the old limits back.
            let scope = crate::cgroups::systemd::scope_name(&record.id);
            systemd
                .set_limits(&scope, &resources)
                .await
                .map_err(|e| crate::cgroups::CgroupError::from(e).into_error("linux"))?;
        }
        let version = self.cgroup_version;
        let wanted = resources.clone();
        let written = tokio::task::block_in_place(|| {
            cgroups::container::update(version, &record.cgroup, &wanted, old.as_ref())
        });
        if written.is_err()
            && let (Some(systemd), Some(old)) = (self.driver.systemd(), old.as_ref())
        {
            // The files have the old limits again: so must the unit, or systemd would write
            // the refused ones back on its next reload.
            let scope = crate::cgroups::systemd::scope_name(&record.id);
            if let Err(e) = systemd.set_limits(&scope, old).await {
                tracing::warn!(container_id = %record.id, error = %e, "the unit's previous limits could not be restored");
            }
        }
        written
            .map_err(|e| e.into_error("linux"))
            .map_err(|e| match e {
                Error::InvalidArgument { field, reason } => Error::invalid(
                    field,
                    format!(
                        "container {}: the kernel refused the change: {reason}",
                        record.id
                    ),
                ),
                other => other,
            })?;
        let Some(mut change) = entry.change().await else {
            return Err(super::not_found(id));
        };
        change
            .record
            .config
            .linux
            .get_or_insert_with(Default::default)
            .resources = Some(resources);
        self.save(&change.record).await?;
        change.publish();
        tracing::info!(container_id = %record.id, "container resources updated");
        Ok(())
    }
}
