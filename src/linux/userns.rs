//! User namespaces (`hostUsers: false`): the pod's own user namespace with the one uid and one
//! gid range kubelet chose, the pod's network, IPC and UTS namespaces owned by it, and
//! idmapped mounts that show the image's layers and the pod's volumes through it.
//!
//! The pod agent stays root of the host: it makes the namespaces through a short-lived child,
//! joins the network, IPC and UTS ones, and keeps the user namespace reachable as the owner of
//! the network namespace (`NS_GET_USERNS`). A container's process builds its root filesystem
//! with the host's privileges and enters the user namespace last, just before it drops to the
//! container's user and execs: root in the pod is root only over what the pod's user namespace
//! owns.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sched::CloneFlags;

use super::SetupError;

/// One id range of a pod's user namespace: container ids `0..length` are host ids
/// `host..host + length`. kubelet always maps container id 0, with one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub host: u32,
    pub length: u32,
}

impl IdRange {
    /// `HOST:LENGTH`, as the agent's `--uid-map` and `--gid-map` take it.
    pub fn parse(text: &str) -> Result<IdRange, String> {
        let (host, length) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not HOST:LENGTH"))?;
        let host = host.parse().map_err(|_| format!("{text:?}: bad host id"))?;
        let length = length
            .parse()
            .map_err(|_| format!("{text:?}: bad length"))?;
        let range = IdRange { host, length };
        if length == 0 || range.last().is_none() {
            return Err(format!("{text:?}: empty, or past the last id"));
        }
        Ok(range)
    }

    pub fn to_arg(self) -> String {
        format!("{}:{}", self.host, self.length)
    }

    /// The last host id of the range; None when it would pass u32::MAX.
    pub fn last(self) -> Option<u32> {
        self.host.checked_add(self.length.checked_sub(1)?)
    }

    /// The host id a container id is, when the range maps it.
    pub fn to_host(self, id: u32) -> Option<u32> {
        (id < self.length).then(|| self.host + id)
    }

    /// The container id a host id is, when the range maps it.
    pub fn to_container(self, id: u32) -> Option<u32> {
        id.checked_sub(self.host).filter(|c| *c < self.length)
    }

    /// The line for /proc/<pid>/uid_map or gid_map.
    fn map_line(self) -> String {
        format!("0 {} {}\n", self.host, self.length)
    }
}

/// The uid and gid ranges of a pod's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodMappings {
    pub uids: IdRange,
    pub gids: IdRange,
}

/// Makes the pod's user namespace with `maps`, and network, IPC and UTS namespaces owned by
/// it, then moves this process into those three (it stays in the host's user namespace, with
/// the host's privileges over all of them). Runs in the pod agent before it serves, while it
/// is single-threaded and has no other child.
pub fn enter_pod_namespaces(maps: PodMappings) -> Result<(), SetupError> {
    let (ready_read, ready_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SetupError::at("pipe"))?;
    // SAFETY: the agent is single-threaded here, so the child owns consistent copies of every
    // lock; it only makes system calls and never returns into the agent's code.
    let child = match unsafe { nix::unistd::fork() }.map_err(SetupError::at("fork"))? {
        nix::unistd::ForkResult::Child => {
            drop(ready_read);
            hold_new_namespaces(&ready_write)
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(ready_write);
    let entered = join_child_namespaces(child, ready_read, maps);
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    entered
}

/// In the forked child: new user, network, IPC and UTS namespaces (the others owned by the
/// user one), then a report (an errno, 0 for none, and this process's pid as the host's /proc
/// names it: the agent may be PID 1 of a PID namespace of its own, where fork answers another
/// number), then nothing until killed.
fn hold_new_namespaces(ready: &OwnedFd) -> ! {
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    let errno = match nix::sched::unshare(flags) {
        Ok(()) => 0i32,
        Err(e) => e as i32,
    };
    let proc_pid: i32 = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse().ok())
        .unwrap_or(0);
    let mut report = errno.to_le_bytes().to_vec();
    report.extend_from_slice(&proc_pid.to_le_bytes());
    let _ = nix::unistd::write(ready, &report);
    if errno != 0 {
        // SAFETY: _exit ends the child at once, touching none of the agent's state.
        unsafe { libc::_exit(1) }
    }
    loop {
        nix::unistd::pause();
    }
}

/// Writes the child's maps, and joins its network, IPC and UTS namespaces.
fn join_child_namespaces(
    child: nix::unistd::Pid,
    ready: OwnedFd,
    maps: PodMappings,
) -> Result<(), SetupError> {
    let mut report = [0u8; 8];
    std::fs::File::from(ready)
        .read_exact(&mut report)
        .map_err(SetupError::at_io("waiting for the user namespace"))?;
    let (errno, proc_pid) = report.split_at(4);
    let errno = i32::from_le_bytes(errno.try_into().unwrap_or_default());
    if errno != 0 {
        return Err(SetupError::os(
            "creating the pod's user namespace",
            Errno::from_raw(errno),
        ));
    }
    let proc_pid = i32::from_le_bytes(proc_pid.try_into().unwrap_or_default());
    if proc_pid <= 0 {
        return Err(SetupError::from(format!(
            "the user namespace holder (pid {child}) could not name itself in /proc"
        )));
    }
    let proc = format!("/proc/{proc_pid}");
    for (file, range) in [("uid_map", maps.uids), ("gid_map", maps.gids)] {
        std::fs::write(format!("{proc}/{file}"), range.map_line())
            .map_err(SetupError::at_io(format!("writing the pod's {file}")))?;
    }
    for (kind, flag) in [
        ("net", CloneFlags::CLONE_NEWNET),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
    ] {
        let ns = std::fs::File::open(format!("{proc}/ns/{kind}")).map_err(SetupError::at_io(
            format!("opening the pod's {kind} namespace"),
        ))?;
        nix::sched::setns(ns, flag)
            .map_err(SetupError::at(format!("joining the {kind} namespace")))?;
    }
    Ok(())
}

/// `ioctl(NS_GET_USERNS)`: _IO(0xb7, 0x1).
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// The user namespace that owns this process's network namespace: a user-namespaced pod's own
/// (the agent and its children live in the pod's network namespace).
pub fn pod_user_namespace() -> Result<OwnedFd, SetupError> {
    let net = std::fs::File::open("/proc/self/ns/net")
        .map_err(SetupError::at_io("opening /proc/self/ns/net"))?;
    owner_of(&net)
}

/// The user namespace owning the namespace `ns` is a descriptor of.
pub fn owner_of(ns: &impl AsRawFd) -> Result<OwnedFd, SetupError> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(SetupError::os(
            "finding the pod's user namespace",
            Errno::last(),
        ));
    }
    // SAFETY: the kernel just opened this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Enters the pod's user namespace: the last namespace a container's process joins, once its
/// mounts are made. Its capabilities are then the pod's, over what the pod owns.
pub fn enter(userns: &OwnedFd) -> Result<(), SetupError> {
    nix::sched::setns(userns, CloneFlags::CLONE_NEWUSER)
        .map_err(SetupError::at("entering the pod's user namespace"))
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

fn c_path(path: &Path) -> Result<std::ffi::CString, Errno> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)
}

/// A detached copy of the mount tree at `source` (only its top mount unless `recursive`)
/// that shows its files through `userns`: on-disk id N appears as the id the pod's N is.
/// EINVAL (or EOPNOTSUPP) from the kernel means the filesystem cannot be idmapped.
pub fn idmapped_tree(source: &Path, userns: &OwnedFd, recursive: bool) -> Result<OwnedFd, Errno> {
    let path = c_path(source)?;
    let recursive_flag = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: `path` is NUL-terminated and outlives the call; open_tree returns a new
    // descriptor or -1 and reads nothing else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | recursive_flag,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: open_tree just returned this new descriptor; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = libc::mount_attr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: `empty` is a NUL-terminated string and `attr` a mount_attr of the size passed,
    // both alive for the call; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | recursive_flag,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(tree)
}

/// Attaches a detached tree (from [`idmapped_tree`]) at `target`.
pub fn attach_tree(tree: &OwnedFd, target: &Path) -> Result<(), Errno> {
    let target = c_path(target)?;
    let empty = c"";
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Whether this kernel can give pods user namespaces: it allows them (max_user_namespaces
/// above 0) and has idmapped mounts (mount_setattr, Linux 5.12). Whether a given filesystem
/// can be idmapped is checked where it is used, at CreateContainer.
pub fn kernel_supports() -> bool {
    let allowed = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    allowed && super::rootfs::supports_recursive_read_only()
}

/// Why a filesystem could not be idmapped, for the caller: what is missing where.
pub fn idmap_refusal(what: &str, path: &Path, errno: Errno) -> String {
    let fs = super::rootfs::mount_holding(path)
        .map_or_else(|| "its filesystem".to_string(), |(_, fs)| fs);
    match errno {
        Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS => format!(
            "{what} {} is on {fs}, which this kernel ({}) cannot idmap; a user-namespaced pod \
             needs idmapped mounts there (tmpfs needs Linux 6.3, overlayfs on idmapped layers \
             5.19)",
            path.display(),
            kernel_release()
        ),
        other => format!("idmapping {what} {}: {other}", path.display()),
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_translate() {
        let r = IdRange::parse("100000:65536").unwrap();
        assert_eq!(
            r,
            IdRange {
                host: 100000,
                length: 65536
            }
        );
        assert_eq!(r.to_arg(), "100000:65536");
        assert_eq!(r.to_host(0), Some(100000));
        assert_eq!(r.to_host(65535), Some(165535));
        assert_eq!(r.to_host(65536), None);
        assert_eq!(r.to_container(100001), Some(1));
        assert_eq!(r.to_container(99999), None);
        assert_eq!(r.to_container(165536), None);
        assert_eq!(r.map_line(), "0 100000 65536\n");
        for bad in ["", "1", "a:1", "1:b", "1:0", "4294967295:2", "-1:5"] {
            assert!(IdRange::parse(bad).is_err(), "{bad}");
        }
        assert!(IdRange::parse("4294967295:1").is_ok());
    }
}
