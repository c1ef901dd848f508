//! End-to-end tests: the real daemon, driven over its CRI socket. Run as root.

mod harness;
mod registry;

mod agent_binary;
mod agent_streams;
mod cgroups;
mod churn;
// Shared with the churn benchmark, which uses more of it.
#[allow(dead_code)]
mod churn_driver;
mod containers;
mod crash;
mod daemon_lifecycle;
mod events;
mod grpc_clients;
mod hostile_input;
mod images;
mod kubelet_shapes;
mod lifecycle;
mod list_streams;
mod mounts;
mod pid_namespace;
mod pod_resize;
mod runtime_info;
mod sandbox;
mod seccomp;
mod service;
mod stats;
mod stop_signals;
mod stream_client;
mod streaming;
mod userns;
