//! ListMetricDescriptors and ListPodSandboxMetrics: the cAdvisor-named metrics kubelet asks
//! for when it takes pod and container metrics from the runtime. Values are integers, as the
//! CRI carries them, in the unit the name says: CPU time in whole seconds (as cAdvisor's and
//! CRI-O's `container_cpu_usage_seconds_total`), sizes in bytes.

use crate::cri;

use crate::context::Context;
use crate::error::Result;

/// Labels of container metrics, in the order of their values.
const CONTAINER_LABELS: &[&str] = &["container", "id", "image", "name", "namespace", "pod"];
/// Labels of pod network metrics.
const NETWORK_LABELS: &[&str] = &["interface", "id", "name", "namespace", "pod"];

/// (name, help, counter?, container or network)
const DESCRIPTORS: &[(&str, &str, bool, bool)] = &[
    (
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed, in seconds.",
        true,
        true,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage, including all memory regardless of when it was accessed.",
        false,
        true,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set: usage minus inactive file pages.",
        false,
        true,
    ),
    (
        "container_memory_rss",
        "Size of RSS (anonymous memory).",
        false,
        true,
    ),
    (
        "container_memory_failures_total",
        "Cumulative page faults.",
        true,
        true,
    ),
    (
        "container_fs_usage_bytes",
        "Bytes used by the container's writable layer.",
        false,
        true,
    ),
    (
        "container_fs_inodes_total",
        "Inodes used by the container's writable layer.",
        false,
        true,
    ),
    (
        "container_last_seen",
        "Last time the container was seen by the runtime, in seconds since the epoch.",
        false,
        true,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative bytes received.",
        true,
        false,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative bytes transmitted.",
        true,
        false,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative errors while receiving.",
        true,
        false,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative errors while transmitting.",
        true,
        false,
    ),
];

pub fn descriptors() -> cri::ListMetricDescriptorsResponse {
    cri::ListMetricDescriptorsResponse {
        descriptors: DESCRIPTORS
            .iter()
            .map(|(name, help, _, container)| cri::MetricDescriptor {
                name: name.to_string(),
                help: help.to_string(),
                label_keys: if *container {
                    CONTAINER_LABELS
                } else {
                    NETWORK_LABELS
                }
                .iter()
                .map(|s| s.to_string())
                .collect(),
            })
            .collect(),
    }
}

/// Nanoseconds as the whole seconds a metric named `_seconds` carries (the CRI's values are
/// integers).
fn whole_seconds(nanoseconds: u64) -> u64 {
    nanoseconds / 1_000_000_000
}

fn metric(
    name: &str,
    timestamp: i64,
    labels: &[String],
    value: Option<u64>,
) -> Option<cri::Metric> {
    let (_, _, counter, _) = DESCRIPTORS.iter().find(|d| d.0 == name)?;
    Some(cri::Metric {
        name: name.to_string(),
        timestamp,
        metric_type: if *counter {
            cri::MetricType::Counter
        } else {
            cri::MetricType::Gauge
        } as i32,
        label_values: labels.to_vec(),
        value: Some(cri::UInt64Value { value: value? }),
    })
}

pub async fn list(ctx: &Context) -> Result<cri::ListPodSandboxMetricsResponse> {
    Ok(cri::ListPodSandboxMetricsResponse {
        pod_metrics: every_pod(ctx).await?,
    })
}

/// The metrics of every pod (ListPodSandboxMetrics, StreamPodSandboxMetrics).
pub async fn every_pod(ctx: &Context) -> Result<Vec<cri::PodSandboxMetrics>> {
    let mut pod_metrics = Vec::new();
    let records = ctx.containers.list();
    for pod in ctx.sandboxes.list()? {
        let stats = super::stats::pod_stats(ctx, &pod, &records).await?;
        let meta = pod.metadata();
        let linux = stats.linux.unwrap_or_default();
        let mut metrics = Vec::new();
        if let Some(network) = &linux.network {
            for i in &network.interfaces {
                let labels = vec![
                    i.name.clone(),
                    pod.id.clone(),
                    meta.name.clone(),
                    meta.namespace.clone(),
                    meta.name.clone(),
                ];
                let v = |x: &Option<cri::UInt64Value>| x.as_ref().map(|v| v.value);
                for (name, value) in [
                    ("container_network_receive_bytes_total", v(&i.rx_bytes)),
                    ("container_network_transmit_bytes_total", v(&i.tx_bytes)),
                    ("container_network_receive_errors_total", v(&i.rx_errors)),
                    ("container_network_transmit_errors_total", v(&i.tx_errors)),
                ] {
                    metrics.extend(metric(name, network.timestamp, &labels, value));
                }
            }
        }
        let container_metrics = linux
            .containers
            .iter()
            .filter_map(|c| {
                let attributes = c.attributes.as_ref()?;
                let record = records.iter().find(|r| r.id == attributes.id)?;
                let name = attributes
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let image = record
                    .config
                    .image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default();
                let labels = vec![
                    name.clone(),
                    record.id.clone(),
                    image,
                    name,
                    meta.namespace.clone(),
                    meta.name.clone(),
                ];
                let v = |x: Option<&cri::UInt64Value>| x.map(|v| v.value);
                let cpu = c.cpu.as_ref();
                let memory = c.memory.as_ref();
                let fs = c.writable_layer.as_ref();
                let ts = cpu.map_or(0, |c| c.timestamp);
                let values = [
                    (
                        "container_cpu_usage_seconds_total",
                        v(cpu.and_then(|c| c.usage_core_nano_seconds.as_ref())).map(whole_seconds),
                    ),
                    (
                        "container_memory_usage_bytes",
                        v(memory.and_then(|m| m.usage_bytes.as_ref())),
                    ),
                    (
                        "container_memory_working_set_bytes",
                        v(memory.and_then(|m| m.working_set_bytes.as_ref())),
                    ),
                    (
                        "container_memory_rss",
                        v(memory.and_then(|m| m.rss_bytes.as_ref())),
                    ),
                    (
                        "container_memory_failures_total",
                        v(memory.and_then(|m| m.page_faults.as_ref())),
                    ),
                    (
                        "container_fs_usage_bytes",
                        v(fs.and_then(|f| f.used_bytes.as_ref())),
                    ),
                    (
                        "container_fs_inodes_total",
                        v(fs.and_then(|f| f.inodes_used.as_ref())),
                    ),
                    ("container_last_seen", Some(whole_seconds(ts.max(0) as u64))),
                ];
                Some(cri::ContainerMetrics {
                    container_id: record.id.clone(),
                    metrics: values
                        .iter()
                        .filter_map(|(name, value)| metric(name, ts, &labels, *value))
                        .collect(),
                })
            })
            .collect();
        pod_metrics.push(cri::PodSandboxMetrics {
            pod_sandbox_id: pod.id.clone(),
            metrics,
            container_metrics,
        });
    }
    Ok(pod_metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_metrics_say_seconds_and_carry_seconds() {
        for (name, help, _, _) in DESCRIPTORS {
            if name.contains("_seconds") {
                assert!(
                    help.contains("seconds") && !help.contains("nanoseconds"),
                    "{name}: {help}"
                );
            }
        }
        assert_eq!(whole_seconds(2_999_999_999), 2);
        assert_eq!(whole_seconds(3_000_000_000), 3);
        let m = metric(
            "container_cpu_usage_seconds_total",
            1,
            &[],
            Some(whole_seconds(7_500_000_000)),
        )
        .unwrap();
        assert_eq!(m.value.unwrap().value, 7);
        assert_eq!(m.metric_type, cri::MetricType::Counter as i32);
    }
}
