//! What the kernel enforces through a container's cgroup — device rules (v1's devices
//! controller, v2's eBPF device program), limits seen and enforced inside — and, with the
//! systemd driver, the units crius makes: a scope per pod agent and per container in the slice
//! kubelet names, gone with them. The VM stage (hack/vm-test.sh) runs these on cgroup v2 with
//! both drivers; the v2 and systemd parts say so and pass where they do not apply.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crius::cri;

use crate::containers::{container_config, remove_all, run, sh, start_pod, status};
use crate::harness::{Daemon, systemd_driver, systemd_units};
use crate::images::pull;
use crate::sandbox::pod_status;

fn cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The process's cgroup in the unified hierarchy (v2), without the leading slash.
fn unified_cgroup_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::/"))
        .unwrap_or_else(|| panic!("pid {pid} has no unified cgroup"))
        .to_string()
}

/// `systemctl show UNIT -p NAME --value`.
fn unit_property(unit: &str, name: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", unit, "-p", name, "--value"])
        .output()
        .expect("systemctl show");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn container_pid(daemon: &Daemon, id: &str) -> i32 {
    let s = status(daemon, id).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    info["pid"].as_i64().expect("container pid") as i32
}

async fn remove_container(daemon: &Daemon, id: &str) {
    let mut rt = daemon.runtime().await.unwrap();
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.to_string(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.to_string(),
    })
    .await
    .unwrap();
}

/// Device rules are enforced by the kernel on open (and mknod), not by what /dev holds: a node
/// the rules do not allow, made inside the container (it has CAP_MKNOD), cannot be opened; one
/// of the default devices can; a host device the config grants can be used under its new name.
/// On v2 this is the eBPF program crius attaches to the container's cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_outside_the_rules_cannot_be_opened_and_granted_ones_can() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &crate::containers::busybox()).await.unwrap();
    let pod = start_pod(&daemon, "devices", |_| {}).await;

    // /dev/kmsg (c 1:11) is no default device: denied. /dev/null (c 1:3) is.
    let plain = run(&daemon, &pod, container_config("plain", &["sleep", "1000"])).await;
    let (out, code) = sh(
        &daemon,
        &plain,
        "mknod /tmp/kmsg c 1 11 && echo made; \
         (echo crius-e2e > /tmp/kmsg) 2>&1 && echo opened; \
         mknod /tmp/null c 1 3 && echo x > /tmp/null && echo null-ok",
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines.first(), Some(&"made"), "{out}");
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.contains("Operation not permitted")),
        "a device outside the rules was opened: {out}"
    );
    assert_eq!(lines.get(2), Some(&"null-ok"), "{out}");

    // The same device granted by the config, at another path.
    let mut c = container_config("granted", &["sleep", "1000"]);
    c.devices = vec![cri::Device {
        container_path: "/dev/xkmsg".into(),
        host_path: "/dev/kmsg".into(),
        permissions: "rwm".into(),
    }];
    let granted = run(&daemon, &pod, c).await;
    let (out, _) = sh(
        &daemon,
        &granted,
        "echo crius-e2e-device-test > /dev/xkmsg && echo opened",
    )
    .await;
    assert_eq!(
        out.trim(),
        "opened",
        "a granted device could not be used: {out}"
    );

    // The denial is the container's cgroup's, not the node's: the host opens it.
    assert!(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .is_ok()
    );
    remove_all(&daemon, &pod).await;
}

/// cgroup v2 limits as the container sees them through its cgroup namespace (cpu.max,
/// memory.max, pids.max from a `unified` key) and enforced: a fork past pids.max fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_limits_are_visible_inside_and_pids_max_is_enforced() {
    if !cgroup_v2() {
        eprintln!("cgroup v1 host: the v2 limits test does not apply");
        return;
    }
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &crate::containers::busybox()).await.unwrap();
    let pod = start_pod(&daemon, "limits", |_| {}).await;
    let mut c = container_config("limited", &["sleep", "1000"]);
    c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        unified: HashMap::from([("pids.max".to_string(), "16".to_string())]),
        ..Default::default()
    });
    let id = run(&daemon, &pod, c).await;
    let (out, _) = sh(
        &daemon,
        &id,
        "cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max \
         /sys/fs/cgroup/cpu.weight; grep ' /sys/fs/cgroup ' /proc/self/mountinfo",
    )
    .await;
    let weight = crius::cgroups::resources::shares_to_weight(512);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "50000 100000",
            &(64u64 << 20).to_string(),
            "16",
            &weight.to_string(),
        ],
        "limits inside the container: {out}"
    );
    // The container's own cgroup as the root of a cgroup2 mount, read-only.
    assert!(
        lines.len() == 5
            && lines[4].contains(" / /sys/fs/cgroup ro,")
            && lines[4].contains(" - cgroup2 "),
        "/sys/fs/cgroup inside: {out}"
    );
    // More processes than 16 allow, from a shell of their own: its fork fails and it ends.
    // The container is then full: what follows uses shell builtins only, no fork.
    let (out, _) = sh(
        &daemon,
        &id,
        "sh -c 'for i in $(seq 1 20); do sleep 1000 >/dev/null 2>&1 & done' 2>/tmp/err; \
         while read -r l; do echo \"err: $l\"; done </tmp/err; \
         read -r n </sys/fs/cgroup/pids.current; echo \"current: $n\"",
    )
    .await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("err: ") && l.contains("fork")),
        "no fork failed under pids.max: {out}"
    );
    let current: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("current: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pids.current: {out}"));
    assert!(current <= 16, "pids.current {current} over pids.max: {out}");
    remove_all(&daemon, &pod).await;
}

/// The systemd driver: the pod agent and each container run in their own transient scope,
/// `crius-<id>.scope`, delegated, in the slice kubelet named (here one no one started: crius
/// starts it, and its parent); the container's limits are the scope's unit properties. Removing
/// the container stops its scope; removing the pod stops the agent's and the slices crius
/// started. Nothing stays loaded in systemd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_driver_runs_each_pod_and_container_in_a_scope_of_the_kubelet_slice() {
    if !systemd_driver() {
        eprintln!("the cgroupfs driver: the systemd scopes test does not apply");
        return;
    }
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &crate::containers::busybox()).await.unwrap();
    let pod = start_pod(&daemon, "scopes", |_| {}).await;
    let slice = pod.config.linux.as_ref().unwrap().cgroup_parent.clone();
    let slice_dir = crius::cgroups::systemd::slice_path(&slice).unwrap();
    let top_slice = format!("{}.slice", slice.split('-').next().unwrap());
    assert_eq!(unit_property(&slice, "ActiveState"), "active", "{slice}");
    assert_eq!(unit_property(&top_slice, "ActiveState"), "active");

    // The pod agent's scope.
    let info: serde_json::Value =
        serde_json::from_str(&pod_status(&daemon, &pod.id).await.unwrap().info["info"]).unwrap();
    let agent = info["pid"].as_i64().expect("agent pid") as i32;
    let pod_scope = format!("crius-{}.scope", pod.id);
    assert_eq!(info["cgroup"], format!("{slice_dir}/{pod_scope}"));
    assert_eq!(unified_cgroup_of(agent), format!("{slice_dir}/{pod_scope}"));
    assert_eq!(unit_property(&pod_scope, "Slice"), slice);
    assert_eq!(unit_property(&pod_scope, "ActiveState"), "active");
    assert_eq!(unit_property(&pod_scope, "Delegate"), "yes");

    // A container's scope, with its limits as the unit's properties.
    let mut c = container_config("limited", &["sleep", "1000"]);
    c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    });
    let id = run(&daemon, &pod, c).await;
    let scope = format!("crius-{id}.scope");
    let pid = container_pid(&daemon, &id).await;
    assert_eq!(unified_cgroup_of(pid), format!("{slice_dir}/{scope}"));
    assert_eq!(unit_property(&scope, "Slice"), slice);
    assert_eq!(unit_property(&scope, "ActiveState"), "active");
    assert_eq!(unit_property(&scope, "Delegate"), "yes");
    assert_eq!(
        unit_property(&scope, "MemoryMax"),
        (64u64 << 20).to_string()
    );
    assert_eq!(unit_property(&scope, "CPUQuotaPerSecUSec"), "500ms");
    let weight = crius::cgroups::resources::shares_to_weight(512);
    assert_eq!(unit_property(&scope, "CPUWeight"), weight.to_string());
    let (out, _) = sh(&daemon, &id, "cat /sys/fs/cgroup/cpu.max").await;
    assert_eq!(out.trim(), "50000 100000");

    // UpdateContainerResources changes the unit's properties, which systemd keeps.
    let mut rt = daemon.runtime().await.unwrap();
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            cpu_quota: 80_000,
            cpu_period: 100_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 96 << 20,
            ..Default::default()
        }),
        windows: None,
        annotations: HashMap::new(),
    })
    .await
    .unwrap();
    assert_eq!(
        unit_property(&scope, "MemoryMax"),
        (96u64 << 20).to_string()
    );
    let (out, _) = sh(
        &daemon,
        &id,
        "cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max",
    )
    .await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["80000 100000", &(96u64 << 20).to_string()]
    );

    // RemoveContainer stops the container's scope; the pod's stays.
    remove_container(&daemon, &id).await;
    assert!(
        systemd_units(&scope).is_empty(),
        "{:?}",
        systemd_units(&scope)
    );
    assert!(
        !std::path::Path::new("/sys/fs/cgroup")
            .join(&slice_dir)
            .join(&scope)
            .exists()
    );
    assert_eq!(unit_property(&pod_scope, "ActiveState"), "active");

    // RemovePodSandbox: the agent's scope and the slices crius started go.
    remove_all(&daemon, &pod).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let pattern = format!("{}*", top_slice.trim_end_matches(".slice"));
    loop {
        let left: Vec<String> = [pod_scope.as_str(), pattern.as_str()]
            .iter()
            .flat_map(|p| systemd_units(p))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "units left: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
