//! The agent's forks: containers' first processes and exec'd commands. The
//! child reports a set-up failure through a close-on-exec pipe; EOF on it means execve
//! succeeded.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sched::CloneFlags;
use nix::unistd::Pid;

use super::StreamFds;
use super::error::AgentError;
use super::proto::{ExecStream, ExecSync, StartContainer};
use crate::linux::SetupError;
use crate::linux::init::{self, CgroupEntry, ConsoleSocket, ContainerSetup, ExecTarget, Stdio};

/// A started process and the agent's ends of its stdio.
pub struct Started {
    pub pid: Pid,
    pub stdout: OwnedFd,
    /// None with a tty (it carries both streams).
    pub stderr: Option<OwnedFd>,
    pub stdin: Option<OwnedFd>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(AgentError::at("pipe"))
}

fn nonblocking(fd: &OwnedFd) -> Result<(), AgentError> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(AgentError::at("fcntl"))?;
    Ok(())
}

fn dev_null() -> Result<OwnedFd, AgentError> {
    std::fs::File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(AgentError::at_io("/dev/null"))
}

/// fork(2) with namespace flags: clone without a new stack behaves as fork, the child
/// continuing on a copy of this stack.
fn fork_into(flags: CloneFlags) -> Result<Pid, AgentError> {
    // SAFETY: the agent is single-threaded, so the child owns a consistent copy of every lock
    // and allocator state; with a null stack pointer the kernel gives the child a copy-on-write
    // copy of the caller's stack, exactly as fork does. No pointers are passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match rc {
        -1 => Err(AgentError::at("clone")(nix::errno::Errno::last())),
        pid => Ok(Pid::from_raw(pid as i32)),
    }
}

/// `struct clone_args` of clone3(2) (include/uapi/linux/sched.h), as far as `cgroup`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// CLONE_INTO_CGROUP (Linux 5.7): the child starts in the cgroup v2 directory `cgroup` names.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// fork into a cgroup v2 directory at once (no migration afterwards), with namespace flags.
/// None when the kernel cannot (clone3 or CLONE_INTO_CGROUP unknown, or refused): the caller
/// forks as usual and the child joins by writing cgroup.procs.
fn fork_into_cgroup(flags: CloneFlags, cgroup: &OwnedFd) -> Option<Result<Pid, AgentError>> {
    let args = CloneArgs {
        flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: as for fork_into: the agent is single-threaded and, with no stack given, the
    // child continues on a copy-on-write copy of this stack as after fork. `args` is a valid
    // clone_args of the size passed, and the cgroup descriptor it names is open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        -1 => match nix::errno::Errno::last() {
            nix::errno::Errno::ENOSYS | nix::errno::Errno::EINVAL | nix::errno::Errno::E2BIG => {
                None
            }
            e => Some(Err(AgentError::at("clone3")(e))),
        },
        pid => Some(Ok(Pid::from_raw(pid as i32))),
    }
}

/// In the child: report `error` to the agent (its errno as 4 bytes, little-endian, 0 for none,
/// then the message) and exit without running any destructor or atexit handler of the agent's.
fn fail_child(error_pipe: &OwnedFd, error: &SetupError) -> ! {
    let errno = error.errno.map_or(0, |e| e as i32);
    let mut report = errno.to_le_bytes().to_vec();
    report.extend_from_slice(error.message.as_bytes());
    let _ = nix::unistd::write(error_pipe, &report);
    // SAFETY: _exit ends the process immediately; nothing of the agent's state is touched.
    unsafe { libc::_exit(127) }
}

/// Waits for the child to exec (EOF) or to report why it could not.
fn await_exec(pid: Pid, error_read: OwnedFd) -> Result<(), AgentError> {
    let mut report = Vec::new();
    let _ = std::fs::File::from(error_read).read_to_end(&mut report);
    if report.is_empty() {
        return Ok(());
    }
    let _ = nix::sys::wait::waitpid(pid, None);
    Err(AgentError::Setup(decode_child_error(&report)))
}

/// What `fail_child` wrote.
fn decode_child_error(report: &[u8]) -> SetupError {
    let (errno, message) = match report.split_first_chunk::<4>() {
        Some((errno, message)) => (i32::from_le_bytes(*errno), message),
        None => (0, report),
    };
    SetupError {
        message: String::from_utf8_lossy(message).into_owned(),
        errno: (errno != 0).then(|| nix::errno::Errno::from_raw(errno)),
    }
}

/// A container's first process, forked, not yet known to have exec'd: what the agent keeps to
/// finish starting it.
pub struct Forked {
    pub pid: Pid,
    /// Why the agent could not move the process into its cgroup (it then fails its setup).
    placement: Option<AgentError>,
    error_read: OwnedFd,
    /// With `hold`: writing a byte lets the process go on.
    release: Option<OwnedFd>,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    /// With a tty: our side of the socket the terminal's master comes over.
    console: Option<OwnedFd>,
    stdin_keep: Option<OwnedFd>,
    tty: bool,
    stdin: bool,
}

/// Starts a container's first process from its bundle.
pub fn container(start: &StartContainer) -> Result<Started, AgentError> {
    finish(fork_container(start)?)
}

/// Forks a container's first process. With `start.hold` it waits, before doing anything, for
/// `finish` to let it go on.
pub fn fork_container(start: &StartContainer) -> Result<Forked, AgentError> {
    let (stdin_child, stdin_keep) = if start.stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (dev_null()?, None)
    };
    // With a tty the child makes the terminal inside the container and sends us its master
    // side; until then its stdio is /dev/null.
    let (child_out, child_err, out, err, console) = if start.tty {
        let (ours, theirs) = console_pair()?;
        (dev_null()?, dev_null()?, None, None, Some((ours, theirs)))
    } else {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        (out_w, err_w, Some(out_r), Some(err_r), None)
    };
    let (error_read, error_write) = pipe()?;
    let (release_read, release_write) = if start.hold {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let mut flags = CloneFlags::CLONE_NEWNS;
    flags.set(CloneFlags::CLONE_NEWPID, start.new_pid_ns);
    // On cgroup v2 the process is made in its cgroup, rather than moved there after.
    let cgroup = (!start.cgroup_dir.is_empty())
        .then(|| {
            std::fs::File::open(&start.cgroup_dir)
                .map(OwnedFd::from)
                .ok()
        })
        .flatten();
    let (placed_read, placed_write) = if start.cgroup_procs.is_empty() {
        (None, None)
    } else {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    };
    let (pid, in_cgroup) = fork_in_pid_namespace(flags, start.new_pid_ns, cgroup.as_ref())?;
    if pid.as_raw() == 0 {
        drop((error_read, release_write, placed_write));
        if let Some(release) = release_read {
            await_release(&error_write, release);
        }
        let setup = ContainerSetup {
            bundle: Path::new(&start.bundle),
            cgroup: CgroupEntry::new(placed_read.filter(|_| !in_cgroup)),
            layers_dir: Path::new(&start.layers_dir),
            overlay_options: &start.overlay_options,
        };
        let stdio = Stdio {
            stdin: stdin_child,
            stdout: child_out,
            stderr: child_err,
            tty: false,
        };
        let console = console.map(|(_, theirs)| ConsoleSocket(theirs));
        let Err(error) = init::container(setup, stdio, console);
        fail_child(&error_write, &error);
    }
    drop((error_write, child_out, child_err, stdin_child, release_read));
    drop(placed_read);
    // The child builds its rootfs meanwhile, and waits for this only where it needs its cgroup.
    let placement = match placed_write.filter(|_| !in_cgroup) {
        Some(placed) => place_in_cgroup(pid, &start.cgroup_procs, placed).err(),
        None => None,
    };
    Ok(Forked {
        pid,
        placement,
        error_read,
        release: release_write,
        out,
        err,
        console: console.map(|(ours, _theirs)| ours),
        stdin_keep,
        tty: start.tty,
        stdin: start.stdin,
    })
}

/// Moves the forked process `pid` (of our PID namespace) into its cgroup in every hierarchy,
/// then tells it so over `placed`. On failure `placed` closes unwritten and the process fails.
fn place_in_cgroup(pid: Pid, procs_files: &[String], placed: OwnedFd) -> Result<(), AgentError> {
    for file in procs_files {
        std::fs::write(file, pid.to_string()).map_err(AgentError::at_io(format!(
            "placing the container in {file}"
        )))?;
    }
    nix::unistd::write(&placed, b"1").map_err(AgentError::at("telling the container"))?;
    Ok(())
}

/// In a held child: blocks until the agent lets it go on; ends it if the agent never does.
fn await_release(error_pipe: &OwnedFd, release: OwnedFd) {
    let mut byte = [0u8; 1];
    match nix::unistd::read(&release, &mut byte) {
        Ok(1) => {}
        _ => fail_child(
            error_pipe,
            &SetupError::from("the container was never released".to_string()),
        ),
    }
}

/// clone(2) with `flags` (into `cgroup` when given and the kernel can: then true); a new PID
/// namespace is made from the agent's own (its children otherwise go into the pod's), so the
/// agent steps back to its own for the clone.
fn fork_in_pid_namespace(
    flags: CloneFlags,
    new_pid_ns: bool,
    cgroup: Option<&OwnedFd>,
) -> Result<(Pid, bool), AgentError> {
    let restore = if new_pid_ns {
        let children = std::fs::File::open("/proc/self/ns/pid_for_children")
            .map_err(AgentError::at_io("opening our pid namespace"))?;
        let own = std::fs::File::open("/proc/self/ns/pid")
            .map_err(AgentError::at_io("opening our pid namespace"))?;
        nix::sched::setns(&own, CloneFlags::CLONE_NEWPID)
            .map_err(AgentError::at("entering our own pid namespace"))?;
        Some(children)
    } else {
        None
    };
    let forked = match cgroup.and_then(|cg| fork_into_cgroup(flags, cg)) {
        Some(forked) => forked.map(|pid| (pid, true)),
        None => fork_into(flags).map(|pid| (pid, false)),
    };
    if let Some(children) = restore
        && !matches!(&forked, Ok((pid, _)) if pid.as_raw() == 0)
        && let Err(e) = nix::sched::setns(&children, CloneFlags::CLONE_NEWPID)
    {
        eprintln!("crius pod-agent: returning to the pod's pid namespace: {e}");
    }
    forked
}

/// Lets a held process go on, then waits until it has exec'd (or failed).
pub fn finish(forked: Forked) -> Result<Started, AgentError> {
    let Forked {
        pid,
        placement,
        error_read,
        release,
        out,
        err,
        console,
        stdin_keep,
        tty,
        stdin,
    } = forked;
    if let Some(release) = release {
        nix::unistd::write(&release, b"go").map_err(AgentError::at("releasing the container"))?;
    }
    let out = match (out, console) {
        (Some(out), _) => Some(out),
        (None, Some(ours)) => receive_terminal(&ours),
        (None, None) => None,
    };
    let exec = await_exec(pid, error_read);
    if let Some(error) = placement {
        return Err(error);
    }
    exec?;
    let out = out.ok_or_else(|| AgentError::Protocol("the container sent no terminal".into()))?;
    nonblocking(&out)?;
    if let Some(e) = &err {
        nonblocking(e)?;
    }
    // With a tty, the master is the way in as well.
    let stdin = match (tty, stdin_keep) {
        (true, _) if stdin => Some(out.try_clone().map_err(AgentError::at_io("dup"))?),
        (_, keep) => keep,
    };
    Ok(Started {
        pid,
        stdout: out,
        stderr: err,
        stdin,
    })
}

fn open_ns(pid: Pid, kind: &str) -> Result<OwnedFd, AgentError> {
    let path = format!("/proc/{pid}/ns/{kind}");
    std::fs::File::open(&path)
        .map(OwnedFd::from)
        .map_err(AgentError::at_io(format!("opening {path}")))
}

/// Starts `exec.cmd` inside the running container whose first process is `container`.
pub fn exec(container: Pid, exec: &ExecSync) -> Result<Started, AgentError> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let stdio = Stdio {
        stdin: dev_null()?,
        stdout: out_w,
        stderr: err_w,
        tty: false,
    };
    let command = Command {
        bundle: &exec.bundle,
        cmd: &exec.cmd,
        cgroup_procs: &exec.cgroup_procs,
    };
    let (pid, _) = exec_in(container, &command, stdio, false)?;
    nonblocking(&out_r)?;
    nonblocking(&err_r)?;
    Ok(Started {
        pid,
        stdout: out_r,
        stderr: Some(err_r),
        stdin: None,
    })
}

/// Starts `exec.cmd` inside the running container for the daemon to stream: answers its pid
/// and the descriptors that go to the daemon (all non-blocking).
pub fn exec_stream(container: Pid, exec: &ExecStream) -> Result<(Pid, StreamFds), AgentError> {
    let command = Command {
        bundle: &exec.bundle,
        cmd: &exec.cmd,
        cgroup_procs: &exec.cgroup_procs,
    };
    if exec.tty {
        // The child opens the terminal after joining the container's mounts; /dev/null until.
        let stdio = Stdio {
            stdin: dev_null()?,
            stdout: dev_null()?,
            stderr: dev_null()?,
            tty: false,
        };
        let (pid, master) = exec_in(container, &command, stdio, true)?;
        let master =
            master.ok_or_else(|| AgentError::Protocol("the command sent no terminal".into()))?;
        nonblocking(&master)?;
        let dup = |wanted: bool| -> Result<Option<OwnedFd>, AgentError> {
            wanted
                .then(|| master.try_clone().map_err(AgentError::at_io("dup")))
                .transpose()
        };
        let fds = StreamFds {
            stdin: dup(exec.stdin)?,
            stdout: dup(exec.stdout)?,
            stderr: None,
            terminal: None,
        };
        return Ok((
            pid,
            StreamFds {
                terminal: Some(master),
                ..fds
            },
        ));
    }
    // (the child's end, ours) per stream; /dev/null for a stream not asked for.
    let (stdin_child, stdin_ours) = if exec.stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (dev_null()?, None)
    };
    let output = |wanted: bool| -> Result<(OwnedFd, Option<OwnedFd>), AgentError> {
        if wanted {
            let (r, w) = pipe()?;
            Ok((w, Some(r)))
        } else {
            Ok((dev_null()?, None))
        }
    };
    let (stdout_child, stdout_ours) = output(exec.stdout)?;
    let (stderr_child, stderr_ours) = output(exec.stderr)?;
    let stdio = Stdio {
        stdin: stdin_child,
        stdout: stdout_child,
        stderr: stderr_child,
        tty: false,
    };
    let (pid, _) = exec_in(container, &command, stdio, false)?;
    for fd in [&stdin_ours, &stdout_ours, &stderr_ours]
        .into_iter()
        .flatten()
    {
        nonblocking(fd)?;
    }
    Ok((
        pid,
        StreamFds {
            stdin: stdin_ours,
            stdout: stdout_ours,
            stderr: stderr_ours,
            terminal: None,
        },
    ))
}

/// What to run in a container.
struct Command<'a> {
    bundle: &'a str,
    cmd: &'a [String],
    cgroup_procs: &'a [String],
}

/// Forks `command` into the running container whose first process is `container`, with
/// `stdio` (the child's ends: closed here once it has them) or, with `tty`, a terminal the
/// child makes inside the container, whose master is answered. Returns once it has exec'd.
fn exec_in(
    container: Pid,
    command: &Command,
    stdio: Stdio,
    tty: bool,
) -> Result<(Pid, Option<OwnedFd>), AgentError> {
    if command.cmd.is_empty() {
        return Err(AgentError::Protocol("no command to run".into()));
    }
    let mnt = open_ns(container, "mnt")?;
    let cgroup_ns = open_ns(container, "cgroup").ok();
    let target_pid_ns = open_ns(container, "pid")?;
    let own_pid_ns = std::fs::File::open("/proc/self/ns/pid_for_children")
        .map_err(AgentError::at_io("opening our pid namespace"))?;
    let console = if tty { Some(console_pair()?) } else { None };
    let (error_read, error_write) = pipe()?;
    // Our children go into the container's PID namespace until we switch back after fork.
    nix::sched::setns(&target_pid_ns, CloneFlags::CLONE_NEWPID)
        .map_err(AgentError::at("joining the container's pid namespace"))?;
    let forked = fork_into(CloneFlags::empty());
    if let Ok(pid) = &forked
        && pid.as_raw() == 0
    {
        drop(error_read);
        let target = ExecTarget {
            bundle: Path::new(command.bundle),
            mnt,
            cgroup_ns,
            cgroup_procs: command.cgroup_procs,
            args: command.cmd,
            console: console.map(|(_, theirs)| ConsoleSocket(theirs)),
        };
        let Err(error) = init::exec(target, stdio);
        fail_child(&error_write, &error);
    }
    let restored = nix::sched::setns(&own_pid_ns, CloneFlags::CLONE_NEWPID);
    let pid = forked?;
    drop((error_write, stdio));
    if let Err(e) = restored {
        eprintln!(
            "crius pod-agent: returning to our pid namespace (fd {}): {e}",
            own_pid_ns.as_raw_fd()
        );
    }
    let master = console.and_then(|(ours, theirs)| {
        drop(theirs);
        receive_terminal(&ours)
    });
    await_exec(pid, error_read)?;
    Ok((pid, master))
}

/// A socket pair over which a child sends the terminal it made: (ours, the child's).
fn console_pair() -> Result<(OwnedFd, OwnedFd), AgentError> {
    nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(AgentError::at("socketpair"))
}

/// The terminal master a container's first process sends over `socket`; None if it exited
/// first (its error pipe says why).
fn receive_terminal(socket: &OwnedFd) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = nix::sys::socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for cmsg in message.cmsgs().ok()? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor in our table for us; nothing
            // else owns it.
            return Some(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    None
}
