//! The image store: pulls from registries, keeps manifests and configs by digest, unpacks each
//! layer once into a snapshot keyed by its chain id, names images by tag and digest, and
//! garbage-collects what no image uses.
//!
//! On disk under the root dir: `content/sha256/<hex>` (manifests, indexes, configs; written
//! through `content/ingest/`), `snapshots/<num>/fs` (one unpacked layer each; short numeric
//! names keep overlay lowerdir strings short). The store's `images`, `image_refs`, `snapshots`
//! and `blobs` tables say what exists; anything on disk they do not list is debris of a crash
//! and is removed at start.

pub mod auth;
pub mod content;
pub mod digest;
pub mod gc;
pub mod lease;
pub mod manifest;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::config::RegistryConfig;
use crate::error::{Error, Result};
use crate::store::Store;
use digest::Digest;
use manifest::ImageConfig;
use reference::Reference;

/// An image as the store records it. Its names live in `image_refs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest: the image id kubelet sees.
    pub id: Digest,
    /// The platform manifest the layers come from.
    pub manifest: Digest,
    /// The index (manifest list) it was chosen from, if any.
    pub index: Option<Digest>,
    pub config: ImageConfig,
    /// Chain ids of its layers, bottom first.
    pub chain_ids: Vec<Digest>,
    /// Bytes of the compressed layers, config and manifest, as registries count image size.
    pub size: u64,
    pub pinned: bool,
}

impl ImageRecord {
    /// Every blob this image keeps in the content store.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut b = vec![self.id.clone(), self.manifest.clone()];
        b.extend(self.index.clone());
        b
    }
}

/// An image with its names, as the CRI reports it.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub record: ImageRecord,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
}

/// A coalesced pull: every caller waiting on the same reference shares one result.
type SharedPull = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, std::result::Result<Digest, Arc<Error>>>,
>;

pub struct Images {
    pub(crate) store: Arc<Store>,
    pub(crate) content_dir: PathBuf,
    pub(crate) snapshots_dir: PathBuf,
    pub(crate) registry: RegistryConfig,
    pub(crate) http: reqwest::Client,
    pub(crate) downloads: tokio::sync::Semaphore,
    pub(crate) stall_timeout: Duration,
    /// Pulls in progress by normalized reference.
    pub(crate) pulls: Mutex<HashMap<String, SharedPull>>,
    /// One unpack per chain id at a time.
    pub(crate) layer_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Pulls hold it shared for their whole run; garbage collection takes it exclusively, so it
    /// never removes a snapshot a pull in progress counts on.
    pub(crate) gc_lock: tokio::sync::RwLock<()>,
    /// Layers that CreateContainer calls in flight have resolved.
    pub(crate) leases: lease::Leases,
}

impl Images {
    /// Opens the image store under `root` and removes what a crash left half-done.
    pub async fn open(
        root: &std::path::Path,
        store: Arc<Store>,
        registry: RegistryConfig,
    ) -> Result<Arc<Images>> {
        let http = registry::http_client(Duration::from_secs(30))
            .map_err(|e| Error::Internal(format!("creating the HTTP client: {e}")))?;
        let images = Arc::new(Images {
            store,
            content_dir: root.join("content"),
            snapshots_dir: root.join("snapshots"),
            downloads: tokio::sync::Semaphore::new(registry.max_concurrent_downloads),
            stall_timeout: Duration::from_secs(registry.stall_timeout_secs),
            registry,
            http,
            pulls: Mutex::new(HashMap::new()),
            layer_locks: Mutex::new(HashMap::new()),
            gc_lock: tokio::sync::RwLock::new(()),
            leases: lease::Leases::default(),
        });
        images.recover().await?;
        Ok(images)
    }

    /// Finds an image by id, id prefix, tag or digest reference.
    pub fn lookup(&self, name: &str) -> Result<Option<ImageInfo>> {
        let name = name.trim();
        if name.is_empty() {
            return Ok(None);
        }
        // A full id, with or without "sha256:".
        let as_id = if name.len() == 64 && !name.contains(':') {
            format!("sha256:{name}")
        } else {
            name.to_string()
        };
        if Digest::parse(&as_id).is_ok()
            && let Some(info) = self.get(&as_id)?
        {
            return Ok(Some(info));
        }
        if let Ok(reference) = Reference::parse(name) {
            let key = reference.to_string();
            let id: Option<String> = self.store.read(|c| {
                c.query_row(
                    "SELECT image_id FROM image_refs WHERE reference = ?1",
                    [&key],
                    |r| r.get(0),
                )
                .optional()
            })?;
            if let Some(id) = id {
                return self.get(&id);
            }
        }
        // A unique id prefix (as `crictl inspecti 3f57` uses), at least 3 hex digits.
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 3 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let pattern = format!("sha256:{}%", hex.to_ascii_lowercase());
            let ids: Vec<String> = self
                .store
                .column("SELECT id FROM images WHERE id LIKE ?1 LIMIT 2", [&pattern])?;
            if ids.len() == 1 {
                return self.get(&ids[0]);
            }
        }
        Ok(None)
    }

    /// The image with this exact id.
    pub fn get(&self, id: &str) -> Result<Option<ImageInfo>> {
        let Some(json) = self.store.get_record(crate::store::Table::Images, id)? else {
            return Ok(None);
        };
        let record = parse_record(&json)?;
        let refs: Vec<String> = self.store.column(
            "SELECT reference FROM image_refs WHERE image_id = ?1 ORDER BY reference",
            [id],
        )?;
        Ok(Some(with_names(record, refs)))
    }

    /// Every image with its names, ordered by id.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        let mut refs: HashMap<String, Vec<String>> = HashMap::new();
        let pairs: Vec<(String, String)> = self.store.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT image_id, reference FROM image_refs ORDER BY reference")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        for (id, reference) in pairs {
            refs.entry(id).or_default().push(reference);
        }
        self.store
            .list_records(crate::store::Table::Images)?
            .into_iter()
            .map(|(id, json)| {
                let record = parse_record(&json)?;
                Ok(with_names(record, refs.remove(&id).unwrap_or_default()))
            })
            .collect()
    }

    /// Removes an image with all its names, whichever of them (tag, digest name, id) names
    /// it: removing `repo/image:v1` removes `other/image:latest` of the same image too, as the
    /// CRI of 1.36 says. What no image uses any more is garbage-collected in the background.
    /// Idempotent, as the CRI requires (kubelet and the critest idempotence specs remove
    /// images that may already be gone): an unknown image is not an error.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<()> {
        let Some(info) = self.lookup(name)? else {
            tracing::debug!(image = name, "RemoveImage of an image that is not here");
            return Ok(());
        };
        let id = info.record.id.to_string();
        self.store
            .transaction(move |tx| {
                tx.execute("DELETE FROM image_refs WHERE image_id = ?1", params![id])?;
                tx.execute("DELETE FROM images WHERE id = ?1", params![id])?;
                Ok(())
            })
            .await?;
        self.collect_garbage_later();
        Ok(())
    }

    /// Bytes and inodes of the unpacked layers and the content store.
    pub fn usage(&self) -> Result<(u64, u64)> {
        Ok(self.store.read(|c| {
            let (snap_bytes, snap_inodes): (i64, i64) = c.query_row(
                "SELECT COALESCE(SUM(size), 0), COALESCE(SUM(inodes), 0) FROM snapshots WHERE ready = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let (blob_bytes, blob_count): (i64, i64) = c.query_row(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM blobs",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(((snap_bytes + blob_bytes) as u64, (snap_inodes + blob_count) as u64))
        })?)
    }

    /// The full image config as the registry served it.
    pub fn config_json(&self, id: &Digest) -> Result<serde_json::Value> {
        let bytes = std::fs::read(self.blob_path(id)).map_err(|source| Error::Io {
            context: format!("reading the config of image {id}"),
            source,
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("config of image {id} is not JSON: {e}")))
    }

    pub fn snapshots_dir(&self) -> &std::path::Path {
        &self.snapshots_dir
    }
}

fn parse_record(json: &str) -> Result<ImageRecord> {
    serde_json::from_str(json).map_err(|e| Error::Internal(format!("corrupt image record: {e}")))
}

fn with_names(record: ImageRecord, refs: Vec<String>) -> ImageInfo {
    let (repo_digests, repo_tags) = refs.into_iter().partition(|r| r.contains('@'));
    ImageInfo {
        record,
        repo_tags,
        repo_digests,
    }
}
