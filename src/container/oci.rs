//! The OCI runtime spec (config.json) of a container, from the CRI ContainerConfig, the image
//! config and the pod. Pure: every input is passed in, so the rules are unit-tested.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use crate::cri;
use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType,
    LinuxHugepageLimit, LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, LinuxSeccomp, Mount, Process, Root, Spec, User,
};

use super::spec::{self, MASKED_PATHS, READONLY_PATHS};
use crate::image::manifest::ContainerDefaults;
use crate::linux::userns::{IdRange, PodMappings};

/// What the pod contributes to its containers' specs.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub hostname: String,
    pub netns: Option<PathBuf>,
    /// The pinned IPC namespace; None for the host's.
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// The pod's /dev/shm; None means the host's (host IPC).
    pub shm: Option<PathBuf>,
    pub hostname_file: PathBuf,
    pub hosts_file: PathBuf,
    pub resolv_file: PathBuf,
    pub privileged: bool,
    /// The ranges of the pod's own user namespace; None for the host's.
    pub user_namespace: Option<PodMappings>,
}

/// Every input of the spec; the user, the seccomp profile and the oom score are resolved by
/// the caller (they need the image's files, the host's limits and profile files).
pub struct SpecInputs<'a> {
    pub config: &'a cri::ContainerConfig,
    pub image: &'a ContainerDefaults,
    pub pod: &'a PodView,
    pub user: spec::User,
    /// The container's own PID namespace (false: the pod's or the host's, already chosen).
    pub new_pid_ns: bool,
    pub seccomp: Option<LinuxSeccomp>,
    pub oom_score_adj: i32,
    pub cgroup_path: String,
    /// Capabilities this kernel knows, for "ALL" and validation.
    pub all_capabilities: &'a [&'a str],
    /// Capabilities the runtime itself holds: no container gets more (root here may lack
    /// some, e.g. CAP_SYS_RESOURCE).
    pub grantable: &'a [String],
    /// Char and block devices of the host, for privileged containers.
    pub host_devices: Vec<LinuxDevice>,
    /// Indices into `config.mounts` of binds that are never idmapped (image volumes: an
    /// overlay, shown as the image has it).
    pub plain_binds: &'a [usize],
}

/// (field, reason) of an invalid input.
pub type Invalid = (String, String);

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// The character devices every container gets: (path, major, minor).
const DEFAULT_DEVICES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

pub fn char_device(path: &str, major: i64, minor: i64) -> LinuxDevice {
    let mut d = LinuxDevice::default();
    d.set_path(path.into());
    d.set_typ(LinuxDeviceType::C);
    d.set_major(major);
    d.set_minor(minor);
    d.set_file_mode(Some(0o666));
    d.set_uid(Some(0));
    d.set_gid(Some(0));
    d
}

pub(crate) fn device_rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(typ);
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_string()));
    r
}

/// The device cgroup rules: deny everything, then allow the default devices, ptys, mknod of
/// any device (opening it stays denied), and the devices the pod asked for.
fn device_rules(devices: &[LinuxDevice], privileged: bool) -> Vec<LinuxDeviceCgroup> {
    if privileged {
        return vec![device_rule(true, None, None, None, "rwm")];
    }
    let c = Some(LinuxDeviceType::C);
    let mut rules = vec![
        device_rule(false, None, None, None, "rwm"),
        device_rule(true, c, None, None, "m"),
        device_rule(true, Some(LinuxDeviceType::B), None, None, "m"),
        device_rule(true, c, Some(5), Some(1), "rwm"),
        device_rule(true, c, Some(5), Some(2), "rwm"),
        device_rule(true, c, Some(136), None, "rwm"),
    ];
    for d in devices {
        rules.push(device_rule(
            true,
            Some(d.typ()),
            Some(d.major()),
            Some(d.minor()),
            "rwm",
        ));
    }
    rules
}

fn resources(
    config: &cri::ContainerConfig,
    cgroup_devices: Vec<LinuxDeviceCgroup>,
) -> LinuxResources {
    let mut out = LinuxResources::default();
    out.set_devices(Some(cgroup_devices));
    let Some(r) = config.linux.as_ref().and_then(|l| l.resources.as_ref()) else {
        return out;
    };
    let mut cpu = LinuxCpu::default();
    if r.cpu_shares > 0 {
        cpu.set_shares(Some(r.cpu_shares as u64));
    }
    if r.cpu_quota > 0 {
        cpu.set_quota(Some(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.set_period(Some(r.cpu_period as u64));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(r.cpuset_cpus.clone()));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.set_mems(Some(r.cpuset_mems.clone()));
    }
    out.set_cpu(Some(cpu));
    let mut memory = LinuxMemory::default();
    if r.memory_limit_in_bytes > 0 {
        memory.set_limit(Some(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes > 0 {
        memory.set_swap(Some(r.memory_swap_limit_in_bytes));
    }
    out.set_memory(Some(memory));
    if !r.hugepage_limits.is_empty() {
        out.set_hugepage_limits(Some(
            r.hugepage_limits
                .iter()
                .map(|h| {
                    let mut l = LinuxHugepageLimit::default();
                    l.set_page_size(h.page_size.clone());
                    l.set_limit(h.limit as i64);
                    l
                })
                .collect(),
        ));
    }
    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.clone()));
    }
    out
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path.map(Path::to_path_buf));
    ns
}

/// The CRI mount propagation as mount options.
fn propagation(p: i32) -> &'static str {
    match cri::MountPropagation::try_from(p) {
        Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
        _ => "rprivate",
    }
}

/// The container's OCI spec. Each part is built by its own function below, in this order, so
/// the first bad input reported is the same whatever the request holds.
pub fn build(input: &SpecInputs) -> Result<Spec, Invalid> {
    let security = security_context(input.config);
    if security.privileged && !input.pod.privileged {
        return Err((
            "config.linux.security_context.privileged".into(),
            "a privileged container needs a privileged pod sandbox".into(),
        ));
    }
    let process = process(input, &security)?;
    let mounts = mounts(input, &security)?;
    let (devices, cgroup_devices) = devices(input, security.privileged)?;
    let linux = linux(input, &security, devices, &cgroup_devices, &mounts);

    let mut spec = Spec::default();
    spec.set_version("1.1.0".into());
    spec.set_root(Some(root(&security)));
    spec.set_hostname(Some(input.pod.hostname.clone()));
    spec.set_process(Some(process));
    spec.set_linux(Some(linux));
    spec.set_mounts(Some(mounts));
    spec.set_hooks(None);
    let annotations: HashMap<String, String> = input.config.annotations.clone();
    spec.set_annotations(Some(annotations));
    Ok(spec)
}

fn security_context(config: &cri::ContainerConfig) -> cri::LinuxContainerSecurityContext {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default()
}

/// The process: command line, environment, working dir, capabilities, user and the flags.
fn process(
    input: &SpecInputs,
    security: &cri::LinuxContainerSecurityContext,
) -> Result<Process, Invalid> {
    let args = command_line(input)?;
    let env = environment(input)?;
    let cwd = working_dir(input)?;
    let capabilities = capabilities(input, security)?;
    let mut process = Process::default();
    process.set_terminal(Some(input.config.tty));
    process.set_user(user(&input.user));
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_capabilities(Some(capabilities));
    process.set_rlimits(None);
    process.set_no_new_privileges(Some(security.no_new_privs));
    process.set_oom_score_adj(Some(input.oom_score_adj));
    Ok(process)
}

fn command_line(input: &SpecInputs) -> Result<Vec<String>, Invalid> {
    let config = input.config;
    let args = spec::command_line(input.image, &config.command, &config.args);
    if args.is_empty() {
        return Err((
            "config.command".into(),
            "no command given and the image has no Entrypoint or Cmd".into(),
        ));
    }
    Ok(args)
}

fn environment(input: &SpecInputs) -> Result<Vec<String>, Invalid> {
    let env_pairs = env_pairs(&input.config.envs)?;
    Ok(spec::environment(input.image, &env_pairs))
}

/// The config's working dir, else the image's, else `/`; absolute.
fn working_dir(input: &SpecInputs) -> Result<String, Invalid> {
    let cwd = [
        input.config.working_dir.as_str(),
        input.image.working_dir.as_str(),
    ]
    .into_iter()
    .find(|d| !d.is_empty())
    .unwrap_or("/");
    if !cwd.starts_with('/') {
        return Err((
            "config.working_dir".into(),
            format!("{cwd:?} is not an absolute path"),
        ));
    }
    Ok(cwd.to_string())
}

fn user(resolved: &spec::User) -> User {
    let mut user = User::default();
    user.set_uid(resolved.uid);
    user.set_gid(resolved.gid);
    user.set_additional_gids(Some(resolved.additional_gids.clone()));
    user
}

/// Bounding, effective and permitted: the default set with the request's adds and drops (all
/// of them when privileged); inheritable and ambient: the requested ambient ones. Never more
/// than the runtime itself may grant.
fn capabilities(
    input: &SpecInputs,
    security: &cri::LinuxContainerSecurityContext,
) -> Result<LinuxCapabilities, Invalid> {
    let requested = security.capabilities.clone().unwrap_or_default();
    let caps: Vec<String> = if security.privileged {
        input
            .all_capabilities
            .iter()
            .map(|c| c.to_string())
            .collect()
    } else {
        spec::capabilities(
            &requested.add_capabilities,
            &requested.drop_capabilities,
            input.all_capabilities,
        )
        .map_err(|e| ("config.linux.security_context.capabilities".to_string(), e))?
    };
    let cap_set = capability_set(&grantable_only(input, caps))?;
    let ambient_names = spec::capabilities(
        &requested.add_ambient_capabilities,
        &["ALL".to_string()],
        input.all_capabilities,
    )
    .map_err(|e| ("config.linux.security_context.capabilities".to_string(), e))?;
    let ambient = capability_set(&grantable_only(input, ambient_names))?;
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(cap_set.clone()));
    capabilities.set_effective(Some(cap_set.clone()));
    capabilities.set_permitted(Some(cap_set));
    capabilities.set_inheritable(Some(ambient.clone()));
    capabilities.set_ambient(Some(ambient));
    Ok(capabilities)
}

fn grantable_only(input: &SpecInputs, names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|c| input.grantable.contains(c))
        .collect()
}

fn capability_set(names: &[String]) -> Result<HashSet<Capability>, Invalid> {
    names
        .iter()
        .map(|c| {
            c.trim_start_matches("CAP_")
                .parse::<Capability>()
                .map_err(|e| {
                    (
                        "config.linux.security_context.capabilities".to_string(),
                        format!("{c}: {e}"),
                    )
                })
        })
        .collect()
}

/// The mounts: the defaults, then the pod's files, then kubelet's volumes parent before
/// child; a volume at the same destination as an earlier mount replaces it.
fn mounts(
    input: &SpecInputs,
    security: &cri::LinuxContainerSecurityContext,
) -> Result<Vec<Mount>, Invalid> {
    let mut mounts = default_mounts(security.privileged);
    mounts.push(shm_mount(input.pod));
    mounts.extend(pod_file_mounts(input, security.readonly_rootfs));
    for volume in volume_mounts(input)? {
        mounts.retain(|existing| existing.destination() != volume.destination());
        mounts.push(volume);
    }
    Ok(mounts)
}

/// /proc, /dev and its pts and mqueue, /sys and its cgroups (read-only unless privileged),
/// /run.
fn default_mounts(privileged: bool) -> Vec<Mount> {
    let sys_ro = if privileged { "rw" } else { "ro" };
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_ro],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_ro],
        ),
        mount(
            "/run",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
    ]
}

/// The pod's /dev/shm, or the host's with the host IPC namespace.
fn shm_mount(pod: &PodView) -> Mount {
    let shm = pod.shm.clone().unwrap_or_else(|| PathBuf::from("/dev/shm"));
    mount(
        "/dev/shm",
        "bind",
        &shm.to_string_lossy(),
        &["rbind", "nosuid", "nodev", "noexec"],
    )
}

/// The pod's hostname, hosts and resolv.conf, unless kubelet mounts its own there.
fn pod_file_mounts(input: &SpecInputs, readonly_rootfs: bool) -> Vec<Mount> {
    let mode = if readonly_rootfs { "ro" } else { "rw" };
    [
        ("/etc/hostname", &input.pod.hostname_file),
        ("/etc/hosts", &input.pod.hosts_file),
        ("/etc/resolv.conf", &input.pod.resolv_file),
    ]
    .into_iter()
    .filter(|(dest, _)| {
        !input
            .config
            .mounts
            .iter()
            .any(|m| m.container_path == *dest)
    })
    .map(|(dest, source)| {
        mount(
            dest,
            "bind",
            &source.to_string_lossy(),
            &["rbind", "rprivate", mode],
        )
    })
    .collect()
}

/// kubelet's volumes as bind mounts, checked in the order given, then sorted by the depth of
/// their destination (stable, as containerd does): `/data` is mounted before `/data/sub`
/// whatever order they came in, so it never hides it.
/// In a user-namespaced pod they are idmapped through the pod's user namespace (the mount's
/// uidMappings and gidMappings), as containerd does: the pod's root sees what the host's root
/// owns there as its own.
fn volume_mounts(input: &SpecInputs) -> Result<Vec<Mount>, Invalid> {
    let config = input.config;
    let mut volumes = Vec::with_capacity(config.mounts.len());
    for (i, m) in config.mounts.iter().enumerate() {
        check_volume(&format!("config.mounts[{i}]"), m)?;
        let mut options = vec!["rbind", propagation(m.propagation)];
        options.push(if m.readonly { "ro" } else { "rw" });
        if m.recursive_read_only {
            options.push("rro");
        }
        let mut volume = mount(&m.container_path, "bind", &m.host_path, &options);
        if let Some(maps) = input.pod.user_namespace
            && !input.plain_binds.contains(&i)
        {
            volume.set_uid_mappings(Some(vec![id_mapping(maps.uids)]));
            volume.set_gid_mappings(Some(vec![id_mapping(maps.gids)]));
        }
        volumes.push(volume);
    }
    volumes.sort_by_key(|m| destination_depth(m.destination()));
    Ok(volumes)
}

fn check_volume(field: &str, m: &cri::Mount) -> Result<(), Invalid> {
    if m.recursive_read_only
        && (!m.readonly || m.propagation != cri::MountPropagation::PropagationPrivate as i32)
    {
        return Err((
            format!("{field}.recursive_read_only"),
            "needs readonly set and PROPAGATION_PRIVATE, as the CRI says".into(),
        ));
    }
    if m.image.as_ref().is_some_and(|s| !s.image.is_empty()) {
        return Err((
            field.to_string(),
            "image volumes are not supported by crius".into(),
        ));
    }
    if !m.container_path.starts_with('/') {
        return Err((
            format!("{field}.container_path"),
            format!("{:?} is not an absolute path", m.container_path),
        ));
    }
    if !Path::new(&m.host_path).exists() {
        return Err((
            format!("{field}.host_path"),
            format!("{:?} does not exist", m.host_path),
        ));
    }
    Ok(())
}

/// How many components a destination has once cleaned (`.` dropped, `..` taking one off):
/// `/` is 0, `/data` 1, `/data/sub/` 2.
pub fn destination_depth(path: &Path) -> usize {
    path.components().fold(0usize, |depth, c| match c {
        Component::Normal(_) => depth + 1,
        Component::ParentDir => depth.saturating_sub(1),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => depth,
    })
}

/// The container's device nodes (the defaults, the host's for privileged containers, then the
/// requested ones) and the devices its cgroup allows beside the standard rules (the defaults
/// and the requested ones).
fn devices(
    input: &SpecInputs,
    privileged: bool,
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDevice>), Invalid> {
    let mut devices = default_devices();
    if privileged {
        for d in &input.host_devices {
            if !devices.iter().any(|x| x.path() == d.path()) {
                devices.push(d.clone());
            }
        }
    }
    let requested = requested_devices(input.config)?;
    for device in &requested {
        devices.retain(|x| x.path() != device.path());
        devices.push(device.clone());
    }
    let mut cgroup_devices = default_devices();
    cgroup_devices.extend(requested);
    Ok((devices, cgroup_devices))
}

fn default_devices() -> Vec<LinuxDevice> {
    DEFAULT_DEVICES
        .iter()
        .map(|(p, ma, mi)| char_device(p, *ma, *mi))
        .collect()
}

/// The host devices the config asks for, at their container paths.
fn requested_devices(config: &cri::ContainerConfig) -> Result<Vec<LinuxDevice>, Invalid> {
    config
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let field = format!("config.devices[{i}].host_path");
            let meta = std::fs::metadata(&d.host_path)
                .map_err(|e| (field.clone(), format!("{:?}: {e}", d.host_path)))?;
            device_from_metadata(&d.container_path, &meta)
                .ok_or_else(|| (field, format!("{:?} is not a device", d.host_path)))
        })
        .collect()
}

/// One range of a user namespace as the OCI spec writes it (container id 0 first).
fn id_mapping(range: IdRange) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(range.host)
        .size(range.length)
        .build()
        .unwrap_or_default()
}

/// Own mount and cgroup namespaces, a PID namespace unless shared, and the pod's pinned
/// network, IPC and UTS namespaces; the pod's user namespace when it has one (the spec gives
/// its ranges: its owner is the network namespace's).
fn namespaces(input: &SpecInputs) -> Vec<LinuxNamespace> {
    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Mount, None),
        namespace(LinuxNamespaceType::Cgroup, None),
    ];
    if input.new_pid_ns {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None));
    }
    for (typ, path) in [
        (LinuxNamespaceType::Network, &input.pod.netns),
        (LinuxNamespaceType::Ipc, &input.pod.ipc_ns),
        (LinuxNamespaceType::Uts, &input.pod.uts_ns),
    ] {
        if let Some(p) = path {
            namespaces.push(namespace(typ, Some(p)));
        }
    }
    if input.pod.user_namespace.is_some() {
        namespaces.push(namespace(LinuxNamespaceType::User, None));
    }
    namespaces
}

/// The `linux` section: namespaces, devices, resources with the device rules, the cgroup,
/// masked and read-only paths, seccomp and the rootfs propagation.
fn linux(
    input: &SpecInputs,
    security: &cri::LinuxContainerSecurityContext,
    devices: Vec<LinuxDevice>,
    cgroup_devices: &[LinuxDevice],
    mounts: &[Mount],
) -> oci_spec::runtime::Linux {
    let privileged = security.privileged;
    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_namespaces(Some(namespaces(input)));
    if let Some(maps) = input.pod.user_namespace {
        linux.set_uid_mappings(Some(vec![id_mapping(maps.uids)]));
        linux.set_gid_mappings(Some(vec![id_mapping(maps.gids)]));
    }
    linux.set_devices(Some(devices));
    linux.set_resources(Some(resources(
        input.config,
        device_rules(cgroup_devices, privileged),
    )));
    linux.set_cgroups_path(Some(input.cgroup_path.clone().into()));
    let (masked, readonly) =
        masked_and_readonly_paths(security, input.pod.user_namespace.is_some());
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(readonly));
    linux.set_seccomp(if privileged {
        None
    } else {
        input.seccomp.clone()
    });
    linux.set_sysctl(None);
    linux.set_rootfs_propagation(rootfs_propagation(mounts));
    linux
}

/// The request's masked and read-only paths, else containerd's; none when privileged. In a
/// user-namespaced pod, both lists empty is kubelet's `procMount: Unmasked` (it sends the
/// default lists for `Default`, and allows Unmasked only there): nothing is masked. Elsewhere
/// empty lists (crictl, older clients) get the defaults.
fn masked_and_readonly_paths(
    security: &cri::LinuxContainerSecurityContext,
    user_namespace: bool,
) -> (Vec<String>, Vec<String>) {
    let unmasked =
        user_namespace && security.masked_paths.is_empty() && security.readonly_paths.is_empty();
    if security.privileged || unmasked {
        return (vec![], vec![]);
    }
    let or_default = |given: &[String], default: &[&str]| {
        if given.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            given.to_vec()
        }
    };
    (
        or_default(&security.masked_paths, MASKED_PATHS),
        or_default(&security.readonly_paths, READONLY_PATHS),
    )
}

/// A volume that propagates back to the host needs the container's mounts to stay peers of
/// the host's.
fn rootfs_propagation(mounts: &[Mount]) -> Option<String> {
    let has = |opt: &str| {
        mounts
            .iter()
            .any(|m| m.options().iter().flatten().any(|o| o == opt))
    };
    if has("rshared") {
        Some("rshared".into())
    } else if has("rslave") {
        Some("rslave".into())
    } else {
        None
    }
}

fn root(security: &cri::LinuxContainerSecurityContext) -> Root {
    let mut root = Root::default();
    root.set_path("rootfs".into());
    root.set_readonly(Some(security.readonly_rootfs));
    root
}

/// A device node of the host as the spec describes it, at `container_path`.
pub fn device_from_metadata(container_path: &str, meta: &std::fs::Metadata) -> Option<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let typ = if meta.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if meta.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let mut d = LinuxDevice::default();
    d.set_path(container_path.into());
    d.set_typ(typ);
    d.set_major(nix::sys::stat::major(rdev) as i64);
    d.set_minor(nix::sys::stat::minor(rdev) as i64);
    d.set_file_mode(Some(meta.mode() & 0o777));
    d.set_uid(Some(meta.uid()));
    d.set_gid(Some(meta.gid()));
    Some(d)
}

/// Every char and block device under the host's /dev (privileged containers get them all),
/// except the ones each container has of its own.
pub fn host_devices() -> Vec<LinuxDevice> {
    fn walk(dir: &Path, out: &mut Vec<LinuxDevice>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                let skip = ["pts", "shm", "mqueue", "fd"]
                    .iter()
                    .any(|s| path == Path::new("/dev").join(s));
                if !skip {
                    walk(&path, out);
                }
            } else if let Some(d) = device_from_metadata(&path.to_string_lossy(), &meta)
                && path != Path::new("/dev/console")
                && path != Path::new("/dev/ptmx")
            {
                out.push(d);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out);
    out
}

/// The request's environment as text: CRI carries values as bytes since v0.34, the OCI spec
/// only as UTF-8 strings.
fn env_pairs(envs: &[cri::KeyValue]) -> Result<Vec<(String, String)>, (String, String)> {
    envs.iter()
        .map(|kv| match std::str::from_utf8(&kv.value) {
            Ok(value) => Ok((kv.key.clone(), value.to_string())),
            Err(_) => Err((
                format!("config.envs[{:?}]", kv.key),
                "the value is not UTF-8".to_string(),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    static GRANTABLE: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        ["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN", "CAP_NET_RAW"]
            .map(String::from)
            .to_vec()
    });

    fn inputs<'a>(
        config: &'a cri::ContainerConfig,
        image: &'a ContainerDefaults,
        pod: &'a PodView,
    ) -> SpecInputs<'a> {
        SpecInputs {
            config,
            image,
            pod,
            user: spec::User {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
            },
            new_pid_ns: true,
            seccomp: None,
            oom_score_adj: 0,
            cgroup_path: "crius/crius-abc".into(),
            all_capabilities: &["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN", "CAP_NET_RAW"],
            grantable: &GRANTABLE,
            host_devices: vec![],
            plain_binds: &[],
        }
    }

    fn pod() -> PodView {
        PodView {
            hostname: "pod".into(),
            hosts_file: "/pods/x/hosts".into(),
            hostname_file: "/pods/x/hostname".into(),
            resolv_file: "/pods/x/resolv.conf".into(),
            shm: Some("/pods/x/shm".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_volumes() {
        let image = ContainerDefaults {
            cmd: Some(vec!["sh".into()]),
            working_dir: "/work".into(),
            ..Default::default()
        };
        let config = cri::ContainerConfig {
            mounts: vec![cri::Mount {
                container_path: "/etc/hosts".into(),
                host_path: "/etc/hosts".into(),
                readonly: true,
                propagation: cri::MountPropagation::PropagationHostToContainer as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let pod = pod();
        let spec = build(&inputs(&config, &image, &pod)).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &vec!["sh".to_string()]);
        assert_eq!(process.cwd(), Path::new("/work"));
        let mounts = spec.mounts().as_ref().unwrap();
        let hosts: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1, "the volume replaces the pod's hosts file");
        assert_eq!(
            hosts[0].options().as_ref().unwrap(),
            &vec!["rbind".to_string(), "rslave".into(), "ro".into()]
        );
        let linux = spec.linux().as_ref().unwrap();
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_string())
        );
        let caps = process.capabilities().as_ref().unwrap();
        assert!(
            caps.bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::Chown)
        );
        assert!(
            !caps
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
    }

    #[test]
    fn volumes_are_mounted_parent_before_child() {
        let volume = |dest: &str| cri::Mount {
            container_path: dest.into(),
            host_path: "/tmp".into(),
            ..Default::default()
        };
        let config = cri::ContainerConfig {
            command: vec!["sh".into()],
            mounts: vec![
                volume("/data/sub"),
                volume("/data"),
                volume("/a/b/./c/"),
                volume("/z"),
                volume("/data/x/../other"),
            ],
            ..Default::default()
        };
        let image = ContainerDefaults::default();
        let pod = pod();
        let spec = build(&inputs(&config, &image, &pod)).unwrap();
        let volumes: Vec<String> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.source().as_deref() == Some(Path::new("/tmp")))
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            volumes,
            ["/data", "/z", "/data/sub", "/data/x/../other", "/a/b/./c/"]
        );
        assert_eq!(destination_depth(Path::new("/")), 0);
        assert_eq!(destination_depth(Path::new("/data/")), 1);
        assert_eq!(destination_depth(Path::new("/a/./b/../c")), 2);
        assert_eq!(destination_depth(Path::new("/../..")), 0);
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let image = ContainerDefaults::default();
        let pod = pod();
        let config = cri::ContainerConfig::default();
        let (field, _) = build(&inputs(&config, &image, &pod)).unwrap_err();
        assert_eq!(field, "config.command");
        let config = cri::ContainerConfig {
            command: vec!["sh".into()],
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: "/nonexistent/crius-test".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (field, _) = build(&inputs(&config, &image, &pod)).unwrap_err();
        assert_eq!(field, "config.mounts[0].host_path");
        let config = cri::ContainerConfig {
            command: vec!["sh".into()],
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    privileged: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (field, _) = build(&inputs(&config, &image, &pod)).unwrap_err();
        assert_eq!(field, "config.linux.security_context.privileged");
    }
}
