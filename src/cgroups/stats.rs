//! A cgroup's usage as kubelet reads it: CPU time, memory (working set = usage minus inactive
//! file, as kubelet computes it), page faults and process count, from cgroup v1 and v2 files,
//! and on v2 the pressure stall information (PSI) of CPU, memory and I/O (v1 has no PSI per
//! cgroup). Parsing is separate from reading so both layouts are unit-tested on any host.

use std::path::{Path, PathBuf};

use super::{CGROUP_ROOT, CgroupVersion};

#[derive(Debug, Clone, Default, PartialEq)]
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
    /// PSI (v2 only, and only where the kernel keeps it: CONFIG_PSI, not `psi=0`).
    pub pressure: Pressures,
}

/// The PSI of a cgroup's CPU, memory and I/O (`cpu.pressure`, `memory.pressure`,
/// `io.pressure`); None where the file is absent or unreadable.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressures {
    pub cpu: Option<Pressure>,
    pub memory: Option<Pressure>,
    pub io: Option<Pressure>,
}

/// One resource's pressure: the share of time some (or all: full) tasks were stalled on it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub some: PressureLine,
    pub full: PressureLine,
}

/// One line of a pressure file: averages over 10, 60 and 300 s (percent) and the total stall
/// time (microseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// A pressure file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0`, then the same for
/// `full` (absent from cpu.pressure before Linux 5.13: zeros then). None without a `some`
/// line or with a malformed field.
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let mut some = None;
    let mut full = PressureLine::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("some") => some = Some(pressure_line(words)?),
            Some("full") => full = pressure_line(words)?,
            _ => {}
        }
    }
    Some(Pressure { some: some?, full })
}

fn pressure_line<'a>(fields: impl Iterator<Item = &'a str>) -> Option<PressureLine> {
    let mut line = PressureLine::default();
    for field in fields {
        let (key, value) = field.split_once('=')?;
        match key {
            "avg10" => line.avg10 = value.parse().ok()?,
            "avg60" => line.avg60 = value.parse().ok()?,
            "avg300" => line.avg300 = value.parse().ok()?,
            "total" => line.total_us = value.parse().ok()?,
            _ => {}
        }
    }
    Some(line)
}

/// The three pressure files of a v2 cgroup, by `read`.
fn pressures_v2(read: &dyn Fn(&str) -> Option<String>) -> Pressures {
    let of = |file: &str| read(file).as_deref().and_then(parse_pressure);
    Pressures {
        cpu: of("cpu.pressure"),
        memory: of("memory.pressure"),
        io: of("io.pressure"),
    }
}

/// The PSI of the cgroup at `path`: v2 only (none on v1).
pub fn pressures(version: CgroupVersion, path: &str) -> Pressures {
    match version {
        CgroupVersion::V1 => Pressures::default(),
        CgroupVersion::V2 => {
            let dir = PathBuf::from(CGROUP_ROOT).join(path);
            pressures_v2(&|file| std::fs::read_to_string(dir.join(file)).ok())
        }
    }
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
        pressure: Pressures::default(),
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
        pressure: pressures_v2(read),
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
                pressure: Pressures::default(),
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
        assert_eq!(unlimited.pressure, Pressures::default());
    }

    /// Pressure files as Linux 6.1 writes them for a cgroup.
    #[test]
    fn v2_pressure_files() {
        let usage = parse_v2(&|file| {
            Some(
                match file {
                    "cpu.pressure" => {
                        "some avg10=1.50 avg60=0.75 avg300=0.10 total=123456\n\
                         full avg10=0.50 avg60=0.25 avg300=0.05 total=65432\n"
                    }
                    "memory.pressure" => {
                        "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n\
                         full avg10=0.00 avg60=0.00 avg300=0.00 total=3\n"
                    }
                    // A lone `some` line, as cpu.pressure before Linux 5.13: `full` is zeros.
                    "io.pressure" => "some avg10=12.25 avg60=3.00 avg300=1.00 total=999\n",
                    _ => return None,
                }
                .to_string(),
            )
        });
        let cpu = usage.pressure.cpu.unwrap();
        assert_eq!(
            cpu.some,
            PressureLine {
                avg10: 1.5,
                avg60: 0.75,
                avg300: 0.1,
                total_us: 123456
            }
        );
        assert_eq!(cpu.full.total_us, 65432);
        assert_eq!(cpu.full.avg60, 0.25);
        let memory = usage.pressure.memory.unwrap();
        assert_eq!((memory.some.total_us, memory.full.total_us), (7, 3));
        let io = usage.pressure.io.unwrap();
        assert_eq!((io.some.avg10, io.some.total_us), (12.25, 999));
        assert_eq!(io.full, PressureLine::default());
        // Absent files, an empty file (PSI off for the cgroup), garbage: no pressure.
        assert_eq!(parse_v2(&|_| None).pressure, Pressures::default());
        assert_eq!(parse_pressure(""), None);
        assert_eq!(parse_pressure("full avg10=0.00 total=1\n"), None);
        assert_eq!(
            parse_pressure("some avg10=x avg60=0 avg300=0 total=1\n"),
            None
        );
    }

    #[test]
    fn v1_has_no_pressure() {
        let usage = parse_v1(&|_, file| (file == "memory.usage_in_bytes").then(|| "1\n".into()));
        assert_eq!(usage.pressure, Pressures::default());
        assert_eq!(pressures(CgroupVersion::V1, "any"), Pressures::default());
    }
}
