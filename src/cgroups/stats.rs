//! A cgroup's usage as kubelet reads it: CPU time, memory (working set = usage minus inactive
//! file, as kubelet computes it), page faults and process count, from cgroup v1 and v2 files.
//! Parsing is separate from reading so both layouts are unit-tested on any host.

use std::path::{Path, PathBuf};

use super::{CGROUP_ROOT, CgroupVersion};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Total CPU time, in nanoseconds.
    pub cpu_ns: Option<u64>,
    pub memory_usage: Option<u64>,
    /// None when unlimited.
    pub memory_limit: Option<u64>,
    pub working_set: Option<u64>,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    pub processes: Option<u64>,
}

/// `key value` lines (memory.stat, cpu.stat) as a lookup.
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn number(text: Option<String>) -> Option<u64> {
    text?.trim().parse().ok()
}

/// A v1 limit of "no limit" is a huge number (page-rounded i64::MAX).
fn v1_limit(value: Option<u64>) -> Option<u64> {
    value.filter(|v| *v < (1u64 << 62))
}

/// What the v1 files say. `read` gives a file's text by controller and name.
pub fn parse_v1(read: &dyn Fn(&str, &str) -> Option<String>) -> Usage {
    let stat = read("memory", "memory.stat").unwrap_or_default();
    let usage = number(read("memory", "memory.usage_in_bytes"));
    let inactive = stat_value(&stat, "total_inactive_file");
    Usage {
        cpu_ns: number(read("cpuacct", "cpuacct.usage")),
        memory_usage: usage,
        memory_limit: v1_limit(number(read("memory", "memory.limit_in_bytes"))),
        working_set: usage.map(|u| u.saturating_sub(inactive.unwrap_or(0))),
        rss: stat_value(&stat, "total_rss"),
        page_faults: stat_value(&stat, "total_pgfault"),
        major_page_faults: stat_value(&stat, "total_pgmajfault"),
        processes: read("pids", "cgroup.procs").map(|t| t.lines().count() as u64),
    }
}

/// What the v2 files say.
pub fn parse_v2(read: &dyn Fn(&str) -> Option<String>) -> Usage {
    let stat = read("memory.stat").unwrap_or_default();
    let usage = number(read("memory.current"));
    let inactive = stat_value(&stat, "inactive_file");
    let cpu = read("cpu.stat").unwrap_or_default();
    Usage {
        cpu_ns: stat_value(&cpu, "usage_usec").map(|us| us * 1000),
        memory_usage: usage,
        memory_limit: read("memory.max").and_then(|m| m.trim().parse().ok()),
        working_set: usage.map(|u| u.saturating_sub(inactive.unwrap_or(0))),
        rss: stat_value(&stat, "anon"),
        page_faults: stat_value(&stat, "pgfault"),
        major_page_faults: stat_value(&stat, "pgmajfault"),
        processes: read("cgroup.procs").map(|t| t.lines().count() as u64),
    }
}

/// Reads the usage of the cgroup at `path` (relative to the hierarchy roots).
pub fn read(version: CgroupVersion, path: &str) -> Usage {
    let root = PathBuf::from(CGROUP_ROOT);
    match version {
        CgroupVersion::V1 => parse_v1(&|controller, file| {
            let dir = controller_dir(&root, controller).join(path);
            std::fs::read_to_string(dir.join(file)).ok()
        }),
        CgroupVersion::V2 => {
            let dir = root.join(path);
            parse_v2(&|file| std::fs::read_to_string(dir.join(file)).ok())
        }
    }
}

/// A v1 controller's hierarchy (cpuacct is often co-mounted as `cpu,cpuacct`).
fn controller_dir(root: &Path, controller: &str) -> PathBuf {
    let direct = root.join(controller);
    if direct.exists() {
        return direct;
    }
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == controller))
        })
        .unwrap_or(direct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_files() {
        let usage = parse_v1(&|controller, file| {
            Some(
                match (controller, file) {
                    ("cpuacct", "cpuacct.usage") => "123456789\n",
                    ("memory", "memory.usage_in_bytes") => "10485760\n",
                    ("memory", "memory.limit_in_bytes") => "9223372036854771712\n",
                    ("memory", "memory.stat") => {
                        "cache 0\nrss 1\ntotal_rss 4194304\ntotal_inactive_file 2097152\ntotal_pgfault 77\ntotal_pgmajfault 3\n"
                    }
                    ("pids", "cgroup.procs") => "1\n22\n",
                    _ => return None,
                }
                .to_string(),
            )
        });
        assert_eq!(
            usage,
            Usage {
                cpu_ns: Some(123456789),
                memory_usage: Some(10485760),
                memory_limit: None,
                working_set: Some(10485760 - 2097152),
                rss: Some(4194304),
                page_faults: Some(77),
                major_page_faults: Some(3),
                processes: Some(2),
            }
        );
    }

    #[test]
    fn v2_files() {
        let usage = parse_v2(&|file| {
            Some(
                match file {
                    "cpu.stat" => "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
                    "memory.current" => "8192000\n",
                    "memory.max" => "33554432\n",
                    "memory.stat" => {
                        "anon 4096000\nfile 100\ninactive_file 192000\npgfault 9\npgmajfault 1\n"
                    }
                    "cgroup.procs" => "5\n",
                    _ => return None,
                }
                .to_string(),
            )
        });
        assert_eq!(usage.cpu_ns, Some(1_500_000));
        assert_eq!(usage.memory_limit, Some(33554432));
        assert_eq!(usage.working_set, Some(8_000_000));
        assert_eq!(usage.rss, Some(4096000));
        assert_eq!(
            (usage.page_faults, usage.major_page_faults),
            (Some(9), Some(1))
        );
        assert_eq!(usage.processes, Some(1));
        let unlimited = parse_v2(&|file| (file == "memory.max").then(|| "max\n".to_string()));
        assert_eq!(unlimited.memory_limit, None);
    }
}
