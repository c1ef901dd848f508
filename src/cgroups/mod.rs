//! cgroups: which hierarchy this host uses and which controllers it offers.
//!
//! v2 when /sys/fs/cgroup is a cgroup2 mount; otherwise v1 (a hybrid host's empty cgroup2 mount
//! at /sys/fs/cgroup/unified holds no controllers and is not used).

pub mod container;
pub mod controllers;
pub mod devices;
pub mod resources;
pub mod sandbox;
pub mod stats;
pub mod systemd;

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes a cgroup whose processes are gone or going, in every hierarchy. Idempotent.
/// rmdir fails with EBUSY while exiting tasks are still being torn down, which takes a
/// millisecond or so: retry finely rather than back off by tens of milliseconds.
pub fn remove_cgroup(path: &str) -> Result<(), String> {
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

/// Mount points of the hierarchies cgroups are made in: every v1 hierarchy, or the v2 root.
/// Read from mountinfo once: it grows with every pod (their namespace pins and /dev/shm), and
/// reading it on each container start and removal made those steps slower the more pods
/// ran. The hierarchies a node mounts do not change under a running runtime (runc and
/// containerd find them once too).
pub fn hierarchy_mounts() -> Vec<std::path::PathBuf> {
    static MOUNTS: std::sync::OnceLock<Vec<std::path::PathBuf>> = std::sync::OnceLock::new();
    MOUNTS
        .get_or_init(|| {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            sandbox::hierarchy_mounts_in(
                &mountinfo,
                cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode(),
            )
        })
        .clone()
}

/// Which cgroup driver this daemon uses: set once at start-up (cgroupfs until then).
static DRIVER_KIND: std::sync::OnceLock<DriverKind> = std::sync::OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DriverKind {
    Cgroupfs,
    Systemd,
}

pub fn driver_kind() -> DriverKind {
    DRIVER_KIND.get().copied().unwrap_or(DriverKind::Cgroupfs)
}

/// Sets the daemon's cgroup driver; the first call wins.
pub fn set_driver_kind(kind: DriverKind) {
    let _ = DRIVER_KIND.set(kind);
}

/// How crius makes pods' and containers' cgroups.
#[derive(Clone)]
pub enum Driver {
    /// Directories in the cgroup filesystem, named by crius.
    Cgroupfs,
    /// Transient systemd units (see `systemd`).
    Systemd(std::sync::Arc<systemd::Systemd>),
}

impl Driver {
    pub fn systemd(&self) -> Option<&systemd::Systemd> {
        match self {
            Driver::Systemd(s) => Some(s),
            Driver::Cgroupfs => None,
        }
    }

    pub fn systemd_arc(&self) -> Option<std::sync::Arc<systemd::Systemd>> {
        match self {
            Driver::Systemd(s) => Some(s.clone()),
            Driver::Cgroupfs => None,
        }
    }
}

/// Where pods go when kubelet names no parent (systemd driver).
pub const DEFAULT_SLICE: &str = "crius.slice";

/// The slice a pod's units go in with the systemd driver: kubelet's, or the default.
pub fn parent_slice(cgroup_parent: &str) -> String {
    if cgroup_parent.trim().is_empty() {
        DEFAULT_SLICE.to_string()
    } else {
        cgroup_parent.trim().to_string()
    }
}

/// The cgroup crius makes for a pod's agent or for a container with the systemd driver: the
/// scope's, in the parent slice's path.
pub fn scope_cgroup(parent_path: &str, id: &str) -> String {
    let scope = systemd::scope_name(id);
    if parent_path.is_empty() {
        scope
    } else {
        format!("{parent_path}/{scope}")
    }
}

/// The cgroup of a pod's agent or a container, by the daemon's driver: a directory of ours
/// (cgroupfs) or its scope's (systemd), under the parent's path.
pub fn cgroup_of(parent: &str, id: &str) -> String {
    match driver_kind() {
        DriverKind::Cgroupfs => own_cgroup(parent, id),
        DriverKind::Systemd => scope_cgroup(parent, id),
    }
}

/// The cgroup crius makes for a pod's agent or for a container, under `parent`:
/// `crius-` and the first 12 characters of its id.
pub fn own_cgroup(parent: &str, id: &str) -> String {
    format!("{parent}/crius-{}", &id[..12.min(id.len())])
}

/// What creating, limiting or joining a cgroup can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("creating cgroup {path}: {reason}")]
    Create { path: String, reason: String },
    #[error("cgroup {0} does not exist")]
    Missing(String),
    /// The kernel refused a limit on a controller the cgroup has; `field` names the CRI field.
    #[error("writing {value} to {file}: {source}")]
    Refused {
        field: String,
        file: String,
        value: String,
        source: std::io::Error,
    },
    #[error("{key:?} is not a cgroup v2 interface file")]
    NotInterfaceFile { key: String },
    #[error("{file} of cgroup {path}: {source}")]
    DeviceRule {
        file: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("device rules of cgroup {0}: {1}")]
    DeviceFilter(String, devices::DeviceFilterError),
    #[error(transparent)]
    Systemd(#[from] systemd::SystemdError),
    #[error("moving pid {pid} into cgroup {path}: {reason}")]
    Join {
        pid: i32,
        path: String,
        reason: String,
    },
    /// Making the pod's cgroup, or moving its processes in, failed under limits the request
    /// had just set on the parent: the kernel refused them (ENOMEM for a memory limit too
    /// small to hold a cgroup).
    #[error("the kernel refused the pod's limits: {0}")]
    LimitsRefused(Box<CgroupError>),
}

impl CgroupError {
    /// As the daemon's error: a refused or malformed limit is INVALID_ARGUMENT naming the
    /// field under `resources_field` (e.g. `config.linux.resources`), the rest internal.
    pub fn into_error(self, resources_field: &str) -> crate::error::Error {
        match &self {
            CgroupError::Refused { field, .. } => {
                crate::error::Error::invalid(format!("{resources_field}.{field}"), self.to_string())
            }
            CgroupError::NotInterfaceFile { key } => crate::error::Error::invalid(
                format!("{resources_field}.unified[{key}]"),
                self.to_string(),
            ),
            CgroupError::LimitsRefused(_) => {
                crate::error::Error::invalid(resources_field, self.to_string())
            }
            _ => crate::error::Error::Internal(self.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupLayout {
    pub version: CgroupVersion,
    /// Controllers available to the runtime, sorted.
    pub controllers: Vec<String>,
}

/// Controllers a pod runtime cannot work without.
pub fn required_controllers(version: CgroupVersion) -> &'static [&'static str] {
    match version {
        CgroupVersion::V1 => &[
            "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer",
        ],
        CgroupVersion::V2 => &["cpu", "cpuset", "memory", "pids"],
    }
}

/// Reads the host's cgroup layout.
pub fn detect() -> std::io::Result<CgroupLayout> {
    let root = Path::new(CGROUP_ROOT);
    if is_cgroup2_mount(root)? {
        let text = std::fs::read_to_string(root.join("cgroup.controllers"))?;
        Ok(CgroupLayout {
            version: CgroupVersion::V2,
            controllers: parse_v2_controllers(&text),
        })
    } else {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(CgroupLayout {
            version: CgroupVersion::V1,
            controllers: parse_v1_controllers(&mountinfo),
        })
    }
}

fn is_cgroup2_mount(path: &Path) -> std::io::Result<bool> {
    let fs = nix::sys::statfs::statfs(path).map_err(std::io::Error::from)?;
    Ok(fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// `cgroup.controllers` of a v2 root: space-separated names.
pub fn parse_v2_controllers(text: &str) -> Vec<String> {
    let mut c: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    c.sort();
    c.dedup();
    c
}

/// Every controller a v1 hierarchy can carry; other super options (rw, xattr, name=…) are not.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Controllers of the v1 hierarchies mounted, from /proc/self/mountinfo (`cgroup` filesystems;
/// their super options name the controllers, e.g. `rw,cpu,cpuacct`).
pub fn parse_v1_controllers(mountinfo: &str) -> Vec<String> {
    let mut controllers = Vec::new();
    for line in mountinfo.lines() {
        // Fields after " - " are: fstype source super-options.
        let Some((_, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mut fields = tail.split_whitespace();
        if fields.next() != Some("cgroup") {
            continue;
        }
        let options = fields.nth(1).unwrap_or_default();
        for opt in options.split(',') {
            if V1_CONTROLLERS.contains(&opt) {
                controllers.push(opt.to_string());
            }
        }
    }
    controllers.sort();
    controllers.dedup();
    controllers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_controllers() {
        assert_eq!(
            parse_v2_controllers("cpuset cpu io memory hugetlb pids rdma misc\n"),
            vec![
                "cpu", "cpuset", "hugetlb", "io", "memory", "misc", "pids", "rdma"
            ]
        );
        assert!(parse_v2_controllers("\n").is_empty());
    }

    #[test]
    fn v1_controllers_from_mountinfo() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
";
        assert_eq!(parse_v1_controllers(mi), vec!["cpu", "cpuacct", "memory"]);
    }
}
