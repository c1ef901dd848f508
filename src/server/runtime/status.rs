//! Version, Status, RuntimeConfig and UpdateRuntimeConfig.

use std::collections::HashMap;

use crate::cri;

use crate::context::{Context, settings};
use crate::error::{Error, Result};
use crate::network;

pub const RUNTIME_NAME: &str = "crius";
pub const RUNTIME_API_VERSION: &str = "v1";
/// The CRI version kubelet checks against in VersionResponse.version.
const KUBE_API_VERSION: &str = "0.1.0";

pub fn version() -> cri::VersionResponse {
    cri::VersionResponse {
        version: KUBE_API_VERSION.to_string(),
        runtime_name: RUNTIME_NAME.to_string(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime_api_version: RUNTIME_API_VERSION.to_string(),
    }
}

pub fn status(ctx: &Context, verbose: bool) -> Result<cri::StatusResponse> {
    // Re-read on every call: kubelet polls Status and a CNI config may appear at any time.
    let network = network::discover(&ctx.config.cni.conf_dir, &ctx.config.cni.bin_dirs);
    let runtime_ready = cri::RuntimeCondition {
        r#type: "RuntimeReady".into(),
        status: true,
        reason: String::new(),
        message: String::new(),
    };
    let network_ready = match &network {
        Ok(_) => cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err(e) => cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: false,
            reason: "NetworkPluginNotReady".into(),
            message: format!("Network plugin returns error: cni config load failed: {e}"),
        },
    };
    let mut info = HashMap::new();
    if verbose {
        info.insert("config".to_string(), to_json(&ctx.config)?);
        info.insert("cgroups".to_string(), to_json(&ctx.cgroups)?);
        match &network {
            Ok(net) => {
                info.insert("cniconfig".to_string(), to_json(net)?);
                info.insert("lastCNILoadStatus".to_string(), "OK".to_string());
            }
            Err(e) => {
                info.insert("lastCNILoadStatus".to_string(), e.to_string());
            }
        }
        let pod_cidr = ctx.store.setting(settings::POD_CIDR)?.unwrap_or_default();
        info.insert("podCIDR".to_string(), pod_cidr);
    }
    Ok(cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![runtime_ready, network_ready],
        }),
        info,
        // The default handler; user namespaces come later.
        runtime_handlers: vec![cri::RuntimeHandler {
            name: String::new(),
            features: Some(cri::RuntimeHandlerFeatures {
                recursive_read_only_mounts: crate::linux::rootfs::supports_recursive_read_only(),
                user_namespaces: crate::linux::userns::kernel_supports(),
            }),
        }],
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: true,
            user_namespaces_host_network: false,
        }),
    })
}

pub fn runtime_config() -> cri::RuntimeConfigResponse {
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: match crate::cgroups::driver_kind() {
                crate::cgroups::DriverKind::Cgroupfs => cri::CgroupDriver::Cgroupfs,
                crate::cgroups::DriverKind::Systemd => cri::CgroupDriver::Systemd,
            } as i32,
        }),
    }
}

/// Keeps the pod CIDR kubelet sends; an empty one leaves the stored value as it is.
pub async fn update_runtime_config(
    ctx: &Context,
    req: cri::UpdateRuntimeConfigRequest,
) -> Result<cri::UpdateRuntimeConfigResponse> {
    let pod_cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    if !pod_cidr.is_empty() {
        let normalized = network::parse_pod_cidrs(&pod_cidr)
            .map_err(|reason| Error::invalid("runtime_config.network_config.pod_cidr", reason))?;
        ctx.store
            .set_setting(settings::POD_CIDR, &normalized)
            .await?;
        tracing::info!(pod_cidr = %normalized, "pod CIDR updated");
    }
    Ok(cri::UpdateRuntimeConfigResponse {})
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("encoding status info: {e}")))
}
