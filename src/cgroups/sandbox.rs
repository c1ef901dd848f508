//! A pod's cgroups with the cgroupfs driver: the parent kubelet names (created, with the pod's
//! limits, when it does not exist yet — as under crictl), and the sandbox's own cgroup in it,
//! which holds the pod agent.

use std::path::{Component, Path};

use crate::cri;
use cgroups_rs::CgroupPid;
use cgroups_rs::fs::{Cgroup, hierarchies};

use super::controllers::CgroupFs;
use super::{CgroupError, CgroupVersion, resources};

/// Where pods go when kubelet names no parent (cgroupfs driver).
pub const DEFAULT_PARENT: &str = "crius";

/// The parent as a relative cgroup path. With the cgroupfs driver a plain path (no `..`, no
/// slice names); with the systemd driver a slice name, whose nested path this is.
pub fn parent_path(cgroup_parent: &str) -> Result<String, String> {
    if super::driver_kind() == super::DriverKind::Systemd {
        return super::systemd::slice_path(&super::parent_slice(cgroup_parent))
            .map_err(|e| format!("{e} (the cgroup driver is systemd)"));
    }
    let trimmed = cgroup_parent.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(DEFAULT_PARENT.to_string());
    }
    if trimmed.ends_with(".slice") {
        return Err(format!(
            "{cgroup_parent:?} is a systemd slice, and the cgroup driver is cgroupfs"
        ));
    }
    if Path::new(trimmed)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!("{cgroup_parent:?} is not a plain cgroup path"));
    }
    Ok(trimmed.to_string())
}

fn exists(path: &str) -> bool {
    Cgroup::load(hierarchies::auto(), path).exists()
}

/// The directories creating `path` would create, top-down.
pub fn missing_on_the_way(path: &str) -> Vec<String> {
    let mut current = String::new();
    let mut missing = Vec::new();
    for part in path.split('/') {
        if !current.is_empty() {
            current.push('/');
        }
        current.push_str(part);
        if !missing.is_empty() || !exists(&current) {
            missing.push(current.clone());
        }
    }
    missing
}

/// Creates the sandbox cgroup (and the parent when missing, with the pod's limits) and moves
/// `pids` into it. The caller learns which parent cgroups are new from `missing_on_the_way`,
/// called before, and owns them from then on. A parent that exists (kubelet made it) is
/// kubelet's to limit and is left as it is.
pub fn create(
    version: CgroupVersion,
    parent: &str,
    sandbox: &str,
    limits: Option<&cri::LinuxContainerResources>,
    pids: &[i32],
) -> Result<(), CgroupError> {
    let mut limited = false;
    if !exists(parent) {
        new_cgroup(parent)?;
        if let Some(limits) = limits {
            resources::write_limits(&CgroupFs::host(version), parent, limits)?;
            limited = true;
        }
    }
    // Under limits just set from the request, a refusal from here on is the request's doing.
    let blame = |e: CgroupError| {
        if limited {
            CgroupError::LimitsRefused(Box::new(e))
        } else {
            e
        }
    };
    let cg = new_cgroup(sandbox).map_err(blame)?;
    for pid in pids {
        cg.add_task_by_tgid(CgroupPid::from(*pid as u64))
            .map_err(|e| {
                blame(CgroupError::Join {
                    pid: *pid,
                    path: sandbox.to_string(),
                    reason: e.to_string(),
                })
            })?;
    }
    Ok(())
}

fn new_cgroup(path: &str) -> Result<Cgroup, CgroupError> {
    Cgroup::new(hierarchies::auto(), path).map_err(|e| CgroupError::Create {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// With the systemd driver: starts the parent slices nobody has started yet (`new_parents`,
/// cgroup paths top-down; the pod's limits on the last, the pod's own parent, as cgroupfs
/// does), then the pod agent's scope holding `pids`.
pub async fn create_units(
    systemd: &super::systemd::Systemd,
    new_parents: &[String],
    limits: Option<&cri::LinuxContainerResources>,
    slice: &str,
    scope: &str,
    pids: &[u32],
) -> Result<(), CgroupError> {
    for (i, path) in new_parents.iter().enumerate() {
        let unit = path.rsplit('/').next().unwrap_or(path);
        let leaf = i + 1 == new_parents.len();
        systemd
            .start_slice(unit, if leaf { limits } else { None })
            .await?;
    }
    systemd.start_scope(scope, slice, pids, None).await?;
    Ok(())
}

/// Whether `path` holds no cgroup and no process in any hierarchy.
pub fn is_unused(path: &str) -> bool {
    !super::hierarchy_mounts()
        .iter()
        .map(|m| m.join(path))
        .any(|dir| busy(&dir))
}

fn busy(dir: &std::path::Path) -> bool {
    let has_children = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().any(|e| e.path().is_dir()))
        .unwrap_or(false);
    let has_procs = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|p| !p.trim().is_empty())
        .unwrap_or(false);
    has_children || has_procs
}

/// Removes `path` if it holds no cgroup and no process in any hierarchy; false when it stays.
/// Checked first and without retries (cgroups-rs would sleep 150 ms on a busy parent).
pub fn remove_if_empty(path: &str) -> bool {
    if !is_unused(path) {
        return false;
    }
    super::hierarchy_mounts()
        .iter()
        .map(|m| m.join(path))
        .all(|d| std::fs::remove_dir(&d).is_ok() || !d.exists())
}

pub(super) fn hierarchy_mounts_in(mountinfo: &str, v2: bool) -> Vec<std::path::PathBuf> {
    let wanted = if v2 { "cgroup2" } else { "cgroup" };
    mountinfo
        .lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let fstype = tail.split_whitespace().next()?;
            let point = head.split_whitespace().nth(4)?;
            (fstype == wanted).then(|| std::path::PathBuf::from(point))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_of_v1_and_v2_hosts() {
        let v1 = "\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            hierarchy_mounts_in(v1, false),
            vec![
                std::path::PathBuf::from("/sys/fs/cgroup/cpu"),
                std::path::PathBuf::from("/sys/fs/cgroup/memory")
            ]
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            hierarchy_mounts_in(v2, true),
            vec![std::path::PathBuf::from("/sys/fs/cgroup")]
        );
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("").unwrap(), "crius");
        assert_eq!(
            parent_path("/kubepods/burstable/pod123").unwrap(),
            "kubepods/burstable/pod123"
        );
        assert!(parent_path("kubepods-burstable.slice").is_err());
        assert!(parent_path("/kubepods/../etc").is_err());
        assert_eq!(
            crate::cgroups::own_cgroup("crius", "0123456789abcdef"),
            "crius/crius-0123456789ab"
        );
    }
}
