//! The churn driver: many pods, each with a container, created and removed by many concurrent
//! clients (each its own connection). Shared by the churn test (e2e/churn.rs) and the churn
//! benchmark (e2e/bench/churn.rs), which runs it against containerd too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crius::cri;

use crate::harness::{self, TestDir};

/// Where a churn's pods put their logs and cgroups: under a test dir's own names, so its leak
/// checks see them.
#[derive(Clone)]
pub struct Place {
    logs: PathBuf,
    /// Pod `n`'s cgroup parent is this followed by `churn-<n>`.
    cgroup_prefix: String,
    /// The pods' PID namespace: kubelet's default (one per container) or the pod's.
    pid: cri::NamespaceMode,
}

impl Place {
    pub fn of(dir: &TestDir) -> Place {
        Place {
            logs: dir.path().join("logs"),
            cgroup_prefix: dir.cgroup_parent(""),
            pid: cri::NamespaceMode::Container,
        }
    }

    /// The same place, its pods sharing one PID namespace (shareProcessNamespace, crictl's).
    pub fn with_pod_pid_namespace(self) -> Place {
        Place {
            pid: cri::NamespaceMode::Pod,
            ..self
        }
    }
}

/// What a churn run measured: each step's latencies, the pods per second, the errors.
#[derive(Debug, Default)]
pub struct ChurnReport {
    pub run: Vec<Duration>,
    pub create_start: Vec<Duration>,
    pub stop_remove: Vec<Duration>,
    /// RunPodSandbox through StartContainer: a pod's full start.
    pub started: Vec<Duration>,
    pub whole: Vec<Duration>,
    pub elapsed: Duration,
    pub errors: Vec<String>,
}

impl ChurnReport {
    pub fn pods_per_second(&self) -> f64 {
        self.whole.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} pods in {:.1}s ({:.1} pods/s), {} errors; RunPodSandbox p50 {} p99 {}; \
             Create+Start p50 {} p99 {}; Stop+Remove p50 {} p99 {}; full start p50 {} p99 {}; whole pod p50 {} p99 {}",
            self.whole.len(),
            self.elapsed.as_secs_f64(),
            self.pods_per_second(),
            self.errors.len(),
            ms(percentile(&self.run, 50)),
            ms(percentile(&self.run, 99)),
            ms(percentile(&self.create_start, 50)),
            ms(percentile(&self.create_start, 99)),
            ms(percentile(&self.stop_remove, 50)),
            ms(percentile(&self.stop_remove, 99)),
            ms(percentile(&self.started, 50)),
            ms(percentile(&self.started, 99)),
            ms(percentile(&self.whole, 50)),
            ms(percentile(&self.whole, 99)),
        )
    }
}

pub fn percentile(values: &[Duration], p: usize) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = (p * sorted.len()).div_ceil(100).max(1) - 1;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// A pod as kubelet asks for one (in `place`'s PID namespace shape), its cgroup under the
/// test's own parent.
pub fn pod_config(n: usize, place: &Place) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("churn-{n}"),
            namespace: "churn".into(),
            uid: format!("uid-churn-{n}"),
            attempt: 0,
        }),
        hostname: format!("churn-{n}"),
        log_directory: place.logs.join(n.to_string()).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("{}churn-{n}", place.cgroup_prefix),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: place.pid as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's container; its PID namespace as its pod's, as kubelet sends it.
pub fn container_config(image: &str, place: &Place) -> cri::ContainerConfig {
    cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: place.pid as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        metadata: Some(cri::ContainerMetadata {
            name: "work".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: vec!["/bin/sleep".into(), "999999".into()],
        log_path: "work.log".into(),
        ..Default::default()
    }
}

type Client = cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// One pod's whole life; the time of each step.
async fn one_pod(
    rt: &mut Client,
    n: usize,
    place: &Place,
    image: &str,
) -> Result<[Duration; 3], String> {
    let config = pod_config(n, place);
    let began = Instant::now();
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox {n}: {e:?}"))?
        .into_inner()
        .pod_sandbox_id;
    let ran = began.elapsed();
    let began = Instant::now();
    let container = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(container_config(image, place)),
            sandbox_config: Some(config),
        })
        .await
        .map_err(|e| format!("CreateContainer {n}: {e:?}"))?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: container,
    })
    .await
    .map_err(|e| format!("StartContainer {n}: {e:?}"))?;
    let started = began.elapsed();
    let began = Instant::now();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .map_err(|e| format!("StopPodSandbox {n}: {e:?}"))?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .map_err(|e| format!("RemovePodSandbox {n}: {e:?}"))?;
    Ok([ran, started, began.elapsed()])
}

/// `pods` pods through `clients` concurrent clients against the runtime at `socket`.
pub async fn churn(
    socket: &Path,
    place: &Place,
    image: &str,
    pods: usize,
    clients: usize,
) -> ChurnReport {
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let channel = harness::connect(socket).await.expect("connect");
        let (next, place, image) = (next.clone(), place.clone(), image.to_string());
        tasks.spawn(async move {
            let mut rt = Client::new(channel);
            let mut results = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= pods {
                    return results;
                }
                let began = Instant::now();
                let steps = one_pod(&mut rt, n, &place, &image).await;
                results.push(steps.map(|s| (s, began.elapsed())));
            }
        });
    }
    let mut report = ChurnReport::default();
    while let Some(done) = tasks.join_next().await {
        for result in done.expect("client task") {
            match result {
                Ok(([run, start, stop], whole)) => {
                    report.run.push(run);
                    report.create_start.push(start);
                    report.stop_remove.push(stop);
                    report.started.push(run + start);
                    report.whole.push(whole);
                }
                Err(e) => report.errors.push(e),
            }
        }
    }
    report.elapsed = began.elapsed();
    report
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The median of each step crius logs at debug level (the daemon's log from `log`): the pod
/// set-up steps, the pod stop steps, and each RPC's whole duration, for the README's
/// per-step breakdown.
pub fn step_medians(log: &str) -> Vec<(String, Duration)> {
    let mut steps: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    for line in log.lines() {
        let fields =
            |prefix: &str, names: &[&str], steps: &mut std::collections::BTreeMap<_, Vec<_>>| {
                for name in names {
                    if let Some(us) = field_us(line, name) {
                        steps.entry(format!("{prefix}{name}")).or_default().push(us);
                    }
                }
            };
        if line.contains("pod set-up steps") {
            let names = ["agent_us", "pins_us", "cgroup_us", "cni_add_us", "save_us"];
            fields("RunPodSandbox: ", &names, &mut steps);
        } else if line.contains("pod reserved") {
            let names = ["validate_us", "lock_wait_us", "reserve_us"];
            fields("RunPodSandbox: ", &names, &mut steps);
        } else if line.contains("pod stopped") {
            fields("StopPodSandbox: ", &["network_us", "agent_us"], &mut steps);
        } else if line.contains("rpc done")
            && let Some(method) = line
                .split("method=\"")
                .nth(1)
                .and_then(|m| m.split('"').next())
            && let Some(us) = field_us(line, "duration_us")
        {
            steps
                .entry(format!("{method} (whole RPC)"))
                .or_default()
                .push(us);
        }
    }
    steps
        .into_iter()
        .map(|(name, values)| (name, percentile(&values, 50)))
        .collect()
}

/// `name=<n>` in a log line, as microseconds.
fn field_us(line: &str, name: &str) -> Option<Duration> {
    let value = line.split(&format!(" {name}=")).nth(1)?;
    let digits: String = value.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok().map(Duration::from_micros)
}

/// CPU time used so far: (by the process `pid`, by the whole machine), from /proc.
pub fn cpu_time(pid: i32) -> (Duration, Duration) {
    let tick = Duration::from_secs(1) / 100;
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .collect::<Vec<_>>();
            let user: u32 = after.get(11)?.parse().ok()?;
            let system: u32 = after.get(12)?.parse().ok()?;
            Some(tick * (user + system))
        })
        .unwrap_or_default();
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let cpu = stat.lines().next()?;
            // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
            let v: Vec<u64> = cpu
                .split_whitespace()
                .skip(1)
                .filter_map(|n| n.parse().ok())
                .collect();
            let busy = v.iter().sum::<u64>() - v.get(3)? - v.get(4)?;
            Some(tick * u32::try_from(busy).ok()?)
        })
        .unwrap_or_default();
    (own, machine)
}
