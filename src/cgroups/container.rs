//! A container's cgroup: created with its limits and device rules before it starts, joined by
//! its process, emptied and removed with the container.

use std::path::PathBuf;

use crate::cri;
use cgroups_rs::fs::{Cgroup, hierarchies};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::controllers::CgroupFs;
use super::{CGROUP_ROOT, CgroupError, CgroupVersion, resources};

/// Creates the cgroup with the container's limits and the spec's device rules (deny all, then
/// the allowed devices): on v1 in the devices controller, on v2 as an eBPF program attached
/// to the cgroup.
pub fn create(
    version: CgroupVersion,
    path: &str,
    limits: Option<&cri::LinuxContainerResources>,
    device_rules: &[LinuxDeviceCgroup],
) -> Result<(), CgroupError> {
    Cgroup::new(hierarchies::auto(), path).map_err(|e| CgroupError::Create {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    apply(version, path, limits, device_rules)
}

/// Writes the container's limits and device rules to its existing cgroup (made by us, or a
/// systemd scope delegated to us).
pub fn apply(
    version: CgroupVersion,
    path: &str,
    limits: Option<&cri::LinuxContainerResources>,
    device_rules: &[LinuxDeviceCgroup],
) -> Result<(), CgroupError> {
    let fs = CgroupFs::host(version);
    if let Some(limits) = limits {
        resources::write_limits(&fs, path, limits)?;
    }
    match version {
        CgroupVersion::V1 => write_device_rules(&fs, path, device_rules)?,
        CgroupVersion::V2 => super::devices::attach(&fs.dir("", path), device_rules)
            .map_err(|e| CgroupError::DeviceFilter(path.to_string(), e))?,
    }
    Ok(())
}

/// The v1 devices controller's rules, in order; nothing when the hierarchy is missing.
fn write_device_rules(
    fs: &CgroupFs,
    path: &str,
    device_rules: &[LinuxDeviceCgroup],
) -> Result<(), CgroupError> {
    let dir = fs.dir("devices", path);
    if !dir.exists() {
        return Ok(());
    }
    for rule in device_rules {
        let file = if rule.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        std::fs::write(dir.join(file), device_rule_line(rule)).map_err(|source| {
            CgroupError::DeviceRule {
                file,
                path: path.to_string(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Applies new limits to an existing container cgroup. On a refusal (the kernel's reason is
/// returned) the previous limits are applied again.
pub fn update(
    version: CgroupVersion,
    path: &str,
    new: &cri::LinuxContainerResources,
    old: Option<&cri::LinuxContainerResources>,
) -> Result<(), CgroupError> {
    if !Cgroup::load(hierarchies::auto(), path).exists() {
        return Err(CgroupError::Missing(path.to_string()));
    }
    let fs = CgroupFs::host(version);
    let result = resources::write_limits(&fs, path, new);
    if result.is_err()
        && let Some(old) = old
        && let Err(e) = resources::write_limits(&fs, path, old)
    {
        tracing::warn!(cgroup = path, error = %e, "the previous limits could not be restored");
    }
    result
}

/// `a *:* rwm`, `c 1:3 rwm`: the devices cgroup's rule syntax.
pub fn device_rule_line(rule: &LinuxDeviceCgroup) -> String {
    let typ = match rule.typ() {
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => "c",
        Some(LinuxDeviceType::B) => "b",
        Some(LinuxDeviceType::P) => "p",
        _ => "a",
    };
    let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
    format!(
        "{typ} {}:{} {}",
        num(rule.major()),
        num(rule.minor()),
        rule.access().clone().unwrap_or_else(|| "rwm".into())
    )
}

/// The cgroup.procs files a process writes to join `path` (one per v1 hierarchy that has it).
pub fn procs_files(version: CgroupVersion, path: &str) -> Vec<String> {
    let dirs: Vec<PathBuf> = match version {
        CgroupVersion::V2 => vec![PathBuf::from(CGROUP_ROOT).join(path)],
        CgroupVersion::V1 => super::hierarchy_mounts()
            .into_iter()
            .map(|m| m.join(path))
            .filter(|d| d.is_dir())
            .collect(),
    };
    dirs.into_iter()
        .map(|d| d.join("cgroup.procs").to_string_lossy().into_owned())
        .collect()
}

/// Where the kernel counts OOM kills of this cgroup.
pub fn oom_file(version: CgroupVersion, path: &str) -> String {
    let file = match version {
        CgroupVersion::V2 => PathBuf::from(CGROUP_ROOT).join(path).join("memory.events"),
        CgroupVersion::V1 => PathBuf::from(CGROUP_ROOT)
            .join("memory")
            .join(path)
            .join("memory.oom_control"),
    };
    file.to_string_lossy().into_owned()
}

/// Every process in the cgroup (any hierarchy), in the daemon's PID namespace.
pub fn pids(version: CgroupVersion, path: &str) -> Vec<i32> {
    let mut out: Vec<i32> = procs_files(version, path)
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_rules() {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(false);
        r.set_access(Some("rwm".into()));
        assert_eq!(device_rule_line(&r), "a *:* rwm");
        r.set_typ(Some(LinuxDeviceType::C));
        r.set_major(Some(136));
        assert_eq!(device_rule_line(&r), "c 136:* rwm");
    }

    #[test]
    fn v2_files() {
        assert_eq!(
            procs_files(CgroupVersion::V2, "kubepods/pod1/crius-abc"),
            vec!["/sys/fs/cgroup/kubepods/pod1/crius-abc/cgroup.procs".to_string()]
        );
        assert_eq!(
            oom_file(CgroupVersion::V2, "a/b"),
            "/sys/fs/cgroup/a/b/memory.events"
        );
        assert_eq!(
            oom_file(CgroupVersion::V1, "a/b"),
            "/sys/fs/cgroup/memory/a/b/memory.oom_control"
        );
    }
}
