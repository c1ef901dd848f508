//! The e2e harness: runs the real `crius daemon` on a temporary root, state dir and socket,
//! talks CRI to it over the socket as kubelet does, and on teardown checks that nothing the
//! daemon made is left behind (processes, mounts, the socket).

use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crius::cri::image_service_client::ImageServiceClient;
use crius::cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint, Uri};

/// The crius binary the tests run: cargo's build of this crate, or the one CRIUS_E2E_BINARY
/// names (the VM stage runs its release build: the daemon's hashing and unpacking under
/// emulation take minutes unoptimised).
pub fn crius_binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| match std::env::var("CRIUS_E2E_BINARY") {
        Ok(path) if !path.is_empty() => path,
        _ => env!("CARGO_BIN_EXE_crius").to_string(),
    })
}
/// Where Debian's containernetworking-plugins live.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Kubelet's gRPC message limit for the CRI (pkg/kubelet/cri/remote: maxMsgSize).
pub const KUBELET_MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Names the cgroup driver test daemons are configured with (`cgroupfs` or `systemd`).
pub const CGROUP_DRIVER_ENV: &str = "CRIUS_E2E_CGROUP_DRIVER";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A temporary directory tree for one test: root, state, CNI conf dir, config and logs.
pub struct TestDir {
    tmp: tempfile::TempDir,
    network: std::sync::Mutex<Option<TestNetwork>>,
}

/// A test's CNI network; its bridge is deleted with the test dir.
#[derive(Debug, Clone)]
pub struct TestNetwork {
    pub name: String,
    pub bridge: String,
    /// e.g. `10.231.17`: pod addresses are `<prefix>.N`, the gateway `<prefix>.1`.
    pub subnet_prefix: String,
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(net) = self.network.lock().unwrap().take() {
            let _ = Command::new("ip")
                .args(["link", "delete", &net.bridge])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl TestDir {
    pub fn new() -> TestDir {
        // CRIUS_E2E_KEEP=1 keeps each test's dir (daemon and agent logs) for a post-mortem.
        let tmp = tempfile::Builder::new()
            .prefix("crius-e2e-")
            .disable_cleanup(std::env::var_os("CRIUS_E2E_KEEP").is_some())
            .tempdir_in("/tmp")
            .expect("create temp dir");
        for sub in ["root", "state", "net.d"] {
            fs::create_dir_all(tmp.path().join(sub)).unwrap();
        }
        TestDir {
            tmp,
            network: std::sync::Mutex::new(None),
        }
    }
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
    pub fn root(&self) -> PathBuf {
        self.path().join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }
    pub fn socket(&self) -> PathBuf {
        self.state().join("crius.sock")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.path().join("net.d")
    }
    pub fn log_path(&self) -> PathBuf {
        self.path().join("daemon.log")
    }

    /// Writes a config file pointing everything into this dir, plus `extra` TOML.
    pub fn write_config(&self, name: &str, extra: &str) -> PathBuf {
        self.write_config_with_cni_bins(name, extra, &[Path::new(CNI_BIN_DIR)])
    }

    /// `write_config`, with CNI plugins looked up in `bin_dirs` (in order).
    pub fn write_config_with_cni_bins(
        &self,
        name: &str,
        extra: &str,
        bin_dirs: &[&Path],
    ) -> PathBuf {
        let path = self.path().join(name);
        // Tests wait at most 5 s for a stop unless they set their own bound.
        let shutdown = if extra.contains("shutdown_timeout_secs") {
            ""
        } else {
            "shutdown_timeout_secs = 5\n"
        };
        // CRIUS_E2E_CGROUP_DRIVER (set by hack/vm.sh --driver) picks the test daemons' cgroup
        // driver, unless the test sets its own.
        let driver = match std::env::var(CGROUP_DRIVER_ENV) {
            Ok(d) if !d.is_empty() && !extra.contains("cgroup_driver") => {
                format!("cgroup_driver = {d:?}\n")
            }
            _ => String::new(),
        };
        let text = format!(
            "root = {root:?}\nstate = {state:?}\nlisten = {sock:?}\n{shutdown}{driver}{extra}\n\
             [cni]\nconf_dir = {conf:?}\nbin_dirs = [{bins}]\n",
            root = self.root(),
            state = self.state(),
            sock = self.socket(),
            conf = self.cni_conf_dir(),
            bins = bin_dirs
                .iter()
                .map(|d| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        fs::write(&path, text).unwrap();
        path
    }

    /// Writes this test's own bridge network: a bridge, subnet, IPAM dir and network name no
    /// other test uses, so tests run in parallel and their leftovers can be told apart.
    pub fn write_bridge_cni_config(&self) -> TestNetwork {
        let n = self.unique();
        let net = TestNetwork {
            name: format!("crius-e2e-{n:06x}"),
            bridge: format!("ce{n:06x}"),
            subnet_prefix: format!("10.{}.{}", 200 + (n >> 8) % 50, n % 256),
        };
        let path = self.cni_conf_dir().join("10-crius-e2e.conflist");
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": net.name,
            "plugins": [
                {"type": "bridge", "bridge": net.bridge, "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "dataDir": self.path().join("ipam"),
                          "ranges": [[{"subnet": format!("{}.0/24", net.subnet_prefix)}]]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        fs::write(&path, config.to_string()).unwrap();
        *self.network.lock().unwrap() = Some(net.clone());
        net
    }

    /// A cgroup parent of this test's own, as kubelet would name a pod's for the test
    /// daemons' driver: a path with cgroupfs, a slice with systemd
    /// (`crius_e2e_<n>-pod_<pod>.slice`, nested in `crius_e2e_<n>.slice`).
    pub fn cgroup_parent(&self, pod: &str) -> String {
        if systemd_driver() {
            // A dash nests slices: the pod's name keeps none.
            let pod: String = pod
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            format!("crius_e2e_{:06x}-pod_{pod}.slice", self.unique())
        } else {
            format!("/crius-e2e-{:06x}/pod-{pod}", self.unique())
        }
    }

    /// The top of this test's cgroups, relative to a hierarchy's root.
    pub fn cgroup_top(&self) -> String {
        if systemd_driver() {
            format!("crius_e2e_{:06x}.slice", self.unique())
        } else {
            format!("crius-e2e-{:06x}", self.unique())
        }
    }

    /// A number no other test of this run has (from the temp dir's random name).
    fn unique(&self) -> u32 {
        let name = self
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        name.bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
            & 0xff_ffff
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// Runs `crius <args>` to completion (bounded) and returns its status, stdout and stderr.
pub fn run_crius(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(crius_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn crius");
    let status = wait_timeout(&mut child, START_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("crius {args:?} did not exit within {START_TIMEOUT:?}");
    });
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for crius") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running daemon. Dropping it stops it (SIGTERM) and checks for leftovers.
pub struct Daemon {
    pub dir: TestDir,
    config: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon on a fresh test dir with `extra` config.
    pub async fn start(extra_config: &str) -> Daemon {
        let dir = TestDir::new();
        let config = dir.write_config("config.toml", extra_config);
        Daemon::start_in(dir, config).await
    }

    /// Starts a daemon on a prepared test dir and config file.
    pub async fn start_in(dir: TestDir, config: PathBuf) -> Daemon {
        let mut daemon = Daemon {
            dir,
            config,
            child: None,
        };
        daemon.spawn().await;
        daemon
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.socket()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("daemon running").id() as i32)
    }

    /// Starts (again) the daemon on this dir and waits until it answers Version.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.log_path())
            .unwrap();
        let child = Command::new(crius_binary())
            .args(["daemon", "--config"])
            .arg(&self.config)
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn crius daemon");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "crius daemon exited during start-up ({status}):\n{}",
                    self.dir.log()
                );
            }
            if self.socket().exists() {
                let ok = async {
                    let mut c = self.runtime().await.ok()?;
                    c.version(crius::cri::VersionRequest::default()).await.ok()
                }
                .await
                .is_some();
                if ok {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "crius daemon did not answer within {START_TIMEOUT:?}:\n{}",
                self.dir.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        connect(&self.socket()).await
    }

    /// A RuntimeService client as kubelet makes one: messages up to 16 MiB both ways.
    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
        Ok(RuntimeServiceClient::new(self.channel().await?)
            .max_decoding_message_size(KUBELET_MAX_MESSAGE)
            .max_encoding_message_size(KUBELET_MAX_MESSAGE))
    }

    pub async fn image(&self) -> Result<ImageServiceClient<Channel>, tonic::transport::Error> {
        Ok(ImageServiceClient::new(self.channel().await?)
            .max_decoding_message_size(KUBELET_MAX_MESSAGE)
            .max_encoding_message_size(KUBELET_MAX_MESSAGE))
    }

    /// Sends `signal` and waits for the daemon to exit.
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        kill(Pid::from_raw(child.id() as i32), signal).expect("signal crius");
        wait_timeout(&mut child, STOP_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "crius daemon did not exit within {STOP_TIMEOUT:?} of {signal}:\n{}",
                self.dir.log()
            );
        })
    }

    /// Graceful stop; asserts exit status 0 and that the socket is gone.
    pub fn stop(&mut self) {
        let status = self.stop_with(Signal::SIGTERM);
        assert!(
            status.success(),
            "crius exited with {status} on SIGTERM:\n{}",
            self.dir.log()
        );
        assert!(!self.socket().exists(), "SIGTERM left the socket behind");
    }

    /// Simulates a crash.
    pub fn kill9(&mut self) {
        let status = self.stop_with(Signal::SIGKILL);
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    /// Asserts that nothing started or mounted for this test dir remains.
    pub fn assert_nothing_left(&self) {
        let needle = self.dir.path().to_string_lossy().into_owned();
        let processes = processes_mentioning(&needle);
        assert!(processes.is_empty(), "processes left behind: {processes:?}");
        let mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect();
        assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
        let top = self.dir.cgroup_top();
        let cgroups: Vec<String> = fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|hierarchy| hierarchy.path().join(&top))
            .chain(std::iter::once(Path::new("/sys/fs/cgroup").join(&top)))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
        if systemd_driver() {
            // The test's slices, and the scopes in them, are gone from systemd too.
            let units = systemd_units(&format!("crius_e2e_{:06x}*", self.dir.unique()));
            assert!(units.is_empty(), "systemd units left behind: {units:?}");
        }
        if let Some(net) = self.dir.network.lock().unwrap().clone() {
            let rules = Command::new("iptables-save")
                .args(["-t", "nat"])
                .output()
                .unwrap();
            let rules = String::from_utf8_lossy(&rules.stdout);
            let left: Vec<&str> = rules.lines().filter(|l| l.contains(&net.name)).collect();
            assert!(left.is_empty(), "iptables rules left behind: {left:?}");
            let links = Command::new("ip")
                .args(["-o", "link", "show", "master", &net.bridge])
                .output()
                .unwrap();
            let links = String::from_utf8_lossy(&links.stdout);
            assert!(
                links.trim().is_empty(),
                "veths left on {}: {links}",
                net.bridge
            );
            let leases: Vec<_> = fs::read_dir(self.dir.path().join("ipam").join(&net.name))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("10."))
                        .collect()
                })
                .unwrap_or_default();
            assert!(leases.is_empty(), "IP addresses still reserved: {leases:?}");
        }
    }
}

impl Daemon {
    /// A failed test still removes its pods (and with them their containers, mounts, cgroups
    /// and network), through the daemon while it runs, so one failure leaves no debris.
    fn remove_all_pods(&self) {
        let socket = self.socket();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(channel) = connect(&socket).await else {
                    return;
                };
                let mut client = RuntimeServiceClient::new(channel);
                let Ok(pods) = client
                    .list_pod_sandbox(crius::cri::ListPodSandboxRequest { filter: None })
                    .await
                else {
                    return;
                };
                for pod in pods.into_inner().items {
                    let id = pod.id;
                    let _ = client
                        .stop_pod_sandbox(crius::cri::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await;
                    let _ = client
                        .remove_pod_sandbox(crius::cri::RemovePodSandboxRequest {
                            pod_sandbox_id: id,
                        })
                        .await;
                }
            });
        })
        .join();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() && std::thread::panicking() {
            self.remove_all_pods();
        }
        if self.child.is_some() {
            let status = self.stop_with(Signal::SIGTERM);
            if !std::thread::panicking() {
                assert!(status.success(), "crius exited with {status} on SIGTERM");
                assert!(!self.socket().exists(), "SIGTERM left the socket behind");
            }
        }
        if !std::thread::panicking() {
            self.assert_nothing_left();
        }
    }
}

/// Whether the test daemons use the systemd cgroup driver (CRIUS_E2E_CGROUP_DRIVER=systemd).
pub fn systemd_driver() -> bool {
    std::env::var(CGROUP_DRIVER_ENV).as_deref() == Ok("systemd")
}

/// The units systemd has loaded (in any state) whose names match `pattern`, with their states:
/// `systemctl list-units --all`.
pub fn systemd_units(pattern: &str) -> Vec<String> {
    let out = Command::new("systemctl")
        .args([
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "--no-pager",
            pattern,
        ])
        .output()
        .expect("systemctl list-units");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// PIDs and command lines of processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Waits (up to 10 s) until no process's command line mentions `needle`.
pub async fn wait_gone(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(needle).is_empty() {
        assert!(Instant::now() < deadline, "{needle:?} still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 10 s) until some process's command line mentions `needle`.
pub async fn wait_running(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_mentioning(needle).is_empty() {
        assert!(Instant::now() < deadline, "{needle:?} never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gRPC channel over the unix socket, as kubelet dials it.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is ignored by the connector; tonic needs a syntactically valid one.
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}

/// UpdateRuntimeConfig with a pod CIDR, as kubelet sends it.
pub fn pod_cidr_request(cidr: &str) -> crius::cri::UpdateRuntimeConfigRequest {
    use crius::cri;
    cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.to_string(),
            }),
        }),
    }
}
