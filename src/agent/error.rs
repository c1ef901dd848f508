//! The pod agent's typed errors, and how they travel to the daemon: the message, an error kind
//! and the errno behind it (Response.error, error_kind, errno), so the daemon answers a missing
//! executable as the caller's mistake and a failed fork as its own.

use nix::errno::Errno;

use super::proto::{ErrorKind, Response};
use crate::linux::SetupError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("container {0} is not running in this pod")]
    NotRunning(String),
    #[error("container {0} was started already")]
    AlreadyStarted(String),
    #[error("container {0} is not held for a release")]
    NotHeld(String),
    /// A forked child could not become the container's process or the exec'd command, or a
    /// step of the agent's own failed with the same kind of cause.
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("{context}: {errno}")]
    Os { context: String, errno: Errno },
    /// A request the agent cannot read or serve as sent.
    #[error("{0}")]
    Protocol(String),
    #[error("the pod agent is shutting down")]
    ShuttingDown,
}

impl AgentError {
    /// `.map_err(AgentError::at("pipe"))` for nix calls.
    pub fn at(context: impl Into<String>) -> impl FnOnce(Errno) -> AgentError {
        let context = context.into();
        move |errno| AgentError::Os { context, errno }
    }

    /// `.map_err(AgentError::at_io("opening x"))` for std I/O calls.
    pub fn at_io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> AgentError {
        move |error| AgentError::Setup(SetupError::io(context, error))
    }

    fn errno(&self) -> Option<Errno> {
        match self {
            AgentError::Setup(e) => e.errno,
            AgentError::Os { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::NotRunning(_) | AgentError::NotHeld(_) => ErrorKind::FailedPrecondition,
            AgentError::AlreadyStarted(_) => ErrorKind::AlreadyStarted,
            AgentError::ShuttingDown => ErrorKind::FailedPrecondition,
            AgentError::Protocol(_) => ErrorKind::InvalidArgument,
            AgentError::Setup(_) | AgentError::Os { .. } => {
                self.errno().map_or(ErrorKind::Internal, kind_of_errno)
            }
        }
    }

    /// The answer that carries this error.
    pub fn to_response(&self) -> Response {
        Response {
            error: self.to_string(),
            error_kind: self.kind() as i32,
            errno: self.errno().map_or(0, |e| e as i32),
            ..Default::default()
        }
    }
}

/// Whose failure an errno is: the caller's (a path or program that is not there, not allowed,
/// or not usable as asked), the host's resources, or ours.
pub fn kind_of_errno(errno: Errno) -> ErrorKind {
    match errno {
        Errno::ENOENT | Errno::ENOTDIR => ErrorKind::NotFound,
        Errno::EACCES | Errno::EPERM => ErrorKind::PermissionDenied,
        Errno::E2BIG
        | Errno::EINVAL
        | Errno::ENAMETOOLONG
        | Errno::ELOOP
        | Errno::ENOEXEC
        | Errno::EISDIR
        | Errno::ETXTBSY => ErrorKind::InvalidArgument,
        Errno::ENOMEM
        | Errno::EAGAIN
        | Errno::EMFILE
        | Errno::ENFILE
        | Errno::ENOSPC
        | Errno::EDQUOT => ErrorKind::ResourceExhausted,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_kind_and_errno() {
        let missing = AgentError::Setup(SetupError {
            message: "exec: \"nope\": executable file not found in $PATH".into(),
            errno: Some(Errno::ENOENT),
        });
        let r = missing.to_response();
        assert_eq!(r.error_kind, ErrorKind::NotFound as i32);
        assert_eq!(r.errno, libc::ENOENT);
        assert!(r.error.contains("nope"));
        let r = AgentError::AlreadyStarted("c1".into()).to_response();
        assert_eq!(r.error_kind, ErrorKind::AlreadyStarted as i32);
        assert_eq!(r.errno, 0);
        let r = AgentError::at("clone")(Errno::EAGAIN).to_response();
        assert_eq!(r.error_kind, ErrorKind::ResourceExhausted as i32);
        let r = AgentError::Setup(SetupError::from("odd".to_string())).to_response();
        assert_eq!(r.error_kind, ErrorKind::Internal as i32);
    }
}
