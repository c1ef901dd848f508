//! Containers: created as an OCI bundle (config.json, an overlay rootfs over the image's layer
//! snapshots, a cgroup with the limits), started, exec'd into and reaped by the pod's agent,
//! stopped and removed here. The store is the source of truth across restarts; the table in
//! memory (table.rs) is what RPCs read, one state machine per container, and the pod agents'
//! news (watch.rs) brings every start and exit as it happens, including those that happened
//! while the daemon was down.

mod create;
pub mod image_volumes;
mod lifecycle;
pub mod oci;
pub mod record;
mod running;
pub mod spec;
pub mod stats;
pub mod stop_signal;
pub mod streams;
pub mod table;
mod userns;
pub mod validate;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cgroups::CgroupVersion;
use crate::clock::now_ns;
use crate::cri;
use crate::error::{Error, Result};
use crate::image::Images;
use crate::store::{Store, Table};
use record::ContainerRecord;
use table::Entry;

pub struct Containers {
    store: Arc<Store>,
    images: Arc<Images>,
    /// `<root>/containers`: bundles, upper and work dirs.
    bundles_dir: PathBuf,
    /// Where image volumes are mounted on the host (image_volumes.rs).
    image_volumes_root: PathBuf,
    /// `<state>/containers`: exit files.
    exits_dir: PathBuf,
    cgroup_version: CgroupVersion,
    /// How containers' cgroups are made.
    driver: crate::cgroups::Driver,
    /// Every container, in memory, with its locks.
    table: table::Table,
    /// Name reservation happens under it: two containers never share a name in a pod.
    create_lock: tokio::sync::Mutex<()>,
    /// The last CPU sample per cgroup (time ns, usage ns), for nano-cores between samples.
    cpu_samples: std::sync::Mutex<HashMap<String, (i64, u64)>>,
    /// Lifecycle events for GetContainerEvents subscribers (bounded: a subscriber that falls
    /// behind is dropped, the runtime never waits for it).
    events: tokio::sync::broadcast::Sender<ContainerEvent>,
}

/// A container's lifecycle step, as GetContainerEvents reports it.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub container_id: String,
    pub pod_id: String,
    pub kind: cri::ContainerEventType,
    /// Nanoseconds since the epoch.
    pub at: i64,
    /// The container as it was at the event, for a subscriber that is sent the event after
    /// the container is gone.
    pub record: Box<ContainerRecord>,
}

/// How many events a subscriber may have unread before it is dropped.
const EVENT_BUFFER: usize = 1024;

fn not_found(id: &str) -> Error {
    Error::NotFound {
        kind: "container",
        id: id.to_string(),
    }
}

fn parse(json: &str) -> Result<ContainerRecord> {
    serde_json::from_str(json)
        .map_err(|e| Error::Internal(format!("corrupt container record: {e}")))
}

impl Containers {
    /// The containers the store holds, in memory.
    pub fn load(
        store: Arc<Store>,
        images: Arc<Images>,
        root: &Path,
        state_dir: &Path,
        cgroup_version: CgroupVersion,
        driver: crate::cgroups::Driver,
    ) -> Result<Containers> {
        let containers = Containers {
            store,
            images,
            bundles_dir: root.join("containers"),
            image_volumes_root: root.join("image-volumes"),
            exits_dir: state_dir.join("containers"),
            cgroup_version,
            driver,
            table: table::Table::default(),
            create_lock: tokio::sync::Mutex::new(()),
            cpu_samples: std::sync::Mutex::new(HashMap::new()),
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
        };
        for (_, json) in containers.store.list_records(Table::Containers)? {
            containers.table.insert(parse(&json)?);
        }
        containers.sweep_image_volumes();
        Ok(containers)
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ContainerEvent> {
        self.events.subscribe()
    }

    /// Sends an event to the subscribers. Called by whoever holds the container's write lock,
    /// so a container's events go out in the order its changes were made.
    fn emit(&self, record: &ContainerRecord, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        // No subscriber left by now is not an error.
        let _ = self.events.send(ContainerEvent {
            container_id: record.id.clone(),
            pod_id: record.sandbox_id.clone(),
            kind,
            at: now_ns(),
            record: Box::new(record.clone()),
        });
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.bundles_dir.join(id)
    }

    /// Where the containers' writable layers are: the filesystem ContainerStats names.
    pub fn writable_layers_dir(&self) -> &Path {
        &self.bundles_dir
    }

    fn exit_file(&self, id: &str) -> PathBuf {
        self.exits_dir.join(id).join("exit")
    }

    async fn save(&self, record: &ContainerRecord) -> Result<()> {
        let json = serde_json::to_string(record)
            .map_err(|e| Error::Internal(format!("encoding container: {e}")))?;
        self.store
            .put_record(
                Table::Containers,
                &record.id,
                Some(&record.sandbox_id),
                json,
            )
            .await?;
        Ok(())
    }

    /// Every container, as last recorded.
    pub fn list(&self) -> Vec<ContainerRecord> {
        self.table.records()
    }

    /// The containers a list filter selects (id and pod id by prefix, labels).
    pub fn list_matching(
        &self,
        id: &str,
        pod_id: &str,
        selector: &HashMap<String, String>,
    ) -> Vec<ContainerRecord> {
        self.list()
            .into_iter()
            .filter(|r| matches(r, id, pod_id, selector))
            .collect()
    }

    /// A container by id or unique id prefix, as last recorded.
    pub fn get(&self, id: &str) -> Option<ContainerRecord> {
        self.table.find(id).and_then(|e| e.current())
    }

    fn require(&self, id: &str) -> Result<Arc<Entry>> {
        self.table.find(id).ok_or_else(|| not_found(id))
    }

    /// Chain ids every container's rootfs uses: garbage collection keeps them.
    pub fn chain_ids_in_use(store: &Store) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (_, json) in store.list_records(Table::Containers)? {
            let record = parse(&json)?;
            out.extend(record.chain_ids);
            out.extend(record.image_volumes.into_iter().flat_map(|v| v.chain_ids));
        }
        Ok(out)
    }
}

/// Whether a container passes a list filter: id and pod id by prefix, labels all matching.
pub fn matches(
    record: &ContainerRecord,
    id: &str,
    pod_id: &str,
    selector: &HashMap<String, String>,
) -> bool {
    record.id.starts_with(id)
        && record.sandbox_id.starts_with(pod_id)
        && crate::filter::labels_match(&record.config.labels, selector)
}
