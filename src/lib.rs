//! crius: a Kubernetes container runtime serving CRI v1 on a unix socket.

pub mod agent;
pub mod cgroups;
pub mod check;
pub mod clock;
pub mod config;
pub mod container;
pub mod context;
/// The CRI v1 API (proto/cri/api.proto, cri-api v0.36.3): messages, tonic clients and servers.
#[allow(clippy::all, clippy::pedantic)]
pub mod cri {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}
pub mod daemon;
pub mod error;
pub mod filter;
pub mod image;
pub mod linux;
pub mod lockfile;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod streaming;
