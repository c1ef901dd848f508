//! Requests shaped as kubelet v1.32 builds them (kubernetes/kubernetes
//! `pkg/kubelet/kuberuntime/`), for a Burstable and a BestEffort pod on the cgroupfs driver:
//! PullImage, RunPodSandbox, CreateContainer, StartContainer, ContainerStatus, stats, ExecSync,
//! UpdateContainerResources, StopContainer, StopPodSandbox, RemoveContainer and
//! RemovePodSandbox. Each builder names the kubelet function whose output it reproduces; the
//! pod and container "specs" below are what those functions read from the API objects.
//!
//! kubelet makes the `kubepods` cgroups (and each pod's `pod<uid>`) before RunPodSandbox; the
//! test makes them the same way and removes what it made. Log directories, kubelet's pod
//! directory (hosts file, termination-log files, volumes) live in the test's temp dir.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius::cri;
use tonic::Code;

use crate::containers::{busybox, sh, status};
use crate::harness::{Daemon, systemd_driver};
use crate::sandbox::{remove_pod, run_pod, stop_pod};

// ---------------------------------------------------------------------------------------------
// What kubelet reads from the node.

/// The node as kubelet's runtime manager knows it (flags and cAdvisor's machine info).
struct Kubelet {
    /// --root-dir: kubelet's pod directories (`pods/<uid>/…`) live here.
    root_dir: PathBuf,
    /// --pod-logs-dir (`/var/log/pods` by default).
    pod_logs_dir: PathBuf,
    /// --cluster-dns and --cluster-domain.
    cluster_dns: String,
    cluster_domain: String,
    /// cAdvisor's MachineInfo.MemoryCapacity: MemTotal in bytes.
    memory_capacity: i64,
    /// libcontainer's HugePageSizes(), named as v1helper.HugePageUnitSizeFromByteSize does.
    hugepage_sizes: Vec<String>,
    /// The search domains of the host's resolv.conf (--resolv-conf), appended to the cluster's.
    host_searches: Vec<String>,
}

impl Kubelet {
    fn new(dir: &Path) -> Kubelet {
        Kubelet {
            root_dir: dir.join("var-lib-kubelet"),
            pod_logs_dir: dir.join("var-log-pods"),
            cluster_dns: "10.96.0.10".into(),
            cluster_domain: "cluster.local".into(),
            memory_capacity: mem_total(),
            hugepage_sizes: hugepage_sizes(),
            host_searches: host_search_domains(),
        }
    }

    /// kubelet's pod directory (`getPodDir`).
    fn pod_dir(&self, pod: &PodSpec) -> PathBuf {
        self.root_dir.join("pods").join(&pod.uid)
    }
}

fn mem_total() -> i64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// libcontainer's HugePageSizes: /sys/kernel/mm/hugepages/hugepages-<N>kB in directory (name)
/// order, each named by HugePageUnitSizeFromByteSize (1024-based units, `2MB`, `1GB`).
fn hugepage_sizes() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter_map(|n| {
            n.strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()
        })
        .map(|kb: u64| unit_size(kb * 1024))
        .collect()
}

fn unit_size(mut bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut i = 0;
    while bytes >= 1024 && bytes.is_multiple_of(1024) && i < units.len() - 1 {
        bytes /= 1024;
        i += 1;
    }
    format!("{bytes}{}", units[i])
}

fn host_search_domains() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("search "))
        .flat_map(|l| l.split_whitespace().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The API objects kubelet reads: just the fields its request builders use.

#[derive(Clone, Copy, PartialEq, Debug)]
enum Qos {
    Burstable,
    BestEffort,
}

impl Qos {
    /// The QoS class's cgroup under `kubepods` (cgroupfs driver: `kubepods/burstable`).
    fn cgroup(self) -> &'static str {
        match self {
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

struct PodSpec {
    name: String,
    namespace: String,
    uid: String,
    qos: Qos,
    labels: Vec<(&'static str, &'static str)>,
    annotations: Vec<(&'static str, String)>,
    termination_grace_period: i64,
    /// pod.spec.securityContext
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    fs_group: Option<i64>,
    seccomp_runtime_default: bool,
    sysctls: Vec<(&'static str, &'static str)>,
    container: ContainerSpec,
}

struct ContainerSpec {
    name: &'static str,
    cpu_request_milli: Option<i64>,
    cpu_limit_milli: i64,
    memory_request: i64,
    memory_limit: i64,
    /// (name, containerPort, hostPort)
    ports: Vec<(&'static str, i32, i32)>,
    env: Vec<(&'static str, &'static str)>,
    command: Vec<&'static str>,
    args: Vec<&'static str>,
    /// securityContext.allowPrivilegeEscalation and capabilities.drop: [ALL]
    allow_privilege_escalation: Option<bool>,
    drop_all_capabilities: bool,
}

/// The container's process: prints, writes its termination message, and ends on SIGTERM.
const APP_SCRIPT: &str = "trap 'echo stopping; exit 0' TERM; echo started $(GREETING); \
    echo all-good > /dev/termination-log; while true; do sleep 1; done";

fn pod_uid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string()
}

fn burstable_pod() -> PodSpec {
    PodSpec {
        name: "web-7d4b9c-x2k4q".into(),
        namespace: "shop".into(),
        uid: pod_uid(),
        qos: Qos::Burstable,
        labels: vec![("app", "web"), ("pod-template-hash", "7d4b9c")],
        annotations: vec![("team", "storefront".into())],
        termination_grace_period: 30,
        run_as_user: Some(1000),
        run_as_group: Some(3000),
        fs_group: Some(2000),
        seccomp_runtime_default: true,
        sysctls: vec![
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("kernel.shm_rmid_forced", "1"),
        ],
        container: ContainerSpec {
            name: "app",
            cpu_request_milli: Some(100),
            cpu_limit_milli: 500,
            memory_request: 32 << 20,
            memory_limit: 64 << 20,
            ports: vec![("http", 8080, 0)],
            env: vec![("GREETING", "hello-from-kubelet")],
            command: vec!["sh", "-c"],
            args: vec![APP_SCRIPT],
            allow_privilege_escalation: Some(false),
            drop_all_capabilities: true,
        },
    }
}

fn besteffort_pod() -> PodSpec {
    PodSpec {
        name: "batch-job-q8w2r".into(),
        namespace: "jobs".into(),
        uid: pod_uid(),
        qos: Qos::BestEffort,
        labels: vec![("job-name", "batch-job")],
        annotations: vec![],
        termination_grace_period: 30,
        run_as_user: None,
        run_as_group: None,
        fs_group: None,
        seccomp_runtime_default: false,
        sysctls: vec![],
        container: ContainerSpec {
            name: "worker",
            cpu_request_milli: None,
            cpu_limit_milli: 0,
            memory_request: 0,
            memory_limit: 0,
            ports: vec![],
            env: vec![("GREETING", "best-effort")],
            command: vec!["sh", "-c"],
            args: vec![APP_SCRIPT],
            allow_privilege_escalation: None,
            drop_all_capabilities: false,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// kubelet's arithmetic.

/// pkg/kubelet/cm MilliCPUToShares: 1024 shares per CPU, at least 2, at most 262144.
fn milli_cpu_to_shares(milli: i64) -> i64 {
    if milli == 0 {
        return 2;
    }
    (milli * 1024 / 1000).clamp(2, 262_144)
}

/// kuberuntime milliCPUToQuota: the limit's share of the period, at least 1 ms; 0 without one.
fn milli_cpu_to_quota(milli: i64, period: i64) -> i64 {
    if milli == 0 {
        return 0;
    }
    (milli * period / 1000).max(1000)
}

/// quotaPeriod: 100 ms (the CPUCFSQuotaPeriod gate is off by default).
const QUOTA_PERIOD: i64 = 100_000;

/// kuberuntime calculateLinuxResources (--cpu-cfs-quota=true; cgroup v1, so no `unified`
/// memory.oom.group; on v2 kubelet adds it when singleProcessOOMKill is false).
fn calculate_linux_resources(
    cpu_request_milli: Option<i64>,
    cpu_limit_milli: i64,
    memory_limit: i64,
) -> cri::LinuxContainerResources {
    let shares = match cpu_request_milli {
        None if cpu_limit_milli > 0 => milli_cpu_to_shares(cpu_limit_milli),
        request => milli_cpu_to_shares(request.unwrap_or(0)),
    };
    let mut r = cri::LinuxContainerResources {
        cpu_shares: shares,
        memory_limit_in_bytes: memory_limit,
        cpu_period: QUOTA_PERIOD,
        cpu_quota: milli_cpu_to_quota(cpu_limit_milli, QUOTA_PERIOD),
        ..Default::default()
    };
    if crius_cgroup_v2() {
        r.unified = HashMap::from([("memory.oom.group".into(), "1".into())]);
    }
    r
}

/// pkg/kubelet/qos GetContainerOOMScoreAdjust: BestEffort 1000; Burstable 1000 minus the
/// request's per-mille of the node's memory, kept within 1000+guaranteed (3) and 999.
fn container_oom_score_adjust(qos: Qos, memory_request: i64, memory_capacity: i64) -> i64 {
    match qos {
        Qos::BestEffort => 1000,
        Qos::Burstable => {
            let adj = 1000 - (1000 * memory_request) / memory_capacity;
            if adj < 1000 - 997 {
                1000 - 997
            } else if adj == 1000 {
                999
            } else {
                adj
            }
        }
    }
}

/// kuberuntime GetHugepageLimitsFromResources: a 0 limit for every page size of the node
/// (the container asks for none).
fn hugepage_limits(kubelet: &Kubelet) -> Vec<cri::HugepageLimit> {
    kubelet
        .hugepage_sizes
        .iter()
        .map(|size| cri::HugepageLimit {
            page_size: size.clone(),
            limit: 0,
        })
        .collect()
}

/// FNV-32a, as kubecontainer.HashContainer hashes the container spec (here: its name and
/// command), printed in hex for the `io.kubernetes.container.hash` annotation.
fn container_hash(c: &ContainerSpec) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in c.name.bytes().chain(c.args.concat().bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:x}")
}

// ---------------------------------------------------------------------------------------------
// The requests.

/// kuberuntime BuildPodLogsDirectory: `<pod-logs-dir>/<namespace>_<name>_<uid>`.
fn build_pod_logs_directory(kubelet: &Kubelet, pod: &PodSpec) -> PathBuf {
    kubelet
        .pod_logs_dir
        .join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
}

/// kuberuntime newPodLabels: the pod's labels plus its name, namespace and uid.
fn new_pod_labels(pod: &PodSpec) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.extend(pod_identity_labels(pod));
    labels
}

fn pod_identity_labels(pod: &PodSpec) -> [(String, String); 3] {
    [
        ("io.kubernetes.pod.name".into(), pod.name.clone()),
        ("io.kubernetes.pod.namespace".into(), pod.namespace.clone()),
        ("io.kubernetes.pod.uid".into(), pod.uid.clone()),
    ]
}

/// kuberuntime newPodAnnotations: the pod's annotations as they are, including those kubelet's
/// config sources add (`kubernetes.io/config.seen`, `kubernetes.io/config.source`).
fn new_pod_annotations(pod: &PodSpec) -> HashMap<String, String> {
    let mut annotations: HashMap<String, String> = pod
        .annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    annotations.insert(
        "kubernetes.io/config.seen".into(),
        "2025-01-20T10:00:00.000000000Z".into(),
    );
    annotations.insert("kubernetes.io/config.source".into(), "api".into());
    annotations
}

/// kubelet's network namespace options (runtimeutil.NamespacesForPod): the pod's own network
/// and IPC; a PID namespace per container (no shareProcessNamespace). UsernsOptions stays unset
/// with the UserNamespacesSupport gate off (the 1.32 default).
fn namespaces_for_pod() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        target_id: String::new(),
        userns_options: None,
    }
}

/// kubelet's GetPodDNS for dnsPolicy ClusterFirst: the cluster DNS server, the namespace's,
/// the cluster's and the host's search domains, `ndots:5`.
fn pod_dns(kubelet: &Kubelet, pod: &PodSpec) -> cri::DnsConfig {
    let domain = &kubelet.cluster_domain;
    let mut searches = vec![
        format!("{}.svc.{domain}", pod.namespace),
        format!("svc.{domain}"),
        domain.clone(),
    ];
    searches.extend(kubelet.host_searches.iter().cloned());
    cri::DnsConfig {
        servers: vec![kubelet.cluster_dns.clone()],
        searches,
        options: vec!["ndots:5".into()],
    }
}

/// kubelet's --cgroup-root: one of this test process's own, so the test never meets the
/// `kubepods` of a real kubelet on this host (which kills what it finds in pod cgroups it does
/// not know).
fn cgroup_root() -> &'static str {
    static ROOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    // A slice name's dashes nest it: with the systemd driver the root has none.
    ROOT.get_or_init(|| {
        if systemd_driver() {
            format!("crius_e2e_kubelet_{}", std::process::id())
        } else {
            format!("crius-e2e-kubelet-{}", std::process::id())
        }
    })
}

/// kubelet's pod cgroup, GetPodCgroupParent: with the cgroupfs driver a path, with the
/// systemd driver a slice (its cgroup name's components joined by dashes, the uid's dashes
/// escaped as underscores: `<root>-kubepods-burstable-pod<uid>.slice`).
fn pod_cgroup_parent(pod: &PodSpec) -> String {
    if systemd_driver() {
        return format!(
            "{}-kubepods-{}-pod{}.slice",
            cgroup_root(),
            pod.qos.cgroup(),
            pod.uid.replace('-', "_")
        );
    }
    format!(
        "/{}/kubepods/{}/pod{}",
        cgroup_root(),
        pod.qos.cgroup(),
        pod.uid
    )
}

/// A cgroup parent as a path below the hierarchy's root (a slice's nested path).
fn parent_path(parent: &str) -> String {
    if systemd_driver() {
        crius::cgroups::systemd::slice_path(parent).unwrap()
    } else {
        parent.trim_start_matches('/').to_string()
    }
}

/// The pod's cgroup as a path below the hierarchy's root.
fn pod_cgroup_path(pod: &PodSpec) -> String {
    parent_path(&pod_cgroup_parent(pod))
}

/// kuberuntime generatePodSandboxLinuxConfig.
fn generate_pod_sandbox_linux_config(pod: &PodSpec) -> cri::LinuxPodSandboxConfig {
    let mut supplemental_groups = Vec::new();
    supplemental_groups.extend(pod.fs_group);
    cri::LinuxPodSandboxConfig {
        cgroup_parent: pod_cgroup_parent(pod),
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(namespaces_for_pod()),
            run_as_user: pod.run_as_user.map(|value| cri::Int64Value { value }),
            run_as_group: pod.run_as_group.map(|value| cri::Int64Value { value }),
            supplemental_groups,
            privileged: false,
            // Issue #84623: the sandbox always runs RuntimeDefault.
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        sysctls: pod
            .sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// kuberuntime calculateSandboxResources: the pod's requests and limits without overhead.
fn calculate_sandbox_resources(pod: &PodSpec) -> cri::LinuxContainerResources {
    let c = &pod.container;
    calculate_linux_resources(c.cpu_request_milli, c.cpu_limit_milli, c.memory_limit)
}

/// kuberuntime generatePodSandboxConfig, then applySandboxResources. The overhead is empty:
/// only a RuntimeClass sets pod.spec.overhead, and crius serves the default handler only.
fn generate_pod_sandbox_config(kubelet: &Kubelet, pod: &PodSpec) -> cri::PodSandboxConfig {
    let port_mappings = pod
        .container
        .ports
        .iter()
        .map(|(_, container_port, host_port)| cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: *container_port,
            host_port: *host_port,
            host_ip: String::new(),
        })
        .collect();
    let mut linux = generate_pod_sandbox_linux_config(pod);
    linux.resources = Some(calculate_sandbox_resources(pod));
    linux.overhead = Some(cri::LinuxContainerResources::default());
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            uid: pod.uid.clone(),
            attempt: 0,
        }),
        // GeneratePodHostNameAndDomain: the pod's name (no spec.hostname).
        hostname: pod.name.clone(),
        log_directory: build_pod_logs_directory(kubelet, pod)
            .to_string_lossy()
            .into_owned(),
        dns_config: Some(pod_dns(kubelet, pod)),
        port_mappings,
        labels: new_pod_labels(pod),
        annotations: new_pod_annotations(pod),
        linux: Some(linux),
        windows: None,
    }
}

/// kubelet's makeEnvironmentVariables: the container's env plus the service links of the
/// `kubernetes` service (enableServiceLinks defaults to true).
fn make_environment_variables(pod: &PodSpec) -> Vec<cri::KeyValue> {
    let service = [
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
        ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
        ("KUBERNETES_PORT_443_TCP_PORT", "443"),
        ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
    ];
    service
        .iter()
        .chain(pod.container.env.iter())
        .map(|(k, v)| cri::KeyValue {
            key: k.to_string(),
            value: v.as_bytes().to_vec(),
        })
        .collect()
}

/// kubecontainer.ExpandContainerCommandAndArgs: `$(VAR)` replaced from the env.
fn expand(s: &str, env: &[cri::KeyValue]) -> String {
    env.iter().fold(s.to_string(), |s, kv| {
        s.replace(
            &format!("$({})", kv.key),
            &String::from_utf8_lossy(&kv.value),
        )
    })
}

/// The volumes kubelet set up for the pod, on the host, as kubelet's volume manager lays them
/// out under the pod directory.
struct PodVolumes {
    empty_dir: PathBuf,
    service_account: PathBuf,
    etc_hosts: PathBuf,
    termination_log: PathBuf,
}

/// The emptyDir (0777, group-owned by fsGroup with setgid, as SetVolumeOwnership leaves it)
/// and the projected service-account volume (`..data` symlinked, as the atomic writer does).
fn set_up_volumes(kubelet: &Kubelet, pod: &PodSpec) -> PodVolumes {
    let pod_dir = kubelet.pod_dir(pod);
    let empty_dir = pod_dir.join("volumes/kubernetes.io~empty-dir/cache");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let mode = if let Some(gid) = pod.fs_group {
        std::os::unix::fs::chown(&empty_dir, None, Some(gid as u32)).unwrap();
        0o2777
    } else {
        0o777
    };
    std::fs::set_permissions(&empty_dir, std::fs::Permissions::from_mode(mode)).unwrap();
    let service_account = pod_dir.join("volumes/kubernetes.io~projected/kube-api-access-7xk2p");
    let data = service_account.join("..2025_01_20_10_00_00.123456789");
    std::fs::create_dir_all(&data).unwrap();
    for (file, content) in [
        ("token", "eyJhbGciOiJSUzI1NiJ9.kubelet-shapes.signature"),
        ("ca.crt", "-----BEGIN CERTIFICATE-----\n"),
        ("namespace", pod.namespace.as_str()),
    ] {
        std::fs::write(data.join(file), content).unwrap();
        std::os::unix::fs::symlink(format!("..data/{file}"), service_account.join(file)).unwrap();
    }
    std::os::unix::fs::symlink(data.file_name().unwrap(), service_account.join("..data")).unwrap();
    let container_dir = pod_dir.join("containers").join(pod.container.name);
    std::fs::create_dir_all(&container_dir).unwrap();
    PodVolumes {
        empty_dir,
        service_account,
        etc_hosts: pod_dir.join("etc-hosts"),
        // kuberuntime makeMounts: a random 8-hex-digit name, created 0666 before the container.
        termination_log: container_dir.join("3f9a2c71"),
    }
}

/// kubelet's ensureHostsFile (managed /etc/hosts), written once the pod's IP is known.
fn managed_hosts_file(pod: &PodSpec, pod_ip: &str) -> String {
    format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost \
         ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n\n{pod_ip}\t{}\n",
        pod.name
    )
}

/// kubelet's makeMounts (volume mounts in the container's order: its own, then the
/// service-account one admission appends; then /etc/hosts) and kuberuntime makeMounts (the
/// termination-log file). SELinux relabelling is off on a host without SELinux.
fn make_mounts(v: &PodVolumes) -> Vec<cri::Mount> {
    let mount = |host: &Path, container: &str, readonly: bool| cri::Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        selinux_relabel: false,
        propagation: cri::MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    };
    vec![
        mount(&v.empty_dir, "/cache", false),
        mount(
            &v.service_account,
            "/var/run/secrets/kubernetes.io/serviceaccount",
            true,
        ),
        mount(&v.etc_hosts, "/etc/hosts", false),
        mount(&v.termination_log, "/dev/termination-log", false),
    ]
}

/// kuberuntime newContainerLabels.
fn new_container_labels(pod: &PodSpec) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod_identity_labels(pod).into_iter().collect();
    labels.insert(
        "io.kubernetes.container.name".into(),
        pod.container.name.into(),
    );
    labels
}

/// kuberuntime newContainerAnnotations (InPlacePodVerticalScaling off: no hashWithoutResources).
fn new_container_annotations(pod: &PodSpec, restart_count: u32) -> HashMap<String, String> {
    let c = &pod.container;
    let mut a = HashMap::from([
        (
            "io.kubernetes.container.hash".to_string(),
            container_hash(c),
        ),
        (
            "io.kubernetes.container.restartCount".into(),
            restart_count.to_string(),
        ),
        (
            "io.kubernetes.container.terminationMessagePath".into(),
            "/dev/termination-log".into(),
        ),
        (
            "io.kubernetes.container.terminationMessagePolicy".into(),
            "File".into(),
        ),
        (
            "io.kubernetes.pod.terminationGracePeriod".into(),
            pod.termination_grace_period.to_string(),
        ),
    ]);
    if !c.ports.is_empty() {
        let ports: Vec<serde_json::Value> = c
            .ports
            .iter()
            .map(|(name, port, _)| {
                serde_json::json!({"name": name, "containerPort": port, "protocol": "TCP"})
            })
            .collect();
        a.insert(
            "io.kubernetes.container.ports".into(),
            serde_json::Value::Array(ports).to_string(),
        );
    }
    a
}

/// securitycontext defaultMaskedPaths and defaultReadonlyPaths (procMount Default).
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// kuberuntime determineEffectiveSecurityContext: the pod's and container's settings merged
/// (convertToRuntimeSecurityContext), seccomp from getSeccompProfile (RuntimeDefault when the
/// pod asks for it; Unconfined otherwise, kubelet's --seccomp-default being off), the image's
/// uid when no runAsUser is set, namespace options, fsGroup as a supplemental group,
/// NoNewPrivs when allowPrivilegeEscalation is false, the default masked and read-only paths.
fn determine_effective_security_context(
    pod: &PodSpec,
    image_uid: Option<i64>,
) -> cri::LinuxContainerSecurityContext {
    let c = &pod.container;
    let profile = if pod.seccomp_runtime_default {
        cri::security_profile::ProfileType::RuntimeDefault
    } else {
        cri::security_profile::ProfileType::Unconfined
    };
    cri::LinuxContainerSecurityContext {
        capabilities: c.drop_all_capabilities.then(|| cri::Capability {
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        privileged: false,
        namespace_options: Some(namespaces_for_pod()),
        run_as_user: pod
            .run_as_user
            .or(image_uid)
            .map(|value| cri::Int64Value { value }),
        run_as_group: pod.run_as_group.map(|value| cri::Int64Value { value }),
        run_as_username: String::new(),
        readonly_rootfs: false,
        supplemental_groups: pod.fs_group.into_iter().collect(),
        no_new_privs: c.allow_privilege_escalation == Some(false),
        masked_paths: MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
        readonly_paths: READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
        seccomp: Some(cri::SecurityProfile {
            profile_type: profile as i32,
            localhost_ref: String::new(),
        }),
        apparmor: None,
        ..Default::default()
    }
}

/// kuberuntime generateLinuxContainerResources: calculateLinuxResources, the QoS oom score,
/// hugepage limits for every page size; no swap (NoSwap on cgroup v1).
fn generate_linux_container_resources(
    kubelet: &Kubelet,
    pod: &PodSpec,
) -> cri::LinuxContainerResources {
    let c = &pod.container;
    let mut r = calculate_linux_resources(c.cpu_request_milli, c.cpu_limit_milli, c.memory_limit);
    r.oom_score_adj =
        container_oom_score_adjust(pod.qos, c.memory_request, kubelet.memory_capacity);
    r.hugepage_limits = hugepage_limits(kubelet);
    configure_container_swap_resources(&mut r);
    r
}

/// kuberuntime configureContainerSwapResources with NodeSwap's default NoSwap
/// (swapConfigurationHelper.ConfigureNoSwap), when swapControllerAvailable: on v1 memory+swap
/// equal to the memory limit; on v2 `memory.swap.max` 0.
fn configure_container_swap_resources(r: &mut cri::LinuxContainerResources) {
    if crius_cgroup_v2() {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let own = own.trim().trim_start_matches("0::").trim_start_matches('/');
        if Path::new("/sys/fs/cgroup")
            .join(own)
            .join("memory.swap.max")
            .exists()
        {
            r.unified.insert("memory.swap.max".into(), "0".into());
        }
    } else if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        r.memory_swap_limit_in_bytes = r.memory_limit_in_bytes;
    }
}

/// kuberuntime generateContainerConfig (with generateLinuxContainerConfig): `<name>/<restart
/// count>.log` as log path, the image by its id with the name the user gave, command and args
/// expanded, kubelet's labels, annotations and mounts.
fn generate_container_config(
    kubelet: &Kubelet,
    pod: &PodSpec,
    volumes: &PodVolumes,
    image_ref: &str,
    image_uid: Option<i64>,
) -> cri::ContainerConfig {
    let c = &pod.container;
    let restart_count = 0;
    let envs = make_environment_variables(pod);
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.into(),
            attempt: restart_count,
        }),
        image: Some(cri::ImageSpec {
            image: image_ref.into(),
            user_specified_image: busybox(),
            ..Default::default()
        }),
        command: c.command.iter().map(|s| expand(s, &envs)).collect(),
        args: c.args.iter().map(|s| expand(s, &envs)).collect(),
        working_dir: String::new(),
        envs,
        mounts: make_mounts(volumes),
        devices: vec![],
        labels: new_container_labels(pod),
        annotations: new_container_annotations(pod, restart_count),
        log_path: format!("{}/{restart_count}.log", c.name),
        stdin: false,
        stdin_once: false,
        tty: false,
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(generate_linux_container_resources(kubelet, pod)),
            security_context: Some(determine_effective_security_context(pod, image_uid)),
        }),
        windows: None,
        cdi_devices: vec![],
        stop_signal: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// kubelet's cgroups: kubepods, the QoS classes and the pods, made before RunPodSandbox.

fn crius_cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Mount points of the cgroup hierarchies (every v1 one, or the v2 root).
fn hierarchies() -> Vec<PathBuf> {
    if crius_cgroup_v2() {
        return vec![PathBuf::from("/sys/fs/cgroup")];
    }
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let point = head.split_whitespace().nth(4)?;
            (tail.split_whitespace().next()? == "cgroup").then(|| PathBuf::from(point))
        })
        .collect()
}

/// The cgroups this test made, removed (deepest first, only when empty) when dropped — after
/// the daemon, declared later, has removed the pods.
struct KubeletCgroups {
    made: Vec<String>,
}

impl KubeletCgroups {
    /// kubelet's QoS container manager: `kubepods`, `kubepods/burstable`, `kubepods/besteffort`.
    fn new() -> KubeletCgroups {
        let mut cgroups = KubeletCgroups { made: Vec::new() };
        let root = cgroup_root();
        if systemd_driver() {
            // kubelet's systemd driver starts the slices as transient units.
            for slice in [
                "",
                "-kubepods",
                "-kubepods-burstable",
                "-kubepods-besteffort",
            ] {
                cgroups.start_slice(&format!("{root}{slice}.slice"));
            }
            return cgroups;
        }
        for path in [
            "",
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods/besteffort",
        ] {
            cgroups.make(&format!("{root}{path}"));
        }
        cgroups.set_v1(
            "cpu",
            &format!("{root}/kubepods/besteffort"),
            "cpu.shares",
            "2",
        );
        cgroups
    }

    /// kubelet's pod container manager (EnsureExists) with ResourceConfigForPod's limits.
    fn make_pod(&mut self, pod: &PodSpec) {
        if systemd_driver() {
            self.start_slice(&pod_cgroup_parent(pod));
            return;
        }
        self.make(pod_cgroup_parent(pod).trim_start_matches('/'));
        self.set_pod_limits(pod);
    }

    /// A transient slice, as libcontainer's systemd manager starts one for kubelet
    /// (StartTransientUnit, waiting for the job); stopped when dropped.
    fn start_slice(&mut self, unit: &str) {
        let out = std::process::Command::new("busctl")
            .args([
                "call",
                "--timeout=30",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "StartTransientUnit",
                "ssa(sv)a(sa(sv))",
                unit,
                "fail",
                "1",
                "Description",
                "s",
                "crius e2e kubelet slice",
                "0",
            ])
            .output()
            .expect("busctl");
        assert!(
            out.status.success(),
            "starting {unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The job is queued; the slice's cgroup exists once it ran.
        let dir = Path::new("/sys/fs/cgroup").join(parent_path(unit));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.is_dir() {
            assert!(Instant::now() < deadline, "{unit} never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.made.push(unit.to_string());
    }

    /// ResourceConfigForPod's limits on the pod's cgroup, as kubelet writes them when the pod
    /// is made and, for an in-place resize that grows it, before the containers' (a child's
    /// CFS quota may not exceed its parent's).
    fn set_pod_limits(&self, pod: &PodSpec) {
        let path = pod_cgroup_parent(pod).trim_start_matches('/').to_string();
        let r = calculate_sandbox_resources(pod);
        self.set_v1("cpu", &path, "cpu.shares", &r.cpu_shares.to_string());
        if r.cpu_quota > 0 {
            self.set_v1("cpu", &path, "cpu.cfs_period_us", &r.cpu_period.to_string());
            self.set_v1("cpu", &path, "cpu.cfs_quota_us", &r.cpu_quota.to_string());
        }
        if r.memory_limit_in_bytes > 0 {
            let limit = r.memory_limit_in_bytes.to_string();
            self.set_v1("memory", &path, "memory.limit_in_bytes", &limit);
        }
    }

    /// Makes `path` in every hierarchy unless it is there, as libcontainer's cgroupfs manager
    /// does: cpuset copied from the parent on v1, the controllers enabled for it on v2.
    fn make(&mut self, path: &str) {
        let mut made = false;
        for h in hierarchies() {
            let dir = h.join(path);
            if dir.exists() {
                continue;
            }
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            made = true;
            let parent = dir.parent().unwrap();
            if crius_cgroup_v2() {
                let controllers =
                    std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
                let enable: Vec<String> = controllers
                    .split_whitespace()
                    .map(|c| format!("+{c}"))
                    .collect();
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), enable.join(" "));
            } else if h.ends_with("cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = std::fs::read_to_string(parent.join(file)).unwrap();
                    std::fs::write(dir.join(file), value.trim()).unwrap();
                }
            }
        }
        if made {
            self.made.push(path.to_string());
        }
    }

    fn set_v1(&self, controller: &str, path: &str, file: &str, value: &str) {
        if systemd_driver() || crius_cgroup_v2() || !self.made.iter().any(|m| m == path) {
            return;
        }
        let f = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(path)
            .join(file);
        std::fs::write(&f, value).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }

    /// Sub-cgroups left in the pod's cgroup in any hierarchy (crius's, which it must remove).
    fn children_of(pod: &PodSpec) -> Vec<PathBuf> {
        let path = pod_cgroup_path(pod);
        hierarchies()
            .iter()
            .flat_map(|h| {
                std::fs::read_dir(h.join(&path))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    }
}

impl Drop for KubeletCgroups {
    fn drop(&mut self) {
        if systemd_driver() {
            for unit in self.made.iter().rev() {
                let stopped = std::process::Command::new("systemctl")
                    .args(["stop", unit])
                    .status();
                if !stopped.is_ok_and(|s| s.success()) {
                    eprintln!("slice {unit} could not be stopped");
                }
            }
            return;
        }
        for path in self.made.iter().rev() {
            for h in hierarchies() {
                let dir = h.join(path);
                let deadline = Instant::now() + Duration::from_secs(5);
                while dir.exists() && std::fs::remove_dir(&dir).is_err() {
                    if Instant::now() > deadline {
                        eprintln!("cgroup {} could not be removed", dir.display());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// The container's cgroup path as its process sees it placed (from /proc/<pid>/cgroup), for the
/// cpu controller (v1) or the unified hierarchy (v2).
fn cgroup_of(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = if crius_cgroup_v2() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "cpu")
            };
            wanted.then(|| path.trim_start_matches('/').to_string())
        })
        .unwrap()
}

/// A cgroup file of `path` (v1: in `controller`'s hierarchy).
fn cgroup_file(controller: &str, path: &str, file: &str) -> String {
    let dir = if crius_cgroup_v2() {
        Path::new("/sys/fs/cgroup").join(path)
    } else {
        Path::new("/sys/fs/cgroup").join(controller).join(path)
    };
    let f = dir.join(file);
    std::fs::read_to_string(&f)
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
        .trim()
        .to_string()
}

/// The limits kubelet asked for, as they are in the container's cgroup.
fn assert_limits_in_cgroup(cgroup: &str, r: &cri::LinuxContainerResources) {
    if crius_cgroup_v2() {
        let weight = crius::cgroups::resources::shares_to_weight(r.cpu_shares as u64);
        assert_eq!(cgroup_file("cpu", cgroup, "cpu.weight"), weight.to_string());
        let quota = if r.cpu_quota > 0 {
            r.cpu_quota.to_string()
        } else {
            "max".into()
        };
        let cpu_max = format!("{quota} {}", r.cpu_period);
        assert_eq!(cgroup_file("cpu", cgroup, "cpu.max"), cpu_max);
        if r.memory_limit_in_bytes > 0 {
            let memory = r.memory_limit_in_bytes.to_string();
            assert_eq!(cgroup_file("memory", cgroup, "memory.max"), memory);
        }
        return;
    }
    let shares = r.cpu_shares.to_string();
    assert_eq!(cgroup_file("cpu", cgroup, "cpu.shares"), shares);
    let period = r.cpu_period.to_string();
    assert_eq!(cgroup_file("cpu", cgroup, "cpu.cfs_period_us"), period);
    let quota = if r.cpu_quota > 0 { r.cpu_quota } else { -1 };
    assert_eq!(
        cgroup_file("cpu", cgroup, "cpu.cfs_quota_us"),
        quota.to_string()
    );
    let memory: u64 = cgroup_file("memory", cgroup, "memory.limit_in_bytes")
        .parse()
        .unwrap();
    if r.memory_limit_in_bytes > 0 {
        assert_eq!(memory, r.memory_limit_in_bytes as u64);
        if r.memory_swap_limit_in_bytes > 0 {
            let memsw = cgroup_file("memory", cgroup, "memory.memsw.limit_in_bytes");
            assert_eq!(memsw, r.memory_swap_limit_in_bytes.to_string());
        }
    } else {
        assert!(memory > 1 << 60, "no memory limit was asked for: {memory}");
    }
    if Path::new("/sys/fs/cgroup/hugetlb").exists() {
        for h in &r.hugepage_limits {
            let file = format!("hugetlb.{}.limit_in_bytes", h.page_size);
            assert_eq!(cgroup_file("hugetlb", cgroup, &file), h.limit.to_string());
        }
    }
}

/// crius clamps the score to no lower than its own when it cannot lower it
/// (CAP_SYS_RESOURCE), and to 1000.
fn clamped_oom_score_adj(daemon: &Daemon, requested: i64) -> i64 {
    let own: i64 = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", daemon.pid()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let can_lower = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap();
    let floor = if can_lower { -1000 } else { own };
    requested.clamp(floor, 1000)
}

async fn container_pid(daemon: &Daemon, id: &str) -> i32 {
    let info = status(daemon, id).await.unwrap().info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    info["pid"].as_i64().unwrap() as i32
}

async fn pod_ip(daemon: &Daemon, pod_id: &str) -> String {
    daemon
        .runtime()
        .await
        .unwrap()
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip
}

async fn wait_for_file(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never reached {}: {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A field of /proc/1/status in the container (the container's own process).
async fn proc_status(daemon: &Daemon, id: &str, field: &str) -> String {
    let (out, code) = sh(daemon, id, &format!("grep '^{field}:' /proc/1/status")).await;
    assert_eq!(code, 0, "{field}: {out}");
    out.split_once(':').unwrap().1.trim().to_string()
}

/// A pod kubelet has started: its requests and what crius made of them.
struct RunningPod {
    spec: PodSpec,
    config: cri::PodSandboxConfig,
    container_config: cri::ContainerConfig,
    volumes: PodVolumes,
    pod_id: String,
    container_id: String,
}

/// kubelet's SyncPod for a new pod: log directory, RunPodSandbox, the image (PullImage with
/// the sandbox config), the hosts file and termination-log file, the container's log
/// directory, CreateContainer, StartContainer.
async fn start_pod_as_kubelet(
    daemon: &Daemon,
    kubelet: &Kubelet,
    cgroups: &mut KubeletCgroups,
    spec: PodSpec,
) -> RunningPod {
    cgroups.make_pod(&spec);
    let config = generate_pod_sandbox_config(kubelet, &spec);
    // kuberuntime createPodSandbox makes the pod's log directory first.
    std::fs::create_dir_all(&config.log_directory).unwrap();
    let pod_id = run_pod(daemon, config.clone())
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox of {}: {e:?}", spec.name));

    let mut images = daemon.image().await.unwrap();
    let image_ref = images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: busybox(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: Some(config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    // getImageUser: the uid ImageStatus reports.
    let image = images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image_ref.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    let image_uid = image.uid.map(|u| u.value);

    let volumes = set_up_volumes(kubelet, &spec);
    let ip = pod_ip(daemon, &pod_id).await;
    std::fs::write(&volumes.etc_hosts, managed_hosts_file(&spec, &ip)).unwrap();
    std::fs::write(&volumes.termination_log, "").unwrap();
    std::fs::set_permissions(
        &volumes.termination_log,
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let container_config =
        generate_container_config(kubelet, &spec, &volumes, &image_ref, image_uid);
    std::fs::create_dir_all(Path::new(&config.log_directory).join(spec.container.name)).unwrap();
    let mut rt = daemon.runtime().await.unwrap();
    let container_id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config.clone()),
            sandbox_config: Some(config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer in {}: {e:?}", spec.name))
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer in {}: {e:?}", spec.name));
    RunningPod {
        spec,
        config,
        container_config,
        volumes,
        pod_id,
        container_id,
    }
}

/// What kubelet and the pod's user see of a started pod.
async fn check_running_pod(daemon: &Daemon, kubelet: &Kubelet, p: &RunningPod) {
    let id = &p.container_id;
    let name = &p.spec.name;

    // ContainerStatus as kubelet reads it: running, its labels and annotations kept (kubelet
    // recovers hash and restart count from them), the mounts (the termination message is
    // found through them) and the full log path.
    let s = status(daemon, id).await.unwrap().status.unwrap();
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerRunning as i32,
        "{name}"
    );
    assert_eq!(s.labels, p.container_config.labels);
    assert_eq!(s.annotations, p.container_config.annotations);
    let log_path = Path::new(&p.config.log_directory).join(&p.container_config.log_path);
    assert_eq!(s.log_path, log_path.to_string_lossy());
    assert!(
        s.mounts
            .iter()
            .any(|m| m.container_path == "/dev/termination-log"
                && m.host_path == p.volumes.termination_log.to_string_lossy()),
        "{:?}",
        s.mounts
    );
    // toKubeContainerStatus: the image id (ImageId since 1.30) and a digest reference.
    assert_eq!(
        Some(&s.image_id),
        p.container_config.image.as_ref().map(|i| &i.image)
    );
    assert!(s.image_ref.contains("sha256:"), "{}", s.image_ref);

    // The log: the first line, with the env var kubelet expanded.
    let greeting = p.spec.container.env[0].1;
    wait_for_file(&log_path, &format!("started {greeting}")).await;
    // The termination message in kubelet's file.
    let message = wait_for_file(&p.volumes.termination_log, "all-good").await;
    assert_eq!(message.trim(), "all-good");

    // Hostname, DNS and hosts.
    let (out, code) = sh(daemon, id, "hostname; cat /etc/hostname").await;
    assert_eq!(code, 0);
    assert_eq!(out, format!("{name}\n{name}\n"));
    let dns = p.config.dns_config.as_ref().unwrap();
    let (resolv, _) = sh(daemon, id, "cat /etc/resolv.conf").await;
    assert_eq!(
        resolv,
        format!(
            "search {}\nnameserver {}\noptions ndots:5\n",
            dns.searches.join(" "),
            kubelet.cluster_dns
        )
    );
    let (hosts, _) = sh(daemon, id, "cat /etc/hosts").await;
    let expected_hosts = std::fs::read_to_string(&p.volumes.etc_hosts).unwrap();
    assert_eq!(hosts, expected_hosts);
    assert!(hosts.starts_with("# Kubernetes-managed hosts file."));

    // The volumes: the emptyDir is writable and shared with the host, the service account
    // token is readable and mounted read-only.
    let (_, code) = sh(daemon, id, "echo from-container > /cache/written").await;
    assert_eq!(code, 0, "the emptyDir is not writable");
    let written = std::fs::read_to_string(p.volumes.empty_dir.join("written")).unwrap();
    assert_eq!(written, "from-container\n");
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let (token, code) = sh(daemon, id, &format!("cat {sa}/token")).await;
    assert_eq!(code, 0);
    assert!(token.starts_with("eyJ"), "{token}");
    let (mount_line, _) = sh(daemon, id, &format!("grep ' {sa} ' /proc/mounts")).await;
    let options = mount_line.split_whitespace().nth(3).unwrap_or_default();
    assert!(options.split(',').any(|o| o == "ro"), "{mount_line}");

    // Env: the service links and the container's own.
    let (env, _) = sh(daemon, id, "env").await;
    for kv in &p.container_config.envs {
        assert!(
            env.lines()
                .any(|l| l == format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value))),
            "{} missing from {env}",
            kv.key
        );
    }

    // The limits kubelet asked for, in the container's cgroup (which its process is in), and
    // the oom score as crius clamps it.
    let r = p
        .container_config
        .linux
        .as_ref()
        .unwrap()
        .resources
        .clone()
        .unwrap();
    let pid = container_pid(daemon, id).await;
    let cgroup = cgroup_of(pid);
    let parent = pod_cgroup_path(&p.spec);
    assert!(
        cgroup.starts_with(&parent),
        "{cgroup} is not under {parent}"
    );
    assert_limits_in_cgroup(&cgroup, &r);
    let adj: i64 = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        adj,
        clamped_oom_score_adj(daemon, r.oom_score_adj),
        "{name}"
    );

    // ExecSync: output and exit code.
    let (out, code) = sh(daemon, id, "echo exec-ok; exit 4").await;
    assert_eq!((out.as_str(), code), ("exec-ok\n", 4));

    check_stats(daemon, p).await;
    check_listed_by_pod_uid(daemon, p).await;
}

/// PodSandboxStatus as kubelet reads it (state, IP, namespace options: a NODE network would
/// make it a host-network pod; labels and annotations, from which it recovers the pod), and
/// the lists kubelet filters by the pod's uid label.
async fn check_listed_by_pod_uid(daemon: &Daemon, p: &RunningPod) {
    let mut rt = daemon.runtime().await.unwrap();
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: p.pod_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.labels, p.config.labels);
    assert_eq!(status.annotations, p.config.annotations);
    assert_eq!(status.metadata, p.config.metadata);
    let options = status.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(options.network, cri::NamespaceMode::Pod as i32);
    assert_eq!(options.ipc, cri::NamespaceMode::Pod as i32);
    assert_eq!(options.pid, cri::NamespaceMode::Container as i32);

    let by_uid = HashMap::from([("io.kubernetes.pod.uid".to_string(), p.spec.uid.clone())]);
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: by_uid.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.iter().map(|x| &x.id).collect::<Vec<_>>(), [&p.pod_id]);
    let containers = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: by_uid,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].id, p.container_id);
    assert_eq!(containers[0].annotations, p.container_config.annotations);
}

/// ContainerStats, ListContainerStats and ListPodSandboxStats as kubelet's CRI stats provider
/// asks for them; every filesystem named exists.
async fn check_stats(daemon: &Daemon, p: &RunningPod) {
    let mut rt = daemon.runtime().await.unwrap();
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: p.container_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(stats.memory.unwrap().working_set_bytes.is_some());
    let layer = stats.writable_layer.unwrap();
    let mountpoint = layer.fs_id.unwrap().mountpoint;
    assert!(
        Path::new(&mountpoint).is_dir(),
        "{mountpoint} does not exist"
    );
    let listed = rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: p.pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let pods = rt
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: p.pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(pods.len(), 1);
    let linux = pods[0].linux.as_ref().unwrap();
    assert_eq!(linux.containers.len(), 1);
    assert_eq!(
        pods[0]
            .attributes
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .uid,
        p.spec.uid
    );
}

/// The Burstable pod's restricted security context: uid/gid/groups, no capabilities, no new
/// privileges, seccomp filtering; and its sysctls.
async fn check_restricted_security(daemon: &Daemon, p: &RunningPod) {
    let id = &p.container_id;
    let (ids, _) = sh(daemon, id, "id -u; id -g; id -G").await;
    let lines: Vec<&str> = ids.lines().collect();
    assert_eq!(&lines[..2], &["1000", "3000"], "{ids}");
    assert!(lines[2].split_whitespace().any(|g| g == "2000"), "{ids}");
    assert_eq!(proc_status(daemon, id, "NoNewPrivs").await, "1");
    assert_eq!(proc_status(daemon, id, "Seccomp").await, "2");
    assert_eq!(proc_status(daemon, id, "CapEff").await, "0000000000000000");
    for (name, value) in &p.spec.sysctls {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let (out, _) = sh(daemon, id, &format!("cat {path}")).await;
        assert_eq!(out.trim(), *value, "{name}");
    }
}

/// The BestEffort pod's defaults: the image's user (root), kubelet's Unconfined seccomp, the
/// runtime's default capabilities, masked and read-only /proc paths.
async fn check_default_security(daemon: &Daemon, p: &RunningPod) {
    let id = &p.container_id;
    let (uid, _) = sh(daemon, id, "id -u").await;
    assert_eq!(uid.trim(), "0");
    assert_eq!(proc_status(daemon, id, "Seccomp").await, "0");
    assert_eq!(proc_status(daemon, id, "NoNewPrivs").await, "0");
    assert_ne!(proc_status(daemon, id, "CapEff").await, "0000000000000000");
    // A masked file reads empty, a masked directory lists nothing (this host's kernel has
    // timer_list and firmware entries; kcore and others are not built in).
    let (masked, _) = sh(
        daemon,
        id,
        "wc -c < /proc/timer_list; ls /sys/firmware | wc -l",
    )
    .await;
    assert_eq!(
        masked, "0\n0\n",
        "/proc/timer_list or /sys/firmware is not masked"
    );
    let (_, code) = sh(daemon, id, "echo 1 > /proc/sys/kernel/ns_last_pid").await;
    assert_ne!(code, 0, "/proc/sys is writable");
}

/// In-place resize as kubelet sends it (generateContainerResources: the full resources, with
/// hugepage limits), then a limit the kernel refuses: INVALID_ARGUMENT naming the field, and
/// the previous limits back in place.
async fn check_update_resources(
    daemon: &Daemon,
    kubelet: &Kubelet,
    cgroups: &KubeletCgroups,
    p: &mut RunningPod,
) {
    p.spec.container.cpu_limit_milli = 800;
    p.spec.container.memory_limit = 96 << 20;
    // doPodResizeAction: a growing pod's cgroup first, then its containers.
    cgroups.set_pod_limits(&p.spec);
    let resized = generate_linux_container_resources(kubelet, &p.spec);
    let mut rt = daemon.runtime().await.unwrap();
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: p.container_id.clone(),
        linux: Some(resized.clone()),
        windows: None,
        annotations: HashMap::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e:?}"));
    let cgroup = cgroup_of(container_pid(daemon, &p.container_id).await);
    assert_limits_in_cgroup(&cgroup, &resized);
    let current = status(daemon, &p.container_id)
        .await
        .unwrap()
        .status
        .unwrap();
    let reported = current.resources.unwrap().linux.unwrap();
    assert_eq!(reported.cpu_quota, 80_000);

    // A limit the kernel refuses (the period has room for the quota, the quota not for the
    // container's pod cgroup above it) is answered with the kernel's reason; the old limits
    // stay.
    // On v2 the kernel clamps a child's quota to its parent's instead of refusing it: there the
    // refusal is a pids.max kubelet's pod cgroup would set (as a `unified` key) out of range.
    let mut refused = resized.clone();
    let field = if crius_cgroup_v2() {
        refused
            .unified
            .insert("pids.max".to_string(), "-1".to_string());
        "linux.unified[pids.max]"
    } else {
        refused.cpu_quota = 17_592_186_044_415;
        "linux.cpu_quota"
    };
    let err = rt
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: p.container_id.clone(),
            linux: Some(refused),
            windows: None,
            annotations: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(field), "{}", err.message());
    assert!(
        err.message().contains("Invalid argument"),
        "no kernel reason: {}",
        err.message()
    );
    assert_limits_in_cgroup(&cgroup, &resized);
}

/// kubelet's pod teardown: StopContainer with the grace period, StopPodSandbox, then (garbage
/// collection) RemoveContainer and RemovePodSandbox. Nothing of crius's is left in the pod's
/// cgroup.
async fn stop_and_remove_as_kubelet(daemon: &Daemon, p: &RunningPod) {
    let mut rt = daemon.runtime().await.unwrap();
    rt.stop_container(cri::StopContainerRequest {
        container_id: p.container_id.clone(),
        timeout: p.spec.termination_grace_period,
    })
    .await
    .unwrap();
    let s = status(daemon, &p.container_id)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    stop_pod(daemon, &p.pod_id).await.unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: p.container_id.clone(),
    })
    .await
    .unwrap();
    remove_pod(daemon, &p.pod_id).await.unwrap();
    let left = KubeletCgroups::children_of(&p.spec);
    assert!(left.is_empty(), "cgroups left in the pod's: {left:?}");
}

/// The skipped-limit warning: once per controller for the daemon's run, however many
/// containers and updates asked for hugepage limits.
fn assert_one_hugetlb_warning(daemon: &Daemon) {
    if crius_cgroup_v2() || Path::new("/sys/fs/cgroup/hugetlb").exists() {
        return;
    }
    let warnings = daemon
        .dir
        .log()
        .lines()
        .filter(|l| l.contains("no hugetlb cgroup controller"))
        .count();
    assert_eq!(warnings, 1, "{}", daemon.dir.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burstable_and_besteffort_pods_as_kubelet_sends_them() {
    // Declared before the daemon: dropped after it, once its pods are gone.
    let mut cgroups = KubeletCgroups::new();
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let kubelet = Kubelet::new(daemon.dir.path());

    let mut burstable =
        start_pod_as_kubelet(&daemon, &kubelet, &mut cgroups, burstable_pod()).await;
    let besteffort = start_pod_as_kubelet(&daemon, &kubelet, &mut cgroups, besteffort_pod()).await;

    check_running_pod(&daemon, &kubelet, &burstable).await;
    check_restricted_security(&daemon, &burstable).await;
    check_running_pod(&daemon, &kubelet, &besteffort).await;
    check_default_security(&daemon, &besteffort).await;
    check_update_resources(&daemon, &kubelet, &cgroups, &mut burstable).await;
    assert_one_hugetlb_warning(&daemon);

    stop_and_remove_as_kubelet(&daemon, &burstable).await;
    stop_and_remove_as_kubelet(&daemon, &besteffort).await;
    let left = std::fs::read_dir(daemon.dir.root().join("containers"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "container dirs left");
}

/// kubelet's stats and eviction managers stat ImageFsInfo's filesystems as soon as the runtime
/// answers: on a fresh daemon, before any pull, every mountpoint named exists (and so does the
/// writable layers' one ContainerStats names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_names_existing_dirs_before_any_pull() {
    let daemon = Daemon::start("").await;
    let info = daemon
        .image()
        .await
        .unwrap()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!info.image_filesystems.is_empty());
    for fs in info
        .image_filesystems
        .iter()
        .chain(info.container_filesystems.iter())
    {
        let mountpoint = &fs.fs_id.as_ref().unwrap().mountpoint;
        assert!(
            Path::new(mountpoint).is_dir(),
            "{mountpoint} does not exist"
        );
        assert!(fs.used_bytes.is_some() && fs.inodes_used.is_some());
    }
    assert!(daemon.dir.root().join("containers").is_dir());
}

/// A pod whose parent cgroup crius makes itself (no kubelet made it, as under crictl), with
/// the node's hugepage sizes in its resources: the parent gets the limits the host can hold,
/// and the pod starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cgroup_crius_makes_skips_missing_controllers() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let kubelet = Kubelet::new(daemon.dir.path());
    let mut config = crate::sandbox::pod_config(&daemon, "own-parent");
    let mut resources = calculate_linux_resources(Some(250), 0, 0);
    resources.hugepage_limits = hugepage_limits(&kubelet);
    let linux = config.linux.as_mut().unwrap();
    linux.resources = Some(resources);
    let parent = parent_path(&linux.cgroup_parent);
    let pod_id = run_pod(&daemon, config)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}"));
    let shares = milli_cpu_to_shares(250);
    if crius_cgroup_v2() {
        let weight = crius::cgroups::resources::shares_to_weight(shares as u64);
        assert_eq!(
            cgroup_file("cpu", &parent, "cpu.weight"),
            weight.to_string()
        );
    } else {
        assert_eq!(
            cgroup_file("cpu", &parent, "cpu.shares"),
            shares.to_string()
        );
    }
    stop_pod(&daemon, &pod_id).await.unwrap();
    remove_pod(&daemon, &pod_id).await.unwrap();
}
