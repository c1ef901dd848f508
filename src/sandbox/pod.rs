//! The host side of a pod: its agent process in fresh namespaces, the namespaces pinned by bind
//! mounts so they outlive any process, and the pod's /dev/shm.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::CloneFlags;

/// Which namespaces the pod gets of its own (false = the host's).
#[derive(Debug, Clone, Copy)]
pub struct OwnNamespaces {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    pub pid: bool,
    /// A user namespace of the pod's own: the agent makes it and the network, IPC and UTS
    /// namespaces it owns itself (they must be made inside it), so they are not unshared here.
    pub user: bool,
}

impl OwnNamespaces {
    fn clone_flags(self) -> CloneFlags {
        let mut flags = CloneFlags::empty();
        flags.set(CloneFlags::CLONE_NEWNET, self.net && !self.user);
        flags.set(CloneFlags::CLONE_NEWIPC, self.ipc && !self.user);
        flags.set(CloneFlags::CLONE_NEWUTS, self.uts && !self.user);
        flags.set(CloneFlags::CLONE_NEWPID, self.pid);
        flags
    }
}

/// Starts the pod agent (`exe`: the sealed crius-agent) in its own session and in new
/// namespaces as asked.
pub fn spawn_agent(
    exe: &Path,
    args: &[String],
    namespaces: OwnNamespaces,
    log: std::fs::File,
) -> std::io::Result<tokio::process::Child> {
    let mut command = std::process::Command::new(exe);
    command
        .arg0(super::agent_binary::AGENT_FILE_NAME)
        .args(args)
        // systemd's notification socket is the daemon's, not the agent's.
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let flags = namespaces.clone_flags();
    // SAFETY: the closure runs in the forked child before exec and only makes two syscalls
    // (setsid, unshare), both async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::sched::unshare(flags).map_err(std::io::Error::from)
        });
    }
    tokio::process::Command::from(command).spawn()
}

/// Bind-mounts /proc/<pid>/ns/<kind> onto `target` (created as an empty file).
pub fn pin_namespace(pid: i32, kind: &str, target: &Path) -> std::io::Result<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(target)?;
    let source = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
    mount(
        Some(&source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = std::fs::remove_file(target);
        std::io::Error::other(format!("pinning {}: {e}", source.display()))
    })
}

/// The pod's /dev/shm: a tmpfs shared by its containers; in a user-namespaced pod, owned by
/// the pod's root (`owner`: its host uid and gid).
pub fn mount_shm(target: &Path, size_bytes: u64, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    let mut options = format!("mode=1777,size={size_bytes}");
    if let Some((uid, gid)) = owner {
        options.push_str(&format!(",uid={uid},gid={gid}"));
    }
    mount(
        Some("shm"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(|e| std::io::Error::other(format!("mounting shm at {}: {e}", target.display())))
}

/// Unmounts `target` if something is mounted there, and removes it. Idempotent. umount2 says
/// itself whether `target` is a mount point (EINVAL when not), where reading mountinfo would
/// cost time in proportion to the pods running.
pub fn unmount_and_remove(target: &Path) -> std::io::Result<()> {
    match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(std::io::Error::other(format!(
                "unmounting {}: {e}",
                target.display()
            )));
        }
    }
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(target),
        Ok(_) => std::fs::remove_file(target),
        Err(_) => Ok(()),
    }
}

/// Whether `path` is a mount point, from /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    let wanted = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .filter_map(|l| l.split_whitespace().nth(4))
                .any(|point| unescape_mount_path(point) == wanted)
        })
        .unwrap_or(false)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
