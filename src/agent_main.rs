//! `crius-agent`: the pod agent, a binary of its own so that each pod's resident process maps
//! only what the agent needs (no async runtime, gRPC, TLS, SQLite or registry code). The
//! daemon starts it; it is not meant to be run by hand.
//!
//! Usage: `crius-agent --socket PATH [--hostname NAME] [--loopback] [--pid-init]
//! [--uid-map HOST:LENGTH --gid-map HOST:LENGTH] [--sysctl NAME=VALUE]...`, or `crius-agent --version`.

use std::path::PathBuf;
use std::process::ExitCode;

use crius::agent::process::AgentArgs;
use crius::linux::userns::{IdRange, PodMappings};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--version") {
        println!("{}", crius::agent::VERSION_LINE);
        return ExitCode::SUCCESS;
    }
    let agent = match parse(&args) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("crius pod-agent: {e}");
            return ExitCode::from(2);
        }
    };
    match crius::agent::process::run(agent) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crius pod-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The flags the daemon passes (src/sandbox/mod.rs builds them).
fn parse(args: &[String]) -> Result<AgentArgs, String> {
    let mut agent = AgentArgs {
        socket: PathBuf::new(),
        hostname: None,
        loopback: false,
        sysctls: Vec::new(),
        pid_init: false,
        user_namespace: None,
    };
    let (mut uids, mut gids) = (None, None);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--socket" => agent.socket = PathBuf::from(value()?),
            "--hostname" => agent.hostname = Some(value()?),
            "--loopback" => agent.loopback = true,
            "--pid-init" => agent.pid_init = true,
            "--uid-map" => uids = Some(IdRange::parse(&value()?)?),
            "--gid-map" => gids = Some(IdRange::parse(&value()?)?),
            "--sysctl" => {
                let setting = value()?;
                let (name, v) = setting
                    .split_once('=')
                    .ok_or_else(|| format!("--sysctl {setting}: not NAME=VALUE"))?;
                agent.sysctls.push((name.to_string(), v.to_string()));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    agent.user_namespace = match (uids, gids) {
        (Some(uids), Some(gids)) => Some(PodMappings { uids, gids }),
        (None, None) => None,
        _ => return Err("--uid-map and --gid-map go together".into()),
    };
    if agent.socket.as_os_str().is_empty() {
        return Err("--socket is required".into());
    }
    Ok(agent)
}
