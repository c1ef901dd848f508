//! CreateContainer: the request checked, the image's layers leased, the name reserved, the
//! OCI bundle (config.json, rootfs dirs) and the cgroup made. Nothing runs yet.

use std::path::{Path, PathBuf};

use super::record::{ContainerRecord, ContainerState, ProcessUser};
use super::{Containers, oci, spec};
use crate::cgroups;
use crate::clock::now_ns;
use crate::cri;
use crate::error::{Error, Result, io_error};
use crate::sandbox::Sandboxes;
use crate::sandbox::record::{SandboxRecord, SandboxState};

impl Containers {
    /// CreateContainer: the bundle, rootfs dirs, cgroup and record; the process is not started.
    /// The caller holds the pod's lock (shared), so the pod stays as it is meanwhile.
    pub async fn create(
        &self,
        sandboxes: &Sandboxes,
        pod_id: &str,
        config: cri::ContainerConfig,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::invalid("config.metadata", "missing"))?;
        if meta.name.is_empty() {
            return Err(Error::invalid("config.metadata.name", "empty"));
        }
        let spec_of_image = config.image.clone().unwrap_or_default();
        let image_name = image_to_resolve(&spec_of_image)?;
        let pod = sandboxes.get(pod_id)?.ok_or_else(|| Error::NotFound {
            kind: "pod sandbox",
            id: pod_id.to_string(),
        })?;
        if pod.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        // Held until the record, which keeps the layers from then on, is saved.
        let leased = self
            .images
            .lease(image_name)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "image",
                id: image_name.to_string(),
            })?;
        let image = &leased.image;
        let id = crate::sandbox::new_id()?;
        // Image volumes are mounted first: the spec binds them like any volume.
        let (image_volumes, for_spec) = self.mount_image_volumes(&id, &config).await?;
        let built = super::validate::create_request(
            &for_spec,
            &pod,
            &image.record.config.config,
            &leased.layer_dirs,
        )
        .and_then(|()| {
            let image_mounts: Vec<usize> = (0..config.mounts.len())
                .filter(|i| super::image_volumes::is_image_mount(&config.mounts[*i]))
                .collect();
            self.build_spec(
                sandboxes,
                &pod,
                &for_spec,
                &image.record.config.config,
                &id,
                (&leased.layer_dirs, &image_mounts),
            )
        })
        .and_then(|built| {
            super::userns::check_idmappable(&pod, &leased.layer_dirs, &built.0)?;
            Ok(built)
        })
        .and_then(|built| {
            let parent = pod
                .cgroup_parent()
                .map_err(|reason| Error::invalid("sandbox_config.linux.cgroup_parent", reason))?;
            Ok((built, parent))
        });
        let ((spec, new_pid_ns), cgroup_parent) = match built {
            Ok(built) => built,
            Err(e) => {
                self.unmount_image_volumes(&id, &image_volumes);
                return Err(e);
            }
        };
        let log_path = {
            let dir = &pod.config.log_directory;
            (!dir.is_empty() && !config.log_path.is_empty())
                .then(|| Path::new(dir).join(&config.log_path))
        };
        let image_ref = digested_reference(image, &spec_of_image);
        let record = ContainerRecord {
            id: id.clone(),
            sandbox_id: pod.id.clone(),
            config: config.clone(),
            image_id: image.record.id.to_string(),
            image_ref,
            chain_ids: image
                .record
                .chain_ids
                .iter()
                .map(|c| c.to_string())
                .collect(),
            state: ContainerState::Created,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            process: None,
            cgroup: cgroups::cgroup_of(&cgroup_parent, &id),
            log_path,
            stop_signal: super::stop_signal::choose(
                config.stop_signal,
                &image.record.config.config.stop_signal,
            )
            .map_err(|reason| Error::invalid("config.stop_signal", reason))?,
            new_pid_ns,
            user: ProcessUser::of_spec(&spec),
            image_volumes,
        };
        let entry = match self.reserve(record.clone()).await {
            Ok(entry) => entry,
            Err(e) => {
                self.unmount_image_volumes(&id, &record.image_volumes);
                return Err(e);
            }
        };
        drop(leased);
        // Nobody else can know the id yet; the lock keeps it so until the bundle is made.
        let _op = entry.op.lock().await;
        match self.make_bundle(&record, &spec).await {
            Ok(()) => {
                self.emit(&record, cri::ContainerEventType::ContainerCreatedEvent);
                tracing::info!(container_id = %id, pod_id = %pod.id, "container created");
                Ok(id)
            }
            Err(e) => {
                if let Err(undo) = self.destroy(&entry).await {
                    tracing::error!(container_id = %id, error = %undo, "undoing a failed create left debris");
                }
                Err(e)
            }
        }
    }

    /// Reserves the container's name in its pod (for its attempt) and records it: saved first,
    /// so whatever a crash leaves of the steps after, RemoveContainer finds.
    async fn reserve(
        &self,
        record: ContainerRecord,
    ) -> Result<std::sync::Arc<super::table::Entry>> {
        let _reserving = self.create_lock.lock().await;
        let meta = record.metadata();
        if let Some(holder) = self.table.records().into_iter().find(|c| {
            let m = c.metadata();
            c.sandbox_id == record.sandbox_id && m.name == meta.name && m.attempt == meta.attempt
        }) {
            return Err(Error::AlreadyExists(format!(
                "container {:?} (attempt {}) already exists in pod sandbox {} as {}",
                meta.name, meta.attempt, record.sandbox_id, holder.id
            )));
        }
        self.save(&record).await?;
        Ok(self.table.insert(record))
    }

    fn build_spec(
        &self,
        sandboxes: &Sandboxes,
        pod: &SandboxRecord,
        config: &cri::ContainerConfig,
        image: &crate::image::manifest::ContainerDefaults,
        id: &str,
        (chain_dirs, image_mounts): (&[PathBuf], &[usize]),
    ) -> Result<(oci_spec::runtime::Spec, bool)> {
        let security = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let passwd = read_image_file(chain_dirs, "etc/passwd");
        let group = read_image_file(chain_dirs, "etc/group");
        let user = spec::resolve_user(
            &spec::UserRequest {
                run_as_user: security.run_as_user.as_ref().map(|v| v.value),
                run_as_username: &security.run_as_username,
                run_as_group: security.run_as_group.as_ref().map(|v| v.value),
                supplemental_groups: &security.supplemental_groups,
                strict_groups: security.supplemental_groups_policy
                    == cri::SupplementalGroupsPolicy::Strict as i32,
            },
            &image.user,
            &passwd,
            &group,
        )
        .map_err(|e| Error::invalid("config.linux.security_context.run_as_user", e))?;
        let new_pid_ns = new_pid_namespace(pod, &security)?;
        same_user_namespace_as_pod(pod, &security)?;
        let plain_binds = image_mounts;
        if security.run_as_group.is_some()
            && security.run_as_user.is_none()
            && security.run_as_username.is_empty()
        {
            return Err(Error::invalid(
                "config.linux.security_context.run_as_group",
                "set without run_as_user or run_as_username",
            ));
        }
        let all_caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
        let grantable: Vec<String> = caps::read(None, caps::CapSet::Bounding)
            .map(|set| set.iter().map(|c| c.to_string()).collect())
            .unwrap_or_else(|_| all_caps.clone());
        let all_caps_ref: Vec<&str> = all_caps.iter().map(String::as_str).collect();
        let granted = if security.privileged {
            all_caps.clone()
        } else {
            let requested = security.capabilities.clone().unwrap_or_default();
            spec::capabilities(
                &requested.add_capabilities,
                &requested.drop_capabilities,
                &all_caps_ref,
            )
            .map_err(|e| Error::invalid("config.linux.security_context.capabilities", e))?
        };
        let seccomp = seccomp_profile(&security, &granted)?;
        let requested_adj = config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map_or(0, |r| r.oom_score_adj);
        let pod_dir = sandboxes.pod_dir(&pod.id);
        let own_ipc = !pod.host_ipc();
        let own_uts = !pod.host_network();
        let pod_view = oci::PodView {
            hostname: std::fs::read_to_string(pod_dir.join("hostname"))
                .unwrap_or_default()
                .trim()
                .to_string(),
            netns: pod.netns.clone(),
            ipc_ns: own_ipc.then(|| pod_dir.join("ns/ipc")),
            uts_ns: own_uts.then(|| pod_dir.join("ns/uts")),
            shm: own_ipc.then(|| pod_dir.join("shm")),
            hostname_file: pod_dir.join("hostname"),
            hosts_file: pod_dir.join("hosts"),
            resolv_file: pod_dir.join("resolv.conf"),
            privileged: pod
                .config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .is_some_and(|s| s.privileged),
            user_namespace: pod.user_namespace(),
        };
        let cgroup_parent = pod.cgroup_parent().unwrap_or_default();
        let inputs = oci::SpecInputs {
            config,
            image,
            pod: &pod_view,
            user,
            new_pid_ns,
            seccomp,
            oom_score_adj: clamp_oom_score_adj(requested_adj),
            cgroup_path: cgroups::cgroup_of(&cgroup_parent, id),
            all_capabilities: &all_caps_ref,
            grantable: &grantable,
            host_devices: if security.privileged {
                oci::host_devices()
            } else {
                vec![]
            },
            plain_binds,
        };
        let spec = oci::build(&inputs).map_err(|(field, reason)| Error::invalid(field, reason))?;
        Ok((spec, new_pid_ns))
    }

    /// The bundle dir with config.json and the rootfs mount point, the overlay's upper and
    /// work dirs, the exit dir, the log dir and the cgroup.
    async fn make_bundle(
        &self,
        record: &ContainerRecord,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<()> {
        let bundle = self.bundle(&record.id);
        for dir in ["rootfs", "upper", "work"] {
            let path = bundle.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(io_error(format!("creating {}", path.display())))?;
        }
        spec.save(bundle.join("config.json"))
            .map_err(|e| Error::Internal(format!("writing config.json: {e}")))?;
        let exits = self.exits_dir.join(&record.id);
        std::fs::create_dir_all(&exits)
            .map_err(io_error(format!("creating {}", exits.display())))?;
        if let Some(dir) = record.log_path.as_ref().and_then(|p| p.parent()) {
            std::fs::create_dir_all(dir)
                .map_err(io_error(format!("creating the log dir {}", dir.display())))?;
        }
        if self.driver.systemd().is_some() {
            // The container's scope is made for its process, at start.
            return Ok(());
        }
        let limits = limits_of(record);
        let rules = device_rules(spec);
        let version = self.cgroup_version;
        let cgroup = record.cgroup.clone();
        tokio::task::block_in_place(|| {
            cgroups::container::create(version, &cgroup, limits.as_ref(), &rules)
        })
        .map_err(|e| e.into_error("config.linux.resources"))
    }
}

/// The name the container's image is resolved by: `image_ref` (1.36: the image's digest, as
/// ContainerStatus.image_id reports it) when given, as it pins the image; else `image`
/// (kubelet's PullImageResponse.image_ref, or any name of the image).
fn image_to_resolve(spec: &cri::ImageSpec) -> Result<&str> {
    match (spec.image_ref.trim(), spec.image.trim()) {
        ("", "") => Err(Error::invalid("config.image.image", "empty")),
        ("", image) => Ok(image),
        (image_ref, _) => Ok(image_ref),
    }
}

/// The digested reference a container reports as its image_ref: the repo digest of the
/// repository the request named (by `image_ref`, `user_specified_image` or `image`), else the
/// image's first repo digest, else its id (an image with no digest name).
fn digested_reference(image: &crate::image::ImageInfo, spec: &cri::ImageSpec) -> String {
    use crate::image::reference::Reference;
    let named = [&spec.image_ref, &spec.user_specified_image, &spec.image]
        .into_iter()
        .filter_map(|name| Reference::parse(name).ok());
    for reference in named {
        let repository = reference.name();
        let found = image.repo_digests.iter().find(|d| {
            Reference::parse(d).is_ok_and(|r| {
                r.name() == repository
                    && reference
                        .digest
                        .as_ref()
                        .is_none_or(|want| r.digest.as_ref() == Some(want))
            })
        });
        if let Some(found) = found {
            return found.clone();
        }
    }
    image
        .repo_digests
        .first()
        .cloned()
        .unwrap_or_else(|| image.record.id.to_string())
}

/// The container's resources as CreateContainer (or the last UpdateContainerResources) gave
/// them.
pub(super) fn limits_of(record: &ContainerRecord) -> Option<cri::LinuxContainerResources> {
    record
        .config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
}

/// The spec's device rules, for the container's cgroup.
pub(super) fn device_rules(
    spec: &oci_spec::runtime::Spec,
) -> Vec<oci_spec::runtime::LinuxDeviceCgroup> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().clone())
        .unwrap_or_default()
}

/// A container shares its pod's user namespace: options that name another are refused.
fn same_user_namespace_as_pod(
    pod: &SandboxRecord,
    security: &cri::LinuxContainerSecurityContext,
) -> Result<()> {
    let field = "config.linux.security_context.namespace_options";
    let Some(asked) = security
        .namespace_options
        .as_ref()
        .and_then(|n| n.userns_options.as_ref())
    else {
        return Ok(());
    };
    if crate::sandbox::userns::pod_mappings(field, Some(asked))? != pod.user_namespace() {
        return Err(Error::invalid(
            format!("{field}.userns_options"),
            format!(
                "differs from the user namespace of pod sandbox {}: a container shares its pod's",
                pod.id
            ),
        ));
    }
    Ok(())
}

/// Which PID namespace the container gets: its own unless it shares the pod's (POD, when the
/// pod has one) or the host's (NODE).
fn new_pid_namespace(
    pod: &SandboxRecord,
    security: &cri::LinuxContainerSecurityContext,
) -> Result<bool> {
    let mode = security
        .namespace_options
        .as_ref()
        .map_or(cri::NamespaceMode::Pod as i32, |n| n.pid);
    let pod_mode = pod.namespace_options().pid;
    match cri::NamespaceMode::try_from(mode) {
        Ok(cri::NamespaceMode::Pod) if pod.pod_pid() => Ok(false),
        Ok(cri::NamespaceMode::Node) if pod.pod_pid() => Err(Error::invalid(
            "config.linux.security_context.namespace_options.pid",
            "NODE in a pod that has its own PID namespace",
        )),
        Ok(cri::NamespaceMode::Node) => Ok(false),
        Ok(cri::NamespaceMode::Target) => Err(Error::invalid(
            "config.linux.security_context.namespace_options.pid",
            "TARGET is not supported by crius yet",
        )),
        _ if pod_mode == cri::NamespaceMode::Node as i32 => Ok(false),
        _ => Ok(true),
    }
}

/// The seccomp profile the container asked for: RuntimeDefault (the built-in profile),
/// Unconfined (none) or Localhost (a profile file on this host).
fn seccomp_profile(
    security: &cri::LinuxContainerSecurityContext,
    capabilities: &[String],
) -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
    use crate::linux::seccomp;
    let field = "config.linux.security_context.seccomp";
    let localhost = |path: &str| -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
        if !path.starts_with('/') {
            return Err(Error::invalid(
                field,
                format!("localhost profile {path:?} is not an absolute path"),
            ));
        }
        let json = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(field, format!("reading profile {path:?}: {e}")))?;
        seccomp::load_profile(&json, capabilities)
            .map(Some)
            .map_err(|e| Error::invalid(field, format!("profile {path:?}: {e}")))
    };
    if let Some(profile) = &security.seccomp {
        return match cri::security_profile::ProfileType::try_from(profile.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
                Ok(Some(seccomp::runtime_default(capabilities)))
            }
            Ok(cri::security_profile::ProfileType::Unconfined) => Ok(None),
            Ok(cri::security_profile::ProfileType::Localhost) => localhost(&profile.localhost_ref),
            Err(_) => Err(Error::invalid(
                field,
                format!("unknown profile type {}", profile.profile_type),
            )),
        };
    }
    // The field older kubelets still send.
    #[allow(deprecated)]
    let path = security.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(None),
        "runtime/default" | "docker/default" => Ok(Some(seccomp::runtime_default(capabilities))),
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(path),
            None => Err(Error::invalid(
                "config.linux.security_context.seccomp_profile_path",
                format!("{other:?} is not a seccomp profile crius knows"),
            )),
        },
    }
}

/// Processes cannot lower their OOM score below the runtime's own without CAP_SYS_RESOURCE:
/// ask no lower than that, rather than fail.
fn clamp_oom_score_adj(requested: i64) -> i32 {
    let own: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let can_lower = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false);
    let floor = if can_lower { -1000 } else { own };
    requested.clamp(floor, 1000) as i32
}

/// A file of the image as the container will see it: from the topmost layer that has it.
fn read_image_file(chain_dirs: &[PathBuf], path: &str) -> String {
    chain_dirs
        .iter()
        .rev()
        .find_map(|dir| {
            let file = dir.join(path);
            std::fs::metadata(&file)
                .ok()
                .filter(|m| m.is_file())
                .and_then(|_| std::fs::read_to_string(&file).ok())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::Digest;
    use crate::image::{ImageInfo, ImageRecord};

    fn spec(image: &str, image_ref: &str, user: &str) -> cri::ImageSpec {
        cri::ImageSpec {
            image: image.into(),
            image_ref: image_ref.into(),
            user_specified_image: user.into(),
            ..Default::default()
        }
    }

    #[test]
    fn image_ref_pins_the_image_when_given() {
        assert_eq!(
            image_to_resolve(&spec("busybox", "", "")).unwrap(),
            "busybox"
        );
        assert_eq!(
            image_to_resolve(&spec("busybox", "sha256:abc", "")).unwrap(),
            "sha256:abc"
        );
        assert_eq!(
            image_to_resolve(&spec("", "sha256:abc", "")).unwrap(),
            "sha256:abc"
        );
        let err = image_to_resolve(&spec("", " ", "")).unwrap_err();
        assert!(err.to_string().contains("config.image.image"), "{err}");
    }

    #[test]
    fn image_ref_is_the_digest_of_the_repository_named() {
        let id = Digest::of(b"config");
        let a = format!("r.example/a@{}", Digest::of(b"a"));
        let b = format!("r.example/b@{}", Digest::of(b"b"));
        let info = ImageInfo {
            record: ImageRecord {
                id: id.clone(),
                manifest: Digest::of(b"m"),
                index: None,
                config: Default::default(),
                chain_ids: vec![],
                size: 1,
                pinned: false,
            },
            repo_tags: vec!["r.example/a:1".into(), "r.example/b:1".into()],
            repo_digests: vec![a.clone(), b.clone()],
        };
        let by_id = id.to_string();
        assert_eq!(
            digested_reference(&info, &spec(&by_id, "", "r.example/b:1")),
            b
        );
        assert_eq!(digested_reference(&info, &spec("r.example/b:1", "", "")), b);
        assert_eq!(digested_reference(&info, &spec(&by_id, &b, "")), b);
        assert_eq!(digested_reference(&info, &spec(&by_id, "", "")), a);
        let nameless = ImageInfo {
            repo_digests: vec![],
            ..info
        };
        assert_eq!(digested_reference(&nameless, &spec(&by_id, "", "")), by_id);
    }
}
