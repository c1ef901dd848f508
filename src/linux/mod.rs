//! The only place with the raw syscalls that build a container: spawning into namespaces, the
//! root filesystem and its mounts, devices, credentials, capabilities and seccomp. Everything
//! here runs in a freshly forked child of the single-threaded pod agent.

pub mod init;
pub mod path;
pub mod rootfs;
pub mod seccomp;
pub mod security;
