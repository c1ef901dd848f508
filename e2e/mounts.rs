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

pub(crate) fn volume(host: &std::path::Path, path: &str, rro: bool) -> cri::Mount {
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
    let status = crate::runtime_info::status(&daemon, false).await;
    let features = status.runtime_handlers[0].features.unwrap();
    assert!(features.recursive_read_only_mounts, "advertised");
    assert!(
        status.features.unwrap().supplemental_groups_policy,
        "advertised"
    );

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

fn image_volume(image: &str, path: &str, sub_path: &str) -> cri::Mount {
    cri::Mount {
        container_path: path.into(),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        ..Default::default()
    }
}

fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|point| point.starts_with(&dir))
        .collect()
}

/// Image volumes (KEP-4639): a multi-layer image (whiteouts, an opaque dir, a symlink) and a
/// one-layer image mounted read-only, whole or by sub path; bad sub paths and unknown images
/// refused with nothing left mounted; the image kept while a container mounts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_mount_as_read_only_volumes_with_sub_paths() {
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let reg = crate::registry::TestRegistry::get();
    let layers = reg.image("layers").reference.clone();
    pull(&daemon, &busybox()).await.unwrap();
    pull(&daemon, &layers).await.unwrap();
    let volumes_root = daemon.dir.root().join("image-volumes");
    let pod = start_pod(&daemon, "image-volumes", |_| {}).await;

    let mut config = container_config("reader", &["sleep", "1000"]);
    config.mounts = vec![
        image_volume(&layers, "/vol", ""),
        image_volume(&layers, "/sub", "to-data"),
        image_volume(&busybox(), "/bb", "bin"),
    ];
    let id = run(&daemon, &pod, config).await;
    let (out, _) = sh(
        &daemon,
        &id,
        "cat /vol/data/b; ls /vol/data /vol/opaque | tr '\\n' ' '; echo; cat /sub; \
         test -x /bb/busybox && echo busybox; touch /vol/x 2>&1 || true",
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "b", "{out}");
    assert!(
        lines[1].contains("/vol/data: b") || lines[1].starts_with("/vol/data:"),
        "{out}"
    );
    assert!(
        !lines[1].contains(" a "),
        "the whiteout hides data/a: {out}"
    );
    assert!(
        lines[1].ends_with("z "),
        "the opaque dir holds only z: {out}"
    );
    assert_eq!(
        lines[2], "b",
        "the sub path follows its symlink inside the image: {out}"
    );
    assert_eq!(lines[3], "busybox", "{out}");
    assert!(lines[4].contains("Read-only file system"), "{out}");
    assert_eq!(mounts_under(&volumes_root).len(), 3);

    // Removing a mounted image is refused; the container keeps it.
    let err = crate::images::remove(&daemon, &layers).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&id), "{}", err.message());

    // Bad sub paths and unknown images: refused, nothing mounted or created.
    let before = mounts_under(&volumes_root).len();
    for (sub, image, code) in [
        ("missing", layers.as_str(), Code::InvalidArgument),
        ("../etc", layers.as_str(), Code::InvalidArgument),
        ("/etc", layers.as_str(), Code::InvalidArgument),
        ("", "127.0.0.1:1/not/pulled:latest", Code::NotFound),
    ] {
        let mut config = container_config("bad", &["true"]);
        config.mounts = vec![
            image_volume(&busybox(), "/ok", ""),
            image_volume(image, "/v", sub),
        ];
        let err = create(&daemon, &pod, config).await.unwrap_err();
        assert_eq!(err.code(), code, "{sub:?}: {err:?}");
        if code == Code::InvalidArgument {
            assert!(
                err.message().contains("mounts[1].image_sub_path"),
                "{}",
                err.message()
            );
        }
        assert_eq!(
            mounts_under(&volumes_root).len(),
            before,
            "{sub:?} left a mount"
        );
    }

    remove_all(&daemon, &pod).await;
    assert!(mounts_under(&volumes_root).is_empty());
    assert_eq!(
        std::fs::read_dir(&volumes_root)
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    crate::images::remove(&daemon, &layers).await.unwrap();
}
