//! One state machine per container and per pod: concurrent calls on the same object, exits
//! pushed by the pod agent (and replayed after a restart), a daemon killed in the middle of
//! StartContainer, a pod whose undo fails, timeouts of any size, large ExecSync traffic, and
//! image removal racing container creation.

use std::time::{Duration, Instant};

use crius::cri;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::containers::{
    busybox, container_config, create, exec, remove, remove_all, run, start, start_pod, state, stop,
};
use crate::harness::{Daemon, TestDir};
use crate::images::{pull, remove as remove_image};
use crate::sandbox::{list_pods, pod_config, pod_status, remove_pod, run_pod, stop_pod};

type Events = tonic::Streaming<cri::ContainerEventResponse>;

async fn subscribe(daemon: &Daemon) -> Events {
    daemon
        .runtime()
        .await
        .unwrap()
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The events for `id` until (and with) `last`, skipping other containers'.
async fn events_of(stream: &mut Events, id: &str, last: cri::ContainerEventType) -> Vec<i32> {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10s")
            .expect("the stream goes on")
            .expect("an event, not an error");
        if event.container_id != id {
            continue;
        }
        seen.push(event.container_event_type);
        if event.container_event_type == last as i32 {
            return seen;
        }
    }
}

/// No event for `id` within `quiet`.
async fn no_more_events_of(stream: &mut Events, id: &str, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let event = event.unwrap();
        assert_ne!(event.container_id, id, "an extra event: {event:?}");
    }
}

fn code_or_ok<T>(result: &Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_on_one_container_keep_one_truth() {
    use cri::ContainerEventType as T;
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "racing", |_| {}).await;
    let mut events = subscribe(&daemon).await;
    let id = create(&daemon, &pod, container_config("racer", &["sleep", "1000"]))
        .await
        .unwrap();

    // Eight StartContainer calls at once: one starts it, the others are told it is running.
    let starts = futures_util::future::join_all((0..8).map(|_| start(&daemon, &id))).await;
    let codes: Vec<Code> = starts.iter().map(code_or_ok).collect();
    assert_eq!(
        codes.iter().filter(|c| **c == Code::Ok).count(),
        1,
        "{starts:?}"
    );
    assert!(
        codes
            .iter()
            .all(|c| *c == Code::Ok || *c == Code::FailedPrecondition),
        "{starts:?}"
    );
    let running = state(&daemon, &id).await;
    assert_eq!(running.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(running.reason, "");
    let r = exec(&daemon, &id, &["echo", "alive"], 10).await.unwrap();
    assert_eq!(r.stdout, b"alive\n");

    // Stops, status reads and execs at once; then removes and reads at once.
    let stops = (0..4).map(|_| stop(&daemon, &id, 2));
    let reads = (0..4).map(|_| async { state(&daemon, &id).await.state });
    let (stops, reads) = tokio::join!(
        futures_util::future::join_all(stops),
        futures_util::future::join_all(reads)
    );
    assert!(stops.iter().all(|s| s.is_ok()), "{stops:?}");
    assert!(
        reads
            .iter()
            .all(|s| *s != cri::ContainerState::ContainerCreated as i32)
    );
    let exited = state(&daemon, &id).await;
    assert_eq!(exited.state, cri::ContainerState::ContainerExited as i32);
    let removes = (0..3).map(|_| remove(&daemon, &id));
    let statuses = (0..3).map(|_| crate::containers::status(&daemon, &id));
    let (removes, _) = tokio::join!(
        futures_util::future::join_all(removes),
        futures_util::future::join_all(statuses)
    );
    assert!(removes.iter().all(|r| r.is_ok()), "{removes:?}");
    // Gone for good: no read brings it back.
    for _ in 0..3 {
        let status = crate::containers::status(&daemon, &id).await;
        assert_eq!(status.unwrap_err().code(), Code::NotFound);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let expected = [
        T::ContainerCreatedEvent,
        T::ContainerStartedEvent,
        T::ContainerStoppedEvent,
        T::ContainerDeletedEvent,
    ];
    assert_eq!(
        events_of(&mut events, &id, T::ContainerDeletedEvent).await,
        expected.map(|t| t as i32)
    );
    no_more_events_of(&mut events, &id, Duration::from_millis(500)).await;
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_reach_status_and_events_within_milliseconds() {
    use cri::ContainerEventType as T;
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "prompt", |_| {}).await;
    let mut events = subscribe(&daemon).await;
    let id = run(
        &daemon,
        &pod,
        container_config("brief", &["sh", "-c", "sleep 0.5; exit 3"]),
    )
    .await;
    let stopped = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        if event.container_id == id && event.container_event_type == T::ContainerStoppedEvent as i32
        {
            break event;
        }
    };
    let status = stopped
        .containers_statuses
        .iter()
        .find(|c| c.id == id)
        .expect("the container in the event")
        .clone();
    assert_eq!(status.exit_code, 3);
    assert_eq!(status.reason, "Error");
    // Pushed by the agent as it happened: no polling interval in between.
    let delay_ms = (stopped.created_at - status.finished_at) as f64 / 1e6;
    eprintln!("the STOPPED event came {delay_ms:.2} ms after the exit");
    assert!(
        (0.0..100.0).contains(&delay_ms),
        "the STOPPED event came {delay_ms} ms after the exit"
    );
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_while_the_daemon_is_down_are_replayed() {
    let mut daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "replay", |_| {}).await;
    let brief = run(
        &daemon,
        &pod,
        container_config("brief", &["sh", "-c", "sleep 1; exit 4"]),
    )
    .await;
    let long = run(&daemon, &pod, container_config("long", &["sleep", "1000"])).await;
    daemon.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted_at = now_ns();
    daemon.spawn().await;
    let brief_status = state(&daemon, &brief).await;
    assert_eq!(
        brief_status.state,
        cri::ContainerState::ContainerExited as i32
    );
    assert_eq!(brief_status.exit_code, 4);
    assert!(brief_status.finished_at < restarted_at);
    let long_status = state(&daemon, &long).await;
    assert_eq!(
        long_status.state,
        cri::ContainerState::ContainerRunning as i32
    );
    // Exits after the restart are followed as before.
    let mut events = subscribe(&daemon).await;
    stop(&daemon, &long, 5).await.unwrap();
    let seen = events_of(
        &mut events,
        &long,
        cri::ContainerEventType::ContainerStoppedEvent,
    )
    .await;
    assert_eq!(seen.len(), 1);
    remove_all(&daemon, &pod).await;
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// The pod agent's pid, from PodSandboxStatus's verbose info.
async fn agent_pid(daemon: &Daemon, pod_id: &str) -> i32 {
    let status = pod_status(daemon, pod_id).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    info["pid"].as_i64().expect("agent pid") as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_the_daemon_did_not_live_to_record_is_found_after_restart() {
    let mut daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "crashstart", |_| {}).await;
    let id = create(
        &daemon,
        &pod,
        container_config("survivor", &["sleep", "1000"]),
    )
    .await
    .unwrap();
    // The agent holds the request until the daemon is gone: the daemon never hears the answer.
    let agent = Pid::from_raw(agent_pid(&daemon, &pod.id).await);
    kill(agent, Signal::SIGSTOP).unwrap();
    let starting = {
        let channel = daemon.channel().await.unwrap();
        let id = id.clone();
        tokio::spawn(async move {
            cri::runtime_service_client::RuntimeServiceClient::new(channel)
                .start_container(cri::StartContainerRequest { container_id: id })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill9();
    kill(agent, Signal::SIGCONT).unwrap();
    assert!(starting.await.unwrap().is_err(), "the daemon died mid-call");
    daemon.spawn().await;

    let found = state(&daemon, &id).await;
    assert_eq!(
        found.state,
        cri::ContainerState::ContainerRunning as i32,
        "{found:?}"
    );
    assert!(found.started_at > 0);
    // Kubelet's retry is told it runs, and nothing is recorded as failed.
    let retry = start(&daemon, &id).await.unwrap_err();
    assert_eq!(retry.code(), Code::FailedPrecondition, "{retry:?}");
    let after = state(&daemon, &id).await;
    assert_eq!(after.state, cri::ContainerState::ContainerRunning as i32);
    let r = exec(&daemon, &id, &["echo", "still here"], 10)
        .await
        .unwrap();
    assert_eq!(r.stdout, b"still here\n");
    remove_all(&daemon, &pod).await;
}

/// A CNI plugin for the test, chained after the bridge: it refuses ADD, and refuses DEL while
/// `refuse-del` exists in its directory.
fn refusing_plugin(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let script = format!(
        "#!/bin/sh\ncat >/dev/null\ncase \"$CNI_COMMAND\" in\n\
         ADD) echo '{{\"cniVersion\":\"1.0.0\",\"code\":100,\"msg\":\"refused ADD\"}}'; exit 1;;\n\
         DEL) if [ -e {marker:?} ]; then echo '{{\"cniVersion\":\"1.0.0\",\"code\":100,\"msg\":\"refused DEL\"}}'; exit 1; fi;;\n\
         VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}}';;\n\
         esac\nexit 0\n",
        marker = dir.join("refuse-del"),
    );
    let path = dir.join("crius-test-refuse");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("refuse-del"), "").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_undo_fails_stays_listed_until_removed() {
    let dir = TestDir::new();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    refusing_plugin(&plugins);
    let config = dir.write_config_with_cni_bins(
        "config.toml",
        "",
        &[&plugins, std::path::Path::new(crate::harness::CNI_BIN_DIR)],
    );
    let daemon = Daemon::start_in(dir, config).await;
    daemon.dir.write_bridge_cni_config();
    // The bridge, then the refusing plugin.
    let conflist = daemon.dir.cni_conf_dir().join("10-crius-e2e.conflist");
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
    list["plugins"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "crius-test-refuse"}));
    std::fs::write(&conflist, list.to_string()).unwrap();

    let err = run_pod(&daemon, pod_config(&daemon, "undo"))
        .await
        .unwrap_err();
    assert!(err.message().contains("refused ADD"), "{err:?}");
    let pods = list_pods(&daemon, None).await;
    assert_eq!(pods.len(), 1, "the pod whose undo failed is listed");
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
    // Its agent is gone already; only the network attachment is left to undo.
    crate::harness::wait_gone(&format!("--socket {}", daemon.dir.state().display())).await;
    let stuck = remove_pod(&daemon, &pods[0].id).await.unwrap_err();
    assert_eq!(stuck.code(), Code::Unavailable, "{stuck:?}");
    std::fs::remove_file(plugins.join("refuse-del")).unwrap();
    stop_pod(&daemon, &pods[0].id).await.unwrap();
    remove_pod(&daemon, &pods[0].id).await.unwrap();
    assert!(list_pods(&daemon, None).await.is_empty());
    // Dropping the daemon checks that nothing is left: veths, IP leases, mounts, cgroups.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_of_any_size_are_taken() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "timeouts", |_| {}).await;
    // It stops on SIGTERM (a PID 1 without a handler would ignore it, and a stop with the
    // longest timeout would rightly wait for good).
    let id = run(
        &daemon,
        &pod,
        container_config(
            "sleeper",
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; while :; do sleep 0.1; done",
            ],
        ),
    )
    .await;
    let r = exec(&daemon, &id, &["echo", "ok"], i64::MAX).await.unwrap();
    assert_eq!(r.stdout, b"ok\n");
    let r = exec(&daemon, &id, &["echo", "ok"], i64::MIN).await.unwrap();
    assert_eq!(r.stdout, b"ok\n");
    let late = exec(&daemon, &id, &["sleep", "5"], 1).await.unwrap_err();
    assert_eq!(late.code(), Code::DeadlineExceeded);
    // The longest timeout a client can send: the stop signal works at once.
    let began = Instant::now();
    stop(&daemon, &id, i64::MAX).await.unwrap();
    assert!(began.elapsed() < Duration::from_secs(5));
    stop(&daemon, &id, i64::MIN).await.unwrap();
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_carries_large_output_and_commands() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "bigexec", |_| {}).await;
    let id = run(&daemon, &pod, container_config("big", &["sleep", "1000"])).await;
    // 4 MiB and 3 MB of output come whole; more is cut where the answer would no longer fit
    // in the 16 MiB message kubelet accepts.
    let line = "head -c 4194304 /dev/zero; head -c 3000000 /dev/zero >&2";
    let r = exec(&daemon, &id, &["sh", "-c", line], 30).await.unwrap();
    assert_eq!(
        (r.stdout.len(), r.stderr.len(), r.exit_code),
        (4 << 20, 3000000, 0)
    );
    let line = "head -c 20971520 /dev/zero; head -c 3000000 /dev/zero >&2";
    let r = exec(&daemon, &id, &["sh", "-c", line], 30).await.unwrap();
    let total = r.stdout.len() + r.stderr.len();
    assert!(
        total > (16 << 20) - 8192 && total < 16 << 20,
        "{} + {}",
        r.stdout.len(),
        r.stderr.len()
    );
    // A command of 1.5 MB in 15 arguments (each under the kernel's 128 KiB per argument).
    let mut cmd: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        "n=0; for a; do n=$((n+${#a})); done; echo $n".into(),
        "sh".into(),
    ];
    cmd.extend((0..15).map(|_| "x".repeat(100_000)));
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let r = exec(&daemon, &id, &cmd, 30).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "1500000");
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_removal_racing_creates_never_breaks_a_created_container() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let pod = start_pod(&daemon, "gcrace", |_| {}).await;
    let mut created = 0;
    for round in 0..6 {
        pull(&daemon, &busybox()).await.unwrap();
        let name = format!("c{round}");
        let config = container_config(&name, &["sleep", "1000"]);
        // Stagger the two a little differently each round.
        let delay = Duration::from_millis(round * 2);
        let (made, removed) = tokio::join!(create(&daemon, &pod, config), async {
            tokio::time::sleep(delay).await;
            remove_image(&daemon, &busybox()).await
        });
        removed.unwrap();
        match made {
            Ok(id) => {
                created += 1;
                // The layers it resolved are still there: it starts and runs.
                start(&daemon, &id).await.unwrap();
                let r = exec(&daemon, &id, &["echo", "rootfs ok"], 10)
                    .await
                    .unwrap();
                assert_eq!(r.stdout, b"rootfs ok\n");
                remove(&daemon, &id).await.unwrap();
            }
            Err(status) => assert!(
                matches!(status.code(), Code::NotFound | Code::FailedPrecondition),
                "{status:?}"
            ),
        }
    }
    eprintln!("{created} of 6 creates won the race");
    remove_all(&daemon, &pod).await;
}
