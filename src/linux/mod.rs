//! The only place with the raw syscalls that build a container: spawning into namespaces, the
//! root filesystem and its mounts, devices, credentials, capabilities and seccomp. Everything
//! here runs in a freshly forked child of the single-threaded pod agent.

pub mod init;
pub mod path;
pub mod rootfs;
pub mod seccomp;
pub mod security;
pub mod trim;
pub mod userns;

use nix::errno::Errno;

/// Why a forked child could not become the container's process (or the exec'd command): what
/// failed, and the errno behind it when there is one, so the daemon can answer with the right
/// gRPC code (a missing executable is the caller's, a failed fork is ours).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SetupError {
    pub message: String,
    pub errno: Option<Errno>,
}

impl SetupError {
    /// A failed system call: `context` says what was being done.
    pub fn os(context: impl std::fmt::Display, errno: Errno) -> SetupError {
        SetupError {
            message: format!("{context}: {errno}"),
            errno: Some(errno),
        }
    }

    /// A failed I/O operation: its errno is kept when the error came from the kernel.
    pub fn io(context: impl std::fmt::Display, error: std::io::Error) -> SetupError {
        SetupError {
            message: format!("{context}: {error}"),
            errno: error.raw_os_error().map(Errno::from_raw),
        }
    }

    /// `.map_err(SetupError::at("mounting x"))` for nix calls.
    pub fn at(context: impl std::fmt::Display) -> impl FnOnce(Errno) -> SetupError {
        move |errno| SetupError::os(context, errno)
    }

    /// `.map_err(SetupError::at_io("reading x"))` for std I/O calls.
    pub fn at_io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> SetupError {
        move |error| SetupError::io(context, error)
    }
}

/// A failure with no errno behind it (a bad spec, a protocol problem).
impl From<String> for SetupError {
    fn from(message: String) -> SetupError {
        SetupError {
            message,
            errno: None,
        }
    }
}
