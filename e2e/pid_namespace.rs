//! A pod-level PID namespace (`namespace_options.pid == POD`, as crictl and
//! shareProcessNamespace ask): the pod agent is PID 1 of it and the pod's only resident runtime
//! process; it reaps the pod's orphans, ignores signals from inside the pod, ends the pod on
//! SIGTERM from the host, and reports host pids.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crius::cri;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::Code;

use crate::containers::{
    Pod, busybox, container_config, pid_of, remove_all, run, security, sh, start_pod, state,
};
use crate::harness::{Daemon, processes_mentioning};
use crate::images::pull;
use crate::sandbox::{namespace_options, pod_config, pod_status, run_pod};

/// A pod with its own PID namespace.
async fn pid_pod(daemon: &Daemon, name: &str) -> Pod {
    start_pod(daemon, name, |config| {
        namespace_options(config).pid = cri::NamespaceMode::Pod as i32;
    })
    .await
}

/// A container in the pod's PID namespace.
fn shared(name: &str, command: &[&str]) -> cri::ContainerConfig {
    let mut c = container_config(name, command);
    security(&mut c).namespace_options = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    c
}

/// The verbose pod status's `pid` (the agent) and `pidNamespaceInit`.
async fn agent_and_init(daemon: &Daemon, pod: &str) -> (i32, i32) {
    let status = pod_status(daemon, pod).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let pid = info["pid"].as_i64().expect("agent pid") as i32;
    let init = info["pidNamespaceInit"].as_i64().expect("pid 1 of the pod") as i32;
    (pid, init)
}

fn ready(daemon_status: &cri::PodSandboxStatusResponse) -> bool {
    daemon_status.status.as_ref().unwrap().state == cri::PodSandboxState::SandboxReady as i32
}

/// The `NSpid:` of a host pid: its pid in each namespace from the host's down.
fn nspid(pid: i32) -> Vec<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line["NSpid:".len()..]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn pid_ns(pid: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Host pids of the processes in `pid`'s PID namespace, with what they execute.
fn namespace_members(pid: i32) -> Vec<(i32, String)> {
    let ns = pid_ns(pid).expect("the pid namespace");
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid_ns(p).as_ref() == Some(&ns) {
            let exe = std::fs::read_link(format!("/proc/{p}/exe"))
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            members.push((p, exe));
        }
    }
    members
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(
        |s| !matches!(s.rsplit(')').next().map(str::trim_start), Some(s) if s.starts_with('Z')),
    )
}

async fn wait_dead(pid: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what} (pid {pid}) still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_pid_namespace_has_the_agent_as_pid_1_and_only_runtime_process() {
    let mut daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = pid_pod(&daemon, "pid1").await;
    let (agent, init) = agent_and_init(&daemon, &pod.id).await;
    assert_eq!(init, agent, "PID 1 of the pod is its agent");
    assert_eq!(
        nspid(agent).last(),
        Some(&1),
        "the agent is PID 1 of its namespace"
    );
    assert_eq!(nspid(agent).len(), 2);

    let first = run(&daemon, &pod, shared("first", &["sleep", "1001"])).await;
    let second = run(&daemon, &pod, shared("second", &["sleep", "1002"])).await;
    // The daemon reports host pids, of processes in the pod's namespace.
    let first_pid = pid_of(&daemon, &first).await;
    assert_eq!(
        std::fs::read(format!("/proc/{first_pid}/cmdline")).unwrap(),
        b"sleep\x001001\x00"
    );
    assert_eq!(pid_ns(first_pid), pid_ns(agent));
    let first_in_pod = *nspid(first_pid).last().unwrap();

    // One runtime process for the pod: the agent; the rest of the namespace is containers'.
    let runtime: Vec<(i32, String)> = namespace_members(agent)
        .into_iter()
        .filter(|(_, exe)| exe.contains("crius"))
        .collect();
    assert_eq!(runtime.len(), 1, "{runtime:?}");
    assert_eq!(runtime[0].0, agent);
    // The agent's socket is named after the pod.
    let mentioning: Vec<i32> = processes_mentioning(&format!("{}.sock", &pod.id[..16]))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(mentioning, vec![agent], "processes of the pod's runtime");

    // The containers see each other, and the agent as PID 1.
    let (out, code) = sh(
        &daemon,
        &second,
        &format!("tr '\\0' ' ' </proc/1/cmdline; echo; tr '\\0' ' ' </proc/{first_in_pod}/cmdline"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("crius-agent "), "{out}");
    assert_eq!(lines[1].trim_end(), "sleep 1001", "{out}");

    // An orphan comes to PID 1, the agent, which reaps it when it exits.
    let (out, code) = sh(&daemon, &second, "sleep 1 >/dev/null 2>&1 & echo $!").await;
    assert_eq!(code, 0, "{out}");
    let orphan: i32 = out.trim().parse().unwrap();
    let (out, code) = sh(
        &daemon,
        &second,
        &format!(
            "grep PPid /proc/{orphan}/status; \
             for i in $(seq 100); do [ -e /proc/{orphan} ] || exit 0; sleep 0.1; done; \
             cat /proc/{orphan}/status; exit 1"
        ),
    )
    .await;
    assert_eq!(code, 0, "the orphan was not reaped: {out}");
    assert_eq!(out.lines().next().unwrap_or_default(), "PPid:\t1", "{out}");

    // Signals from inside the pod do not end it, not even SIGKILL; nor do they hurt the agent.
    let (out, code) = sh(
        &daemon,
        &second,
        "kill -TERM 1; kill -INT 1; kill -KILL 1; echo sent",
    )
    .await;
    assert_eq!((out.trim(), code), ("sent", 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(agent));
    assert!(ready(&pod_status(&daemon, &pod.id).await.unwrap()));
    assert_eq!(
        state(&daemon, &first).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    // A daemon restart finds the agent again: the pod and its containers carry on.
    daemon.stop();
    daemon.spawn().await;
    assert!(ready(&pod_status(&daemon, &pod.id).await.unwrap()));
    assert_eq!(agent_and_init(&daemon, &pod.id).await, (agent, agent));
    assert_eq!(pid_of(&daemon, &first).await, first_pid);
    let (out, code) = sh(&daemon, &second, &format!("cat /proc/{first_in_pod}/comm")).await;
    assert_eq!((out.trim(), code), ("sleep", 0));

    // Stopping the pod ends the agent and, with it, everything in the namespace.
    let members: Vec<i32> = namespace_members(agent)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    remove_all(&daemon, &pod).await;
    for pid in members {
        wait_dead(pid, "a process of the pod").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_pid_agent_ends_the_pod_on_sigterm_from_the_host() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = pid_pod(&daemon, "pid1-term").await;
    let (agent, _) = agent_and_init(&daemon, &pod.id).await;
    let c = run(&daemon, &pod, shared("sleeper", &["sleep", "1003"])).await;
    let pid = pid_of(&daemon, &c).await;

    kill(Pid::from_raw(agent), Signal::SIGTERM).unwrap();
    wait_dead(agent, "the agent").await;
    wait_dead(pid, "the container").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = state(&daemon, &c).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container never exited: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!ready(&pod_status(&daemon, &pod.id).await.unwrap()));
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_pid_sysctl_the_kernel_refuses_is_invalid_argument() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    // Only the agent, PID 1 in the forked process, finds out: its exit reaches the daemon
    // through the process the daemon started.
    let mut config = pod_config(&daemon, "pid1-sysctl");
    namespace_options(&mut config).pid = cri::NamespaceMode::Pod as i32;
    config.linux.as_mut().unwrap().sysctls =
        HashMap::from([("kernel.msgmax".to_string(), "-1".to_string())]);
    let err = run_pod(&daemon, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("kernel.msgmax"), "{}", err.message());
}

/// Field 22 of /proc/<pid>/stat, as the daemon records it.
fn start_time(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// Rewrites a pod's stored record (the daemon must be stopped).
fn edit_record(daemon: &Daemon, pod: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let db = rusqlite::Connection::open(daemon.dir.root().join("crius.db")).unwrap();
    let text: String = db
        .query_row("SELECT record FROM sandboxes WHERE id = ?1", [pod], |r| {
            r.get(0)
        })
        .unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut record);
    db.execute(
        "UPDATE sandboxes SET record = ?1 WHERE id = ?2",
        [record.to_string(), pod.to_string()],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_pid_pods_recorded_before_the_agent_was_pid_1_or_half_recorded_still_stop() {
    let mut daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    // A pod from before: its record names a PID 1 of its own beside the agent (here a stand-in).
    let old = pid_pod(&daemon, "pid1-old").await;
    let c = run(&daemon, &old, shared("sleeper", &["sleep", "1004"])).await;
    let container = pid_of(&daemon, &c).await;
    let mut stand_in = std::process::Command::new("sleep")
        .arg("1005")
        .spawn()
        .unwrap();
    let init = stand_in.id() as i32;
    // A pod whose set-up the daemon did not live to finish recording: the record still names
    // the process it started, which forked the agent and exited.
    let half = pid_pod(&daemon, "pid1-half").await;
    let (half_agent, _) = agent_and_init(&daemon, &half.id).await;
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id() as i32;
    let gone_start = start_time(gone_pid);
    gone.wait().unwrap();

    daemon.stop();
    edit_record(&daemon, &old.id, |r| {
        r["pid_init"] = serde_json::json!({"pid": init, "start_time": start_time(init)});
    });
    edit_record(&daemon, &half.id, |r| {
        r["agent"] = serde_json::json!({"pid": gone_pid, "start_time": gone_start});
        r["state"] = serde_json::json!("NotReady");
    });
    daemon.spawn().await;

    // The recorded PID 1 is reported, and killed first when the pod stops.
    let (agent, reported) = agent_and_init(&daemon, &old.id).await;
    assert_eq!(reported, init);
    assert!(ready(&pod_status(&daemon, &old.id).await.unwrap()));
    remove_all(&daemon, &old).await;
    let status = stand_in.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    wait_dead(agent, "the old pod's agent").await;
    wait_dead(container, "the old pod's container").await;

    // The agent the record does not name is found on the pod's socket and stopped.
    assert!(alive(half_agent));
    remove_all(&daemon, &half).await;
    wait_dead(half_agent, "the half-recorded pod's agent").await;
}
