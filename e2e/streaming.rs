//! Exec, Attach and PortForward through the daemon: the CRI RPCs hand out URLs, and clients
//! that speak SPDY/3.1 and WebSocket as Kubernetes' own clients do use them.

use std::time::{Duration, Instant};

use crius::cri;

use crate::containers::{Pod, busybox, container_config, remove_all, run, start_pod, status};
use crate::harness::{Daemon, processes_mentioning, wait_gone, wait_running};
use crate::images::pull;
use crate::stream_client::{
    ExecOptions, ExecStatus, SPDY_EXEC_PROTOCOLS, SpdyConnection, parse_url, spdy_exec,
    spdy_exec_on, spdy_over_ws_port_forward, spdy_port_forward, spdy_run, spdy_upgrade_on, ws_exec,
    ws_port_forward, ws_run, ws_run_with,
};

const WAIT: Duration = Duration::from_secs(20);

async fn exec_url(daemon: &Daemon, request: cri::ExecRequest) -> Result<String, tonic::Status> {
    let mut rt = daemon.runtime().await.unwrap();
    rt.exec(request).await.map(|r| r.into_inner().url)
}

async fn attach_url(daemon: &Daemon, request: cri::AttachRequest) -> Result<String, tonic::Status> {
    let mut rt = daemon.runtime().await.unwrap();
    rt.attach(request).await.map(|r| r.into_inner().url)
}

pub(crate) async fn port_forward_url(
    daemon: &Daemon,
    pod_id: &str,
    ports: &[i32],
) -> Result<String, tonic::Status> {
    let mut rt = daemon.runtime().await.unwrap();
    rt.port_forward(cri::PortForwardRequest {
        pod_sandbox_id: pod_id.to_string(),
        port: ports.to_vec(),
    })
    .await
    .map(|r| r.into_inner().url)
}

fn exec_request(id: &str, cmd: &[&str], options: ExecOptions) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: options.tty,
        stdin: options.stdin,
        stdout: options.stdout,
        stderr: options.stderr,
    }
}

fn attach_request(id: &str, options: ExecOptions) -> cri::AttachRequest {
    cri::AttachRequest {
        container_id: id.to_string(),
        tty: options.tty,
        stdin: options.stdin,
        stdout: options.stdout,
        stderr: options.stderr,
    }
}

const PIPES: ExecOptions = ExecOptions {
    stdin: true,
    stdout: true,
    stderr: true,
    tty: false,
};

const TTY: ExecOptions = ExecOptions {
    stdin: true,
    stdout: true,
    stderr: false,
    tty: true,
};

async fn container_state(daemon: &Daemon, id: &str) -> i32 {
    status(daemon, id).await.unwrap().status.unwrap().state
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The daemon's and the pod agent's open descriptors.
fn fds_of(daemon: &Daemon) -> (usize, usize) {
    let agents = daemon.dir.state().join("agents").display().to_string();
    let agent = processes_mentioning(&agents)
        .first()
        .map(|(pid, _)| *pid)
        .expect("the pod agent");
    (open_fds(daemon.pid().as_raw()), open_fds(agent))
}

/// Sessions that ended leave no descriptor behind in the daemon or the agent (each task, pipe
/// and connection holds one).
async fn assert_fds_back_to(daemon: &Daemon, before: (usize, usize)) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = fds_of(daemon);
        // Fewer is fine: the baseline may include a descriptor of work still finishing then.
        if now.0 <= before.0 && now.1 <= before.1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors {before:?} became {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn refused_status(result: Result<impl Sized, crate::stream_client::ClientError>) -> Option<u16> {
    match result {
        Ok(_) => None,
        Err(e) => e.refused_status(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_spdy_and_websocket() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "exec-stream", |_| {}).await;
    let id = run(&daemon, &pod, container_config("idle", &["sleep", "1000"])).await;
    let fds_before = fds_of(&daemon);

    // stdin echoed, then EOF ends `cat`: SPDY v4, WebSocket v5, and the base64 protocol.
    let url = exec_url(&daemon, exec_request(&id, &["cat"], PIPES))
        .await
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let out = spdy_run(&url, PIPES, b"hello over spdy\n", WAIT)
        .await
        .unwrap();
    assert_eq!(out.protocol, "v4.channel.k8s.io");
    assert_eq!(out.stdout_str(), "hello over spdy\n");
    assert_eq!(out.status, ExecStatus::Success);
    let url = exec_url(&daemon, exec_request(&id, &["cat"], PIPES))
        .await
        .unwrap();
    let out = ws_run(&url, PIPES, b"hello over websocket\n", WAIT)
        .await
        .unwrap();
    assert_eq!(out.protocol, "v5.channel.k8s.io");
    assert_eq!(out.stdout_str(), "hello over websocket\n");
    assert_eq!(out.status, ExecStatus::Success);

    // stdout and stderr apart, and the exit code as kubectl reads it.
    let script = ["sh", "-c", "echo out; echo err >&2; exit 3"];
    let no_stdin = ExecOptions {
        stdin: false,
        ..PIPES
    };
    let url = exec_url(&daemon, exec_request(&id, &script, no_stdin))
        .await
        .unwrap();
    let out = spdy_run(&url, no_stdin, b"", WAIT).await.unwrap();
    assert_eq!(
        (out.stdout_str().as_str(), out.stderr_str().as_str()),
        ("out\n", "err\n")
    );
    assert_eq!(out.status, ExecStatus::Exit(3));
    let status: serde_json::Value = serde_json::from_slice(&out.error).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("command terminated with non-zero exit code"),
        "{status}"
    );
    for protocol in ["v5.channel.k8s.io", "v4.base64.channel.k8s.io"] {
        let url = exec_url(&daemon, exec_request(&id, &script, no_stdin))
            .await
            .unwrap();
        let out = ws_run_with(&url, no_stdin, b"", WAIT, &[protocol])
            .await
            .unwrap();
        assert_eq!(out.protocol, protocol);
        assert_eq!(
            (out.stdout_str(), out.stderr_str()),
            ("out\n".into(), "err\n".into())
        );
        assert_eq!(out.status, ExecStatus::Exit(3), "{protocol}");
    }

    // A command that cannot start is a failure on the error stream, not a hang.
    let url = exec_url(&daemon, exec_request(&id, &["no-such-binary"], no_stdin))
        .await
        .unwrap();
    let out = spdy_run(&url, no_stdin, b"", WAIT).await.unwrap();
    match &out.status {
        ExecStatus::Failure(message) => assert!(message.contains("no-such-binary"), "{message}"),
        other => panic!("expected a failure, got {other:?}"),
    }

    // A terminal: its size follows the client's resizes, input is typed in, stderr merged.
    let script = [
        "sh",
        "-c",
        "sleep 0.3; stty size; tty; read line; stty size; echo got-$line >&2; exit 5",
    ];
    let url = exec_url(&daemon, exec_request(&id, &script, TTY))
        .await
        .unwrap();
    let mut exec = spdy_exec(&url, TTY).await.unwrap();
    assert!(exec.stderr.is_none() && exec.resize.is_some());
    exec.resize(100, 30).unwrap();
    let seen = exec.read_stdout_until(b"/dev/pts/", WAIT).await.unwrap();
    assert!(
        String::from_utf8_lossy(&seen).contains("30 100"),
        "{seen:?}"
    );
    exec.resize(120, 40).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    exec.send_stdin(b"typed\n").unwrap();
    let out = exec.wait(WAIT).await.unwrap();
    let text = out.stdout_str();
    assert!(
        text.contains("40 120") && text.contains("got-typed"),
        "{text:?}"
    );
    assert_eq!(out.status, ExecStatus::Exit(5));
    // The same over WebSocket, which always has a resize channel.
    let url = exec_url(&daemon, exec_request(&id, &script, TTY))
        .await
        .unwrap();
    let mut exec = ws_exec(&url, TTY).await.unwrap();
    exec.resize(90, 20).unwrap();
    let seen = exec.read_stdout_until(b"/dev/pts/", WAIT).await.unwrap();
    assert!(String::from_utf8_lossy(&seen).contains("20 90"), "{seen:?}");
    exec.send_stdin(b"ws\n").unwrap();
    let out = exec.wait(WAIT).await.unwrap();
    assert!(
        out.stdout_str().contains("got-ws"),
        "{:?}",
        out.stdout_str()
    );
    assert_eq!(out.status, ExecStatus::Exit(5));

    // A client that goes away mid-stream takes its command (and the command's children) along.
    let script = ["sh", "-c", "sleep 7301 & sleep 7302"];
    let url = exec_url(&daemon, exec_request(&id, &script, PIPES))
        .await
        .unwrap();
    let exec = spdy_exec(&url, PIPES).await.unwrap();
    wait_running("sleep 7302").await;
    exec.abort();
    wait_gone("sleep 7301").await;
    wait_gone("sleep 7302").await;
    let script = ["sh", "-c", "sleep 7303"];
    let url = exec_url(&daemon, exec_request(&id, &script, TTY))
        .await
        .unwrap();
    let exec = ws_exec(&url, TTY).await.unwrap();
    wait_running("sleep 7303").await;
    exec.abort();
    wait_gone("sleep 7303").await;

    // Tokens: single use, only on their own route, unknown ones refused.
    let url = exec_url(&daemon, exec_request(&id, &["true"], no_stdin))
        .await
        .unwrap();
    assert_eq!(
        spdy_run(&url, no_stdin, b"", WAIT).await.unwrap().status,
        ExecStatus::Success
    );
    assert_eq!(
        refused_status(spdy_run(&url, no_stdin, b"", WAIT).await),
        Some(404)
    );
    let url = exec_url(&daemon, exec_request(&id, &["true"], no_stdin))
        .await
        .unwrap();
    let as_attach = url.replace("/exec/", "/attach/");
    assert_eq!(
        refused_status(spdy_run(&as_attach, no_stdin, b"", WAIT).await),
        Some(404)
    );
    let (base, _) = url.rsplit_once('/').unwrap();
    let forged = format!("{base}/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(
        refused_status(ws_run(&forged, no_stdin, b"", WAIT).await),
        Some(404)
    );

    assert_fds_back_to(&daemon, fds_before).await;

    // Bad requests: the right code and nothing handed out.
    use tonic::Code;
    let code = |r: Result<String, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(exec_url(&daemon, exec_request(&id, &[], PIPES)).await),
        Code::InvalidArgument
    );
    let tty_and_stderr = ExecOptions {
        stderr: true,
        ..TTY
    };
    let refused = exec_url(&daemon, exec_request(&id, &["true"], tty_and_stderr))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("tty"), "{}", refused.message());
    let nothing = ExecOptions::default();
    assert_eq!(
        code(exec_url(&daemon, exec_request(&id, &["true"], nothing)).await),
        Code::InvalidArgument
    );
    let refused = exec_url(&daemon, exec_request("nope", &["true"], PIPES))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    assert!(refused.message().contains("nope"), "{}", refused.message());
    let exited = run(&daemon, &pod, container_config("done", &["true"])).await;
    let deadline = Instant::now() + WAIT;
    while container_state(&daemon, &exited).await != cri::ContainerState::ContainerExited as i32 {
        assert!(Instant::now() < deadline, "the container never exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        code(exec_url(&daemon, exec_request(&exited, &["true"], PIPES)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(attach_url(&daemon, attach_request(&exited, PIPES)).await),
        Code::FailedPrecondition
    );
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_output_stdin_and_terminals() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "attach-stream", |_| {}).await;

    // Two attachers at once (SPDY and WebSocket) see a container that keeps writing; when
    // they go, the container and its log go on.
    let ticker = run(
        &daemon,
        &pod,
        container_config(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while :; do echo tick-$i; echo tock-$i >&2; i=$((i+1)); sleep 0.1; done",
            ],
        ),
    )
    .await;
    let out_only = ExecOptions {
        stdin: false,
        ..PIPES
    };
    let url = attach_url(&daemon, attach_request(&ticker, out_only))
        .await
        .unwrap();
    let mut first = spdy_exec(&url, out_only).await.unwrap();
    let url = attach_url(&daemon, attach_request(&ticker, out_only))
        .await
        .unwrap();
    let mut second = ws_exec(&url, out_only).await.unwrap();
    let a = first.read_stdout_until(b"\n", WAIT).await.unwrap();
    let a = String::from_utf8_lossy(&a).into_owned();
    let n: u32 = a.trim().trim_start_matches("tick-").parse().unwrap();
    let later = format!("tick-{}\n", n + 3);
    first
        .read_stdout_until(later.as_bytes(), WAIT)
        .await
        .unwrap();
    // The second may have joined later (slow machines): ticks after its own first one.
    let b = second.read_stdout_until(b"\n", WAIT).await.unwrap();
    let b = String::from_utf8_lossy(&b).into_owned();
    let m: u32 = b.trim().trim_start_matches("tick-").parse().unwrap();
    let later = format!("tick-{}\n", m + 3);
    second
        .read_stdout_until(later.as_bytes(), WAIT)
        .await
        .unwrap();
    first.abort();
    second.abort();
    let log = pod.logs.join("ticker.log");
    let size = std::fs::metadata(&log).unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        std::fs::metadata(&log).unwrap().len() > size,
        "the log stopped"
    );
    assert_eq!(
        container_state(&daemon, &ticker).await,
        cri::ContainerState::ContainerRunning as i32
    );

    // stdin (stdin_once): what the client types reaches the container; its EOF ends it, and
    // with it the attach.
    let mut config = container_config(
        "reader",
        &[
            "sh",
            "-c",
            "while read line; do echo got-$line; done; echo bye; exit 7",
        ],
    );
    config.stdin = true;
    config.stdin_once = true;
    let reader = run(&daemon, &pod, config).await;
    let url = attach_url(&daemon, attach_request(&reader, PIPES))
        .await
        .unwrap();
    let mut attached = spdy_exec(&url, PIPES).await.unwrap();
    attached.send_stdin(b"one\n").unwrap();
    attached
        .read_stdout_until(b"got-one\n", WAIT)
        .await
        .unwrap();
    attached.send_stdin(b"two\n").unwrap();
    attached.close_stdin().unwrap();
    let out = attached.wait(WAIT).await.unwrap();
    assert!(
        out.stdout_str().ends_with("got-two\nbye\n"),
        "{:?}",
        out.stdout_str()
    );
    assert_eq!(out.status, ExecStatus::Success);
    assert_eq!(
        container_state(&daemon, &reader).await,
        cri::ContainerState::ContainerExited as i32
    );

    // A terminal container: typed input is echoed and answered, resizes apply.
    let mut config = container_config("term", &["sh"]);
    config.stdin = true;
    config.tty = true;
    let term = run(&daemon, &pod, config).await;
    let url = attach_url(&daemon, attach_request(&term, TTY))
        .await
        .unwrap();
    let mut attached = ws_exec(&url, TTY).await.unwrap();
    attached.resize(77, 22).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    attached
        .send_stdin(b"echo sum-$((40+2)); stty size\n")
        .unwrap();
    attached.read_stdout_until(b"sum-42", WAIT).await.unwrap();
    attached.read_stdout_until(b"22 77", WAIT).await.unwrap();
    attached.abort();
    assert_eq!(
        container_state(&daemon, &term).await,
        cri::ContainerState::ContainerRunning as i32
    );
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_into_the_pod() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "forward", |_| {}).await;
    // A web server on the pod's loopback only: reachable through port-forward, not otherwise.
    run(
        &daemon,
        &pod,
        container_config(
            "web",
            &["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/etc"],
        ),
    )
    .await;
    let fds_before = fds_of(&daemon);
    let request = b"GET /hostname HTTP/1.0\r\n\r\n";
    let deadline = Instant::now() + WAIT;

    // SPDY: two connections at once on one session, and a refused port on the error stream.
    let url = port_forward_url(&daemon, &pod.id, &[8080]).await.unwrap();
    let forward = spdy_port_forward(&url).await.unwrap();
    let (a, b) = tokio::join!(
        forward.roundtrip(8080, request, WAIT),
        forward.roundtrip(8080, request, WAIT)
    );
    for outcome in [a.unwrap(), b.unwrap()] {
        let body = String::from_utf8_lossy(&outcome.data).into_owned();
        assert!(
            body.starts_with("HTTP/1.") && body.ends_with("forward-host\n"),
            "{body:?}"
        );
        assert_eq!(outcome.error, "");
    }
    let refused = forward.roundtrip(9, b"x", WAIT).await.unwrap();
    assert!(refused.error.contains("refused"), "{:?}", refused.error);
    assert!(refused.error.contains("localhost:9"), "{:?}", refused.error);
    forward.close().await.unwrap();

    // WebSocket channels (?port=) and SPDY tunnelled in WebSocket (crictl --transport=websocket).
    let url = port_forward_url(&daemon, &pod.id, &[8080]).await.unwrap();
    let mut forward = ws_port_forward(&format!("{url}?port=8080"), &["v4.channel.k8s.io"])
        .await
        .unwrap();
    let port = &mut forward.ports[0];
    port.write(request).unwrap();
    let body = port.data.read_to_end().await;
    assert_eq!(port.data.announced_port(), Some(8080));
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(body.ends_with("forward-host\n"), "{body:?}");
    forward.abort();
    let url = port_forward_url(&daemon, &pod.id, &[8080]).await.unwrap();
    let forward = spdy_over_ws_port_forward(&url).await.unwrap();
    let outcome = forward.roundtrip(8080, request, WAIT).await.unwrap();
    assert!(String::from_utf8_lossy(&outcome.data).ends_with("forward-host\n"));
    // A connection left open when the client vanishes is closed, not leaked.
    let _open = forward.open(8080).await.unwrap();
    forward.abort();
    assert!(Instant::now() < deadline);
    assert_fds_back_to(&daemon, fds_before).await;

    // Bad requests.
    use tonic::Code;
    let code = |r: Result<String, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(port_forward_url(&daemon, "nope", &[80]).await),
        Code::NotFound
    );
    assert_eq!(
        code(port_forward_url(&daemon, &pod.id, &[70000]).await),
        Code::InvalidArgument
    );
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_expire() {
    let daemon = Daemon::start("[streaming]\ntoken_ttl_secs = 1").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod: Pod = start_pod(&daemon, "expiry", |_| {}).await;
    let id = run(&daemon, &pod, container_config("idle", &["sleep", "1000"])).await;
    let options = ExecOptions {
        stdout: true,
        ..Default::default()
    };
    let url = exec_url(&daemon, exec_request(&id, &["true"], options))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        refused_status(spdy_run(&url, options, b"", WAIT).await),
        Some(404)
    );
    let url = exec_url(&daemon, exec_request(&id, &["echo", "in-time"], options))
        .await
        .unwrap();
    let out = spdy_run(&url, options, b"", WAIT).await.unwrap();
    assert_eq!(out.stdout_str(), "in-time\n");
    remove_all(&daemon, &pod).await;
}

/// A self-signed certificate for 127.0.0.1, made with openssl: (dir, cert, key).
fn self_signed() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=crius-e2e"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A leaf, not a CA: TLS clients refuse a CA certificate as the server's.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (dir, cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_tls() {
    use rustls_pki_types::pem::PemObject;
    let (_certs, cert, key) = self_signed();
    let daemon = Daemon::start(&format!(
        "[streaming]\ntls_cert = {:?}\ntls_key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    ))
    .await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "tls", |_| {}).await;
    let id = run(&daemon, &pod, container_config("idle", &["sleep", "1000"])).await;
    let options = ExecOptions {
        stdout: true,
        ..Default::default()
    };
    let url = exec_url(&daemon, exec_request(&id, &["echo", "over-tls"], options))
        .await
        .unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(&cert).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(parse_url(&url).unwrap().authority)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (tls, rest, protocol) = spdy_upgrade_on(tls, &url, SPDY_EXEC_PROTOCOLS)
        .await
        .unwrap();
    let exec = spdy_exec_on(SpdyConnection::start(tls, rest, protocol), options)
        .await
        .unwrap();
    let out = exec.wait(WAIT).await.unwrap();
    assert_eq!(out.stdout_str(), "over-tls\n");
    assert_eq!(out.status, ExecStatus::Success);
    remove_all(&daemon, &pod).await;
}
