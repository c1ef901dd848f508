//! The agent process itself (`crius pod-agent`). Single-threaded and blocking on purpose: it
//! will fork container processes, which only a single-threaded process may safely do.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use prost::Message;

use super::proto::{Request, Response, request};
use super::{MAX_FRAME, frame};

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
    /// The agent was started after unshare(CLONE_NEWPID): start the namespace's PID 1.
    pub pid_init: bool,
}

/// Runs the agent until it is told to shut down. Errors before serving are fatal: the daemon
/// sees the agent exit and reports why from its log.
pub fn run(args: AgentArgs) -> Result<(), String> {
    if let Some(hostname) = &args.hostname {
        nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))?;
    }
    if args.loopback {
        loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    }
    for (name, value) in &args.sysctls {
        let path = crate::sandbox::sysctl::proc_path(name);
        std::fs::write(&path, value).map_err(|e| format!("sysctl {name}={value}: {e}"))?;
    }
    // Containers will be our children; orphans of theirs come back to us to be reaped.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(format!(
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        ));
    }
    let pid_init = if args.pid_init {
        Some(start_pid_init()?)
    } else {
        None
    };
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .map_err(|e| format!("binding {}: {e}", args.socket.display()))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        match serve(&mut conn, pid_init) {
            Ok(true) => {
                let _ = std::fs::remove_file(&args.socket);
                if let Some(init) = pid_init {
                    // The namespace ends with its PID 1, and every process in it with it.
                    let _ = nix::sys::signal::kill(init, nix::sys::signal::Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(init, None);
                }
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => eprintln!("crius pod-agent: {e}"),
        }
    }
    Ok(())
}

/// Forks PID 1 of the pod's PID namespace: it only reaps what is reparented to it, for as long
/// as the pod lives.
fn start_pid_init() -> Result<nix::unistd::Pid, String> {
    use nix::unistd::{ForkResult, fork};
    // SAFETY: the agent is single-threaded, so the child may run any code after fork; it only
    // waits for children and never returns into the agent's code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => loop {
            if let Err(nix::errno::Errno::ECHILD) = nix::sys::wait::wait() {
                nix::unistd::pause();
            }
        },
        Ok(ForkResult::Parent { child }) => Ok(child),
        Err(e) => Err(format!("starting the pod's PID 1: {e}")),
    }
}

/// Answers one request; Ok(true) when it was Shutdown.
fn serve(conn: &mut UnixStream, pid_init: Option<nix::unistd::Pid>) -> Result<bool, String> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)
        .map_err(|e| format!("reading a request: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!("request of {len} bytes refused"));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)
        .map_err(|e| format!("reading a request: {e}"))?;
    let request = Request::decode(&body[..]).map_err(|e| format!("bad request: {e}"))?;
    let mut response = Response {
        error: String::new(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid_init: pid_init.map_or(0, |p| p.as_raw() as u32),
    };
    let shutdown = match request.kind {
        Some(request::Kind::Ping(_)) => false,
        Some(request::Kind::Shutdown(_)) => true,
        None => {
            response.error = "empty request".to_string();
            false
        }
    };
    conn.write_all(&frame(&response))
        .map_err(|e| format!("answering: {e}"))?;
    Ok(shutdown)
}

/// Sets IFF_UP on `lo` in this process's network namespace.
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
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
