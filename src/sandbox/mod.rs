//! Pod sandboxes: one agent process per pod holding its network, IPC and UTS namespaces
//! (pinned under the state dir), the pod's network through CNI, its hostname, hosts,
//! resolv.conf and /dev/shm. The store is the source of truth; every create path undoes what it
//! did when a later step fails.

pub mod agent_binary;
pub mod files;
pub mod pod;
pub mod port_forward;
pub mod record;
pub mod resize;
pub mod sysctl;
pub mod userns;
pub mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cri;

use crate::agent;
use crate::cgroups::{self, CgroupVersion};
use crate::clock::now_ns;
use crate::config::CniConfig;
use crate::error::{Error, Result, io_error};
use crate::network::{self, cni};
use crate::store::{Store, Table};
use record::{AgentProcess, SandboxRecord, SandboxState};

/// The pod's /dev/shm, as Docker and containerd size it.
const SHM_SIZE: u64 = 64 * 1024 * 1024;
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Sandboxes {
    store: Arc<Store>,
    cgroup_version: CgroupVersion,
    state_dir: PathBuf,
    cni: CniConfig,
    /// The sealed pod agent binary every agent is executed from.
    agent: agent_binary::AgentBinary,
    /// Name reservation happens under it: two pods never share a name.
    create_lock: Arc<tokio::sync::Mutex<()>>,
    /// Pods being placed in their cgroups hold it shared (they may create parents); removal of
    /// parents no pod uses any more holds it exclusively, so a parent a pod is about to use is
    /// never removed, and placements never wait for each other.
    parents_lock: Arc<tokio::sync::RwLock<()>>,
    /// How pods' cgroups are made.
    driver: cgroups::Driver,
    /// One lock per pod: StopPodSandbox and RemovePodSandbox hold it exclusively, creating and
    /// starting a container in the pod hold it shared, so nothing is made or started in a pod
    /// that is being torn down.
    pod_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

/// A pod's lock, held shared.
pub type PodShared = tokio::sync::OwnedRwLockReadGuard<()>;
/// A pod's lock, held exclusively.
pub type PodExclusive = tokio::sync::OwnedRwLockWriteGuard<()>;

pub fn new_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes)?;
    Ok(crate::image::digest::hex(&bytes))
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(io_error("reading /dev/urandom"))
}

impl Sandboxes {
    pub fn new(
        store: Arc<Store>,
        state_dir: &Path,
        cni: CniConfig,
        cgroup_version: CgroupVersion,
        driver: cgroups::Driver,
        agent: agent_binary::AgentBinary,
    ) -> Result<Sandboxes> {
        Ok(Sandboxes {
            store,
            cgroup_version,
            state_dir: state_dir.to_path_buf(),
            cni,
            agent,
            create_lock: Arc::new(tokio::sync::Mutex::new(())),
            parents_lock: Arc::new(tokio::sync::RwLock::new(())),
            pod_locks: std::sync::Mutex::new(HashMap::new()),
            driver,
        })
    }

    fn pod_lock(&self, id: &str) -> Arc<tokio::sync::RwLock<()>> {
        self.pod_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Holds the pod as it is (shared with others who only use it).
    pub async fn lock_shared(&self, id: &str) -> PodShared {
        self.pod_lock(id).read_owned().await
    }

    /// Holds the pod for a change of its state (Stop, Remove).
    pub async fn lock_exclusive(&self, id: &str) -> PodExclusive {
        self.pod_lock(id).write_owned().await
    }

    /// Drops a removed pod's lock (those holding or waiting keep their handle).
    pub fn forget_lock(&self, id: &str) {
        self.pod_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("pods").join(id)
    }

    /// Kept short: a unix socket path has at most 107 bytes.
    pub fn agent_socket(&self, id: &str) -> PathBuf {
        self.state_dir
            .join("agents")
            .join(format!("{}.sock", &id[..16.min(id.len())]))
    }

    fn netns_pin(&self, id: &str) -> PathBuf {
        self.state_dir.join("netns").join(id)
    }

    fn save(&self, record: &SandboxRecord) -> impl std::future::Future<Output = Result<()>> + '_ {
        let json = serde_json::to_string(record);
        let id = record.id.clone();
        async move {
            let json = json.map_err(|e| Error::Internal(format!("encoding sandbox: {e}")))?;
            self.store
                .put_record(Table::Sandboxes, &id, None, json)
                .await?;
            Ok(())
        }
    }

    /// Every sandbox, with its state as it is now (a pod whose agent died is not ready).
    pub fn list(&self) -> Result<Vec<SandboxRecord>> {
        self.store
            .list_records(Table::Sandboxes)?
            .into_iter()
            .map(|(_, json)| parse(&json).map(with_live_state))
            .collect()
    }

    /// A sandbox by id or unique id prefix.
    pub fn get(&self, id: &str) -> Result<Option<SandboxRecord>> {
        if id.is_empty() {
            return Ok(None);
        }
        if let Some(json) = self.store.get_record(Table::Sandboxes, id)? {
            return parse(&json).map(|r| Some(with_live_state(r)));
        }
        let mut matches: Vec<SandboxRecord> = self
            .list()?
            .into_iter()
            .filter(|r| r.id.starts_with(id))
            .collect();
        Ok(if matches.len() == 1 {
            matches.pop()
        } else {
            None
        })
    }

    /// RunPodSandbox: returns the new sandbox's id once it is ready.
    pub async fn run(
        &self,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<String> {
        let began = Instant::now();
        validate::pod_config(&config, &runtime_handler)?;
        userns::host_supports(&config)?;
        let validated = began.elapsed();
        let meta = config.metadata.clone().unwrap_or_default();
        let mut record = {
            let _creating = self.create_lock.lock().await;
            let locked = began.elapsed();
            if let Some(holder) = self.list()?.into_iter().find(|r| {
                let m = r.metadata();
                (
                    m.name.as_str(),
                    m.namespace.as_str(),
                    m.uid.as_str(),
                    m.attempt,
                ) == (
                    meta.name.as_str(),
                    meta.namespace.as_str(),
                    meta.uid.as_str(),
                    meta.attempt,
                )
            }) {
                return Err(Error::AlreadyExists(format!(
                    "pod sandbox {}/{} (uid {}, attempt {}) already exists as {}",
                    meta.namespace, meta.name, meta.uid, meta.attempt, holder.id
                )));
            }
            let record = SandboxRecord::new(new_id()?, config, runtime_handler, now_ns());
            // Recorded before anything is made, so a crash half-way leaves a NOTREADY pod that
            // kubelet removes, rather than debris nobody knows about.
            self.save(&record).await?;
            tracing::debug!(pod_id = %record.id, validate_us = validated.as_micros(),
                lock_wait_us = (locked - validated).as_micros(),
                reserve_us = (began.elapsed() - locked).as_micros(), "pod reserved");
            record
        };
        match self.set_up(&mut record).await {
            Ok(()) => Ok(record.id),
            Err(e) => {
                tracing::info!(pod_id = %record.id, error = %e, "pod set-up failed; undoing it");
                match self.tear_down(&mut record).await {
                    Ok(()) => {
                        self.store
                            .delete_record(Table::Sandboxes, &record.id)
                            .await?;
                    }
                    Err(undo) => {
                        // What could not be undone stays listed (NOTREADY), with what is left
                        // of it recorded, so StopPodSandbox and RemovePodSandbox can finish.
                        tracing::error!(pod_id = %record.id, error = %undo,
                            "undoing a failed pod left debris; the pod stays listed, not ready");
                        record.state = SandboxState::NotReady;
                        self.save(&record).await?;
                    }
                }
                Err(e)
            }
        }
    }

    /// The steps of RunPodSandbox, each recorded as it is made so `tear_down` can undo it.
    async fn set_up(&self, record: &mut SandboxRecord) -> Result<()> {
        let dir = self.pod_dir(&record.id);
        std::fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
        let own = pod::OwnNamespaces {
            net: !record.host_network(),
            ipc: !record.host_ipc(),
            // The UTS namespace follows the network one, as in Kubernetes.
            uts: !record.host_network(),
            pid: record.pod_pid(),
            user: record.user_namespace().is_some(),
        };
        let hostname = if own.uts {
            files::hostname(&record.config)
        } else {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let started = Instant::now();
        let mut steps = Vec::with_capacity(5);
        self.write_files(record, &hostname, &[])?;
        let pid = self.start_agent(record, own, &hostname).await?;
        steps.push(started.elapsed());
        self.pin_namespaces(record, pid, own).await?;
        steps.push(started.elapsed());
        // Moving the agent into its cgroup waits on the kernel (an RCU grace period on v1)
        // and CNI ADD on the plugins: neither needs the other, so they overlap.
        let placing = self.place_in_cgroup(record, pid).await?;
        let network_began = Instant::now();
        let attached = match record.netns.clone() {
            Some(netns) => self.attach_network(record, &netns, &hostname).await,
            None => Ok(()),
        };
        let network = network_began.elapsed();
        let placed = placing
            .await
            .map_err(|e| Error::Internal(format!("placing the pod agent: {e}")))
            .and_then(|r| r.map_err(|e| e.into_error("config.linux.resources")));
        steps.push(started.elapsed());
        attached?;
        let cgroup = placed?;
        record.state = SandboxState::Ready;
        self.save(record).await?;
        steps.push(started.elapsed());
        let us: Vec<u128> = steps.iter().map(|d| d.as_micros()).collect();
        tracing::debug!(pod_id = %record.id, agent_us = us[0], pins_us = us[1] - us[0],
            cgroup_and_network_us = us[2] - us[1], cgroup_us = cgroup.as_micros(),
            cni_add_us = network.as_micros(), save_us = us[3] - us[2],
            "pod set-up steps");
        tracing::info!(pod_id = %record.id, ips = ?record.ips, "pod sandbox ready");
        Ok(())
    }

    /// Starts the agent in the pod's new namespaces and waits until it serves; returns its pid.
    async fn start_agent(
        &self,
        record: &mut SandboxRecord,
        own: pod::OwnNamespaces,
        hostname: &str,
    ) -> Result<i32> {
        let socket = self.agent_socket(&record.id);
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent).map_err(io_error("creating the agents dir"))?;
        }
        let mut args = vec!["--socket".to_string(), socket.display().to_string()];
        if own.uts {
            args.extend(["--hostname".to_string(), hostname.to_string()]);
        }
        if own.net {
            args.push("--loopback".to_string());
        }
        if own.pid {
            args.push("--pid-init".to_string());
        }
        if let Some(maps) = record.user_namespace() {
            args.extend([
                "--uid-map".to_string(),
                maps.uids.to_arg(),
                "--gid-map".to_string(),
                maps.gids.to_arg(),
            ]);
        }
        if let Some(linux) = &record.config.linux {
            let mut sysctls: Vec<_> = linux.sysctls.iter().collect();
            sysctls.sort();
            for (k, v) in sysctls {
                args.extend(["--sysctl".to_string(), format!("{k}={v}")]);
            }
        }
        let log_path = self.pod_dir(&record.id).join("agent.log");
        let log = std::fs::File::create(&log_path).map_err(io_error("creating the agent log"))?;
        let mut child = pod::spawn_agent(&self.agent.exec_path(), &args, own, log)
            .map_err(io_error("starting the pod agent"))?;
        let mut pid = child.id().unwrap_or_default() as i32;
        record.agent = record::start_time(pid).map(|start_time| AgentProcess { pid, start_time });
        self.save(record).await?;
        let deadline = Instant::now() + AGENT_START_TIMEOUT;
        loop {
            if let Ok(answer) = agent::client::ping(&socket).await {
                // With the pod's own PID namespace the started process forks the agent, PID 1
                // of that namespace, and exits once it serves: the one answering is the agent.
                let serving = answer.pid as i32;
                if serving > 0 && serving != pid {
                    pid = serving;
                    record.agent =
                        record::start_time(pid).map(|start_time| AgentProcess { pid, start_time });
                }
                break;
            }
            match child.try_wait() {
                // The process that started the PID-1 agent is done; the agent answers soon.
                Ok(Some(status)) if own.pid && status.success() => {}
                Ok(Some(status)) => {
                    record.agent = None;
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    return Err(validate::agent_exit_error(status, &log));
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(Error::Internal(format!(
                    "pod agent did not answer within {}s",
                    AGENT_START_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Reap it whenever it exits, while this daemon is its parent.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(pid)
    }

    /// Moves the agent (and, for a pod from before the agent was its PID 1, the pod's PID 1)
    /// into the sandbox's cgroup under kubelet's parent.
    /// The cgroup is recorded first; the move itself runs on a blocking thread, returned to be
    /// awaited, holding the lock that removal of unused parents takes, so a parent this pod is
    /// about to use is never removed.
    async fn place_in_cgroup(
        &self,
        record: &mut SandboxRecord,
        pid: i32,
    ) -> Result<tokio::task::JoinHandle<std::result::Result<Duration, cgroups::CgroupError>>> {
        let parent = record
            .cgroup_parent()
            .map_err(|reason| Error::invalid("config.linux.cgroup_parent", reason))?;
        let cgroup = cgroups::cgroup_of(&parent, &record.id);
        let linux = record.config.linux.clone().unwrap_or_default();
        let limits =
            cgroups::resources::pod_total(linux.resources.as_ref(), linux.overhead.as_ref());
        let mut pids = vec![pid];
        pids.extend(record.pid_init.map(|p| p.pid));
        let version = self.cgroup_version;
        let guard = self.parents_lock.clone().read_owned().await;
        let new_parents = cgroups::sandbox::missing_on_the_way(&parent);
        self.own_cgroups(&new_parents).await?;
        record.cgroup = Some(cgroup.clone());
        // The default parent is shared by every pod that names none: never one pod's.
        record.made_pod_cgroup =
            !record.named_cgroup_parent().trim().is_empty() && new_parents.last() == Some(&parent);
        self.save(record).await?;
        let Some(systemd) = self.driver.systemd_arc() else {
            return Ok(tokio::task::spawn_blocking(move || {
                let _placing = guard;
                let began = Instant::now();
                cgroups::sandbox::create(version, &parent, &cgroup, limits.as_ref(), &pids)
                    .map(|()| began.elapsed())
            }));
        };
        let slice = cgroups::parent_slice(
            record
                .config
                .linux
                .as_ref()
                .map_or("", |l| l.cgroup_parent.as_str()),
        );
        let scope = cgroups::systemd::scope_name(&record.id);
        Ok(tokio::spawn(async move {
            let _placing = guard;
            let began = Instant::now();
            let pids: Vec<u32> = pids.iter().map(|p| *p as u32).collect();
            cgroups::sandbox::create_units(
                &systemd,
                &new_parents,
                limits.as_ref(),
                &slice,
                &scope,
                &pids,
            )
            .await?;
            Ok(began.elapsed())
        }))
    }

    /// Pins the agent's namespaces so they outlive it, and mounts the pod's /dev/shm.
    async fn pin_namespaces(
        &self,
        record: &mut SandboxRecord,
        pid: i32,
        own: pod::OwnNamespaces,
    ) -> Result<()> {
        let dir = self.pod_dir(&record.id);
        if own.net {
            let pin = self.netns_pin(&record.id);
            pod::pin_namespace(pid, "net", &pin)
                .map_err(io_error("pinning the network namespace"))?;
            record.netns = Some(pin);
        }
        if own.ipc {
            pod::pin_namespace(pid, "ipc", &dir.join("ns/ipc"))
                .map_err(io_error("pinning the IPC namespace"))?;
            let owner = record
                .user_namespace()
                .map(|maps| (maps.uids.host, maps.gids.host));
            pod::mount_shm(&dir.join("shm"), SHM_SIZE, owner)
                .map_err(io_error("mounting /dev/shm"))?;
        }
        if own.uts {
            pod::pin_namespace(pid, "uts", &dir.join("ns/uts"))
                .map_err(io_error("pinning the UTS namespace"))?;
        }
        self.save(record).await
    }

    /// CNI ADD on the pinned network namespace; the pod's IPs go into its record and hosts file.
    async fn attach_network(
        &self,
        record: &mut SandboxRecord,
        netns: &Path,
        hostname: &str,
    ) -> Result<()> {
        let network = network::discover(&self.cni.conf_dir, &self.cni.bin_dirs)
            .map_err(|e| Error::FailedPrecondition(format!("network plugin not ready: {e}")))?;
        let cni = cni::Cni {
            network: &network,
            bin_dirs: &self.cni.bin_dirs,
        };
        // Recorded before ADD: a crash during ADD still gets its DEL.
        record.network_attached = true;
        record.cni_result = Some(serde_json::json!({ "network": network }));
        self.save(record).await?;
        let result = tokio::task::block_in_place(|| {
            cni.add(&identity(record), netns, &self.capabilities(&record.config))
        })
        .map_err(|e| Error::FailedPrecondition(format!("pod network: {e}")))?;
        record.ips = result.ips.iter().map(|ip| ip.to_string()).collect();
        record.cni_result = Some(serde_json::json!({ "network": network, "result": result.raw }));
        self.write_files(record, hostname, &result.ips)
    }

    fn write_files(
        &self,
        record: &SandboxRecord,
        hostname: &str,
        ips: &[std::net::IpAddr],
    ) -> Result<()> {
        let dir = self.pod_dir(&record.id);
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let hosts = if record.host_network() {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            files::hosts(hostname, ips)
        };
        for (name, content) in [
            ("hostname", format!("{hostname}\n")),
            ("hosts", hosts),
            (
                "resolv.conf",
                files::resolv_conf(record.config.dns_config.as_ref(), &host_resolv),
            ),
        ] {
            std::fs::write(dir.join(name), content)
                .map_err(io_error(format!("writing the pod's {name}")))?;
        }
        Ok(())
    }

    /// StopPodSandbox: network detached, agent gone, pod NOTREADY. Idempotent; an unknown id
    /// is not an error.
    pub async fn stop(&self, id: &str) -> Result<()> {
        let Some(mut record) = self.get(id)? else {
            return Ok(());
        };
        self.stop_record(&mut record).await
    }

    async fn stop_record(&self, record: &mut SandboxRecord) -> Result<()> {
        let started = Instant::now();
        self.detach_network(record).await?;
        let network_us = started.elapsed().as_micros() as u64;
        self.stop_agent(record).await;
        tracing::debug!(
            pod_id = %record.id,
            network_us,
            agent_us = started.elapsed().as_micros() as u64 - network_us,
            "pod stopped"
        );
        record.state = SandboxState::NotReady;
        self.save(record).await
    }

    fn capabilities(&self, config: &cri::PodSandboxConfig) -> cni::RuntimeCapabilities {
        let pod_cidr = self
            .store
            .setting(crate::context::settings::POD_CIDR)
            .ok()
            .flatten();
        capabilities(config, pod_cidr)
    }

    /// CNI DEL for the pod, on its own (StopPodSandbox runs it beside stopping containers).
    pub async fn detach_network_of(&self, id: &str) -> Result<()> {
        match self.get(id)? {
            Some(mut record) => self.detach_network(&mut record).await,
            None => Ok(()),
        }
    }

    async fn detach_network(&self, record: &mut SandboxRecord) -> Result<()> {
        if !record.network_attached {
            return Ok(());
        }
        let saved = record.cni_result.clone().unwrap_or_default();
        let network: Option<network::NetworkConfig> =
            serde_json::from_value(saved["network"].clone()).ok();
        if let Some(network) = network {
            let cni = cni::Cni {
                network: &network,
                bin_dirs: &self.cni.bin_dirs,
            };
            let netns = record.netns.clone().filter(|p| p.exists());
            let prev = saved.get("result").cloned();
            let mut attempt = 0;
            let started = Instant::now();
            loop {
                let result = tokio::task::block_in_place(|| {
                    cni.del(
                        &identity(record),
                        netns.as_deref(),
                        &self.capabilities(&record.config),
                        prev.as_ref(),
                    )
                });
                match result {
                    Ok(()) => {
                        tracing::debug!(pod_id = %record.id, del_us = started.elapsed().as_micros() as u64, "CNI DEL done");
                        break;
                    }
                    Err(e) if attempt < 2 => {
                        attempt += 1;
                        tracing::info!(pod_id = %record.id, error = %e, attempt, "CNI DEL failed, retrying");
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    Err(e) => {
                        return Err(Error::Unavailable(format!(
                            "pod sandbox {}: detaching its network: {e}",
                            record.id
                        )));
                    }
                }
            }
        }
        record.network_attached = false;
        record.ips.clear();
        self.save(record).await
    }

    async fn stop_agent(&self, record: &mut SandboxRecord) {
        // None, or the process that started a PID-1 agent when the daemon died before it
        // recorded the agent that process forked.
        if !record.agent.is_some_and(|a| a.is_alive()) {
            self.find_unrecorded_agent(record).await;
        }
        // Pods from before the agent was PID 1 of the pod's PID namespace have a PID 1 of
        // their own, which goes first: killing it ends every process in the pod's PID namespace.
        if let Some(init) = record.pid_init.filter(|i| i.is_alive()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(init.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let Some(agent) = record.agent else {
            record.pid_init = None;
            return;
        };
        if agent.is_alive() {
            let socket = self.agent_socket(&record.id);
            if agent::client::shutdown(&socket).await.is_err() && agent.is_alive() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(agent.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while agent.is_alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        record.agent = None;
        record.pid_init = None;
    }

    /// An agent the record does not know (the daemon died between starting it and recording
    /// it) still answers on the pod's socket: it is found there, to be stopped.
    async fn find_unrecorded_agent(&self, record: &mut SandboxRecord) {
        let socket = self.agent_socket(&record.id);
        if !socket.exists() {
            return;
        }
        let Ok(answer) = agent::client::ping(&socket).await else {
            return;
        };
        let found = |pid: u32| {
            let pid = pid as i32;
            (pid > 0)
                .then(|| record::start_time(pid).map(|start_time| AgentProcess { pid, start_time }))
                .flatten()
        };
        record.agent = found(answer.pid);
        record.pid_init = found(answer.pid_init);
        tracing::info!(pod_id = %record.id, pid = answer.pid, "found an agent the record did not know");
    }

    /// Undoes everything a pod made: network, agent, pins, /dev/shm, its directories. Every
    /// step is tried even when one fails (the record says what is left, for a later try); the
    /// first failure is returned.
    async fn tear_down(&self, record: &mut SandboxRecord) -> Result<()> {
        let network = self.detach_network(record).await;
        self.stop_agent(record).await;
        let cgroup = self.remove_cgroup(record).await;
        let files = self.remove_pod_files(record);
        network.and(cgroup).and(files)
    }

    async fn remove_cgroup(&self, record: &mut SandboxRecord) -> Result<()> {
        if let Some(cgroup) = record.cgroup.clone() {
            if let Some(systemd) = self.driver.systemd() {
                let scope = cgroups::systemd::scope_name(&record.id);
                systemd
                    .stop_unit(&scope)
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?;
            }
            tokio::task::block_in_place(|| cgroups::remove_cgroup(&cgroup))
                .map_err(Error::Internal)?;
            record.cgroup = None;
            self.release_parent_cgroups(&record.cgroup_parent().unwrap_or_default())
                .await?;
        }
        Ok(())
    }

    /// The namespace pins, /dev/shm, the agent's socket and the pod's directory.
    fn remove_pod_files(&self, record: &mut SandboxRecord) -> Result<()> {
        let dir = self.pod_dir(&record.id);
        let mut targets = vec![self.netns_pin(&record.id)];
        targets.extend([dir.join("ns/ipc"), dir.join("ns/uts"), dir.join("shm")]);
        for target in &targets {
            pod::unmount_and_remove(target)
                .map_err(io_error(format!("removing {}", target.display())))?;
        }
        let _ = std::fs::remove_file(self.agent_socket(&record.id));
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error(format!("removing {}", dir.display()))(e));
            }
            _ => {}
        }
        record.netns = None;
        Ok(())
    }

    /// Records parent cgroups about to be created here, so they are removed once unused. Recorded
    /// first: a crash in between leaves a row for a cgroup that may not exist, which is harmless.
    async fn own_cgroups(&self, paths: &[String]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let paths = paths.to_vec();
        self.store
            .transaction(move |tx| {
                for p in &paths {
                    tx.execute(
                        "INSERT OR IGNORE INTO created_cgroups (path) VALUES (?1)",
                        [p],
                    )?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Removes the parent cgroups this runtime created, bottom-up, while they are empty.
    async fn release_parent_cgroups(&self, parent: &str) -> Result<()> {
        let _removing = self.parents_lock.write().await;
        let mut current = parent.to_string();
        loop {
            let ours: bool = self.store.read(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM created_cgroups WHERE path = ?1",
                    [&current],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n > 0)
            })?;
            if !ours || !self.remove_unused_parent(&current).await {
                return Ok(());
            }
            let path = current.clone();
            self.store
                .transaction(move |tx| {
                    tx.execute("DELETE FROM created_cgroups WHERE path = ?1", [path])
                        .map(|_| ())
                })
                .await?;
            match current.rsplit_once('/') {
                Some((up, _)) => current = up.to_string(),
                None => return Ok(()),
            }
        }
    }

    /// Removes a parent cgroup (cgroupfs) or stops a parent slice (systemd) that holds nothing
    /// any more; false when it stays.
    async fn remove_unused_parent(&self, path: &str) -> bool {
        let Some(systemd) = self.driver.systemd() else {
            return tokio::task::block_in_place(|| cgroups::sandbox::remove_if_empty(path));
        };
        if !tokio::task::block_in_place(|| cgroups::sandbox::is_unused(path)) {
            return false;
        }
        let slice = path.rsplit('/').next().unwrap_or(path);
        match systemd.stop_unit(slice).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(slice, error = %e, "stopping an unused slice");
                false
            }
        }
    }

    /// RemovePodSandbox: everything the pod made goes, then its record. Idempotent.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let Some(mut record) = self.get(id)? else {
            return Ok(());
        };
        if let Err(e) = self.tear_down(&mut record).await {
            // What was removed stays removed; a later RemovePodSandbox tries the rest.
            self.save(&record).await?;
            return Err(e);
        }
        self.store
            .delete_record(Table::Sandboxes, &record.id)
            .await?;
        tracing::info!(pod_id = %record.id, "pod sandbox removed");
        Ok(())
    }
}

fn parse(json: &str) -> Result<SandboxRecord> {
    serde_json::from_str(json).map_err(|e| Error::Internal(format!("corrupt sandbox record: {e}")))
}

/// A READY pod whose agent is gone is not ready any more.
fn with_live_state(mut record: SandboxRecord) -> SandboxRecord {
    if record.state == SandboxState::Ready && !record.agent.is_some_and(|a| a.is_alive()) {
        record.state = SandboxState::NotReady;
    }
    record
}

fn identity(record: &SandboxRecord) -> cni::PodIdentity {
    let meta = record.metadata();
    cni::PodIdentity {
        namespace: meta.namespace,
        name: meta.name,
        uid: meta.uid,
        sandbox_id: record.id.clone(),
    }
}

/// Port mappings, DNS and the node's pod CIDRs for the CNI plugins that ask for them.
fn capabilities(
    config: &cri::PodSandboxConfig,
    pod_cidr: Option<String>,
) -> cni::RuntimeCapabilities {
    let port_mappings = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| cni::PortMapping {
            host_port: p.host_port as u16,
            container_port: p.container_port as u16,
            protocol: match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            }
            .to_string(),
            host_ip: p.host_ip.clone(),
        })
        .collect();
    let dns = config.dns_config.as_ref().map(
        |d| serde_json::json!({"servers": d.servers, "searches": d.searches, "options": d.options}),
    );
    cni::RuntimeCapabilities {
        port_mappings,
        bandwidth: None,
        dns,
        ip_ranges: pod_cidr
            .map(|c| {
                c.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    }
}
