//! CRI resources (LinuxContainerResources) written to a cgroup's interface files, for v1 and
//! v2. A limit for a controller the cgroup does not have is skipped with one warning per
//! controller and daemon run (see `controllers`); one the kernel refuses is an error naming
//! the CRI field and giving the kernel's reason.

use std::cell::RefCell;
use std::path::PathBuf;

use crate::cri;

use super::controllers::{self, CgroupFs};
use super::{CgroupError, CgroupVersion};

/// cpu.shares (v1, 2–262144) to cpu.weight (v2, 1–10000), as runc and kubelet convert it.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Writes the CRI limits to cgroup `path` (zero fields are left as they are, as the CRI means
/// them).
pub fn write_limits(
    fs: &CgroupFs,
    path: &str,
    r: &cri::LinuxContainerResources,
) -> Result<(), CgroupError> {
    Limits {
        fs,
        path,
        journal: None,
    }
    .write_all(r)
}

/// Writes the CRI limits to cgroup `path` as `write_limits` does, but all or nothing: each
/// file's content is read before it is written, and when a write is refused the files
/// already written get their old content back, last first (so v1's memsw/limit ordering
/// holds on the way back too). A file that cannot be restored is logged.
pub fn write_limits_or_restore(
    fs: &CgroupFs,
    path: &str,
    r: &cri::LinuxContainerResources,
) -> Result<(), CgroupError> {
    let limits = Limits {
        fs,
        path,
        journal: Some(RefCell::new(Vec::new())),
    };
    let result = limits.write_all(r);
    if result.is_err() {
        limits.restore();
    }
    result
}

/// One cgroup's interface files.
struct Limits<'a> {
    fs: &'a CgroupFs,
    path: &'a str,
    /// When set, every file written with the content it had before, in order.
    journal: Option<RefCell<Vec<(PathBuf, String)>>>,
}

impl Limits<'_> {
    /// Writes `value` to `file` of `controller`, or skips it when the cgroup lacks the
    /// controller (None: a core `cgroup.*` file, always there).
    fn write(
        &self,
        controller: Option<&str>,
        field: &str,
        file: &str,
        value: String,
    ) -> Result<(), CgroupError> {
        if let Some(controller) = controller
            && !self.fs.has_controller(controller, self.path)
        {
            controllers::warn_skipped(controller, field);
            return Ok(());
        }
        let file_path = self
            .fs
            .dir(controller.unwrap_or_default(), self.path)
            .join(file);
        // Read first, kept only once the write succeeded (a refused write changed nothing).
        let before = self
            .journal
            .as_ref()
            .and_then(|_| std::fs::read_to_string(&file_path).ok());
        write_interface_file(&file_path, &value).map_err(|source| CgroupError::Refused {
            field: field.to_string(),
            file: file.to_string(),
            value,
            source,
        })?;
        if let (Some(journal), Some(before)) = (&self.journal, before) {
            journal.borrow_mut().push((file_path, before));
        }
        Ok(())
    }

    fn write_all(&self, r: &cri::LinuxContainerResources) -> Result<(), CgroupError> {
        match self.fs.version() {
            CgroupVersion::V1 => self.write_v1(r),
            CgroupVersion::V2 => self.write_v2(r),
        }
    }

    /// Puts back what the journal says the written files held, last write first.
    fn restore(&self) {
        let Some(journal) = &self.journal else {
            return;
        };
        for (file, before) in journal.borrow_mut().drain(..).rev() {
            if let Err(e) = write_interface_file(&file, before.trim_end()) {
                tracing::warn!(file = %file.display(), error = %e, "a limit could not be restored");
            }
        }
    }

    fn write_v1(&self, r: &cri::LinuxContainerResources) -> Result<(), CgroupError> {
        let cpu = Some("cpu");
        if r.cpu_shares > 0 {
            self.write(cpu, "cpu_shares", "cpu.shares", r.cpu_shares.to_string())?;
        }
        if r.cpu_period > 0 {
            self.write(
                cpu,
                "cpu_period",
                "cpu.cfs_period_us",
                r.cpu_period.to_string(),
            )?;
        }
        if r.cpu_quota != 0 {
            self.write(
                cpu,
                "cpu_quota",
                "cpu.cfs_quota_us",
                r.cpu_quota.to_string(),
            )?;
        }
        self.write_cpuset(r)?;
        self.write_v1_memory(r)?;
        for (i, h) in r.hugepage_limits.iter().enumerate() {
            self.write(
                Some("hugetlb"),
                &format!("hugepage_limits[{i}]"),
                &format!("hugetlb.{}.limit_in_bytes", h.page_size),
                h.limit.to_string(),
            )?;
        }
        Ok(())
    }

    /// memory.memsw must stay >= memory.limit: which goes first depends on the direction of
    /// the change.
    fn write_v1_memory(&self, r: &cri::LinuxContainerResources) -> Result<(), CgroupError> {
        if r.memory_limit_in_bytes <= 0 {
            return Ok(());
        }
        let memory = Some("memory");
        let limit = || {
            self.write(
                memory,
                "memory_limit_in_bytes",
                "memory.limit_in_bytes",
                r.memory_limit_in_bytes.to_string(),
            )
        };
        let swap = || {
            self.write(
                memory,
                "memory_swap_limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                r.memory_swap_limit_in_bytes.to_string(),
            )
        };
        let with_swap = r.memory_swap_limit_in_bytes > 0;
        if limit().is_err() && with_swap {
            swap()?;
        }
        limit()?;
        if with_swap {
            swap()?;
        }
        Ok(())
    }

    fn write_cpuset(&self, r: &cri::LinuxContainerResources) -> Result<(), CgroupError> {
        let cpuset = Some("cpuset");
        if !r.cpuset_cpus.is_empty() {
            self.write(cpuset, "cpuset_cpus", "cpuset.cpus", r.cpuset_cpus.clone())?;
        }
        if !r.cpuset_mems.is_empty() {
            self.write(cpuset, "cpuset_mems", "cpuset.mems", r.cpuset_mems.clone())?;
        }
        Ok(())
    }

    fn write_v2(&self, r: &cri::LinuxContainerResources) -> Result<(), CgroupError> {
        let cpu = Some("cpu");
        if r.cpu_shares > 0 {
            let weight = shares_to_weight(r.cpu_shares as u64);
            self.write(cpu, "cpu_shares", "cpu.weight", weight.to_string())?;
        }
        if r.cpu_quota != 0 || r.cpu_period > 0 {
            let field = if r.cpu_quota != 0 {
                "cpu_quota"
            } else {
                "cpu_period"
            };
            self.write(cpu, field, "cpu.max", cpu_max(r.cpu_quota, r.cpu_period))?;
        }
        self.write_cpuset(r)?;
        if r.memory_limit_in_bytes > 0 {
            let memory = Some("memory");
            let limit = r.memory_limit_in_bytes;
            self.write(
                memory,
                "memory_limit_in_bytes",
                "memory.max",
                limit.to_string(),
            )?;
            if r.memory_swap_limit_in_bytes > 0 {
                // v2 limits swap alone; the CRI gives memory plus swap.
                let swap = r.memory_swap_limit_in_bytes.saturating_sub(limit);
                let field = "memory_swap_limit_in_bytes";
                self.write(memory, field, "memory.swap.max", swap.to_string())?;
            }
        }
        for (i, h) in r.hugepage_limits.iter().enumerate() {
            self.write(
                Some("hugetlb"),
                &format!("hugepage_limits[{i}]"),
                &format!("hugetlb.{}.max", h.page_size),
                h.limit.to_string(),
            )?;
        }
        for (key, value) in &r.unified {
            check_unified_key(key)?;
            let field = format!("unified[{key}]");
            self.write(controllers::controller_of(key), &field, key, value.clone())?;
        }
        Ok(())
    }
}

/// `cpu.max`: the quota (or `max` when unlimited) and the period (the kernel's 100 ms default
/// when the CRI leaves it out).
fn cpu_max(quota: i64, period: i64) -> String {
    let quota = if quota > 0 {
        quota.to_string()
    } else {
        "max".to_string()
    };
    let period = if period > 0 { period } else { 100_000 };
    format!("{quota} {period}")
}

/// A `unified` key is written as is: only cgroup interface files are accepted.
fn check_unified_key(key: &str) -> Result<(), CgroupError> {
    if key.contains('/') || key.starts_with('.') || !key.contains('.') {
        return Err(CgroupError::NotInterfaceFile {
            key: key.to_string(),
        });
    }
    Ok(())
}

/// Writes an existing interface file (a cgroup file is never created: a missing one is an
/// error, as the kernel reports it).
fn write_interface_file(file: &std::path::Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(file)?;
    f.write_all(value.as_bytes())
}

/// A pod's cgroup limits: its containers' resources plus the pod's overhead.
pub fn pod_total(
    resources: Option<&cri::LinuxContainerResources>,
    overhead: Option<&cri::LinuxContainerResources>,
) -> Option<cri::LinuxContainerResources> {
    match (resources, overhead) {
        (None, None) => None,
        (Some(r), None) | (None, Some(r)) => Some(r.clone()),
        (Some(r), Some(o)) => {
            let mut total = r.clone();
            total.cpu_shares = total.cpu_shares.saturating_add(o.cpu_shares);
            if r.cpu_quota > 0 && o.cpu_quota > 0 {
                total.cpu_quota = total.cpu_quota.saturating_add(o.cpu_quota);
            }
            if r.memory_limit_in_bytes > 0 && o.memory_limit_in_bytes > 0 {
                total.memory_limit_in_bytes = total
                    .memory_limit_in_bytes
                    .saturating_add(o.memory_limit_in_bytes);
            }
            Some(total)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_converts_shares_to_weight() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    /// A fake cgroup root: `files` (relative paths) exist, empty.
    fn fake_root(files: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for f in files {
            let file = root.path().join(f);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, "").unwrap();
        }
        root
    }

    fn read(root: &tempfile::TempDir, file: &str) -> String {
        std::fs::read_to_string(root.path().join(file)).unwrap()
    }

    /// What kubelet sends for a Burstable container: shares, quota, period, a memory limit and
    /// a zero limit for each huge page size of the node.
    fn kubelet_resources() -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            cpu_shares: 102,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 999,
            hugepage_limits: ["1GB", "2MB"]
                .iter()
                .map(|size| cri::HugepageLimit {
                    page_size: size.to_string(),
                    limit: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn v1_without_hugetlb_skips_the_hugepage_limits() {
        let pod = "kubepods/burstable/pod1/c1";
        let root = fake_root(&[
            "cpu/kubepods/burstable/pod1/c1/cpu.shares",
            "cpu/kubepods/burstable/pod1/c1/cpu.cfs_period_us",
            "cpu/kubepods/burstable/pod1/c1/cpu.cfs_quota_us",
            "memory/kubepods/burstable/pod1/c1/memory.limit_in_bytes",
        ]);
        let fs = CgroupFs::at(root.path(), CgroupVersion::V1);
        write_limits(&fs, pod, &kubelet_resources()).unwrap();
        assert_eq!(read(&root, &format!("cpu/{pod}/cpu.shares")), "102");
        assert_eq!(read(&root, &format!("cpu/{pod}/cpu.cfs_quota_us")), "50000");
        assert_eq!(
            read(&root, &format!("cpu/{pod}/cpu.cfs_period_us")),
            "100000"
        );
        let memory = read(&root, &format!("memory/{pod}/memory.limit_in_bytes"));
        assert_eq!(memory, (64u64 << 20).to_string());
        assert!(!root.path().join("hugetlb").exists());
    }

    #[test]
    fn v1_with_hugetlb_writes_and_reports_a_missing_page_size() {
        let root = fake_root(&["cpu/c/cpu.shares", "hugetlb/c/hugetlb.2MB.limit_in_bytes"]);
        let fs = CgroupFs::at(root.path(), CgroupVersion::V1);
        let r = cri::LinuxContainerResources {
            cpu_shares: 2,
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Default::default()
        };
        write_limits(&fs, "c", &r).unwrap();
        assert_eq!(
            read(&root, "hugetlb/c/hugetlb.2MB.limit_in_bytes"),
            "4194304"
        );
        // The controller is there but the page size is not: the kernel's reason, the field.
        let mut r = kubelet_resources();
        r.memory_limit_in_bytes = 0;
        r.cpu_quota = 0;
        r.cpu_period = 0;
        let err = write_limits(&fs, "c", &r).unwrap_err();
        assert!(
            matches!(&err, CgroupError::Refused { field, source, .. }
                if field == "hugepage_limits[0]"
                    && source.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("hugetlb.1GB.limit_in_bytes"),
            "{err}"
        );
    }

    #[test]
    fn v2_skips_controllers_the_parent_does_not_enable() {
        let root = fake_root(&[
            "pod1/c/cgroup.controllers",
            "pod1/c/cpu.weight",
            "pod1/c/cpu.max",
            "pod1/c/memory.max",
            "pod1/c/memory.oom.group",
            "pod1/c/cgroup.max.depth",
        ]);
        std::fs::write(
            root.path().join("pod1/c/cgroup.controllers"),
            "cpu memory\n",
        )
        .unwrap();
        let fs = CgroupFs::at(root.path(), CgroupVersion::V2);
        let mut r = kubelet_resources();
        r.unified = [
            ("memory.oom.group", "1"),
            ("misc.max", "res_a 1"),
            ("rdma.max", "mlx4_0 hca_handle=2"),
            ("cgroup.max.depth", "3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        write_limits(&fs, "pod1/c", &r).unwrap();
        assert_eq!(read(&root, "pod1/c/cpu.weight"), "4");
        assert_eq!(read(&root, "pod1/c/cpu.max"), "50000 100000");
        assert_eq!(read(&root, "pod1/c/memory.max"), (64u64 << 20).to_string());
        assert_eq!(read(&root, "pod1/c/memory.oom.group"), "1");
        assert_eq!(read(&root, "pod1/c/cgroup.max.depth"), "3");
        for absent in ["hugetlb.2MB.max", "misc.max", "rdma.max"] {
            assert!(
                !root.path().join("pod1/c").join(absent).exists(),
                "{absent}"
            );
        }
    }

    #[test]
    fn a_refused_limit_names_the_field_and_the_reason() {
        let root = fake_root(&["memory/c/memory.memsw.limit_in_bytes"]);
        // A directory where the file is: refused as the kernel refuses a bad value.
        std::fs::create_dir_all(root.path().join("memory/c/memory.limit_in_bytes")).unwrap();
        let fs = CgroupFs::at(root.path(), CgroupVersion::V1);
        let r = cri::LinuxContainerResources {
            memory_limit_in_bytes: 1 << 20,
            ..Default::default()
        };
        let err = write_limits(&fs, "c", &r).unwrap_err();
        match err.into_error("config.linux.resources") {
            crate::error::Error::InvalidArgument { field, reason } => {
                assert_eq!(field, "config.linux.resources.memory_limit_in_bytes");
                assert!(reason.contains("memory.limit_in_bytes"), "{reason}");
                assert!(reason.contains("directory"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let bad = cri::LinuxContainerResources {
            unified: [("../x".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let fs2 = CgroupFs::at(root.path(), CgroupVersion::V2);
        assert!(matches!(
            write_limits(&fs2, "c", &bad),
            Err(CgroupError::NotInterfaceFile { .. })
        ));
    }

    #[test]
    fn a_refusal_puts_back_what_was_written_before_it() {
        let root = fake_root(&["cpu/p/cpu.shares", "cpu/p/cpu.cfs_quota_us"]);
        // (Plain files are not truncated as written, as cgroup files need not be: the old
        // values are as long as the new ones.)
        std::fs::write(root.path().join("cpu/p/cpu.shares"), "1024\n").unwrap();
        std::fs::write(root.path().join("cpu/p/cpu.cfs_quota_us"), "100000\n").unwrap();
        // cpuset.cpus is a directory: refused after the cpu files were written.
        std::fs::create_dir_all(root.path().join("cpuset/p/cpuset.cpus")).unwrap();
        let fs = CgroupFs::at(root.path(), CgroupVersion::V1);
        let r = cri::LinuxContainerResources {
            cpu_shares: 2048,
            cpu_quota: 50_000,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let err = write_limits_or_restore(&fs, "p", &r).unwrap_err();
        assert!(
            matches!(&err, CgroupError::Refused { field, .. } if field == "cpuset_cpus"),
            "{err:?}"
        );
        assert_eq!(read(&root, "cpu/p/cpu.shares").trim(), "1024");
        assert_eq!(read(&root, "cpu/p/cpu.cfs_quota_us").trim(), "100000");
        // Accepted: written, and nothing put back.
        let r = cri::LinuxContainerResources {
            cpu_shares: 2048,
            ..Default::default()
        };
        write_limits_or_restore(&fs, "p", &r).unwrap();
        assert_eq!(read(&root, "cpu/p/cpu.shares").trim(), "2048");
    }

    #[test]
    fn pod_total_adds_overhead() {
        let r = cri::LinuxContainerResources {
            cpu_shares: 100,
            memory_limit_in_bytes: 100,
            ..Default::default()
        };
        let o = cri::LinuxContainerResources {
            cpu_shares: 10,
            memory_limit_in_bytes: 10,
            ..Default::default()
        };
        let t = pod_total(Some(&r), Some(&o)).unwrap();
        assert_eq!((t.cpu_shares, t.memory_limit_in_bytes), (110, 110));
        assert!(pod_total(None, None).is_none());
        let huge = cri::LinuxContainerResources {
            cpu_quota: i64::MAX,
            memory_limit_in_bytes: i64::MAX,
            ..Default::default()
        };
        let t = pod_total(Some(&huge), Some(&huge)).unwrap();
        assert_eq!((t.cpu_quota, t.memory_limit_in_bytes), (i64::MAX, i64::MAX));
    }
}
