//! StartContainer, StopContainer, RemoveContainer, and the pod agent's news of starts and
//! exits. Each container's lifecycle RPCs are serialised by its `op` lock; every change of its
//! record goes through `Entry::change` (see table.rs), so each transition happens once and
//! makes its event once.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Containers;
use super::record::{ContainerRecord, ContainerState};
use super::table::{self, AgentView, Entry};
use crate::agent::{self, ExitStatus, proto};
use crate::cgroups;
use crate::clock::now_ns;
use crate::cri;
use crate::error::{Error, Result, agent_error, io_error};
use crate::image::digest::Digest;
use crate::sandbox::Sandboxes;
use crate::sandbox::record::{AgentProcess, SandboxState};

/// How long a container may take to die after SIGKILL before StopContainer gives up.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// The longest a stop waits for its signal to work: a client's larger timeout (up to
/// i64::MAX seconds) means "as long as it takes", and a day is as long as anything waits here.
const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// While waiting for an exit, how often the exit file is looked at, in case the agent's news is
/// late (it writes the file before it tells).
const EXIT_FILE_CHECK: Duration = Duration::from_millis(500);

impl Containers {
    /// StartContainer: the agent starts the process; its pid is recorded. A start the agent
    /// refuses leaves the container exited with reason StartError, as kubelet expects. The
    /// caller holds the pod's lock (shared).
    pub async fn start(&self, sandboxes: &Sandboxes, id: &str) -> Result<()> {
        let entry = self.require(id)?;
        let _op = entry.op.lock().await;
        let record = entry.current().ok_or_else(|| super::not_found(id))?;
        if record.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {}, not created",
                record.id,
                record.state.name()
            )));
        }
        let pod = sandboxes
            .get(&record.sandbox_id)?
            .filter(|p| p.state == SandboxState::Ready)
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "pod sandbox {} of container {} is not ready",
                    record.sandbox_id, record.id
                ))
            })?;
        let request = self.start_request(&record)?;
        let socket = sandboxes.agent_socket(&record.sandbox_id);
        let answer = match self.driver.systemd() {
            None => agent::client::start(&socket, request).await,
            Some(systemd) => {
                let slice = crate::cgroups::parent_slice(
                    pod.config
                        .linux
                        .as_ref()
                        .map_or("", |l| l.cgroup_parent.as_str()),
                );
                match self
                    .start_in_scope(systemd, &socket, request, &record, &slice)
                    .await
                {
                    Ok(answer) => answer,
                    Err(placing) => {
                        self.record_start_failure(&entry, placing.to_string())
                            .await?;
                        return Err(placing);
                    }
                }
            }
        };
        let context = format!("starting container {}", record.id);
        match answer {
            Ok(started) => {
                let view = AgentView {
                    pid: started.container_pid as i32,
                    started_at: started.started_at,
                    exit: None,
                };
                self.apply_agent_view(&entry, view).await?;
                tracing::info!(container_id = %record.id, pid = view.pid, "container started");
                Ok(())
            }
            // An earlier start (one the daemon did not live to record) went through: the agent's
            // news says so; nothing failed.
            Err(e) if e.agent_kind() == Some(proto::ErrorKind::AlreadyStarted) => Err(
                Error::FailedPrecondition(format!("container {} was started already", record.id)),
            ),
            // The agent refused: the container cannot start.
            Err(e) if e.agent_kind().is_some() => {
                self.record_start_failure(&entry, e.to_string()).await?;
                Err(agent_error(context)(e))
            }
            // The agent was not reached or did not answer: whether it started is not known, and
            // its news will tell. Kubelet may ask again.
            Err(e) => Err(agent_error(context)(e)),
        }
    }

    /// With the systemd driver: the agent forks the process and holds it; a scope is made for
    /// its pid, the container's limits and device rules written to it; then it goes on. The
    /// outer error is the placement's (the held process is gone); the inner one the agent's.
    async fn start_in_scope(
        &self,
        systemd: &crate::cgroups::systemd::Systemd,
        socket: &std::path::Path,
        mut request: proto::StartContainer,
        record: &ContainerRecord,
        slice: &str,
    ) -> Result<std::result::Result<proto::Response, crate::agent::client::CallError>> {
        request.hold = true;
        // systemd moves it into the scope (which does not exist yet).
        request.cgroup_procs.clear();
        request.cgroup_dir.clear();
        let held = match agent::client::start(socket, request).await {
            Ok(held) => held,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = self
            .place_in_scope(systemd, record, slice, held.container_pid)
            .await
        {
            // Never released, it has run nothing of the container's.
            let _ = agent::client::forget(socket, &record.id).await;
            return Err(e);
        }
        Ok(agent::client::release(socket, &record.id).await)
    }

    async fn place_in_scope(
        &self,
        systemd: &crate::cgroups::systemd::Systemd,
        record: &ContainerRecord,
        slice: &str,
        pid: u32,
    ) -> Result<()> {
        let limits = super::create::limits_of(record);
        let scope = crate::cgroups::systemd::scope_name(&record.id);
        match systemd
            .start_scope(&scope, slice, &[pid], limits.as_ref())
            .await
        {
            // A daemon that died between placing and releasing: the scope holds the process.
            Err(e) if e.is_unit_exists() => {}
            placed => placed.map_err(|e| {
                crate::cgroups::CgroupError::from(e).into_error("config.linux.resources")
            })?,
        }
        let spec = oci_spec::runtime::Spec::load(self.bundle(&record.id).join("config.json"))
            .map_err(|e| Error::Internal(format!("reading the spec of {}: {e}", record.id)))?;
        let rules = super::create::device_rules(&spec);
        let version = self.cgroup_version;
        tokio::task::block_in_place(|| {
            crate::cgroups::container::apply(version, &record.cgroup, limits.as_ref(), &rules)
        })
        .map_err(|e| e.into_error("config.linux.resources"))
    }

    fn start_request(&self, record: &ContainerRecord) -> Result<proto::StartContainer> {
        let layers_dir = self.images.snapshots_dir().to_path_buf();
        let mut lower = Vec::new();
        for chain in record.chain_ids.iter().rev() {
            let digest = Digest::parse(chain)
                .map_err(|e| Error::Internal(format!("chain id {chain}: {e}")))?;
            let dir = self.images.snapshot_fs(&digest)?.ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "layer {chain} of container {} is gone",
                    record.id
                ))
            })?;
            let relative = dir.strip_prefix(&layers_dir).unwrap_or(&dir).to_path_buf();
            lower.push(relative.to_string_lossy().into_owned());
        }
        let bundle = self.bundle(&record.id);
        // Overlay needs a lower dir: an image without layers gets an empty one.
        if lower.is_empty() {
            let empty = bundle.join("empty");
            std::fs::create_dir_all(&empty).map_err(io_error("creating the empty layer"))?;
            lower.push(empty.to_string_lossy().into_owned());
        }
        let overlay_options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            bundle.join("upper").display(),
            bundle.join("work").display()
        );
        Ok(proto::StartContainer {
            id: record.id.clone(),
            bundle: bundle.to_string_lossy().into_owned(),
            log_path: record
                .log_path
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            exit_file: self.exit_file(&record.id).to_string_lossy().into_owned(),
            cgroup_procs: cgroups::container::procs_files(self.cgroup_version, &record.cgroup),
            oom_file: cgroups::container::oom_file(self.cgroup_version, &record.cgroup),
            new_pid_ns: record.new_pid_ns,
            layers_dir: layers_dir.to_string_lossy().into_owned(),
            overlay_options,
            tty: record.config.tty,
            stdin: record.config.stdin,
            stdin_once: record.config.stdin_once,
            hold: false,
            cgroup_dir: match self.cgroup_version {
                crate::cgroups::CgroupVersion::V2 => {
                    std::path::Path::new(crate::cgroups::CGROUP_ROOT)
                        .join(&record.cgroup)
                        .to_string_lossy()
                        .into_owned()
                }
                crate::cgroups::CgroupVersion::V1 => String::new(),
            },
        })
    }

    async fn record_start_failure(&self, entry: &Entry, message: String) -> Result<()> {
        let Some(mut change) = entry.change().await else {
            return Ok(());
        };
        if change.record.state != ContainerState::Created {
            return Ok(());
        }
        table::mark_start_failed(&mut change.record, message, now_ns());
        self.save(&change.record).await?;
        self.emit(
            &change.record,
            cri::ContainerEventType::ContainerStoppedEvent,
        );
        change.publish();
        Ok(())
    }

    /// What the pod agent says of one of its containers (from StartContainer's answer or the
    /// agent's news): applied once, with its events.
    pub async fn apply_agent_view(&self, entry: &Entry, view: AgentView) -> Result<()> {
        let Some(mut change) = entry.change().await else {
            return Ok(());
        };
        let events = table::apply_agent_view(&mut change.record, view);
        if events.is_empty() {
            return Ok(());
        }
        if let Some(exit) = view.exit {
            tracing::info!(container_id = %change.record.id, exit_code = exit.exit_code,
                signal = exit.signal, oom_killed = exit.oom_killed, "container exited");
        }
        self.save(&change.record).await?;
        for kind in events {
            self.emit(&change.record, kind);
        }
        change.publish();
        Ok(())
    }

    /// The agent's news of a container of `pod_id`; news of containers the daemon does not
    /// know (removed meanwhile) or of another pod's is ignored.
    pub async fn apply_agent_news(
        &self,
        pod_id: &str,
        process: &proto::ContainerProcess,
    ) -> Result<()> {
        let Some(entry) = self.table.find_exact(&process.id) else {
            return Ok(());
        };
        if entry.current().is_none_or(|r| r.sandbox_id != pod_id) {
            return Ok(());
        }
        // Forked but never released: not started yet (sync_all finishes the start).
        if process.held {
            return Ok(());
        }
        let view = AgentView {
            pid: process.pid as i32,
            started_at: process.started_at,
            exit: process.exit.as_ref().map(ExitStatus::from_wire),
        };
        self.apply_agent_view(&entry, view).await
    }

    /// The pod's agent is gone, and its containers with it: each one still running is exited,
    /// with the status the agent wrote to its exit file if it did.
    pub async fn apply_agent_gone(&self, pod_id: &str) -> Result<()> {
        for entry in self.table.entries() {
            let Some(record) = entry.current() else {
                continue;
            };
            if record.sandbox_id != pod_id || record.state != ContainerState::Running {
                continue;
            }
            let Some(mut change) = entry.change().await else {
                continue;
            };
            if change.record.state != ContainerState::Running {
                continue;
            }
            let exit = self.read_exit(&change.record.id);
            tracing::info!(container_id = %change.record.id, pod_id = %pod_id, ?exit,
                "the pod agent is gone; the container with it");
            table::mark_agent_gone(&mut change.record, exit, now_ns());
            self.save(&change.record).await?;
            self.emit(
                &change.record,
                cri::ContainerEventType::ContainerStoppedEvent,
            );
            change.publish();
        }
        Ok(())
    }

    /// The exit the agent wrote to the container's exit file, if it did.
    pub(super) fn read_exit(&self, id: &str) -> Option<ExitStatus> {
        let bytes = std::fs::read(self.exit_file(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// StopContainer: the stop signal, then SIGKILL once `timeout` passes. Idempotent; an
    /// unknown id is not an error.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let Some(entry) = self.table.find(id) else {
            return Ok(());
        };
        let _op = entry.op.lock().await;
        self.stop_entry(&entry, timeout).await
    }

    /// Stops a container whose `op` lock the caller holds.
    async fn stop_entry(&self, entry: &Entry, timeout: Duration) -> Result<()> {
        let Some(record) = entry.current() else {
            return Ok(());
        };
        if record.state != ContainerState::Running {
            return Ok(());
        }
        let Some(process) = record.process else {
            return Ok(());
        };
        let timeout = timeout.min(MAX_STOP_TIMEOUT);
        if !timeout.is_zero() {
            signal_if_alive(process, record.stop_signal);
            if self.wait_exit(entry, timeout).await? {
                return Ok(());
            }
            tracing::info!(container_id = %record.id, "stop timeout passed; sending SIGKILL");
        }
        signal_if_alive(process, libc::SIGKILL);
        if self.wait_exit(entry, KILL_GRACE).await? {
            return Ok(());
        }
        Err(Error::Unavailable(format!(
            "container {} did not exit within {}s of SIGKILL",
            record.id,
            KILL_GRACE.as_secs()
        )))
    }

    /// Waits until the container is not running; false when `timeout` passed first. The agent's
    /// news brings the exit; its exit file is looked at now and then in case the news is late.
    async fn wait_exit(&self, entry: &Entry, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let slice = (deadline - now).min(EXIT_FILE_CHECK);
            let waited = tokio::time::timeout(
                slice,
                entry.wait_state_changes_from(ContainerState::Running),
            )
            .await;
            if waited.is_ok() {
                return Ok(true);
            }
            if let Some(id) = entry.current().map(|r| r.id)
                && let Some(exit) = self.read_exit(&id)
            {
                let view = AgentView {
                    pid: 0,
                    started_at: 0,
                    exit: Some(exit),
                };
                self.apply_agent_view(entry, view).await?;
                return Ok(true);
            }
        }
    }

    /// Waits (a little) until the exit the agent just reported for a container is on record.
    pub(super) async fn await_exit_recorded(&self, id: &str) {
        if let Some(entry) = self.table.find(id)
            && let Err(e) = self.wait_exit(&entry, Duration::from_secs(2)).await
        {
            tracing::warn!(container_id = %id, error = %e, "recording an exit");
        }
    }

    /// RemoveContainer: a running container is killed first; its processes, cgroup, bundle,
    /// rootfs dirs and record go. Idempotent; an unknown id is not an error.
    pub async fn remove(&self, sandboxes: &Sandboxes, id: &str) -> Result<()> {
        let Some(entry) = self.table.find(id) else {
            return Ok(());
        };
        let _op = entry.op.lock().await;
        let Some(record) = entry.current() else {
            return Ok(());
        };
        self.stop_entry(&entry, Duration::ZERO).await?;
        if let Some(pod) = sandboxes.get(&record.sandbox_id)?
            && pod.agent.is_some_and(|a| a.is_alive())
        {
            // Only memory in the agent: a failure leaves nothing behind that matters.
            let _ = agent::client::forget(&sandboxes.agent_socket(&pod.id), &record.id).await;
        }
        self.destroy(&entry).await?;
        self.emit(&record, cri::ContainerEventType::ContainerDeletedEvent);
        tracing::info!(container_id = %record.id, "container removed");
        Ok(())
    }

    /// Removes everything of a container that is not running: leftover processes (children it
    /// left in its cgroup), the cgroup, the bundle and rootfs dirs, the exit dir, the record.
    pub(super) async fn destroy(&self, entry: &Entry) -> Result<()> {
        let Some(change) = entry.change().await else {
            return Ok(());
        };
        let record = change.record.clone();
        let version = self.cgroup_version;
        let cgroup = record.cgroup.clone();
        tokio::task::block_in_place(|| {
            for pid in cgroups::container::pids(version, &cgroup) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        });
        if let Some(systemd) = self.driver.systemd() {
            systemd
                .stop_unit(&cgroups::systemd::scope_name(&record.id))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
        }
        tokio::task::block_in_place(|| cgroups::remove_cgroup(&cgroup)).map_err(Error::Internal)?;
        self.unmount_image_volumes(&record.id, &record.image_volumes);
        for dir in [self.bundle(&record.id), self.exits_dir.join(&record.id)] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error(format!("removing {}", dir.display()))(e));
                }
                _ => {}
            }
        }
        self.store
            .delete_record(crate::store::Table::Containers, &record.id)
            .await?;
        change.publish_removed();
        self.table.remove(&record.id);
        self.forget_samples(&record.cgroup);
        Ok(())
    }

    /// StopPodSandbox: every running container of the pod is killed (kubelet stopped them
    /// gracefully before, when it could).
    pub async fn stop_all_in(&self, pod_id: &str) -> Result<()> {
        for entry in self.entries_of(pod_id) {
            let _op = entry.op.lock().await;
            self.stop_entry(&entry, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// RemovePodSandbox: every container of the pod goes.
    pub async fn remove_all_in(&self, sandboxes: &Sandboxes, pod_id: &str) -> Result<()> {
        for entry in self.entries_of(pod_id) {
            if let Some(record) = entry.current() {
                self.remove(sandboxes, &record.id).await?;
            }
        }
        Ok(())
    }

    fn entries_of(&self, pod_id: &str) -> Vec<Arc<Entry>> {
        self.table
            .entries()
            .into_iter()
            .filter(|e| e.current().is_some_and(|r| r.sandbox_id == pod_id))
            .collect()
    }
}

/// Signals a container's first process with signal number `signo` (real-time ones too, which
/// nix's `Signal` cannot name), unless its pid now names another process.
fn signal_if_alive(process: AgentProcess, signo: i32) {
    if process.start_time == 0 || process.is_alive() {
        // SAFETY: kill(2) takes two integers and touches no memory of this process; a pid or
        // signal the kernel refuses is an error return, which is ignored (the process is gone).
        let _ = unsafe { libc::kill(process.pid, signo) };
    }
}
