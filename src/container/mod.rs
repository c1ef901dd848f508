//! Containers: created as an OCI bundle (config.json, an overlay rootfs over the image's layer
//! snapshots, a cgroup with the limits), started, exec'd into and reaped by the pod's agent,
//! stopped and removed here. The store is the source of truth; the agent's exit files tell
//! what happened while nobody was asking (or while the daemon was down).

pub mod oci;
pub mod record;
pub mod spec;
pub mod streams;
pub mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cri;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::agent::{self, ExitStatus, proto};
use crate::cgroups::{self, CgroupVersion};
use crate::clock::now_ns;
use crate::error::{Error, Result, io_error};
use crate::image::Images;
use crate::image::digest::Digest;
use crate::sandbox::Sandboxes;
use crate::sandbox::record::{AgentProcess, SandboxRecord, SandboxState};
use crate::store::{Store, Table};
use record::{ContainerRecord, ContainerState};

/// How long a container may take to die after SIGKILL before StopContainer gives up.
const KILL_GRACE: Duration = Duration::from_secs(10);

pub struct Containers {
    store: Arc<Store>,
    images: Arc<Images>,
    /// `<root>/containers`: bundles, upper and work dirs.
    bundles_dir: PathBuf,
    /// `<state>/containers`: exit files.
    exits_dir: PathBuf,
    cgroup_version: CgroupVersion,
    /// Name reservation happens under it: two containers never share a name in a pod.
    create_lock: tokio::sync::Mutex<()>,
    /// The last CPU sample per cgroup (time ns, usage ns), for nano-cores between samples.
    cpu_samples: std::sync::Mutex<HashMap<String, (i64, u64)>>,
    /// Lifecycle events for GetContainerEvents subscribers (bounded: a subscriber that falls
    /// behind is dropped, the runtime never waits for it).
    events: tokio::sync::broadcast::Sender<ContainerEvent>,
}

/// A container's lifecycle step, as GetContainerEvents reports it.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub container_id: String,
    pub pod_id: String,
    pub kind: cri::ContainerEventType,
    /// Nanoseconds since the epoch.
    pub at: i64,
    /// The container as it was at the event, for a subscriber that is sent the event after
    /// the container is gone.
    pub record: Box<ContainerRecord>,
}

/// How many events a subscriber may have unread before it is dropped.
const EVENT_BUFFER: usize = 1024;

fn not_found(id: &str) -> Error {
    Error::NotFound {
        kind: "container",
        id: id.to_string(),
    }
}

fn parse(json: &str) -> Result<ContainerRecord> {
    serde_json::from_str(json)
        .map_err(|e| Error::Internal(format!("corrupt container record: {e}")))
}

impl Containers {
    pub fn new(
        store: Arc<Store>,
        images: Arc<Images>,
        root: &Path,
        state_dir: &Path,
        cgroup_version: CgroupVersion,
    ) -> Containers {
        Containers {
            store,
            images,
            bundles_dir: root.join("containers"),
            exits_dir: state_dir.join("containers"),
            cgroup_version,
            create_lock: tokio::sync::Mutex::new(()),
            cpu_samples: std::sync::Mutex::new(HashMap::new()),
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
        }
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ContainerEvent> {
        self.events.subscribe()
    }

    fn emit(&self, record: &ContainerRecord, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        // No subscriber left by now is not an error.
        let _ = self.events.send(ContainerEvent {
            container_id: record.id.clone(),
            pod_id: record.sandbox_id.clone(),
            kind,
            at: now_ns(),
            record: Box::new(record.clone()),
        });
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.bundles_dir.join(id)
    }

    fn exit_file(&self, id: &str) -> PathBuf {
        self.exits_dir.join(id).join("exit")
    }

    async fn save(&self, record: &ContainerRecord) -> Result<()> {
        let json = serde_json::to_string(record)
            .map_err(|e| Error::Internal(format!("encoding container: {e}")))?;
        self.store
            .put_record(
                Table::Containers,
                &record.id,
                Some(&record.sandbox_id),
                json,
            )
            .await?;
        Ok(())
    }

    fn stored(&self) -> Result<Vec<ContainerRecord>> {
        self.store
            .list_records(Table::Containers)?
            .into_iter()
            .map(|(_, json)| parse(&json))
            .collect()
    }

    /// Every container, its state brought up to date.
    pub async fn list(&self, sandboxes: &Sandboxes) -> Result<Vec<ContainerRecord>> {
        // One read of the pods for the whole list: kubelet lists containers every second.
        let live = live_agents(sandboxes)?;
        let mut out = Vec::new();
        for record in self.stored()? {
            out.push(
                self.refresh_with(record, |pod| Ok(live.contains(pod)))
                    .await?,
            );
        }
        Ok(out)
    }

    /// The containers a list filter selects (id and pod id by prefix, labels), up to date.
    pub async fn list_matching(
        &self,
        sandboxes: &Sandboxes,
        id: &str,
        pod_id: &str,
        selector: &HashMap<String, String>,
    ) -> Result<Vec<ContainerRecord>> {
        Ok(self
            .list(sandboxes)
            .await?
            .into_iter()
            .filter(|r| matches(r, id, pod_id, selector))
            .collect())
    }

    /// A container by id or unique id prefix, its state brought up to date.
    pub async fn get(&self, id: &str, sandboxes: &Sandboxes) -> Result<Option<ContainerRecord>> {
        if id.is_empty() {
            return Ok(None);
        }
        let record = match self.store.get_record(Table::Containers, id)? {
            Some(json) => parse(&json)?,
            None => {
                let mut matches: Vec<ContainerRecord> = self
                    .stored()?
                    .into_iter()
                    .filter(|r| r.id.starts_with(id))
                    .collect();
                if matches.len() != 1 {
                    return Ok(None);
                }
                matches.remove(0)
            }
        };
        Ok(Some(self.refresh(record, sandboxes).await?))
    }

    async fn require(&self, id: &str, sandboxes: &Sandboxes) -> Result<ContainerRecord> {
        self.get(id, sandboxes).await?.ok_or_else(|| not_found(id))
    }

    /// A running container whose exit the agent recorded is exited; one whose agent is gone
    /// (and the process with it) is exited too, with what is known.
    async fn refresh(
        &self,
        record: ContainerRecord,
        sandboxes: &Sandboxes,
    ) -> Result<ContainerRecord> {
        self.refresh_with(record, |pod| {
            Ok(sandboxes
                .get(pod)?
                .and_then(|s| s.agent)
                .is_some_and(|a| a.is_alive()))
        })
        .await
    }

    /// `refresh`, with the liveness of the pod's agent (by pod id) asked of `agent_alive`,
    /// only when it matters.
    async fn refresh_with(
        &self,
        mut record: ContainerRecord,
        agent_alive: impl FnOnce(&str) -> Result<bool>,
    ) -> Result<ContainerRecord> {
        if record.state != ContainerState::Running {
            return Ok(record);
        }
        if let Some(exit) = self.read_exit(&record.id) {
            record.record_exit(&exit);
            self.save(&record).await?;
            self.emit(&record, cri::ContainerEventType::ContainerStoppedEvent);
            return Ok(record);
        }
        // While the agent lives it records every exit; only its death loses them.
        if !agent_alive(&record.sandbox_id)? {
            // Read again: the agent may have written it since.
            if let Some(exit) = self.read_exit(&record.id) {
                record.record_exit(&exit);
            } else {
                record.state = ContainerState::Exited;
                record.finished_at = now_ns();
                record.exit_code = 255;
                record.reason = "Error".into();
                record.message = "the pod agent that ran the container is gone".into();
                record.process = None;
            }
            self.save(&record).await?;
            self.emit(&record, cri::ContainerEventType::ContainerStoppedEvent);
        }
        Ok(record)
    }

    fn read_exit(&self, id: &str) -> Option<ExitStatus> {
        let bytes = std::fs::read(self.exit_file(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// CreateContainer: the bundle, rootfs dirs, cgroup and record; the process is not started.
    pub async fn create(
        &self,
        sandboxes: &Sandboxes,
        pod_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid("config.metadata", "missing"))?;
        if meta.name.is_empty() {
            return Err(Error::invalid("config.metadata.name", "empty"));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::invalid("config.image.image", "empty"));
        }
        let pod = sandboxes.get(pod_id)?.ok_or_else(|| Error::NotFound {
            kind: "pod sandbox",
            id: pod_id.to_string(),
        })?;
        if pod.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let image = self
            .images
            .lookup(&image_name)?
            .ok_or_else(|| Error::NotFound {
                kind: "image",
                id: image_name.clone(),
            })?;

        let _reserving = self.create_lock.lock().await;
        if let Some(holder) = self.stored()?.into_iter().find(|c| {
            let m = c.metadata();
            c.sandbox_id == pod.id && m.name == meta.name && m.attempt == meta.attempt
        }) {
            return Err(Error::AlreadyExists(format!(
                "container {:?} (attempt {}) already exists in pod sandbox {} as {}",
                meta.name, meta.attempt, pod.id, holder.id
            )));
        }
        let id = crate::sandbox::new_id()?;
        let mut chain_dirs = Vec::new();
        for chain in &image.record.chain_ids {
            let dir = self.images.snapshot_fs(chain)?.ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "layer {chain} of image {image_name} is not unpacked"
                ))
            })?;
            chain_dirs.push(dir);
        }
        validate::create_request(&config, &pod, &image.record.config.config, &chain_dirs)?;
        let built = self.build_spec(
            sandboxes,
            &pod,
            &config,
            &image.record.config.config,
            &id,
            &chain_dirs,
        );
        let (spec, new_pid_ns) = built?;
        let cgroup_parent = pod
            .cgroup_parent()
            .map_err(|reason| Error::invalid("sandbox_config.linux.cgroup_parent", reason))?;
        let log_path = {
            let dir = &pod.config.log_directory;
            (!dir.is_empty() && !config.log_path.is_empty())
                .then(|| Path::new(dir).join(&config.log_path))
        };
        let image_ref = image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.record.id.to_string());
        let record = ContainerRecord {
            id: id.clone(),
            sandbox_id: pod.id.clone(),
            config: config.clone(),
            image_id: image.record.id.to_string(),
            image_ref,
            chain_ids: image
                .record
                .chain_ids
                .iter()
                .map(|c| c.to_string())
                .collect(),
            state: ContainerState::Created,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            process: None,
            cgroup: cgroups::sandbox::sandbox_path(&cgroup_parent, &id),
            log_path,
            stop_signal: record::parse_signal(&image.record.config.config.stop_signal)
                .unwrap_or(Signal::SIGTERM as i32),
            new_pid_ns,
        };
        // Recorded first: whatever the steps below leave after a crash, RemoveContainer finds.
        self.save(&record).await?;
        drop(_reserving);
        match self.make_bundle(&record, &spec).await {
            Ok(()) => {
                self.emit(&record, cri::ContainerEventType::ContainerCreatedEvent);
                tracing::info!(container_id = %id, pod_id = %pod.id, "container created");
                Ok(id)
            }
            Err(e) => {
                if let Err(undo) = self.destroy(&record).await {
                    tracing::error!(container_id = %id, error = %undo, "undoing a failed create left debris");
                }
                Err(e)
            }
        }
    }

    fn build_spec(
        &self,
        sandboxes: &Sandboxes,
        pod: &SandboxRecord,
        config: &cri::ContainerConfig,
        image: &crate::image::manifest::ContainerDefaults,
        id: &str,
        chain_dirs: &[PathBuf],
    ) -> Result<(oci_spec::runtime::Spec, bool)> {
        let security = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let passwd = read_image_file(chain_dirs, "etc/passwd");
        let group = read_image_file(chain_dirs, "etc/group");
        let user = spec::resolve_user(
            &spec::UserRequest {
                run_as_user: security.run_as_user.as_ref().map(|v| v.value),
                run_as_username: &security.run_as_username,
                run_as_group: security.run_as_group.as_ref().map(|v| v.value),
                supplemental_groups: &security.supplemental_groups,
            },
            &image.user,
            &passwd,
            &group,
        )
        .map_err(|e| Error::invalid("config.linux.security_context.run_as_user", e))?;
        let new_pid_ns = new_pid_namespace(pod, &security)?;
        if security.run_as_group.is_some()
            && security.run_as_user.is_none()
            && security.run_as_username.is_empty()
        {
            return Err(Error::invalid(
                "config.linux.security_context.run_as_group",
                "set without run_as_user or run_as_username",
            ));
        }
        let all_caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
        let grantable: Vec<String> = caps::read(None, caps::CapSet::Bounding)
            .map(|set| set.iter().map(|c| c.to_string()).collect())
            .unwrap_or_else(|_| all_caps.clone());
        let all_caps_ref: Vec<&str> = all_caps.iter().map(String::as_str).collect();
        let granted = if security.privileged {
            all_caps.clone()
        } else {
            let requested = security.capabilities.clone().unwrap_or_default();
            spec::capabilities(
                &requested.add_capabilities,
                &requested.drop_capabilities,
                &all_caps_ref,
            )
            .map_err(|e| Error::invalid("config.linux.security_context.capabilities", e))?
        };
        let seccomp = seccomp_profile(&security, &granted)?;
        let requested_adj = config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map_or(0, |r| r.oom_score_adj);
        let pod_dir = sandboxes.pod_dir(&pod.id);
        let own_ipc = !pod.host_ipc();
        let own_uts = !pod.host_network();
        let pod_view = oci::PodView {
            hostname: std::fs::read_to_string(pod_dir.join("hostname"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            netns: pod.netns.clone(),
            ipc_ns: own_ipc.then(|| pod_dir.join("ns/ipc")),
            uts_ns: own_uts.then(|| pod_dir.join("ns/uts")),
            shm: own_ipc.then(|| pod_dir.join("shm")),
            hostname_file: pod_dir.join("hostname"),
            hosts_file: pod_dir.join("hosts"),
            resolv_file: pod_dir.join("resolv.conf"),
            privileged: pod
                .config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .is_some_and(|s| s.privileged),
        };
        let cgroup_parent = pod.cgroup_parent().unwrap_or_default();
        let inputs = oci::SpecInputs {
            config,
            image,
            pod: &pod_view,
            user,
            new_pid_ns,
            seccomp,
            oom_score_adj: clamp_oom_score_adj(requested_adj),
            cgroup_path: cgroups::sandbox::sandbox_path(&cgroup_parent, id),
            all_capabilities: &all_caps_ref,
            grantable: &grantable,
            host_devices: if security.privileged {
                oci::host_devices()
            } else {
                vec![]
            },
        };
        let spec = oci::build(&inputs).map_err(|(field, reason)| Error::invalid(field, reason))?;
        Ok((spec, new_pid_ns))
    }

    /// The bundle dir with config.json and the rootfs mount point, the overlay's upper and
    /// work dirs, the exit dir, the log dir and the cgroup.
    async fn make_bundle(
        &self,
        record: &ContainerRecord,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<()> {
        let bundle = self.bundle(&record.id);
        for dir in ["rootfs", "upper", "work"] {
            let path = bundle.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(io_error(format!("creating {}", path.display())))?;
        }
        spec.save(bundle.join("config.json"))
            .map_err(|e| Error::Internal(format!("writing config.json: {e}")))?;
        let exits = self.exits_dir.join(&record.id);
        std::fs::create_dir_all(&exits)
            .map_err(io_error(format!("creating {}", exits.display())))?;
        if let Some(dir) = record.log_path.as_ref().and_then(|p| p.parent()) {
            std::fs::create_dir_all(dir)
                .map_err(io_error(format!("creating the log dir {}", dir.display())))?;
        }
        let limits = record
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone());
        let rules = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().clone())
            .unwrap_or_default();
        let version = self.cgroup_version;
        let cgroup = record.cgroup.clone();
        tokio::task::block_in_place(|| {
            cgroups::container::create(version, &cgroup, limits.as_ref(), &rules)
        })
        .map_err(|e| Error::invalid("config.linux.resources", e))
    }

    /// StartContainer: the agent starts the process; its pid is recorded. A start that fails
    /// leaves the container exited with reason StartError, as kubelet expects.
    pub async fn start(&self, sandboxes: &Sandboxes, id: &str) -> Result<()> {
        let mut record = self.require(id, sandboxes).await?;
        if record.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                record.id, record.state
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
        let mut lower = Vec::new();
        let layers_dir = self.images.snapshots_dir().to_path_buf();
        for chain in record.chain_ids.iter().rev() {
            let digest = Digest::parse(chain)
                .map_err(|e| Error::Internal(format!("chain id {chain}: {e}")))?;
            let dir = self.images.snapshot_fs(&digest)?.ok_or_else(|| {
                Error::FailedPrecondition(format!("layer {chain} of container {id} is gone"))
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
        let request = proto::StartContainer {
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
        };
        let socket = sandboxes.agent_socket(&pod.id);
        match agent::client::start(&socket, request).await {
            Ok(pid) => {
                let pid = pid as i32;
                record.state = ContainerState::Running;
                record.started_at = now_ns();
                record.process = crate::sandbox::record::start_time(pid)
                    .map(|start_time| AgentProcess { pid, start_time });
                // It may have exited already; the exit file says so then.
                if record.process.is_none() {
                    record.process = Some(AgentProcess { pid, start_time: 0 });
                }
                self.save(&record).await?;
                self.emit(&record, cri::ContainerEventType::ContainerStartedEvent);
                tracing::info!(container_id = %record.id, pid, "container started");
                Ok(())
            }
            Err(e) => {
                record.state = ContainerState::Exited;
                record.finished_at = now_ns();
                record.started_at = 0;
                record.exit_code = 128;
                record.reason = "StartError".into();
                record.message = e.clone();
                self.save(&record).await?;
                self.emit(&record, cri::ContainerEventType::ContainerStoppedEvent);
                Err(Error::Internal(format!(
                    "starting container {}: {e}",
                    record.id
                )))
            }
        }
    }

    /// StopContainer: the stop signal, then SIGKILL once `timeout` passes. Idempotent; an
    /// unknown id is not an error.
    pub async fn stop(&self, sandboxes: &Sandboxes, id: &str, timeout: Duration) -> Result<()> {
        let Some(record) = self.get(id, sandboxes).await? else {
            return Ok(());
        };
        self.stop_record(sandboxes, record, timeout).await
    }

    async fn stop_record(
        &self,
        sandboxes: &Sandboxes,
        record: ContainerRecord,
        timeout: Duration,
    ) -> Result<()> {
        if record.state != ContainerState::Running {
            return Ok(());
        }
        let Some(process) = record.process else {
            return Ok(());
        };
        let pid = Pid::from_raw(process.pid);
        if !timeout.is_zero() {
            if let Ok(signal) = Signal::try_from(record.stop_signal) {
                signal_if_alive(process, pid, signal);
            }
            if self.wait_exit(sandboxes, &record, timeout).await? {
                return Ok(());
            }
            tracing::info!(container_id = %record.id, "stop timeout passed; sending SIGKILL");
        }
        signal_if_alive(process, pid, Signal::SIGKILL);
        if self.wait_exit(sandboxes, &record, KILL_GRACE).await? {
            return Ok(());
        }
        Err(Error::Unavailable(format!(
            "container {} did not exit within {}s of SIGKILL",
            record.id,
            KILL_GRACE.as_secs()
        )))
    }

    /// Waits until the container is no longer running; false when `timeout` passed first.
    async fn wait_exit(
        &self,
        sandboxes: &Sandboxes,
        record: &ContainerRecord,
        timeout: Duration,
    ) -> Result<bool> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            let current = self.refresh(record.clone(), sandboxes).await?;
            if current.state != ContainerState::Running {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            // The agent records an exit within a millisecond or two of the kill: poll finely
            // at first, then back off for processes that take their time.
            tokio::time::sleep(pause).await;
            if started.elapsed() > Duration::from_millis(100) {
                pause = Duration::from_millis(10);
            }
        }
    }

    /// RemoveContainer: a running container is killed first; its processes, cgroup, bundle,
    /// rootfs dirs and record go. Idempotent; an unknown id is not an error.
    pub async fn remove(&self, sandboxes: &Sandboxes, id: &str) -> Result<()> {
        let Some(record) = self.get(id, sandboxes).await? else {
            return Ok(());
        };
        self.stop_record(sandboxes, record.clone(), Duration::ZERO)
            .await?;
        if let Some(pod) = sandboxes.get(&record.sandbox_id)?
            && pod.agent.is_some_and(|a| a.is_alive())
        {
            let _ = agent::client::forget(&sandboxes.agent_socket(&pod.id), &record.id).await;
        }
        self.destroy(&record).await?;
        self.emit(&record, cri::ContainerEventType::ContainerDeletedEvent);
        tracing::info!(container_id = %record.id, "container removed");
        Ok(())
    }

    /// Removes everything of a container that is not running: leftover processes (children it
    /// left in its cgroup), the cgroup, the bundle and rootfs dirs, the exit dir, the record.
    async fn destroy(&self, record: &ContainerRecord) -> Result<()> {
        let version = self.cgroup_version;
        let cgroup = record.cgroup.clone();
        tokio::task::block_in_place(|| -> Result<()> {
            for pid in cgroups::container::pids(version, &cgroup) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            cgroups::sandbox::remove(&cgroup).map_err(Error::Internal)
        })?;
        for dir in [self.bundle(&record.id), self.exits_dir.join(&record.id)] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error(format!("removing {}", dir.display()))(e));
                }
                _ => {}
            }
        }
        self.store
            .delete_record(Table::Containers, &record.id)
            .await?;
        self.forget_samples(&record.cgroup);
        Ok(())
    }

    /// StopPodSandbox: every running container of the pod is killed (kubelet stopped them
    /// gracefully before, when it could).
    pub async fn stop_all_in(&self, sandboxes: &Sandboxes, pod_id: &str) -> Result<()> {
        for record in self
            .stored()?
            .into_iter()
            .filter(|c| c.sandbox_id == pod_id)
        {
            let record = self.refresh(record, sandboxes).await?;
            self.stop_record(sandboxes, record, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// RemovePodSandbox: every container of the pod goes.
    pub async fn remove_all_in(&self, sandboxes: &Sandboxes, pod_id: &str) -> Result<()> {
        for record in self
            .stored()?
            .into_iter()
            .filter(|c| c.sandbox_id == pod_id)
        {
            self.remove(sandboxes, &record.id).await?;
        }
        Ok(())
    }

    /// ExecSync: runs `cmd` in the container through the agent. A timeout kills the command
    /// and answers DEADLINE_EXCEEDED.
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
        let record = self.require(id, sandboxes).await?;
        if record.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        let request = proto::ExecSync {
            id: record.id.clone(),
            bundle: self.bundle(&record.id).to_string_lossy().into_owned(),
            cmd,
            timeout_ms: timeout.as_millis() as u64,
            cgroup_procs: cgroups::container::procs_files(self.cgroup_version, &record.cgroup),
        };
        let socket = sandboxes.agent_socket(&record.sandbox_id);
        let answer = agent::client::exec(&socket, request, timeout)
            .await
            .map_err(|e| Error::Internal(format!("exec in container {}: {e}", record.id)))?;
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
        let record = self.require(id, sandboxes).await?;
        if record.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        agent::client::reopen_log(&sandboxes.agent_socket(&record.sandbox_id), &record.id)
            .await
            .map_err(|e| Error::Internal(format!("reopening the log of {}: {e}", record.id)))
    }

    /// UpdateContainerResources: new limits on the running container's cgroup, kept in its
    /// record (ContainerStatus reports them). A refused change leaves the old limits.
    pub async fn update_resources(
        &self,
        sandboxes: &Sandboxes,
        id: &str,
        resources: Option<cri::LinuxContainerResources>,
    ) -> Result<()> {
        let resources = resources.ok_or_else(|| Error::invalid("linux", "missing"))?;
        let mut record = self.require(id, sandboxes).await?;
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
        let version = self.cgroup_version;
        let cgroup = record.cgroup.clone();
        let wanted = resources.clone();
        tokio::task::block_in_place(|| {
            cgroups::container::update(version, &cgroup, &wanted, old.as_ref())
        })
        .map_err(|e| {
            Error::invalid(
                "linux",
                format!(
                    "container {}: the kernel refused the change: {e}",
                    record.id
                ),
            )
        })?;
        record
            .config
            .linux
            .get_or_insert_with(Default::default)
            .resources = Some(resources);
        self.save(&record).await?;
        tracing::info!(container_id = %record.id, "container resources updated");
        Ok(())
    }

    /// CPU, memory and writable-layer usage of a container, from its cgroup and upper dir.
    pub fn stats(&self, record: &ContainerRecord) -> cri::ContainerStats {
        let now = now_ns();
        let cg = self.cgroup_usage(&record.cgroup, now);
        let (bytes, inodes) = dir_usage(&self.bundle(&record.id).join("upper"));
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: record.id.clone(),
                metadata: record.config.metadata.clone(),
                labels: record.config.labels.clone(),
                annotations: record.config.annotations.clone(),
            }),
            cpu: Some(cg.0),
            memory: Some(cg.1),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.bundles_dir.to_string_lossy().into_owned(),
                }),
                used_bytes: Some(cri::UInt64Value { value: bytes }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            }),
            swap: None,
            io: None,
        }
    }

    /// CPU (with nano-cores since the previous sample of the same cgroup) and memory usage.
    pub fn cgroup_usage(&self, cgroup: &str, now: i64) -> (cri::CpuUsage, cri::MemoryUsage, u64) {
        let usage = cgroups::stats::read(self.cgroup_version, cgroup);
        let value = |v: Option<u64>| v.map(|value| cri::UInt64Value { value });
        let nano_cores = usage.cpu_ns.and_then(|cpu| {
            let mut samples = self.cpu_samples.lock().ok()?;
            let previous = samples.insert(cgroup.to_string(), (now, cpu));
            let (then, before) = previous?;
            let elapsed = now.checked_sub(then).filter(|e| *e > 0)? as u128;
            Some((cpu.saturating_sub(before) as u128 * 1_000_000_000 / elapsed) as u64)
        });
        let cpu = cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: value(usage.cpu_ns),
            usage_nano_cores: value(nano_cores),
            psi: None,
        };
        let available = match (usage.memory_limit, usage.working_set) {
            (Some(limit), Some(ws)) => Some(limit.saturating_sub(ws)),
            _ => None,
        };
        let memory = cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: value(usage.working_set),
            available_bytes: value(available),
            usage_bytes: value(usage.memory_usage),
            rss_bytes: value(usage.rss),
            page_faults: value(usage.page_faults),
            major_page_faults: value(usage.major_page_faults),
            psi: None,
        };
        (cpu, memory, usage.processes.unwrap_or(0))
    }

    /// Forgets CPU samples of cgroups that are gone.
    pub fn forget_samples(&self, cgroup: &str) {
        if let Ok(mut samples) = self.cpu_samples.lock() {
            samples.remove(cgroup);
        }
    }

    /// Notices exits while nobody asks (for event subscribers): each running container's exit
    /// file is looked for a few times a second.
    pub async fn watch_exits(&self, sandboxes: &Sandboxes) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if self.events.receiver_count() == 0 {
                continue;
            }
            let running: Vec<ContainerRecord> = match self.stored() {
                Ok(all) => all
                    .into_iter()
                    .filter(|c| c.state == ContainerState::Running)
                    .collect(),
                Err(_) => continue,
            };
            let Ok(live) = live_agents(sandboxes) else {
                continue;
            };
            for record in running {
                if let Err(e) = self
                    .refresh_with(record, |pod| Ok(live.contains(pod)))
                    .await
                {
                    tracing::warn!(error = %e, "watching container exits");
                }
            }
        }
    }

    /// Chain ids every container's rootfs uses: garbage collection keeps them.
    pub fn chain_ids_in_use(store: &Store) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (_, json) in store.list_records(Table::Containers)? {
            out.extend(parse(&json)?.chain_ids);
        }
        Ok(out)
    }
}

/// The pods whose agent runs.
fn live_agents(sandboxes: &Sandboxes) -> Result<std::collections::HashSet<String>> {
    Ok(sandboxes
        .list()?
        .into_iter()
        .filter(|s| s.agent.is_some_and(|a| a.is_alive()))
        .map(|s| s.id)
        .collect())
}

fn signal_if_alive(process: AgentProcess, pid: Pid, signal: Signal) {
    if process.start_time == 0 || process.is_alive() {
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

/// Which PID namespace the container gets: its own unless it shares the pod's (POD, when the
/// pod has one) or the host's (NODE).
fn new_pid_namespace(
    pod: &SandboxRecord,
    security: &cri::LinuxContainerSecurityContext,
) -> Result<bool> {
    let mode = security
        .namespace_options
        .as_ref()
        .map_or(cri::NamespaceMode::Pod as i32, |n| n.pid);
    let pod_mode = pod.namespace_options().pid;
    match cri::NamespaceMode::try_from(mode) {
        Ok(cri::NamespaceMode::Pod) if pod.pod_pid() => Ok(false),
        Ok(cri::NamespaceMode::Node) if pod.pod_pid() => Err(Error::invalid(
            "config.linux.security_context.namespace_options.pid",
            "NODE in a pod that has its own PID namespace",
        )),
        Ok(cri::NamespaceMode::Node) => Ok(false),
        Ok(cri::NamespaceMode::Target) => Err(Error::invalid(
            "config.linux.security_context.namespace_options.pid",
            "TARGET is not supported by crius yet",
        )),
        _ if pod_mode == cri::NamespaceMode::Node as i32 => Ok(false),
        _ => Ok(true),
    }
}

/// The seccomp profile the container asked for: RuntimeDefault (the built-in profile),
/// Unconfined (none) or Localhost (a profile file on this host).
fn seccomp_profile(
    security: &cri::LinuxContainerSecurityContext,
    capabilities: &[String],
) -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
    use crate::linux::seccomp;
    let field = "config.linux.security_context.seccomp";
    let localhost = |path: &str| -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
        if !path.starts_with('/') {
            return Err(Error::invalid(
                field,
                format!("localhost profile {path:?} is not an absolute path"),
            ));
        }
        let json = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(field, format!("reading profile {path:?}: {e}")))?;
        seccomp::load_profile(&json, capabilities)
            .map(Some)
            .map_err(|e| Error::invalid(field, format!("profile {path:?}: {e}")))
    };
    if let Some(profile) = &security.seccomp {
        return match cri::security_profile::ProfileType::try_from(profile.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
                Ok(Some(seccomp::runtime_default(capabilities)))
            }
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(None),
            Ok(cri::security_profile::ProfileType::Localhost) => localhost(&profile.localhost_ref),
            Err(_) => Err(Error::invalid(
                field,
                format!("unknown profile type {}", profile.profile_type),
            )),
        };
    }
    // The field older kubelets still send.
    #[allow(deprecated)]
    let path = security.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(None),
        "runtime/default" | "docker/default" => Ok(Some(seccomp::runtime_default(capabilities))),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(path),
            None => Err(Error::invalid(
                "config.linux.security_context.seccomp_profile_path",
                format!("{other:?} is not a seccomp profile crius knows"),
            )),
        },
    }
}

/// Processes cannot lower their OOM score below the runtime's own without CAP_SYS_RESOURCE:
/// ask no lower than that, rather than fail.
fn clamp_oom_score_adj(requested: i64) -> i32 {
    let own: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let can_lower = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false);
    let floor = if can_lower { -1000 } else { own };
    requested.clamp(floor, 1000) as i32
}

/// Bytes (allocated) and inodes under `dir`, not following symlinks or crossing mounts.
fn dir_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            bytes += meta.blocks() * 512;
            inodes += 1;
            if meta.is_dir() && meta.dev() == top.dev() {
                pending.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}

/// A file of the image as the container will see it: from the topmost layer that has it.
fn read_image_file(chain_dirs: &[PathBuf], path: &str) -> String {
    chain_dirs
        .iter()
        .rev()
        .find_map(|dir| {
            let file = dir.join(path);
            std::fs::metadata(&file)
                .ok()
                .filter(|m| m.is_file())
                .and_then(|_| std::fs::read_to_string(&file).ok())
        })
        .unwrap_or_default()
}

/// Whether a container passes a list filter: id and pod id by prefix, labels all matching.
pub fn matches(
    record: &ContainerRecord,
    id: &str,
    pod_id: &str,
    selector: &HashMap<String, String>,
) -> bool {
    record.id.starts_with(id)
        && record.sandbox_id.starts_with(pod_id)
        && labels_match(&record.config.labels, selector)
}

/// Labels that all match the selector.
pub fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
