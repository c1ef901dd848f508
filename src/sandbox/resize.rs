//! UpdatePodSandboxResources (in-place pod resize, CRI 1.33+): the pod's new resources and
//! overhead are kept in its record (PodSandboxStatus verbose reports them) and, when the
//! pod's cgroup is crius's, written to it: all or nothing, a refused value leaves the old
//! limits in place.
//!
//! Whose cgroup it is decides what is written. A parent kubelet named that did not exist was
//! made by crius for this pod, with the pod's limits (as under crictl): crius keeps limiting
//! it. A parent that existed is kubelet's: kubelet resizes its pod cgroups itself before it
//! calls this RPC, so crius records the values and leaves the cgroup alone, as containerd
//! does (its CRI plugin keeps the values in the sandbox's status and hands them to NRI and the
//! sandbox controller, and never writes the pod cgroup). The default parent, shared by the
//! pods that name none, is never one pod's to limit.

use crate::cgroups::{self, CgroupError};
use crate::cri;
use crate::error::{Error, Result};

use super::Sandboxes;
use super::record::SandboxRecord;

/// Who limits a pod's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodCgroupOwner {
    /// crius made it for this pod: it writes the pod's limits.
    Crius,
    /// kubelet (or whoever made the parent): crius records the limits only.
    Kubelet,
}

impl PodCgroupOwner {
    pub fn of(record: &SandboxRecord) -> Self {
        if record.made_pod_cgroup {
            PodCgroupOwner::Crius
        } else {
            PodCgroupOwner::Kubelet
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PodCgroupOwner::Crius => "crius",
            PodCgroupOwner::Kubelet => "kubelet",
        }
    }
}

impl Sandboxes {
    /// UpdatePodSandboxResources. A field left out keeps its value; NOT_FOUND for an unknown
    /// pod, INVALID_ARGUMENT naming the field for a value the kernel refuses.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: Option<cri::LinuxContainerResources>,
        overhead: Option<cri::LinuxContainerResources>,
    ) -> Result<PodCgroupOwner> {
        let not_found = || Error::NotFound {
            kind: "pod sandbox",
            id: id.to_string(),
        };
        let pod_id = self.get(id)?.ok_or_else(not_found)?.id;
        // Serialised with Stop and Remove of the pod and with other resizes of it.
        let _pod = self.lock_exclusive(&pod_id).await;
        let mut record = self.get(&pod_id)?.ok_or_else(not_found)?;
        let linux = record.config.linux.get_or_insert_with(Default::default);
        let old = cgroups::resources::pod_total(linux.resources.as_ref(), linux.overhead.as_ref());
        let resources = resources.or_else(|| linux.resources.clone());
        let overhead = overhead.or_else(|| linux.overhead.clone());
        let owner = self.owner_now(&record)?;
        if owner == PodCgroupOwner::Crius
            && let Some(total) =
                cgroups::resources::pod_total(resources.as_ref(), overhead.as_ref())
        {
            self.limit_pod_cgroup(&record, &total, old.as_ref())
                .await
                .map_err(|e| refused(&record.id, e))?;
        }
        let linux = record.config.linux.get_or_insert_with(Default::default);
        linux.resources = resources;
        linux.overhead = overhead;
        self.save(&record).await?;
        tracing::info!(pod_id = %record.id, limited_by = owner.as_str(), "pod resources updated");
        Ok(owner)
    }

    /// Who limits the pod's cgroup now: crius only while it made the cgroup and no other pod
    /// has come to share it (two pods naming the same parent).
    fn owner_now(&self, record: &SandboxRecord) -> Result<PodCgroupOwner> {
        if PodCgroupOwner::of(record) == PodCgroupOwner::Kubelet {
            return Ok(PodCgroupOwner::Kubelet);
        }
        let parent = record.named_cgroup_parent();
        let shared = self
            .list()?
            .iter()
            .any(|other| other.id != record.id && other.named_cgroup_parent() == parent);
        Ok(if shared {
            PodCgroupOwner::Kubelet
        } else {
            PodCgroupOwner::Crius
        })
    }

    /// Writes `total` to the pod's cgroup: on its slice too with the systemd driver, so that
    /// systemd never puts the old limits back. On a refusal the old limits stay.
    async fn limit_pod_cgroup(
        &self,
        record: &SandboxRecord,
        total: &cri::LinuxContainerResources,
        old: Option<&cri::LinuxContainerResources>,
    ) -> std::result::Result<(), CgroupError> {
        let parent = record.cgroup_parent().map_err(CgroupError::Missing)?;
        let slice = parent.rsplit('/').next().unwrap_or(&parent).to_string();
        if let Some(systemd) = self.driver.systemd() {
            systemd.set_limits(&slice, total).await?;
        }
        let version = self.cgroup_version;
        let written =
            tokio::task::block_in_place(|| cgroups::sandbox::resize(version, &parent, total));
        if written.is_err()
            && let (Some(systemd), Some(old)) = (self.driver.systemd(), old)
            && let Err(e) = systemd.set_limits(&slice, old).await
        {
            tracing::warn!(slice, error = %e, "the slice's previous limits could not be restored");
        }
        written
    }
}

/// A limit the kernel refused is the caller's error, naming the pod and the field.
fn refused(pod_id: &str, e: CgroupError) -> Error {
    match e.into_error("resources") {
        Error::InvalidArgument { field, reason } => Error::invalid(
            field,
            format!("pod {pod_id}: the kernel refused the change: {reason}"),
        ),
        other => other,
    }
}
