//! Which controllers a cgroup has, where their interface files are, and the one warning per
//! controller a daemon run gives when limits are skipped because the host lacks it.
//!
//! kubelet asks for limits whatever the host offers: a zero hugetlb limit for every huge page
//! size the node reports, even where no hugetlb hierarchy is mounted. As runc does, a limit for
//! a controller the cgroup does not have is skipped, not an error: on v1 the controller's
//! hierarchy is not mounted; on v2 the parent does not enable it in `cgroup.subtree_control`
//! (so the cgroup's `cgroup.controllers` does not list it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use super::{CGROUP_ROOT, CgroupVersion};

/// The cgroup filesystem: the host's at /sys/fs/cgroup, or another root (tests).
#[derive(Debug, Clone)]
pub struct CgroupFs {
    root: PathBuf,
    version: CgroupVersion,
}

impl CgroupFs {
    /// The host's cgroup filesystem.
    pub fn host(version: CgroupVersion) -> CgroupFs {
        CgroupFs::at(CGROUP_ROOT, version)
    }

    /// A cgroup filesystem laid out like the host's under `root`.
    pub fn at(root: impl Into<PathBuf>, version: CgroupVersion) -> CgroupFs {
        CgroupFs {
            root: root.into(),
            version,
        }
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The directory of cgroup `path` holding `controller`'s files (v1: in that controller's
    /// hierarchy; v2: the one unified directory).
    pub fn dir(&self, controller: &str, path: &str) -> PathBuf {
        match self.version {
            CgroupVersion::V1 => self.root.join(controller).join(path),
            CgroupVersion::V2 => self.root.join(path),
        }
    }

    /// Whether cgroup `path` can be limited through `controller`. On v1 the controller's
    /// hierarchy must be mounted; on v2 the controller must be enabled for the cgroup. When
    /// that cannot be read, the controller counts as present: the write then reports why.
    pub fn has_controller(&self, controller: &str, path: &str) -> bool {
        match self.version {
            CgroupVersion::V1 => self.root.join(controller).is_dir(),
            CgroupVersion::V2 => enabled_v2(&self.root.join(path), controller).unwrap_or(true),
        }
    }
}

/// Whether the v2 cgroup at `dir` lists `controller` in its `cgroup.controllers` (what its
/// parent enables in `cgroup.subtree_control`); None when the file cannot be read.
fn enabled_v2(dir: &Path, controller: &str) -> Option<bool> {
    let text = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    Some(text.split_whitespace().any(|c| c == controller))
}

/// The controller whose interface file `file` is (`memory.high` → memory); None for the
/// core `cgroup.*` files every cgroup has.
pub fn controller_of(file: &str) -> Option<&str> {
    match file.split_once('.') {
        Some(("cgroup", _)) | None => None,
        Some((controller, _)) => Some(controller),
    }
}

/// Controllers already warned about, so each is named once per daemon run.
#[derive(Debug, Default)]
pub struct SkipWarnings {
    warned: Mutex<BTreeSet<String>>,
}

impl SkipWarnings {
    /// Notes a limit skipped for want of `controller`; true the first time for it.
    pub fn first_skip(&self, controller: &str) -> bool {
        match self.warned.lock() {
            Ok(mut warned) => warned.insert(controller.to_string()),
            // A panic elsewhere poisoned the set: warning again is the lesser harm.
            Err(_) => true,
        }
    }
}

static SKIPPED: LazyLock<SkipWarnings> = LazyLock::new(SkipWarnings::default);

/// Logs, once per controller and daemon run, that limits needing it are skipped.
pub fn warn_skipped(controller: &str, field: &str) {
    if SKIPPED.first_skip(controller) {
        tracing::warn!(
            controller,
            field,
            "no {controller} cgroup controller (not mounted, or not enabled in the parent's \
             cgroup.subtree_control): limits needing it are skipped; warned once per daemon run"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_of_interface_files() {
        assert_eq!(controller_of("memory.high"), Some("memory"));
        assert_eq!(controller_of("hugetlb.2MB.max"), Some("hugetlb"));
        assert_eq!(controller_of("rdma.max"), Some("rdma"));
        assert_eq!(controller_of("cgroup.max.depth"), None);
    }

    #[test]
    fn one_warning_per_controller() {
        let w = SkipWarnings::default();
        assert!(w.first_skip("hugetlb"));
        assert!(!w.first_skip("hugetlb"));
        assert!(w.first_skip("rdma"));
        assert!(!w.first_skip("rdma"));
    }

    #[test]
    fn v1_controllers_are_mounted_hierarchies() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("memory/kubepods")).unwrap();
        let fs = CgroupFs::at(root.path(), CgroupVersion::V1);
        assert!(fs.has_controller("memory", "kubepods"));
        assert!(!fs.has_controller("hugetlb", "kubepods"));
        assert_eq!(
            fs.dir("memory", "kubepods"),
            root.path().join("memory/kubepods")
        );
    }

    #[test]
    fn v2_controllers_are_those_the_parent_enables() {
        let root = tempfile::tempdir().unwrap();
        let pod = root.path().join("kubepods/pod1");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join("cgroup.controllers"), "cpuset cpu memory pids\n").unwrap();
        let fs = CgroupFs::at(root.path(), CgroupVersion::V2);
        assert!(fs.has_controller("memory", "kubepods/pod1"));
        assert!(!fs.has_controller("hugetlb", "kubepods/pod1"));
        assert!(!fs.has_controller("misc", "kubepods/pod1"));
        assert_eq!(fs.dir("memory", "kubepods/pod1"), pod);
        // Unreadable: the write is left to say what is wrong.
        assert!(fs.has_controller("hugetlb", "kubepods/none"));
    }
}
