//! What a container of a user-namespaced pod needs from the host, checked at CreateContainer
//! so that a host that cannot give it fails there, clearly, rather than at start: idmapped
//! mounts of the image's layers and of each idmapped volume.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::linux::userns;
use crate::sandbox::record::SandboxRecord;

/// FAILED_PRECONDITION naming the layer or volume whose filesystem this kernel cannot idmap.
pub fn check_idmappable(
    pod: &SandboxRecord,
    layer_dirs: &[PathBuf],
    spec: &oci_spec::runtime::Spec,
) -> Result<()> {
    if pod.user_namespace().is_none() {
        return Ok(());
    }
    let userns = pod_user_namespace(pod)?;
    if let Some(layer) = layer_dirs.first() {
        probe(&userns, "the image layer", layer, false)?;
    }
    for m in spec.mounts().iter().flatten() {
        if m.uid_mappings().is_none() {
            continue;
        }
        let Some(source) = m.source() else { continue };
        let recursive = m.options().iter().flatten().any(|o| o == "rbind");
        let what = format!("the volume at {} from", m.destination().display());
        probe(&userns, &what, source, recursive)?;
    }
    Ok(())
}

/// The pod's user namespace: the owner of its pinned network namespace.
fn pod_user_namespace(pod: &SandboxRecord) -> Result<OwnedFd> {
    let netns = pod.netns.as_ref().ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "pod sandbox {} has a user namespace but no network namespace",
            pod.id
        ))
    })?;
    let file = std::fs::File::open(netns).map_err(|e| {
        Error::FailedPrecondition(format!(
            "pod sandbox {}: opening its network namespace {}: {e}",
            pod.id,
            netns.display()
        ))
    })?;
    userns::owner_of(&file)
        .map_err(|e| Error::FailedPrecondition(format!("pod sandbox {}: {e}", pod.id)))
}

fn probe(userns: &OwnedFd, what: &str, path: &Path, recursive: bool) -> Result<()> {
    userns::idmapped_tree(path, userns, recursive)
        .map(drop)
        .map_err(|errno| Error::FailedPrecondition(userns::idmap_refusal(what, path, errno)))
}
