//! The agent process itself (`crius pod-agent`). Single-threaded on purpose: it forks container
//! processes, which only a single-threaded process may safely do, and it serves everything from
//! one poll loop: the daemon's requests, SIGCHLD, the containers' output and exec sessions.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use prost::Message;

use super::attach::{Attacher, answer_nowait, attach_pipe, connection_closed, fan_out};
use super::error::AgentError;
use super::proto::{ContainerProcess, WatchEvent};
use super::proto::{Request, Response, request};
use super::spawn;
use super::{ExitStatus, MAX_REQUEST, StreamFds, frame, send_with_fds};
use crate::clock::now_ns;
use crate::logs::{LogWriter, Stream};

/// What the daemon asks the agent to set up in the namespaces it was started in.
#[derive(Debug, Clone, Default)]
pub struct AgentArgs {
    pub socket: PathBuf,
    /// Set when the pod has its own UTS namespace.
    pub hostname: Option<String>,
    /// Set when the pod has its own network namespace: bring `lo` up.
    pub loopback: bool,
    /// `name=value`, namespaced sysctls only (checked by the daemon).
    pub sysctls: Vec<(String, String)>,
    /// The agent was started after unshare(CLONE_NEWPID): it forks once and goes on as PID 1
    /// of the pod's PID namespace (see `pid_one`).
    pub pid_init: bool,
    /// A user-namespaced pod: the agent makes the pod's user namespace with these ranges and
    /// the network, IPC and UTS namespaces it owns, and joins the latter.
    pub user_namespace: Option<crate::linux::userns::PodMappings>,
}

/// ExecSync output (stdout and stderr together) beyond this is dropped: the answer must fit
/// in the 16 MiB gRPC message kubelet accepts, with room for the rest of the message; and a
/// chatty probe cannot exhaust the agent.
pub const EXEC_OUTPUT_CAP: usize = 16 * 1024 * 1024 - 4096;
/// After an exec'd command exits, how long its output pipes may stay open (held by a
/// background child) before the answer goes out anyway.
const EXEC_DRAIN_GRACE: Duration = Duration::from_millis(200);

/// A container this agent started.
struct Container {
    /// In the agent's PID namespace: what waitpid answers and kill takes.
    pid: Pid,
    /// On the host's /proc, as the daemon sees it (the same unless the agent is PID 1).
    host_pid: Pid,
    exit_file: PathBuf,
    oom_file: String,
    /// OOMs counted in the parent cgroup's memory.events when the container started (v2's
    /// counts are hierarchical): the evidence left when the container's own cgroup is gone.
    parent_ooms: Option<u64>,
    log: LogWriter,
    /// stdout and stderr pipes (or the tty master as stdout) until they reach EOF.
    outputs: Vec<(OwnedFd, Stream)>,
    /// The way into the container's stdin (with a tty, the master), for attachers; also keeps
    /// a container created with stdin blocked on it rather than reading EOF.
    stdin: Option<OwnedFd>,
    /// The first attacher with stdin takes `stdin` away (no tty only).
    stdin_once: bool,
    /// With a tty: the master, for attachers' resizes.
    terminal: Option<OwnedFd>,
    attachers: Vec<Attacher>,
    /// Nanoseconds since the epoch.
    started_at: i64,
    /// Set once the process has been reaped.
    exit: Option<ExitStatus>,
}

impl Container {
    fn running(&self) -> bool {
        self.exit.is_none()
    }

    /// The container as the daemon's watch sees it.
    fn process(&self, id: &str) -> ContainerProcess {
        ContainerProcess {
            id: id.to_string(),
            pid: self.host_pid.as_raw() as u32,
            started_at: self.started_at,
            exit: self.exit.map(|e| e.to_wire()),
            held: false,
        }
    }
}

/// A command the daemon streams (ExecStream): it holds the stdio, the connection waits for the
/// exit.
struct StreamSession {
    token: u64,
    pid: Pid,
    conn: UnixStream,
}

/// A daemon connection that receives the agent's events.
struct Watcher {
    token: u64,
    conn: UnixStream,
}

/// An ExecSync in flight: the connection waits for the command's exit.
struct ExecSession {
    token: u64,
    pid: Pid,
    conn: UnixStream,
    outputs: Vec<(OwnedFd, Stream)>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    deadline: Option<Instant>,
    exit_code: Option<i32>,
    timed_out: bool,
    /// Set once the command exited: the answer goes out when its pipes close or this passes.
    drain_until: Option<Instant>,
}

struct Agent {
    listener: UnixListener,
    /// SIGCHLD, and the signals that end the pod (SIGTERM, SIGINT).
    signals: SignalFd,
    /// Our pid as the daemon sees it.
    host_pid: u32,
    /// PID 1 of the pod's PID namespace: orphans of the pod come to us, and signals from
    /// inside the pod are not the pod's end.
    pid_one: bool,
    containers: HashMap<String, Container>,
    execs: Vec<ExecSession>,
    streams: Vec<StreamSession>,
    /// The daemon's Watch connections: every container start and exit is sent on each.
    watchers: Vec<Watcher>,
    /// Containers forked with `hold`, waiting for Release.
    held: HashMap<String, Held>,
    /// Names the connections in the poll set (indices move as sessions come and go).
    next_token: u64,
}

/// A container forked with `hold`: the fork, its pid as the daemon sees it, what finishes it.
struct Held {
    forked: spawn::Forked,
    host_pid: Pid,
    start: super::proto::StartContainer,
    log: LogWriter,
}

/// Runs the agent until it is told to shut down. Errors before serving are fatal: the daemon
/// sees the agent exit and reports why from its log.
pub fn run(args: AgentArgs) -> Result<(), String> {
    // First of all, while nothing else is set up: become PID 1 of the pod's namespace.
    let ready = if args.pid_init {
        Some(super::pid_one::enter()?)
    } else {
        None
    };
    // Containers will be our children; orphans of theirs come back to us to be reaped.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(format!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SIGCHLD, SIGTERM and SIGINT arrive through a descriptor the poll loop watches (as PID 1
    // the agent would otherwise never see the last two); children unblock them again.
    let mut mask = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(signal);
    }
    mask.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;
    if let Some(maps) = args.user_namespace {
        crate::linux::userns::enter_pod_namespaces(maps).map_err(|e| e.to_string())?;
    }
    if let Some(hostname) = &args.hostname {
        nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))?;
    }
    if args.loopback {
        loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    }
    if let Err(refused) = crate::sandbox::sysctl::apply(&args.sysctls) {
        refused.exit_agent();
    }
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .map_err(|e| format!("binding {}: {e}", args.socket.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let mut agent = Agent {
        listener,
        signals,
        host_pid: super::pid_one::own_host_pid(),
        pid_one: super::pid_one::is_pid_one(),
        containers: HashMap::new(),
        execs: Vec::new(),
        streams: Vec::new(),
        watchers: Vec::new(),
        held: HashMap::new(),
        next_token: 0,
    };
    if let Some(ready) = ready {
        super::pid_one::ready(ready);
    }
    // Start-up code will not run again: keep only what the loop uses resident.
    crate::linux::trim::drop_clean_file_pages();
    agent.serve_forever();
    let _ = std::fs::remove_file(&args.socket);
    agent.shut_down();
    Ok(())
}

/// What a ready descriptor in the poll set belongs to.
#[derive(Clone, Copy)]
enum Source {
    Listener,
    Signals,
    ContainerOutput(usize, usize),
    ExecOutput(usize, usize),
    /// The connection of an ExecSync, ExecStream or attacher: watched for the client going.
    Conn(u64),
}

impl Agent {
    /// The poll loop; returns when the daemon asked for shutdown.
    fn serve_forever(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let ids: Vec<String> = self.containers.keys().cloned().collect();
            let mut sources = vec![Source::Listener, Source::Signals];
            let mut fds = vec![
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            ];
            for (ci, id) in ids.iter().enumerate() {
                for (oi, (fd, _)) in self.containers[id].outputs.iter().enumerate() {
                    sources.push(Source::ContainerOutput(ci, oi));
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            for (ei, exec) in self.execs.iter().enumerate() {
                for (oi, (fd, _)) in exec.outputs.iter().enumerate() {
                    sources.push(Source::ExecOutput(ei, oi));
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            let conns = self
                .execs
                .iter()
                .map(|e| (e.token, &e.conn))
                .chain(self.streams.iter().map(|s| (s.token, &s.conn)))
                .chain(self.watchers.iter().map(|w| (w.token, &w.conn)))
                .chain(
                    self.containers
                        .values()
                        .flat_map(|c| c.attachers.iter().map(|a| (a.token, &a.conn))),
                );
            // A peer's close or shutdown shows as POLLIN and then EOF on read (nix's PollFlags
            // has no POLLRDHUP, and revents() refuses bits it does not know).
            for (token, conn) in conns {
                sources.push(Source::Conn(token));
                fds.push(PollFd::new(conn.as_fd(), PollFlags::POLLIN));
            }
            let timeout = self
                .execs
                .iter()
                .filter_map(|e| e.drain_until.or(e.deadline))
                .min()
                .map(|t| t.saturating_duration_since(Instant::now()));
            let timeout = match timeout {
                Some(d) => PollTimeout::try_from(d.as_millis().min(60_000) as i32 + 1)
                    .unwrap_or(PollTimeout::NONE),
                None => PollTimeout::NONE,
            };
            let ready: Vec<(Source, PollFlags)> = match poll(&mut fds, timeout) {
                Ok(_) => fds
                    .iter()
                    .zip(&sources)
                    .filter_map(|(fd, s)| fd.revents().filter(|r| !r.is_empty()).map(|r| (*s, r)))
                    .collect(),
                Err(nix::errno::Errno::EINTR) => vec![],
                Err(e) => {
                    eprintln!("crius pod-agent: poll: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    vec![]
                }
            };
            drop(fds);
            // Output first (indices stay valid until outputs are removed below), then exits,
            // then requests.
            let mut closed_container: Vec<(usize, usize)> = vec![];
            let mut closed_exec: Vec<(usize, usize)> = vec![];
            let mut shutdown = false;
            for (source, _) in &ready {
                match *source {
                    Source::ContainerOutput(ci, oi) => {
                        let Some(c) = self.containers.get_mut(&ids[ci]) else {
                            continue;
                        };
                        if !pump_container(c, oi, &mut buf) {
                            closed_container.push((ci, oi));
                        }
                    }
                    Source::ExecOutput(ei, oi) if !pump_exec(&mut self.execs[ei], oi, &mut buf) => {
                        closed_exec.push((ei, oi));
                    }
                    _ => {}
                }
            }
            // Remove closed outputs back to front so the other indices stay right.
            closed_container.sort_unstable();
            for (ci, oi) in closed_container.into_iter().rev() {
                if let Some(c) = self.containers.get_mut(&ids[ci]) {
                    let (_, stream) = c.outputs.remove(oi);
                    c.log.flush_stream(stream);
                    // The attachers see the end of the stream too.
                    for a in &mut c.attachers {
                        match stream {
                            Stream::Stdout => a.stdout = None,
                            Stream::Stderr => a.stderr = None,
                        }
                    }
                }
            }
            closed_exec.sort_unstable();
            for (ei, oi) in closed_exec.into_iter().rev() {
                self.execs[ei].outputs.remove(oi);
            }
            // Sessions are found by token from here on: removing one moves the others.
            for (source, revents) in &ready {
                if let Source::Conn(token) = source {
                    self.drop_if_gone(*token, *revents);
                }
            }
            for (source, _) in &ready {
                match source {
                    Source::Signals => {
                        shutdown |= self.read_signals();
                        self.reap(&mut buf);
                    }
                    Source::Listener => shutdown |= self.accept(),
                    _ => {}
                }
            }
            let execs_before = self.execs.len();
            self.finish_execs();
            if shutdown {
                return;
            }
            // Serving a request or an exec touches code the idle loop does not need (forking a
            // container most of all): give those pages back once done.
            if ready.iter().any(|(s, _)| matches!(s, Source::Listener))
                || self.execs.len() < execs_before
            {
                crate::linux::trim::drop_clean_file_pages();
            }
        }
    }

    /// Accepts and serves pending connections; true when one asked for shutdown.
    fn accept(&mut self) -> bool {
        loop {
            let conn = match self.listener.accept() {
                Ok((conn, _)) => conn,
                Err(_) => return false,
            };
            // Requests come whole from the daemon; a stuck peer must not hang the pod.
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
            match self.serve(conn) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => eprintln!("crius pod-agent: {e}"),
            }
        }
    }

    /// Answers one request; Ok(true) when it was Shutdown.
    fn serve(&mut self, mut conn: UnixStream) -> Result<bool, AgentError> {
        let request = match read_request(&mut conn) {
            Ok(request) => request,
            Err(e) => {
                let _ = conn.write_all(&frame(&e.to_response()));
                return Err(e);
            }
        };
        let mut response = self.identity();
        let mut shutdown = false;
        let fail = |response: &mut Response, e: AgentError| {
            let error = e.to_response();
            response.error = error.error;
            response.error_kind = error.error_kind;
            response.errno = error.errno;
        };
        match request.kind {
            Some(request::Kind::Ping(_)) => {}
            Some(request::Kind::Shutdown(_)) => shutdown = true,
            Some(request::Kind::Watch(_)) => {
                self.add_watcher(conn);
                return Ok(false);
            }
            Some(request::Kind::Start(start)) => match self.start_container(start) {
                Ok((pid, started_at)) => {
                    response.container_pid = pid.as_raw() as u32;
                    response.started_at = started_at;
                }
                Err(e) => fail(&mut response, e),
            },
            Some(request::Kind::Release(release)) => match self.release(&release.id) {
                Ok((pid, started_at)) => {
                    response.container_pid = pid.as_raw() as u32;
                    response.started_at = started_at;
                }
                Err(e) => fail(&mut response, e),
            },
            Some(request::Kind::ExecStream(exec)) => {
                // Answered inside, with descriptors; the session keeps the connection.
                self.serve_exec_stream(exec, conn)?;
                return Ok(false);
            }
            Some(request::Kind::Attach(attach)) => {
                self.serve_attach(attach, conn)?;
                return Ok(false);
            }
            Some(request::Kind::Exec(exec)) => match self.start_exec(exec, conn) {
                // The session owns the connection and answers when the command is done.
                Ok(()) => return Ok(false),
                Err((e, conn_back)) => {
                    fail(&mut response, e);
                    conn = conn_back;
                }
            },
            Some(request::Kind::ReopenLog(r)) => match self.containers.get_mut(&r.id) {
                Some(c) if c.running() => {
                    if let Err(e) = c.log.reopen() {
                        let context = format!("reopening the log of container {}", r.id);
                        fail(&mut response, AgentError::at_io(context)(e));
                    }
                }
                _ => fail(&mut response, AgentError::NotRunning(r.id)),
            },
            Some(request::Kind::Forget(f)) => {
                self.containers.remove(&f.id);
                if let Some(held) = self.held.remove(&f.id) {
                    // Never released: it has run nothing of the container's.
                    let _ = nix::sys::signal::kill(held.forked.pid, Signal::SIGKILL);
                }
            }
            None => fail(
                &mut response,
                AgentError::Protocol("empty request".to_string()),
            ),
        }
        conn.write_all(&frame(&response))
            .map_err(AgentError::at_io("answering"))?;
        Ok(shutdown)
    }

    /// A Watch: the daemon gets every container as it is now, then every start and exit.
    fn add_watcher(&mut self, mut conn: UnixStream) {
        let held = self.held.iter().map(|(id, held)| ContainerProcess {
            id: id.clone(),
            pid: held.host_pid.as_raw() as u32,
            held: true,
            ..Default::default()
        });
        let snapshot = WatchEvent {
            containers: self
                .containers
                .iter()
                .map(|(id, c)| c.process(id))
                .chain(held)
                .collect(),
        };
        // Blocking (with the accept timeout) for the snapshot, which may be large; events are
        // small and go without waiting.
        if let Err(e) = conn.write_all(&frame(&snapshot)) {
            eprintln!("crius pod-agent: answering a watch: {e}");
            return;
        }
        let _ = conn.set_nonblocking(true);
        let token = self.token();
        self.watchers.push(Watcher { token, conn });
    }

    /// Sends a container's start or exit to every watcher. A watcher that cannot take the
    /// whole event at once is dropped: its daemon reconnects and gets the whole picture again.
    fn notify(&mut self, id: &str) {
        let Some(c) = self.containers.get(id) else {
            return;
        };
        let event = frame(&WatchEvent {
            containers: vec![c.process(id)],
        });
        self.watchers
            .retain(|w| matches!((&w.conn).write(&event), Ok(n) if n == event.len()));
    }

    fn identity(&self) -> Response {
        Response {
            pid: self.host_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }
    }

    /// Starts a container; its pid and start time. A container is started once.
    /// Starts a container; its pid and start time. A container is started once. With `hold`
    /// it is only forked, its pid answered, and Release finishes the start.
    fn start_container(
        &mut self,
        start: super::proto::StartContainer,
    ) -> Result<(Pid, i64), AgentError> {
        // A daemon that died before its Release asks again: the same held process.
        if let Some(held) = self.held.get(&start.id).filter(|_| start.hold) {
            return Ok((held.host_pid, 0));
        }
        if self.containers.contains_key(&start.id) || self.held.contains_key(&start.id) {
            return Err(AgentError::AlreadyStarted(start.id));
        }
        let log = if start.log_path.is_empty() {
            LogWriter::disabled()
        } else {
            LogWriter::open(std::path::Path::new(&start.log_path)).map_err(AgentError::at_io(
                format!("opening the log {}", start.log_path),
            ))?
        };
        let forked = spawn::fork_container(&start)?;
        if start.hold {
            let host_pid = match super::pid_one::host_pid(forked.pid) {
                Ok(pid) => pid,
                Err(e) => {
                    let _ = nix::sys::signal::kill(forked.pid, Signal::SIGKILL);
                    return Err(e);
                }
            };
            self.held.insert(
                start.id.clone(),
                Held {
                    forked,
                    host_pid,
                    start,
                    log,
                },
            );
            return Ok((host_pid, 0));
        }
        self.finish_start(spawn::finish(forked)?, start, log)
    }

    /// Release: a held container goes on to exec.
    fn release(&mut self, id: &str) -> Result<(Pid, i64), AgentError> {
        let Some(held) = self.held.remove(id) else {
            return Err(AgentError::NotHeld(id.to_string()));
        };
        self.finish_start(spawn::finish(held.forked)?, held.start, held.log)
    }

    /// A container's process has exec'd: from now on its output is logged, its exit recorded.
    fn finish_start(
        &mut self,
        started: spawn::Started,
        start: super::proto::StartContainer,
        log: LogWriter,
    ) -> Result<(Pid, i64), AgentError> {
        let started_at = now_ns();
        let terminal = if start.tty {
            Some(
                started
                    .stdout
                    .try_clone()
                    .map_err(AgentError::at_io("dup"))?,
            )
        } else {
            None
        };
        // Until it is reaped (by the loop, after this returns) its pid is ours to translate.
        let host_pid = match super::pid_one::host_pid(started.pid) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = nix::sys::signal::kill(started.pid, Signal::SIGKILL);
                return Err(e);
            }
        };
        let mut outputs = vec![(started.stdout, Stream::Stdout)];
        outputs.extend(started.stderr.map(|fd| (fd, Stream::Stderr)));
        self.containers.insert(
            start.id.clone(),
            Container {
                pid: started.pid,
                host_pid,
                exit_file: PathBuf::from(&start.exit_file),
                oom_file: start.oom_file.clone(),
                parent_ooms: parent_ooms(&start.oom_file),
                log,
                outputs,
                stdin: started.stdin,
                stdin_once: start.stdin_once && !start.tty,
                terminal,
                attachers: Vec::new(),
                started_at,
                exit: None,
            },
        );
        self.notify(&start.id);
        Ok((host_pid, started_at))
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Starts an ExecStream's command and answers with its stdio; the session then waits for
    /// its exit (or for the client to go, which kills it).
    fn serve_exec_stream(
        &mut self,
        exec: super::proto::ExecStream,
        conn: UnixStream,
    ) -> Result<(), AgentError> {
        let started = match self.containers.get(&exec.id).filter(|c| c.running()) {
            Some(c) => spawn::exec_stream(c.host_pid, &exec),
            None => Err(AgentError::NotRunning(exec.id.clone())),
        };
        let (pid, stdio) = match started {
            Ok(started) => started,
            Err(error) => return answer_error(conn, error),
        };
        let host_pid = match super::pid_one::host_pid(pid) {
            Ok(host_pid) => host_pid,
            Err(error) => {
                kill_session(pid);
                return answer_error(conn, error);
            }
        };
        let (kinds, fds) = stdio.into_wire();
        let response = Response {
            pid: host_pid.as_raw() as u32,
            fds: kinds,
            ..Default::default()
        };
        if let Err(e) = send_with_fds(&conn, &frame(&response), &fds) {
            // Nobody would see its output or its end.
            kill_session(pid);
            return Err(AgentError::at_io("answering an exec stream")(e));
        }
        // The daemon holds the stdio now; ours would keep its pipes from ever reaching EOF.
        drop(fds);
        let _ = conn.set_nonblocking(true);
        let token = self.token();
        self.streams.push(StreamSession { token, pid, conn });
        Ok(())
    }

    /// Hands a client pipes fed with the container's output from now on, and its stdin when
    /// it may have it.
    fn serve_attach(
        &mut self,
        attach: super::proto::Attach,
        conn: UnixStream,
    ) -> Result<(), AgentError> {
        let token = self.token();
        let Some(c) = self.containers.get_mut(&attach.id).filter(|c| c.running()) else {
            return answer_error(conn, AgentError::NotRunning(attach.id));
        };
        let open = |stream: Stream| c.outputs.iter().any(|(_, s)| *s == stream);
        let tty = c.terminal.is_some();
        let mut client = StreamFds::default();
        let mut ours = (None, None);
        let made = (|| -> Result<(), AgentError> {
            if attach.stdout {
                let (read, write) = attach_pipe(open(Stream::Stdout))?;
                client.stdout = Some(read);
                ours.0 = write;
            }
            if attach.stderr && !tty {
                let (read, write) = attach_pipe(open(Stream::Stderr))?;
                client.stderr = Some(read);
                ours.1 = write;
            }
            if let Some(terminal) = &c.terminal {
                client.terminal = Some(terminal.try_clone().map_err(AgentError::at_io("dup"))?);
            }
            Ok(())
        })();
        if let Err(error) = made {
            return answer_error(conn, error);
        }
        // Last, so nothing can fail after stdin was used up.
        let once = attach.stdin && c.stdin_once;
        if attach.stdin {
            client.stdin = if once {
                c.stdin.take()
            } else {
                c.stdin.as_ref().and_then(|fd| fd.try_clone().ok())
            };
        }
        let (kinds, mut fds) = client.into_wire();
        let stdin_at = kinds
            .iter()
            .position(|k| *k == super::proto::StreamFd::Stdin as i32);
        let response = Response {
            fds: kinds,
            ..Default::default()
        };
        if let Err(e) = send_with_fds(&conn, &frame(&response), &fds) {
            // The client is gone: a stdin it would have used up stays the container's.
            if once && let Some(at) = stdin_at {
                c.stdin = Some(fds.swap_remove(at));
            }
            return Err(AgentError::at_io("answering an attach")(e));
        }
        drop(fds);
        let _ = conn.set_nonblocking(true);
        c.attachers.push(Attacher {
            token,
            conn,
            stdout: ours.0,
            stderr: ours.1,
        });
        Ok(())
    }

    /// A client that closed its connection (or whose connection failed) gets nothing more:
    /// its exec'd command is killed, its attachment ends.
    fn drop_if_gone(&mut self, token: u64, revents: PollFlags) {
        let hung_up = |conn: &UnixStream| {
            revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) || connection_closed(conn)
        };
        if let Some(i) = self.execs.iter().position(|e| e.token == token) {
            if hung_up(&self.execs[i].conn) {
                let e = self.execs.swap_remove(i);
                // Once reaped, its pid (and group) may belong to someone else.
                if e.exit_code.is_none() {
                    kill_session(e.pid);
                }
            }
            return;
        }
        if let Some(i) = self.streams.iter().position(|s| s.token == token) {
            if hung_up(&self.streams[i].conn) {
                // Still running: a stream leaves as soon as its command is reaped.
                kill_session(self.streams.swap_remove(i).pid);
            }
            return;
        }
        if let Some(i) = self.watchers.iter().position(|w| w.token == token) {
            if hung_up(&self.watchers[i].conn) {
                self.watchers.swap_remove(i);
            }
            return;
        }
        for c in self.containers.values_mut() {
            if let Some(i) = c.attachers.iter().position(|a| a.token == token) {
                if hung_up(&c.attachers[i].conn) {
                    c.attachers.swap_remove(i);
                }
                return;
            }
        }
    }

    fn start_exec(
        &mut self,
        exec: super::proto::ExecSync,
        conn: UnixStream,
    ) -> Result<(), (AgentError, UnixStream)> {
        let Some(container) = self.containers.get(&exec.id).filter(|c| c.running()) else {
            return Err((AgentError::NotRunning(exec.id), conn));
        };
        match spawn::exec(container.host_pid, &exec) {
            Ok(started) => {
                // Watched for the daemon giving up (its poll needs it non-blocking).
                let _ = conn.set_nonblocking(true);
                let token = self.token();
                self.execs.push(ExecSession {
                    token,
                    pid: started.pid,
                    conn,
                    outputs: vec![(started.stdout, Stream::Stdout)]
                        .into_iter()
                        .chain(started.stderr.map(|fd| (fd, Stream::Stderr)))
                        .collect(),
                    stdout: vec![],
                    stderr: vec![],
                    // A deadline too far to represent is no deadline.
                    deadline: (exec.timeout_ms > 0)
                        .then(|| Instant::now().checked_add(Duration::from_millis(exec.timeout_ms)))
                        .flatten(),
                    exit_code: None,
                    timed_out: false,
                    drain_until: None,
                });
                Ok(())
            }
            Err(e) => Err((e, conn)),
        }
    }

    /// Takes the pending signals; true when one ends the pod (SIGCHLD is for `reap`).
    fn read_signals(&mut self) -> bool {
        let mut end = false;
        while let Ok(Some(info)) = self.signals.read_signal() {
            let signal = info.ssi_signo as i32;
            if super::pid_one::ends_the_pod(signal, info.ssi_pid, self.pid_one) {
                eprintln!(
                    "crius pod-agent: signal {signal} from pid {}: ending the pod",
                    info.ssi_pid
                );
                end = true;
            }
        }
        end
    }

    /// Reaps every exited child: containers get their exit recorded, exec sessions their code.
    /// As PID 1 of the pod's namespace that includes every orphan of the pod.
    fn reap(&mut self, buf: &mut [u8]) {
        let mut exited = Vec::new();
        let mut attachers_done = Vec::new();
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => status,
            };
            let (pid, exit_code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, code, 0),
                WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32, sig as i32),
                _ => continue,
            };
            if let Some((id, c)) = self
                .containers
                .iter_mut()
                .find(|(_, c)| c.pid == pid && c.running())
            {
                // Whatever the process wrote before it died belongs in the log before the
                // exit is visible.
                for oi in 0..c.outputs.len() {
                    pump_container(c, oi, buf);
                }
                let exit = ExitStatus {
                    exit_code,
                    signal,
                    finished_at: now_ns(),
                    oom_killed: oom_killed(&c.oom_file, c.parent_ooms),
                };
                if let Err(e) = write_exit_file(&c.exit_file, &exit) {
                    eprintln!("crius pod-agent: recording the exit of pid {pid}: {e}");
                }
                c.exit = Some(exit);
                exited.push(id.clone());
                // Their pipes close as they go: the output ends here for them. They hear of
                // the end after the daemon's watch does.
                attachers_done.extend(c.attachers.drain(..).map(|a| (a, exit_code)));
            } else if let Some(e) = self.execs.iter_mut().find(|e| e.pid == pid) {
                e.exit_code = Some(exit_code);
                e.drain_until = Some(Instant::now() + EXEC_DRAIN_GRACE);
            } else if let Some(i) = self.streams.iter().position(|s| s.pid == pid) {
                let s = self.streams.swap_remove(i);
                answer_nowait(
                    &s.conn,
                    &Response {
                        exit_code,
                        ..Default::default()
                    },
                );
            }
        }
        for id in exited {
            self.notify(&id);
        }
        for (a, exit_code) in attachers_done {
            answer_nowait(
                &a.conn,
                &Response {
                    exit_code,
                    ..Default::default()
                },
            );
        }
    }

    /// Kills exec'd commands past their timeout; answers the sessions that are done.
    fn finish_execs(&mut self) {
        let now = Instant::now();
        for e in &mut self.execs {
            if e.exit_code.is_none() && e.deadline.is_some_and(|d| now >= d) && !e.timed_out {
                kill_session(e.pid);
                e.timed_out = true;
            }
        }
        let mut i = 0;
        while i < self.execs.len() {
            let e = &self.execs[i];
            let done = e.exit_code.is_some()
                && (e.outputs.is_empty() || e.drain_until.is_some_and(|d| now >= d));
            if !done {
                i += 1;
                continue;
            }
            let mut e = self.execs.swap_remove(i);
            let response = Response {
                stdout: std::mem::take(&mut e.stdout),
                stderr: std::mem::take(&mut e.stderr),
                exit_code: e.exit_code.unwrap_or(-1),
                timed_out: e.timed_out,
                ..self.identity()
            };
            let _ = e.conn.set_nonblocking(false);
            if let Err(err) = e.conn.write_all(&frame(&response)) {
                eprintln!("crius pod-agent: answering an exec: {err}");
            }
        }
    }

    /// The pod goes: every container is killed (their namespaces end with them).
    fn shut_down(&mut self) {
        // Nothing the daemon started in the pod outlives it; nobody waits for an answer that
        // will not come.
        for s in self.streams.drain(..) {
            kill_session(s.pid);
            answer_nowait(&s.conn, &AgentError::ShuttingDown.to_response());
        }
        for e in self.execs.drain(..) {
            if e.exit_code.is_none() {
                kill_session(e.pid);
            }
        }
        for c in self.containers.values_mut() {
            for a in c.attachers.drain(..) {
                answer_nowait(&a.conn, &AgentError::ShuttingDown.to_response());
            }
        }
        for c in self.containers.values().filter(|c| c.running()) {
            let _ = nix::sys::signal::kill(c.pid, Signal::SIGKILL);
        }
        for held in self.held.values() {
            let _ = nix::sys::signal::kill(held.forked.pid, Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 64 * 1024];
        while self.containers.values().any(|c| c.running()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            self.reap(&mut buf);
        }
        // As PID 1, our exit SIGKILLs whatever else is left in the pod's namespace and
        // returns once it is all gone: the pod is gone when Stop answers.
    }
}

fn read_request(conn: &mut UnixStream) -> Result<Request, AgentError> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)
        .map_err(AgentError::at_io("reading a request"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_REQUEST {
        return Err(AgentError::Protocol(format!(
            "a request of {len} bytes is over the limit of {MAX_REQUEST}"
        )));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)
        .map_err(AgentError::at_io("reading a request"))?;
    Request::decode(&body[..]).map_err(|e| AgentError::Protocol(format!("bad request: {e}")))
}

/// Reads what is available on one output of a container into its log; false at EOF.
fn pump_container(c: &mut Container, oi: usize, buf: &mut [u8]) -> bool {
    let Some((fd, stream)) = c.outputs.get(oi) else {
        return true;
    };
    let stream = *stream;
    loop {
        match nix::unistd::read(fd.as_fd(), buf) {
            Ok(0) => return false,
            Ok(n) => {
                c.log.write(stream, &buf[..n]);
                fan_out(&mut c.attachers, stream, &buf[..n]);
            }
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            // EIO: the tty's other side is closed.
            Err(_) => return false,
        }
    }
}

/// SIGKILLs a command the agent started with setsid: its process group (whatever it started in
/// the background) and itself.
fn kill_session(pid: Pid) {
    let _ = nix::sys::signal::kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
}

/// Answers a stream request that failed before it started: an error and no descriptors.
fn answer_error(mut conn: UnixStream, error: AgentError) -> Result<(), AgentError> {
    conn.write_all(&frame(&error.to_response()))
        .map_err(AgentError::at_io("answering"))
}

/// Reads what is available on one output of an exec session; false at EOF.
fn pump_exec(e: &mut ExecSession, oi: usize, buf: &mut [u8]) -> bool {
    let Some((fd, stream)) = e.outputs.get(oi) else {
        return true;
    };
    let stream = *stream;
    loop {
        match nix::unistd::read(fd.as_fd(), buf) {
            Ok(0) => return false,
            Ok(n) => {
                let room = EXEC_OUTPUT_CAP.saturating_sub(e.stdout.len() + e.stderr.len());
                let target = match stream {
                    Stream::Stdout => &mut e.stdout,
                    Stream::Stderr => &mut e.stderr,
                };
                target.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Whether the container's cgroup saw an OOM kill: `oom_kill N` (v1's memory.oom_control and
/// v2's memory.events), or on v2 `oom N`, which the kernel counts before its OOM killer picks
/// and kills a victim, while `oom_kill` moves only after the kill signal is sent: the victim
/// can die and be reaped before that.
///
/// Under the systemd driver systemd removes a container's scope, and with it the file, as soon
/// as its last process has died, which can be before the agent reaps it. Then the parent's
/// hierarchical count tells, if it moved since the container started.
fn oom_killed(oom_file: &str, parent_ooms_at_start: Option<u64>) -> bool {
    if oom_file.is_empty() {
        return false;
    }
    match std::fs::read_to_string(oom_file) {
        Ok(text) => counts_an_oom(&text),
        Err(_) => parent_ooms_at_start
            .zip(parent_ooms(oom_file))
            .is_some_and(|(before, now)| now > before),
    }
}

/// v2's `oom` count in the memory.events of the parent of `oom_file`'s cgroup.
fn parent_ooms(oom_file: &str) -> Option<u64> {
    let file = std::path::Path::new(oom_file);
    if file.file_name()? != "memory.events" {
        return None;
    }
    let parent = file.parent()?.parent()?.join("memory.events");
    let text = std::fs::read_to_string(parent).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom "))
        .and_then(|n| n.trim().parse().ok())
}

fn counts_an_oom(text: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("oom_kill ")
            .or_else(|| l.strip_prefix("oom "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// Written to a temporary name and renamed, so a reader never sees half a file.
fn write_exit_file(path: &std::path::Path, exit: &ExitStatus) -> std::io::Result<()> {
    let json = serde_json::to_vec(exit).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Sets IFF_UP on `lo` in this process's network namespace.
fn loopback_up() -> std::io::Result<()> {
    // lo is down, so binding 127.0.0.1 may fail; any datagram socket serves for the ioctl.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value for it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req` into `req`, which
    // lives for the whole call; the fd is a valid socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the flags member of the union is the one that is set.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{counts_an_oom, oom_killed};

    #[test]
    fn an_oom_counts_from_either_counter() {
        let v2 = |oom: u32, kill: u32| {
            format!("low 0\nhigh 0\nmax 3\noom {oom}\noom_kill {kill}\noom_group_kill 0\n")
        };
        assert!(!counts_an_oom(&v2(0, 0)));
        assert!(counts_an_oom(&v2(1, 0)), "counted before the kill");
        assert!(counts_an_oom(&v2(1, 1)));
        let v1 = |kill: u32| format!("oom_kill_disable 0\nunder_oom 0\noom_kill {kill}\n");
        assert!(!counts_an_oom(&v1(0)));
        assert!(counts_an_oom(&v1(2)));
    }

    #[test]
    fn a_removed_cgroup_falls_back_to_its_parents_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.events"), "oom 3\noom_kill 3\n").unwrap();
        let gone = dir.path().join("c.scope/memory.events");
        let gone = gone.to_str().unwrap();
        assert!(oom_killed(gone, Some(2)), "the parent counted one more");
        assert!(
            !oom_killed(gone, Some(3)),
            "the parent's count did not move"
        );
        assert!(!oom_killed(gone, None), "nothing was read at the start");
        std::fs::create_dir(dir.path().join("c.scope")).unwrap();
        std::fs::write(gone, "oom 0\noom_kill 0\n").unwrap();
        assert!(
            !oom_killed(gone, Some(2)),
            "the container's own file decides"
        );
    }
}
