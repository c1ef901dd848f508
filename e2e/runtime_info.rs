//! Version, Status, RuntimeConfig, UpdateRuntimeConfig and the RPCs not built yet.

use std::collections::HashMap;

use crius::cri;
use tonic::Code;

use crate::harness::{Daemon, pod_cidr_request};

fn condition(status: &cri::StatusResponse, kind: &str) -> cri::RuntimeCondition {
    status
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status:?}"))
        .clone()
}

pub(crate) async fn status(daemon: &Daemon, verbose: bool) -> cri::StatusResponse {
    daemon
        .runtime()
        .await
        .unwrap()
        .status(cri::StatusRequest { verbose })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_crius_and_the_crate_version() {
    let daemon = Daemon::start("").await;
    let v = daemon
        .runtime()
        .await
        .unwrap()
        .version(cri::VersionRequest {
            version: "0.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "crius");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.version, "0.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_the_cni_config_dir() {
    let daemon = Daemon::start("").await;

    let s = status(&daemon, false).await;
    assert!(condition(&s, "RuntimeReady").status);
    let net = condition(&s, "NetworkReady");
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message
            .contains(&daemon.dir.cni_conf_dir().display().to_string()),
        "{}",
        net.message
    );
    assert!(s.info.is_empty(), "info without verbose: {:?}", s.info);

    // A config that names a plugin this host lacks is not a usable network.
    std::fs::write(
        daemon.dir.cni_conf_dir().join("05-bad.conflist"),
        r#"{"cniVersion":"1.0.0","name":"bad","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let net = condition(&status(&daemon, false).await, "NetworkReady");
    assert!(!net.status);
    assert!(net.message.contains("no-such-plugin"), "{}", net.message);

    // Re-checked on each call: adding a valid config makes the network ready.
    let network = daemon.dir.write_bridge_cni_config();
    let s = status(&daemon, true).await;
    let net = condition(&s, "NetworkReady");
    assert!(net.status, "{net:?}");
    assert_eq!(net.reason, "");

    // verbose: the effective config as JSON, and the network chosen.
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(
        config["root"],
        daemon.dir.root().display().to_string(),
        "{config}"
    );
    assert_eq!(
        config["cni"]["conf_dir"],
        daemon.dir.cni_conf_dir().display().to_string()
    );
    let cni: serde_json::Value = serde_json::from_str(&s.info["cniconfig"]).unwrap();
    assert_eq!(cni["name"], network.name);
    assert_eq!(s.info["lastCNILoadStatus"], "OK");

    // And removing it makes it not ready again.
    std::fs::remove_file(daemon.dir.cni_conf_dir().join("10-crius-e2e.conflist")).unwrap();
    assert!(!condition(&status(&daemon, false).await, "NetworkReady").status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_config_reports_the_configured_cgroup_driver() {
    // cgroupfs by default; the VM stage also runs the suite with CRIUS_E2E_CGROUP_DRIVER=systemd.
    let expected = match std::env::var(crate::harness::CGROUP_DRIVER_ENV).as_deref() {
        Ok("systemd") => cri::CgroupDriver::Systemd,
        _ => cri::CgroupDriver::Cgroupfs,
    };
    let daemon = Daemon::start("").await;
    let r = daemon
        .runtime()
        .await
        .unwrap()
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.linux.unwrap().cgroup_driver, expected as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_runtime_config_keeps_the_pod_cidr_and_refuses_bad_ones() {
    let daemon = Daemon::start("").await;
    let mut rt = daemon.runtime().await.unwrap();
    rt.update_runtime_config(pod_cidr_request("10.88.0.0/16, fd00:88::/64"))
        .await
        .unwrap();
    let err = rt
        .update_runtime_config(pod_cidr_request("10.88.0.0/40"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("pod_cidr"), "{}", err.message());
    // Neither a bad value nor an empty one changes what is kept.
    rt.update_runtime_config(pod_cidr_request(""))
        .await
        .unwrap();
    let s = status(&daemon, true).await;
    assert_eq!(s.info["podCIDR"], "10.88.0.0/16,fd00:88::/64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_not_built_yet_answer_unimplemented_with_their_name() {
    let daemon = Daemon::start("").await;
    let mut rt = daemon.runtime().await.unwrap();
    let err = rt
        .checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(
        err.message().contains("CheckpointContainer"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rpc_is_logged_with_method_duration_and_code() {
    let daemon = Daemon::start("log_format = \"json\"").await;
    let mut rt = daemon.runtime().await.unwrap();
    rt.runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap();
    let _ = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: "no-such-container".into(),
            verbose: false,
        })
        .await;
    let log = daemon.dir.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |method: &str| -> HashMap<String, serde_json::Value> {
        let e = events
            .iter()
            .find(|e| e["span"]["method"] == method)
            .unwrap_or_else(|| panic!("no log event for {method}:\n{log}"));
        serde_json::from_value(e["fields"].clone()).unwrap()
    };
    let ok = find("RuntimeConfig");
    assert_eq!(ok["code"], "Ok");
    assert!(ok["duration_us"].is_u64());
    let failed = find("ContainerStatus");
    assert_eq!(failed["code"], "NotFound");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("no-such-container")
    );
}
