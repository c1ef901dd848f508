//! Container and pod stats from the cgroups, upper dirs and network namespaces.

use std::collections::HashMap;
use std::time::Duration;

use crius::cri;
use tonic::Code;

use crate::containers::{busybox, container_config, pod_ip, remove_all, run, sh, start_pod};
use crate::harness::Daemon;
use crate::images::pull;

fn value(v: &Option<cri::UInt64Value>) -> u64 {
    v.as_ref().map_or(0, |v| v.value)
}

/// Whether stats carry PSI here: on cgroup v2 with the kernel keeping it (not on v1, which
/// has no PSI per cgroup, as on the host stage).
fn psi_expected() -> bool {
    crius::cgroups::detect().unwrap().version == crius::cgroups::CgroupVersion::V2
        && std::path::Path::new("/sys/fs/cgroup/cpu.pressure").exists()
}

/// CPU, memory and I/O PSI are all there or all absent, as `psi_expected` says.
fn assert_psi(
    cpu: &Option<cri::CpuUsage>,
    memory: &Option<cri::MemoryUsage>,
    io: &Option<cri::IoUsage>,
) {
    let want = psi_expected();
    let cpu = cpu.as_ref().unwrap().psi.as_ref();
    let memory = memory.as_ref().unwrap().psi.as_ref();
    let io_psi = io.as_ref().and_then(|io| io.psi.as_ref());
    assert_eq!(io.is_some(), want, "IoUsage: {io:?}");
    for (what, psi) in [("cpu", cpu), ("memory", memory), ("io", io_psi)] {
        assert_eq!(psi.is_some(), want, "{what} PSI: {psi:?}");
        if let Some(psi) = psi {
            let (some, full) = (psi.some.unwrap(), psi.full.unwrap());
            assert!(some.total >= full.total, "{what}: {psi:?}");
            assert!((0.0..=100.0).contains(&some.avg10), "{what}: {psi:?}");
        }
    }
}

pub(crate) async fn container_stats(daemon: &Daemon, id: &str) -> cri::ContainerStats {
    daemon
        .runtime()
        .await
        .unwrap()
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_follow_cpu_memory_disk_and_network() {
    let daemon = Daemon::start("").await;
    let net = daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "stats", |_| {}).await;
    let burner = run(
        &daemon,
        &pod,
        container_config("burner", &["sh", "-c", "while :; do :; done"]),
    )
    .await;
    let idle = run(&daemon, &pod, container_config("idle", &["sleep", "1000"])).await;

    // CPU: nano-cores between two samples approach one core for a busy loop.
    let first = container_stats(&daemon, &burner).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = container_stats(&daemon, &burner).await;
    let cpu = second.cpu.unwrap();
    assert!(
        value(&cpu.usage_core_nano_seconds) > value(&first.cpu.unwrap().usage_core_nano_seconds)
    );
    let cores = value(&cpu.usage_nano_cores);
    assert!(cores > 400_000_000, "nano cores {cores}");
    assert_eq!(second.attributes.unwrap().metadata.unwrap().name, "burner");

    // The writable layer after 8 MiB written into the container's /tmp (its upper dir), and
    // memory after 32 MiB put in shared memory (charged to the container, never reclaimable
    // as inactive file pages, so in the working set).
    sh(
        &daemon,
        &idle,
        "dd if=/dev/zero of=/tmp/blob bs=1M count=8 2>/dev/null; dd if=/dev/zero of=/dev/shm/m bs=1M count=32 2>/dev/null",
    )
    .await;
    let s = container_stats(&daemon, &idle).await;
    assert_psi(&s.cpu, &s.memory, &s.io);
    let layer = s.writable_layer.unwrap();
    assert!(value(&layer.used_bytes) >= 8 << 20, "{layer:?}");
    assert!(value(&layer.inodes_used) >= 2);
    let memory = s.memory.unwrap();
    assert!(value(&memory.working_set_bytes) >= 32 << 20, "{memory:?}");
    assert!(value(&memory.usage_bytes) >= value(&memory.working_set_bytes));
    // ImageFsInfo: the writable layers' filesystem holds at least that layer.
    let fs = daemon
        .image()
        .await
        .unwrap()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let containers_fs = &fs.container_filesystems[..];
    assert_eq!(containers_fs.len(), 1, "{fs:?}");
    assert_eq!(
        containers_fs[0].fs_id.as_ref().unwrap().mountpoint,
        layer.fs_id.as_ref().unwrap().mountpoint
    );
    assert!(value(&containers_fs[0].used_bytes) >= value(&layer.used_bytes));
    assert!(value(&containers_fs[0].inodes_used) >= value(&layer.inodes_used));

    // The list, filtered by pod and by labels.
    let mut rt = daemon.runtime().await.unwrap();
    let all = rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 2);
    let err = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: "no-such-container".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The pod: its containers, processes and network counters after traffic.
    let (_, code) = sh(
        &daemon,
        &idle,
        &format!("ping -c 3 -i 0.2 -W 1 {}.1 >/dev/null", net.subnet_prefix),
    )
    .await;
    assert_eq!(code, 0, "ping from the pod failed");
    let stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = stats.linux.unwrap();
    assert_eq!(linux.containers.len(), 2);
    assert_psi(&linux.cpu, &linux.memory, &linux.io);
    assert!(value(&linux.process.unwrap().process_count) >= 3);
    let network = linux.network.unwrap();
    let eth0 = network.default_interface.unwrap();
    assert_eq!(eth0.name, "eth0");
    assert!(value(&eth0.tx_bytes) > 3 * 84, "{eth0:?}");
    assert!(value(&eth0.rx_bytes) > 3 * 84, "{eth0:?}");
    let listed = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_update_live_and_a_refused_change_keeps_the_old_limits() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "update", |_| {}).await;
    let mut config = container_config("hog", &["sleep", "1000"]);
    config.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        ..Default::default()
    });
    let id = run(&daemon, &pod, config).await;
    let mut rt = daemon.runtime().await.unwrap();
    let update = |limit: i64| cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: limit,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    };
    rt.update_container_resources(update(64 << 20))
        .await
        .unwrap();
    // Seen by the container and by ContainerStatus.
    let (out, _) = sh(&daemon, &id, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max").await;
    assert_eq!(out.trim(), (64u64 << 20).to_string());
    let status = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let r = status.resources.unwrap().linux.unwrap();
    assert_eq!((r.memory_limit_in_bytes, r.cpu_shares), (64 << 20, 512));

    // A change the kernel refuses after part of it was written. v1: 24 MiB of shared memory
    // it cannot reclaim, and a 4 MiB limit (EBUSY). v2 takes any memory.max (it reclaims, or
    // OOM-kills, instead): there a 4 MiB limit goes in with a `unified` pids.max the kernel
    // refuses, and the memory limit must come back.
    let refused = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let mut u = update(4 << 20);
        let linux = u.linux.as_mut().unwrap();
        linux.unified = HashMap::from([("pids.max".to_string(), "-1".to_string())]);
        u
    } else {
        sh(
            &daemon,
            &id,
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=24 2>/dev/null",
        )
        .await;
        update(4 << 20)
    };
    let err = rt.update_container_resources(refused).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(&id), "{}", err.message());
    let (out, _) = sh(&daemon, &id, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max").await;
    assert_eq!(
        out.trim(),
        (64u64 << 20).to_string(),
        "the old limit is gone"
    );
    remove_all(&daemon, &pod).await;
}

fn scrape(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_and_the_pod_cidr_reaches_ipam() {
    let port = crate::registry::dead_port();
    let daemon = Daemon::start(&format!("[metrics]\naddress = \"127.0.0.1:{port}\"")).await;
    // IPAM without ranges of its own takes the node's pod CIDR from runtimeConfig.
    let net = daemon.dir.write_bridge_cni_config();
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "plugins": [
            {"type": "bridge", "bridge": net.bridge, "isGateway": true,
             "capabilities": {"ipRanges": true},
             "ipam": {"type": "host-local", "dataDir": daemon.dir.path().join("ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(
        daemon.dir.cni_conf_dir().join("10-crius-e2e.conflist"),
        config.to_string(),
    )
    .unwrap();
    let mut rt = daemon.runtime().await.unwrap();
    rt.update_runtime_config(crate::harness::pod_cidr_request(&format!(
        "{}.128/25",
        net.subnet_prefix
    )))
    .await
    .unwrap();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "metrics", |_| {}).await;
    let ip = pod_ip(&daemon, &pod.id).await;
    let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        ip.starts_with(&net.subnet_prefix) && last >= 128,
        "{ip} is not in the pod CIDR"
    );
    let id = run(&daemon, &pod, container_config("work", &["sleep", "1000"])).await;

    // The CRI metrics: descriptors, and values whose labels match them.
    let descriptors = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let cpu = descriptors
        .iter()
        .find(|d| d.name == "container_cpu_usage_seconds_total")
        .unwrap();
    let pods = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    assert_eq!(pods.len(), 1);
    let container = &pods[0].container_metrics[0];
    assert_eq!(container.container_id, id);
    let m = container
        .metrics
        .iter()
        .find(|m| m.name == "container_cpu_usage_seconds_total")
        .unwrap();
    assert_eq!(m.label_values.len(), cpu.label_keys.len());
    assert!(
        pods[0]
            .metrics
            .iter()
            .any(|m| m.name == "container_network_receive_bytes_total")
    );

    // The Prometheus endpoint.
    let text = scrape(port, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for line in [
        "crius_rpc_requests_total{method=\"RunPodSandbox\",code=\"Ok\"} 1",
        "crius_pods{state=\"ready\"} 1",
        "crius_containers{state=\"running\"} 1",
        "crius_pod_agents 1",
        "crius_image_pulls_total{result=\"ok\"} 1",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(text.contains(
        "crius_rpc_duration_seconds_bucket{method=\"RunPodSandbox\",code=\"Ok\",le=\"+Inf\"} 1"
    ));
    assert!(text.contains("crius_store_transaction_duration_seconds_count"));
    assert!(scrape(port, "/other").starts_with("HTTP/1.1 404"));
    remove_all(&daemon, &pod).await;
}
