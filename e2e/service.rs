//! crius as a systemd service (hack/crius.service, installed by hack/install-service.sh): a pod
//! and its container outlive `systemctl restart crius`, the restarted service is ready when
//! systemctl returns (Type=notify), sees the container exit afterwards, and removing everything
//! leaves no unit, cgroup, mount, network namespace, process or IP lease behind.
//!
//! It drives the system service on /run/crius/crius.sock, so it runs only where
//! CRIUS_E2E_SERVICE=1 says such a service is installed and may be restarted: the VM stage
//! (hack/vm-test.sh) sets it and checks the test printed that it ran. Elsewhere it says it did
//! not run and passes.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crius::cri;
use crius::cri::image_service_client::ImageServiceClient;
use crius::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::containers::{busybox, container_config};
use crate::harness::{CGROUP_DRIVER_ENV, connect, processes_mentioning};

const SOCKET: &str = "/run/crius/crius.sock";
const STATE: &str = "/run/crius";
const ROOT: &str = "/var/lib/crius";
const UNIT: &str = "crius.service";
/// What hack/vm-test.sh looks for in the output: the test ran to its end.
const RAN: &str = "crius.service test: ran to the end";

async fn runtime() -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(
        connect(Path::new(SOCKET))
            .await
            .expect("connect to the service"),
    )
}

async fn images() -> ImageServiceClient<Channel> {
    ImageServiceClient::new(
        connect(Path::new(SOCKET))
            .await
            .expect("connect to the service"),
    )
}

/// `systemctl show crius.service -p NAME --value`.
fn unit_property(name: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", UNIT, "-p", name, "--value"])
        .output()
        .expect("systemctl show");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn systemctl(args: &[&str]) {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .expect("systemctl");
    assert!(
        out.status.success(),
        "systemctl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pod's cgroup parent, as kubelet would give it for the service's driver.
fn cgroup_parent(tag: &str) -> String {
    match std::env::var(CGROUP_DRIVER_ENV).as_deref() {
        // A slice, as kubelet names them with the systemd driver (kubepods-besteffort-pod<uid>.slice).
        Ok("systemd") => format!("crius_e2e_service-pod{tag}.slice"),
        _ => format!("/crius-e2e-service/pod-{tag}"),
    }
}

fn pod_config(tag: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("service-{tag}"),
            namespace: "e2e".to_string(),
            uid: format!("uid-service-{tag}"),
            attempt: 0,
        }),
        hostname: "service-pod".to_string(),
        log_directory: logs.to_string_lossy().into_owned(),
        labels: HashMap::from([("app".to_string(), "service".to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(tag),
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

async fn container_status(id: &str) -> cri::ContainerStatusResponse {
    runtime()
        .await
        .container_status(cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
}

fn container_pid(status: &cri::ContainerStatusResponse) -> i32 {
    let info: serde_json::Value =
        serde_json::from_str(&status.info["info"]).expect("verbose info is JSON");
    info["pid"].as_i64().expect("container pid") as i32
}

async fn pod_state(id: &str) -> (i32, serde_json::Value) {
    let r = runtime()
        .await
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info = serde_json::from_str(&r.info["info"]).expect("verbose info is JSON");
    (r.status.expect("pod status").state, info)
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive: its pid only waits to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Every cgroup directory below /sys/fs/cgroup whose name contains one of `needles`.
fn cgroups_named(needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![Path::new("/sys/fs/cgroup").to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if needles.iter().any(|n| name.contains(n)) {
                found.push(entry.path().display().to_string());
            }
            stack.push(entry.path());
        }
    }
    found
}

fn lines_containing(text: &str, needles: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

fn command_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_restarts_under_running_pods_and_leaves_nothing() {
    if std::env::var("CRIUS_E2E_SERVICE").as_deref() != Ok("1") {
        // Straight to stderr: libtest captures eprintln! of a passing test.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"NOT RUN: service::the_service_restarts_under_running_pods_and_leaves_nothing \
              needs crius.service on this machine and CRIUS_E2E_SERVICE=1 (the VM stage, \
              hack/vm-test.sh, runs it)\n",
        );
        return;
    }
    assert_eq!(
        unit_property("ActiveState"),
        "active",
        "{UNIT} is not running"
    );
    assert_eq!(unit_property("Type"), "notify");
    let tag = format!("{:x}", std::process::id());
    let logs = tempfile::Builder::new()
        .prefix("crius-e2e-service-")
        .tempdir_in("/tmp")
        .unwrap();

    // A pod with a container that exits (status 3) once told to, through a file. In the VM
    // stage the image is pulled by a registry name that only a config.d drop-in's mirror maps
    // to the test registry: the service reads its drop-ins.
    let image = match std::env::var("CRIUS_E2E_SERVICE_MIRROR") {
        Ok(host) if !host.is_empty() => {
            busybox().replacen(&crate::registry::TestRegistry::get().registry, &host, 1)
        }
        _ => busybox(),
    };
    images()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("PullImage");
    let pod = pod_config(&tag, logs.path());
    let pod_id = runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let config = container_config(
        "waiter",
        &[
            "sh",
            "-c",
            "echo waiting; while [ ! -e /tmp/exit-now ]; do sleep 0.1; done; echo exiting; exit 3",
        ],
    );
    let mut config = config;
    config.image = Some(cri::ImageSpec {
        image: image.clone(),
        ..Default::default()
    });
    let ctr_id = runtime()
        .await
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    runtime()
        .await
        .start_container(cri::StartContainerRequest {
            container_id: ctr_id.clone(),
        })
        .await
        .expect("StartContainer");
    let before = container_status(&ctr_id).await;
    let ctr_pid = container_pid(&before);
    let (_, pod_info) = pod_state(&pod_id).await;
    let agent_pid = pod_info["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no agent pid in {pod_info}")) as i32;
    assert!(alive(ctr_pid) && alive(agent_pid));

    // Restart: systemctl returns once the new daemon said READY=1, which it says once the
    // socket serves, so the very first call on a new connection must be answered.
    let main_pid = unit_property("MainPID");
    let restarted = Instant::now();
    systemctl(&["restart", UNIT]);
    let took = restarted.elapsed();
    let version = runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .expect("Version right after `systemctl restart` returned (READY=1 too early?)")
        .into_inner();
    assert_eq!(version.runtime_name, "crius");
    assert_eq!(unit_property("ActiveState"), "active");
    assert_eq!(unit_property("SubState"), "running");
    assert_ne!(
        unit_property("MainPID"),
        main_pid,
        "the daemon was not restarted"
    );
    eprintln!("service: `systemctl restart {UNIT}` took {took:?}");

    // The pod and its container kept running through the restart, and are reported so.
    assert!(alive(agent_pid), "the pod agent died with the daemon");
    assert!(alive(ctr_pid), "the container died with the daemon");
    let (state, _) = pod_state(&pod_id).await;
    assert_eq!(state, cri::PodSandboxState::SandboxReady as i32);
    let after = container_status(&ctr_id).await;
    let status = after.status.clone().unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(container_pid(&after), ctr_pid);

    // An exit after the restart reaches the new daemon.
    let exec = runtime()
        .await
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr_id.clone(),
            cmd: vec!["touch".into(), "/tmp/exit-now".into()],
            timeout: 30,
        })
        .await
        .expect("ExecSync after the restart")
        .into_inner();
    assert_eq!(exec.exit_code, 0, "{exec:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let exited = loop {
        let s = container_status(&ctr_id).await.status.unwrap();
        if s.state == cri::ContainerState::ContainerExited as i32 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the exit was never reported: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exited.exit_code, 3);
    assert_eq!(exited.reason, "Error");
    let log = std::fs::read_to_string(logs.path().join("waiter.log")).unwrap_or_default();
    assert!(
        log.contains("waiting") && log.contains("exiting"),
        "log: {log}"
    );

    // Remove everything; nothing of the pod may be left.
    let mut rt = runtime().await;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: ctr_id.clone(),
    })
    .await
    .expect("RemoveContainer");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    images()
        .await
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image,
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage");
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(
        pods.iter().all(|p| p.id != pod_id),
        "the pod is still listed"
    );

    let ids = [pod_id.as_str(), ctr_id.as_str()];
    let mut needles = ids.to_vec();
    needles.extend(["crius-e2e-service", "crius_e2e_service"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut left = Vec::new();
        let units = command_output(
            "systemctl",
            &[
                "list-units",
                "--all",
                "--plain",
                "--no-legend",
                "--no-pager",
            ],
        );
        left.extend(
            lines_containing(&units, &needles)
                .into_iter()
                .map(|l| format!("unit {l}")),
        );
        left.extend(
            cgroups_named(&needles)
                .into_iter()
                .map(|c| format!("cgroup {c}")),
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        left.extend(
            lines_containing(&mounts, &ids)
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        for dir in [
            format!("{STATE}/netns/{pod_id}"),
            format!("{STATE}/pods/{pod_id}"),
            format!("{STATE}/agents/{pod_id}.sock"),
            format!("{STATE}/containers/{ctr_id}"),
            format!("{ROOT}/containers/{ctr_id}"),
        ] {
            if Path::new(&dir).exists() {
                left.push(format!("path {dir}"));
            }
        }
        for id in ids {
            left.extend(
                processes_mentioning(id)
                    .into_iter()
                    .map(|(pid, cmd)| format!("process {pid} {cmd}")),
            );
        }
        left.extend(
            lines_containing(&command_output("iptables-save", &[]), &ids)
                .into_iter()
                .map(|r| format!("iptables {r}")),
        );
        let leases = std::fs::read_dir("/var/lib/cni/networks/crius")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains(&pod_id))
                    })
                    .map(|e| format!("IP lease {}", e.path().display()))
                    .collect()
            })
            .unwrap_or_default();
        left.extend::<Vec<String>>(leases);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind:\n{}",
            left.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(unit_property("ActiveState"), "active");
    println!("{RAN}");
    eprintln!("{RAN}");
}
