//! Containers: namespaces inside the pod, logs, exit codes and reasons, stop, ExecSync,
//! security settings, OOM, restart survival, bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius::cri;
use tonic::Code;

use crate::harness::Daemon;
use crate::images::pull;
use crate::registry::TestRegistry;
use crate::sandbox::{pod_config, remove_pod, run_pod, stop_pod};

pub fn busybox() -> String {
    TestRegistry::get().image("busybox").reference.clone()
}

/// A pod with its log directory, ready for containers.
pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub logs: PathBuf,
}

pub async fn start_pod(
    daemon: &Daemon,
    name: &str,
    edit: impl FnOnce(&mut cri::PodSandboxConfig),
) -> Pod {
    let logs = daemon.dir.path().join("logs").join(name);
    let mut config = pod_config(daemon, name);
    config.log_directory = logs.to_string_lossy().into_owned();
    edit(&mut config);
    let id = run_pod(daemon, config.clone()).await.unwrap();
    Pod { id, config, logs }
}

/// The pod's (first) IP, from PodSandboxStatus.
pub async fn pod_ip(daemon: &Daemon, pod_id: &str) -> String {
    daemon
        .runtime()
        .await
        .unwrap()
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_string(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip
}

pub fn container_config(name: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: busybox(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([("container".to_string(), name.to_string())]),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn security(config: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

pub async fn create(
    daemon: &Daemon,
    pod: &Pod,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

pub async fn start(daemon: &Daemon, id: &str) -> Result<(), tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .start_container(cri::StartContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .map(|_| ())
}

pub async fn run(daemon: &Daemon, pod: &Pod, config: cri::ContainerConfig) -> String {
    let id = create(daemon, pod, config).await.unwrap();
    start(daemon, &id).await.unwrap();
    id
}

pub async fn status(
    daemon: &Daemon,
    id: &str,
) -> Result<cri::ContainerStatusResponse, tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn state(daemon: &Daemon, id: &str) -> cri::ContainerStatus {
    status(daemon, id).await.unwrap().status.unwrap()
}

pub async fn pid_of(daemon: &Daemon, id: &str) -> i32 {
    let info: serde_json::Value =
        serde_json::from_str(&status(daemon, id).await.unwrap().info["info"]).unwrap();
    info["pid"].as_i64().expect("container pid") as i32
}

pub async fn stop(daemon: &Daemon, id: &str, timeout: i64) -> Result<(), tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .stop_container(cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout,
        })
        .await
        .map(|_| ())
}

pub async fn remove(daemon: &Daemon, id: &str) -> Result<(), tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .map(|_| ())
}

pub async fn exec(
    daemon: &Daemon,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await
        .map(|r| r.into_inner())
}

/// Runs a shell line in the container; (stdout, exit code).
pub async fn sh(daemon: &Daemon, id: &str, line: &str) -> (String, i32) {
    let r = exec(daemon, id, &["sh", "-c", line], 10).await.unwrap();
    (String::from_utf8_lossy(&r.stdout).into_owned(), r.exit_code)
}

pub async fn wait_exited(daemon: &Daemon, id: &str, within: Duration) -> cri::ContainerStatus {
    let deadline = Instant::now() + within;
    loop {
        let s = state(daemon, id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} still {:?}",
            s.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ns_link(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The log's entries as (stream, tag, content).
fn log_entries(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert!(ts.ends_with('Z') && ts.len() >= 20, "timestamp {ts:?}");
            let stream = parts.next().unwrap().to_string();
            let tag = parts.next().unwrap().to_string();
            (stream, tag, parts.next().unwrap_or("").to_string())
        })
        .collect()
}

pub async fn wait_for_log(path: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            Instant::now() < deadline,
            "{needle:?} never reached {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn remove_all(daemon: &Daemon, pod: &Pod) {
    stop_pod(daemon, &pod.id).await.unwrap();
    remove_pod(daemon, &pod.id).await.unwrap();
    let left = std::fs::read_dir(daemon.dir.root().join("containers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "container dirs left after the pod was removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containers_share_the_pods_namespaces_log_and_exec() {
    let daemon = Daemon::start("").await;
    let net = daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let host_port = 20000 + ((std::process::id() + 7) % 20000) as u16;
    let pod = start_pod(&daemon, "pair", |c| {
        c.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: host_port as i32,
            host_ip: String::new(),
        }];
    })
    .await;
    let a = run(
        &daemon,
        &pod,
        container_config(
            "a",
            &["sh", "-c", "echo hello; echo oops >&2; exec sleep 1000"],
        ),
    )
    .await;
    let b = run(
        &daemon,
        &pod,
        container_config(
            "b",
            &[
                "sh",
                "-c",
                "mkdir /tmp/www && echo hi-from-b > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
            ],
        ),
    )
    .await;

    let (pa, pb) = (pid_of(&daemon, &a).await, pid_of(&daemon, &b).await);
    for kind in ["net", "ipc", "uts"] {
        assert_eq!(ns_link(pa, kind), ns_link(pb, kind), "{kind} differs");
        assert_ne!(
            ns_link(pa, kind),
            ns_link(std::process::id() as i32, kind),
            "{kind} is the host's"
        );
    }
    for kind in ["pid", "mnt"] {
        assert_ne!(ns_link(pa, kind), ns_link(pb, kind), "{kind} is shared");
    }
    let s = state(&daemon, &a).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert!(s.started_at >= s.created_at && s.created_at > 0);
    assert_eq!(s.labels["container"], "a");
    assert_eq!(s.image.as_ref().unwrap().image, busybox());
    assert!(s.image_ref.contains("sha256:"), "{}", s.image_ref);

    // b's server: from a over the pod's loopback, from the host at the pod IP and through the
    // host port.
    let pod_ip = pod_ip(&daemon, &pod.id).await;
    let (out, _) = sh(&daemon, &a, "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://127.0.0.1:8080/ && break; sleep 0.2; done").await;
    assert_eq!(out.trim(), "hi-from-b");
    for addr in [
        format!("{pod_ip}:8080"),
        format!("{}.1:{host_port}", net.subnet_prefix),
    ] {
        let mut conn =
            std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        use std::io::{Read, Write};
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        assert!(got.contains("hi-from-b"), "via {addr}: {got}");
    }

    // The CRI log format, both streams.
    let log = pod.logs.join("a.log");
    assert_eq!(s.log_path, log.to_string_lossy());
    wait_for_log(&log, "oops").await;
    let entries = log_entries(&log);
    assert!(
        entries.contains(&("stdout".into(), "F".into(), "hello".into())),
        "{entries:?}"
    );
    assert!(
        entries.contains(&("stderr".into(), "F".into(), "oops".into())),
        "{entries:?}"
    );

    // Inside: the pod's hostname and files, PID 1 is the container's own process.
    let (out, code) = sh(
        &daemon,
        &a,
        "hostname; cat /proc/1/cmdline; echo; cat /etc/resolv.conf | head -1",
    )
    .await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pair-host");
    assert!(lines[1].starts_with("sleep"), "{out}");
    // ExecSync: output, stderr and the exit code; the timeout kills the command and returns
    // promptly.
    let r = exec(
        &daemon,
        &a,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        0,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    let started = Instant::now();
    let err = exec(&daemon, &a, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (out, _) = sh(&daemon, &a, "ps -o comm | grep -c sleep").await;
    assert_eq!(out.trim(), "1", "the timed-out command still runs");
    let err = exec(&daemon, &a, &["no-such-command"], 5)
        .await
        .unwrap_err();
    assert!(err.message().contains("no-such-command"), "{err:?}");

    // Filters.
    let list = |filter: cri::ContainerFilter| {
        let daemon = &daemon;
        async move {
            daemon
                .runtime()
                .await
                .unwrap()
                .list_containers(cri::ListContainersRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .containers
        }
    };
    assert_eq!(
        list(cri::ContainerFilter {
            pod_sandbox_id: pod.id.clone(),
            ..Default::default()
        })
        .await
        .len(),
        2
    );
    let only_b = list(cri::ContainerFilter {
        label_selector: HashMap::from([("container".to_string(), "b".to_string())]),
        ..Default::default()
    })
    .await;
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].id, b);
    assert_eq!(
        list(cri::ContainerFilter {
            id: a[..12].to_string(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );

    // StopPodSandbox ends both; the pod status carries them.
    stop_pod(&daemon, &pod.id).await.unwrap();
    for id in [&a, &b] {
        let s = state(&daemon, id).await;
        assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(s.exit_code, 137);
    }
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_reasons_and_stop_signals() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "exits", |_| {}).await;

    let ok = run(&daemon, &pod, container_config("ok", &["true"])).await;
    let failed = run(
        &daemon,
        &pod,
        container_config("failed", &["sh", "-c", "exit 7"]),
    )
    .await;
    let s = wait_exited(&daemon, &ok, Duration::from_secs(10)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert!(s.finished_at >= s.started_at);
    let s = wait_exited(&daemon, &failed, Duration::from_secs(10)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"));

    // PID 1 without a SIGTERM handler ignores it: the timeout ends in SIGKILL.
    let stubborn = run(
        &daemon,
        &pod,
        container_config("stubborn", &["sleep", "1000"]),
    )
    .await;
    let started = Instant::now();
    stop(&daemon, &stubborn, 1).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let s = state(&daemon, &stubborn).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "Error"));
    // Stop again, and of an unknown id: both fine.
    stop(&daemon, &stubborn, 1).await.unwrap();
    stop(&daemon, "0123456789abcdef-unknown", 1).await.unwrap();

    // A process that handles SIGTERM exits with its own code, before the timeout.
    let polite = run(
        &daemon,
        &pod,
        container_config(
            "polite",
            &[
                "sh",
                "-c",
                "trap 'exit 42' TERM; echo ready; sleep 1000 & wait",
            ],
        ),
    )
    .await;
    wait_for_log(&pod.logs.join("polite.log"), "ready").await;
    let started = Instant::now();
    stop(&daemon, &polite, 30).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(state(&daemon, &polite).await.exit_code, 42);

    // A command that does not exist: StartContainer fails, the container is exited with the
    // reason kubelet expects.
    let missing = create(
        &daemon,
        &pod,
        container_config("missing", &["/no/such/binary"]),
    )
    .await
    .unwrap();
    let err = start(&daemon, &missing).await.unwrap_err();
    assert!(err.message().contains("/no/such/binary"), "{err:?}");
    let s = state(&daemon, &missing).await;
    assert_eq!(
        (s.state, s.reason.as_str()),
        (cri::ContainerState::ContainerExited as i32, "StartError")
    );
    let err = start(&daemon, &missing).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    for id in [&ok, &failed, &stubborn, &polite, &missing] {
        remove(&daemon, id).await.unwrap();
        remove(&daemon, id).await.unwrap();
        assert_eq!(
            status(&daemon, id).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_split_long_lines_follow_a_tty_and_reopen() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "logs", |_| {}).await;
    // 40000 characters on one line: P, P, F.
    let long = run(
        &daemon,
        &pod,
        container_config(
            "long",
            &[
                "sh",
                "-c",
                "head -c 40000 /dev/zero | tr '\\0' x; echo; echo after",
            ],
        ),
    )
    .await;
    wait_exited(&daemon, &long, Duration::from_secs(10)).await;
    let entries = log_entries(&pod.logs.join("long.log"));
    let tags: Vec<&str> = entries.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(tags, ["P", "P", "F", "F"], "{entries:?}");
    let joined: String = entries[..3].iter().map(|(_, _, c)| c.as_str()).collect();
    assert_eq!(joined.len(), 40000);
    assert_eq!(entries[3].2, "after");

    // A tty container: one stream, the terminal's line endings.
    let mut tty = container_config("tty", &["sh", "-c", "tty; echo on-tty; sleep 1000"]);
    tty.tty = true;
    let tty = run(&daemon, &pod, tty).await;
    let log = pod.logs.join("tty.log");
    wait_for_log(&log, "on-tty").await;
    let entries = log_entries(&log);
    assert!(entries.iter().all(|(s, _, _)| s == "stdout"), "{entries:?}");
    assert!(entries[0].2.starts_with("/dev/pts/"), "{entries:?}");

    // ReopenContainerLog after a rotation: new output goes to the new file.
    let ticker = run(
        &daemon,
        &pod,
        container_config(
            "ticker",
            &["sh", "-c", "while true; do echo tick; sleep 0.05; done"],
        ),
    )
    .await;
    let log = pod.logs.join("ticker.log");
    wait_for_log(&log, "tick").await;
    std::fs::rename(&log, pod.logs.join("ticker.log.1")).unwrap();
    daemon
        .runtime()
        .await
        .unwrap()
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .unwrap();
    wait_for_log(&log, "tick").await;
    let _ = tty;
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_context_users_caps_readonly_masks_and_seccomp() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "secure", |_| {}).await;
    let sleeper = || container_config("x", &["sleep", "1000"]);

    // Defaults: containerd's capability set, masked and read-only paths, no no_new_privs,
    // unconfined seccomp when nothing is asked.
    let mut c = sleeper();
    c.metadata.as_mut().unwrap().name = "defaults".into();
    let defaults = run(&daemon, &pod, c).await;
    let (out, _) = sh(
        &daemon,
        &defaults,
        "grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
    )
    .await;
    assert!(out.contains("CapBnd:\t00000000a80425fb"), "{out}");
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    assert!(out.contains("Seccomp:\t0"), "{out}");
    let (out, _) = sh(&daemon, &defaults, "wc -c < /proc/keys; grep -c ' /proc/acpi ' /proc/self/mountinfo; echo 1 > /proc/sys/kernel/domainname && echo wrote").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["0", "1"],
        "masked paths or /proc/sys writable: {out}"
    );
    // The device cgroup: a disk node can be made but not opened.
    let (out, code) = sh(
        &daemon,
        &defaults,
        "mknod /tmp/disk b 8 0 && head -c 1 /tmp/disk >/dev/null 2>&1; echo $?",
    )
    .await;
    assert_eq!(
        (out.trim(), code),
        ("1", 0),
        "a block device could be read: {out}"
    );

    // A host device under another name, and an OOM score below the runtime's own, which root
    // without CAP_SYS_RESOURCE cannot set: clamped to the runtime's, not refused.
    let mut c = sleeper();
    c.metadata.as_mut().unwrap().name = "device".into();
    c.devices = vec![cri::Device {
        container_path: "/dev/xnull".into(),
        host_path: "/dev/null".into(),
        permissions: "rwm".into(),
    }];
    c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        oom_score_adj: -999,
        ..Default::default()
    });
    let device = run(&daemon, &pod, c).await;
    let (out, _) = sh(
        &daemon,
        &device,
        "echo x > /dev/xnull && echo written; cat /proc/1/oom_score_adj",
    )
    .await;
    let own: i32 = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", daemon.pid()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Only a runtime without CAP_SYS_RESOURCE (root on this CI host) cannot go lower.
    let can_lower = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap();
    let floor = if can_lower { -1000 } else { own };
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "written", "{out}");
    assert_eq!(lines[1].parse::<i32>().unwrap(), floor.max(-999), "{out}");

    // Users and groups: by uid, by name, with supplemental groups; the image's /etc/group
    // makes www-data a member of staff (50), which Merge keeps and Strict leaves out.
    for (name, policy, groups) in [
        (
            "user",
            cri::SupplementalGroupsPolicy::Merge,
            vec![33, 50, 1234],
        ),
        (
            "strict",
            cri::SupplementalGroupsPolicy::Strict,
            vec![33, 1234],
        ),
    ] {
        let mut c = sleeper();
        c.metadata.as_mut().unwrap().name = name.into();
        security(&mut c).run_as_user = Some(cri::Int64Value { value: 33 });
        security(&mut c).supplemental_groups = vec![1234];
        security(&mut c).supplemental_groups_policy = policy as i32;
        let user = run(&daemon, &pod, c).await;
        let (out, _) = sh(&daemon, &user, "id -u; id -g; id -G").await;
        let listed = groups.iter().map(|g| g.to_string()).collect::<Vec<_>>();
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["33", "33", listed.join(" ").as_str()],
            "{name}: {out}"
        );
        let reported = state(&daemon, &user).await.user.and_then(|u| u.linux);
        assert_eq!(
            reported,
            Some(cri::LinuxContainerUser {
                uid: 33,
                gid: 33,
                supplemental_groups: groups,
            }),
            "{name}"
        );
    }
    let mut c = sleeper();
    c.metadata.as_mut().unwrap().name = "named".into();
    security(&mut c).run_as_username = "nobody".into();
    let named = run(&daemon, &pod, c).await;
    assert_eq!(sh(&daemon, &named, "id -u").await.0.trim(), "65534");

    // Capabilities dropped and no_new_privs, a read-only rootfs.
    let mut c = sleeper();
    c.metadata.as_mut().unwrap().name = "locked".into();
    let s = security(&mut c);
    s.capabilities = Some(cri::Capability {
        drop_capabilities: vec!["CHOWN".into(), "NET_RAW".into()],
        ..Default::default()
    });
    s.no_new_privs = true;
    s.readonly_rootfs = true;
    let locked = run(&daemon, &pod, c).await;
    let (out, _) = sh(&daemon, &locked, "grep NoNewPrivs /proc/self/status; touch /x 2>/dev/null || echo readonly; chown 1 /dev/null 2>/dev/null || echo nochown").await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["NoNewPrivs:\t1", "readonly", "nochown"],
        "{out}"
    );

    // seccomp: RuntimeDefault refuses user namespaces, Unconfined allows them, a Localhost
    // profile refuses what it lists.
    let mut c = sleeper();
    c.metadata.as_mut().unwrap().name = "seccomp".into();
    security(&mut c).seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let confined = run(&daemon, &pod, c).await;
    let (out, _) = sh(&daemon, &confined, "grep '^Seccomp:' /proc/self/status; unshare -U true 2>/dev/null && echo allowed || echo refused").await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["Seccomp:\t2", "refused"],
        "{out}"
    );
    let (out, _) = sh(
        &daemon,
        &defaults,
        "unshare -U true 2>/dev/null && echo allowed || echo refused",
    )
    .await;
    assert_eq!(out.trim(), "allowed");
    let profile = daemon.dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let mut c = sleeper();
    c.metadata.as_mut().unwrap().name = "localhost".into();
    security(&mut c).seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Localhost as i32,
        localhost_ref: profile.to_string_lossy().into_owned(),
    });
    let local = run(&daemon, &pod, c).await;
    let (out, _) = sh(
        &daemon,
        &local,
        "mkdir /tmp/d 2>/dev/null && echo made || echo refused; touch /tmp/f && echo touched",
    )
    .await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["refused", "touched"],
        "{out}"
    );
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_is_enforced_and_the_oom_kill_reported() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "oom", |_| {}).await;
    let mut c = container_config("hog", &["tail", "/dev/zero"]);
    c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 32 * 1024 * 1024,
        ..Default::default()
    });
    let hog = run(&daemon, &pod, c).await;
    let s = wait_exited(&daemon, &hog, Duration::from_secs(30)).await;
    assert_eq!((s.reason.as_str(), s.exit_code), ("OOMKilled", 137));
    assert_eq!(
        s.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
        32 * 1024 * 1024
    );
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_survive_a_daemon_crash_and_die_with_their_agent() {
    let mut daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "survivor", |_| {}).await;
    let ticker = run(
        &daemon,
        &pod,
        container_config(
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done",
            ],
        ),
    )
    .await;
    let victim = run(
        &daemon,
        &pod,
        container_config("victim", &["sleep", "1000"]),
    )
    .await;
    let victim_pid = pid_of(&daemon, &victim).await;

    daemon.kill9();
    // While the daemon is down: one container is killed, the other keeps logging.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let log = pod.logs.join("ticker.log");
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(after > before, "no log lines while the daemon was down");
    daemon.spawn().await;

    assert_eq!(
        state(&daemon, &ticker).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let s = state(&daemon, &victim).await;
    assert_eq!(
        (s.state, s.exit_code),
        (cri::ContainerState::ContainerExited as i32, 137)
    );
    assert_eq!(
        sh(&daemon, &ticker, "echo still-here").await.0.trim(),
        "still-here"
    );

    // The agent dies: the pod is not ready and its containers end.
    let pod_status = daemon
        .runtime()
        .await
        .unwrap()
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&pod_status.info["info"]).unwrap();
    let agent = info["pid"].as_i64().unwrap() as i32;
    let ticker_pid = pid_of(&daemon, &ticker).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = wait_exited(&daemon, &ticker, Duration::from_secs(10)).await;
    assert_ne!(s.exit_code, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{ticker_pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{ticker_pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            Instant::now() < deadline,
            "the container outlived its agent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_container_requests_are_refused_and_create_nothing() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "bad", |_| {}).await;
    let containers_dir = daemon.dir.root().join("containers");
    let count = || {
        std::fs::read_dir(&containers_dir)
            .map(|d| d.count())
            .unwrap_or(0)
    };

    let unknown_pod = Pod {
        id: "no-such-pod".into(),
        config: pod.config.clone(),
        logs: pod.logs.clone(),
    };
    let err = create(&daemon, &unknown_pod, container_config("c", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no-such-pod"));

    let mut c = container_config("c", &["true"]);
    c.image.as_mut().unwrap().image = "127.0.0.1:1/not/pulled:latest".into();
    let err = create(&daemon, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let mut c = container_config("", &["true"]);
    c.metadata.as_mut().unwrap().name.clear();
    let err = create(&daemon, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("config.metadata.name"), "{err:?}");

    let mut c = container_config("c", &["true"]);
    c.mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: daemon
            .dir
            .path()
            .join("missing")
            .to_string_lossy()
            .into_owned(),
        ..Default::default()
    }];
    let err = create(&daemon, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("config.mounts[0].host_path"),
        "{err:?}"
    );

    let mut c = container_config("c", &["true"]);
    security(&mut c).capabilities = Some(cri::Capability {
        add_capabilities: vec!["NOT_A_CAP".into()],
        ..Default::default()
    });
    let err = create(&daemon, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("NOT_A_CAP"), "{err:?}");

    let mut c = container_config("c", &["true"]);
    security(&mut c).run_as_username = "nobody-here".into();
    let err = create(&daemon, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut c = container_config("c", &["true"]);
    security(&mut c).privileged = true;
    let err = create(&daemon, &pod, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(count(), 0, "a refused create left a bundle");

    let first = create(&daemon, &pod, container_config("c", &["true"]))
        .await
        .unwrap();
    let err = create(&daemon, &pod, container_config("c", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&first), "{err:?}");
    assert_eq!(count(), 1);

    for code in [
        start(&daemon, "no-such-container")
            .await
            .unwrap_err()
            .code(),
        status(&daemon, "no-such-container")
            .await
            .unwrap_err()
            .code(),
        exec(&daemon, "no-such-container", &["true"], 1)
            .await
            .unwrap_err()
            .code(),
    ] {
        assert_eq!(code, Code::NotFound);
    }
    // Exec in a container that is not running.
    assert_eq!(
        exec(&daemon, &first, &["true"], 1)
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    remove(&daemon, "no-such-container").await.unwrap();

    // The image goes while a container still uses it: its layers stay until the container
    // does, and the container still starts.
    crate::images::remove(&daemon, &busybox()).await.unwrap();
    daemon
        .image()
        .await
        .unwrap()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    start(&daemon, &first).await.unwrap();
    let s = wait_exited(&daemon, &first, Duration::from_secs(10)).await;
    assert_eq!(s.reason, "Completed", "{s:?}");

    // A pod that is not ready takes no new containers.
    stop_pod(&daemon, &pod.id).await.unwrap();
    let err = create(&daemon, &pod, container_config("late", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    remove_all(&daemon, &pod).await;
}
