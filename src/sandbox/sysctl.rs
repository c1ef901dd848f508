//! Which sysctls a pod may set: only those namespaced by a namespace the pod owns (IPC, and
//! network unless it uses the host's). Anything else would change the node.

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
}
