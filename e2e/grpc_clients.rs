//! gRPC clients other than grpc-go and tonic: Python's grpcio (gRPC C-core), which sends the
//! percent-encoded socket path as `:authority`, and the same client with grpc-java's authority
//! (the raw socket path). Both are rejected by h2 alone; crius serves them
//! (src/server/authority.rs). The client is e2e/python/cri_client.py, with stubs generated at
//! test time from proto/cri/api.proto.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Daemon, TestNetwork};

/// Where hack/install-deps.sh installs grpcio and grpcio-tools; CRIUS_TEST_PYTHONPATH overrides.
const PYTHON_DIR: &str = "/var/cache/crius-test/python";
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/python/cri_client.py");
const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
/// What the daemon logs (at debug) when it rewrites a connection's authority.
const REWRITE_LOG: &str = "h2 rejects this :authority";

fn python_path() -> String {
    std::env::var("CRIUS_TEST_PYTHONPATH").unwrap_or_else(|_| PYTHON_DIR.to_string())
}

/// The PYTHONPATH with grpcio and grpcio-tools; fails (does not skip) when they are missing.
fn require_grpcio() -> String {
    let python_path = python_path();
    let out = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools; print(grpc.__version__)"])
        .env("PYTHONPATH", &python_path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "Python's grpcio and grpcio-tools are not importable from {python_path}: run \
         `bash hack/install-deps.sh` (it installs them there), or point CRIUS_TEST_PYTHONPATH at \
         a directory that has them.\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    python_path
}

/// Runs the Python client against the daemon; returns its output.
async fn run_client(
    python_path: &str,
    daemon: &Daemon,
    net: &TestNetwork,
    pod: &str,
    authority: Option<&Path>,
) -> String {
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(CLIENT)
        .arg("--socket")
        .arg(daemon.socket())
        .args(["--proto-dir", PROTO_DIR, "--pod-name", pod])
        .args(["--cgroup-parent", &daemon.dir.cgroup_parent(pod)])
        .args(["--subnet-prefix", &net.subnet_prefix])
        .env("PYTHONPATH", python_path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(authority) = authority {
        command.arg("--authority").arg(authority);
    }
    let child = command.spawn().expect("spawn python3");
    let out = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the Python client did not finish within {CLIENT_TIMEOUT:?}"))
        .expect("wait for python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the Python client failed ({}):\n{stdout}\n{}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        daemon.dir.log()
    );
    println!("{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_default_channel_drives_the_cri() {
    let python_path = require_grpcio();
    let daemon = Daemon::start("").await;
    let net = daemon.dir.write_bridge_cni_config();
    let out = run_client(&python_path, &daemon, &net, "py-default", None).await;
    assert!(out.contains("authority (default)"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
    // C-core's authority is the socket path, percent-encoded.
    let log = daemon.dir.log();
    let rewritten: Vec<&str> = log.lines().filter(|l| l.contains(REWRITE_LOG)).collect();
    assert!(
        rewritten.iter().any(|l| l.contains("%2Fcrius.sock")),
        "no rewrite of a percent-encoded authority logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_with_grpc_javas_authority_drives_the_cri() {
    let python_path = require_grpcio();
    let daemon = Daemon::start("").await;
    let net = daemon.dir.write_bridge_cni_config();
    let socket = daemon.socket();
    let out = run_client(&python_path, &daemon, &net, "py-java", Some(&socket)).await;
    assert!(out.trim_end().ends_with("ok"), "{out}");
    let log = daemon.dir.log();
    let expected = format!("authority={}", socket.display());
    assert!(
        log.lines()
            .any(|l| l.contains(REWRITE_LOG) && l.contains(&expected)),
        "no rewrite of the raw-path authority logged:\n{log}"
    );
}
