//! A pod sandbox as the store keeps it.

use std::path::PathBuf;

use crate::cri;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    pub state: SandboxState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The agent holding the namespaces, while it runs: its pid and its start time (in clock
    /// ticks since boot), which together tell it from a later process with the same pid.
    pub agent: Option<AgentProcess>,
    /// PID 1 of the pod's PID namespace (shareProcessNamespace), while it runs, for pods made
    /// before the agent was itself that PID 1: such a pod is still stopped and removed with it.
    /// None for newer pods.
    #[serde(default)]
    pub pid_init: Option<AgentProcess>,
    /// The pinned network namespace, unless the pod uses the host's.
    pub netns: Option<PathBuf>,
    /// The pod's addresses, v4 first.
    pub ips: Vec<String>,
    /// The CNI result, for DEL.
    pub cni_result: Option<serde_json::Value>,
    /// Whether the network is still attached (DEL not yet done).
    pub network_attached: bool,
    /// The sandbox's own cgroup (relative path), once created.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The pod's cgroup (the parent kubelet named) did not exist and was made by crius for
    /// this pod, with the pod's limits: crius keeps its limits (UpdatePodSandboxResources).
    /// Otherwise it is kubelet's, which limits it itself.
    #[serde(default)]
    pub made_pod_cgroup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProcess {
    pub pid: i32,
    pub start_time: u64,
}

impl SandboxRecord {
    /// A sandbox not set up yet: NOTREADY, nothing made.
    pub fn new(
        id: String,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
        created_at: i64,
    ) -> Self {
        SandboxRecord {
            id,
            config,
            runtime_handler,
            state: SandboxState::NotReady,
            created_at,
            agent: None,
            pid_init: None,
            netns: None,
            ips: vec![],
            cni_result: None,
            network_attached: false,
            cgroup: None,
            made_pod_cgroup: false,
        }
    }

    /// The cgroup parent as a relative path (kubelet's, or the default).
    pub fn cgroup_parent(&self) -> Result<String, String> {
        crate::cgroups::sandbox::parent_path(self.named_cgroup_parent())
    }

    /// The cgroup parent as the config names it (empty: none, the default is used).
    pub fn named_cgroup_parent(&self) -> &str {
        self.config
            .linux
            .as_ref()
            .map_or("", |l| l.cgroup_parent.as_str())
    }

    pub fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    pub fn namespace_options(&self) -> cri::NamespaceOption {
        self.config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default()
    }

    pub fn host_network(&self) -> bool {
        self.namespace_options().network == cri::NamespaceMode::Node as i32
    }

    /// A PID namespace shared by the pod's containers (POD), rather than one each or the host's.
    pub fn pod_pid(&self) -> bool {
        self.namespace_options().pid == cri::NamespaceMode::Pod as i32
    }

    pub fn host_ipc(&self) -> bool {
        self.namespace_options().ipc == cri::NamespaceMode::Node as i32
    }

    /// The ranges of the pod's own user namespace; None when it uses the host's (or the config
    /// is one RunPodSandbox refused, which no record holds).
    pub fn user_namespace(&self) -> Option<crate::linux::userns::PodMappings> {
        super::userns::pod_mappings("", self.namespace_options().userns_options.as_ref())
            .ok()
            .flatten()
    }
}

impl AgentProcess {
    /// Whether this very process still runs (same pid, same start time).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let state = after.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_start_time() {
        let me = std::process::id() as i32;
        let t = super::start_time(me).unwrap();
        assert!(
            super::AgentProcess {
                pid: me,
                start_time: t
            }
            .is_alive()
        );
        assert!(
            !super::AgentProcess {
                pid: me,
                start_time: t + 1
            }
            .is_alive()
        );
    }
}
