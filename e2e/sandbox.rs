//! Pod sandboxes: namespaces held by the pod agent and pinned, CNI networking, pod files,
//! lifecycle, restart survival, bad input.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crius::cri;
use tonic::Code;

use crate::harness::{Daemon, processes_mentioning};

pub fn pod_config(daemon: &Daemon, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            namespace: "e2e".to_string(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        annotations: HashMap::from([("note".to_string(), "crius e2e".to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: daemon.dir.cgroup_parent(name),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's namespace options, which `pod_config` always sets.
pub fn namespace_options(config: &mut cri::PodSandboxConfig) -> &mut cri::NamespaceOption {
    config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("pod_config sets namespace options")
}

pub async fn run_pod(
    daemon: &Daemon,
    config: cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

pub async fn pod_status(
    daemon: &Daemon,
    id: &str,
) -> Result<cri::PodSandboxStatusResponse, tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn list_pods(
    daemon: &Daemon,
    filter: Option<cri::PodSandboxFilter>,
) -> Vec<cri::PodSandbox> {
    daemon
        .runtime()
        .await
        .unwrap()
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
        .await
        .unwrap()
        .into_inner()
        .items
}

pub async fn stop_pod(daemon: &Daemon, id: &str) -> Result<(), tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .map(|_| ())
}

pub async fn remove_pod(daemon: &Daemon, id: &str) -> Result<(), tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .map(|_| ())
}

fn ready(status: &cri::PodSandboxStatusResponse) -> bool {
    status.status.as_ref().unwrap().state == cri::PodSandboxState::SandboxReady as i32
}

fn pod_ip(status: &cri::PodSandboxStatusResponse) -> String {
    status
        .status
        .as_ref()
        .unwrap()
        .network
        .as_ref()
        .unwrap()
        .ip
        .clone()
}

fn agent_pid(status: &cri::PodSandboxStatusResponse) -> i32 {
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    info["pid"].as_i64().expect("agent pid") as i32
}

/// Runs `f` on a thread that has entered the namespace pinned at `pin`.
fn in_namespace<T: Send + 'static>(
    pin: &Path,
    kind: nix::sched::CloneFlags,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let file = std::fs::File::open(pin).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), kind).expect("setns");
        f()
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_its_namespaces_network_and_files_and_leaves_nothing() {
    let daemon = Daemon::start("").await;
    let net = daemon.dir.write_bridge_cni_config();
    let host_port = 20000 + (std::process::id() % 20000) as u16;
    let mut config = pod_config(&daemon, "web");
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: host_port as i32,
        host_ip: String::new(),
    }];
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["e2e.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    config.linux.as_mut().unwrap().sysctls = HashMap::from([(
        "net.ipv4.ip_unprivileged_port_start".to_string(),
        "0".to_string(),
    )]);
    let id = run_pod(&daemon, config).await.unwrap();
    assert_eq!(id.len(), 64);

    let status = pod_status(&daemon, &id).await.unwrap();
    assert!(ready(&status));
    let s = status.status.as_ref().unwrap();
    assert_eq!(s.metadata.as_ref().unwrap().name, "web");
    assert_eq!(s.labels["app"], "web");
    assert_eq!(s.annotations["note"], "crius e2e");
    assert!(s.created_at > 0);
    let ip = pod_ip(&status);
    assert!(ip.starts_with(&format!("{}.", net.subnet_prefix)), "{ip}");

    // The namespaces are pinned and hold what the pod asked for.
    let netns = daemon.dir.state().join("netns").join(&id);
    let uts = daemon.dir.state().join("pods").join(&id).join("ns/uts");
    let (hostname, lo_up, sysctl) =
        in_namespace(&netns, nix::sched::CloneFlags::CLONE_NEWNET, move || {
            let lo = std::fs::read_to_string("/sys/class/net/lo/operstate").unwrap_or_default();
            let flags = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
            let sysctl =
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
            (
                String::new(),
                lo.trim() != "down" && flags.contains("lo:"),
                sysctl.trim().to_string(),
            )
        });
    let _ = hostname;
    assert!(lo_up, "lo is not up in the pod");
    assert_eq!(sysctl, "0");
    let hostname = in_namespace(&uts, nix::sched::CloneFlags::CLONE_NEWUTS, || {
        nix::unistd::gethostname()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    });
    assert_eq!(hostname, "web-host");

    // The pod's IP and its host port reach a server listening inside the pod.
    let listener = in_namespace(&netns, nix::sched::CloneFlags::CLONE_NEWNET, || {
        TcpListener::bind("0.0.0.0:8080").unwrap()
    });
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"hello from the pod").unwrap();
        }
    });
    for addr in [
        format!("{ip}:8080"),
        format!("{}.1:{host_port}", net.subnet_prefix),
    ] {
        let mut conn = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello from the pod", "via {addr}");
    }
    server.join().unwrap();

    // The pod's files.
    let dir = daemon.dir.state().join("pods").join(&id);
    assert_eq!(
        std::fs::read_to_string(dir.join("hostname")).unwrap(),
        "web-host\n"
    );
    assert!(
        std::fs::read_to_string(dir.join("hosts"))
            .unwrap()
            .contains(&format!("{ip}\tweb-host"))
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("resolv.conf")).unwrap(),
        "search e2e.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    assert!(crius::sandbox::pod::is_mount_point(&dir.join("shm")));

    // Listing and its filters.
    assert_eq!(list_pods(&daemon, None).await.len(), 1);
    let by = |id: &str, state: Option<cri::PodSandboxState>, label: Option<(&str, &str)>| {
        Some(cri::PodSandboxFilter {
            id: id.to_string(),
            state: state.map(|s| cri::PodSandboxStateValue { state: s as i32 }),
            label_selector: label
                .map(|(k, v)| HashMap::from([(k.to_string(), v.to_string())]))
                .unwrap_or_default(),
        })
    };
    assert_eq!(list_pods(&daemon, by(&id[..12], None, None)).await.len(), 1);
    assert_eq!(
        list_pods(
            &daemon,
            by("", Some(cri::PodSandboxState::SandboxReady), None)
        )
        .await
        .len(),
        1
    );
    assert_eq!(
        list_pods(
            &daemon,
            by("", Some(cri::PodSandboxState::SandboxNotready), None)
        )
        .await
        .len(),
        0
    );
    assert_eq!(
        list_pods(&daemon, by("", None, Some(("app", "web"))))
            .await
            .len(),
        1
    );
    assert_eq!(
        list_pods(&daemon, by("", None, Some(("app", "db"))))
            .await
            .len(),
        0
    );

    // Stop: NOTREADY, network gone, agent gone; twice is fine.
    let agent = agent_pid(&status);
    stop_pod(&daemon, &id).await.unwrap();
    stop_pod(&daemon, &id).await.unwrap();
    let stopped = pod_status(&daemon, &id).await.unwrap();
    assert!(!ready(&stopped));
    assert_eq!(pod_ip(&stopped), "");
    assert!(
        !Path::new(&format!("/proc/{agent}")).exists(),
        "agent still running"
    );

    // Remove: gone, and removing again or an unknown id is fine.
    remove_pod(&daemon, &id).await.unwrap();
    remove_pod(&daemon, &id).await.unwrap();
    remove_pod(&daemon, "no-such-pod").await.unwrap();
    stop_pod(&daemon, "no-such-pod").await.unwrap();
    assert_eq!(
        pod_status(&daemon, &id).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(list_pods(&daemon, None).await.is_empty());
    assert!(!netns.exists());
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pods_skip_cni_and_keep_the_host_hostname() {
    let daemon = Daemon::start("").await;
    // No CNI config at all: a host-network pod does not need one.
    let mut config = pod_config(&daemon, "hostnet");
    let ns = namespace_options(&mut config);
    ns.network = cri::NamespaceMode::Node as i32;
    let id = run_pod(&daemon, config).await.unwrap();
    let status = pod_status(&daemon, &id).await.unwrap();
    assert!(ready(&status));
    assert_eq!(pod_ip(&status), "");
    assert!(!daemon.dir.state().join("netns").join(&id).exists());
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let dir = daemon.dir.state().join("pods").join(&id);
    assert_eq!(
        std::fs::read_to_string(dir.join("hostname")).unwrap(),
        format!("{host}\n")
    );
    stop_pod(&daemon, &id).await.unwrap();
    remove_pod(&daemon, &id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pid_namespace_has_its_own_pid_1() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let mut config = pod_config(&daemon, "shared-pid");
    namespace_options(&mut config).pid = cri::NamespaceMode::Pod as i32;
    let id = run_pod(&daemon, config).await.unwrap();
    let status = pod_status(&daemon, &id).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let init = info["pidNamespaceInit"].as_i64().expect("pid 1 of the pod") as i32;
    // In its own PID namespace it is PID 1.
    let nspid = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let line = nspid.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(line.trim_end().ends_with("\t1"), "{line}");
    stop_pod(&daemon, &id).await.unwrap();
    // Gone, or a zombie its adoptive parent (the host's init) has yet to reap: PID 1 is the
    // agent, whose exit waited for everything else in the namespace to go.
    let stat = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty()
            || stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z')),
        "{stat}"
    );
    remove_pod(&daemon, &id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pod_configs_are_refused_and_create_nothing() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let pods_dir = daemon.dir.state().join("pods");
    let count = |dir: &PathBuf| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);

    let err = daemon
        .runtime()
        .await
        .unwrap()
        .run_pod_sandbox(cri::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("config"), "{}", err.message());

    let mut no_name = pod_config(&daemon, "x");
    no_name.metadata.as_mut().unwrap().name.clear();
    let err = run_pod(&daemon, no_name).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("metadata.name"), "{}", err.message());

    let mut sysctl = pod_config(&daemon, "sysctl");
    sysctl.linux.as_mut().unwrap().sysctls =
        HashMap::from([("vm.swappiness".to_string(), "10".to_string())]);
    let err = run_pod(&daemon, sysctl).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("vm.swappiness"), "{}", err.message());

    let err = daemon
        .runtime()
        .await
        .unwrap()
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(&daemon, "handler")),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kata"), "{}", err.message());
    assert_eq!(count(&pods_dir), 0);
    assert!(list_pods(&daemon, None).await.is_empty());

    // The same name twice: the holder is named.
    let id = run_pod(&daemon, pod_config(&daemon, "twice"))
        .await
        .unwrap();
    let err = run_pod(&daemon, pod_config(&daemon, "twice"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&id), "{}", err.message());
    remove_pod(&daemon, &id).await.unwrap();
    assert_eq!(
        pod_status(&daemon, "nope").await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_network_undoes_everything() {
    let daemon = Daemon::start("").await;
    // No CNI config: the pod's network cannot be set up.
    let err = run_pod(&daemon, pod_config(&daemon, "nonet"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("network"), "{}", err.message());
    assert!(list_pods(&daemon, None).await.is_empty());
    let state = daemon.dir.state();
    for sub in ["pods", "netns", "agents"] {
        let left = std::fs::read_dir(state.join(sub))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{sub} not empty");
    }
    let agents: Vec<_> = processes_mentioning(&daemon.dir.path().display().to_string())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("crius-agent"))
        .collect();
    assert!(agents.is_empty(), "{agents:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_a_daemon_crash_and_notice_a_dead_agent() {
    let mut daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let a = run_pod(&daemon, pod_config(&daemon, "a")).await.unwrap();
    let b = run_pod(&daemon, pod_config(&daemon, "b")).await.unwrap();
    let before = pod_status(&daemon, &a).await.unwrap();
    daemon.kill9();
    daemon.spawn().await;
    // Still running, same address.
    let after = pod_status(&daemon, &a).await.unwrap();
    assert!(ready(&after));
    assert_eq!(pod_ip(&after), pod_ip(&before));
    // An agent that dies leaves its pod NOTREADY.
    let agent_b = agent_pid(&pod_status(&daemon, &b).await.unwrap());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_b),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ready(&pod_status(&daemon, &b).await.unwrap()) {
        assert!(std::time::Instant::now() < deadline, "pod b still ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in [&a, &b] {
        stop_pod(&daemon, id).await.unwrap();
        remove_pod(&daemon, id).await.unwrap();
    }
}
