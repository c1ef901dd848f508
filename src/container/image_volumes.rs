//! Image volumes (`Mount.image`, KEP-4639): an image kubelet pulled, mounted read-only at a path
//! in the container, whole or one sub path of it.
//!
//! At CreateContainer each image is mounted on the host at `<root>/image-volumes/<id>/<n>` —
//! an overlay of its layers (a read-only bind of the only layer for a one-layer image) — and
//! the container gets a read-only bind of it (or of its sub path) like any volume. The layers
//! are kept from garbage collection by the container's record, the image itself cannot be
//! removed while a container mounts it, and RemoveContainer unmounts it.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use super::Containers;
use crate::cri;
use crate::error::{Error, Result};

/// An image mounted for a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageVolume {
    /// Its place in the config's `mounts`.
    pub index: usize,
    pub image_id: String,
    pub chain_ids: Vec<String>,
    /// The image's root, mounted on the host.
    pub mount_point: PathBuf,
}

/// Whether `mount` asks for an image rather than a host path.
pub fn is_image_mount(mount: &cri::Mount) -> bool {
    mount.image.as_ref().is_some_and(|i| !i.image.is_empty())
}

impl Containers {
    fn image_volumes_dir(&self, id: &str) -> PathBuf {
        self.image_volumes_root.join(id)
    }

    /// Mounts the images `config.mounts` names and returns them, with a config whose image
    /// mounts are read-only binds of them (for the spec). Nothing stays mounted on error.
    pub(super) async fn mount_image_volumes(
        &self,
        id: &str,
        config: &cri::ContainerConfig,
    ) -> Result<(Vec<ImageVolume>, cri::ContainerConfig)> {
        let mut volumes = Vec::new();
        let mut for_spec = config.clone();
        for (index, mount) in config.mounts.iter().enumerate() {
            if !is_image_mount(mount) {
                continue;
            }
            match self.mount_one(id, index, mount).await {
                Ok((volume, source)) => {
                    let bind = &mut for_spec.mounts[index];
                    bind.host_path = source.to_string_lossy().into_owned();
                    bind.readonly = true;
                    bind.image = None;
                    volumes.push(volume);
                }
                Err(e) => {
                    self.unmount_image_volumes(id, &volumes);
                    return Err(e);
                }
            }
        }
        Ok((volumes, for_spec))
    }

    /// One image mount: (the volume, the host path to bind into the container).
    async fn mount_one(
        &self,
        id: &str,
        index: usize,
        mount: &cri::Mount,
    ) -> Result<(ImageVolume, PathBuf)> {
        let field = format!("config.mounts[{index}]");
        let name = mount.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
        let sub_path = checked_sub_path(&field, &mount.image_sub_path)?;
        let leased = self
            .images
            .lease(name)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "image (for an image volume)",
                id: name.to_string(),
            })?;
        let mount_point = self.image_volumes_dir(id).join(index.to_string());
        std::fs::create_dir_all(&mount_point).map_err(crate::error::io_error(format!(
            "creating {}",
            mount_point.display()
        )))?;
        let volume = ImageVolume {
            index,
            image_id: leased.image.record.id.to_string(),
            chain_ids: leased
                .image
                .record
                .chain_ids
                .iter()
                .map(|c| c.to_string())
                .collect(),
            mount_point: mount_point.clone(),
        };
        mount_layers(&leased.layer_dirs, &mount_point)
            .map_err(|e| Error::Internal(format!("{field}: mounting image {name}: {e}")))?;
        let source = match resolve_sub_path(&mount_point, &sub_path) {
            Ok(source) => source,
            Err(reason) => {
                self.unmount_image_volumes(id, std::slice::from_ref(&volume));
                return Err(Error::invalid(
                    format!("{field}.image_sub_path"),
                    format!("{reason} in image {name}"),
                ));
            }
        };
        Ok((volume, source))
    }

    /// Unmounts a container's image volumes and removes their mount points. Idempotent.
    pub(super) fn unmount_image_volumes(&self, id: &str, volumes: &[ImageVolume]) {
        for volume in volumes {
            if let Err(e) = crate::sandbox::pod::unmount_and_remove(&volume.mount_point) {
                tracing::warn!(container_id = id, error = %e, "unmounting an image volume");
            }
        }
        let _ = std::fs::remove_dir(self.image_volumes_dir(id));
    }

    /// Image volumes no container record claims (a crash between mounting and saving the
    /// record): unmounted at start-up.
    pub(super) fn sweep_image_volumes(&self) {
        let Ok(dirs) = std::fs::read_dir(&self.image_volumes_root) else {
            return;
        };
        for dir in dirs.flatten() {
            let id = dir.file_name().to_string_lossy().into_owned();
            if self.table.find(&id).is_some() {
                continue;
            }
            let points: Vec<ImageVolume> = std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|p| ImageVolume {
                    index: 0,
                    image_id: String::new(),
                    chain_ids: Vec::new(),
                    mount_point: p.path(),
                })
                .collect();
            tracing::info!(container_id = %id, "unmounting image volumes of no container");
            self.unmount_image_volumes(&id, &points);
        }
    }

    /// A container that mounts image `image_id` as a volume, if any.
    pub fn image_volume_user(&self, image_id: &str) -> Option<String> {
        self.table
            .records()
            .into_iter()
            .find(|c| c.image_volumes.iter().any(|v| v.image_id == image_id))
            .map(|c| c.id)
    }
}

/// A relative path without `..`; empty for the image's root.
fn checked_sub_path(field: &str, sub_path: &str) -> Result<PathBuf> {
    let path = Path::new(sub_path);
    let bad = |why: &str| {
        Error::invalid(
            format!("{field}.image_sub_path"),
            format!("{sub_path:?} {why}"),
        )
    };
    if sub_path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if path.is_absolute() {
        return Err(bad("is absolute"));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad("contains .."));
    }
    Ok(path.to_path_buf())
}

/// The sub path inside the mounted image, symlinks resolved within it; it must exist.
fn resolve_sub_path(root: &Path, sub_path: &Path) -> std::result::Result<PathBuf, String> {
    if sub_path.as_os_str().is_empty() {
        return Ok(root.to_path_buf());
    }
    let resolved = crate::linux::path::secure_join(root, sub_path).map_err(|e| e.to_string())?;
    if !resolved.exists() {
        return Err(format!("{:?} does not exist", sub_path));
    }
    Ok(resolved)
}

/// The image's layers (bottom first) read-only at `target`.
fn mount_layers(layers: &[PathBuf], target: &Path) -> std::result::Result<(), nix::errno::Errno> {
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    match layers {
        [] => Err(nix::errno::Errno::ENOENT),
        [only] => {
            nix::mount::mount(
                Some(only),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro;
            nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
                .inspect_err(|_| {
                    let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
                })
        }
        _ => {
            let lower: Vec<String> = layers
                .iter()
                .rev()
                .map(|l| l.to_string_lossy().into_owned())
                .collect();
            let options = format!("lowerdir={}", lower.join(":"));
            nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                ro,
                Some(options.as_str()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_stay_inside_the_image() {
        let f = "config.mounts[0]";
        assert_eq!(checked_sub_path(f, "").unwrap(), PathBuf::new());
        assert_eq!(checked_sub_path(f, "a/b").unwrap(), PathBuf::from("a/b"));
        for bad in ["/etc", "../x", "a/../../b", "a\0b"] {
            let e = checked_sub_path(f, bad).unwrap_err();
            assert!(
                e.to_string().contains("config.mounts[0].image_sub_path"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_sub_path_resolves_its_links_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("data")).unwrap();
        std::os::unix::fs::symlink("/data", root.path().join("link")).unwrap();
        assert_eq!(
            resolve_sub_path(root.path(), Path::new("link")).unwrap(),
            root.path().join("data")
        );
        let e = resolve_sub_path(root.path(), Path::new("missing")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}
