//! The peer the benchmarks measure against: Debian's containerd 1.6 with runc, on its own
//! temporary root, state and socket, with the registry mirror, CNI config and pause image the
//! benchmark gives it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crius::cri;

use crate::harness::{self, TestDir};

pub struct Containerd {
    child: Option<Child>,
    pub dir: TestDir,
}

impl Containerd {
    /// `extra_cri` is appended inside the CRI plugin's section.
    pub async fn start(registry: &str, extra_cri: &str) -> Containerd {
        let dir = TestDir::new();
        let config = dir.path().join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n\
                 [grpc]\n  address = {sock:?}\n\
                 [ttrpc]\n  address = {ttrpc:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n{extra_cri}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{registry}\"]\n  endpoint = [\"http://{registry}\"]\n",
                root = dir.root(),
                state = dir.state(),
                sock = dir.path().join("containerd.sock"),
                ttrpc = dir.path().join("containerd.sock.ttrpc"),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (apt-get install containerd)");
        let socket = dir.path().join("containerd.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if socket.exists()
                && let Ok(channel) = harness::connect(&socket).await
                && cri::runtime_service_client::RuntimeServiceClient::new(channel)
                    .version(cri::VersionRequest::default())
                    .await
                    .is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "containerd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Containerd {
            child: Some(child),
            dir,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops containerd and unmounts what it left mounted; the files stay until drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        let root = self.dir.root().display().to_string();
        let state = self.dir.state().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines().rev() {
            if let Some(point) = line.split_whitespace().nth(4)
                && (point.starts_with(&root) || point.starts_with(&state))
            {
                let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes a cgroup tree bottom-up in every hierarchy (containerd leaves the parents kubelet
/// would own).
/// containerd on its own bridge network (the same CNI plugins as crius), with `pause` from the
/// local registry as its sandbox image; the TestDir holds the network config.
pub async fn start_with_cni(registry: &str, pause: &str) -> (Containerd, TestDir) {
    let net_dir = TestDir::new();
    net_dir.write_bridge_cni_config();
    let cri_config = format!(
        "  restrict_oom_score_adj = true\n  sandbox_image = \"{pause}\"\n  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"/usr/lib/cni\"\n    conf_dir = {:?}\n",
        net_dir.cni_conf_dir()
    );
    (Containerd::start(registry, &cri_config).await, net_dir)
}

/// Stops containerd and removes the cgroup parents its pods used.
pub fn stop_with_cni(containerd: &mut Containerd, net_dir: &TestDir) {
    containerd.stop();
    let parent = net_dir.cgroup_parent("x");
    remove_cgroup_tree(
        parent
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default(),
    );
}

pub fn remove_cgroup_tree(top: &str) {
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        remove_dirs_bottom_up(&hierarchy.path().join(top.trim_start_matches('/')));
    }
}

fn remove_dirs_bottom_up(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_dirs_bottom_up(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional memory of a process (shared pages divided among their users), in KiB: what a
/// process really costs when many share one binary.
pub fn pss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// The number after `key` in a /proc file of `key value kB` lines.
fn kib_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// PIDs of processes whose command line contains `needle`.
pub fn pids_of(needle: &str) -> Vec<u32> {
    harness::processes_mentioning(needle)
        .into_iter()
        .map(|(pid, _)| pid as u32)
        .collect()
}

/// Pulls `image` through a runtime's CRI socket; how long the pull took (the connection is
/// made before the clock starts).
pub async fn timed_pull(socket: &std::path::Path, image: &str) -> Duration {
    let channel = harness::connect(socket).await.unwrap();
    let mut client = cri::image_service_client::ImageServiceClient::new(channel);
    let started = Instant::now();
    client
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pulling {image}: {e}"));
    started.elapsed()
}

/// The test images hack/test-registry.py pushed: (the registry's address, the images' metadata).
pub fn test_images() -> (String, serde_json::Value) {
    let path = std::env::var("CRIUS_TEST_IMAGES").expect("run through hack/bench.sh");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    (meta["registry"].as_str().unwrap().to_string(), meta)
}

/// Whether to measure crius alone (CRIUS_BENCH_CRIUS_ONLY set), as when comparing two builds.
pub fn crius_only() -> bool {
    std::env::var_os("CRIUS_BENCH_CRIUS_ONLY").is_some()
}

/// A test image's reference.
pub fn image_ref(meta: &serde_json::Value, name: &str) -> String {
    meta["images"][name]["ref"].as_str().unwrap().to_string()
}
