//! Hostile input: requests a careless or malicious client could send. Each must be refused
//! with a clear error (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS,
//! RESOURCE_EXHAUSTED or OUT_OF_RANGE, the message naming the field) before anything is made;
//! never INTERNAL, UNKNOWN or a broken stream, the daemon stays up, and nothing is left.
//! A seeded generator sends every RPC garbage; the rest pin down one rule each.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius::cri;
use crius::cri::image_service_client::ImageServiceClient;
use crius::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::containers::{Pod, busybox, container_config, create, remove_all, sh, start_pod};
use crate::harness::{Daemon, processes_mentioning};
use crate::images::pull;
use crate::registry::TestRegistry;
use crate::sandbox::{pod_config, run_pod};

/// The generator's seed; CRIUS_HOSTILE_SEED (decimal or 0x-hex) replays another.
const SEED: u64 = 0x5eed_c21a_0b5e_0001;
/// How many generated calls one run sends.
const CALLS: usize = 500;
/// The longest any single call may take before it counts as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A command that runs until stopped and exits at once on SIGTERM (even as PID 1).
const UNTIL_STOPPED: &[&str] = &["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"];

/// A change made to a valid container config.
type Edit = dyn Fn(&mut cri::ContainerConfig);

async fn start(daemon: &Daemon, id: &str) -> Result<(), Status> {
    daemon
        .runtime()
        .await
        .unwrap()
        .start_container(cri::StartContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .map(|_| ())
}

/// Asserts INVALID_ARGUMENT whose message names `field`.
#[track_caller]
fn assert_invalid<T: Debug>(result: Result<T, Status>, field: &str) {
    let err = result.expect_err("the request was accepted");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(field),
        "{field:?} not named: {}",
        err.message()
    );
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Nothing of any pod or container is left in the daemon's state and root dirs.
fn assert_no_pod_state(daemon: &Daemon) {
    let state = daemon.dir.state();
    for dir in [
        state.join("pods"),
        state.join("netns"),
        state.join("agents"),
        state.join("containers"),
        daemon.dir.root().join("containers"),
    ] {
        let left: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect();
        let log = daemon.dir.log();
        let about: Vec<&str> = left
            .iter()
            .filter_map(|p| p.rsplit('/').next())
            .flat_map(|id| {
                log.lines()
                    .filter(move |l| l.contains(&id[..12.min(id.len())]))
            })
            .collect();
        assert!(
            left.is_empty(),
            "left behind: {left:?}; the daemon said:\n{}",
            about.join("\n")
        );
    }
    let agents: Vec<_> = processes_mentioning(&daemon.dir.path().display().to_string())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("crius-agent"))
        .collect();
    assert!(agents.is_empty(), "pod agents left: {agents:?}");
}

/// Files named `<marker>…` in / or /tmp (where escaping log paths used to land).
fn escaped_files(marker: &str) -> Vec<PathBuf> {
    ["/", "/tmp"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(marker))
        .map(|e| e.path())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ports_out_of_range_are_refused_before_anything_is_made() {
    let daemon = Daemon::start("").await;
    let net = daemon.dir.write_bridge_cni_config();
    let good = cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 18080,
        host_ip: String::new(),
    };
    for (mapping, field) in [
        (
            cri::PortMapping {
                host_port: 70000,
                ..good.clone()
            },
            "port_mappings[0].host_port",
        ),
        (
            cri::PortMapping {
                host_port: -1,
                ..good.clone()
            },
            "port_mappings[0].host_port",
        ),
        (
            cri::PortMapping {
                host_port: 65536,
                ..good.clone()
            },
            "port_mappings[0].host_port",
        ),
        (
            cri::PortMapping {
                container_port: 0,
                ..good.clone()
            },
            "port_mappings[0].container_port",
        ),
        (
            cri::PortMapping {
                container_port: 65536,
                ..good.clone()
            },
            "port_mappings[0].container_port",
        ),
        (
            cri::PortMapping {
                protocol: 9,
                ..good.clone()
            },
            "port_mappings[0].protocol",
        ),
        (
            cri::PortMapping {
                host_ip: "10.0.0.300".into(),
                ..good.clone()
            },
            "port_mappings[0].host_ip",
        ),
    ] {
        let mut config = pod_config(&daemon, "ports");
        config.port_mappings = vec![mapping];
        assert_invalid(run_pod(&daemon, config).await, field);
    }
    assert_no_pod_state(&daemon);
    let rules = std::process::Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    let ours: Vec<&str> = rules.lines().filter(|l| l.contains(&net.name)).collect();
    assert!(ours.is_empty(), "DNAT rules were made: {ours:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_log_paths_stay_inside_the_pods_log_directory() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "logs", |_| {}).await;
    let marker = format!("crius-hostile-log-{}", std::process::id());
    for log_path in [
        format!("/tmp/{marker}-absolute.log"),
        format!("/{marker}-root.log"),
        format!("{}tmp/{marker}-up.log", "../".repeat(16)),
        format!("c/../../{marker}-sibling.log"),
        ".".to_string(),
        "c/".to_string(),
        "c/.".to_string(),
    ] {
        let mut c = container_config("c", &["sh", "-c", "echo escaped"]);
        c.log_path = log_path.clone();
        assert_invalid(create(&daemon, &pod, c).await, "config.log_path");
    }
    assert_eq!(entries(&daemon.dir.root().join("containers")), 0);
    assert_eq!(escaped_files(&marker), Vec::<PathBuf>::new());
    let sibling = pod
        .logs
        .parent()
        .unwrap()
        .join(format!("{marker}-sibling.log"));
    assert!(!sibling.exists(), "{} was written", sibling.display());

    // What kubelet sends still works.
    let mut c = container_config("c", &["sh", "-c", "echo inside"]);
    c.log_path = "c/0.log".into();
    let id = create(&daemon, &pod, c).await.unwrap();
    start(&daemon, &id).await.unwrap();
    let log = pod.logs.join("c/0.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("inside")
    {
        assert!(Instant::now() < deadline, "nothing logged to {log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sysctls_the_kernel_lacks_or_refuses_are_invalid_argument() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    for (name, value) in [
        // Known and namespaced, but out of the kernel's range: only the pod agent, writing it
        // in the pod's namespace, finds out.
        ("net.ipv4.ip_unprivileged_port_start", "999999"),
        ("kernel.msgmax", "-1"),
        ("net.ipv4.no_such_sysctl", "1"),
        ("kernel.shm_rmid_forced", "1\0"),
    ] {
        let mut config = pod_config(&daemon, "sysctl");
        config.linux.as_mut().unwrap().sysctls =
            HashMap::from([(name.to_string(), value.to_string())]);
        assert_invalid(run_pod(&daemon, config).await, name);
    }
    assert_no_pod_state(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pod_limits_the_kernel_refuses_are_invalid_argument() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let tiny_memory = cri::LinuxContainerResources {
        memory_limit_in_bytes: 1000,
        ..Default::default()
    };
    let linux = |edit: &dyn Fn(&mut cri::LinuxPodSandboxConfig)| {
        let mut config = pod_config(&daemon, "limits");
        edit(config.linux.as_mut().unwrap());
        config
    };
    // Too small to hold the pod's own cgroup: only the kernel knows, as it creates it.
    assert_invalid(
        run_pod(&daemon, linux(&|l| l.overhead = Some(tiny_memory.clone()))).await,
        "config.linux.resources",
    );
    assert_invalid(
        run_pod(
            &daemon,
            linux(&|l| {
                l.resources = Some(cri::LinuxContainerResources {
                    cpuset_cpus: "0-4095".into(),
                    ..Default::default()
                })
            }),
        )
        .await,
        "config.linux.resources.cpuset_cpus",
    );
    assert_invalid(
        run_pod(
            &daemon,
            linux(&|l| l.cgroup_parent = format!("/{}", "c".repeat(300))),
        )
        .await,
        "config.linux.cgroup_parent",
    );
    assert_no_pod_state(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_huge_fields_are_answered_not_reset() {
    let daemon = Daemon::start("").await;
    let huge = "y".repeat(1 << 20);
    let mut runtime = daemon.runtime().await.unwrap();
    // The message quotes the field; cut short, it still fits in the response's headers.
    let err = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(&daemon, "huge")),
            runtime_handler: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("invalid runtime_handler: \"yyy"));
    assert!(err.message().len() < 8192);
    let err = runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: huge,
            verbose: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_no_pod_state(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_volumes_are_mounted_parent_before_child() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "volumes", |_| {}).await;
    let parent = daemon.dir.path().join("vol-parent");
    let child = daemon.dir.path().join("vol-child");
    std::fs::create_dir_all(&parent).unwrap();
    std::fs::create_dir_all(&child).unwrap();
    std::fs::write(parent.join("parent-marker"), "parent\n").unwrap();
    std::fs::write(child.join("child-marker"), "child\n").unwrap();
    let volume = |dest: &str, host: &Path| cri::Mount {
        container_path: dest.into(),
        host_path: host.to_string_lossy().into_owned(),
        ..Default::default()
    };
    let mut c = container_config("vols", UNTIL_STOPPED);
    // The child first, as a pod spec may list them.
    c.mounts = vec![volume("/data/sub", &child), volume("/data", &parent)];
    let id = create(&daemon, &pod, c).await.unwrap();
    start(&daemon, &id).await.unwrap();
    let (out, code) = sh(
        &daemon,
        &id,
        "cat /data/sub/child-marker /data/parent-marker",
    )
    .await;
    assert_eq!((out.as_str(), code), ("child\nparent\n", 0));
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_container_fields_are_refused_and_create_nothing() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "fields", |_| {}).await;
    let page = 4096;
    let cases: Vec<(Box<Edit>, &str)> = vec![
        (
            Box::new(|c| c.working_dir = "/etc/passwd".into()),
            "config.working_dir",
        ),
        (
            Box::new(|c| c.working_dir = "/bin/busybox/sub".into()),
            "config.working_dir",
        ),
        (
            Box::new(|c| c.args = vec!["ok".into(), "a\0b".into()]),
            "config.args[1]",
        ),
        (
            Box::new(|c| c.command = vec!["sh\0".into()]),
            "config.command[0]",
        ),
        (
            Box::new(|c| {
                c.envs = vec![cri::KeyValue {
                    key: "A".into(),
                    value: b"x\0y".to_vec(),
                }]
            }),
            "config.envs[\"A\"]",
        ),
        (
            Box::new(move |c| c.args = vec!["x".repeat(32 * page)]),
            "config.args[0]",
        ),
        (
            Box::new(move |c| c.args = vec!["y".repeat(16 * page); 40]),
            "config.args and config.envs",
        ),
        (
            Box::new(|c| {
                c.envs = vec![cri::KeyValue {
                    key: "BIG".into(),
                    value: vec![b'v'; 1 << 20],
                }]
            }),
            "config.envs[\"BIG\"]",
        ),
        (Box::new(|c| c.log_path = ".".into()), "config.log_path"),
        (
            Box::new(|c| {
                c.mounts = vec![cri::Mount {
                    container_path: "/data".into(),
                    host_path: "../../../etc".into(),
                    ..Default::default()
                }]
            }),
            "config.mounts[0].host_path",
        ),
        (
            Box::new(|c| {
                c.labels.insert("k".into(), "v\0".into());
            }),
            "config.labels",
        ),
        (
            Box::new(|c| {
                let s = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
                s.supplemental_groups = vec![u32::MAX as i64];
            }),
            "config.linux.security_context.supplemental_groups[0]",
        ),
        (
            Box::new(|c| {
                c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
                    cpu_period: -1,
                    ..Default::default()
                })
            }),
            "config.linux.resources.cpu_period",
        ),
    ];
    for (edit, field) in &cases {
        let mut c = container_config("f", &["true"]);
        edit(&mut c);
        assert_invalid(create(&daemon, &pod, c).await, field);
    }
    assert_eq!(entries(&daemon.dir.root().join("containers")), 0);

    // A running container: bad exec commands are refused, huge timeouts are fine.
    let id = create(&daemon, &pod, container_config("r", UNTIL_STOPPED))
        .await
        .unwrap();
    start(&daemon, &id).await.unwrap();
    let mut runtime = daemon.runtime().await.unwrap();
    let exec = |cmd: Vec<String>, timeout: i64| cri::ExecSyncRequest {
        container_id: id.clone(),
        cmd,
        timeout,
    };
    assert_invalid(
        runtime
            .exec_sync(exec(vec!["sh".into(), "-c".into(), "\0".into()], 5))
            .await,
        "cmd",
    );
    assert_invalid(
        runtime
            .exec(cri::ExecRequest {
                container_id: id.clone(),
                cmd: vec!["echo".into(), "x".repeat(1 << 20)],
                stdout: true,
                ..Default::default()
            })
            .await,
        "cmd",
    );
    assert_invalid(
        runtime
            .exec_sync(exec(vec!["no-such-program".into()], 5))
            .await,
        "cmd[0]",
    );
    assert_invalid(
        runtime.exec_sync(exec(vec!["/etc/passwd".into()], 5)).await,
        "cmd[0]",
    );
    let answer = runtime
        .exec_sync(exec(vec!["echo".into(), "ok".into()], i64::MAX))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.stdout, b"ok\n");
    let stopping = Instant::now();
    runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: i64::MAX,
        })
        .await
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(10));
    let mut update = cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            unified: HashMap::from([("../../cgroup.procs".into(), "1".into())]),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_invalid(
        runtime.update_container_resources(update.clone()).await,
        "linux.unified",
    );
    update.linux = Some(cri::LinuxContainerResources {
        cpuset_cpus: "0-4095".into(),
        ..Default::default()
    });
    assert_invalid(
        runtime.update_container_resources(update).await,
        "linux.cpuset_cpus",
    );
    remove_all(&daemon, &pod).await;
}

// ------------------------------------------------------------------ the generator

/// splitmix64: small, fast, and the same sequence on every machine for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// One of `items`, or now and then a garbage string instead.
    fn one_of(&mut self, items: &[String]) -> String {
        match self.below(items.len() + 1) {
            i if i < items.len() => items[i].clone(),
            _ => self.string(),
        }
    }

    fn string(&mut self) -> String {
        match self.below(18) {
            0 => String::new(),
            1 => "\0".into(),
            2 => "a\0b".into(),
            3 => "../".into(),
            4 => "../../../../../etc/passwd".into(),
            5 => "/".into(),
            6 => ".".into(),
            7 => "x".repeat(10_000),
            8 => "ünï\u{202e}cödé✓".into(),
            9 => "\n\r\t".into(),
            10 => "-rf".into(),
            11 => " ".into(),
            12 => "%s%n%x".into(),
            13 => "a;b=c".into(),
            14 => "UPPER/case".into(),
            15 => "y".repeat(1 << 20),
            _ => format!("w{}", self.next() % 100_000),
        }
    }

    fn int64(&mut self) -> i64 {
        self.pick(&[
            i64::MIN,
            -1,
            0,
            1,
            2,
            999,
            1000,
            65535,
            65536,
            70000,
            i32::MAX as i64,
            u32::MAX as i64,
            i64::MAX,
        ])
    }

    fn int32(&mut self) -> i32 {
        self.pick(&[i32::MIN, -1, 0, 1, 2, 3, 99, 65535, 65536, 70000, i32::MAX])
    }

    fn map(&mut self) -> HashMap<String, String> {
        (0..1 + self.below(3))
            .map(|_| (self.string(), self.string()))
            .collect()
    }
}

/// What the generated calls aim at besides garbage: a ready pod with a running and a created
/// container, and what must not be removed by an id prefix.
struct Targets {
    pod: Pod,
    running: String,
    created: String,
    known_ids: Vec<String>,
    image: String,
    registry: String,
    marker: String,
    cgroup_base: String,
    daemon_dir: String,
}

impl Targets {
    /// Garbage ids, real ids, their prefixes and near misses. Operations that stop or remove
    /// get none that would select a target.
    fn id(&self, rng: &mut Rng, destructive: bool) -> String {
        let known = rng.pick(&self.known_ids);
        let id = match rng.below(10) {
            0 => String::new(),
            1 => "\0".into(),
            2 => "../../".into(),
            3 => "f".repeat(10_000),
            4 => known[..1 + rng.below(12)].to_string(),
            5 => known.clone(),
            6 => format!("{known}x"),
            7 => known.to_uppercase(),
            8 => format!("{:016x}{:016x}", rng.next(), rng.next()),
            _ => rng.string(),
        };
        if destructive && !id.is_empty() && self.known_ids.iter().any(|k| k.starts_with(&id)) {
            return format!("no-{id}");
        }
        id
    }

    fn image_ref(&self, rng: &mut Rng, destructive: bool) -> String {
        let r = &self.registry;
        let mut refs = vec![
            String::new(),
            "\0".into(),
            "UPPER/Case:tag".into(),
            "a:b:c".into(),
            "@sha256:".into(),
            "x@sha256:zz".into(),
            "../../etc/passwd".into(),
            " spaced name ".into(),
            format!("{r}/crius-test/busybox:no-such-tag"),
            format!("{r}/crius-test/no-such-repo:latest"),
            format!("{r}/crius-test/busybox@sha256:{}", "0".repeat(64)),
            format!("{r}/a//b:c"),
            format!("{r}/{}", "a".repeat(10_000)),
            format!("{r}/crius-test/busybox:{}", "t".repeat(200)),
        ];
        if !destructive {
            refs.push(self.image.clone());
            refs.push("sha256:".into());
        }
        rng.pick(&refs)
    }
}

/// The result of one generated call: its RPC, the request as sent, and the answer.
struct Call {
    rpc: &'static str,
    request: String,
    result: Result<Made, Status>,
}

/// What a call that succeeded made, to be removed at once.
enum Made {
    Nothing,
    Pod(String),
    Container(String),
}

fn call<T: Debug>(rpc: &'static str, request: &T, result: Result<Made, Status>) -> Call {
    Call {
        rpc,
        request: describe(request),
        result,
    }
}

/// A request's Debug form with long runs cut, so a report stays readable.
fn describe(request: &impl Debug) -> String {
    let full = format!("{request:?}");
    let mut out = String::new();
    let mut run: Option<(char, usize)> = None;
    let flush = |out: &mut String, run: Option<(char, usize)>| {
        if let Some((c, n)) = run {
            if n > 16 {
                out.push_str(&format!("{c}…×{n}"));
            } else {
                out.extend(std::iter::repeat_n(c, n));
            }
        }
    };
    for c in full.chars() {
        match &mut run {
            Some((last, n)) if *last == c => *n += 1,
            _ => {
                flush(&mut out, run);
                run = Some((c, 1));
            }
        }
    }
    flush(&mut out, run);
    if out.len() > 2000 {
        let mut end = 2000;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

fn timed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Codes a generated call may fail with; the RPCs crius documents as unimplemented may also
/// answer UNIMPLEMENTED.
fn acceptable(rpc: &str, status: &Status) -> Result<(), String> {
    let allowed = matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::OutOfRange
    ) || (status.code() == Code::Unimplemented && rpc == "CheckpointContainer");
    if !allowed {
        return Err(format!("{:?}", status.code()));
    }
    if status.message().trim().is_empty() {
        return Err("an empty message".into());
    }
    // The transport's own failures (a reset stream) come with a code but are no answer.
    if status.message().contains("h2 protocol error")
        || status.message().contains("transport error")
    {
        return Err("a transport error".into());
    }
    if status.code() == Code::InvalidArgument && !status.message().starts_with("invalid ") {
        return Err("INVALID_ARGUMENT without a field".into());
    }
    Ok(())
}

/// A pod config from a valid one with one to three hostile changes.
fn hostile_pod(rng: &mut Rng, daemon: &Daemon, t: &Targets, n: usize) -> cri::RunPodSandboxRequest {
    let name = format!("h{n}");
    let mut c = pod_config(daemon, &name);
    c.log_directory = format!("{}/logs/{name}", t.daemon_dir);
    let mut handler = String::new();
    for _ in 0..1 + rng.below(3) {
        let linux = c.linux.get_or_insert_with(Default::default);
        match rng.below(14) {
            0 => {
                if rng.chance(20) {
                    c.metadata = None;
                } else if let Some(m) = c.metadata.as_mut() {
                    match rng.below(3) {
                        0 => m.name = rng.string(),
                        1 => m.namespace = rng.string(),
                        _ => m.uid = rng.string(),
                    }
                }
            }
            1 => c.hostname = rng.one_of(&["h".repeat(65), "-x".into(), "a b".into()]),
            2 => {
                c.log_directory = rng.one_of(&[
                    "relative/logs".into(),
                    "/tmp/../..".into(),
                    "/logs\0".into(),
                ])
            }
            3 => {
                c.port_mappings = (0..1 + rng.below(3))
                    .map(|_| cri::PortMapping {
                        protocol: rng.int32(),
                        container_port: rng.int32(),
                        host_port: rng.int32(),
                        host_ip: rng.pick(&[
                            String::new(),
                            "300.1.1.1".into(),
                            "not-an-ip".into(),
                            "127.0.0.1".into(),
                            "\0".into(),
                        ]),
                    })
                    .collect()
            }
            4 => {
                c.dns_config = Some(cri::DnsConfig {
                    servers: vec![rng.one_of(&["10.96.0.10".into()])],
                    searches: vec![rng.string()],
                    options: vec![rng.one_of(&["ndots:5".into()])],
                })
            }
            5 => {
                let base = &t.cgroup_base;
                linux.cgroup_parent = rng.pick(&[
                    format!("{base}/{}", "c".repeat(300)),
                    format!("{base}/a\0b"),
                    "../../..".into(),
                    format!("{base}/a//b"),
                    "kubepods.slice".into(),
                    format!("{base}/{}", "d/".repeat(2100)),
                    format!("{base}/ok-{n}"),
                ])
            }
            6 => {
                let (name, value) = rng.pick(&[
                    ("vm.swappiness", "1"),
                    ("net.ipv4.ip_unprivileged_port_start", "999999"),
                    ("net.ipv4.ip_unprivileged_port_start", "1024"),
                    ("kernel.shm_rmid_forced", "\0"),
                    ("kernel.msgmax", "-1"),
                    ("net.no.such.sysctl", "1"),
                    ("../../../etc/passwd", "x"),
                    ("", ""),
                    ("net.ipv4", "1"),
                    ("kernel.sem", "x y z"),
                    ("net.core.somaxconn", "18446744073709551616"),
                ]);
                linux.sysctls = HashMap::from([(name.to_string(), value.to_string())]);
            }
            7 => c.labels.extend(rng.map()),
            8 => c.annotations.extend(rng.map()),
            9 => handler = rng.string(),
            10 => {
                let security = linux.security_context.get_or_insert_with(Default::default);
                security.namespace_options = Some(cri::NamespaceOption {
                    network: rng.int32().clamp(-1, 4),
                    pid: rng.int32().clamp(-1, 4),
                    ipc: rng.int32().clamp(-1, 4),
                    ..Default::default()
                });
            }
            11 => linux.resources = Some(hostile_resources(rng)),
            12 => linux.overhead = Some(hostile_resources(rng)),
            _ => {
                if let Some(m) = c.metadata.as_mut() {
                    m.attempt = u32::MAX;
                }
            }
        }
    }
    cri::RunPodSandboxRequest {
        config: Some(c),
        runtime_handler: handler,
    }
}

fn hostile_resources(rng: &mut Rng) -> cri::LinuxContainerResources {
    let mut r = cri::LinuxContainerResources::default();
    for _ in 0..1 + rng.below(3) {
        match rng.below(10) {
            0 => r.cpu_period = rng.int64(),
            1 => r.cpu_quota = rng.int64(),
            2 => r.cpu_shares = rng.int64(),
            3 => r.memory_limit_in_bytes = rng.int64(),
            4 => r.memory_swap_limit_in_bytes = rng.int64(),
            5 => r.oom_score_adj = rng.int64(),
            6 => r.cpuset_cpus = rng.one_of(&["0".into(), "0-4095".into(), "1-0".into()]),
            7 => r.cpuset_mems = rng.one_of(&["0".into(), "7".into()]),
            8 => {
                r.hugepage_limits = vec![cri::HugepageLimit {
                    page_size: rng.one_of(&["2MB".into(), "3KB".into()]),
                    limit: rng.next(),
                }]
            }
            _ => r.unified = rng.map(),
        }
    }
    r
}

/// A container config from a valid one with one to three hostile changes; sometimes aimed at
/// a pod that is not there.
fn hostile_container(rng: &mut Rng, t: &Targets, n: usize) -> cri::CreateContainerRequest {
    let name = format!("c{n}");
    let mut c = container_config(&name, &["true"]);
    c.log_path = format!("{name}/0.log");
    let mut pod_id = t.pod.id.clone();
    let marker = &t.marker;
    for _ in 0..1 + rng.below(3) {
        let linux = c.linux.get_or_insert_with(Default::default);
        match rng.below(13) {
            0 => {
                if rng.chance(20) {
                    c.metadata = None;
                } else if let Some(m) = c.metadata.as_mut() {
                    m.name = rng.string();
                }
            }
            1 => {
                c.image = Some(cri::ImageSpec {
                    image: t.image_ref(rng, true),
                    ..Default::default()
                })
            }
            2 => match rng.below(5) {
                0 => c.args = vec!["a\0b".into()],
                1 => c.args = vec!["x".repeat(1 << 20)],
                2 => c.args = vec!["y".repeat(100_000); 30],
                3 => c.command = vec![],
                _ => c.command = vec![rng.string()],
            },
            3 => {
                c.envs = match rng.below(5) {
                    0 => vec![cri::KeyValue {
                        key: rng.pick(&["A\0".into(), "A=B".into(), String::new()]),
                        value: b"1".to_vec(),
                    }],
                    1 => vec![cri::KeyValue {
                        key: "A".into(),
                        value: b"1\x002".to_vec(),
                    }],
                    2 => vec![cri::KeyValue {
                        key: "BIG".into(),
                        value: vec![b'v'; 1 << 20],
                    }],
                    3 => (0..3000)
                        .map(|i| cri::KeyValue {
                            key: format!("V{i}"),
                            value: vec![b'v'; 1000],
                        })
                        .collect(),
                    _ => vec![cri::KeyValue {
                        key: rng.string(),
                        value: rng.string().into_bytes(),
                    }],
                }
            }
            4 => {
                c.working_dir = rng.one_of(&[
                    "relative".into(),
                    "/etc/passwd".into(),
                    "/bin/busybox/x".into(),
                    "/w\0".into(),
                    "/nonexistent/deeper".into(),
                ])
            }
            5 => {
                c.mounts = vec![cri::Mount {
                    container_path: rng.one_of(&[
                        "relative".into(),
                        "/data\0".into(),
                        "/../../escape".into(),
                        "/data".into(),
                    ]),
                    host_path: rng.pick(&[
                        "/nonexistent/crius-hostile".into(),
                        "../../etc".into(),
                        "/tmp/../etc".into(),
                        "\0".into(),
                        String::new(),
                        t.daemon_dir.clone(),
                    ]),
                    readonly: rng.chance(50),
                    propagation: rng.int32().clamp(-1, 3),
                    ..Default::default()
                }]
            }
            6 => {
                c.devices = vec![cri::Device {
                    container_path: rng.pick(&["/dev/x".into(), "relative".into(), "\0".into()]),
                    host_path: rng.pick(&[
                        "/etc/passwd".into(),
                        "/nonexistent".into(),
                        "dev/null".into(),
                        "/dev/null".into(),
                    ]),
                    permissions: rng.one_of(&["rwm".into()]),
                }]
            }
            7 => {
                c.log_path = rng.pick(&[
                    format!("/tmp/{marker}-abs.log"),
                    format!("{}tmp/{marker}-up.log", "../".repeat(16)),
                    ".".into(),
                    "dir/".into(),
                    "a\0".into(),
                    format!("a/../../{marker}-sibling.log"),
                ])
            }
            8 => {
                if rng.chance(50) {
                    c.labels.extend(rng.map());
                } else {
                    c.annotations.extend(rng.map());
                }
            }
            9 => linux.resources = Some(hostile_resources(rng)),
            10 => {
                let s = linux.security_context.get_or_insert_with(Default::default);
                match rng.below(8) {
                    0 => {
                        s.capabilities = Some(cri::Capability {
                            add_capabilities: vec![rng.one_of(&["NOT_A_CAP".into(), "ALL".into()])],
                            ..Default::default()
                        })
                    }
                    1 => s.run_as_username = rng.string(),
                    2 => s.run_as_user = Some(cri::Int64Value { value: rng.int64() }),
                    3 => s.run_as_group = Some(cri::Int64Value { value: rng.int64() }),
                    4 => s.masked_paths = vec![rng.string()],
                    5 => {
                        s.seccomp = Some(cri::SecurityProfile {
                            profile_type: rng.int32().clamp(-1, 3),
                            localhost_ref: rng.string(),
                        })
                    }
                    6 => s.privileged = true,
                    _ => s.supplemental_groups = vec![rng.int64()],
                }
            }
            11 => pod_id = t.id(rng, false),
            _ => {
                c.tty = rng.chance(50);
                c.stdin = rng.chance(50);
                c.stdin_once = rng.chance(50);
            }
        }
    }
    cri::CreateContainerRequest {
        pod_sandbox_id: pod_id,
        config: Some(c),
        sandbox_config: Some(t.pod.config.clone()),
    }
}

/// The clients one generated call uses.
struct Clients {
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
}

fn made_nothing<T>(r: Result<tonic::Response<T>, Status>) -> Result<Made, Status> {
    r.map(|_| Made::Nothing)
}

/// Sends one generated request; which RPC and what garbage is up to `rng`.
async fn generated_call(
    rng: &mut Rng,
    daemon: &Daemon,
    t: &Targets,
    c: &mut Clients,
    n: usize,
) -> Call {
    let rt = &mut c.runtime;
    match rng.below(33) {
        0..=4 => {
            let req = hostile_pod(rng, daemon, t, n);
            let r = rt.run_pod_sandbox(timed(req.clone())).await;
            call(
                "RunPodSandbox",
                &req,
                r.map(|r| Made::Pod(r.into_inner().pod_sandbox_id)),
            )
        }
        5..=9 => {
            let req = hostile_container(rng, t, n);
            let r = rt.create_container(timed(req.clone())).await;
            call(
                "CreateContainer",
                &req,
                r.map(|r| Made::Container(r.into_inner().container_id)),
            )
        }
        10 => {
            let req = cri::StopPodSandboxRequest {
                pod_sandbox_id: t.id(rng, true),
            };
            let r = rt.stop_pod_sandbox(timed(req.clone())).await;
            call("StopPodSandbox", &req, made_nothing(r))
        }
        11 => {
            let req = cri::RemovePodSandboxRequest {
                pod_sandbox_id: t.id(rng, true),
            };
            let r = rt.remove_pod_sandbox(timed(req.clone())).await;
            call("RemovePodSandbox", &req, made_nothing(r))
        }
        12 => {
            let req = cri::PodSandboxStatusRequest {
                pod_sandbox_id: t.id(rng, false),
                verbose: rng.chance(50),
            };
            let r = rt.pod_sandbox_status(timed(req.clone())).await;
            call("PodSandboxStatus", &req, made_nothing(r))
        }
        13 => {
            let req = cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    id: t.id(rng, false),
                    state: rng
                        .chance(50)
                        .then(|| cri::PodSandboxStateValue { state: rng.int32() }),
                    label_selector: rng.map(),
                }),
            };
            let r = rt.list_pod_sandbox(timed(req.clone())).await;
            call("ListPodSandbox", &req, made_nothing(r))
        }
        14 => {
            let id = if rng.chance(30) {
                t.created.clone()
            } else {
                t.id(rng, false)
            };
            let req = cri::StartContainerRequest { container_id: id };
            let r = rt.start_container(timed(req.clone())).await;
            call("StartContainer", &req, made_nothing(r))
        }
        15 => {
            let req = cri::StopContainerRequest {
                container_id: t.id(rng, true),
                timeout: rng.int64(),
            };
            let r = rt.stop_container(timed(req.clone())).await;
            call("StopContainer", &req, made_nothing(r))
        }
        16 => {
            let req = cri::RemoveContainerRequest {
                container_id: t.id(rng, true),
            };
            let r = rt.remove_container(timed(req.clone())).await;
            call("RemoveContainer", &req, made_nothing(r))
        }
        17 => {
            let req = cri::ContainerStatusRequest {
                container_id: t.id(rng, false),
                verbose: rng.chance(50),
            };
            let r = rt.container_status(timed(req.clone())).await;
            call("ContainerStatus", &req, made_nothing(r))
        }
        18 => {
            let req = cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    id: t.id(rng, false),
                    state: rng
                        .chance(50)
                        .then(|| cri::ContainerStateValue { state: rng.int32() }),
                    pod_sandbox_id: t.id(rng, false),
                    label_selector: rng.map(),
                }),
            };
            let r = rt.list_containers(timed(req.clone())).await;
            call("ListContainers", &req, made_nothing(r))
        }
        19 => {
            let id = if rng.chance(60) {
                t.running.clone()
            } else {
                t.id(rng, false)
            };
            let req = cri::UpdateContainerResourcesRequest {
                container_id: id,
                linux: rng.chance(90).then(|| hostile_resources(rng)),
                ..Default::default()
            };
            let r = rt.update_container_resources(timed(req.clone())).await;
            call("UpdateContainerResources", &req, made_nothing(r))
        }
        20 => {
            let req = cri::ReopenContainerLogRequest {
                container_id: t.id(rng, false),
            };
            let r = rt.reopen_container_log(timed(req.clone())).await;
            call("ReopenContainerLog", &req, made_nothing(r))
        }
        21 => {
            let id = if rng.chance(60) {
                t.running.clone()
            } else {
                t.id(rng, false)
            };
            let req = cri::ExecSyncRequest {
                container_id: id,
                cmd: hostile_command(rng),
                timeout: rng.int64(),
            };
            let r = rt.exec_sync(timed(req.clone())).await;
            call("ExecSync", &req, made_nothing(r))
        }
        22 => {
            let id = if rng.chance(60) {
                t.running.clone()
            } else {
                t.id(rng, false)
            };
            let req = cri::ExecRequest {
                container_id: id,
                cmd: hostile_command(rng),
                tty: rng.chance(50),
                stdin: rng.chance(50),
                stdout: rng.chance(50),
                stderr: rng.chance(50),
            };
            let r = rt.exec(timed(req.clone())).await;
            call("Exec", &req, made_nothing(r))
        }
        23 => {
            let id = if rng.chance(60) {
                t.running.clone()
            } else {
                t.id(rng, false)
            };
            let req = cri::AttachRequest {
                container_id: id,
                stdin: rng.chance(50),
                tty: rng.chance(50),
                stdout: rng.chance(50),
                stderr: rng.chance(50),
            };
            let r = rt.attach(timed(req.clone())).await;
            call("Attach", &req, made_nothing(r))
        }
        24 => {
            let id = if rng.chance(60) {
                t.pod.id.clone()
            } else {
                t.id(rng, false)
            };
            let req = cri::PortForwardRequest {
                pod_sandbox_id: id,
                port: (0..rng.below(4)).map(|_| rng.int32()).collect(),
            };
            let r = rt.port_forward(timed(req.clone())).await;
            call("PortForward", &req, made_nothing(r))
        }
        25 => match rng.below(4) {
            0 => {
                let req = cri::ContainerStatsRequest {
                    container_id: t.id(rng, false),
                };
                let r = rt.container_stats(timed(req.clone())).await;
                call("ContainerStats", &req, made_nothing(r))
            }
            1 => {
                let req = cri::ListContainerStatsRequest {
                    filter: Some(cri::ContainerStatsFilter {
                        id: t.id(rng, false),
                        pod_sandbox_id: t.id(rng, false),
                        label_selector: rng.map(),
                    }),
                };
                let r = rt.list_container_stats(timed(req.clone())).await;
                call("ListContainerStats", &req, made_nothing(r))
            }
            2 => {
                let req = cri::PodSandboxStatsRequest {
                    pod_sandbox_id: t.id(rng, false),
                };
                let r = rt.pod_sandbox_stats(timed(req.clone())).await;
                call("PodSandboxStats", &req, made_nothing(r))
            }
            _ => {
                let req = cri::ListPodSandboxStatsRequest {
                    filter: Some(cri::PodSandboxStatsFilter {
                        id: t.id(rng, false),
                        label_selector: rng.map(),
                    }),
                };
                let r = rt.list_pod_sandbox_stats(timed(req.clone())).await;
                call("ListPodSandboxStats", &req, made_nothing(r))
            }
        },
        26 => {
            let cidr = rng.one_of(&[
                String::new(),
                "10.0.0.0/33".into(),
                "garbage".into(),
                "1.2.3.4/24,".into(),
                "::/129".into(),
                "10.244.0.0/16".into(),
                "fd00::/64, 10.245.0.0/16".into(),
                "10.0.0.0/-1".into(),
            ]);
            let req = crate::harness::pod_cidr_request(&cidr);
            let r = rt.update_runtime_config(timed(req.clone())).await;
            call("UpdateRuntimeConfig", &req, made_nothing(r))
        }
        27 => match rng.below(6) {
            0 => {
                let req = cri::StatusRequest {
                    verbose: rng.chance(50),
                };
                let r = rt.status(timed(req)).await;
                call("Status", &req, made_nothing(r))
            }
            1 => {
                let req = cri::VersionRequest {
                    version: rng.string(),
                };
                let r = rt.version(timed(req.clone())).await;
                call("Version", &req, made_nothing(r))
            }
            2 => {
                let req = cri::RuntimeConfigRequest {};
                let r = rt.runtime_config(timed(req)).await;
                call("RuntimeConfig", &req, made_nothing(r))
            }
            3 => {
                let req = cri::ListMetricDescriptorsRequest {};
                let r = rt.list_metric_descriptors(timed(req)).await;
                call("ListMetricDescriptors", &req, made_nothing(r))
            }
            4 => {
                let req = cri::ListPodSandboxMetricsRequest {};
                let r = rt.list_pod_sandbox_metrics(timed(req)).await;
                call("ListPodSandboxMetrics", &req, made_nothing(r))
            }
            _ => {
                // Subscribed and dropped at once.
                let req = cri::GetEventsRequest {};
                let r = rt.get_container_events(timed(req)).await;
                call("GetContainerEvents", &req, made_nothing(r))
            }
        },
        28 => {
            if rng.chance(50) {
                let req = cri::CheckpointContainerRequest {
                    container_id: t.id(rng, false),
                    location: rng.string(),
                    timeout: rng.int64(),
                };
                let r = rt.checkpoint_container(timed(req.clone())).await;
                call("CheckpointContainer", &req, made_nothing(r))
            } else {
                let req = cri::UpdatePodSandboxResourcesRequest {
                    pod_sandbox_id: t.id(rng, false),
                    overhead: Some(hostile_resources(rng)),
                    resources: Some(hostile_resources(rng)),
                };
                let r = rt.update_pod_sandbox_resources(timed(req.clone())).await;
                call("UpdatePodSandboxResources", &req, made_nothing(r))
            }
        }
        29 => {
            let req = cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: t.image_ref(rng, false),
                    ..Default::default()
                }),
                auth: rng.chance(40).then(|| cri::AuthConfig {
                    username: rng.string(),
                    password: rng.string(),
                    auth: rng.one_of(&["!!!not-base64".into(), "dXNlcg==".into()]),
                    server_address: rng.string(),
                    identity_token: rng.string(),
                    registry_token: rng.string(),
                }),
                sandbox_config: None,
            };
            let r = c.image.pull_image(timed(req.clone())).await;
            call("PullImage", &req, made_nothing(r))
        }
        30 => {
            let req = cri::ImageStatusRequest {
                image: rng.chance(90).then(|| cri::ImageSpec {
                    image: t.image_ref(rng, false),
                    ..Default::default()
                }),
                verbose: rng.chance(50),
            };
            let r = c.image.image_status(timed(req.clone())).await;
            call("ImageStatus", &req, made_nothing(r))
        }
        31 => {
            let req = cri::RemoveImageRequest {
                image: rng.chance(90).then(|| cri::ImageSpec {
                    image: t.image_ref(rng, true),
                    ..Default::default()
                }),
            };
            let r = c.image.remove_image(timed(req.clone())).await;
            call("RemoveImage", &req, made_nothing(r))
        }
        _ => {
            if rng.chance(50) {
                let req = cri::ListImagesRequest {
                    filter: Some(cri::ImageFilter {
                        image: Some(cri::ImageSpec {
                            image: t.image_ref(rng, false),
                            ..Default::default()
                        }),
                    }),
                };
                let r = c.image.list_images(timed(req.clone())).await;
                call("ListImages", &req, made_nothing(r))
            } else {
                let req = cri::ImageFsInfoRequest {};
                let r = c.image.image_fs_info(timed(req)).await;
                call("ImageFsInfo", &req, made_nothing(r))
            }
        }
    }
}

fn hostile_command(rng: &mut Rng) -> Vec<String> {
    match rng.below(8) {
        0 => vec![],
        1 => vec!["\0".into()],
        2 => vec!["true".into()],
        3 => vec!["sh".into(), "-c".into(), "exit 3".into()],
        4 => vec!["/nonexistent".into()],
        5 => vec!["echo".into(), "x".repeat(1 << 20)],
        6 => std::iter::once("echo".to_string())
            .chain(std::iter::repeat_n("y".repeat(100_000), 30))
            .collect(),
        _ => vec![rng.string()],
    }
}

/// StartContainer of a container whose program cannot be exec'd (not in the image, not
/// executable): by design the container is created and its start fails with StartError, as
/// containerd and kubelet have it; the agent reports that failure as text, so the daemon answers
/// INTERNAL. Known and reported apart, not counted as a failure.
fn unrunnable_program(status: &Status) -> bool {
    let message = status.message();
    status.code() == Code::Internal
        && (message.contains("executable file not found in $PATH")
            || (message.contains("exec \"")
                && (message.contains("ENOENT") || message.contains("EACCES"))))
}

/// Counts an answer by RPC and code, keeping the first message of each (cut short).
fn count(
    tally: &mut BTreeMap<(&'static str, String), (usize, String)>,
    rpc: &'static str,
    error: Option<&Status>,
) {
    let (code, message) = match error {
        None => ("OK".to_string(), String::new()),
        Some(s) => (format!("{:?}", s.code()), s.message().to_string()),
    };
    let entry = tally.entry((rpc, code)).or_default();
    entry.0 += 1;
    if entry.1.is_empty() && !message.is_empty() {
        entry.1 = message.chars().take(100).collect();
    }
}

/// Removes what a successful generated call made; the removal itself must succeed.
async fn undo(rt: &mut RuntimeServiceClient<Channel>, made: &Made) -> Result<(), Status> {
    match made {
        Made::Nothing => Ok(()),
        Made::Pod(id) => {
            rt.stop_pod_sandbox(timed(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            }))
            .await?;
            rt.remove_pod_sandbox(timed(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            }))
            .await
            .map(|_| ())
        }
        Made::Container(id) => rt
            .remove_container(timed(cri::RemoveContainerRequest {
                container_id: id.clone(),
            }))
            .await
            .map(|_| ()),
    }
}

fn seed() -> u64 {
    match std::env::var("CRIUS_HOSTILE_SEED") {
        Ok(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).expect("CRIUS_HOSTILE_SEED"),
            None => s.parse().expect("CRIUS_HOSTILE_SEED"),
        },
        Err(_) => SEED,
    }
}

/// The daemon process as it is now: its pid and its start time (`None` once it is gone).
fn daemon_identity(daemon: &Daemon) -> (i32, Option<u64>) {
    let pid = daemon.pid().as_raw();
    (pid, crius::sandbox::record::start_time(pid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_seeded_garbage_to_every_rpc_gets_clear_errors_and_leaves_nothing() {
    let seed = seed();
    println!(
        "hostile input: seed {seed:#x} (replay with CRIUS_HOSTILE_SEED={seed:#x}), {CALLS} calls"
    );
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let image = busybox();
    pull(&daemon, &image).await.unwrap();
    let identity = daemon_identity(&daemon);
    assert!(identity.1.is_some());

    let pod = start_pod(&daemon, "target", |_| {}).await;
    let running = create(&daemon, &pod, container_config("running", UNTIL_STOPPED))
        .await
        .unwrap();
    start(&daemon, &running).await.unwrap();
    let created = create(&daemon, &pod, container_config("created", &["true"]))
        .await
        .unwrap();
    let marker = format!("crius-hostile-{}", std::process::id());
    let targets = Targets {
        known_ids: vec![pod.id.clone(), running.clone(), created.clone()],
        pod,
        running,
        created,
        image,
        registry: TestRegistry::get().registry,
        marker: marker.clone(),
        cgroup_base: daemon.dir.cgroup_parent("hostile"),
        daemon_dir: daemon.dir.path().to_string_lossy().into_owned(),
    };
    let channel = daemon.channel().await.unwrap();
    let mut clients = Clients {
        runtime: RuntimeServiceClient::new(channel.clone()),
        image: ImageServiceClient::new(channel),
    };

    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    let mut known = Vec::new();
    // (RPC, code) -> (how many, the first answer's message).
    let mut tally: BTreeMap<(&'static str, String), (usize, String)> = BTreeMap::new();
    let started = Instant::now();
    for n in 0..CALLS {
        let before = Instant::now();
        let Call {
            rpc,
            request,
            result,
        } = generated_call(&mut rng, &daemon, &targets, &mut clients, n).await;
        let took = before.elapsed();
        count(&mut tally, rpc, result.as_ref().err());
        match result {
            Ok(made) => {
                // An accepted container is started half the time: what was accepted must
                // start, or fail to with a clear error.
                if let Made::Container(id) = &made
                    && rng.chance(50)
                {
                    let started = clients
                        .runtime
                        .start_container(timed(cri::StartContainerRequest {
                            container_id: id.clone(),
                        }))
                        .await;
                    count(
                        &mut tally,
                        "StartContainer (created)",
                        started.as_ref().err(),
                    );
                    if let Err(status) = &started
                        && unrunnable_program(status)
                    {
                        known.push(format!(
                            "#{n} StartContainer: {:?} {}",
                            status.code(),
                            describe(&status.message())
                        ));
                    } else if let Err(status) = started
                        && let Err(why) = acceptable("StartContainer", &status)
                    {
                        failures.push(format!(
                            "#{n} StartContainer of an accepted {rpc} answered {why}: {:?} {}\n    \
                             request: {request}",
                            status.code(),
                            status.message()
                        ));
                    }
                }
                if let Err(e) = undo(&mut clients.runtime, &made).await {
                    failures.push(format!(
                        "#{n} {rpc} succeeded but undoing it failed: {e:?}\n    request: {request}"
                    ));
                }
            }
            Err(status) => {
                if let Err(why) = acceptable(rpc, &status) {
                    failures.push(format!(
                        "#{n} {rpc} answered {why}: {:?} {}\n    request: {request}",
                        status.code(),
                        status.message()
                    ));
                }
            }
        }
        if took > Duration::from_secs(10) {
            println!("  #{n} {rpc} took {took:?}");
        }
    }
    println!(
        "hostile input: {CALLS} calls in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for ((rpc, code), (count, example)) in &tally {
        println!("  {rpc:<26} {code:<20} {count:>4}  {example}");
    }
    if !known.is_empty() {
        println!(
            "known, left to the container lifecycle (StartError for a program that cannot be \
             exec'd, as containerd reports it):"
        );
        for k in &known {
            println!("  {k}");
        }
    }

    // The same daemon process, still serving.
    assert_eq!(
        daemon_identity(&daemon),
        identity,
        "the daemon process changed or died:\n{}",
        daemon.dir.log()
    );
    let mut rt = clients.runtime.clone();
    rt.version(cri::VersionRequest::default()).await.unwrap();

    // Clean up through the CRI, then nothing may be left (the harness checks processes,
    // mounts, cgroups, iptables rules, veths and IP leases when the daemon stops).
    rt.stop_container(cri::StopContainerRequest {
        container_id: targets.running.clone(),
        timeout: i64::MAX,
    })
    .await
    .unwrap();
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    for p in &pods {
        undo(&mut rt, &Made::Pod(p.id.clone())).await.unwrap();
    }
    let containers = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert_no_pod_state(&daemon);
    assert_eq!(escaped_files(&marker), Vec::<PathBuf>::new());
    let log_root = daemon.dir.path().join("logs");
    let sibling = log_root.join(format!("{marker}-sibling.log"));
    assert!(!sibling.exists(), "{} was written", sibling.display());
    assert!(
        failures.is_empty(),
        "{} of {CALLS} calls (seed {seed:#x}) were not answered as they should be:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
