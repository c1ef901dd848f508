//! ContainerStats: CPU, memory, I/O pressure and the writable layer, read from the cgroup and
//! the upper dir on each call; the writable layers' total for ImageFsInfo.

use std::path::{Path, PathBuf};

use super::Containers;
use super::record::ContainerRecord;
use crate::cgroups;
use crate::clock::now_ns;
use crate::cri;

impl Containers {
    /// CPU, memory and writable-layer usage of a container, from its cgroup and upper dir.
    pub fn stats(&self, record: &ContainerRecord) -> cri::ContainerStats {
        let now = now_ns();
        let cg = self.cgroup_usage(&record.cgroup, now);
        let io = cg.io;
        let (bytes, inodes) = dir_usage(&self.bundle(&record.id).join("upper"));
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: record.id.clone(),
                metadata: record.config.metadata.clone(),
                labels: record.config.labels.clone(),
                annotations: record.config.annotations.clone(),
            }),
            cpu: Some(cg.cpu),
            memory: Some(cg.memory),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: now,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.bundles_dir.to_string_lossy().into_owned(),
                }),
                used_bytes: Some(cri::UInt64Value { value: bytes }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            }),
            swap: None,
            io,
        }
    }

    /// CPU (with nano-cores since the previous sample of the same cgroup), memory and I/O
    /// usage: PSI on cgroup v2, none on v1.
    pub fn cgroup_usage(&self, cgroup: &str, now: i64) -> CgroupUsage {
        let usage = cgroups::stats::read(self.cgroup_version, cgroup);
        let value = |v: Option<u64>| v.map(|value| cri::UInt64Value { value });
        let nano_cores = usage.cpu_ns.and_then(|cpu| {
            let mut samples = self.cpu_samples.lock().ok()?;
            let previous = samples.insert(cgroup.to_string(), (now, cpu));
            let (then, before) = previous?;
            let elapsed = now.checked_sub(then).filter(|e| *e > 0)? as u128;
            Some((cpu.saturating_sub(before) as u128 * 1_000_000_000 / elapsed) as u64)
        });
        let cpu = cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: value(usage.cpu_ns),
            usage_nano_cores: value(nano_cores),
            psi: psi_of(usage.pressure.cpu),
        };
        let available = match (usage.memory_limit, usage.working_set) {
            (Some(limit), Some(ws)) => Some(limit.saturating_sub(ws)),
            _ => None,
        };
        let memory = cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: value(usage.working_set),
            available_bytes: value(available),
            usage_bytes: value(usage.memory_usage),
            rss_bytes: value(usage.rss),
            page_faults: value(usage.page_faults),
            major_page_faults: value(usage.major_page_faults),
            psi: psi_of(usage.pressure.memory),
        };
        CgroupUsage {
            cpu,
            memory,
            io: io_usage(usage.pressure.io, now),
            processes: usage.processes.unwrap_or(0),
        }
    }

    /// The writable layers of all containers (their upper dirs): bytes and inodes, for
    /// ImageFsInfo.container_filesystems, and where they live.
    pub fn writable_layers_usage(&self) -> (PathBuf, u64, u64) {
        let (mut bytes, mut inodes) = (0, 0);
        for entry in std::fs::read_dir(&self.bundles_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let (b, i) = dir_usage(&entry.path().join("upper"));
            bytes += b;
            inodes += i;
        }
        (self.bundles_dir.clone(), bytes, inodes)
    }

    /// Forgets CPU samples of cgroups that are gone.
    pub fn forget_samples(&self, cgroup: &str) {
        if let Ok(mut samples) = self.cpu_samples.lock() {
            samples.remove(cgroup);
        }
    }
}

/// A cgroup's usage in CRI terms.
pub struct CgroupUsage {
    pub cpu: cri::CpuUsage,
    pub memory: cri::MemoryUsage,
    /// None where there is no I/O PSI (cgroup v1).
    pub io: Option<cri::IoUsage>,
    pub processes: u64,
}

/// A pressure file as the CRI reports it.
pub fn psi_of(pressure: Option<cgroups::stats::Pressure>) -> Option<cri::PsiStats> {
    let data = |line: cgroups::stats::PressureLine| cri::PsiData {
        total: line.total_us,
        avg10: line.avg10,
        avg60: line.avg60,
        avg300: line.avg300,
    };
    pressure.map(|p| cri::PsiStats {
        full: Some(data(p.full)),
        some: Some(data(p.some)),
    })
}

/// IoUsage (which carries only PSI), where the cgroup has I/O pressure.
pub fn io_usage(pressure: Option<cgroups::stats::Pressure>, now: i64) -> Option<cri::IoUsage> {
    psi_of(pressure).map(|psi| cri::IoUsage {
        timestamp: now,
        psi: Some(psi),
    })
}

/// Bytes (allocated) and inodes under `dir`, not following symlinks or crossing mounts.
fn dir_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            bytes += meta.blocks() * 512;
            inodes += 1;
            if meta.is_dir() && meta.dev() == top.dev() {
                pending.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}
