//! What every RPC handler shares: the effective configuration, the store and the image store.

use std::sync::Arc;

use crate::cgroups::CgroupLayout;
use crate::config::Config;
use crate::container::Containers;
use crate::image::Images;
use crate::sandbox::Sandboxes;
use crate::store::Store;
use crate::streaming::server::StreamingServer;

pub struct Context {
    pub config: Config,
    pub store: Arc<Store>,
    pub images: Arc<Images>,
    pub sandboxes: Sandboxes,
    pub containers: Containers,
    /// Detected once at start: the hierarchy cannot change under a running daemon.
    pub cgroups: CgroupLayout,
    /// Hands out the URLs of Exec, Attach and PortForward.
    pub streaming: StreamingServer,
}

/// Settings keys in the store.
pub mod settings {
    /// The pod CIDR(s) kubelet last sent through UpdateRuntimeConfig.
    pub const POD_CIDR: &str = "pod_cidr";
}
