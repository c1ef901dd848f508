//! User namespaces (`hostUsers: false`): a pod of its own user namespace with kubelet's
//! mappings, its rootfs and volumes idmapped, root in the pod not root on the host; procMount
//! Unmasked there; and the requests kubelet never sends refused with nothing left behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use crius::cri;
use tonic::Code;

use crate::containers::{
    Pod, busybox, container_config, create, pid_of, remove_all, run, security, sh, start_pod, state,
};
use crate::harness::Daemon;
use crate::images::pull;
use crate::sandbox::{list_pods, namespace_options, run_pod};

const UID_HOST: u32 = 2_000_000;
const GID_HOST: u32 = 3_000_000;
const LENGTH: u32 = 65536;

fn mapping(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
    cri::IdMapping {
        container_id,
        host_id,
        length,
    }
}

/// The user namespace options kubelet sends for `hostUsers: false` (one range each).
fn pod_userns() -> cri::UserNamespace {
    cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: vec![mapping(0, UID_HOST, LENGTH)],
        gids: vec![mapping(0, GID_HOST, LENGTH)],
    }
}

/// A container as kubelet builds it in a user-namespaced pod: the pod's namespace options
/// (userns included) and, for procMount Default, kubelet's masked and read-only paths.
fn userns_container(
    name: &str,
    command: &[&str],
    pod: &Pod,
    unmasked: bool,
) -> cri::ContainerConfig {
    let mut config = container_config(name, command);
    let options = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let security = security(&mut config);
    security.namespace_options = options;
    if !unmasked {
        security.masked_paths = [
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
            "/sys/firmware",
        ]
        .map(String::from)
        .to_vec();
        security.readonly_paths = ["/proc/sys", "/proc/sysrq-trigger"]
            .map(String::from)
            .to_vec();
    }
    config
}

/// A writable volume.
fn volume(host: &std::path::Path, path: &str) -> cri::Mount {
    cri::Mount {
        readonly: false,
        ..crate::mounts::volume(host, path, false)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespaced_pod_is_root_only_over_what_it_owns() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let status_reply = crate::runtime_info::status(&daemon, false).await;
    assert!(
        status_reply.runtime_handlers[0]
            .features
            .unwrap()
            .user_namespaces,
        "advertised"
    );
    // A volume holding a file only the host's root may read.
    let vol = daemon.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("root-only"), "secret\n").unwrap();
    std::fs::set_permissions(
        vol.join("root-only"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let pod = start_pod(&daemon, "userns", |c| {
        namespace_options(c).userns_options = Some(pod_userns());
    })
    .await;
    let mut config = userns_container(
        "web",
        &["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/etc"],
        &pod,
        false,
    );
    config.mounts = vec![volume(&vol, "/vol")];
    let id = run(&daemon, &pod, config).await;

    // The pod's mappings, and root inside.
    let (out, _) = sh(
        &daemon,
        &id,
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g",
    )
    .await;
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "2000000", "65536", "0", "3000000", "65536", "0", "0"],
        "{out}"
    );
    // The host sees the pod's root as the mapped ids, and ContainerStatus says 0.
    let user = state(&daemon, &id).await.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (0, 0));
    let pid = pid_of(&daemon, &id).await;
    let host = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        host.lines().any(|l| l.starts_with("Uid:\t2000000")),
        "{host}"
    );

    // Not root on the host: no device nodes, no writing a file the host's root owns.
    let (out, code) = sh(&daemon, &id, "mknod /tmp/null c 1 3 2>&1").await;
    assert_ne!(code, 0, "mknod in a user-namespaced pod: {out}");
    assert!(out.contains("Operation not permitted"), "{out}");
    let (out, code) = sh(
        &daemon,
        &id,
        "ls -ln /etc/hosts; (echo x >> /etc/hosts) 2>&1",
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("65534") && out.contains("denied"), "{out}");

    // The pod's files and /dev/shm work inside.
    let (out, code) = sh(
        &daemon,
        &id,
        "hostname; grep -c userns-host /etc/hosts; echo s > /dev/shm/f && cat /dev/shm/f",
    )
    .await;
    assert_eq!((out.as_str(), code), ("userns-host\n1\ns\n", 0));

    // The rootfs: the image's files are root's; what the pod writes lands as its host ids.
    let (out, _) = sh(
        &daemon,
        &id,
        "stat -c '%u %g' /bin/busybox /; echo new > /made-here",
    )
    .await;
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "0", "0"],
        "{out}"
    );
    let made = daemon
        .dir
        .root()
        .join("containers")
        .join(&id)
        .join("upper/made-here");
    let meta = std::fs::metadata(&made).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (UID_HOST, GID_HOST));

    // The idmapped volume: the host root's file is the pod root's, and back.
    let (out, code) = sh(
        &daemon,
        &id,
        "cat /vol/root-only && stat -c '%u %g' /vol/root-only && touch /vol/from-pod",
    )
    .await;
    assert_eq!((out.as_str(), code), ("secret\n0 0\n", 0));
    let meta = std::fs::metadata(vol.join("from-pod")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    // procMount Default masks /proc/keys; Unmasked (empty lists, kubelet's way) does not.
    let (out, _) = sh(&daemon, &id, "cat /proc/mounts").await;
    assert!(out.contains(" /proc/keys "), "{out}");
    let unmasked = run(
        &daemon,
        &pod,
        userns_container("unmasked", &["sleep", "1000"], &pod, true),
    )
    .await;
    let (out, _) = sh(&daemon, &unmasked, "grep -c ' /proc/' /proc/mounts").await;
    assert_eq!(out.trim(), "0", "no masked or read-only /proc path");

    // A terminal belongs to the process's user (its group stays tty).
    let mut config = userns_container(
        "tty",
        &[
            "sh",
            "-c",
            "stat -c 'tty %u %g' $(readlink /proc/self/fd/0); exec sleep 1000",
        ],
        &pod,
        false,
    );
    config.tty = true;
    security(&mut config).run_as_user = Some(cri::Int64Value { value: 1000 });
    run(&daemon, &pod, config).await;
    crate::containers::wait_for_log(&pod.logs.join("tty.log"), "tty 1000 5").await;

    // Port-forward and stats work in the pod's namespaces.
    let url = crate::streaming::port_forward_url(&daemon, &pod.id, &[8080])
        .await
        .unwrap();
    let forward = crate::stream_client::spdy_port_forward(&url).await.unwrap();
    let got = forward
        .roundtrip(
            8080,
            b"GET /hostname HTTP/1.0\r\n\r\n",
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&got.data).ends_with("userns-host\n"));
    forward.close().await.unwrap();
    let stats = crate::stats::container_stats(&daemon, &id).await;
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    remove_all(&daemon, &pod).await;
}

/// A pod config edit kubelet never makes, and words the refusal must name.
type RefusedCase = (&'static str, fn(&mut cri::PodSandboxConfig), &'static str);

/// A ramfs cannot be idmapped on any kernel: a volume on one is refused at CreateContainer.
struct Ramfs(std::path::PathBuf);

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_requests_kubelet_never_sends_are_refused() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let refused = |name: &'static str, edit: fn(&mut cri::PodSandboxConfig)| {
        let mut config = crate::sandbox::pod_config(&daemon, name);
        edit(&mut config);
        config
    };
    let cases: [RefusedCase; 6] = [
        (
            "two",
            |c| {
                let mut ns = pod_userns();
                ns.uids.push(mapping(0, 9_000_000, LENGTH));
                namespace_options(c).userns_options = Some(ns);
            },
            "userns_options.uids",
        ),
        (
            "notroot",
            |c| {
                let mut ns = pod_userns();
                ns.gids = vec![mapping(1, GID_HOST, LENGTH)];
                namespace_options(c).userns_options = Some(ns);
            },
            "container id 0",
        ),
        (
            "container",
            |c| {
                namespace_options(c).userns_options = Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                });
            },
            "CONTAINER",
        ),
        (
            "target",
            |c| {
                namespace_options(c).userns_options = Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Target as i32,
                    ..Default::default()
                });
            },
            "TARGET",
        ),
        (
            "hostnet",
            |c| {
                namespace_options(c).userns_options = Some(pod_userns());
                namespace_options(c).network = cri::NamespaceMode::Node as i32;
            },
            "network",
        ),
        (
            "hostroot",
            |c| {
                let mut ns = pod_userns();
                ns.uids = vec![mapping(0, 0, LENGTH)];
                namespace_options(c).userns_options = Some(ns);
            },
            "host's root",
        ),
    ];
    for (name, edit, words) in cases {
        let err = run_pod(&daemon, refused(name, edit)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(err.message().contains(words), "{name}: {}", err.message());
    }
    assert!(list_pods(&daemon, None).await.is_empty(), "nothing made");

    // A container cannot ask for another user namespace than its pod's.
    let pod = start_pod(&daemon, "mismatch", |c| {
        namespace_options(c).userns_options = Some(pod_userns());
    })
    .await;
    let mut config = userns_container("other", &["true"], &pod, false);
    let mut other = pod_userns();
    other.uids = vec![mapping(0, 5_000_000, LENGTH)];
    security(&mut config)
        .namespace_options
        .as_mut()
        .unwrap()
        .userns_options = Some(other);
    let err = create(&daemon, &pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("userns_options"),
        "{}",
        err.message()
    );

    // A volume on a filesystem that cannot be idmapped: FAILED_PRECONDITION naming it.
    let dir = daemon.dir.path().join("ramfs");
    std::fs::create_dir_all(&dir).unwrap();
    nix::mount::mount(
        Some("ramfs"),
        &dir,
        Some("ramfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _ramfs = Ramfs(dir.clone());
    let mut config = userns_container("ramfs", &["true"], &pod, false);
    config.mounts = vec![volume(&dir, "/data")];
    let err = create(&daemon, &pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("ramfs") && err.message().contains("/data"),
        "{}",
        err.message()
    );
    remove_all(&daemon, &pod).await;
}

/// crictl's shape (a pod-level PID namespace) in a user namespace, across a daemon crash: the
/// containers share the pod's processes and the new daemon still execs into them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespaced_pod_sharing_pids_survives_a_daemon_crash() {
    let mut daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let pod = start_pod(&daemon, "usernspid", |c| {
        let options = namespace_options(c);
        options.pid = cri::NamespaceMode::Pod as i32;
        options.userns_options = Some(pod_userns());
    })
    .await;
    let a = run(
        &daemon,
        &pod,
        userns_container("a", &["sleep", "1001"], &pod, false),
    )
    .await;
    let b = run(
        &daemon,
        &pod,
        userns_container("b", &["sleep", "1002"], &pod, false),
    )
    .await;
    daemon.kill9();
    daemon.spawn().await;
    let (out, code) = sh(&daemon, &b, "ps; cat /proc/self/uid_map").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("sleep 1001") && out.contains("2000000"),
        "{out}"
    );
    let (out, _) = sh(&daemon, &a, "id -u").await;
    assert_eq!(out.trim(), "0");
    remove_all(&daemon, &pod).await;
}
