//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: read from the
//! cgroups, the containers' upper dirs and the pods' network namespaces on each call.

use std::path::Path;

use crate::cri;

use crate::cgroups::{self, stats::Pressures};
use crate::clock::now_ns;
use crate::container::record::ContainerRecord;
use crate::container::stats::{io_usage, psi_of};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::filter::labels_match;
use crate::sandbox::record::SandboxRecord;

pub async fn container(ctx: &Context, id: &str) -> Result<cri::ContainerStatsResponse> {
    let record = ctx.containers.get(id).ok_or_else(|| Error::NotFound {
        kind: "container",
        id: id.to_string(),
    })?;
    let stats = tokio::task::block_in_place(|| ctx.containers.stats(&record));
    Ok(cri::ContainerStatsResponse { stats: Some(stats) })
}

pub async fn list_containers(
    ctx: &Context,
    req: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse> {
    Ok(cri::ListContainerStatsResponse {
        stats: containers_matching(ctx, req.filter),
    })
}

/// Stats of the containers the filter selects (ListContainerStats, StreamContainerStats).
pub fn containers_matching(
    ctx: &Context,
    filter: Option<cri::ContainerStatsFilter>,
) -> Vec<cri::ContainerStats> {
    let filter = filter.unwrap_or_default();
    let records =
        ctx.containers
            .list_matching(&filter.id, &filter.pod_sandbox_id, &filter.label_selector);
    tokio::task::block_in_place(|| records.iter().map(|r| ctx.containers.stats(r)).collect())
}

/// The pod's usage: its agent's cgroup plus its containers', its interfaces' counters.
pub(super) async fn pod_stats(
    ctx: &Context,
    pod: &SandboxRecord,
    all_containers: &[ContainerRecord],
) -> Result<cri::PodSandboxStats> {
    let containers: Vec<&ContainerRecord> = all_containers
        .iter()
        .filter(|c| c.sandbox_id == pod.id)
        .collect();
    let now = now_ns();
    let stats = tokio::task::block_in_place(|| {
        let mut cgroups: Vec<String> = containers.iter().map(|c| c.cgroup.clone()).collect();
        cgroups.extend(pod.cgroup.clone());
        let mut cpu = 0u64;
        let mut nano = None::<u64>;
        let (mut working_set, mut usage, mut rss, mut faults, mut major, mut procs) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for cg in &cgroups {
            let sample = ctx.containers.cgroup_usage(cg, now);
            let (c, m, p) = (sample.cpu, sample.memory, sample.processes);
            let v = |x: &Option<cri::UInt64Value>| x.as_ref().map_or(0, |v| v.value);
            cpu += v(&c.usage_core_nano_seconds);
            if let Some(n) = &c.usage_nano_cores {
                nano = Some(nano.unwrap_or(0) + n.value);
            }
            working_set += v(&m.working_set_bytes);
            usage += v(&m.usage_bytes);
            rss += v(&m.rss_bytes);
            faults += v(&m.page_faults);
            major += v(&m.major_page_faults);
            procs += p;
        }
        let value = |value| Some(cri::UInt64Value { value });
        let pressure = pod_pressure(ctx, pod);
        let network = pod.netns.as_deref().map(|netns| {
            network_usage(
                pod.agent.filter(|a| a.is_alive()).map(|a| a.pid),
                netns,
                now,
            )
        });
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: pod.id.clone(),
                metadata: Some(pod.metadata()),
                labels: pod.config.labels.clone(),
                annotations: pod.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: value(cpu),
                    usage_nano_cores: nano.map(|value| cri::UInt64Value { value }),
                    psi: psi_of(pressure.cpu),
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: value(working_set),
                    available_bytes: None,
                    usage_bytes: value(usage),
                    rss_bytes: value(rss),
                    page_faults: value(faults),
                    major_page_faults: value(major),
                    psi: psi_of(pressure.memory),
                }),
                network: network.flatten(),
                io: io_usage(pressure.io, now),
                process: Some(cri::ProcessUsage {
                    timestamp: now,
                    process_count: value(procs),
                }),
                containers: containers.iter().map(|c| ctx.containers.stats(c)).collect(),
            }),
            windows: None,
        }
    });
    Ok(stats)
}

/// The pod's PSI: that of the pod's cgroup, the parent kubelet names, which holds the agent
/// and every container (pressure cannot be summed from theirs). None on cgroup v1, and for a
/// pod in the default parent, which other pods share.
fn pod_pressure(ctx: &Context, pod: &SandboxRecord) -> Pressures {
    if pod.named_cgroup_parent().trim().is_empty() {
        return Pressures::default();
    }
    match pod.cgroup_parent() {
        Ok(parent) => cgroups::stats::pressures(ctx.cgroups.version, &parent),
        Err(_) => Pressures::default(),
    }
}

/// Interface counters inside the pod's network namespace (lo left out; eth0 is the default):
/// through the agent, which lives in it, else from a thread that enters the pinned namespace.
fn network_usage(agent: Option<i32>, netns: &Path, now: i64) -> Option<cri::NetworkUsage> {
    let text =
        match agent.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()) {
            Some(text) => text,
            None => {
                let file = std::fs::File::open(netns).ok()?;
                // /proc/thread-self/net shows the namespace of the reading thread.
                std::thread::spawn(move || {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
                    std::fs::read_to_string("/proc/thread-self/net/dev").ok()
                })
                .join()
                .ok()??
            }
        };
    let interfaces = parse_net_dev(&text);
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or(interfaces.first())
        .cloned();
    Some(cri::NetworkUsage {
        timestamp: now,
        default_interface,
        interfaces,
    })
}

/// /proc/net/dev: `name: rx_bytes packets errs ... tx_bytes packets errs ...`.
fn parse_net_dev(text: &str) -> Vec<cri::NetworkInterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let n: Vec<u64> = counters
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let value = |i: usize| n.get(i).map(|&value| cri::UInt64Value { value });
            Some(cri::NetworkInterfaceUsage {
                name: name.to_string(),
                rx_bytes: value(0),
                rx_errors: value(2),
                tx_bytes: value(8),
                tx_errors: value(10),
            })
        })
        .collect()
}

pub async fn pod(ctx: &Context, id: &str) -> Result<cri::PodSandboxStatsResponse> {
    let pod = ctx.sandboxes.get(id)?.ok_or_else(|| Error::NotFound {
        kind: "pod sandbox",
        id: id.to_string(),
    })?;
    let containers = ctx.containers.list();
    Ok(cri::PodSandboxStatsResponse {
        stats: Some(pod_stats(ctx, &pod, &containers).await?),
    })
}

pub async fn list_pods(
    ctx: &Context,
    req: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse> {
    Ok(cri::ListPodSandboxStatsResponse {
        stats: pods_matching(ctx, req.filter).await?,
    })
}

/// Stats of the pods the filter selects (ListPodSandboxStats, StreamPodSandboxStats).
pub async fn pods_matching(
    ctx: &Context,
    filter: Option<cri::PodSandboxStatsFilter>,
) -> Result<Vec<cri::PodSandboxStats>> {
    let filter = filter.unwrap_or_default();
    // One pass over the containers for all pods: kubelet polls this for every pod at once.
    let containers = ctx.containers.list();
    let mut stats = Vec::new();
    for pod in ctx.sandboxes.list()? {
        if (filter.id.is_empty() || pod.id.starts_with(&filter.id))
            && labels_match(&pod.config.labels, &filter.label_selector)
        {
            stats.push(pod_stats(ctx, &pod, &containers).await?);
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    #[test]
    fn net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    5000      10    1    0    0     0          0         0     7000      12    2    0    0     0       0          0\n";
        let i = super::parse_net_dev(text);
        assert_eq!(i.len(), 1);
        assert_eq!(i[0].name, "eth0");
        assert_eq!(i[0].rx_bytes.as_ref().unwrap().value, 5000);
        assert_eq!(i[0].rx_errors.as_ref().unwrap().value, 1);
        assert_eq!(i[0].tx_bytes.as_ref().unwrap().value, 7000);
        assert_eq!(i[0].tx_errors.as_ref().unwrap().value, 2);
    }
}
