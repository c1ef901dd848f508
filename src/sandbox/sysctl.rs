//! Which sysctls a pod may set: only those namespaced by a namespace the pod owns (IPC, and
//! network unless it uses the host's). Anything else would change the node. The pod agent
//! writes them as it starts; a value the kernel refuses ends the agent with
//! [`REFUSED_EXIT_STATUS`] and a [`Refused`] line in its log, which the daemon reports as the
//! caller's error naming the sysctl.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use serde::{Deserialize, Serialize};

/// The pod agent's exit status when the kernel refused one of the pod's sysctls.
pub const REFUSED_EXIT_STATUS: i32 = 3;
/// What starts the agent's log line that tells which sysctl was refused and why.
const REFUSED_LINE_PREFIX: &str = "crius pod-agent: sysctl refused: ";

/// A sysctl the kernel would not take, and its reason (the errno's text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub name: String,
    pub reason: String,
}

impl Refused {
    /// The agent's log line: the prefix, then the refusal as JSON (any name or reason fits).
    pub fn log_line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string());
        format!("{REFUSED_LINE_PREFIX}{json}")
    }

    /// The refusal an agent that exited with `status` and wrote `log` reported, if it did.
    pub fn from_agent_exit(status: ExitStatus, log: &str) -> Option<Refused> {
        if status.code() != Some(REFUSED_EXIT_STATUS) || status.signal().is_some() {
            return None;
        }
        log.lines()
            .rev()
            .find_map(|line| line.strip_prefix(REFUSED_LINE_PREFIX))
            .and_then(|json| serde_json::from_str(json).ok())
    }

    /// Ends the pod agent, which is starting and single-threaded and holds nothing that
    /// needs cleaning up yet, reporting the refusal to the daemon.
    pub fn exit_agent(&self) -> ! {
        eprintln!("{}", self.log_line());
        std::process::exit(REFUSED_EXIT_STATUS)
    }
}

/// Writes the pod's sysctls in the agent's namespaces, in order; the first the kernel refuses
/// is the error.
pub fn apply(sysctls: &[(String, String)]) -> Result<(), Refused> {
    for (name, value) in sysctls {
        std::fs::write(proc_path(name), value).map_err(|e| Refused {
            name: name.clone(),
            reason: format!("{name}={value:?}: {e}"),
        })?;
    }
    Ok(())
}

/// Why a pod may not set `name`, or None when it may.
pub fn refusal(name: &str, host_network: bool, host_ipc: bool) -> Option<String> {
    let name = name.replace('/', ".");
    let ipc = matches!(
        name.as_str(),
        "kernel.shmall"
            | "kernel.shmmax"
            | "kernel.shmmni"
            | "kernel.shm_rmid_forced"
            | "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
            | "kernel.sem"
    ) || name.starts_with("fs.mqueue.");
    if ipc {
        return host_ipc
            .then(|| format!("sysctl {name} is not allowed with the host IPC namespace"));
    }
    if name.starts_with("net.") {
        return host_network
            .then(|| format!("sysctl {name} is not allowed with the host network namespace"));
    }
    Some(format!(
        "sysctl {name} is not namespaced: it would change the node"
    ))
}

/// The /proc/sys path of a sysctl (`net.ipv4.ip_forward` → `net/ipv4/ip_forward`).
pub fn proc_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_sysctls_only() {
        assert_eq!(
            refusal("net.ipv4.ip_unprivileged_port_start", false, false),
            None
        );
        assert_eq!(refusal("kernel.shm_rmid_forced", false, false), None);
        assert_eq!(refusal("fs.mqueue.msg_max", false, false), None);
        assert!(
            refusal("net.core.somaxconn", true, false)
                .unwrap()
                .contains("host network")
        );
        assert!(
            refusal("kernel.msgmax", false, true)
                .unwrap()
                .contains("host IPC")
        );
        assert!(
            refusal("vm.swappiness", false, false)
                .unwrap()
                .contains("not namespaced")
        );
        assert!(refusal("kernel.panic", false, false).is_some());
        assert_eq!(
            proc_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
    }

    #[test]
    fn a_refusal_travels_through_the_agent_log() {
        let refused = Refused {
            name: "net.ipv4.ip_local_port_range".into(),
            reason: "bad \"value\"\nwith a newline".into(),
        };
        let log = format!("earlier\n{}\n", refused.log_line());
        let exited = ExitStatus::from_raw(REFUSED_EXIT_STATUS << 8);
        assert_eq!(Refused::from_agent_exit(exited, &log), Some(refused));
        assert_eq!(
            Refused::from_agent_exit(ExitStatus::from_raw(1 << 8), &log),
            None
        );
        assert_eq!(Refused::from_agent_exit(exited, "earlier\n"), None);
    }

    #[test]
    fn applying_names_the_refused_sysctl() {
        let refused = apply(&[("no.such.sysctl_here".into(), "1".into())]).unwrap_err();
        assert_eq!(refused.name, "no.such.sysctl_here");
        assert!(
            refused.reason.contains("No such file"),
            "{}",
            refused.reason
        );
        assert_eq!(apply(&[]), Ok(()));
    }
}
