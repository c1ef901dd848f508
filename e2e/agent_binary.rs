//! The pod agent's binary cannot be reached, let alone written, from inside a container
//! (runc's CVE-2019-5736): every agent runs from the daemon's sealed memfd copy of it.

use std::os::unix::fs::MetadataExt;

use crius::cri;

use crate::containers::{busybox, container_config, remove_all, run, security, sh, start_pod};
use crate::harness::Daemon;
use crate::images::pull;

const AGENT: &str = env!("CARGO_BIN_EXE_crius-agent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_cannot_reach_or_write_the_agent_binary() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let before = std::fs::read(AGENT).unwrap();
    let host = std::fs::metadata(AGENT).unwrap();

    // A pod-level PID namespace: its PID 1 is the agent, so it runs the agent's binary, and a
    // container with CAP_SYS_PTRACE may open /proc/1/exe.
    let pod = start_pod(&daemon, "exe", |config| {
        crate::sandbox::namespace_options(config).pid = cri::NamespaceMode::Pod as i32;
    })
    .await;
    let mut c = container_config("peek", &["sleep", "1000"]);
    security(&mut c).capabilities = Some(cri::Capability {
        add_capabilities: vec!["SYS_PTRACE".into()],
        ..Default::default()
    });
    security(&mut c).namespace_options = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let id = run(&daemon, &pod, c).await;

    let (out, code) = sh(
        &daemon,
        &id,
        "readlink /proc/1/exe; stat -L -c '%d %i' /proc/1/exe; \
         exec 3</proc/1/exe || exit 9; \
         (printf x >>/proc/1/exe) 2>/dev/null && echo appended; \
         (printf x 1<>/proc/self/fd/3) 2>/dev/null && echo overwrote; \
         (: >/proc/1/exe) 2>/dev/null && echo truncated; \
         head -c 4 <&3 | od -An -c",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "/memfd:crius-agent (deleted)", "{out}");
    assert_ne!(
        lines[1],
        format!("{} {}", host.dev(), host.ino()),
        "/proc/1/exe is the host's file: {out}"
    );
    // Readable (it is an ELF binary), but no write of any kind got through.
    assert!(lines[2].contains("E   L   F"), "{out}");
    assert_eq!(lines.len(), 3, "a write got through: {out}");

    // A script whose interpreter is /proc/self/exe runs the agent's binary in the container
    // (it fails there: the image has no dynamic loader); the host's file is untouched.
    let (_, code) = sh(
        &daemon,
        &id,
        "printf '#!/proc/self/exe\\n' >/x && chmod +x /x && /x; echo $?",
    )
    .await;
    assert_eq!(code, 0);
    let _ = crate::containers::exec(&daemon, &id, &["/x"], 5).await;
    assert!(
        std::fs::read(AGENT).unwrap() == before,
        "the agent binary changed"
    );
    remove_all(&daemon, &pod).await;
}

/// The agent is linked at a fixed address (build.rs): a position-independent agent would copy
/// its relocated pointer tables into every pod's private memory (260 KiB each, measured).
#[test]
fn the_agent_binary_is_not_position_independent() {
    use std::io::Read;
    let mut header = [0u8; 18];
    std::fs::File::open(AGENT)
        .unwrap()
        .read_exact(&mut header)
        .unwrap();
    // ELF e_type (offset 16, little-endian): 2 is ET_EXEC, 3 ET_DYN (PIE).
    assert_eq!(&header[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([header[16], header[17]]), 2, "ET_EXEC");
}
