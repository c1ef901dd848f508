//! The pod agent: one small process per pod that holds the pod's namespaces (and later is the
//! parent of its containers). The daemon starts it as `crius pod-agent` and talks to it over a
//! unix socket with the messages of proto/agent.proto, each framed by a 4-byte big-endian
//! length.

pub mod client;
pub mod process;
pub mod spawn;
pub mod trim;

/// The messages of proto/agent.proto.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/crius.agent.v1.rs"));
}

/// Messages are small; a larger frame is a protocol error, not an allocation.
pub const MAX_FRAME: usize = 1024 * 1024;

pub fn frame(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// How a container's process ended, as the agent writes it to the container's exit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal that killed it.
    pub exit_code: i32,
    /// The signal that killed it; 0 when it exited.
    pub signal: i32,
    /// Nanoseconds since the epoch.
    pub finished_at: i64,
    /// The container's cgroup saw an OOM kill.
    pub oom_killed: bool,
}
