//! A container as the store keeps it.

use std::path::PathBuf;

use crate::cri;
use serde::{Deserialize, Serialize};

use crate::agent::ExitStatus;
use crate::sandbox::record::AgentProcess;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
}

impl ContainerState {
    /// As messages name it.
    pub fn name(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
        }
    }

    pub fn cri(self) -> cri::ContainerState {
        match self {
            ContainerState::Created => cri::ContainerState::ContainerCreated,
            ContainerState::Running => cri::ContainerState::ContainerRunning,
            ContainerState::Exited => cri::ContainerState::ContainerExited,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    /// The image id (config digest) and the reference kubelet reports as image_ref.
    pub image_id: String,
    pub image_ref: String,
    /// Snapshot chain ids of the image's layers, bottom first: the rootfs's lower dirs, kept
    /// from garbage collection while the container exists.
    pub chain_ids: Vec<String>,
    pub state: ContainerState,
    /// Nanoseconds since the epoch; 0 until it happens.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The first process while it may run.
    pub process: Option<AgentProcess>,
    /// The container's cgroup (relative path).
    pub cgroup: String,
    /// The absolute CRI log path, if any.
    pub log_path: Option<PathBuf>,
    /// The signal StopContainer sends first: the config's `stop_signal`, else the image's
    /// StopSignal, else SIGTERM (see `stop_signal.rs`). SIGTERM for a record without one.
    #[serde(default = "default_stop_signal")]
    pub stop_signal: i32,
    /// The container has a PID namespace of its own.
    pub new_pid_ns: bool,
    /// The user its first process was given (uid, gid, supplementary groups).
    #[serde(default)]
    pub user: Option<ProcessUser>,
    /// Images mounted as volumes (Mount.image), kept mounted until the container is removed.
    #[serde(default)]
    pub image_volumes: Vec<super::image_volumes::ImageVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl ProcessUser {
    /// The user the spec gives the container's first process; its groups in the order the
    /// kernel keeps them (setgroups sorts them), as `of_process` reads them back.
    pub fn of_spec(spec: &oci_spec::runtime::Spec) -> Option<ProcessUser> {
        let user = spec.process().as_ref()?.user();
        let mut groups = user.additional_gids().clone().unwrap_or_default();
        groups.sort_unstable();
        groups.dedup();
        Some(ProcessUser {
            uid: user.uid(),
            gid: user.gid(),
            groups,
        })
    }

    /// The ids a running process really has, from /proc/<pid>/status (real uid and gid, and
    /// its supplementary groups), as its own user namespace names them (/proc shows the
    /// host's ids; a user-namespaced pod's process maps them through its uid_map and gid_map).
    pub fn of_process(pid: i32) -> Option<ProcessUser> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<Vec<u32>> {
            let line = status.lines().find_map(|l| l.strip_prefix(name))?;
            line.split_whitespace().map(|n| n.parse().ok()).collect()
        };
        let uids = IdMap::of_process(pid, "uid_map")?;
        let gids = IdMap::of_process(pid, "gid_map")?;
        Some(ProcessUser {
            uid: uids.inside(*field("Uid:")?.first()?),
            gid: gids.inside(*field("Gid:")?.first()?),
            groups: field("Groups:")?
                .into_iter()
                .map(|g| gids.inside(g))
                .collect(),
        })
    }
}

/// A process's uid_map or gid_map as this process sees it: (inside, outside, length) lines.
struct IdMap(Vec<(u32, u32, u32)>);

impl IdMap {
    fn of_process(pid: i32, file: &str) -> Option<IdMap> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        Some(IdMap::parse(&text))
    }

    fn parse(text: &str) -> IdMap {
        IdMap(
            text.lines()
                .filter_map(|line| {
                    let mut n = line.split_whitespace().map(|n| n.parse::<u32>().ok());
                    Some((n.next()??, n.next()??, n.next()??))
                })
                .collect(),
        )
    }

    /// The id inside the namespace that `outside` is; overflowid (65534) when unmapped.
    fn inside(&self, outside: u32) -> u32 {
        self.0
            .iter()
            .find_map(|&(inside, start, length)| {
                let offset = outside.checked_sub(start)?;
                (offset < length).then(|| inside + offset)
            })
            .unwrap_or(65534)
    }
}

impl ContainerRecord {
    pub fn metadata(&self) -> cri::ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// Takes the exit status the agent recorded.
    pub fn record_exit(&mut self, exit: &ExitStatus) {
        self.state = ContainerState::Exited;
        self.finished_at = exit.finished_at;
        self.exit_code = exit.exit_code;
        self.process = None;
        self.reason = if exit.oom_killed {
            "OOMKilled"
        } else if exit.exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .to_string();
    }
}

fn default_stop_signal() -> i32 {
    super::stop_signal::DEFAULT
}

/// A record for unit tests: container `c1` of pod `p1`, in `state`.
#[cfg(test)]
pub(crate) fn test_record(state: ContainerState) -> ContainerRecord {
    ContainerRecord {
        id: "c1".into(),
        sandbox_id: "p1".into(),
        config: cri::ContainerConfig::default(),
        image_id: String::new(),
        image_ref: String::new(),
        chain_ids: vec![],
        state,
        created_at: 1,
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        process: None,
        cgroup: String::new(),
        log_path: None,
        stop_signal: 15,
        new_pid_ns: true,
        user: None,
        image_volumes: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_a_stop_signal_stops_with_sigterm() {
        let mut json = serde_json::to_value(test_record(ContainerState::Running)).unwrap();
        json.as_object_mut().unwrap().remove("stop_signal");
        let record: ContainerRecord = serde_json::from_value(json).unwrap();
        assert_eq!(record.stop_signal, libc::SIGTERM);
    }

    #[test]
    fn process_ids_are_named_as_their_user_namespace_names_them() {
        let host = IdMap::parse("         0          0 4294967295\n");
        assert_eq!(host.inside(1000), 1000);
        let pod = IdMap::parse("         0     100000      65536\n");
        assert_eq!(pod.inside(100000), 0);
        assert_eq!(pod.inside(101000), 1000);
        assert_eq!(pod.inside(0), 65534);
        assert_eq!(pod.inside(165536), 65534);
        let me = ProcessUser::of_process(std::process::id() as i32).unwrap();
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
    }

    #[test]
    fn exit_reasons() {
        let mut r = test_record(ContainerState::Running);
        let exit = |code, oom| ExitStatus {
            exit_code: code,
            signal: 0,
            finished_at: 3,
            oom_killed: oom,
        };
        r.record_exit(&exit(0, false));
        assert_eq!(
            (r.state, r.reason.as_str()),
            (ContainerState::Exited, "Completed")
        );
        r.record_exit(&exit(1, false));
        assert_eq!(r.reason, "Error");
        r.record_exit(&exit(137, true));
        assert_eq!(r.reason, "OOMKilled");
    }
}
