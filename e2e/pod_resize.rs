//! UpdatePodSandboxResources (in-place pod resize): the pod's cgroup crius made takes the new
//! resources plus overhead, all or nothing; a cgroup kubelet made is kubelet's and only the
//! record changes (as containerd does); PodSandboxStatus verbose reports the values.

use crius::cgroups::{self, CgroupVersion};
use crius::cri;
use tonic::Code;

use crate::harness::Daemon;
use crate::sandbox::{pod_config, pod_status, remove_pod, run_pod};

const MIB: i64 = 1 << 20;

fn version() -> CgroupVersion {
    cgroups::detect().unwrap().version
}

/// A cgroup interface file of `path` (relative), in `controller`'s hierarchy on v1.
fn cgroup_file(path: &str, controller: &str, file: &str) -> String {
    let dir = match version() {
        CgroupVersion::V1 => format!("/sys/fs/cgroup/{controller}/{path}"),
        CgroupVersion::V2 => format!("/sys/fs/cgroup/{path}"),
    };
    std::fs::read_to_string(format!("{dir}/{file}"))
        .unwrap_or_else(|e| panic!("{dir}/{file}: {e}"))
        .trim()
        .to_string()
}

/// The pod cgroup's CPU weight and memory limit, as the CRI counts them (shares, bytes).
fn limits_of(path: &str) -> (String, String) {
    match version() {
        CgroupVersion::V1 => (
            cgroup_file(path, "cpu", "cpu.shares"),
            cgroup_file(path, "memory", "memory.limit_in_bytes"),
        ),
        CgroupVersion::V2 => (
            cgroup_file(path, "cpu", "cpu.weight"),
            cgroup_file(path, "memory", "memory.max"),
        ),
    }
}

/// What `limits_of` reads for `shares` and `memory` bytes.
fn expected(shares: i64, memory: i64) -> (String, String) {
    match version() {
        CgroupVersion::V1 => (shares.to_string(), memory.to_string()),
        CgroupVersion::V2 => (
            cgroups::resources::shares_to_weight(shares as u64).to_string(),
            memory.to_string(),
        ),
    }
}

fn resources(shares: i64, memory: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_shares: shares,
        memory_limit_in_bytes: memory,
        ..Default::default()
    }
}

/// A change whose CPU weight the kernel takes and whose last value it refuses (crius's own
/// checks pass it), and the field the refusal names. v1: a memory limit below what the pod
/// uses, which cannot be reclaimed without swap (EBUSY); v2 (where such a limit would
/// OOM-kill instead), a `unified` value that is no number (EINVAL).
fn refused_by_the_kernel() -> (cri::LinuxContainerResources, &'static str) {
    let mut change = resources(2048, 0);
    match version() {
        CgroupVersion::V1 => {
            change.memory_limit_in_bytes = 4096;
            (change, "resources.memory_limit_in_bytes")
        }
        CgroupVersion::V2 => {
            change.unified = [("memory.high".to_string(), "lots".to_string())].into();
            (change, "resources.unified[memory.high]")
        }
    }
}

async fn resize(
    daemon: &Daemon,
    id: &str,
    resources: Option<cri::LinuxContainerResources>,
    overhead: Option<cri::LinuxContainerResources>,
) -> Result<(), tonic::Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: id.to_string(),
            resources,
            overhead,
        })
        .await
        .map(|_| ())
}

/// The `resources` object of verbose PodSandboxStatus.
async fn reported(daemon: &Daemon, id: &str) -> serde_json::Value {
    let status = pod_status(daemon, id).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    info["resources"].clone()
}

fn parent_path(config: &cri::PodSandboxConfig) -> String {
    let parent = &config.linux.as_ref().unwrap().cgroup_parent;
    parent.trim_matches('/').to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cgroup_crius_made_is_resized_all_or_nothing() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let mut config = pod_config(&daemon, "resize");
    let linux = config.linux.as_mut().unwrap();
    linux.resources = Some(resources(512, 256 * MIB));
    linux.overhead = Some(resources(10, 16 * MIB));
    let parent = parent_path(&config);
    let pod = run_pod(&daemon, config).await.unwrap();
    assert_eq!(limits_of(&parent), expected(522, 272 * MIB));
    let info = reported(&daemon, &pod).await;
    assert_eq!(info["podCgroupLimitedBy"], "crius", "{info}");
    assert_eq!(info["podCgroup"], parent.as_str(), "{info}");

    // Resized: the resources plus the overhead, on the cgroup and in the status.
    resize(&daemon, &pod, Some(resources(1024, 512 * MIB)), None)
        .await
        .unwrap();
    assert_eq!(limits_of(&parent), expected(1034, 528 * MIB));
    let info = reported(&daemon, &pod).await;
    assert_eq!(info["resources"]["cpu_shares"], 1024, "{info}");
    assert_eq!(info["resources"]["memory_limit_in_bytes"], 512 * MIB);
    assert_eq!(info["overhead"]["cpu_shares"], 10, "{info}");
    resize(&daemon, &pod, None, Some(resources(20, 32 * MIB)))
        .await
        .unwrap();
    assert_eq!(limits_of(&parent), expected(1044, 544 * MIB));

    // Refused by the kernel after the CPU weight was written: the weight goes back too.
    let (refused, field) = refused_by_the_kernel();
    // (No memory overhead this time: it would lift the tiny limit over what the pod uses.)
    let err = resize(&daemon, &pod, Some(refused), Some(resources(20, 0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(field), "{err:?}");
    eprintln!("refused: {}", err.message());
    assert!(err.message().contains(&pod), "{err:?}");
    assert_eq!(limits_of(&parent), expected(1044, 544 * MIB));
    let info = reported(&daemon, &pod).await;
    assert_eq!(info["resources"]["cpu_shares"], 1024, "{info}");

    // Refused before the kernel sees it; an unknown pod is NOT_FOUND naming it.
    let err = resize(&daemon, &pod, Some(resources(-1, 0)), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("resources.cpu_shares"), "{err:?}");
    let err = resize(&daemon, "no-such-pod", Some(resources(2, 0)), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no-such-pod"), "{err:?}");

    remove_pod(&daemon, &pod).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cgroup_kubelet_made_is_left_to_kubelet() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let mut config = pod_config(&daemon, "kubelets");
    config.linux.as_mut().unwrap().resources = Some(resources(512, 256 * MIB));
    let parent = parent_path(&config);
    // kubelet makes the pod's cgroup, with its limits, before RunPodSandbox.
    let made = cgroups_rs::fs::Cgroup::new(cgroups_rs::fs::hierarchies::auto(), &parent).unwrap();
    let fs = cgroups::controllers::CgroupFs::host(version());
    cgroups::resources::write_limits(&fs, &parent, &resources(300, 100 * MIB)).unwrap();
    let pod = run_pod(&daemon, config).await.unwrap();
    let kubelets = expected(300, 100 * MIB);
    assert_eq!(limits_of(&parent), kubelets);

    resize(&daemon, &pod, Some(resources(2048, 1024 * MIB)), None)
        .await
        .unwrap();
    assert_eq!(
        limits_of(&parent),
        kubelets,
        "kubelet's cgroup is left alone"
    );
    let info = reported(&daemon, &pod).await;
    assert_eq!(info["podCgroupLimitedBy"], "kubelet", "{info}");
    assert_eq!(info["resources"]["cpu_shares"], 2048, "{info}");

    remove_pod(&daemon, &pod).await.unwrap();
    // kubelet's to remove: the pod's cgroup, then the test's top one.
    made.delete().unwrap();
    let top = parent.split('/').next().unwrap();
    cgroups::remove_cgroup(top).unwrap();
}
