//! Streaming benchmark: what `kubectl exec` and `kubectl port-forward` cost on a running pod —
//! the Exec RPC plus a whole SPDY exec of `true` (connect, streams, exit status), the same for
//! a port-forwarded HTTP request to a server in the pod, ExecSync for comparison, and exec
//! output throughput — crius next to containerd 1.6 + runc in the same run. Prints medians;
//! asserts nothing.
//!
//! Run with `bash hack/bench.sh`.

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;
#[allow(dead_code)]
mod peer;
#[path = "../stream_client.rs"]
mod stream_client;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crius::cri;

use harness::{Daemon, TestDir};
use peer::{median, ms, timed_pull};
use stream_client::{ExecOptions, ExecStatus, spdy_port_forward, spdy_run};

const ROUNDS: usize = 30;
/// Bytes an exec writes to stdout for the throughput figure.
const THROUGHPUT_BYTES: usize = 256 * 1024 * 1024;

fn pod_config(dir: &TestDir) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "bench-streaming".into(),
            namespace: "bench".into(),
            uid: "uid-streaming".into(),
            attempt: 0,
        }),
        hostname: "bench-streaming".into(),
        log_directory: dir.path().join("logs").display().to_string(),
        labels: HashMap::from([("bench".into(), "streaming".into())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: dir.cgroup_parent("streaming"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(image: &str, name: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

struct Measured {
    exec: Vec<Duration>,
    exec_sync: Vec<Duration>,
    port_forward: Vec<Duration>,
    /// MB/s of exec stdout.
    throughput: f64,
}

async fn scenario(socket: &Path, dir: &TestDir, image: &str) -> Result<Measured, String> {
    let channel = harness::connect(socket).await.unwrap();
    let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(channel);
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config(dir)),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {}", e.message()))?
        .into_inner()
        .pod_sandbox_id;
    let mut ids = Vec::new();
    for (name, command) in [
        ("idle", &["sleep", "999999"][..]),
        (
            "web",
            &["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/etc"][..],
        ),
    ] {
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(image, name, command)),
                sandbox_config: Some(pod_config(dir)),
            })
            .await
            .map_err(|e| format!("CreateContainer: {}", e.message()))?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|e| format!("StartContainer: {}", e.message()))?;
        ids.push(id);
    }
    let idle = ids[0].clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out_only = ExecOptions {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut m = Measured {
        exec: vec![],
        exec_sync: vec![],
        port_forward: vec![],
        throughput: 0.0,
    };
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let url = rt
            .exec(cri::ExecRequest {
                container_id: idle.clone(),
                cmd: vec!["true".into()],
                stdout: true,
                stderr: true,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("Exec: {}", e.message()))?
            .into_inner()
            .url;
        let out = spdy_run(&url, out_only, b"", Duration::from_secs(10))
            .await
            .map_err(|e| format!("exec stream: {e}"))?;
        if out.status != ExecStatus::Success {
            return Err(format!("exec ended with {:?}", out.status));
        }
        m.exec.push(started.elapsed());

        let started = Instant::now();
        rt.exec_sync(cri::ExecSyncRequest {
            container_id: idle.clone(),
            cmd: vec!["true".into()],
            timeout: 10,
        })
        .await
        .map_err(|e| format!("ExecSync: {}", e.message()))?;
        m.exec_sync.push(started.elapsed());

        let started = Instant::now();
        let url = rt
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![8080],
            })
            .await
            .map_err(|e| format!("PortForward: {}", e.message()))?
            .into_inner()
            .url;
        let forward = spdy_port_forward(&url)
            .await
            .map_err(|e| format!("port-forward: {e}"))?;
        let outcome = forward
            .roundtrip(
                8080,
                b"GET /hostname HTTP/1.0\r\n\r\n",
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| format!("port-forward: {e}"))?;
        if !outcome.data.starts_with(b"HTTP/1.") {
            return Err(format!("port-forward answered {:?}", outcome.error));
        }
        m.port_forward.push(started.elapsed());
        let _ = forward.close().await;
    }

    let url = rt
        .exec(cri::ExecRequest {
            container_id: idle.clone(),
            // dd with 1 MiB blocks: busybox head is itself slower than the stream.
            cmd: vec![
                "dd".into(),
                "if=/dev/zero".into(),
                "bs=1048576".into(),
                format!("count={}", THROUGHPUT_BYTES / 1048576),
            ],
            stdout: true,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("Exec: {}", e.message()))?
        .into_inner()
        .url;
    let started = Instant::now();
    let stdout_only = ExecOptions {
        stdout: true,
        ..Default::default()
    };
    let out = spdy_run(&url, stdout_only, b"", Duration::from_secs(120))
        .await
        .map_err(|e| format!("exec stream: {e}"))?;
    let elapsed = started.elapsed();
    if out.stdout.len() != THROUGHPUT_BYTES {
        return Err(format!("got {} bytes of output", out.stdout.len()));
    }
    m.throughput = THROUGHPUT_BYTES as f64 / 1e6 / elapsed.as_secs_f64();

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .map_err(|e| e.message().to_string())?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .map_err(|e| e.message().to_string())?;
    Ok(m)
}

fn report(name: &str, m: &Measured) {
    println!(
        "{name}: Exec+SPDY `true` median {}; ExecSync `true` median {}; PortForward+HTTP GET median {}; exec stdout {:.0} MB/s",
        ms(median(m.exec.clone())),
        ms(median(m.exec_sync.clone())),
        ms(median(m.port_forward.clone())),
        m.throughput
    );
}

#[tokio::main]
async fn main() {
    let path = std::env::var("CRIUS_TEST_IMAGES").expect("run through hack/bench.sh");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let registry = meta["registry"].as_str().unwrap().to_string();
    let busybox = meta["images"]["busybox"]["ref"]
        .as_str()
        .unwrap()
        .to_string();
    let pause = meta["images"]["pause"]["ref"].as_str().unwrap().to_string();

    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    timed_pull(&daemon.socket(), &busybox).await;
    let crius = scenario(&daemon.socket(), &daemon.dir, &busybox)
        .await
        .expect("crius");
    drop(daemon);
    report("crius", &crius);

    let (mut containerd, net_dir) = peer::start_with_cni(&registry, &pause).await;
    timed_pull(&containerd.socket(), &busybox).await;
    let theirs = scenario(&containerd.socket(), &net_dir, &busybox).await;
    peer::stop_with_cni(&mut containerd, &net_dir);
    let theirs = match theirs {
        Ok(m) => m,
        Err(e) => {
            println!("containerd 1.6: could not run the scenario here: {e}");
            return;
        }
    };
    report("containerd 1.6", &theirs);
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    println!(
        "containerd/crius: Exec {:.1}x, ExecSync {:.1}x, PortForward {:.1}x, throughput {:.1}x (crius/containerd)",
        ratio(median(crius.exec.clone()), median(theirs.exec.clone())),
        ratio(
            median(crius.exec_sync.clone()),
            median(theirs.exec_sync.clone())
        ),
        ratio(
            median(crius.port_forward.clone()),
            median(theirs.port_forward.clone())
        ),
        crius.throughput / theirs.throughput
    );
}
