//! What every RPC handler shares: the effective configuration and the metadata store.

use crate::cgroups::CgroupLayout;
use crate::config::Config;
use crate::store::Store;

pub struct Context {
    pub config: Config,
    pub store: Store,
    /// Detected once at start: the hierarchy cannot change under a running daemon.
    pub cgroups: CgroupLayout,
}

/// Settings keys in the store.
pub mod settings {
    /// The pod CIDR(s) kubelet last sent through UpdateRuntimeConfig.
    pub const POD_CIDR: &str = "pod_cidr";
}
