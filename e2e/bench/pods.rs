//! Pod benchmark, in a round of 10 pods and then one of 100: RunPodSandbox (CNI bridge),
//! CreateContainer+StartContainer of one container per pod and StopPodSandbox+
//! RemovePodSandbox latency, and with all the round's pods running, the memory of the runtime
//! and of each pod's runtime processes (how many, their RSS and PSS) —
//! crius next to containerd 1.6 + runc (its own root and socket, the same CNI plugins, a pause
//! image from the local registry), in the same run, in both pod shapes: kubelet's default (a
//! PID namespace per container) and a pod-level PID namespace (shareProcessNamespace, as crictl
//! asks). Prints medians, p90s and memory; asserts nothing. With CRIUS_BENCH_CRIUS_ONLY set,
//! crius alone.
//!
//! Run with `bash hack/bench.sh`.

#[path = "../churn_driver.rs"]
#[allow(dead_code)]
mod churn_driver;
#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;
#[allow(dead_code)]
mod peer;

use std::path::Path;
use std::time::{Duration, Instant};

use crius::cri;

use harness::{Daemon, TestDir};
use peer::{median, ms, p90, pids_of, pss_kib, rss_kib, timed_pull};

/// The pod shapes measured.
#[derive(Clone, Copy)]
enum Shape {
    /// kubelet's default: each container its own PID namespace.
    PidPerContainer,
    /// One PID namespace for the pod (shareProcessNamespace; crictl's default).
    PodPid,
}

impl Shape {
    const ALL: [Shape; 2] = [Shape::PidPerContainer, Shape::PodPid];

    fn name(self) -> &'static str {
        match self {
            Shape::PidPerContainer => "PID namespace per container",
            Shape::PodPid => "pod PID namespace",
        }
    }
}

/// Where pod `n` of `shape` goes: the test dir's logs and cgroups.
fn place(dir: &TestDir, shape: Shape) -> churn_driver::Place {
    let place = churn_driver::Place::of(dir);
    match shape {
        Shape::PidPerContainer => place,
        Shape::PodPid => place.with_pod_pid_namespace(),
    }
}

/// A pod as kubelet asks for one; its workload a sleep that is not the pause process
/// (containerd's pause runs the same image).
fn config(n: usize, dir: &TestDir, shape: Shape) -> cri::PodSandboxConfig {
    churn_driver::pod_config(n, &place(dir, shape))
}

/// The pod's container, in the pod's PID namespace or its own, as kubelet asks.
fn container(image: &str, dir: &TestDir, shape: Shape) -> cri::ContainerConfig {
    churn_driver::container_config(image, &place(dir, shape))
}

/// One round: `pods` pods run, measured, then removed.
struct Round {
    pods: usize,
    run: Vec<Duration>,
    create_start: Vec<Duration>,
    stop_remove: Vec<Duration>,
    /// With all the round's pods running: the runtime's RSS KiB, and per pod its processes'
    /// count, RSS KiB and PSS KiB.
    runtime_rss: u64,
    per_pod: (f64, u64, u64),
    /// ListContainerStats and ListPodSandboxStats with the pods running, as kubelet polls them.
    list_container_stats: Vec<Duration>,
    list_pod_stats: Vec<Duration>,
}

/// The rounds each runtime goes through, one after the other.
const ROUNDS: [usize; 2] = [10, 100];

type Client = cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// Runs every round against one runtime's socket. `per_pod` lists the per-pod processes;
/// `runtime_rss` measures the runtime daemon.
async fn scenario(
    socket: &Path,
    dir: &TestDir,
    image: &str,
    shape: Shape,
    runtime_rss: impl Fn() -> u64,
    per_pod: impl Fn() -> Vec<u32>,
) -> Result<Vec<Round>, String> {
    let channel = harness::connect(socket).await.unwrap();
    let mut rt = Client::new(channel);
    let mut rounds = Vec::new();
    let mut first = 0;
    for pods in ROUNDS {
        let mut round = Round {
            pods,
            run: vec![],
            create_start: vec![],
            stop_remove: vec![],
            runtime_rss: 0,
            per_pod: (0.0, 0, 0),
            list_container_stats: vec![],
            list_pod_stats: vec![],
        };
        let mut ids = Vec::new();
        for n in first..first + pods {
            ids.push(start_pod(&mut rt, n, dir, image, shape, &mut round).await?);
        }
        first += pods;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pids = per_pod();
        let rss: u64 = pids.iter().map(|p| rss_kib(*p)).sum();
        let pss: u64 = pids.iter().map(|p| pss_kib(*p)).sum();
        let count = pids.len() as f64 / pods as f64;
        round.runtime_rss = runtime_rss();
        round.per_pod = (count, rss / pods as u64, pss / pods as u64);
        list_stats(&mut rt, &mut round).await;
        for id in ids {
            let started = Instant::now();
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .map_err(|e| format!("StopPodSandbox: {}", e.message()))?;
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .map_err(|e| format!("RemovePodSandbox: {}", e.message()))?;
            round.stop_remove.push(started.elapsed());
        }
        rounds.push(round);
    }
    Ok(rounds)
}

/// Pod `n` with its container, timed into `round`; its id.
async fn start_pod(
    rt: &mut Client,
    n: usize,
    dir: &TestDir,
    image: &str,
    shape: Shape,
    round: &mut Round,
) -> Result<String, String> {
    let started = Instant::now();
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config(n, dir, shape)),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox {n}: {}", e.message()))?
        .into_inner()
        .pod_sandbox_id;
    round.run.push(started.elapsed());
    let started = Instant::now();
    let container = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(container(image, dir, shape)),
            sandbox_config: Some(config(n, dir, shape)),
        })
        .await
        .map_err(|e| format!("CreateContainer {n}: {}", e.message()))?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: container,
    })
    .await
    .map_err(|e| format!("StartContainer {n}: {}", e.message()))?;
    round.create_start.push(started.elapsed());
    Ok(id)
}

/// Five rounds of the two stats listings kubelet polls.
async fn list_stats(rt: &mut Client, round: &mut Round) {
    for _ in 0..5 {
        let started = Instant::now();
        if rt
            .list_container_stats(cri::ListContainerStatsRequest { filter: None })
            .await
            .is_ok()
        {
            round.list_container_stats.push(started.elapsed());
        }
        let started = Instant::now();
        if rt
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
            .await
            .is_ok()
        {
            round.list_pod_stats.push(started.elapsed());
        }
    }
}

fn report(name: &str, rounds: &[Round]) {
    let or_na = |d: &Vec<Duration>| {
        if d.is_empty() {
            "n/a".to_string()
        } else {
            ms(median(d.clone()))
        }
    };
    for r in rounds {
        let pods = r.pods;
        println!(
            "{name}: {pods} pods: RunPodSandbox median {} p90 {}; CreateContainer+StartContainer median {} p90 {}; Stop+Remove median {} p90 {}",
            ms(median(r.run.clone())),
            ms(p90(r.run.clone())),
            ms(median(r.create_start.clone())),
            ms(p90(r.create_start.clone())),
            ms(median(r.stop_remove.clone())),
            ms(p90(r.stop_remove.clone()))
        );
        let (count, rss, pss) = r.per_pod;
        println!(
            "{name}: {pods} pods: runtime RSS {} KiB; per pod: {count:.1} processes, RSS {rss} KiB, PSS {pss} KiB",
            r.runtime_rss
        );
        println!(
            "{name}: {pods} pods: ListContainerStats median {}; ListPodSandboxStats median {}",
            or_na(&r.list_container_stats),
            or_na(&r.list_pod_stats)
        );
    }
}

#[tokio::main]
async fn main() {
    let (registry, meta) = peer::test_images();
    let pause = peer::image_ref(&meta, "pause");
    for shape in Shape::ALL {
        measure(shape, &registry, &pause).await;
    }
}

/// Both runtimes, one after the other, in one pod shape.
async fn measure(shape: Shape, registry: &str, pause: &str) {
    // crius
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    timed_pull(&daemon.socket(), pause).await;
    let daemon_pid = daemon.pid().as_raw() as u32;
    let agents_of = daemon.dir.state().join("agents").display().to_string();
    let crius = scenario(
        &daemon.socket(),
        &daemon.dir,
        pause,
        shape,
        || rss_kib(daemon_pid),
        || pids_of(&agents_of),
    )
    .await
    .expect("crius");
    drop(daemon);
    report(&format!("crius [{}]", shape.name()), &crius);
    if peer::crius_only() {
        return;
    }

    // containerd 1.6 + runc: same CNI plugins, its own bridge network.
    let (mut containerd, net_dir) = peer::start_with_cni(registry, pause).await;
    timed_pull(&containerd.socket(), pause).await;
    let containerd_pid = containerd.pid().unwrap();
    let theirs = scenario(
        &containerd.socket(),
        &net_dir,
        pause,
        shape,
        || rss_kib(containerd_pid),
        // Each pod: a containerd-shim-runc-v2 and its pause process.
        || {
            let mut pids = pids_of("containerd-shim-runc-v2");
            pids.extend(pids_of("2147483647"));
            pids
        },
    )
    .await;
    peer::stop_with_cni(&mut containerd, &net_dir);
    let theirs = match theirs {
        Ok(m) => m,
        Err(e) => {
            println!(
                "containerd 1.6 [{}]: could not run pods here: {e}",
                shape.name()
            );
            return;
        }
    };
    report(&format!("containerd 1.6 [{}]", shape.name()), &theirs);
    let ratio = |a: &[Duration], b: &[Duration]| {
        median(b.to_vec()).as_secs_f64() / median(a.to_vec()).as_secs_f64()
    };
    for (ours, theirs) in crius.iter().zip(&theirs) {
        println!(
            "containerd/crius [{}]: {} pods: RunPodSandbox {:.1}x, CreateContainer+StartContainer {:.1}x, Stop+Remove {:.1}x",
            shape.name(),
            ours.pods,
            ratio(&ours.run, &theirs.run),
            ratio(&ours.create_start, &theirs.create_start),
            ratio(&ours.stop_remove, &theirs.stop_remove)
        );
    }
}
