//! End-to-end tests: the real daemon, driven over its CRI socket. Run as root.

mod harness;

mod daemon_lifecycle;
mod runtime_info;
