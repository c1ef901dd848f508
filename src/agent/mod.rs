//! The pod agent: one small process per pod that holds the pod's namespaces (and later is the
//! parent of its containers). The daemon starts it from the `crius-agent` binary (src/agent_main.rs) and talks to it over a
//! unix socket with the messages of proto/agent.proto, each framed by a 4-byte big-endian
//! length.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

mod attach;
pub mod client;
pub mod error;
pub mod pid_one;
pub mod process;
pub mod spawn;

/// The messages of proto/agent.proto.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/crius.agent.v1.rs"));
}

/// The version of the agent protocol (proto/agent.proto). Raise it with any change an agent
/// of the previous version would not understand.
pub const PROTOCOL_VERSION: u32 = 1;
/// What `crius-agent --version` prints; the daemon refuses an agent binary that says otherwise.
pub const VERSION_LINE: &str = concat!("crius-agent ", env!("CARGO_PKG_VERSION"), " protocol 1");

/// The largest request the agent reads: an ExecSync command at the kernel's argument limit
/// fits many times over; a larger frame is a protocol error, not an allocation.
pub const MAX_REQUEST: usize = 16 * 1024 * 1024;
/// The largest answer the daemon reads: an ExecSync's stdout and stderr, 16 MiB each at most.
pub const MAX_ANSWER: usize = 48 * 1024 * 1024;

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

impl ExitStatus {
    pub fn to_wire(self) -> proto::ExitInfo {
        proto::ExitInfo {
            exit_code: self.exit_code,
            signal: self.signal,
            finished_at: self.finished_at,
            oom_killed: self.oom_killed,
        }
    }

    pub fn from_wire(exit: &proto::ExitInfo) -> ExitStatus {
        ExitStatus {
            exit_code: exit.exit_code,
            signal: exit.signal,
            finished_at: exit.finished_at,
            oom_killed: exit.oom_killed,
        }
    }
}

/// The stdio of a streamed process (ExecStream, Attach) as it travels from the agent to the
/// daemon: the descriptors go with the first answer, Response.fds says which is which.
#[derive(Debug, Default)]
pub struct StreamFds {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub terminal: Option<OwnedFd>,
}

/// At most one descriptor of each kind travels.
pub const MAX_STREAM_FDS: usize = 4;

impl StreamFds {
    /// The descriptors in sending order and their kinds, for Response.fds.
    pub fn into_wire(self) -> (Vec<i32>, Vec<OwnedFd>) {
        [
            (proto::StreamFd::Stdin, self.stdin),
            (proto::StreamFd::Stdout, self.stdout),
            (proto::StreamFd::Stderr, self.stderr),
            (proto::StreamFd::Terminal, self.terminal),
        ]
        .into_iter()
        .filter_map(|(kind, fd)| fd.map(|fd| (kind as i32, fd)))
        .unzip()
    }

    /// Sorts received descriptors by the kinds the answer gave them; a count that does not
    /// match, an unknown kind or a kind twice is a protocol error (every descriptor is closed).
    pub fn from_wire(kinds: &[i32], fds: Vec<OwnedFd>) -> Result<StreamFds, String> {
        if kinds.len() != fds.len() {
            return Err(format!(
                "the agent announced {} descriptors and sent {}",
                kinds.len(),
                fds.len()
            ));
        }
        let mut out = StreamFds::default();
        for (kind, fd) in kinds.iter().zip(fds) {
            let slot = match proto::StreamFd::try_from(*kind) {
                Ok(proto::StreamFd::Stdin) => &mut out.stdin,
                Ok(proto::StreamFd::Stdout) => &mut out.stdout,
                Ok(proto::StreamFd::Stderr) => &mut out.stderr,
                Ok(proto::StreamFd::Terminal) => &mut out.terminal,
                _ => return Err(format!("descriptor of unknown kind {kind}")),
            };
            if slot.replace(fd).is_some() {
                return Err(format!("descriptor of kind {kind} sent twice"));
            }
        }
        Ok(out)
    }
}

/// Writes `data` on a (blocking) unix stream socket with `fds` attached to its first byte.
pub fn send_with_fds(socket: &impl AsRawFd, data: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let control: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    let sent = loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &[std::io::IoSlice::new(data)],
            control,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // The descriptors went with the first byte; the rest is plain data.
    let mut rest = &data[sent..];
    while !rest.is_empty() {
        match nix::sys::socket::send(socket.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One recvmsg(2) without waiting: data into `buf`, descriptors (close-on-exec) appended to
/// `fds`. Descriptors the kernel had to drop for lack of room make it an error.
pub fn recv_with_fds(
    socket: &impl AsRawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_STREAM_FDS]);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for fd in received {
                // SAFETY: the kernel just installed this descriptor in our table for us;
                // nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if message.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(std::io::Error::other(
            "the agent sent more descriptors than expected",
        ));
    }
    Ok(message.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pipe_fds() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe().unwrap()
    }

    #[test]
    fn stream_fds_round_trip_in_a_fixed_order() {
        let (a, b) = pipe_fds();
        let (c, _d) = pipe_fds();
        let (a_raw, b_raw, c_raw) = (a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd());
        let fds = StreamFds {
            stdin: Some(b),
            stdout: Some(a),
            stderr: None,
            terminal: Some(c),
        };
        let (kinds, wire) = fds.into_wire();
        assert_eq!(
            kinds,
            [
                proto::StreamFd::Stdin as i32,
                proto::StreamFd::Stdout as i32,
                proto::StreamFd::Terminal as i32
            ]
        );
        let back = StreamFds::from_wire(&kinds, wire).unwrap();
        assert_eq!(back.stdin.unwrap().as_raw_fd(), b_raw);
        assert_eq!(back.stdout.unwrap().as_raw_fd(), a_raw);
        assert!(back.stderr.is_none());
        assert_eq!(back.terminal.unwrap().as_raw_fd(), c_raw);
    }

    #[test]
    fn stream_fds_refuse_bad_kinds_and_counts() {
        let (a, b) = pipe_fds();
        let stdout = proto::StreamFd::Stdout as i32;
        assert!(StreamFds::from_wire(&[stdout], vec![]).is_err());
        assert!(StreamFds::from_wire(&[stdout, stdout], vec![a, b]).is_err());
        let (a, _) = pipe_fds();
        assert!(StreamFds::from_wire(&[0], vec![a]).is_err());
        let (a, _) = pipe_fds();
        assert!(StreamFds::from_wire(&[99], vec![a]).is_err());
    }

    #[test]
    fn descriptors_travel_with_the_first_byte_across_short_reads() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (r, w) = pipe_fds();
        let data = b"0123456789";
        send_with_fds(&ours, data, &[w]).unwrap();
        let mut got = Vec::new();
        let mut fds = Vec::new();
        // Read in pieces, as a client must be ready to.
        while got.len() < data.len() {
            let mut buf = [0u8; 3];
            let n = recv_with_fds(&theirs, &mut buf, &mut fds).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(fds.len(), 1);
        // The descriptor received is the pipe's write end.
        nix::unistd::write(&fds[0], b"x").unwrap();
        let mut one = [0u8; 1];
        nix::unistd::read(&r, &mut one).unwrap();
        assert_eq!(&one, b"x");
        let flags = nix::fcntl::fcntl(&fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn too_many_descriptors_are_an_error() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fds: Vec<OwnedFd> = (0..MAX_STREAM_FDS + 4).map(|_| pipe_fds().0).collect();
        send_with_fds(&ours, b"x", &fds).unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 1];
        assert!(recv_with_fds(&theirs, &mut buf, &mut received).is_err());
    }
}
