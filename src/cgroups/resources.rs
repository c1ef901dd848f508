//! CRI resources (LinuxContainerResources) as cgroup settings, for v1 and v2.

use crate::cri;
use cgroups_rs::fs::{HugePageResource, Resources};

use super::CgroupVersion;

/// cpu.shares (v1, 2–262144) to cpu.weight (v2, 1–10000), as runc and kubelet convert it.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The settings to apply; fields the CRI leaves at zero stay unset (the kernel's default).
pub fn from_cri(version: CgroupVersion, r: &cri::LinuxContainerResources) -> Resources {
    let mut out = Resources::default();
    if r.cpu_shares > 0 {
        let shares = r.cpu_shares as u64;
        out.cpu.shares = Some(match version {
            CgroupVersion::V1 => shares,
            CgroupVersion::V2 => shares_to_weight(shares),
        });
    }
    if r.cpu_period > 0 {
        out.cpu.period = Some(r.cpu_period as u64);
    }
    if r.cpu_quota > 0 {
        out.cpu.quota = Some(r.cpu_quota);
    }
    if !r.cpuset_cpus.is_empty() {
        out.cpu.cpus = Some(r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        out.cpu.mems = Some(r.cpuset_mems.clone());
    }
    if r.memory_limit_in_bytes > 0 {
        out.memory.memory_hard_limit = Some(r.memory_limit_in_bytes);
    }
    if r.memory_swap_limit_in_bytes > 0 {
        out.memory.memory_swap_limit = Some(r.memory_swap_limit_in_bytes);
    }
    out.hugepages.limits = r
        .hugepage_limits
        .iter()
        .map(|h| HugePageResource {
            size: h.page_size.clone(),
            limit: h.limit,
        })
        .collect();
    out
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
        let r = cri::LinuxContainerResources {
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let v2 = from_cri(CgroupVersion::V2, &r);
        assert_eq!(v2.cpu.shares, Some(39));
        assert_eq!(v2.cpu.quota, Some(50_000));
        assert_eq!(v2.memory.memory_hard_limit, Some(64 << 20));
        let v1 = from_cri(CgroupVersion::V1, &r);
        assert_eq!(v1.cpu.shares, Some(1024));
        assert_eq!(v1.cpu.cpus.as_deref(), Some("0"));
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
