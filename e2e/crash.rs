//! kill -9 of the daemon at random (seeded) moments while clients run pods and containers
//! through their whole lives: after each restart every listed pod and container answers its
//! status and can be stopped and removed, no valid request gets INTERNAL, a container started
//! before the first kill keeps running and logging throughout, and at the end nothing is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crius::cri;
use tonic::Code;

use crate::containers::{Pod, busybox, container_config, remove_all, run, start_pod, state};
use crate::harness::Daemon;
use crate::images::pull;

const ROUNDS: u64 = 20;
const WORKERS: usize = 4;
const SEED: u64 = 0x5eed_c0de_2026;

/// xorshift64*: a small seeded generator, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Client = cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// An answer from a live daemon must never be INTERNAL or UNKNOWN; a call cut off by the kill
/// ends the worker (Err with an empty message).
fn judge<T>(what: &str, result: Result<T, tonic::Status>) -> Result<Option<T>, String> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(s) if cut_off(&s) => Err(String::new()),
        Err(s) if matches!(s.code(), Code::Internal | Code::Unknown) => {
            Err(format!("{what}: {:?}: {}", s.code(), s.message()))
        }
        Err(_) => Ok(None),
    }
}

/// The call got no (whole) answer from the daemon (it died under it): the status is the
/// client's own, without the headers of a server's answer, or the headers came and the
/// connection broke before the body (the kill fell between the two frames).
fn cut_off(status: &tonic::Status) -> bool {
    !status.metadata().contains_key("content-type")
        || (status.code() == Code::Unknown
            && status
                .message()
                .contains("error reading a body from connection"))
}

/// One worker: pods with a container each, through their whole lives, until the daemon dies.
async fn worker(
    mut rt: Client,
    name: String,
    pod_config: cri::PodSandboxConfig,
    calls: Arc<AtomicUsize>,
) -> Result<(), String> {
    for n in 0.. {
        let mut config = pod_config.clone();
        let meta = config.metadata.as_mut().unwrap();
        meta.name = format!("{name}-{n}");
        meta.uid = format!("uid-{name}-{n}");
        calls.fetch_add(1, Ordering::SeqCst);
        let run = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await;
        let Some(pod) = judge("RunPodSandbox", run)? else {
            continue;
        };
        let pod_id = pod.into_inner().pod_sandbox_id;
        let create = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(container_config("work", &["sleep", "1000"])),
                sandbox_config: Some(config),
            })
            .await;
        if let Some(c) = judge("CreateContainer", create)? {
            let id = c.into_inner().container_id;
            let start = rt
                .start_container(cri::StartContainerRequest {
                    container_id: id.clone(),
                })
                .await;
            judge("StartContainer", start)?;
            let exec = rt
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["true".into()],
                    timeout: 5,
                })
                .await;
            judge("ExecSync", exec)?;
            let stop = rt
                .stop_container(cri::StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 0,
                })
                .await;
            judge("StopContainer", stop)?;
            let remove = rt
                .remove_container(cri::RemoveContainerRequest { container_id: id })
                .await;
            judge("RemoveContainer", remove)?;
        }
        let stop = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            })
            .await;
        judge("StopPodSandbox", stop)?;
        let remove = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id,
            })
            .await;
        judge("RemovePodSandbox", remove)?;
    }
    Ok(())
}

/// After a restart: everything listed answers its status and goes with Stop and Remove.
async fn clear_all_but(daemon: &Daemon, keep: &Pod) {
    let mut rt = daemon.runtime().await.unwrap();
    let containers = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    for c in containers.iter().filter(|c| c.pod_sandbox_id != keep.id) {
        let status = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: false,
            })
            .await;
        assert!(status.is_ok(), "ContainerStatus {}: {status:?}", c.id);
        rt.stop_container(cri::StopContainerRequest {
            container_id: c.id.clone(),
            timeout: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer {}: {e:?}", c.id));
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: c.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer {}: {e:?}", c.id));
    }
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    for pod in pods.iter().filter(|p| p.id != keep.id) {
        let status = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await;
        assert!(status.is_ok(), "PodSandboxStatus {}: {status:?}", pod.id);
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e:?}", pod.id));
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e:?}", pod.id));
    }
}

fn ticks(pod: &Pod) -> usize {
    std::fs::read_to_string(pod.logs.join("ticker.log"))
        .unwrap_or_default()
        .matches("tick")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_leaves_a_consistent_runtime() {
    eprintln!("kill -9 rounds: seed {SEED:#x}");
    let mut rng = Rng(SEED);
    let mut daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let sentinel = start_pod(&daemon, "sentinel", |_| {}).await;
    let ticker = run(
        &daemon,
        &sentinel,
        container_config(
            "ticker",
            &["sh", "-c", "while :; do echo tick; sleep 0.05; done"],
        ),
    )
    .await;
    let template = crate::sandbox::pod_config(&daemon, "crash");
    let mut in_flight_at_kills = Vec::new();
    for round in 0..ROUNDS {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..WORKERS {
            let rt = Client::new(daemon.channel().await.unwrap());
            let name = format!("r{round}w{w}");
            workers.spawn(worker(rt, name, template.clone(), calls.clone()));
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(700))).await;
        let ticks_before = ticks(&sentinel);
        daemon.kill9();
        in_flight_at_kills.push(calls.load(Ordering::SeqCst));
        while let Some(done) = workers.join_next().await {
            if let Err(e) = done.unwrap()
                && !e.is_empty()
            {
                panic!("round {round}: {e}");
            }
        }
        daemon.spawn().await;
        let sentinel_now = state(&daemon, &ticker).await;
        assert_eq!(
            sentinel_now.state,
            cri::ContainerState::ContainerRunning as i32,
            "round {round}: the container started before the kills stopped"
        );
        clear_all_but(&daemon, &sentinel).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            ticks(&sentinel) > ticks_before,
            "round {round}: the sentinel stopped logging"
        );
    }
    eprintln!(
        "kill -9 rounds: {ROUNDS}, pods started per round before the kill: {in_flight_at_kills:?}"
    );
    remove_all(&daemon, &sentinel).await;
    // Dropping the daemon checks that nothing is left: processes, mounts, cgroups, veths, IP
    // leases, iptables rules.
}
