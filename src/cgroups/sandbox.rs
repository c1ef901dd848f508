//! A pod's cgroups with the cgroupfs driver: the parent kubelet names (created, with the pod's
//! limits, when it does not exist yet — as under crictl), and the sandbox's own cgroup in it,
//! which holds the pod agent.

use std::path::{Component, Path};
use std::time::{Duration, Instant};

use crate::cri;
use cgroups_rs::CgroupPid;
use cgroups_rs::fs::{Cgroup, hierarchies};

use super::{CgroupVersion, resources};

/// Where pods go when kubelet names no parent.
pub const DEFAULT_PARENT: &str = "crius";

/// The parent as a relative cgroup path; refuses `..` and systemd slice names (cgroupfs only).
pub fn parent_path(cgroup_parent: &str) -> Result<String, String> {
    let trimmed = cgroup_parent.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(DEFAULT_PARENT.to_string());
    }
    if trimmed.ends_with(".slice") {
        return Err(format!(
            "{cgroup_parent:?} is a systemd slice; crius uses the cgroupfs driver"
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

pub fn sandbox_path(parent: &str, sandbox_id: &str) -> String {
    format!("{parent}/crius-{}", &sandbox_id[..12.min(sandbox_id.len())])
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

/// Why a pod's cgroups could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// The kernel refused the pod's own limits, or the pod's cgroup or processes under a
    /// parent it had just given them: the request's values are at fault.
    Limits(String),
    /// Anything else.
    Failed(String),
}

impl From<CreateError> for crate::error::Error {
    fn from(err: CreateError) -> Self {
        match err {
            CreateError::Limits(reason) => crate::error::Error::invalid(
                "config.linux.resources and config.linux.overhead",
                format!("the kernel refused the pod's limits: {reason}"),
            ),
            CreateError::Failed(reason) => crate::error::Error::Internal(reason),
        }
    }
}

/// Creates the sandbox cgroup (and the parent when missing, with the pod's limits) and moves
/// `pids` into it. The caller learns which parent cgroups are new from `missing_on_the_way`,
/// called before, and owns them from then on.
pub fn create(
    version: CgroupVersion,
    parent: &str,
    sandbox: &str,
    limits: Option<&cri::LinuxContainerResources>,
    pids: &[i32],
) -> Result<(), CreateError> {
    let mut limited = false;
    if !exists(parent) {
        let cg = Cgroup::new(hierarchies::auto(), parent)
            .map_err(|e| CreateError::Failed(format!("creating cgroup {parent}: {e}")))?;
        if let Some(limits) = limits {
            cg.apply(&resources::from_cri(version, limits))
                .map_err(|e| {
                    CreateError::Limits(format!("setting the limits of cgroup {parent}: {e}"))
                })?;
            limited = true;
        }
    }
    // Under limits just set from the request, a refusal here (ENOMEM for a memory limit too
    // small to hold the cgroup itself) is the request's doing.
    let refused = |reason: String| {
        if limited {
            CreateError::Limits(reason)
        } else {
            CreateError::Failed(reason)
        }
    };
    let cg = Cgroup::new(hierarchies::auto(), sandbox)
        .map_err(|e| refused(format!("creating cgroup {sandbox}: {e}")))?;
    for pid in pids {
        cg.add_task_by_tgid(CgroupPid::from(*pid as u64))
            .map_err(|e| refused(format!("moving pid {pid} into cgroup {sandbox}: {e}")))?;
    }
    Ok(())
}

/// Removes a cgroup whose processes are gone or going, in every hierarchy. Idempotent.
/// rmdir fails with EBUSY while exiting tasks are still being torn down, which takes a
/// millisecond or so: retry finely rather than back off by tens of milliseconds.
pub fn remove(path: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    for dir in hierarchy_mounts().iter().map(|m| m.join(path)) {
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("removing cgroup {}: {e}", dir.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
    Ok(())
}

/// Removes `path` if it holds no cgroup and no process in any hierarchy; false when it stays.
/// Checked first and without retries (cgroups-rs would sleep 150 ms on a busy parent).
pub fn remove_if_empty(path: &str) -> bool {
    let dirs: Vec<std::path::PathBuf> = hierarchy_mounts().iter().map(|m| m.join(path)).collect();
    let busy = |dir: &std::path::PathBuf| {
        let has_children = std::fs::read_dir(dir)
            .map(|entries| entries.flatten().any(|e| e.path().is_dir()))
            .unwrap_or(false);
        let has_procs = std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|p| !p.trim().is_empty())
            .unwrap_or(false);
        has_children || has_procs
    };
    if dirs.iter().any(busy) {
        return false;
    }
    dirs.iter()
        .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
}

/// Mount points of the hierarchies cgroups are made in: every v1 hierarchy, or the v2 root.
pub fn hierarchy_mounts() -> Vec<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    hierarchy_mounts_in(&mountinfo, hierarchies::is_cgroup2_unified_mode())
}

fn hierarchy_mounts_in(mountinfo: &str, v2: bool) -> Vec<std::path::PathBuf> {
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
            sandbox_path("crius", "0123456789abcdef"),
            "crius/crius-0123456789ab"
        );
    }
}
