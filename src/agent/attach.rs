//! Attachers: daemon connections that get a copy of a container's output, each through its
//! own non-blocking pipe, so that the log never waits for a client; and the non-blocking
//! answers and hang-up checks that attach and exec-stream connections share.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use super::error::AgentError;
use super::frame;
use super::proto::Response;
use crate::logs::Stream;

/// An attacher's pipes hold this much of the container's output before it counts as behind.
const ATTACH_PIPE_SIZE: i32 = 1024 * 1024;
const ATTACH_BEHIND: &str = "attach: the client fell too far behind";
/// A daemon connection that gets a copy of a container's output from the moment it attached.
pub(super) struct Attacher {
    pub token: u64,
    pub conn: UnixStream,
    /// Our (non-blocking) write ends of the client's pipes, None when not asked for or closed.
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Copies a chunk of a container's output to every attacher of that stream. The log never
/// waits for an attacher: one whose pipe cannot take the whole chunk right now is dropped.
pub(super) fn fan_out(attachers: &mut Vec<Attacher>, stream: Stream, data: &[u8]) {
    attachers.retain(|a| {
        let pipe = match stream {
            Stream::Stdout => &a.stdout,
            Stream::Stderr => &a.stderr,
        };
        let Some(pipe) = pipe else {
            return true;
        };
        match forward(pipe, data) {
            Ok(()) => true,
            Err(error) => {
                answer_nowait(
                    &a.conn,
                    &Response {
                        error,
                        ..Default::default()
                    },
                );
                false
            }
        }
    });
}

/// Writes all of `data` to a non-blocking pipe at once, or says why not.
fn forward(pipe: &OwnedFd, data: &[u8]) -> Result<(), String> {
    loop {
        return match nix::unistd::write(pipe, data) {
            Ok(n) if n == data.len() => Ok(()),
            // A partial chunk would corrupt the stream for the client: it is behind either way.
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => Err(ATTACH_BEHIND.to_string()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EPIPE) => {
                Err("attach: the client closed its output".to_string())
            }
            Err(e) => Err(format!("attach: writing to the client: {e}")),
        };
    }
}

/// A pipe for an attacher: (the client's read end, our write end unless `open` is false, when
/// the stream already ended and the client just reads EOF). Both ends non-blocking.
pub(super) fn attach_pipe(open: bool) -> Result<(OwnedFd, Option<OwnedFd>), AgentError> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(AgentError::at("pipe"))?;
    // Room for bursts while the client catches up; the default size is kept if the host's
    // pipe-max-size does not allow this one.
    let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(ATTACH_PIPE_SIZE));
    Ok((read, open.then_some(write)))
}

/// Whether the peer of a non-blocking connection closed it. The daemon sends nothing after
/// its request, so whatever else arrives is read and ignored.
pub(super) fn connection_closed(conn: &UnixStream) -> bool {
    let mut scratch = [0u8; 512];
    // Bounded: a peer that keeps writing must not hold the loop.
    for _ in 0..16 {
        match (&*conn).read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    false
}

/// A final answer that must not hold the loop: written if the socket takes it now (it has
/// room: at most one small frame went before it), else the client only sees the connection
/// close.
pub(super) fn answer_nowait(conn: &UnixStream, response: &Response) {
    let _ = conn.set_nonblocking(true);
    if let Err(e) = (&*conn).write_all(&frame(response)) {
        eprintln!("crius pod-agent: answering a stream: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use prost::Message;
    use std::os::fd::AsFd;

    fn attacher(stdout: Option<OwnedFd>) -> (Attacher, UnixStream) {
        let (conn, peer) = UnixStream::pair().unwrap();
        (
            Attacher {
                token: 1,
                conn,
                stdout,
                stderr: None,
            },
            peer,
        )
    }

    fn read_answer(peer: &mut UnixStream) -> Response {
        let mut len = [0u8; 4];
        peer.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        peer.read_exact(&mut body).unwrap();
        Response::decode(&body[..]).unwrap()
    }

    #[test]
    fn a_full_pipe_drops_its_attacher_and_spares_the_others() {
        let (slow_read, slow_write) = attach_pipe(true).unwrap();
        let slow_write = slow_write.unwrap();
        // Fill the slow client's pipe to capacity.
        let chunk = vec![b'x'; 64 * 1024];
        while nix::unistd::write(&slow_write, &chunk).is_ok() {}
        let (fast_read, fast_write) = attach_pipe(true).unwrap();
        let (slow, mut slow_peer) = attacher(Some(slow_write));
        let (fast, _fast_peer) = attacher(fast_write);
        let (other_stream, _other_peer) = attacher(None);
        let mut attachers = vec![slow, fast, other_stream];
        fan_out(&mut attachers, Stream::Stdout, b"line\n");
        assert_eq!(attachers.len(), 2);
        assert!(attachers[0].stdout.is_some());
        let mut got = [0u8; 5];
        assert_eq!(nix::unistd::read(&fast_read, &mut got).unwrap(), 5);
        assert_eq!(&got, b"line\n");
        assert_eq!(read_answer(&mut slow_peer).error, ATTACH_BEHIND);
        drop(slow_read);
    }

    #[test]
    fn a_partial_write_counts_as_behind() {
        let (_read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        // One page of room, mostly taken: a bigger chunk only fits in part.
        nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
        nix::unistd::write(&write, &[0u8; 1000]).unwrap();
        assert_eq!(
            forward(&write, &[1u8; 8192]),
            Err(ATTACH_BEHIND.to_string())
        );
        let (_read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        assert_eq!(forward(&write, &[1u8; 8192]), Ok(()));
    }

    #[test]
    fn attach_pipes_are_big_and_non_blocking() {
        let (read, write) = attach_pipe(true).unwrap();
        let write = write.unwrap();
        let size = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap();
        assert!(size >= ATTACH_PIPE_SIZE, "{size}");
        for fd in [&read, &write] {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
            assert_ne!(flags & libc::O_NONBLOCK, 0);
        }
        // A stream that already ended: the client reads EOF.
        let (read, write) = attach_pipe(false).unwrap();
        assert!(write.is_none());
        assert_eq!(nix::unistd::read(&read, &mut [0u8; 1]).unwrap(), 0);
    }

    #[test]
    fn a_closed_connection_is_told_from_an_idle_or_chatty_one() {
        let (conn, mut peer) = UnixStream::pair().unwrap();
        conn.set_nonblocking(true).unwrap();
        assert!(!connection_closed(&conn));
        peer.write_all(b"ignored").unwrap();
        assert!(!connection_closed(&conn));
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(connection_closed(&conn));
        let (conn, peer) = UnixStream::pair().unwrap();
        conn.set_nonblocking(true).unwrap();
        drop(peer);
        assert!(connection_closed(&conn));
        // And poll wakes up for it.
        let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::ZERO).unwrap(), 1);
    }

    #[test]
    fn an_answer_is_not_waited_for() {
        let (conn, mut peer) = UnixStream::pair().unwrap();
        answer_nowait(
            &conn,
            &Response {
                exit_code: 3,
                ..Default::default()
            },
        );
        assert_eq!(read_answer(&mut peer).exit_code, 3);
    }
}
