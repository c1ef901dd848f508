//! The daemon's own Prometheus metrics: RPC counts and latency by method and status code,
//! image pulls and pulled bytes, store transaction latency (recorded as they happen), and pods,
//! containers and pod agents by state (read at scrape time). Served as Prometheus text on
//! `metrics.address` when set.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if s <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

#[derive(Default)]
pub struct Metrics {
    /// (method, code) -> latency histogram (its count is the request count).
    rpcs: Mutex<BTreeMap<(String, String), Histogram>>,
    store_transactions: Mutex<Histogram>,
    pulls_ok: AtomicU64,
    pulls_failed: AtomicU64,
    pulled_bytes: AtomicU64,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// What the daemon's state says at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub pods_ready: u64,
    pub pods_not_ready: u64,
    pub containers: BTreeMap<&'static str, u64>,
    pub agents_running: u64,
}

impl Metrics {
    pub fn observe_rpc(&self, method: &str, code: &str, took: Duration) {
        if let Ok(mut rpcs) = self.rpcs.lock() {
            rpcs.entry((method.to_string(), code.to_string()))
                .or_default()
                .observe(took);
        }
    }

    pub fn observe_store_transaction(&self, took: Duration) {
        if let Ok(mut h) = self.store_transactions.lock() {
            h.observe(took);
        }
    }

    pub fn pull_done(&self, ok: bool, bytes: u64) {
        if ok {
            self.pulls_ok.fetch_add(1, Ordering::Relaxed);
            self.pulled_bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.pulls_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, state: &Snapshot) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP crius_rpc_duration_seconds CRI RPC latency by method and status code.\n",
        );
        out.push_str("# TYPE crius_rpc_duration_seconds histogram\n");
        let rpcs = self.rpcs.lock().map(|r| r.clone()).unwrap_or_default();
        for ((method, code), h) in &rpcs {
            h.render(
                &mut out,
                "crius_rpc_duration_seconds",
                &format!("method=\"{method}\",code=\"{code}\""),
            );
        }
        out.push_str(
            "# HELP crius_rpc_requests_total CRI RPCs served by method and status code.\n",
        );
        out.push_str("# TYPE crius_rpc_requests_total counter\n");
        for ((method, code), h) in &rpcs {
            let _ = writeln!(
                out,
                "crius_rpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP crius_image_pulls_total Image pulls by result.\n");
        out.push_str("# TYPE crius_image_pulls_total counter\n");
        let _ = writeln!(
            out,
            "crius_image_pulls_total{{result=\"ok\"}} {}",
            self.pulls_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "crius_image_pulls_total{{result=\"error\"}} {}",
            self.pulls_failed.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP crius_image_pulled_bytes_total Compressed bytes of the images pulled.\n",
        );
        out.push_str("# TYPE crius_image_pulled_bytes_total counter\n");
        let _ = writeln!(
            out,
            "crius_image_pulled_bytes_total {}",
            self.pulled_bytes.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP crius_store_transaction_duration_seconds Metadata store write transactions.\n",
        );
        out.push_str("# TYPE crius_store_transaction_duration_seconds histogram\n");
        if let Ok(h) = self.store_transactions.lock() {
            h.render(&mut out, "crius_store_transaction_duration_seconds", "");
        }
        out.push_str("# HELP crius_pods Pod sandboxes by state.\n# TYPE crius_pods gauge\n");
        let _ = writeln!(out, "crius_pods{{state=\"ready\"}} {}", state.pods_ready);
        let _ = writeln!(
            out,
            "crius_pods{{state=\"notready\"}} {}",
            state.pods_not_ready
        );
        out.push_str(
            "# HELP crius_containers Containers by state.\n# TYPE crius_containers gauge\n",
        );
        for (s, n) in &state.containers {
            let _ = writeln!(out, "crius_containers{{state=\"{s}\"}} {n}");
        }
        out.push_str(
            "# HELP crius_pod_agents Pod agents running.\n# TYPE crius_pod_agents gauge\n",
        );
        let _ = writeln!(out, "crius_pod_agents {}", state.agents_running);
        out
    }
}

/// Serves GET /metrics on `listener` with `snapshot()` taken per scrape. A minimal HTTP/1.x
/// responder: one request per connection, a bounded head, a deadline per connection.
pub async fn serve<F, Fut>(listener: tokio::net::TcpListener, snapshot: F)
where
    F: Fn() -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Snapshot> + Send,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let exchange = async {
                let mut head = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    let n = conn.read(&mut buf).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let (status, body) =
                    if line.starts_with("GET ") && path.split('?').next() == Some("/metrics") {
                        ("200 OK", METRICS.render(&snapshot().await))
                    } else {
                        ("404 Not Found", "not found: try /metrics\n".to_string())
                    };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(reply.as_bytes()).await.ok()
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), exchange).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.observe_rpc("Version", "Ok", Duration::from_micros(300));
        m.observe_rpc("Version", "Ok", Duration::from_millis(30));
        m.pull_done(true, 1000);
        let text = m.render(&Snapshot {
            pods_ready: 2,
            ..Default::default()
        });
        assert!(text.contains("crius_rpc_requests_total{method=\"Version\",code=\"Ok\"} 2"));
        assert!(text.contains(
            "crius_rpc_duration_seconds_bucket{method=\"Version\",code=\"Ok\",le=\"0.001\"} 1"
        ));
        assert!(text.contains(
            "crius_rpc_duration_seconds_bucket{method=\"Version\",code=\"Ok\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("crius_image_pulled_bytes_total 1000"));
        assert!(text.contains("crius_pods{state=\"ready\"} 2"));
        assert!(text.contains("crius_store_transaction_duration_seconds_count 0"));
    }

    /// Every `_seconds` metric carries seconds: an observation of 1.5 s adds 1.5 to the sum and
    /// lands in the buckets bounded at 5 (seconds), not at 1 or below.
    #[test]
    fn seconds_metrics_carry_seconds() {
        assert!(BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert!(BUCKETS[0] >= 0.0001 && BUCKETS[BUCKETS.len() - 1] <= 60.0);
        let m = Metrics::default();
        m.observe_rpc("PullImage", "Ok", Duration::from_millis(1500));
        m.observe_store_transaction(Duration::from_millis(1500));
        let text = m.render(&Snapshot::default());
        let value = |line: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(line))
                .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        for name in [
            "crius_rpc_duration_seconds",
            "crius_store_transaction_duration_seconds",
        ] {
            let labels = if name.starts_with("crius_rpc") {
                "method=\"PullImage\",code=\"Ok\","
            } else {
                ""
            };
            let sum = value(&format!("{name}_sum"));
            assert!((sum - 1.5).abs() < 1e-9, "{name}_sum {sum}");
            assert_eq!(value(&format!("{name}_bucket{{{labels}le=\"1\"}}")), 0.0);
            assert_eq!(value(&format!("{name}_bucket{{{labels}le=\"5\"}}")), 1.0);
        }
        for line in text
            .lines()
            .filter(|l| l.starts_with("# HELP") && l.contains("_seconds"))
        {
            assert!(
                !line.contains("millisecond") && !line.contains("microsecond"),
                "{line}"
            );
        }
    }
}
