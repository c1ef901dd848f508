//! Churn: 200 pods, each with a container, created and removed by 20 concurrent clients: no
//! errors, nothing leaked, the daemon's memory back where it was.

use crius::cri;

use crate::churn_driver::{Place, churn, rss_kib, step_medians};
use crate::containers::busybox;
use crate::harness::Daemon;
use crate::images::pull;

const PODS: usize = 200;
const CLIENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_of_200_pods_by_20_clients_leaves_nothing() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let place = Place::of(&daemon.dir);
    // A first round at the same concurrency warms up what the daemon builds once (lazy
    // statics, connections) and what its allocator keeps for 20 clients at once (per-thread
    // arenas): what the second round adds on top would be a leak.
    let warm = churn(&daemon.socket(), &place, &busybox(), CLIENTS * 3, CLIENTS).await;
    assert!(warm.errors.is_empty(), "{:?}", warm.errors);
    let pid = daemon.pid().as_raw();
    let rss_before = rss_kib(pid);
    let report = churn(&daemon.socket(), &place, &busybox(), PODS, CLIENTS).await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "churn: {}; daemon RSS {} KiB before, {} KiB after",
        report.summary(),
        rss_before,
        rss_after
    );
    for (step, median) in step_medians(&daemon.dir.log()) {
        eprintln!("churn: median {step}: {median:?}");
    }
    assert!(report.errors.is_empty(), "errors: {:#?}", report.errors);
    assert_eq!(report.whole.len(), PODS);
    assert!(
        rss_after < rss_before + 20 * 1024,
        "the daemon grew from {rss_before} KiB to {rss_after} KiB"
    );
    let mut rt = daemon.runtime().await.unwrap();
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{} pods left", pods.len());
    let containers = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        containers.is_empty(),
        "{} containers left",
        containers.len()
    );
    // Dropping the daemon checks processes, mounts, cgroups, veths, iptables rules and IP
    // leases.
}
