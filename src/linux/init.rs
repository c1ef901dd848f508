//! What a freshly forked child of the pod agent does to become a container's process (or a
//! command exec'd in a running container). Runs single-threaded, after fork: it may allocate,
//! and returns only with an error message for the agent to report.

use std::convert::Infallible;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sched::CloneFlags;
use oci_spec::runtime::Spec;

use super::SetupError;
use super::rootfs::{self, Overlay};
use super::security;
use super::userns::{self, IdRange, PodMappings};

/// The descriptors that become the process's 0, 1 and 2.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// stdout is a terminal: it becomes the controlling one.
    pub tty: bool,
}

/// Where a container with a terminal sends the terminal's master side. The terminal is made
/// inside the container, from its own /dev/pts, so that the container can name it.
pub struct ConsoleSocket(pub OwnedFd);

/// What a container's first process needs beside its spec.
pub struct ContainerSetup<'a> {
    pub bundle: &'a Path,
    /// Where the process goes into its cgroup, which the agent does meanwhile.
    pub cgroup: CgroupEntry,
    pub layers_dir: &'a Path,
    pub overlay_options: &'a str,
}

/// Becomes the container's process. Called in the child of clone(CLONE_NEWNS[|CLONE_NEWPID]).
pub fn container(
    mut setup: ContainerSetup,
    stdio: Stdio,
    console: Option<ConsoleSocket>,
) -> Result<Infallible, SetupError> {
    reset_signals();
    attach_stdio(stdio)?;
    die_with_parent()?;
    let spec = load_spec(setup.bundle)?;
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| "config.json has no process".to_string())?;
    if let Some(adj) = process.oom_score_adj() {
        // The daemon clamped it to what this host allows.
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("oom_score_adj {adj}: {e}"))?;
    }
    security::set_rlimits(&process)?;
    let root = setup.bundle.join(
        spec.root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| "rootfs".into()),
    );
    let pod_userns = pod_user_namespace(&spec)?;
    let user_namespace = pod_userns
        .as_ref()
        .map(|(userns, maps)| rootfs::UserNamespace {
            userns,
            maps: *maps,
        });
    rootfs::prepare(
        &spec,
        &root,
        &Overlay {
            layers_dir: setup.layers_dir,
            options: setup.overlay_options,
        },
        user_namespace.as_ref(),
        &mut || setup.cgroup.enter(),
    )?;
    setup.cgroup.enter()?;
    if let Some(console) = console {
        open_terminal(console, terminal_owner(&process, pod_userns.as_ref()))?;
    }
    if let Some((userns, _)) = &pod_userns {
        userns::enter(userns)?;
    }
    let args = process.args().clone().unwrap_or_default();
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    security::finish_and_exec(&process, &args, seccomp.as_ref())
}

/// A container's first process going into its own cgroup and cgroup namespace. On cgroup v1
/// every migration waits for an RCU grace period (milliseconds), so the agent moves the
/// process while the process builds its rootfs; the process waits for the agent's word only
/// where it needs its cgroup: before it mounts cgroupfs, or once its rootfs is ready.
pub struct CgroupEntry {
    /// A byte on it says the agent has placed the process; none placed it (already there).
    placed: Option<OwnedFd>,
    entered: bool,
}

impl CgroupEntry {
    pub fn new(placed: Option<OwnedFd>) -> Self {
        CgroupEntry {
            placed,
            entered: false,
        }
    }

    /// Waits until the process is in its cgroup, then makes that the root of a new cgroup
    /// namespace. Once; later calls do nothing.
    pub fn enter(&mut self) -> Result<(), SetupError> {
        if self.entered {
            return Ok(());
        }
        if let Some(placed) = self.placed.take() {
            let mut byte = [0u8; 1];
            if !matches!(nix::unistd::read(&placed, &mut byte), Ok(1)) {
                return Err(SetupError::from(
                    "the agent could not place the process in its cgroup".to_string(),
                ));
            }
        }
        if Path::new("/proc/self/ns/cgroup").exists() {
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| format!("new cgroup namespace: {e}"))?;
        }
        self.entered = true;
        Ok(())
    }
}

/// The host uid the process's terminal belongs to: the process's user (through the pod's
/// mapping in a user-namespaced pod), as a login terminal belongs to its user.
fn terminal_owner(
    process: &oci_spec::runtime::Process,
    pod_userns: Option<&(OwnedFd, PodMappings)>,
) -> Option<u32> {
    let uid = process.user().uid();
    match pod_userns {
        Some((_, maps)) => maps.uids.to_host(uid),
        None => Some(uid),
    }
}

/// A new terminal from the container's /dev/ptmx: its master goes to the agent, its slave
/// becomes stdin, stdout, stderr and the controlling terminal, owned by `owner` (its group
/// stays devpts' tty group).
fn open_terminal(console: ConsoleSocket, owner: Option<u32>) -> Result<(), SetupError> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| format!("opening /dev/ptmx: {e}"))?;
    nix::pty::grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    nix::pty::unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&name)
        .map_err(|e| format!("opening {name}: {e}"))?
        .into();
    if let Some(uid) = owner {
        nix::unistd::fchown(&slave, Some(nix::unistd::Uid::from_raw(uid)), None)
            .map_err(|e| format!("giving {name} to uid {uid}: {e}"))?;
    }
    let fds = [master.as_raw_fd()];
    let message = [std::io::IoSlice::new(b"t")];
    nix::sys::socket::sendmsg::<()>(
        console.0.as_raw_fd(),
        &message,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("sending the terminal: {e}"))?;
    drop(master);
    for target in 0..=2 {
        dup_onto(slave.as_raw_fd(), target)?;
    }
    // SAFETY: TIOCSCTTY takes an integer argument; fd 0 is the open terminal.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(SetupError::io("TIOCSCTTY", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Namespaces of a running container that an exec'd command joins (opened by the agent).
pub struct ExecTarget<'a> {
    pub bundle: &'a Path,
    pub mnt: OwnedFd,
    pub cgroup_ns: Option<OwnedFd>,
    pub cgroup_procs: &'a [String],
    pub args: &'a [String],
    /// A terminal made inside the container becomes the command's stdio.
    pub console: Option<ConsoleSocket>,
}

/// Becomes a command in a running container: its mount and cgroup namespaces (the PID one was
/// chosen by the agent before fork), its cgroup, and the container's user, capabilities and
/// seccomp profile.
pub fn exec(target: ExecTarget, stdio: Stdio) -> Result<Infallible, SetupError> {
    reset_signals();
    attach_stdio(stdio)?;
    die_with_parent()?;
    // Read while the bundle is still reachable, before entering the container's mounts.
    let spec = load_spec(target.bundle)?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| "config.json has no process".to_string())?;
    if target.console.is_some() {
        // Programs need a terminal type to drive a terminal; containerd gives this one.
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".to_string());
            process.set_env(Some(env));
        }
    }
    // Found through the agent's network namespace, before the container's mounts hide it.
    let pod_userns = pod_user_namespace(&spec)?;
    join_cgroup(target.cgroup_procs)?;
    if let Some(cg) = &target.cgroup_ns {
        nix::sched::setns(cg, CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("joining the cgroup namespace: {e}"))?;
    }
    nix::sched::setns(&target.mnt, CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("joining the mount namespace: {e}"))?;
    if let Some(console) = target.console {
        // From the container's /dev/ptmx, so the terminal has a name inside it.
        open_terminal(console, terminal_owner(&process, pod_userns.as_ref()))?;
    }
    // Raising a hard limit takes the host's CAP_SYS_RESOURCE: before the user namespace.
    security::set_rlimits(&process)?;
    if let Some((userns, _)) = &pod_userns {
        userns::enter(userns)?;
    }
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    security::finish_and_exec(&process, target.args, seccomp.as_ref())
}

/// A container of a user-namespaced pod (the spec has a user namespace and its ranges): the
/// pod's user namespace, which owns the network namespace this process is in, and its ranges.
fn pod_user_namespace(spec: &Spec) -> Result<Option<(OwnedFd, PodMappings)>, SetupError> {
    let Some(linux) = spec.linux() else {
        return Ok(None);
    };
    let has_userns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::User);
    if !has_userns {
        return Ok(None);
    }
    let range =
        |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>, what: &str| match maps.as_deref() {
            Some([m]) if m.container_id() == 0 => Ok(IdRange {
                host: m.host_id(),
                length: m.size(),
            }),
            _ => Err(SetupError::from(format!(
                "config.json: the user namespace needs one {what} range from container id 0"
            ))),
        };
    let maps = PodMappings {
        uids: range(linux.uid_mappings(), "uid")?,
        gids: range(linux.gid_mappings(), "gid")?,
    };
    Ok(Some((userns::pod_user_namespace()?, maps)))
}

fn load_spec(bundle: &Path) -> Result<Spec, SetupError> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|e| format!("reading {}: {e}", path.display()).into())
}

/// The agent blocks SIGCHLD and the Rust runtime ignores SIGPIPE; both would survive execve.
fn reset_signals() {
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    for signal in nix::sys::signal::Signal::iterator() {
        if matches!(
            signal,
            nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP
        ) {
            continue;
        }
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
    }
}

/// A new session; the tty (if any) as the controlling terminal; stdio on 0, 1 and 2.
fn attach_stdio(stdio: Stdio) -> Result<(), SetupError> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if stdio.tty {
        // SAFETY: TIOCSCTTY takes an integer argument; the fd is an open terminal.
        if unsafe { libc::ioctl(stdio.stdout.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
            return Err(SetupError::io("TIOCSCTTY", std::io::Error::last_os_error()));
        }
    }
    for (fd, target) in [
        (stdio.stdin.as_raw_fd(), 0),
        (stdio.stdout.as_raw_fd(), 1),
        (stdio.stderr.as_raw_fd(), 2),
    ] {
        dup_onto(fd, target)?;
    }
    // 0-2 are the copies now; the originals (above 2) go, unless one already was 0-2.
    for fd in [stdio.stdin, stdio.stdout, stdio.stderr] {
        if fd.as_raw_fd() > 2 {
            drop(fd);
        } else {
            std::mem::forget(fd);
        }
    }
    Ok(())
}

fn dup_onto(fd: RawFd, target: RawFd) -> Result<(), SetupError> {
    if fd == target {
        // dup2 onto itself would leave close-on-exec set.
        // SAFETY: fcntl on an open fd with integer arguments.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        return Ok(());
    }
    // SAFETY: dup2 of two descriptor numbers; `fd` is open, `target` is replaced atomically.
    if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(SetupError::io("dup2", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// If the agent dies, its containers go with it rather than run on unwatched.
fn die_with_parent() -> Result<(), SetupError> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(SetupError::io(
            "PR_SET_PDEATHSIG",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Writing 0 to cgroup.procs moves the writer itself (v1 and v2).
fn join_cgroup(procs_files: &[String]) -> Result<(), SetupError> {
    for file in procs_files {
        std::fs::write(file, "0").map_err(|e| format!("joining {file}: {e}"))?;
    }
    Ok(())
}
