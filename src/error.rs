//! The daemon's typed errors. Each variant says which object failed and why; `server::errors`
//! is the one place where they become gRPC status codes.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{method} is not implemented by crius yet")]
    Unimplemented { method: &'static str },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Content that does not match its digest or size.
    #[error("{0}")]
    DataLoss(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A pod agent could not be reached, or answered with an error of its own (whose kind
    /// decides the gRPC code).
    #[error("{context}: {source}")]
    Agent {
        context: String,
        source: crate::agent::client::CallError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Wraps a failed agent call with what was being done: `.map_err(agent_error("starting x"))`.
pub fn agent_error(
    context: impl Into<String>,
) -> impl FnOnce(crate::agent::client::CallError) -> Error {
    let context = context.into();
    move |source| Error::Agent { context, source }
}

/// Wraps an I/O error with what was being done: `.map_err(io_error("creating x"))`.
pub fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
