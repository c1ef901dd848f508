//! Streaming exec and attach: the pod agent starts the command (or finds the container) and
//! hands its stdio descriptors to the daemon, which copies them to and from the client's
//! channels. The agent keeps the process's lifetime: closing our connection to it kills an
//! exec'd command, so a client that leaves leaves nothing behind.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Containers;
use crate::agent::client::{StreamEnd, StreamedProcess};
use crate::agent::{self, proto};
use crate::cgroups;
use crate::error::agent_error;
use crate::sandbox::Sandboxes;
use crate::streaming::channels::{ExecIo, ExitReport};
use crate::streaming::session::{TerminalSize, exec_failure_message};

/// After the command exits, how long output still held open (by a background child that
/// inherited it) may keep the session waiting.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Bytes read from a process's output at a time.
const READ_CHUNK: usize = 32 * 1024;

/// What a streaming exec asks for.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Containers {
    /// Runs `options.cmd` in the container, serving its stdio over `io` until it exits or the
    /// client leaves.
    pub async fn exec_streaming(
        &self,
        sandboxes: &Sandboxes,
        id: &str,
        options: ExecOptions,
        io: ExecIo,
    ) {
        let started = async {
            let record = self.require_running(id)?;
            let request = proto::ExecStream {
                id: record.id.clone(),
                bundle: self.bundle(&record.id).to_string_lossy().into_owned(),
                cmd: options.cmd.clone(),
                cgroup_procs: cgroups::container::procs_files(self.cgroup_version, &record.cgroup),
                tty: options.tty,
                stdin: options.stdin,
                stdout: options.stdout,
                stderr: options.stderr && !options.tty,
            };
            let socket = sandboxes.agent_socket(&record.sandbox_id);
            agent::client::exec_stream(&socket, request)
                .await
                .map_err(agent_error(format!("exec in container {}", record.id)))
        };
        let process = match started.await {
            Ok(process) => process,
            Err(e) => {
                tracing::info!(error = %e, "exec could not start");
                let _ = io.done.send(ExitReport::failed(e.to_string()));
                return;
            }
        };
        let cmd = options.cmd;
        serve(process, io, async move |answer| match answer {
            Ok(exit) => ExitReport {
                code: Some(exit.exit_code),
                message: exec_failure_message(&cmd, exit.exit_code),
            },
            Err(e) => ExitReport::failed(e),
        })
        .await;
    }

    /// Attaches the client to the running container's stdio (held by the pod agent) until
    /// the container exits or the client leaves.
    #[allow(clippy::too_many_arguments)]
    pub async fn attach_streaming(
        &self,
        sandboxes: &Sandboxes,
        id: &str,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        io: ExecIo,
    ) {
        let started = async {
            let record = self.require_running(id)?;
            // The container's own terminal setting decides what its stdio is.
            let has_tty = record.config.tty;
            let request = proto::Attach {
                id: record.id.clone(),
                stdin: stdin && record.config.stdin,
                stdout,
                stderr: stderr && !has_tty,
            };
            if tty != has_tty {
                tracing::debug!(tty, has_tty, "attach tty differs from the container's");
            }
            let socket = sandboxes.agent_socket(&record.sandbox_id);
            agent::client::attach(&socket, request)
                .await
                .map_err(agent_error(format!("attach to container {}", record.id)))
        };
        let process = match started.await {
            Ok(process) => process,
            Err(e) => {
                tracing::info!(error = %e, "attach failed");
                let _ = io.done.send(ExitReport::failed(e.to_string()));
                return;
            }
        };
        serve(process, io, async |answer| match answer {
            // The container ended: the attach is over, successfully, once the exit is on
            // record (a client that asks for the container's status next sees it exited).
            Ok(_) => {
                self.await_exit_recorded(id).await;
                ExitReport::success()
            }
            Err(e) => ExitReport::failed(e),
        })
        .await;
    }
}

/// Copies between the process's descriptors and the client's channels. Ends when the agent
/// gives its final answer and the output is drained, or at once when the client leaves
/// (dropping the agent connection then ends an exec'd command).
async fn serve(
    process: StreamedProcess,
    io: ExecIo,
    report: impl AsyncFnOnce(std::result::Result<agent::proto::Response, String>) -> ExitReport,
) {
    let StreamedProcess {
        stdin,
        stdout,
        stderr,
        terminal,
        end,
    } = process;
    let ExecIo {
        stdin: client_stdin,
        stdout: client_stdout,
        stderr: client_stderr,
        resize,
        done,
        client_gone,
    } = io;
    let mut outputs = JoinSet::new();
    for (fd, tx) in [(stdout, client_stdout), (stderr, client_stderr)] {
        match (fd, tx) {
            (Some(fd), Some(tx)) => {
                outputs.spawn(copy_out(fd, tx));
            }
            // Output nobody reads is still drained, so the process never blocks on it.
            (Some(fd), None) => {
                let (tx, mut rx) = mpsc::channel(1);
                outputs.spawn(copy_out(fd, tx));
                outputs.spawn(async move { while rx.recv().await.is_some() {} });
            }
            _ => {}
        }
    }
    let mut inputs = JoinSet::new();
    if let (Some(fd), Some(rx)) = (stdin, client_stdin) {
        inputs.spawn(copy_in(rx, fd));
    }
    if let (Some(fd), Some(rx)) = (terminal, resize) {
        inputs.spawn(apply_resizes(rx, fd));
    }
    let finished = async {
        let answer = wait_end(end).await;
        // Output written just before the exit is still in the pipes: let it through.
        let drained = async { while outputs.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
            tracing::debug!("output still held open after the exit; closing it");
        }
        answer
    };
    tokio::select! {
        answer = finished => {
            outputs.abort_all();
            inputs.abort_all();
            let _ = done.send(report(answer).await);
        }
        _ = client_gone => {
            tracing::info!("the client left; ending the session");
            outputs.abort_all();
            inputs.abort_all();
        }
    }
}

async fn wait_end(end: StreamEnd) -> std::result::Result<agent::proto::Response, String> {
    end.wait().await.map_err(|e| e.to_string())
}

fn register(fd: OwnedFd) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and names the same
    // file for as long as it is registered, and OwnedFd's as_raw_fd never changes.
    unsafe { AsyncFd::register(fd) }.ok()
}

/// Reads `fd` until EOF (or EIO: a terminal whose other side closed) into `tx`.
async fn copy_out(fd: OwnedFd, tx: mpsc::Sender<Bytes>) {
    let Some(fd) = register(fd) else {
        return;
    };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return;
        };
        match ready.try_io(|fd| {
            nix::unistd::read(fd.get_ref().as_fd(), &mut buf).map_err(std::io::Error::from)
        }) {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return,
            Err(_would_block) => {}
        }
    }
}

/// Writes the client's input to `fd`; closing `fd` at the client's EOF gives the process EOF.
async fn copy_in(mut rx: mpsc::Receiver<Bytes>, fd: OwnedFd) {
    let Some(fd) = register(fd) else {
        return;
    };
    while let Some(mut chunk) = rx.recv().await {
        while !chunk.is_empty() {
            let Ok(mut ready) = fd.writable().await else {
                return;
            };
            match ready
                .try_io(|fd| nix::unistd::write(fd.get_ref(), &chunk).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => {
                    let _ = chunk.split_to(n);
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // The process closed its stdin: nothing more can go in.
                Ok(Err(_)) => return,
                Err(_would_block) => {}
            }
        }
    }
}

/// Sets each size the client sends on the terminal.
async fn apply_resizes(mut rx: mpsc::Receiver<TerminalSize>, terminal: OwnedFd) {
    while let Some(size) = rx.recv().await {
        if let Err(e) = set_window_size(&terminal, size) {
            tracing::debug!(error = %e, "resizing the terminal");
        }
    }
}

fn set_window_size(terminal: &OwnedFd, size: TerminalSize) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which points at a live local for
    // the whole call; the descriptor is open (we own it).
    let rc = unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
