//! The pod agent's exec and attach streams, driven directly on the agent's socket (as the
//! daemon's streaming server does): stdio descriptors, exit codes, ttys, clients that go away,
//! several attachers, stdin_once.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crius::agent::client::{self, StreamedProcess};
use crius::agent::proto::{self, Attach, ExecStream, ExecSync};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::containers::{Pod, busybox, container_config, remove_all, run, start_pod};
use crate::harness::{Daemon, wait_gone, wait_running};
use crate::images::pull;

fn agent_socket(daemon: &Daemon, pod: &Pod) -> PathBuf {
    daemon
        .dir
        .state()
        .join("agents")
        .join(format!("{}.sock", &pod.id[..16]))
}

fn exec_request(daemon: &Daemon, container: &str, cmd: &[&str]) -> ExecStream {
    ExecStream {
        id: container.to_string(),
        bundle: daemon
            .dir
            .root()
            .join("containers")
            .join(container)
            .to_string_lossy()
            .into_owned(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        cgroup_procs: vec![],
        tty: false,
        stdin: true,
        stdout: true,
        stderr: true,
    }
}

/// Reads a non-blocking descriptor until `done` says so, EOF (or EIO: a tty's other side is
/// gone) or `within` passes; returns what came.
fn read_until(fd: &OwnedFd, within: Duration, done: impl Fn(&[u8]) -> bool) -> String {
    use std::os::fd::AsFd;
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while Instant::now() < deadline && !done(&out) {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(nix::errno::Errno::EIO) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn has(data: &[u8], needle: &str) -> bool {
    data.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn read_to_eof(fd: &OwnedFd) -> String {
    read_until(fd, Duration::from_secs(10), |_| false)
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("write: {e}"),
        }
    }
}

async fn exit_code(p: StreamedProcess) -> i32 {
    p.end.wait().await.unwrap().exit_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_pipes_tty_exit_codes_and_clients_that_go() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "exec-streams", |_| {}).await;
    let id = run(&daemon, &pod, container_config("idle", &["sleep", "1000"])).await;
    let socket = agent_socket(&daemon, &pod);

    // stdin echoed back; EOF on stdin ends `cat`, which exits 0.
    let mut p = client::exec_stream(&socket, exec_request(&daemon, &id, &["cat"]))
        .await
        .unwrap();
    assert!(p.end.pid() > 0 && p.terminal.is_none());
    let stdin = p.stdin.take().unwrap();
    write_all(&stdin, b"hello\n");
    let stdout = p.stdout.take().unwrap();
    let echoed = read_until(&stdout, Duration::from_secs(10), |s| has(s, "hello"));
    assert_eq!(echoed, "hello\n");
    drop(stdin);
    assert_eq!(read_to_eof(&stdout), "");
    assert_eq!(exit_code(p).await, 0);

    // stderr apart; the exit code comes back.
    let mut p = client::exec_stream(
        &socket,
        exec_request(
            &daemon,
            &id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
        ),
    )
    .await
    .unwrap();
    assert_eq!(read_to_eof(p.stdout.as_ref().unwrap()), "out\n");
    assert_eq!(read_to_eof(p.stderr.as_ref().unwrap()), "err\n");
    p.stdin = None;
    assert_eq!(exit_code(p).await, 3);

    // Only the streams asked for.
    let mut request = exec_request(&daemon, &id, &["true"]);
    request.stdin = false;
    request.stderr = false;
    let p = client::exec_stream(&socket, request).await.unwrap();
    assert!(p.stdin.is_none() && p.stderr.is_none() && p.stdout.is_some());
    assert_eq!(exit_code(p).await, 0);

    // Failures to start come back as errors.
    let err = client::exec_stream(&socket, exec_request(&daemon, &id, &["no-such-program"]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("executable file not found"),
        "{err}"
    );
    // Typed: the agent says what kind of failure it is.
    assert_eq!(err.agent_kind(), Some(proto::ErrorKind::NotFound), "{err}");
    let err = client::exec_stream(&socket, exec_request(&daemon, "nope", &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "container nope is not running in this pod");
    assert_eq!(err.agent_kind(), Some(proto::ErrorKind::FailedPrecondition));

    // A tty made inside the container; TERM set; stderr merged.
    let mut request = exec_request(
        &daemon,
        &id,
        &["sh", "-c", "tty; echo TERM=$TERM; read x; echo got-$x"],
    );
    request.tty = true;
    let mut p = client::exec_stream(&socket, request).await.unwrap();
    assert!(p.stderr.is_none() && p.terminal.is_some());
    let stdout = p.stdout.take().unwrap();
    let seen = read_until(&stdout, Duration::from_secs(10), |s| has(s, "TERM=xterm"));
    assert!(seen.starts_with("/dev/pts/"), "{seen:?}");
    let winsize = libc::winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the struct, which lives across the call; the fd is the master.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(p.terminal.as_ref().unwrap()),
            libc::TIOCSWINSZ,
            &winsize,
        )
    };
    assert_eq!(rc, 0);
    write_all(p.stdin.as_ref().unwrap(), b"yes\n");
    let rest = read_to_eof(&stdout);
    assert!(rest.contains("got-yes"), "{rest:?}");
    assert_eq!(exit_code(p).await, 0);

    // A client that goes kills the command and whatever it started.
    let p = client::exec_stream(
        &socket,
        exec_request(&daemon, &id, &["sh", "-c", "sleep 7101 & sleep 7102"]),
    )
    .await
    .unwrap();
    let pid = p.end.pid() as i32;
    wait_running("sleep 7101").await;
    drop(p);
    wait_gone("sleep 7101").await;
    wait_gone("sleep 7102").await;
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    // The same for an ExecSync the daemon gave up on.
    let request = ExecSync {
        id: id.clone(),
        bundle: exec_request(&daemon, &id, &[]).bundle,
        cmd: vec!["sleep".into(), "7103".into()],
        timeout_ms: 0,
        cgroup_procs: vec![],
    };
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        client::exec(&socket, request, Duration::ZERO),
    )
    .await;
    assert!(gave_up.is_err());
    wait_gone("sleep 7103").await;

    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_fans_out_hands_over_stdin_and_drops_the_slow() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "attach", |_| {}).await;
    let socket = agent_socket(&daemon, &pod);
    let attach = |id: &str, stdin: bool| Attach {
        id: id.to_string(),
        stdin,
        stdout: true,
        stderr: true,
    };

    // Two attachers both see the output; the exit code reaches both.
    let talker = run(
        &daemon,
        &pod,
        container_config(
            "talker",
            &[
                "sh",
                "-c",
                "sleep 1; for i in 1 2 3; do echo line$i; echo e$i >&2; done; exit 7",
            ],
        ),
    )
    .await;
    let a = client::attach(&socket, attach(&talker, true))
        .await
        .unwrap();
    let b = client::attach(&socket, attach(&talker, false))
        .await
        .unwrap();
    // Started without stdin: none to give.
    assert!(a.stdin.is_none() && a.terminal.is_none());
    for p in [&a, &b] {
        assert_eq!(
            read_to_eof(p.stdout.as_ref().unwrap()),
            "line1\nline2\nline3\n"
        );
        assert_eq!(read_to_eof(p.stderr.as_ref().unwrap()), "e1\ne2\ne3\n");
    }
    assert_eq!(exit_code(a).await, 7);
    assert_eq!(exit_code(b).await, 7);
    let err = client::attach(&socket, attach(&talker, false))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not running"), "{err}");

    // stdin_once: the first attacher's stdin is the container's; closing it is EOF there.
    let mut config = container_config("reader", &["sh", "-c", "cat; echo got-eof; exit 5"]);
    config.stdin = true;
    config.stdin_once = true;
    let reader = run(&daemon, &pod, config).await;
    let mut first = client::attach(&socket, attach(&reader, true))
        .await
        .unwrap();
    let second = client::attach(&socket, attach(&reader, true))
        .await
        .unwrap();
    assert!(
        second.stdin.is_none(),
        "stdin was used up by the first attacher"
    );
    write_all(first.stdin.as_ref().unwrap(), b"ping\n");
    let seen = read_until(
        first.stdout.as_ref().unwrap(),
        Duration::from_secs(10),
        |s| has(s, "ping"),
    );
    assert_eq!(seen, "ping\n");
    first.stdin = None;
    assert_eq!(
        read_to_eof(second.stdout.as_ref().unwrap()),
        "ping\ngot-eof\n"
    );
    assert_eq!(exit_code(first).await, 5);
    assert_eq!(exit_code(second).await, 5);

    // A tty: stdin and a terminal are the master, no stderr.
    let mut config = container_config("tty", &["sh", "-c", "read x; echo got-$x; sleep 1000"]);
    config.stdin = true;
    config.tty = true;
    let tty = run(&daemon, &pod, config).await;
    let p = client::attach(&socket, attach(&tty, true)).await.unwrap();
    assert!(p.stderr.is_none() && p.terminal.is_some() && p.stdin.is_some());
    write_all(p.stdin.as_ref().unwrap(), b"abc\n");
    let seen = read_until(p.stdout.as_ref().unwrap(), Duration::from_secs(10), |s| {
        has(s, "got-abc")
    });
    assert!(seen.contains("got-abc"), "{seen:?}");
    drop(p);

    // An attacher that does not read is dropped; the log got everything all the same.
    let flood = run(
        &daemon,
        &pod,
        container_config(
            "flood",
            &[
                "sh",
                "-c",
                // 3 MB in 100 kB pieces, 10 ms apart: the slow attacher (which never reads)
                // overflows its 1 MiB pipe; the fast one has 100 ms of slack even on a busy
                // machine.
                "sleep 1; i=0; while [ $i -lt 30 ]; do head -c 100000 /dev/zero | tr '\\0' a; \
                 sleep 0.01; i=$((i+1)); done; echo; echo end; sleep 1000",
            ],
        ),
    )
    .await;
    let slow = client::attach(&socket, attach(&flood, false))
        .await
        .unwrap();
    let fast = client::attach(&socket, attach(&flood, false))
        .await
        .unwrap();
    let reader = std::thread::spawn(move || {
        let out = read_until(
            fast.stdout.as_ref().unwrap(),
            Duration::from_secs(20),
            |s| s.ends_with(b"end\n"),
        );
        (out.len(), fast)
    });
    let err = slow.end.wait().await.unwrap_err();
    assert_eq!(err.to_string(), "attach: the client fell too far behind");
    let (len, fast) = reader.join().unwrap();
    assert_eq!(len, 3000000 + 1 + 4);
    drop(fast);
    let log = pod.logs.join("flood.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" F end")
    {
        assert!(Instant::now() < deadline, "the log lacks the end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    remove_all(&daemon, &pod).await;
}
