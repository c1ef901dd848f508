//! The checks of a CreateContainer request (and of the resources UpdateContainerResources
//! sends), made before anything of the container exists: a bad field is INVALID_ARGUMENT (or,
//! when the image is at fault, FAILED_PRECONDITION) naming it and the cause, and nothing is
//! created or changed.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::cri;
use crate::error::{Error, Result};
use crate::image::manifest::ContainerDefaults;
use crate::sandbox::record::SandboxRecord;
use crate::sandbox::validate::{namespace_options, string_map};

use super::record::{ContainerRecord, ContainerState};
use super::spec;

/// The longest single argument or environment string execve takes: 32 pages
/// (`MAX_ARG_STRLEN`), with its terminating NUL.
const MAX_ARG_PAGES: usize = 32;
/// The CFS period bounds, in microseconds (1 ms to 1 s).
const CPU_PERIOD_RANGE: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;
/// The smallest CFS quota, in microseconds.
const CPU_QUOTA_MIN: i64 = 1_000;
/// The largest CFS quota the kernel takes, in microseconds (`MAX_BW`).
const CPU_QUOTA_MAX: i64 = (1 << 44) - 1;
/// The largest cpu.shares (cgroup v1's own bound, which kubelet uses too).
const CPU_SHARES_MAX: i64 = 262_144;
/// The CPUs and memory nodes a cpuset may name.
const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";
const ONLINE_NODES: &str = "/sys/devices/system/node/online";
/// One directory per huge page size the host supports (`hugepages-2048kB`).
const HUGEPAGES_DIR: &str = "/sys/kernel/mm/hugepages";

/// Everything CreateContainer is asked, against the pod's config and the image (its defaults
/// and its unpacked layers, topmost last); the first bad field is the error.
pub fn create_request(
    config: &cri::ContainerConfig,
    pod: &SandboxRecord,
    image: &ContainerDefaults,
    layers: &[PathBuf],
) -> Result<()> {
    metadata(config.metadata.as_ref())?;
    stop_signal(config.stop_signal)?;
    strings("config.command", &config.command)?;
    strings("config.args", &config.args)?;
    envs(&config.envs)?;
    working_dir(config, image, layers)?;
    for (i, mount) in config.mounts.iter().enumerate() {
        volume(&format!("config.mounts[{i}]"), mount)?;
    }
    for (i, device) in config.devices.iter().enumerate() {
        device_paths(&format!("config.devices[{i}]"), device)?;
    }
    string_map("config.labels", &config.labels)?;
    string_map("config.annotations", &config.annotations)?;
    log_path(&pod.config.log_directory, &config.log_path)?;
    if let Some(linux) = &config.linux {
        linux_config(linux)?;
    }
    exec_size(config, image)
}

/// A stop signal the CRI defines (RUNTIME_DEFAULT leaves it to the image).
fn stop_signal(signal: i32) -> Result<()> {
    super::stop_signal::from_cri(signal)
        .map(|_| ())
        .map_err(|reason| Error::invalid("config.stop_signal", reason))
}

/// INVALID_ARGUMENT when `value` holds a NUL byte, which no path, argument or name can.
pub fn no_nul(field: &str, value: &str) -> Result<()> {
    match value.find('\0') {
        Some(at) => Err(Error::invalid(
            field,
            format!("contains a NUL byte (at byte {at})"),
        )),
        None => Ok(()),
    }
}

fn metadata(meta: Option<&cri::ContainerMetadata>) -> Result<()> {
    let meta = meta.ok_or_else(|| Error::invalid("config.metadata", "missing"))?;
    if meta.name.is_empty() {
        return Err(Error::invalid("config.metadata.name", "empty"));
    }
    no_nul("config.metadata.name", &meta.name)
}

fn strings(field: &str, values: &[String]) -> Result<()> {
    for (i, value) in values.iter().enumerate() {
        no_nul(&format!("{field}[{i}]"), value)?;
    }
    Ok(())
}

/// Environment variables: a name without `=` or NUL, a value without NUL.
fn envs(envs: &[cri::KeyValue]) -> Result<()> {
    for (i, kv) in envs.iter().enumerate() {
        let field = format!("config.envs[{i}]");
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(Error::invalid(
                format!("{field}.key"),
                format!("{:?} is not a variable name (empty or with '=')", kv.key),
            ));
        }
        no_nul(&format!("{field}.key"), &kv.key)?;
        if let Some(at) = kv.value.iter().position(|b| *b == 0) {
            return Err(Error::invalid(
                format!("config.envs[{:?}]", kv.key),
                format!("the value contains a NUL byte (at byte {at})"),
            ));
        }
    }
    Ok(())
}

/// The working directory: an absolute path without NUL that the image does not hold as a
/// file (a missing one is created when the container starts, as runc does).
fn working_dir(
    config: &cri::ContainerConfig,
    image: &ContainerDefaults,
    layers: &[PathBuf],
) -> Result<()> {
    let (field, cwd, from_image) = if config.working_dir.is_empty() {
        ("the image's WorkingDir", image.working_dir.as_str(), true)
    } else {
        ("config.working_dir", config.working_dir.as_str(), false)
    };
    if cwd.is_empty() {
        return Ok(());
    }
    no_nul(field, cwd)?;
    if !cwd.starts_with('/') {
        return Err(Error::invalid(
            field,
            format!("{cwd:?} is not an absolute path"),
        ));
    }
    let Some((path, kind)) = non_directory_on_the_way(layers, Path::new(cwd)) else {
        return Ok(());
    };
    let reason = format!(
        "{cwd:?} cannot be the working directory: /{} is a {kind} in the image",
        path.display()
    );
    if from_image {
        Err(Error::FailedPrecondition(format!("{field}: {reason}")))
    } else {
        Err(Error::invalid(field, reason))
    }
}

/// What an image path is, as the container will see it: from the topmost layer that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageEntry {
    Directory,
    Symlink,
    Other(&'static str),
}

/// The topmost layer's entry at `relative`; None when no layer has it or the topmost one
/// deletes it (an overlay whiteout, a 0:0 character device).
fn image_entry(layers: &[PathBuf], relative: &Path) -> Option<ImageEntry> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = layers
        .iter()
        .rev()
        .find_map(|layer| std::fs::symlink_metadata(layer.join(relative)).ok())?;
    let kind = meta.file_type();
    Some(if kind.is_dir() {
        ImageEntry::Directory
    } else if kind.is_symlink() {
        ImageEntry::Symlink
    } else if kind.is_char_device() && meta.rdev() == 0 {
        return None;
    } else if kind.is_file() {
        ImageEntry::Other("file")
    } else {
        ImageEntry::Other("special file")
    })
}

/// The first component of `path` (absolute, in the image) that the image holds as something
/// other than a directory, with what it is. Symlinks are resolved only when the container
/// starts, so a path through one, or through `..`, is not judged here.
fn non_directory_on_the_way(layers: &[PathBuf], path: &Path) -> Option<(PathBuf, &'static str)> {
    let mut prefix = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => prefix.push(part),
            Component::ParentDir => return None,
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        }
        match image_entry(layers, &prefix)? {
            ImageEntry::Directory => {}
            ImageEntry::Symlink => return None,
            ImageEntry::Other(kind) => return Some((prefix, kind)),
        }
    }
    None
}

/// A volume: an absolute container path, both paths without NUL, a known propagation.
fn volume(field: &str, mount: &cri::Mount) -> Result<()> {
    let container_path = format!("{field}.container_path");
    no_nul(&container_path, &mount.container_path)?;
    if !mount.container_path.starts_with('/') {
        return Err(Error::invalid(
            container_path,
            format!("{:?} is not an absolute path", mount.container_path),
        ));
    }
    absolute_path(&format!("{field}.host_path"), &mount.host_path)?;
    if cri::MountPropagation::try_from(mount.propagation).is_err() {
        return Err(Error::invalid(
            format!("{field}.propagation"),
            format!("{} is not a mount propagation", mount.propagation),
        ));
    }
    Ok(())
}

fn device_paths(field: &str, device: &cri::Device) -> Result<()> {
    let container_path = format!("{field}.container_path");
    no_nul(&container_path, &device.container_path)?;
    if !device.container_path.starts_with('/') {
        return Err(Error::invalid(
            container_path,
            format!("{:?} is not an absolute path", device.container_path),
        ));
    }
    absolute_path(&format!("{field}.host_path"), &device.host_path)
}

/// A host path: absolute (a relative one would be resolved against the daemon's own working
/// directory) and without NUL.
fn absolute_path(field: &str, path: &str) -> Result<()> {
    no_nul(field, path)?;
    if !path.starts_with('/') {
        return Err(Error::invalid(
            field,
            format!("{path:?} is not an absolute path"),
        ));
    }
    Ok(())
}

/// The log file: a relative file path that stays inside the pod's (absolute) log directory,
/// as kubelet sends it (`<name>/<restart>.log`), and that is not a directory already.
pub fn log_path(log_directory: &str, log_path: &str) -> Result<()> {
    let field = "config.log_path";
    if log_path.is_empty() {
        return Ok(());
    }
    no_nul(field, log_path)?;
    if log_path.starts_with('/') {
        return Err(Error::invalid(
            field,
            format!("{log_path:?} is absolute; it must be relative to the pod's log_directory"),
        ));
    }
    let components: Vec<Component> = Path::new(log_path).components().collect();
    if components.contains(&Component::ParentDir) {
        return Err(Error::invalid(
            field,
            format!("{log_path:?} contains \"..\"; it must stay inside the pod's log_directory"),
        ));
    }
    if log_path.ends_with('/')
        || !matches!(components.last(), Some(Component::Normal(_)))
        || log_path.ends_with("/.")
    {
        return Err(Error::invalid(
            field,
            format!("{log_path:?} is not a file path inside the pod's log_directory"),
        ));
    }
    if log_directory.is_empty() {
        return Ok(());
    }
    if !log_directory.starts_with('/') {
        return Err(Error::invalid(
            "sandbox log_directory",
            format!("{log_directory:?} is not an absolute path"),
        ));
    }
    if Path::new(log_directory).join(log_path).is_dir() {
        return Err(Error::invalid(
            field,
            format!("{log_path:?} is a directory in the pod's log_directory"),
        ));
    }
    Ok(())
}

fn linux_config(linux: &cri::LinuxContainerConfig) -> Result<()> {
    if let Some(r) = &linux.resources {
        resources("config.linux.resources", r)?;
    }
    let Some(security) = &linux.security_context else {
        return Ok(());
    };
    let field = "config.linux.security_context";
    if let Some(options) = &security.namespace_options {
        namespace_options(&format!("{field}.namespace_options"), options)?;
    }
    no_nul(
        &format!("{field}.run_as_username"),
        &security.run_as_username,
    )?;
    let ids = [
        (
            "run_as_user",
            security.run_as_user.as_ref().map(|v| v.value),
        ),
        (
            "run_as_group",
            security.run_as_group.as_ref().map(|v| v.value),
        ),
    ]
    .into_iter()
    .filter_map(|(name, id)| Some((name.to_string(), id?)))
    .chain(
        security
            .supplemental_groups
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("supplemental_groups[{i}]"), *g)),
    );
    for (name, id) in ids {
        user_or_group_id(&format!("{field}.{name}"), id)?;
    }
    for (list, paths) in [
        ("masked_paths", &security.masked_paths),
        ("readonly_paths", &security.readonly_paths),
    ] {
        for (i, path) in paths.iter().enumerate() {
            let field = format!("{field}.{list}[{i}]");
            no_nul(&field, path)?;
            if !path.starts_with('/') {
                return Err(Error::invalid(
                    field,
                    format!("{path:?} is not an absolute path"),
                ));
            }
        }
    }
    Ok(())
}

/// A uid or gid: 0 to 4294967294 ((uid_t)-1 means "unchanged" to the kernel).
fn user_or_group_id(field: &str, id: i64) -> Result<()> {
    if (0..i64::from(u32::MAX)).contains(&id) {
        return Ok(());
    }
    Err(Error::invalid(
        field,
        format!("{id} is outside 0-{}", u32::MAX - 1),
    ))
}

/// Resource limits as the cgroup files take them: CFS period 1000-1000000 µs, quota -1 or
/// 1000 µs to the kernel's bound, shares up to 262144, no negative memory, swap -1 (unlimited)
/// or more, oom_score_adj -1000 to 1000, lists of CPUs and memory nodes this host has online,
/// huge page sizes it supports (`2MB`), and `unified` keys that are cgroup interface file
/// names. Zero leaves a value as it is.
pub fn resources(field: &str, r: &cri::LinuxContainerResources) -> Result<()> {
    let bad = |name: &str, reason: String| Err(Error::invalid(format!("{field}.{name}"), reason));
    if r.cpu_period != 0 && !CPU_PERIOD_RANGE.contains(&r.cpu_period) {
        return bad(
            "cpu_period",
            format!(
                "{} µs is outside {}-{} µs",
                r.cpu_period,
                CPU_PERIOD_RANGE.start(),
                CPU_PERIOD_RANGE.end()
            ),
        );
    }
    if r.cpu_quota != 0
        && r.cpu_quota != -1
        && !(CPU_QUOTA_MIN..=CPU_QUOTA_MAX).contains(&r.cpu_quota)
    {
        return bad(
            "cpu_quota",
            format!(
                "{} µs: -1 (none) or {CPU_QUOTA_MIN}-{CPU_QUOTA_MAX} µs",
                r.cpu_quota
            ),
        );
    }
    if !(0..=CPU_SHARES_MAX).contains(&r.cpu_shares) {
        return bad(
            "cpu_shares",
            format!("{} is outside 0-{CPU_SHARES_MAX}", r.cpu_shares),
        );
    }
    if r.memory_limit_in_bytes < 0 {
        return bad(
            "memory_limit_in_bytes",
            format!("{} is negative", r.memory_limit_in_bytes),
        );
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return bad(
            "memory_swap_limit_in_bytes",
            format!(
                "{} is neither -1 (unlimited) nor a size",
                r.memory_swap_limit_in_bytes
            ),
        );
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return bad(
            "oom_score_adj",
            format!("{} is outside -1000-1000", r.oom_score_adj),
        );
    }
    for (name, list, online) in [
        ("cpuset_cpus", &r.cpuset_cpus, ONLINE_CPUS),
        ("cpuset_mems", &r.cpuset_mems, ONLINE_NODES),
    ] {
        if list.is_empty() {
            continue;
        }
        let Some(wanted) = number_list(list) else {
            return bad(name, format!("{list:?} is not a list like \"0-3,5\""));
        };
        let online_list = std::fs::read_to_string(online).unwrap_or_else(|_| "0".into());
        if let Some(missing) = first_missing(&wanted, online_list.trim()) {
            return bad(
                name,
                format!(
                    "{list:?} names {missing}, which this host does not have online ({})",
                    online_list.trim()
                ),
            );
        }
    }
    for (i, h) in r.hugepage_limits.iter().enumerate() {
        let field = format!("hugepage_limits[{i}].page_size");
        let Some(kib) = hugepage_kib(&h.page_size) else {
            return bad(
                &field,
                format!(
                    "{:?} is not a page size like \"2MB\" or \"1GB\"",
                    h.page_size
                ),
            );
        };
        if !Path::new(HUGEPAGES_DIR)
            .join(format!("hugepages-{kib}kB"))
            .is_dir()
        {
            return bad(
                &field,
                format!("this host has no {} huge pages", h.page_size),
            );
        }
    }
    unified(&format!("{field}.unified"), &r.unified)
}

/// `unified` keys are cgroup v2 interface file names (`memory.high`), values without NUL.
fn unified(field: &str, map: &HashMap<String, String>) -> Result<()> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        let interface_file = !key.is_empty()
            && !key.starts_with('.')
            && key.contains('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if !interface_file {
            return Err(Error::invalid(
                format!("{field}[{key:?}]"),
                "not a cgroup v2 interface file name",
            ));
        }
        no_nul(&format!("{field}[{key:?}]"), &map[key])?;
    }
    Ok(())
}

/// A kernel list (comma-separated numbers and `a-b` ranges with a <= b) as its ranges.
fn number_list(list: &str) -> Option<Vec<(u32, u32)>> {
    let number = |s: &str| {
        (!s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => Some((number(a)?, number(b)?)).filter(|(a, b)| a <= b),
            None => number(part).map(|n| (n, n)),
        })
        .collect()
}

/// The first number of `wanted` that the kernel list `online` lacks.
fn first_missing(wanted: &[(u32, u32)], online: &str) -> Option<u32> {
    let online = number_list(online).unwrap_or_default();
    wanted
        .iter()
        .flat_map(|&(a, b)| a..=b)
        .find(|n| !online.iter().any(|&(lo, hi)| (lo..=hi).contains(n)))
}

/// `2MB`, `1GB`, `64KB` (what kubelet and the hugetlb files name page sizes by) in KiB.
fn hugepage_kib(size: &str) -> Option<u64> {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match &size[digits.len()..] {
        "KB" => 0,
        "MB" => 10,
        "GB" => 20,
        "TB" => 30,
        "PB" => 40,
        _ => return None,
    };
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_shl(shift)
}

/// The command line and environment the container will exec, against the kernel's limits: no
/// string over MAX_ARG_STRLEN, and strings plus pointers within ARG_MAX (else E2BIG).
fn exec_size(config: &cri::ContainerConfig, image: &ContainerDefaults) -> Result<()> {
    string_lengths("config.command", &config.command)?;
    string_lengths("config.args", &config.args)?;
    for kv in &config.envs {
        let len = kv.key.len() + 1 + kv.value.len();
        if len + 1 > max_arg_string() {
            return Err(too_long(&format!("config.envs[{:?}]", kv.key), len));
        }
    }
    let argv = spec::command_line(image, &config.command, &config.args);
    let pairs: Vec<(String, String)> = config
        .envs
        .iter()
        .map(|kv| {
            let value = String::from_utf8_lossy(&kv.value).into_owned();
            (kv.key.clone(), value)
        })
        .collect();
    let env = spec::environment(image, &pairs);
    within_arg_max("config.args and config.envs", argv.iter().chain(env.iter()))
}

/// An ExecSync or Exec command: not empty, no NUL, within the kernel's exec limits (the
/// container's environment comes on top, so those may still be exceeded together).
pub fn exec_command(field: &str, cmd: &[String]) -> Result<()> {
    if cmd.is_empty() {
        return Err(Error::invalid(field, "empty: no command given"));
    }
    strings(field, cmd)?;
    string_lengths(field, cmd)?;
    within_arg_max(field, cmd.iter())
}

/// ExecSync's program in a running container, looked up as its exec will look it up (a path
/// as it is, a bare name in the container's PATH) under the container's root as the daemon
/// sees it (`/proc/<pid>/root`): a program that is not there, or not executable, is the
/// caller's mistake. When the container is not running the lifecycle reports that instead.
pub fn exec_program_in(record: &ContainerRecord, bundle: &Path, cmd: &[String]) -> Result<()> {
    let Some(program) = cmd.first() else {
        return Ok(());
    };
    let Some(process) = record
        .process
        .filter(|p| record.state == ContainerState::Running && p.is_alive())
    else {
        return Ok(());
    };
    let Ok(spec) = oci_spec::runtime::Spec::load(bundle.join("config.json")) else {
        return Ok(());
    };
    let Some(spec_process) = spec.process() else {
        return Ok(());
    };
    let root = PathBuf::from(format!("/proc/{}/root", process.pid));
    let env = spec_process.env().clone().unwrap_or_default();
    exec_program(&root, spec_process.cwd(), &env, program)
}

/// `program` looked up under `root` as execvp would in the container (see
/// `linux::security`), symlinks resolved inside `root`.
fn exec_program(root: &Path, cwd: &Path, env: &[String], program: &str) -> Result<()> {
    let field = "cmd[0]";
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![cwd.join(program)]
    } else {
        let path_var = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(crate::linux::security::DEFAULT_PATH);
        path_var
            .split(':')
            .map(|dir| {
                cwd.join(if dir.is_empty() { "." } else { dir })
                    .join(program)
            })
            .collect()
    };
    let mut found_not_executable = None;
    for candidate in &candidates {
        let Ok(resolved) = crate::linux::path::secure_join(root, candidate) else {
            continue;
        };
        match std::fs::metadata(&resolved) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                return Ok(());
            }
            Ok(_) => found_not_executable = found_not_executable.or(Some(candidate)),
            Err(_) => {}
        }
    }
    let reason = match found_not_executable {
        Some(path) => format!("{program:?}: {} is not an executable file", path.display()),
        None if program.contains('/') => format!("{program:?}: no such file in the container"),
        None => format!("{program:?}: executable file not found in the container's $PATH"),
    };
    Err(Error::invalid(field, reason))
}

/// The longest string execve takes, with its NUL: 32 pages.
fn max_arg_string() -> usize {
    MAX_ARG_PAGES * sysconf(libc::_SC_PAGESIZE).unwrap_or(4096)
}

fn too_long(field: &str, len: usize) -> Error {
    Error::invalid(
        field,
        format!(
            "{len} bytes; the kernel takes at most {} in one argument or variable \
             (MAX_ARG_STRLEN)",
            max_arg_string() - 1
        ),
    )
}

fn string_lengths(field: &str, values: &[String]) -> Result<()> {
    match values.iter().position(|v| v.len() + 1 > max_arg_string()) {
        Some(i) => Err(too_long(&format!("{field}[{i}]"), values[i].len())),
        None => Ok(()),
    }
}

/// Strings with their NULs and the pointers to them, as execve counts them, within ARG_MAX.
fn within_arg_max<'a>(field: &str, strings: impl Iterator<Item = &'a String>) -> Result<()> {
    let total: usize = strings
        .map(|s| s.len() + 1 + std::mem::size_of::<usize>())
        .sum();
    let limit = sysconf(libc::_SC_ARG_MAX).unwrap_or(128 * 1024);
    if total > limit {
        return Err(Error::invalid(
            field,
            format!(
                "the command line and environment take {total} bytes; the kernel takes at most \
                 {limit} (ARG_MAX), so exec would fail with E2BIG"
            ),
        ));
    }
    Ok(())
}

/// A positive sysconf value.
fn sysconf(name: libc::c_int) -> Option<usize> {
    // SAFETY: sysconf takes an integer name and no pointers; an unknown name returns -1.
    let value = unsafe { libc::sysconf(name) };
    usize::try_from(value).ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            command: vec!["sh".into()],
            log_path: "app/0.log".into(),
            ..Default::default()
        }
    }

    fn pod() -> SandboxRecord {
        let config = cri::PodSandboxConfig {
            log_directory: "/var/log/pods/ns_pod_uid".into(),
            ..Default::default()
        };
        SandboxRecord::new("pod".into(), config, String::new(), 0)
    }

    fn check(config: &cri::ContainerConfig) -> Result<()> {
        create_request(config, &pod(), &ContainerDefaults::default(), &[])
    }

    fn field_of(config: &cri::ContainerConfig) -> String {
        match check(config) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn a_good_config_passes() {
        check(&config()).unwrap();
    }

    #[test]
    fn nul_bytes_are_named() {
        let mut c = config();
        c.args = vec!["ok".into(), "a\0b".into()];
        assert_eq!(field_of(&c), "config.args[1]");
        let mut c = config();
        c.command = vec!["\0".into()];
        assert_eq!(field_of(&c), "config.command[0]");
        let mut c = config();
        c.metadata.as_mut().unwrap().name = "x\0".into();
        assert_eq!(field_of(&c), "config.metadata.name");
        let mut c = config();
        c.working_dir = "/w\0rk".into();
        assert_eq!(field_of(&c), "config.working_dir");
        let mut c = config();
        c.envs = vec![cri::KeyValue {
            key: "A".into(),
            value: b"1\x002".to_vec(),
        }];
        assert_eq!(field_of(&c), "config.envs[\"A\"]");
        let mut c = config();
        c.envs = vec![cri::KeyValue {
            key: "A\0".into(),
            value: b"1".to_vec(),
        }];
        assert_eq!(field_of(&c), "config.envs[0].key");
        let mut c = config();
        c.mounts = vec![cri::Mount {
            container_path: "/data\0".into(),
            host_path: "/tmp".into(),
            ..Default::default()
        }];
        assert_eq!(field_of(&c), "config.mounts[0].container_path");
        let mut c = config();
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/tmp\0".into(),
            ..Default::default()
        }];
        assert_eq!(field_of(&c), "config.mounts[0].host_path");
        let mut c = config();
        c.labels = HashMap::from([("k".into(), "v\0".into())]);
        assert_eq!(field_of(&c), "config.labels[\"k\"]");
        let mut c = config();
        c.annotations = HashMap::from([("k".into(), "v\0".into())]);
        assert_eq!(field_of(&c), "config.annotations[\"k\"]");
    }

    #[test]
    fn env_names_and_mount_paths() {
        let mut c = config();
        c.envs = vec![cri::KeyValue {
            key: "A=B".into(),
            value: vec![],
        }];
        assert_eq!(field_of(&c), "config.envs[0].key");
        let mut c = config();
        c.mounts = vec![cri::Mount {
            container_path: "data".into(),
            host_path: "/tmp".into(),
            ..Default::default()
        }];
        assert_eq!(field_of(&c), "config.mounts[0].container_path");
        let mut c = config();
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/tmp".into(),
            propagation: 17,
            ..Default::default()
        }];
        assert_eq!(field_of(&c), "config.mounts[0].propagation");
        let mut c = config();
        c.devices = vec![cri::Device {
            container_path: "dev/x".into(),
            host_path: "/dev/null".into(),
            permissions: "rwm".into(),
        }];
        assert_eq!(field_of(&c), "config.devices[0].container_path");
    }

    #[test]
    fn log_paths_stay_inside_the_log_directory() {
        for good in ["app/0.log", "0.log", "a/b/c.log", "./x.log"] {
            log_path("/var/log/pods/p", good).unwrap();
        }
        log_path("", "").unwrap();
        for bad in [
            "/etc/cron.d/x",
            "../../../tmp/x.log",
            "app/../../x.log",
            ".",
            "./",
            "app/",
            "app/.",
            "x\0.log",
        ] {
            assert!(
                matches!(
                    log_path("/var/log/pods/p", bad),
                    Err(Error::InvalidArgument { field, .. }) if field == "config.log_path"
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            log_path("var/log/pods", "0.log"),
            Err(Error::InvalidArgument { field, .. }) if field.contains("log_directory")
        ));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        let logs = dir.path().to_string_lossy().into_owned();
        assert!(log_path(&logs, "app").is_err());
        log_path(&logs, "app/0.log").unwrap();
    }

    #[test]
    fn a_working_dir_that_is_a_file_in_the_image_is_refused() {
        let layers = tempfile::tempdir().unwrap();
        let lower = layers.path().join("1");
        let upper = layers.path().join("2");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::create_dir_all(lower.join("app")).unwrap();
        std::fs::create_dir_all(upper.join("srv")).unwrap();
        // The upper layer turns /app into a file, and deletes /gone.
        std::fs::write(upper.join("app"), "").unwrap();
        std::fs::create_dir_all(lower.join("gone")).unwrap();
        nix::sys::stat::mknod(
            &upper.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .ok();
        let chain = vec![lower, upper];
        let with_cwd = |cwd: &str| cri::ContainerConfig {
            working_dir: cwd.into(),
            ..config()
        };
        let image = ContainerDefaults::default();
        for ok in [
            "/",
            "/srv",
            "/srv/new/deeper",
            "/missing",
            "/etc",
            "/gone/x",
        ] {
            create_request(&with_cwd(ok), &pod(), &image, &chain).unwrap();
        }
        for bad in ["/etc/passwd", "/etc/passwd/x", "/app", "/app/sub"] {
            let err = create_request(&with_cwd(bad), &pod(), &image, &chain).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument { field, reason }
                    if field == "config.working_dir" && reason.contains("file")),
                "{bad}: {err:?}"
            );
        }
        assert!(matches!(
            create_request(&with_cwd("relative"), &pod(), &image, &chain),
            Err(Error::InvalidArgument { .. })
        ));
        let image = ContainerDefaults {
            working_dir: "/etc/passwd".into(),
            ..Default::default()
        };
        assert!(matches!(
            create_request(&config(), &pod(), &image, &chain),
            Err(Error::FailedPrecondition(m)) if m.contains("WorkingDir")
        ));
    }

    #[test]
    fn args_and_env_within_the_kernels_limits() {
        let max_string = max_arg_string();
        let mut c = config();
        c.args = vec!["a".repeat(max_string)];
        assert_eq!(field_of(&c), "config.args[0]");
        let mut c = config();
        c.args = vec!["a".repeat(max_string - 1)];
        check(&c).unwrap();
        let mut c = config();
        c.envs = vec![cri::KeyValue {
            key: "BIG".into(),
            value: vec![b'x'; max_string],
        }];
        assert_eq!(field_of(&c), "config.envs[\"BIG\"]");
        let arg_max = sysconf(libc::_SC_ARG_MAX).unwrap();
        let mut c = config();
        c.args = vec!["a".repeat(max_string / 2); arg_max / (max_string / 2) + 1];
        assert_eq!(field_of(&c), "config.args and config.envs");
        let mut c = config();
        c.envs = (0..arg_max / 1000 + 1)
            .map(|i| cri::KeyValue {
                key: format!("V{i}"),
                value: vec![b'x'; 1000],
            })
            .collect();
        assert_eq!(field_of(&c), "config.args and config.envs");
    }

    #[test]
    fn exec_commands() {
        exec_command("cmd", &["sh".into(), "-c".into(), "true".into()]).unwrap();
        for cmd in [
            vec![],
            vec!["a\0".to_string()],
            vec!["x".repeat(max_arg_string())],
            vec!["y".repeat(max_arg_string() / 2); 64],
        ] {
            assert!(
                matches!(exec_command("cmd", &cmd), Err(Error::InvalidArgument { field, .. }) if field.starts_with("cmd")),
                "{:?}",
                cmd.iter().map(|s| s.len()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn exec_programs_are_looked_up_in_the_containers_root() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("bin/busybox"), "").unwrap();
        std::fs::set_permissions(
            r.join("bin/busybox"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(r.join("bin/data"), "").unwrap();
        symlink("busybox", r.join("bin/sh")).unwrap();
        // An absolute link resolves inside the root, never to the host's file.
        symlink("/bin/busybox", r.join("usr/bin/env")).unwrap();
        symlink("/etc/hostname", r.join("bin/escape")).unwrap();
        let env = vec!["PATH=/usr/bin:/bin".to_string()];
        let cwd = Path::new("/");
        for ok in ["sh", "env", "/bin/busybox", "../bin/sh", "./bin/sh"] {
            exec_program(r, cwd, &env, ok).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for bad in ["nope", "data", "/bin/data", "/nope/x", "escape"] {
            assert!(
                matches!(exec_program(r, cwd, &env, bad),
                    Err(Error::InvalidArgument { field, .. }) if field == "cmd[0]"),
                "{bad}"
            );
        }
        // Without PATH, the default one.
        exec_program(r, cwd, &[], "sh").unwrap();
    }

    #[test]
    fn host_paths_are_absolute() {
        let mut c = config();
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "../../etc".into(),
            ..Default::default()
        }];
        assert_eq!(field_of(&c), "config.mounts[0].host_path");
        let mut c = config();
        c.devices = vec![cri::Device {
            container_path: "/dev/x".into(),
            host_path: "dev/null".into(),
            permissions: "rwm".into(),
        }];
        assert_eq!(field_of(&c), "config.devices[0].host_path");
    }

    #[test]
    fn resource_values_the_kernel_would_refuse() {
        let with = |r: cri::LinuxContainerResources| resources("linux", &r);
        let field = |r: cri::LinuxContainerResources| match with(r) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        with(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 2,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: -1,
            oom_score_adj: -997,
            cpuset_cpus: "0".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![],
            unified: HashMap::from([("memory.high".into(), "max".into())]),
        })
        .unwrap();
        with(cri::LinuxContainerResources::default()).unwrap();
        let base = cri::LinuxContainerResources::default;
        for (r, name) in [
            (
                cri::LinuxContainerResources {
                    cpu_period: -1,
                    ..base()
                },
                "linux.cpu_period",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_period: i64::MAX,
                    ..base()
                },
                "linux.cpu_period",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_quota: -7,
                    ..base()
                },
                "linux.cpu_quota",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_shares: -2,
                    ..base()
                },
                "linux.cpu_shares",
            ),
            (
                cri::LinuxContainerResources {
                    memory_limit_in_bytes: i64::MIN,
                    ..base()
                },
                "linux.memory_limit_in_bytes",
            ),
            (
                cri::LinuxContainerResources {
                    oom_score_adj: 1001,
                    ..base()
                },
                "linux.oom_score_adj",
            ),
            (
                cri::LinuxContainerResources {
                    cpuset_cpus: "3-1".into(),
                    ..base()
                },
                "linux.cpuset_cpus",
            ),
            (
                cri::LinuxContainerResources {
                    cpuset_mems: "zero".into(),
                    ..base()
                },
                "linux.cpuset_mems",
            ),
            (
                cri::LinuxContainerResources {
                    cpuset_cpus: "0-65535".into(),
                    ..base()
                },
                "linux.cpuset_cpus",
            ),
            (
                cri::LinuxContainerResources {
                    cpu_quota: i64::MAX,
                    ..base()
                },
                "linux.cpu_quota",
            ),
            (
                cri::LinuxContainerResources {
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "3KB".into(),
                        limit: 1,
                    }],
                    ..base()
                },
                "linux.hugepage_limits[0].page_size",
            ),
            (
                cri::LinuxContainerResources {
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "../../x".into(),
                        limit: 1,
                    }],
                    ..base()
                },
                "linux.hugepage_limits[0].page_size",
            ),
            (
                cri::LinuxContainerResources {
                    unified: HashMap::from([("../cgroup.procs".into(), "1".into())]),
                    ..base()
                },
                "linux.unified[\"../cgroup.procs\"]",
            ),
        ] {
            assert_eq!(field(r), name);
        }
    }

    #[test]
    fn kernel_lists_and_page_sizes() {
        assert_eq!(number_list("0-3,5"), Some(vec![(0, 3), (5, 5)]));
        for bad in ["", "3-1", "a", "1,", "-1", "0-", "123456"] {
            assert_eq!(number_list(bad), None, "{bad:?}");
        }
        assert_eq!(first_missing(&[(0, 1)], "0-3"), None);
        assert_eq!(first_missing(&[(2, 5)], "0-3"), Some(4));
        assert_eq!(first_missing(&[(0, 0)], "0,2-3"), None);
        assert_eq!(hugepage_kib("2MB"), Some(2048));
        assert_eq!(hugepage_kib("1GB"), Some(1 << 20));
        assert_eq!(hugepage_kib("64KB"), Some(64));
        for bad in ["MB", "2mb", "2 MB", "../2MB", "2MiB", "9999999GB"] {
            assert_eq!(hugepage_kib(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn security_context_paths_and_modes() {
        let mut c = config();
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                masked_paths: vec!["proc/kcore".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            field_of(&c),
            "config.linux.security_context.masked_paths[0]"
        );
        let mut c = config();
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: -3,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            field_of(&c),
            "config.linux.security_context.namespace_options.pid"
        );
        for (security, name) in [
            (
                cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: -1 }),
                    ..Default::default()
                },
                "run_as_user",
            ),
            (
                cri::LinuxContainerSecurityContext {
                    run_as_group: Some(cri::Int64Value {
                        value: u32::MAX as i64,
                    }),
                    ..Default::default()
                },
                "run_as_group",
            ),
            (
                cri::LinuxContainerSecurityContext {
                    supplemental_groups: vec![5, u32::MAX as i64],
                    ..Default::default()
                },
                "supplemental_groups[1]",
            ),
        ] {
            let mut c = config();
            c.linux = Some(cri::LinuxContainerConfig {
                security_context: Some(security),
                ..Default::default()
            });
            assert_eq!(
                field_of(&c),
                format!("config.linux.security_context.{name}")
            );
        }
    }
}
