//! ImageService: pulls from the test registries, names, removal, GC, auth, mirrors, failures.

use std::path::Path;
use std::time::{Duration, Instant};

use crius::cri;
use tonic::Code;

use crate::harness::Daemon;
use crate::registry::{StallingProxy, TestRegistry, dead_port};

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

pub async fn pull(daemon: &Daemon, image: &str) -> Result<String, tonic::Status> {
    pull_with(daemon, image, None).await
}

async fn pull_with(
    daemon: &Daemon,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    daemon
        .image()
        .await
        .unwrap()
        .pull_image(cri::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(daemon: &Daemon, image: &str) -> Option<cri::Image> {
    daemon
        .image()
        .await
        .unwrap()
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

async fn list(daemon: &Daemon) -> Vec<cri::Image> {
    daemon
        .image()
        .await
        .unwrap()
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images
}

pub async fn remove(daemon: &Daemon, image: &str) -> Result<(), tonic::Status> {
    daemon
        .image()
        .await
        .unwrap()
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .map(|_| ())
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Waits (bounded) for background garbage collection to leave `n` snapshots and blobs.
async fn wait_for_store(daemon: &Daemon, snapshots: usize, blobs: usize) {
    let root = daemon.dir.root();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = entries(&root.join("snapshots"));
        let b = entries(&root.join("content/sha256"));
        if s == snapshots && b == blobs {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "image store holds {s} snapshots and {b} blobs, expected {snapshots} and {blobs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_look_up_by_every_name() {
    let reg = TestRegistry::get();
    let bb = reg.image("busybox");
    let daemon = Daemon::start("").await;
    let id = pull(&daemon, &bb.reference).await.unwrap();
    assert_eq!(id, bb.id);

    let image = status(&daemon, &bb.reference).await.expect("image status");
    assert_eq!(image.id, bb.id);
    assert_eq!(image.repo_tags, vec![bb.reference.clone()]);
    assert_eq!(
        image.repo_digests,
        vec![format!("{}@{}", bb.repo, bb.manifest)]
    );
    assert!(image.size > 1_000_000, "size {}", image.size);
    assert_eq!(image.uid.as_ref().map(|u| u.value), Some(0));
    for name in [
        bb.id.clone(),
        bb.id.trim_start_matches("sha256:").to_string(),
        bb.id[7..19].to_string(),
        image.repo_digests[0].clone(),
    ] {
        assert_eq!(
            status(&daemon, &name).await.as_ref(),
            Some(&image),
            "by {name}"
        );
    }
    assert_eq!(list(&daemon).await, vec![image.clone()]);
    // A filter by name lists just that image.
    let filtered = daemon
        .image()
        .await
        .unwrap()
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&bb.id),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered, vec![image.clone()]);

    // verbose: the image config as JSON.
    let verbose = daemon
        .image()
        .await
        .unwrap()
        .image_status(cri::ImageStatusRequest {
            image: spec(&bb.reference),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "sh");

    // Unknown image: an empty answer, not an error.
    assert!(status(&daemon, "127.0.0.1:1/none:latest").await.is_none());

    // ImageFsInfo counts the unpacked layer.
    let fs = daemon
        .image()
        .await
        .unwrap()
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    let busybox_size = std::fs::metadata("/bin/busybox").unwrap().len();
    assert!(usage.used_bytes.unwrap().value >= busybox_size);
    assert!(usage.inodes_used.unwrap().value > 100);
    assert!(
        usage
            .fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .starts_with(&daemon.dir.root().display().to_string())
    );

    // Records survive a restart.
    let mut daemon = daemon;
    daemon.stop();
    daemon.spawn().await;
    assert_eq!(status(&daemon, &bb.reference).await, Some(image));
    remove(&daemon, &bb.id).await.unwrap();
    wait_for_store(&daemon, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_digest_has_no_tag() {
    let reg = TestRegistry::get();
    let bb = reg.image("busybox");
    let daemon = Daemon::start("").await;
    let by_digest = format!("{}@{}", bb.repo, bb.manifest);
    assert_eq!(pull(&daemon, &by_digest).await.unwrap(), bb.id);
    let image = status(&daemon, &by_digest).await.unwrap();
    assert!(image.repo_tags.is_empty(), "{:?}", image.repo_tags);
    assert_eq!(image.repo_digests, vec![by_digest.clone()]);
    // A digest that is not in the registry.
    let missing = format!("{}@sha256:{}", bb.repo, "0".repeat(64));
    let err = pull(&daemon, &missing).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    remove(&daemon, &by_digest).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_indexes_resolve_to_the_host_platform() {
    let reg = TestRegistry::get();
    let daemon = Daemon::start("").await;
    for name in ["multiarch_oci", "multiarch_docker"] {
        let img = reg.image(name);
        assert_eq!(
            pull(&daemon, &img.reference).await.unwrap(),
            img.id,
            "{name}"
        );
        let image = status(&daemon, &img.reference).await.unwrap();
        // The repo digest is the index's, as kubelet records it.
        assert_eq!(
            image.repo_digests,
            vec![format!("{}@{}", img.repo, img.index.as_deref().unwrap())]
        );
        remove(&daemon, &img.id).await.unwrap();
    }
    // OCI single-arch, with a numeric user in its config.
    let oci = reg.image("busybox_oci");
    pull(&daemon, &oci.reference).await.unwrap();
    let image = status(&daemon, &oci.reference).await.unwrap();
    assert_eq!(image.uid.map(|u| u.value), Some(1002));
    remove(&daemon, &oci.id).await.unwrap();
    wait_for_store(&daemon, 0, 0).await;
}

/// The layers of the multi-layer image, mounted with overlayfs exactly as a container's rootfs
/// will be: whiteouts hide, opaque dirs reset, and every entry kind arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_unpack_into_an_overlay_ready_form() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let reg = TestRegistry::get();
    let img = reg.image("layers");
    let daemon = Daemon::start("").await;
    pull(&daemon, &img.reference).await.unwrap();
    let verbose = daemon
        .image()
        .await
        .unwrap()
        .image_status(cri::ImageStatusRequest {
            image: spec(&img.reference),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    let chain_ids: Vec<String> = serde_json::from_value(info["chainIDs"].clone()).unwrap();
    assert_eq!(chain_ids.len(), 5);
    let db = rusqlite::Connection::open(daemon.dir.root().join("crius.db")).unwrap();
    // overlayfs wants the top layer first.
    let lower: Vec<String> = chain_ids
        .iter()
        .rev()
        .map(|c| {
            let num: i64 = db
                .query_row(
                    "SELECT num FROM snapshots WHERE chain_id = ?1 AND ready = 1",
                    [c],
                    |r| r.get(0),
                )
                .unwrap();
            daemon
                .dir
                .root()
                .join(format!("snapshots/{num}/fs"))
                .display()
                .to_string()
        })
        .collect();
    let mnt = daemon.dir.path().join("merged");
    std::fs::create_dir(&mnt).unwrap();
    nix::mount::mount(
        Some("overlay"),
        &mnt,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}", lower.join(":")).as_str()),
    )
    .expect("overlay mount of the image layers");
    let check = std::panic::catch_unwind(|| {
        assert!(mnt.join("bin/sh").exists());
        assert!(!mnt.join("data/a").exists(), "whiteout did not hide data/a");
        let b = std::fs::metadata(mnt.join("data/b")).unwrap();
        assert_eq!((b.mode() & 0o7777, b.uid(), b.gid()), (0o600, 33, 33));
        assert!(
            !mnt.join("opaque/x").exists(),
            "opaque dir kept a lower file"
        );
        assert!(
            !mnt.join("opaque/sub").exists(),
            "opaque dir kept a lower dir"
        );
        assert_eq!(
            std::fs::read_to_string(mnt.join("opaque/z")).unwrap(),
            "z\n"
        );
        let z = std::fs::metadata(mnt.join("zstd-file")).unwrap();
        assert_eq!(z.mode() & 0o7777, 0o4755);
        assert_eq!(
            z.ino(),
            std::fs::metadata(mnt.join("zstd-link")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(mnt.join("to-data")).unwrap(),
            Path::new("data/b")
        );
        let dev = std::fs::metadata(mnt.join("null-dev")).unwrap();
        assert!(dev.file_type().is_char_device());
        assert_eq!(dev.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(
            std::fs::read_to_string(mnt.join("plain-file")).unwrap(),
            "uncompressed\n"
        );
        let out = std::process::Command::new("getfattr")
            .args(["--only-values", "-n", "user.crius"])
            .arg(mnt.join("xattr-file"))
            .output();
        if let Ok(out) = out {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "test");
        }
        assert_eq!(
            std::fs::metadata(mnt.join("bin/sh")).unwrap().mtime(),
            1_700_000_000
        );
    });
    nix::mount::umount(&mnt).unwrap();
    if let Err(panic) = check {
        std::panic::resume_unwind(panic);
    }
    drop(db);
    remove(&daemon, &img.id).await.unwrap();
    wait_for_store(&daemon, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_layers_are_refused_and_nothing_escapes() {
    let reg = TestRegistry::get();
    let daemon = Daemon::start("").await;
    for (name, reason) in [
        ("evil_dotdot", "path with .."),
        ("evil_absolute", "absolute path"),
        ("evil_symlink", "path through a symlink"),
        ("evil_hardlink", "path with .."),
    ] {
        let img = reg.image(name);
        let err = pull(&daemon, &img.reference).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{name}: {err:?}");
        assert!(err.message().contains(reason), "{name}: {}", err.message());
        assert!(
            err.message().contains("refused"),
            "{name}: {}",
            err.message()
        );
        assert!(status(&daemon, &img.reference).await.is_none(), "{name}");
    }
    for escaped in [
        "/tmp/escape-absolute",
        "/tmp/escape-symlink",
        "/escape-dotdot",
    ] {
        assert!(!Path::new(escaped).exists(), "{escaped} was written");
    }
    assert!(!daemon.dir.root().join("escape-dotdot").exists());
    assert!(list(&daemon).await.is_empty());
    wait_for_store(&daemon, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_blob_fails_the_pull_and_keeps_nothing() {
    let reg = TestRegistry::get();
    let img = reg.image("corrupt");
    let daemon = Daemon::start("").await;
    let err = pull(&daemon, &img.reference).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(
        err.message().contains(img.layers.last().unwrap()),
        "{}",
        err.message()
    );
    assert!(list(&daemon).await.is_empty());
    wait_for_store(&daemon, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_are_tried_in_order_and_names_stay_original() {
    let reg = TestRegistry::get();
    let bb = reg.image("busybox");
    let dead = dead_port();
    let daemon = Daemon::start(&format!(
        "[registry.mirrors]\n\
         \"registry.k8s.io\" = [\"http://127.0.0.1:{dead}\", \"http://{}\"]\n\
         \"{}\" = [\"http://127.0.0.1:{dead}\"]\n",
        reg.registry, reg.registry
    ))
    .await;
    // The first mirror is down; the second serves it; the name stays registry.k8s.io.
    let name = "registry.k8s.io/crius-test/busybox:latest";
    assert_eq!(pull(&daemon, name).await.unwrap(), bb.id);
    let image = status(&daemon, name).await.unwrap();
    assert_eq!(image.repo_tags, vec![name.to_string()]);
    assert_eq!(
        image.repo_digests,
        vec![format!(
            "registry.k8s.io/crius-test/busybox@{}",
            bb.manifest
        )]
    );
    // Mirror down, not listed as itself: the registry itself is tried last.
    let oci = reg.image("busybox_oci");
    assert_eq!(pull(&daemon, &oci.reference).await.unwrap(), oci.id);
    // Both images share the busybox layer: one snapshot.
    assert_eq!(entries(&daemon.dir.root().join("snapshots")), 1);
    remove(&daemon, name).await.unwrap();
    remove(&daemon, &oci.id).await.unwrap();
    wait_for_store(&daemon, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_errors_have_the_right_codes() {
    let reg = TestRegistry::get();
    let daemon = Daemon::start("").await;
    let dead = dead_port();
    let err = pull(&daemon, &format!("127.0.0.1:{dead}/x/y:1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(&format!("127.0.0.1:{dead}")),
        "{}",
        err.message()
    );

    let err = pull(
        &daemon,
        &format!("{}/crius-test/no-such-image:latest", reg.registry),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no-such-image"), "{}", err.message());

    for bad in ["Not/A:Valid:Ref", "busybox@sha256:abc", ""] {
        let err = pull(&daemon, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }
    // RemoveImage is idempotent: an image that is not here is not an error.
    remove(&daemon, "never-pulled:1").await.unwrap();
    assert!(list(&daemon).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_registry_needs_credentials() {
    use base64::Engine;
    let reg = TestRegistry::get();
    let private = reg.image("private");
    let daemon = Daemon::start("").await;
    let err = pull(&daemon, &private.reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains(&reg.auth_registry),
        "{}",
        err.message()
    );

    let wrong = cri::AuthConfig {
        username: reg.user.clone(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull_with(&daemon, &private.reference, Some(wrong))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let right = cri::AuthConfig {
        username: reg.user.clone(),
        password: reg.password.clone(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&daemon, &private.reference, Some(right))
            .await
            .unwrap(),
        private.id
    );
    remove(&daemon, &private.id).await.unwrap();

    let encoded = cri::AuthConfig {
        auth: base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", reg.user, reg.password)),
        ..Default::default()
    };
    pull_with(&daemon, &private.reference, Some(encoded))
        .await
        .unwrap();
    remove(&daemon, &private.id).await.unwrap();
    // The password never reaches the log.
    assert!(!daemon.dir.log().contains(&reg.password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_json_serves_registries_the_request_does_not() {
    use base64::Engine;
    let reg = TestRegistry::get();
    let private = reg.image("private");
    let dir = crate::harness::TestDir::new();
    let auth_file = dir.path().join("auth.json");
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.auth_registry,
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", reg.user, reg.password))
        ),
    )
    .unwrap();
    let config = dir.write_config(
        "config.toml",
        &format!("[registry]\nauth_file = {auth_file:?}\n"),
    );
    let daemon = Daemon::start_in(dir, config).await;
    assert_eq!(pull(&daemon, &private.reference).await.unwrap(), private.id);
    remove(&daemon, &private.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_image_by_any_name_removes_all_its_names() {
    let reg = TestRegistry::get();
    let bb = reg.image("busybox");
    let copy = reg.image("busybox_copy");
    assert_eq!(bb.id, copy.id, "the copy is the same image");
    let daemon = Daemon::start("").await;
    let mut tags: Vec<String> = ["latest", "v1", "v2"]
        .iter()
        .map(|t| format!("{}:{t}", bb.repo))
        .collect();
    tags.push(copy.reference.clone());
    let mut digests = vec![
        format!("{}@{}", bb.repo, bb.manifest),
        format!("{}@{}", copy.repo, copy.manifest),
    ];
    digests.sort();
    // By one tag, by one digest name, by the id: every name goes, across repositories (1.36).
    for by in [tags[1].clone(), digests[1].clone(), bb.id.clone()] {
        for t in &tags {
            assert_eq!(pull(&daemon, t).await.unwrap(), bb.id);
        }
        let image = status(&daemon, &bb.id).await.unwrap();
        let mut got = image.repo_tags.clone();
        got.sort();
        let mut want = tags.clone();
        want.sort();
        assert_eq!(got, want);
        let mut got = image.repo_digests.clone();
        got.sort();
        assert_eq!(got, digests);
        assert_eq!(list(&daemon).await.len(), 1);

        remove(&daemon, &by).await.unwrap();
        for name in tags.iter().chain(&digests).chain([&bb.id]) {
            assert!(
                status(&daemon, name).await.is_none(),
                "{name} after removing {by}"
            );
        }
        assert!(list(&daemon).await.is_empty(), "removed by {by}");
        wait_for_store(&daemon, 0, 0).await;
        // Again: idempotent.
        remove(&daemon, &by).await.unwrap();
    }
}

/// One value identifies an image everywhere (1.36): PullImageResponse.image_ref, Image.id,
/// Container.image_id and ContainerStatus.image_id; image_ref is the digest name of the
/// repository the container was asked for. ImageSpec.image_ref, when given, picks the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_image_ref_is_the_id_images_and_containers_report() {
    use crate::containers::{container_config, create, remove_all, start_pod, state};
    let reg = TestRegistry::get();
    let bb = reg.image("busybox");
    let copy = reg.image("busybox_copy");
    let daemon = Daemon::start("").await;
    daemon.dir.write_bridge_cni_config();
    let pulled = pull(&daemon, &bb.reference).await.unwrap();
    assert_eq!(pulled, bb.id);
    assert_eq!(pull(&daemon, &copy.reference).await.unwrap(), pulled);
    let by_digest = format!("{}@{}", bb.repo, bb.manifest);
    assert_eq!(pull(&daemon, &by_digest).await.unwrap(), pulled);
    let image = status(&daemon, &bb.reference).await.unwrap();
    assert_eq!(image.id, pulled);
    assert_eq!(image.spec.as_ref().unwrap().image, pulled);
    assert_eq!(list(&daemon).await[0].id, pulled);

    let pod = start_pod(&daemon, "identity", |_| {}).await;
    let with_image = |name: &str, image: cri::ImageSpec| {
        let mut config = container_config(name, &["sleep", "1000"]);
        config.image = Some(image);
        config
    };
    // As kubelet asks: the pulled image_ref, and the name the user gave.
    let as_kubelet = create(
        &daemon,
        &pod,
        with_image(
            "kubelet",
            cri::ImageSpec {
                image: pulled.clone(),
                user_specified_image: copy.reference.clone(),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    // image_ref given: it picks the image, whatever `image` says.
    let pinned = create(
        &daemon,
        &pod,
        with_image(
            "pinned",
            cri::ImageSpec {
                image: "127.0.0.1:1/not/here:latest".into(),
                image_ref: pulled.clone(),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    let unknown = create(
        &daemon,
        &pod,
        with_image(
            "unknown",
            cri::ImageSpec {
                image: bb.reference.clone(),
                image_ref: format!("sha256:{}", "0".repeat(64)),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let copy_digest = format!("{}@{}", copy.repo, copy.manifest);
    let s = state(&daemon, &as_kubelet).await;
    assert_eq!(
        (s.image_id.as_str(), s.image_ref.as_str()),
        (pulled.as_str(), copy_digest.as_str())
    );
    let s = state(&daemon, &pinned).await;
    assert_eq!(s.image_id, pulled);
    assert!(
        s.image_ref.contains(&format!("@{}", bb.manifest)),
        "{}",
        s.image_ref
    );
    let listed = daemon
        .runtime()
        .await
        .unwrap()
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2);
    for c in &listed {
        assert_eq!(c.image_id, pulled, "{}", c.id);
        let s = state(&daemon, &c.id).await;
        assert_eq!(c.image_ref, s.image_ref, "{}", c.id);
    }

    // Removing the image by one tag removes every name; the containers keep their identity.
    remove(&daemon, &copy.reference).await.unwrap();
    assert!(list(&daemon).await.is_empty());
    assert!(status(&daemon, &bb.reference).await.is_none());
    assert_eq!(state(&daemon, &as_kubelet).await.image_id, pulled);
    // The containers keep the layer; the image's blobs go.
    wait_for_store(&daemon, 1, 0).await;
    remove_all(&daemon, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_share_one_download() {
    let reg = TestRegistry::get();
    let img = reg.image("layers");
    let daemon = Daemon::start("").await;
    let pulls: Vec<_> = (0..6)
        .map(|_| {
            let reference = img.reference.clone();
            let socket = daemon.socket();
            tokio::spawn(async move {
                let channel = crate::harness::connect(&socket).await.unwrap();
                cri::image_service_client::ImageServiceClient::new(channel)
                    .pull_image(cri::PullImageRequest {
                        image: spec(&reference),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().image_ref)
            })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap().unwrap(), img.id);
    }
    let log = daemon.dir.log();
    let pulled = log.lines().filter(|l| l.contains("image pulled")).count();
    assert_eq!(pulled, 1, "expected one pull, log:\n{log}");
    assert_eq!(entries(&daemon.dir.root().join("snapshots")), 5);
    remove(&daemon, &img.id).await.unwrap();
    wait_for_store(&daemon, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_fails_instead_of_hanging() {
    let reg = TestRegistry::get();
    let proxy = StallingProxy::start(&reg.registry).await;
    let daemon = Daemon::start("[registry]\nstall_timeout_secs = 1\n").await;
    let name = format!("{}/crius-test/busybox:latest", proxy.addr);
    let started = Instant::now();
    let err = pull(&daemon, &name).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("no progress"), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(list(&daemon).await.is_empty());
    wait_for_store(&daemon, 0, 0).await;
}

/// kill -9 in the middle of a layer download: after the restart no image is listed and the
/// partial snapshot is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_pull_leaves_no_image_and_no_partial_files() {
    let reg = TestRegistry::get();
    let proxy = StallingProxy::start(&reg.registry).await;
    let mut daemon = Daemon::start("").await;
    let name = format!("{}/crius-test/busybox:latest", proxy.addr);
    let socket = daemon.socket();
    let pulling = tokio::spawn(async move {
        let channel = crate::harness::connect(&socket).await.unwrap();
        cri::image_service_client::ImageServiceClient::new(channel)
            .pull_image(cri::PullImageRequest {
                image: spec(&name),
                ..Default::default()
            })
            .await
    });
    // Wait until the layer is half unpacked.
    let snapshots = daemon.dir.root().join("snapshots");
    let deadline = Instant::now() + Duration::from_secs(10);
    while entries(&snapshots) == 0 {
        assert!(
            Instant::now() < deadline,
            "the pull never started unpacking"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    daemon.kill9();
    assert!(pulling.await.unwrap().is_err());
    assert_eq!(
        entries(&snapshots),
        1,
        "the partial snapshot should be there before restart"
    );
    daemon.spawn().await;
    assert!(list(&daemon).await.is_empty());
    wait_for_store(&daemon, 0, 0).await;
    assert_eq!(entries(&daemon.dir.root().join("content/ingest")), 0);
}

/// The bearer-token flow most public registries use: challenge, token endpoint with basic
/// credentials (GET) or an identity token (POST), then the token on every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_challenge_is_answered() {
    use crate::registry::{BEARER_TOKEN, BearerFront, REFRESH_TOKEN};
    let reg = TestRegistry::get();
    let bb = reg.image("busybox");
    let front = BearerFront::start(&reg.registry, "alice", "s3cret").await;
    let daemon = Daemon::start("").await;
    let name = format!("{}/crius-test/busybox:latest", front.addr);

    let err = pull(&daemon, &name).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let basic = cri::AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    assert_eq!(pull_with(&daemon, &name, Some(basic)).await.unwrap(), bb.id);
    remove(&daemon, &bb.id).await.unwrap();

    let identity = cri::AuthConfig {
        identity_token: REFRESH_TOKEN.into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&daemon, &name, Some(identity)).await.unwrap(),
        bb.id
    );
    remove(&daemon, &bb.id).await.unwrap();

    let registry_token = cri::AuthConfig {
        registry_token: BEARER_TOKEN.into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&daemon, &name, Some(registry_token))
            .await
            .unwrap(),
        bb.id
    );
    remove(&daemon, &bb.id).await.unwrap();
    let log = daemon.dir.log();
    for secret in ["s3cret", REFRESH_TOKEN, BEARER_TOKEN] {
        assert!(!log.contains(secret), "{secret} reached the log");
    }
    wait_for_store(&daemon, 0, 0).await;
}
