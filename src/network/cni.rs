//! Running CNI plugins (spec 0.4 / 1.0) for one pod: ADD through the chain, DEL in reverse;
//! the pod's identity in CNI_ARGS and the runtime's capabilities (port mappings,
//! bandwidth, DNS) in `runtimeConfig`, given only to plugins that declare them.
//!
//! The environment is set on each child process, never on the daemon's own (the daemon is
//! multi-threaded).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{NetworkConfig, find_plugin, join_paths};

/// The interface every pod gets.
pub const POD_IFNAME: &str = "eth0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CniError {
    #[error("CNI plugin {plugin} not found in {dirs}")]
    PluginMissing { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    PluginFailed {
        plugin: String,
        command: &'static str,
        message: String,
    },
}

/// Who the pod is, as plugins see it in CNI_ARGS.
#[derive(Debug, Clone, Default)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub sandbox_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The capabilities a runtime passes through `runtimeConfig`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuntimeCapabilities {
    pub port_mappings: Vec<PortMapping>,
    /// `{"ingressRate":…, "ingressBurst":…, "egressRate":…, "egressBurst":…}`
    pub bandwidth: Option<serde_json::Value>,
    /// `{"servers":[…], "searches":[…], "options":[…]}`
    pub dns: Option<serde_json::Value>,
    /// The node's pod CIDRs (from UpdateRuntimeConfig), for IPAM that takes `ipRanges`.
    pub ip_ranges: Vec<String>,
}

/// What ADD gave the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkResult {
    /// The pod's addresses on its interface, v4 first.
    pub ips: Vec<IpAddr>,
    /// The final plugin result, kept for DEL and CHECK (`prevResult`).
    pub raw: serde_json::Value,
}

pub struct Cni<'a> {
    pub network: &'a NetworkConfig,
    pub bin_dirs: &'a [PathBuf],
}

impl Cni<'_> {
    /// Attaches the pod's network namespace at `netns` (a path) to the network.
    pub fn add(
        &self,
        pod: &PodIdentity,
        netns: &Path,
        caps: &RuntimeCapabilities,
    ) -> Result<NetworkResult, CniError> {
        let mut prev: Option<serde_json::Value> = None;
        for plugin in self.plugins() {
            let config = self.plugin_config(plugin, prev.as_ref(), caps);
            let out = self.exec(plugin, "ADD", &config, pod, netns)?;
            prev = Some(out);
        }
        let raw = prev.unwrap_or_default();
        Ok(NetworkResult {
            ips: result_ips(&raw),
            raw,
        })
    }

    /// Detaches the pod; every plugin runs even if an earlier one fails, and the first failure
    /// is returned. Plugins treat a missing netns or interface as done, so DEL is idempotent.
    pub fn del(
        &self,
        pod: &PodIdentity,
        netns: Option<&Path>,
        caps: &RuntimeCapabilities,
        prev: Option<&serde_json::Value>,
    ) -> Result<(), CniError> {
        let mut first_error = None;
        for plugin in self.plugins().iter().rev() {
            let config = self.plugin_config(plugin, prev, caps);
            let netns = netns.unwrap_or(Path::new(""));
            if let Err(e) = self.exec(plugin, "DEL", &config, pod, netns) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn plugins(&self) -> Vec<&serde_json::Value> {
        self.network.list["plugins"]
            .as_array()
            .map(|p| p.iter().collect())
            .unwrap_or_default()
    }

    /// A plugin's stdin: its own config plus the list's name and version, the previous result,
    /// and the runtime capabilities it asks for.
    fn plugin_config(
        &self,
        plugin: &serde_json::Value,
        prev: Option<&serde_json::Value>,
        caps: &RuntimeCapabilities,
    ) -> serde_json::Value {
        let mut config = plugin.clone();
        let Some(obj) = config.as_object_mut() else {
            return config;
        };
        obj.insert("name".into(), self.network.name.clone().into());
        obj.insert("cniVersion".into(), self.network.cni_version.clone().into());
        if let Some(prev) = prev {
            obj.insert("prevResult".into(), prev.clone());
        }
        let wanted = |cap: &str| plugin["capabilities"][cap].as_bool() == Some(true);
        let mut runtime = serde_json::Map::new();
        if wanted("portMappings") && !caps.port_mappings.is_empty() {
            runtime.insert(
                "portMappings".into(),
                serde_json::to_value(&caps.port_mappings).unwrap_or_default(),
            );
        }
        if let (true, Some(b)) = (wanted("bandwidth"), &caps.bandwidth) {
            runtime.insert("bandwidth".into(), b.clone());
        }
        if let (true, Some(d)) = (wanted("dns"), &caps.dns) {
            runtime.insert("dns".into(), d.clone());
        }
        if wanted("ipRanges") && !caps.ip_ranges.is_empty() {
            // One range set per CIDR (a v4 and a v6 one give a dual-stack pod).
            let sets: Vec<serde_json::Value> = caps
                .ip_ranges
                .iter()
                .map(|cidr| serde_json::json!([{ "subnet": cidr }]))
                .collect();
            runtime.insert("ipRanges".into(), sets.into());
        }
        if !runtime.is_empty() {
            obj.insert("runtimeConfig".into(), runtime.into());
        }
        config
    }

    fn exec(
        &self,
        plugin: &serde_json::Value,
        command: &'static str,
        config: &serde_json::Value,
        pod: &PodIdentity,
        netns: &Path,
    ) -> Result<serde_json::Value, CniError> {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        let binary = find_plugin(&kind, self.bin_dirs).ok_or_else(|| CniError::PluginMissing {
            plugin: kind.clone(),
            dirs: join_paths(self.bin_dirs),
        })?;
        let failed = |message: String| CniError::PluginFailed {
            plugin: kind.clone(),
            command,
            message,
        };
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.sandbox_id, pod.uid
        );
        let path = std::env::join_paths(self.bin_dirs).unwrap_or_default();
        let mut child = Command::new(&binary)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.sandbox_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", path)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("cannot run {}: {e}", binary.display())))?;
        let input = serde_json::to_vec(config).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&input)
                .map_err(|e| failed(format!("writing its config: {e}")))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|e| failed(format!("waiting for it: {e}")))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            // Plugins report errors as {"code":…, "msg":…, "details":…} on stdout.
            let message = serde_json::from_str::<serde_json::Value>(&stdout)
                .ok()
                .and_then(|v| {
                    let msg = v["msg"].as_str()?.to_string();
                    Some(match v["details"].as_str() {
                        Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                        _ => msg,
                    })
                })
                .unwrap_or_else(|| {
                    format!(
                        "{}: {}{}",
                        output.status,
                        stdout.trim(),
                        String::from_utf8_lossy(&output.stderr).trim()
                    )
                });
            return Err(failed(message));
        }
        if command != "ADD" {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&stdout).map_err(|e| failed(format!("invalid result: {e}")))
    }
}

/// The addresses of a result (CNI 0.3+ and 1.0 `ips[].address`), v4 first.
pub fn result_ips(result: &serde_json::Value) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_ips_v4_first() {
        let r = serde_json::json!({"cniVersion":"1.0.0","ips":[
            {"address":"fd00::5/64"},{"address":"10.1.0.5/24","gateway":"10.1.0.1"}]});
        assert_eq!(
            result_ips(&r),
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(result_ips(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn runtime_config_only_for_declared_capabilities() {
        let net = NetworkConfig {
            file: "x".into(),
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec!["bridge".into(), "portmap".into()],
            list: serde_json::json!({"plugins":[
                {"type":"bridge"},
                {"type":"portmap","capabilities":{"portMappings":true}}]}),
        };
        let cni = Cni {
            network: &net,
            bin_dirs: &[],
        };
        let caps = RuntimeCapabilities {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            ..Default::default()
        };
        let plugins = cni.plugins();
        let bridge = cni.plugin_config(plugins[0], None, &caps);
        assert!(bridge.get("runtimeConfig").is_none());
        assert_eq!(bridge["name"], "n");
        let prev = serde_json::json!({"ips":[]});
        let portmap = cni.plugin_config(plugins[1], Some(&prev), &caps);
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
            8080
        );
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"][0]["containerPort"],
            80
        );
        assert_eq!(portmap["prevResult"], prev);
        // The node's pod CIDRs go to plugins that declare ipRanges, one range set each.
        let ipam_net = NetworkConfig {
            list: serde_json::json!({"plugins":[{"type":"bridge","capabilities":{"ipRanges":true}}]}),
            ..net.clone()
        };
        let cni = Cni {
            network: &ipam_net,
            bin_dirs: &[],
        };
        let caps = RuntimeCapabilities {
            ip_ranges: vec!["10.1.0.0/24".into(), "fd00:1::/64".into()],
            ..Default::default()
        };
        let plugins = cni.plugins();
        let bridge = cni.plugin_config(plugins[0], None, &caps);
        assert_eq!(
            bridge["runtimeConfig"]["ipRanges"],
            serde_json::json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]])
        );
    }

    /// Cleans up what the real-plugin test made, whatever happens: the pod's network (DEL),
    /// the netns and the bridge.
    struct HostNetGuard {
        netns: String,
        bridge: String,
        attached: Option<(NetworkConfig, PodIdentity, RuntimeCapabilities)>,
    }

    impl Drop for HostNetGuard {
        fn drop(&mut self) {
            if let Some((network, pod, caps)) = &self.attached {
                let bin_dirs = [PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")];
                let netns = PathBuf::from(format!("/run/netns/{}", self.netns));
                let cni = Cni {
                    network,
                    bin_dirs: &bin_dirs,
                };
                let _ = cni.del(pod, Some(&netns), caps, None);
            }
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.netns])
                .status();
            let _ = Command::new("ip")
                .args(["link", "delete", &self.bridge])
                .status();
        }
    }

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// ADD and DEL with Debian's real bridge, host-local, portmap and loopback plugins
    /// on a network namespace this test makes.
    #[test]
    fn real_plugins_attach_and_detach_a_netns() {
        let bin_dirs = vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")];
        if !nix::unistd::geteuid().is_root() || find_plugin("bridge", &bin_dirs).is_none() {
            eprintln!("skipped: needs root and the CNI plugins");
            return;
        }
        let pid = std::process::id();
        let mut guard = HostNetGuard {
            netns: format!("crius-cnitest-{pid}"),
            bridge: format!("crt{}", pid % 100_000),
            attached: None,
        };
        let tmp = tempfile::tempdir().unwrap();
        let subnet = format!("10.235.{}.0/24", pid % 250);
        let conf = tmp.path().join("10-test.conflist");
        std::fs::write(
            &conf,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "crius-cnitest",
                "plugins": [
                    {"type": "bridge", "bridge": guard.bridge, "isGateway": true,
                     "ipam": {"type": "host-local", "dataDir": tmp.path().join("ipam"),
                              "ranges": [[{"subnet": subnet}]]}},
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            })
            .to_string(),
        )
        .unwrap();
        let network = super::super::load(&conf, &bin_dirs).unwrap();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &guard.netns])
                .status()
                .unwrap()
                .success()
        );
        let netns = PathBuf::from(format!("/run/netns/{}", guard.netns));
        let cni = Cni {
            network: &network,
            bin_dirs: &bin_dirs,
        };
        let pod = PodIdentity {
            namespace: "default".into(),
            name: "web".into(),
            uid: "uid-1".into(),
            sandbox_id: format!("cnitest{pid}"),
        };
        let caps = RuntimeCapabilities {
            port_mappings: vec![PortMapping {
                host_port: 30000 + (pid % 20000) as u16,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            ..Default::default()
        };
        guard.attached = Some((network.clone(), pod.clone(), caps.clone()));
        let result = cni.add(&pod, &netns, &caps).unwrap();
        let pod_ip = result.ips[0];
        assert!(
            pod_ip
                .to_string()
                .starts_with(&format!("10.235.{}.", pid % 250))
        );
        assert!(
            ip(&["-n", &guard.netns, "-4", "addr", "show", POD_IFNAME])
                .contains(&pod_ip.to_string())
        );
        assert!(ip(&["route", "get", &pod_ip.to_string()]).contains(&guard.bridge));

        cni.del(&pod, Some(&netns), &caps, Some(&result.raw))
            .unwrap();
        assert!(!ip(&["-n", &guard.netns, "link"]).contains(POD_IFNAME));
        // The address went back to the pool.
        let leases = std::fs::read_dir(tmp.path().join("ipam/crius-cnitest"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(leases, 0);
        // DEL again, and DEL with the netns gone, are not errors.
        cni.del(&pod, Some(&netns), &caps, Some(&result.raw))
            .unwrap();
        cni.del(&pod, None, &caps, Some(&result.raw)).unwrap();

        // A failing plugin names itself and its message.
        let broken = NetworkConfig {
            list: serde_json::json!({"plugins":[{"type":"host-local"}]}),
            ..network.clone()
        };
        let err = Cni {
            network: &broken,
            bin_dirs: &bin_dirs,
        }
        .add(&pod, &netns, &caps)
        .unwrap_err()
        .to_string();
        assert!(err.contains("host-local") && err.contains("ADD"), "{err}");
        drop(guard);
    }
}
