//! The one place where crius errors become gRPC status codes.

use tonic::{Code, Status};

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
            Error::Store(_) | Error::Io { .. } | Error::Internal(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
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
        let s: Status = Error::invalid("runtime_config.network_config.pod_cidr", "bad").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("pod_cidr"));
    }
}
