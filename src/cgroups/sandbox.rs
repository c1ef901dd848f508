//! A pod's cgroups with the cgroupfs driver: the parent kubelet names (created, with the pod's
//! limits, when it does not exist yet — as under crictl), and the sandbox's own cgroup in it,
//! which holds the pod agent.

use std::path::{Component, Path};
use std::time::{Duration, Instant};

use cgroups_rs::CgroupPid;
use cgroups_rs::fs::{Cgroup, hierarchies};
use k8s_cri::v1 as cri;

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

/// The topmost missing directory on the way to `path`, which creating `path` would create.
fn first_missing(path: &str) -> Option<String> {
    let mut current = String::new();
    for part in path.split('/') {
        if !current.is_empty() {
            current.push('/');
        }
        current.push_str(part);
        if !exists(&current) {
            return Some(current);
        }
    }
    None
}

/// Creates the sandbox cgroup (and the parent when missing, with the pod's limits) and moves
/// `pids` into it. Returns the topmost cgroup created on the way to the parent, if any: what
/// removal takes away again.
pub fn create(
    version: CgroupVersion,
    parent: &str,
    sandbox: &str,
    limits: Option<&cri::LinuxContainerResources>,
    pids: &[i32],
) -> Result<Option<String>, String> {
    let created_from = first_missing(parent);
    if created_from.is_some() {
        let cg = Cgroup::new(hierarchies::auto(), parent)
            .map_err(|e| format!("creating cgroup {parent}: {e}"))?;
        if let Some(limits) = limits
            && let Err(e) = cg.apply(&resources::from_cri(version, limits))
        {
            let _ = cg.delete();
            return Err(format!("setting the limits of cgroup {parent}: {e}"));
        }
    }
    let undo = |message: String| {
        let _ = remove(parent, sandbox, created_from.as_deref());
        message
    };
    let cg = Cgroup::new(hierarchies::auto(), sandbox)
        .map_err(|e| undo(format!("creating cgroup {sandbox}: {e}")))?;
    for pid in pids {
        cg.add_task_by_tgid(CgroupPid::from(*pid as u64))
            .map_err(|e| undo(format!("moving pid {pid} into cgroup {sandbox}: {e}")))?;
    }
    Ok(created_from)
}

/// Removes the sandbox cgroup (its processes must be gone or going) and, when this runtime
/// created the parent, the parent and its ancestors up to `created_from` while they are empty.
/// Idempotent.
pub fn remove(parent: &str, sandbox: &str, created_from: Option<&str>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if !exists(sandbox) {
            break;
        }
        // rmdir fails with EBUSY while exiting tasks are still being torn down.
        match Cgroup::load(hierarchies::auto(), sandbox).delete() {
            Ok(()) if !exists(sandbox) => break,
            Ok(()) => {}
            Err(e) if Instant::now() > deadline => {
                return Err(format!("removing cgroup {sandbox}: {e}"));
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(top) = created_from {
        // Another pod may still use them: then rmdir fails and they stay.
        let mut current = parent.to_string();
        loop {
            if exists(&current)
                && Cgroup::load(hierarchies::auto(), current.as_str())
                    .delete()
                    .is_err()
            {
                break;
            }
            if current == top {
                break;
            }
            match current.rsplit_once('/') {
                Some((up, _)) => current = up.to_string(),
                None => break,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
