//! Churn benchmark: 100 pods, each with one container, created and removed by 20 concurrent
//! clients (each its own connection) — crius next to containerd 1.6 + runc in the same run,
//! the same CNI plugins, in both pod shapes (a PID namespace per container, as kubelet asks,
//! and a pod-level one). Prints pods per second and the p50 and p99 of each step, of a pod's
//! full start and of its whole life; asserts nothing. With CRIUS_BENCH_CRIUS_ONLY set, crius
//! alone.
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

use churn_driver::{ChurnReport, Place, churn, cpu_time, percentile, rss_kib, step_medians};
use harness::Daemon;
use peer::timed_pull;

const PODS: usize = 100;
const CLIENTS: usize = 20;

fn report(name: &str, r: &ChurnReport) {
    println!("{name}: churn: {}", r.summary());
    for e in r.errors.iter().take(5) {
        println!("{name}: churn error: {e}");
    }
}

fn ms_per_pod(cpu: std::time::Duration) -> f64 {
    cpu.as_secs_f64() * 1000.0 / PODS as f64
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn print_steps(what: &str, log: &str) {
    let steps: Vec<String> = step_medians(log)
        .into_iter()
        .map(|(name, d)| format!("{name} {:.1}ms", d.as_secs_f64() * 1000.0))
        .collect();
    println!("{what}: step medians: {}", steps.join("; "));
}

#[tokio::main]
async fn main() {
    let (registry, meta) = peer::test_images();
    let pause = peer::image_ref(&meta, "pause");
    for pod_pid in [false, true] {
        measure(pod_pid, &registry, &pause).await;
    }
}

/// Both runtimes, one after the other, in one pod shape: kubelet's default (a PID namespace
/// per container) or a pod-level PID namespace.
async fn measure(pod_pid: bool, registry: &str, pause: &str) {
    let shape = if pod_pid {
        "pod PID namespace"
    } else {
        "PID namespace per container"
    };
    let in_shape = |place: Place| {
        if pod_pid {
            place.with_pod_pid_namespace()
        } else {
            place
        }
    };
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    timed_pull(&daemon.socket(), pause).await;
    let place = in_shape(Place::of(&daemon.dir));
    let pid = daemon.pid().as_raw();
    churn(&daemon.socket(), &place, pause, 2, 1).await;
    // Alone: each step's median without concurrency, for the breakdown.
    let mark = daemon.dir.log().len();
    churn(&daemon.socket(), &place, pause, 20, 1).await;
    print_steps(
        &format!("crius [{shape}]: one client"),
        &daemon.dir.log()[mark..],
    );
    let before = rss_kib(pid);
    let mark = daemon.dir.log().len();
    let cpu_before = cpu_time(pid);
    let crius = churn(&daemon.socket(), &place, pause, PODS, CLIENTS).await;
    let cpu_after = cpu_time(pid);
    println!(
        "crius [{shape}]: churn: CPU per pod: the daemon {:.1}ms, the whole machine {:.1}ms ({:.0}% of {} cores busy)",
        ms_per_pod(cpu_after.0 - cpu_before.0),
        ms_per_pod(cpu_after.1 - cpu_before.1),
        100.0 * (cpu_after.1 - cpu_before.1).as_secs_f64()
            / (crius.elapsed.as_secs_f64() * cores() as f64),
        cores()
    );
    print_steps(
        &format!("crius [{shape}]: {CLIENTS} clients"),
        &daemon.dir.log()[mark..],
    );
    println!(
        "crius [{shape}]: churn: daemon RSS {before} KiB before, {} KiB after",
        rss_kib(pid)
    );
    drop(daemon);
    report(&format!("crius [{shape}]"), &crius);
    if peer::crius_only() {
        return;
    }

    let (mut containerd, net_dir) = peer::start_with_cni(registry, pause).await;
    timed_pull(&containerd.socket(), pause).await;
    let place = in_shape(Place::of(&net_dir));
    churn(&containerd.socket(), &place, pause, 2, 1).await;
    let cpu_before = cpu_time(containerd.pid().unwrap_or_default() as i32);
    let theirs = churn(&containerd.socket(), &place, pause, PODS, CLIENTS).await;
    let cpu_after = cpu_time(containerd.pid().unwrap_or_default() as i32);
    println!(
        "containerd 1.6 [{shape}]: churn: CPU per pod: containerd {:.1}ms, the whole machine {:.1}ms",
        ms_per_pod(cpu_after.0 - cpu_before.0),
        ms_per_pod(cpu_after.1 - cpu_before.1),
    );
    peer::stop_with_cni(&mut containerd, &net_dir);
    report(&format!("containerd 1.6 [{shape}]"), &theirs);
    let p50 = |v: &Vec<std::time::Duration>| percentile(v, 50).as_secs_f64();
    let p99 = |v: &Vec<std::time::Duration>| percentile(v, 99).as_secs_f64();
    println!(
        "churn containerd/crius [{shape}]: pods/s {:.1}x; p50 RunPodSandbox {:.1}x, Create+Start {:.1}x, Stop+Remove {:.1}x, full start {:.1}x (p99 {:.1}x), whole pod {:.1}x",
        crius.pods_per_second() / theirs.pods_per_second(),
        p50(&theirs.run) / p50(&crius.run),
        p50(&theirs.create_start) / p50(&crius.create_start),
        p50(&theirs.stop_remove) / p50(&crius.stop_remove),
        p50(&theirs.started) / p50(&crius.started),
        p99(&theirs.started) / p99(&crius.started),
        p50(&theirs.whole) / p50(&crius.whole),
    );
}
