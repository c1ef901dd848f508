//! A container's cgroup: created with its limits and device rules before it starts, joined by
//! its process, emptied and removed with the container.

use std::path::PathBuf;

use crate::cri;
use cgroups_rs::fs::{Cgroup, hierarchies};
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::{CGROUP_ROOT, CgroupVersion, resources};

/// Creates the cgroup with the container's limits; on v1 the devices controller gets the
/// spec's rules (deny all, then the allowed devices).
pub fn create(
    version: CgroupVersion,
    path: &str,
    limits: Option<&cri::LinuxContainerResources>,
    device_rules: &[LinuxDeviceCgroup],
) -> Result<(), String> {
    Cgroup::new(hierarchies::auto(), path).map_err(|e| format!("creating cgroup {path}: {e}"))?;
    if let Some(limits) = limits {
        write_limits(version, path, limits)?;
    }
    if version == CgroupVersion::V1 {
        let dir = PathBuf::from(CGROUP_ROOT).join("devices").join(path);
        if dir.exists() {
            for rule in device_rules {
                let file = if rule.allow() {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                std::fs::write(dir.join(file), device_rule_line(rule))
                    .map_err(|e| format!("{file} of cgroup {path}: {e}"))?;
            }
        }
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
) -> Result<(), String> {
    if !Cgroup::load(hierarchies::auto(), path).exists() {
        return Err(format!("cgroup {path} does not exist"));
    }
    let result = write_limits(version, path, new);
    if result.is_err()
        && let Some(old) = old
    {
        let _ = write_limits(version, path, old);
    }
    result
}

/// Writes the CRI limits to the cgroup's files, each error with the kernel's reason (zero
/// fields are left as they are, as the CRI means them).
pub fn write_limits(
    version: CgroupVersion,
    path: &str,
    r: &cri::LinuxContainerResources,
) -> Result<(), String> {
    let root = PathBuf::from(CGROUP_ROOT);
    let write = |controller: &str, file: &str, value: String| -> Result<(), String> {
        let dir = match version {
            CgroupVersion::V1 => root.join(controller).join(path),
            CgroupVersion::V2 => root.join(path),
        };
        std::fs::write(dir.join(file), &value)
            .map_err(|e| format!("writing {value} to {file}: {e}"))
    };
    match version {
        CgroupVersion::V1 => {
            if r.cpu_shares > 0 {
                write("cpu", "cpu.shares", r.cpu_shares.to_string())?;
            }
            if r.cpu_period > 0 {
                write("cpu", "cpu.cfs_period_us", r.cpu_period.to_string())?;
            }
            if r.cpu_quota != 0 {
                write("cpu", "cpu.cfs_quota_us", r.cpu_quota.to_string())?;
            }
            if !r.cpuset_cpus.is_empty() {
                write("cpuset", "cpuset.cpus", r.cpuset_cpus.clone())?;
            }
            if !r.cpuset_mems.is_empty() {
                write("cpuset", "cpuset.mems", r.cpuset_mems.clone())?;
            }
            if r.memory_limit_in_bytes > 0 {
                let memory = r.memory_limit_in_bytes.to_string();
                let swap = (r.memory_swap_limit_in_bytes > 0)
                    .then(|| r.memory_swap_limit_in_bytes.to_string());
                // memsw must stay >= the memory limit: which goes first depends on the
                // direction of the change.
                if write("memory", "memory.limit_in_bytes", memory.clone()).is_err()
                    && let Some(swap) = &swap
                {
                    write("memory", "memory.memsw.limit_in_bytes", swap.clone())?;
                }
                write("memory", "memory.limit_in_bytes", memory)?;
                if let Some(swap) = swap {
                    write("memory", "memory.memsw.limit_in_bytes", swap)?;
                }
            }
            for h in &r.hugepage_limits {
                write(
                    "hugetlb",
                    &format!("hugetlb.{}.limit_in_bytes", h.page_size),
                    h.limit.to_string(),
                )?;
            }
        }
        CgroupVersion::V2 => {
            if r.cpu_shares > 0 {
                let weight = resources::shares_to_weight(r.cpu_shares as u64);
                write("", "cpu.weight", weight.to_string())?;
            }
            if r.cpu_quota != 0 || r.cpu_period > 0 {
                let quota = if r.cpu_quota > 0 {
                    r.cpu_quota.to_string()
                } else {
                    "max".to_string()
                };
                let period = if r.cpu_period > 0 {
                    r.cpu_period
                } else {
                    100_000
                };
                write("", "cpu.max", format!("{quota} {period}"))?;
            }
            if !r.cpuset_cpus.is_empty() {
                write("", "cpuset.cpus", r.cpuset_cpus.clone())?;
            }
            if !r.cpuset_mems.is_empty() {
                write("", "cpuset.mems", r.cpuset_mems.clone())?;
            }
            if r.memory_limit_in_bytes > 0 {
                write("", "memory.max", r.memory_limit_in_bytes.to_string())?;
                if r.memory_swap_limit_in_bytes > 0 {
                    let swap = r
                        .memory_swap_limit_in_bytes
                        .saturating_sub(r.memory_limit_in_bytes);
                    write("", "memory.swap.max", swap.to_string())?;
                }
            }
            for h in &r.hugepage_limits {
                write(
                    "",
                    &format!("hugetlb.{}.max", h.page_size),
                    h.limit.to_string(),
                )?;
            }
            for (key, value) in &r.unified {
                write_v2(path, key, value)?;
            }
        }
    }
    Ok(())
}

/// A `unified` key written as is; only cgroup interface files are accepted.
fn write_v2(path: &str, key: &str, value: &str) -> Result<(), String> {
    if key.contains('/') || key.starts_with('.') || !key.contains('.') {
        return Err(format!("{key:?} is not a cgroup v2 interface file"));
    }
    let file = PathBuf::from(CGROUP_ROOT).join(path).join(key);
    std::fs::write(&file, value).map_err(|e| format!("writing {value:?} to {key}: {e}"))
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
        CgroupVersion::V1 => super::sandbox::hierarchy_mounts()
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
        assert!(write_v2("x", "../etc", "1").is_err());
    }
}
