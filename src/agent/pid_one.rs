//! The agent as PID 1 of the pod's PID namespace (a pod with `namespace_options.pid == POD`).
//!
//! The daemon starts the agent after unshare(CLONE_NEWPID): the started process itself stays
//! in the daemon's PID namespace, and its first child becomes PID 1 of the new one. So the
//! agent forks once, first thing: the child goes on as the pod's agent (and PID 1), the
//! started process waits until the child serves (or has failed) and exits with the child's
//! status. One resident process per pod, as in every other namespace shape.
//!
//! As PID 1 the agent sees its own children's pids in the pod's namespace, while the daemon,
//! and the host's /proc the agent reads (its mount namespace is the host's), see host pids:
//! what the agent reports and what it looks up under /proc goes through `host_pid`.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::error::AgentError;

/// Whether this process is PID 1 of a PID namespace below the host's /proc: then pids from
/// fork and waitpid are the pod's, not the host's.
pub fn is_pid_one() -> bool {
    std::process::id() == 1
}

/// Forks the agent that will be PID 1 of the namespace the daemon unshared. In the child:
/// returns the descriptor `ready` takes once the agent serves. The started process never
/// returns: it exits 0 once the child is ready, or as the child did when it ended first.
pub fn enter() -> Result<OwnedFd, String> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: called first thing in main, while the agent is single-threaded, so the child
    // gets a consistent copy of every lock and of the allocator's state.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(read);
            Ok(write)
        }
        ForkResult::Parent { child } => {
            drop(write);
            let mut read = std::fs::File::from(read);
            let mut byte = [0u8; 1];
            let ready = loop {
                match read.read(&mut byte) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    result => break matches!(result, Ok(1)),
                }
            };
            if ready {
                std::process::exit(0);
            }
            let code = match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
                _ => 1,
            };
            std::process::exit(code)
        }
    }
}

/// Tells the started process the agent serves: it exits, leaving the agent its pod's only
/// resident process.
pub fn ready(fd: OwnedFd) {
    if let Err(e) = nix::unistd::write(&fd, b"r") {
        eprintln!("crius pod-agent: reporting readiness: {e}");
    }
}

/// This process's pid on the host's /proc (`/proc/self` resolves in the mount's namespace).
pub fn own_host_pid() -> u32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|link| link.to_str()?.parse().ok())
        .unwrap_or_else(std::process::id)
}

/// The host's pid of our child `pid` (a pid of our own PID namespace). The same pid unless the
/// agent is PID 1 of the pod's namespace; then through a pidfd, whose fdinfo names the process
/// in the namespace of the /proc it is read from. The process must not have been reaped yet.
pub fn host_pid(pid: Pid) -> Result<Pid, AgentError> {
    if !is_pid_one() {
        return Ok(pid);
    }
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(AgentError::at(format!("pidfd_open {pid}"))(
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: pidfd_open just returned this descriptor (close-on-exec); nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let info = std::fs::read_to_string(&path).map_err(AgentError::at_io(&path))?;
    parse_fdinfo_pid(&info)
        .map(Pid::from_raw)
        .ok_or_else(|| AgentError::Protocol(format!("no host pid for pid {pid} in {path}")))
}

/// The `Pid:` line of a pidfd's fdinfo; None when missing or not a live process (-1, 0).
fn parse_fdinfo_pid(info: &str) -> Option<i32> {
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|p: &i32| *p > 0)
}

/// Whether a signal the agent received asks it to end the pod: SIGTERM or SIGINT, unless it
/// came from inside the pod's own PID namespace when the agent is its PID 1 (the kernel keeps
/// such signals from PID 1 when it has no handler; a blocked signal bypasses that, so the
/// agent keeps the rule itself). A sender outside the namespace shows as pid 0.
pub fn ends_the_pod(signal: i32, sender: u32, pid_one: bool) -> bool {
    (signal == libc::SIGTERM || signal == libc::SIGINT) && !(pid_one && sender != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pid_line() {
        let info =
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nPid:\t4242\nNSpid:\t4242\t3\n";
        assert_eq!(parse_fdinfo_pid(info), Some(4242));
        assert_eq!(parse_fdinfo_pid("Pid:\t-1\n"), None);
        assert_eq!(parse_fdinfo_pid("pos:\t0\n"), None);
    }

    #[test]
    fn own_children_map_to_themselves_outside_a_pod_namespace() {
        // The test runner is not PID 1 of anything.
        let me = Pid::from_raw(std::process::id() as i32);
        assert_eq!(host_pid(me).ok(), Some(me));
        assert_eq!(own_host_pid(), std::process::id());
    }

    #[test]
    fn signals_from_inside_do_not_end_a_pid_one_agent() {
        assert!(ends_the_pod(libc::SIGTERM, 0, true));
        assert!(ends_the_pod(libc::SIGINT, 0, true));
        assert!(!ends_the_pod(libc::SIGTERM, 7, true));
        assert!(ends_the_pod(libc::SIGTERM, 7, false));
        assert!(!ends_the_pod(libc::SIGHUP, 0, true));
        assert!(!ends_the_pod(libc::SIGUSR1, 0, false));
    }
}
