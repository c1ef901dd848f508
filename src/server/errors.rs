//! The one place where crius errors become gRPC status codes.

use tonic::{Code, Status};

use crate::agent::client::CallError;
use crate::agent::proto::ErrorKind;
use crate::error::Error;

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = match &err {
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unimplemented { .. } => Code::Unimplemented,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::DataLoss(_) => Code::DataLoss,
            Error::Agent { source, .. } => agent_code(source),
            Error::Store(_) | Error::Io { .. } | Error::Internal(_) => Code::Internal,
        };
        Status::new(code, bounded(err.to_string()))
    }
}

/// An agent that is gone or stuck is unavailable (the call may be retried); an error the agent
/// answered has the code of its kind.
fn agent_code(error: &CallError) -> Code {
    match error {
        CallError::Connect { .. } | CallError::Io(_) | CallError::Timeout(_) => Code::Unavailable,
        CallError::Protocol(_) => Code::Internal,
        CallError::Agent { kind, .. } => match kind {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::FailedPrecondition | ErrorKind::AlreadyStarted => Code::FailedPrecondition,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::Internal | ErrorKind::Unspecified => Code::Internal,
        },
    }
}

/// The longest status message sent. It travels in an HTTP/2 header (`grpc-message`), and a
/// message quoting a huge request field would overflow the client's header list limit: the
/// stream would be reset instead of answered.
const MAX_MESSAGE: usize = 4096;

/// `message`, cut to [`MAX_MESSAGE`] bytes at a character boundary, saying how long it was.
fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &message[..end], message.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let s: Status = Error::NotFound {
            kind: "container",
            id: "abc".into(),
        }
        .into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "container \"abc\" not found");
        let s: Status = Error::Unimplemented {
            method: "RunPodSandbox",
        }
        .into();
        assert_eq!(s.code(), Code::Unimplemented);
        assert!(s.message().contains("RunPodSandbox"));
        let s: Status = Error::Agent {
            context: "starting container c1".into(),
            source: CallError::Agent {
                kind: ErrorKind::NotFound,
                errno: libc::ENOENT,
                message: "exec: \"nope\": executable file not found in $PATH".into(),
            },
        }
        .into();
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().starts_with("starting container c1: exec"));
        let s: Status = Error::Agent {
            context: "exec in c1".into(),
            source: CallError::Timeout(std::time::Duration::from_secs(5)),
        }
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        let s: Status = Error::invalid("runtime_config.network_config.pod_cidr", "bad").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("pod_cidr"));
    }

    #[test]
    fn long_messages_are_cut() {
        let s: Status = Error::invalid("runtime_handler", "é".repeat(1 << 20)).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().len() < MAX_MESSAGE + 64,
            "{}",
            s.message().len()
        );
        assert!(s.message().starts_with("invalid runtime_handler: é"));
        assert!(s.message().ends_with("bytes in all)"));
        let short: Status = Error::invalid("x", "y").into();
        assert_eq!(short.message(), "invalid x: y");
    }
}
