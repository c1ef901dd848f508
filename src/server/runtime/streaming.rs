//! Exec, Attach and PortForward: each checks its request and hands out a single-use URL on the
//! streaming server; the streaming server later runs it through [`StreamBackend`].

use std::sync::Arc;

use crate::cri;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::container::streams::ExecOptions;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::streaming::channels::{ExecIo, ForwardRequest};
use crate::streaming::server::Backend;
use crate::streaming::tokens::{StreamRequest, TokenError};

pub async fn exec(ctx: &Context, req: cri::ExecRequest) -> Result<cri::ExecResponse> {
    if req.cmd.is_empty() {
        return Err(Error::invalid(
            "cmd",
            format!("exec in container {}: no command given", req.container_id),
        ));
    }
    crate::container::validate::exec_command("cmd", &req.cmd)?;
    check_stdio(req.tty, req.stdin, req.stdout, req.stderr)?;
    ctx.containers.require_running(&req.container_id)?;
    let url = issue(
        ctx,
        StreamRequest::Exec {
            container_id: req.container_id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        },
    )?;
    Ok(cri::ExecResponse { url })
}

pub async fn attach(ctx: &Context, req: cri::AttachRequest) -> Result<cri::AttachResponse> {
    check_stdio(req.tty, req.stdin, req.stdout, req.stderr)?;
    ctx.containers.require_running(&req.container_id)?;
    let url = issue(
        ctx,
        StreamRequest::Attach {
            container_id: req.container_id,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        },
    )?;
    Ok(cri::AttachResponse { url })
}

pub async fn port_forward(
    ctx: &Context,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse> {
    let ports =
        req.port
            .iter()
            .map(|&p| {
                u16::try_from(p).ok().filter(|&p| p > 0).ok_or_else(|| {
                    Error::invalid("port", format!("{p} is not a TCP port (1-65535)"))
                })
            })
            .collect::<Result<Vec<u16>>>()?;
    ctx.sandboxes.require_ready(&req.pod_sandbox_id)?;
    let url = issue(
        ctx,
        StreamRequest::PortForward {
            pod_id: req.pod_sandbox_id,
            ports,
        },
    )?;
    Ok(cri::PortForwardResponse { url })
}

/// As Kubernetes' streaming server validates exec and attach requests.
fn check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<()> {
    if tty && stderr {
        return Err(Error::invalid(
            "tty",
            "tty and stderr cannot both be true (a terminal merges stderr into stdout)",
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::invalid(
            "stdin",
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    Ok(())
}

fn issue(ctx: &Context, request: StreamRequest) -> Result<String> {
    ctx.streaming.url_for(request).map_err(|e| match e {
        TokenError::Full { .. } => Error::ResourceExhausted(e.to_string()),
        TokenError::Random => Error::Internal(e.to_string()),
    })
}

/// Runs what the streaming server's URLs stand for, against the daemon's state.
pub struct StreamBackend {
    pub ctx: Arc<Context>,
}

impl Backend for StreamBackend {
    fn exec_or_attach(&self, request: StreamRequest, io: ExecIo) -> BoxFuture<'static, ()> {
        let ctx = self.ctx.clone();
        async move {
            match request {
                StreamRequest::Exec {
                    container_id,
                    cmd,
                    tty,
                    stdin,
                    stdout,
                    stderr,
                } => {
                    let options = ExecOptions {
                        cmd,
                        tty,
                        stdin,
                        stdout,
                        stderr,
                    };
                    ctx.containers
                        .exec_streaming(&ctx.sandboxes, &container_id, options, io)
                        .await
                }
                StreamRequest::Attach {
                    container_id,
                    tty,
                    stdin,
                    stdout,
                    stderr,
                } => {
                    ctx.containers
                        .attach_streaming(
                            &ctx.sandboxes,
                            &container_id,
                            tty,
                            stdin,
                            stdout,
                            stderr,
                            io,
                        )
                        .await
                }
                StreamRequest::PortForward { .. } => {}
            }
        }
        .boxed()
    }

    fn port_forward(
        &self,
        pod_id: String,
        requests: mpsc::Receiver<ForwardRequest>,
    ) -> BoxFuture<'static, ()> {
        let ctx = self.ctx.clone();
        async move { ctx.sandboxes.port_forward(&pod_id, requests).await }.boxed()
    }
}
