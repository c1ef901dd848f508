//! End-to-end tests: the real daemon, driven over its CRI socket. Run as root.

mod harness;
mod registry;

mod agent_streams;
mod containers;
mod daemon_lifecycle;
mod events;
mod hostile_input;
mod images;
mod runtime_info;
mod sandbox;
mod stats;
mod stream_client;
mod streaming;
