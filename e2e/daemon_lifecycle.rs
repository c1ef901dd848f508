//! Start-up, configuration errors, locking, signals and the store across crashes.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crius::cri;
use nix::sys::signal::Signal;

use crate::harness::{CNI_BIN_DIR, Daemon, TestDir, pod_cidr_request, run_crius};
use crate::registry::{StallingProxy, TestRegistry};

fn daemon_with(config: &std::path::Path) -> (std::process::ExitStatus, String) {
    let (status, _, err) = run_crius(&["daemon", "--config", config.to_str().unwrap()]);
    (status, err)
}

#[test]
fn config_errors_exit_2_naming_the_key_and_value() {
    let dir = TestDir::new();
    let cases = [
        ("unknown key", "rooot = \"/x\"", vec!["rooot"]),
        (
            "unknown nested key",
            "[cni]\nconfdir = \"/x\"",
            vec!["confdir"],
        ),
        (
            "wrong type",
            "shutdown_timeout_secs = \"soon\"",
            vec!["shutdown_timeout_secs"],
        ),
        (
            "invalid enum",
            "log_format = \"xml\"",
            vec!["log_format", "xml"],
        ),
        (
            "invalid value",
            "cgroup_driver = \"systemdd\"",
            vec!["cgroup_driver", "systemdd"],
        ),
        (
            "invalid mirror",
            "[registry.mirrors]\n\"registry.k8s.io\" = [\"127.0.0.1:5000\"]",
            vec!["registry.k8s.io", "127.0.0.1:5000"],
        ),
        ("not TOML", "root = ", vec!["config file"]),
    ];
    for (what, text, needles) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (status, err) = daemon_with(&path);
        assert_eq!(status.code(), Some(2), "{what}: {status}\n{err}");
        for needle in needles {
            assert!(err.contains(needle), "{what}: {needle:?} not in {err:?}");
        }
    }
    // A config file named on the command line must exist.
    let (status, err) = daemon_with(&dir.path().join("missing.toml"));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("missing.toml"), "{err}");
    // Flags are checked like file values.
    let (status, _, err) = run_crius(&[
        "daemon",
        "--root",
        "relative/dir",
        "--listen",
        "/tmp/x.sock",
    ]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("root") && err.contains("relative/dir"),
        "{err}"
    );
    // Nothing was created for a refused config.
    assert!(!dir.socket().exists());
    assert_eq!(std::fs::read_dir(dir.root()).unwrap().count(), 0);
}

/// Writes `name` into the config.d next to the test dir's config files.
fn write_drop_in(dir: &TestDir, name: &str, text: &str) -> std::path::PathBuf {
    let drop_ins = dir.path().join("config.d");
    std::fs::create_dir_all(&drop_ins).unwrap();
    let path = drop_ins.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn effective_config(daemon: &Daemon) -> serde_json::Value {
    let status = daemon
        .runtime()
        .await
        .unwrap()
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&status.info["config"]).unwrap()
}

/// Drop-ins in config.d next to the config file merge over it in file-name order, and Status
/// reports the merged result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_d_drop_ins_merge_over_the_config_file() {
    let dir = TestDir::new();
    let config = dir.write_config(
        "config.toml",
        "[streaming]\ntoken_ttl_secs = 30\n\
         [registry.mirrors]\n\"a.example\" = [\"http://127.0.0.1:5000\"]\n\
         \"b.example\" = [\"http://127.0.0.1:5001\"]\n",
    );
    // Applied by name: 30 after 10 whatever the order they were written in.
    write_drop_in(&dir, "30-ttl.toml", "[streaming]\ntoken_ttl_secs = 120\n");
    write_drop_in(&dir, "10-ttl.toml", "[streaming]\ntoken_ttl_secs = 90\n");
    write_drop_in(
        &dir,
        "20-mirrors.toml",
        "[registry.mirrors]\n\"b.example\" = [\"https://mirror.example\"]\n\
         \"c.example\" = [\"https://c.example\"]\n",
    );
    write_drop_in(&dir, "README", "not a drop-in: ignored [");
    let mut daemon = Daemon::start_in(dir, config).await;
    let c = effective_config(&daemon).await;
    assert_eq!(c["streaming"]["token_ttl_secs"], 120, "{c}");
    let mirrors = &c["registry"]["mirrors"];
    assert_eq!(
        *mirrors,
        serde_json::json!({
            "a.example": ["http://127.0.0.1:5000"],
            "b.example": ["https://mirror.example"],
            "c.example": ["https://c.example"],
        }),
        "{c}"
    );
    // Keys only the main file sets stay.
    assert_eq!(c["shutdown_timeout_secs"], 5, "{c}");
    assert_eq!(
        c["cni"]["bin_dirs"],
        serde_json::json!([CNI_BIN_DIR]),
        "{c}"
    );
    daemon.stop();
}

#[test]
fn a_bad_drop_in_exits_2_naming_its_file_key_and_value() {
    let dir = TestDir::new();
    let config = dir.write_config("config.toml", "");
    write_drop_in(&dir, "10-ok.toml", "[streaming]\ntoken_ttl_secs = 90\n");
    let cases = [
        (
            "invalid value",
            "[streaming]\ntoken_ttl_secs = 0\n",
            vec!["streaming.token_ttl_secs", "\"0\""],
        ),
        (
            "invalid mirror",
            "[registry.mirrors]\n\"docker.io\" = [\"mirror.example\"]\n",
            vec!["docker.io", "mirror.example"],
        ),
        ("unknown key", "[registry]\nmirros = {}\n", vec!["mirros"]),
        (
            "wrong type",
            "[streaming]\ntoken_ttl_secs = \"soon\"\n",
            vec!["token_ttl_secs", "soon"],
        ),
    ];
    for (what, text, needles) in cases {
        let bad = write_drop_in(&dir, "20-bad.toml", text);
        let (status, err) = daemon_with(&config);
        assert_eq!(status.code(), Some(2), "{what}: {status}\n{err}");
        assert!(
            err.contains(bad.to_str().unwrap()),
            "{what}: the file is not named in {err:?}"
        );
        for needle in needles {
            assert!(err.contains(needle), "{what}: {needle:?} not in {err:?}");
        }
    }
    // An unreadable drop-in is named too.
    let bad = write_drop_in(&dir, "20-bad.toml", "");
    std::fs::write(&bad, b"\xff\xfe").unwrap();
    let (status, err) = daemon_with(&config);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains(bad.to_str().unwrap()), "{err}");
    assert!(!dir.socket().exists());
    assert_eq!(std::fs::read_dir(dir.root()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0660_and_sigterm_removes_it() {
    let mut daemon = Daemon::start("").await;
    let mode = std::fs::metadata(daemon.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    daemon.stop();
    // SIGINT stops it just the same.
    daemon.spawn().await;
    let status = daemon.stop_with(Signal::SIGINT);
    assert!(status.success(), "{status}");
    assert!(!daemon.socket().exists());
}

/// SIGTERM lets an RPC in progress finish (here a pull that ends when its stalled download times
/// out), and bounds the wait by shutdown_timeout_secs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_in_flight_rpcs_within_a_bound() {
    let reg = TestRegistry::get();
    let proxy = StallingProxy::start(&reg.registry).await;
    let image = format!("{}/crius-test/busybox:latest", proxy.addr);
    for (config, expect_answer) in [
        // The pull ends (UNAVAILABLE after 2 s without progress) before the 5 s bound.
        ("[registry]\nstall_timeout_secs = 2\n", true),
        // The pull would hang for a minute: the daemon exits at the bound anyway.
        (
            "shutdown_timeout_secs = 1\n[registry]\nstall_timeout_secs = 60\n",
            false,
        ),
    ] {
        let mut daemon = Daemon::start(config).await;
        let socket = daemon.socket();
        let image = image.clone();
        let pulling = tokio::spawn(async move {
            let channel = crate::harness::connect(&socket).await.unwrap();
            cri::image_service_client::ImageServiceClient::new(channel)
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = std::time::Instant::now();
        daemon.stop();
        let waited = started.elapsed();
        let answer = pulling.await.unwrap();
        if expect_answer {
            let status = answer.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(status.message().contains("no progress"), "{status:?}");
        } else {
            assert!(waited < Duration::from_secs(4), "waited {waited:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced() {
    let dir = TestDir::new();
    // A socket file with nobody listening, as a daemon killed with SIGKILL leaves it.
    drop(std::os::unix::net::UnixListener::bind(dir.socket()).unwrap());
    assert!(dir.socket().exists());
    let config = dir.write_config("config.toml", "");
    let mut daemon = Daemon::start_in(dir, config).await;
    daemon.stop();
}

#[test]
fn a_file_at_the_socket_path_is_not_clobbered() {
    let dir = TestDir::new();
    std::fs::write(dir.socket(), "precious").unwrap();
    let config = dir.write_config("config.toml", "");
    let (status, err) = daemon_with(&config);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.socket()).unwrap(), "precious");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_socket_or_root_is_refused() {
    let daemon = Daemon::start("").await;
    let other = TestDir::new();

    // Same socket, other root.
    let (status, _, err) = run_crius(&[
        "daemon",
        "--root",
        other.root().to_str().unwrap(),
        "--state",
        other.state().to_str().unwrap(),
        "--listen",
        &format!("unix://{}", daemon.socket().display()),
    ]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("already uses socket"), "{err}");
    assert!(err.contains(&daemon.pid().to_string()), "{err}");

    // Same root, other socket.
    let (status, _, err) = run_crius(&[
        "daemon",
        "--root",
        daemon.dir.root().to_str().unwrap(),
        "--state",
        other.state().to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("already uses root"), "{err}");
    assert!(!other.socket().exists());

    // The first daemon is untouched.
    daemon
        .runtime()
        .await
        .unwrap()
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
}

async fn stored_pod_cidr(daemon: &Daemon) -> String {
    let s = daemon
        .runtime()
        .await
        .unwrap()
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    s.info["podCIDR"].clone()
}

fn cidr(i: i64) -> String {
    format!("10.{}.{}.0/24", i / 256, i % 256)
}

/// Writes acknowledged before a kill -9 are read back after the restart, and the database file
/// is consistent whatever moment the kill hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_survives_kill_9_mid_write() {
    let mut daemon = Daemon::start("").await;
    let mut rt = daemon.runtime().await.unwrap();
    rt.update_runtime_config(pod_cidr_request(&cidr(0)))
        .await
        .unwrap();
    // Restart after a clean write.
    daemon.kill9();
    daemon.spawn().await;
    assert_eq!(stored_pod_cidr(&daemon).await, cidr(0));

    for round in 0..3 {
        let acked = Arc::new(AtomicI64::new(0));
        let writer = {
            let acked = acked.clone();
            let mut rt = daemon.runtime().await.unwrap();
            tokio::spawn(async move {
                for i in 1..60_000 {
                    if rt
                        .update_runtime_config(pod_cidr_request(&cidr(i)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    acked.store(i, Ordering::SeqCst);
                }
            })
        };
        // Writes are under way (the first acknowledged, even on a loaded machine), then the
        // kill lands somewhere in the middle of later ones.
        let started = std::time::Instant::now();
        while acked.load(Ordering::SeqCst) == 0 && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50 + 100 * round)).await;
        daemon.kill9();
        let _ = writer.await;
        let last_acked = acked.load(Ordering::SeqCst);
        assert!(last_acked > 0, "no write was acknowledged before the kill");
        daemon.spawn().await;
        let stored = stored_pod_cidr(&daemon).await;
        // The last acknowledged write, or the one in flight when the kill landed.
        assert!(
            stored == cidr(last_acked) || stored == cidr(last_acked + 1),
            "round {round}: stored {stored}, last acknowledged {}",
            cidr(last_acked)
        );
    }
    daemon.stop();
    let db = rusqlite::Connection::open(daemon.dir.root().join("crius.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn check_reports_the_host_and_fails_without_cni_plugins() {
    let dir = TestDir::new();
    let good = dir.write_config("good.toml", "");
    let (status, out, _) = run_crius(&["check", "--config", good.to_str().unwrap()]);
    assert!(status.success(), "crius check failed on this host:\n{out}");
    for needle in [
        "running as root",
        "net namespace",
        "overlayfs",
        "cgroup",
        "CNI plugin loopback",
        "iptables",
    ] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }
    // No CNI network config is a warning, not a failure.
    assert!(out.contains("[warn] CNI network config"), "{out}");

    let empty_bin = dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty_bin).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "root = {:?}\n[cni]\nbin_dirs = [{:?}]\n",
            dir.root(),
            empty_bin
        ),
    )
    .unwrap();
    let (status, out, _) = run_crius(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("[FAIL] CNI plugin loopback"), "{out}");
    assert_eq!(status.signal(), None);
}

#[test]
fn check_reports_the_cgroup_version_and_driver() {
    let dir = TestDir::new();
    let good = dir.write_config("good.toml", "");
    let (status, out, _) = run_crius(&["check", "--config", good.to_str().unwrap()]);
    assert!(status.success(), "{out}");
    assert!(out.contains("[ ok ] cgroup version: v"), "{out}");
    assert!(out.contains("[ ok ] cgroup driver: cgroupfs"), "{out}");
    if std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").is_ok() {
        assert!(
            out.contains("cgroup.subtree_control of /sys/fs/cgroup"),
            "{out}"
        );
    }
    assert!(!out.contains("D-Bus"), "{out}");

    // The systemd driver: check reports what it needs of the host. Where systemd is not PID 1
    // (this host), check fails and the daemon does not start, naming the bus it could not reach.
    let systemd = dir.write_config("systemd.toml", "cgroup_driver = \"systemd\"\n");
    let (_, out, err) = run_crius(&["check", "--config", systemd.to_str().unwrap()]);
    for needle in [
        "[ ok ] cgroup driver: systemd",
        "systemd as PID 1: ",
        "D-Bus system bus: ",
        "CNI plugin loopback",
    ] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}\n{err}");
    }
    let systemd_runs = std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd");
    if !systemd_runs {
        let (status, _, err) = run_crius(&["daemon", "--config", systemd.to_str().unwrap()]);
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(err.contains("system bus"), "{err}");
    }
}
