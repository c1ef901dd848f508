//! Volume mounts: recursive read-only (CRI 1.30+), made read-only down to every submount.

use crius::cri;
use tonic::Code;

use crate::containers::{busybox, container_config, create, remove_all, run, sh, start_pod};
use crate::harness::Daemon;
use crate::images::pull;

/// A host dir with a tmpfs mounted inside it, unmounted when dropped.
struct DirWithSubmount {
    dir: std::path::PathBuf,
}

impl DirWithSubmount {
    fn new(parent: &std::path::Path) -> DirWithSubmount {
        let dir = parent.join("vol");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &dir.join("sub"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        DirWithSubmount { dir }
    }
}

impl Drop for DirWithSubmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir.join("sub"), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn volume(host: &std::path::Path, path: &str, rro: bool) -> cri::Mount {
    cri::Mount {
        container_path: path.into(),
        host_path: host.display().to_string(),
        readonly: true,
        recursive_read_only: rro,
        propagation: cri::MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_read_only_mounts_reach_every_submount() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    pull(&daemon, &busybox()).await.unwrap();
    let status = daemon
        .runtime()
        .await
        .unwrap()
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let features = status.runtime_handlers[0].features.unwrap();
    assert!(features.recursive_read_only_mounts, "advertised");

    let host = DirWithSubmount::new(daemon.dir.path());
    let pod = start_pod(&daemon, "rro", |_| {}).await;
    let mut config = container_config("reader", &["sleep", "1000"]);
    config.mounts = vec![
        volume(&host.dir, "/ro", false),
        volume(&host.dir, "/rro", true),
    ];
    let id = run(&daemon, &pod, config).await;
    // A plain read-only bind leaves the submount writable; a recursive one does not.
    let (_, code) = sh(&daemon, &id, "touch /ro/sub/a").await;
    assert_eq!(
        code, 0,
        "the submount of a plain read-only bind stays writable"
    );
    let (out, code) = sh(&daemon, &id, "touch /rro/sub/b 2>&1; echo $?").await;
    assert!(out.contains("Read-only file system"), "{out} ({code})");
    let (_, code) = sh(&daemon, &id, "touch /rro/top").await;
    assert_ne!(code, 0);

    // As the CRI says: readonly set and private propagation, else INVALID_ARGUMENT.
    for (i, edit) in [
        (|m: &mut cri::Mount| m.readonly = false) as fn(&mut cri::Mount),
        |m: &mut cri::Mount| {
            m.propagation = cri::MountPropagation::PropagationHostToContainer as i32
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = volume(&host.dir, "/rro", true);
        edit(&mut m);
        let mut config = container_config(&format!("bad{i}"), &["true"]);
        config.mounts = vec![m];
        let err = create(&daemon, &pod, config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("recursive_read_only"), "{err:?}");
    }
    remove_all(&daemon, &pod).await;
}
