//! PullImage: resolve the reference on the first endpoint that answers, choose the host's
//! platform, fetch the config, then download and unpack the layers in parallel — each one
//! unpacked while it downloads, its digest and size checked as it streams — and record the image
//! last, in one transaction, so that an interrupted pull leaves no image behind.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use rusqlite::params;

use super::auth::{self, Credentials};
use super::digest::{Digest, Hasher};
use super::manifest::{self, Descriptor, Document, ImageConfig};
use super::reference::Reference;
use super::registry::{self, RegistryError, Session};
use super::unpack::{self, Unpacked};
use super::{ImageRecord, Images};
use crate::error::{Error, Result};

/// Configs are small JSON documents; a larger one is refused.
const MAX_CONFIG_BYTES: usize = 32 * 1024 * 1024;

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Error {
        let message = e.to_string();
        match e {
            RegistryError::Unreachable { .. } => Error::Unavailable(message),
            RegistryError::Unauthenticated { .. } => Error::Unauthenticated(message),
            RegistryError::Denied { .. } => Error::PermissionDenied(message),
            RegistryError::NotFound { what, host } => Error::NotFound {
                kind: "image",
                id: format!("{what} (registry {host})"),
            },
            RegistryError::Protocol { .. } => Error::FailedPrecondition(message),
        }
    }
}

impl Error {
    /// The same error for every waiter of a coalesced pull: same code, same message.
    fn duplicate(&self) -> Error {
        match self {
            Error::NotFound { kind, id } => Error::NotFound {
                kind,
                id: id.clone(),
            },
            Error::InvalidArgument { field, reason } => Error::InvalidArgument {
                field: field.clone(),
                reason: reason.clone(),
            },
            Error::FailedPrecondition(m) => Error::FailedPrecondition(m.clone()),
            Error::Unavailable(m) => Error::Unavailable(m.clone()),
            Error::Unauthenticated(m) => Error::Unauthenticated(m.clone()),
            Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
            Error::DataLoss(m) => Error::DataLoss(m.clone()),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl Images {
    /// Pulls `name` (any reference form) and returns the image id. Concurrent pulls of the same
    /// reference share one download; the pull goes on even if the caller gives up.
    pub async fn pull(
        self: &Arc<Self>,
        name: &str,
        credentials: Option<Credentials>,
    ) -> Result<Digest> {
        let reference =
            Reference::parse(name).map_err(|e| Error::invalid("image", e.to_string()))?;
        let key = reference.to_string();
        let shared = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = pulls.get(&key) {
                tracing::debug!(image = %key, "joining a pull in progress");
                existing.clone()
            } else {
                let images = self.clone();
                let reference = reference.clone();
                let task = tokio::spawn(async move {
                    let result = images.pull_now(&reference, credentials).await;
                    let bytes = match &result {
                        Ok(id) => images
                            .get(&id.to_string())
                            .ok()
                            .flatten()
                            .map_or(0, |i| i.record.size),
                        Err(_) => 0,
                    };
                    crate::metrics::METRICS.pull_done(result.is_ok(), bytes);
                    result
                });
                let key_done = key.clone();
                let images = self.clone();
                let shared = async move {
                    let result = match task.await {
                        Ok(result) => result.map_err(Arc::new),
                        Err(e) => Err(Arc::new(Error::Internal(format!("pull task failed: {e}")))),
                    };
                    images
                        .pulls
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key_done);
                    result
                }
                .boxed()
                .shared();
                pulls.insert(key.clone(), shared.clone());
                shared
            }
        };
        shared.await.map_err(|e| e.duplicate())
    }

    async fn pull_now(
        self: &Arc<Self>,
        reference: &Reference,
        credentials: Option<Credentials>,
    ) -> Result<Digest> {
        let started = std::time::Instant::now();
        let result = {
            let _pulling = self.gc_lock.read().await;
            self.fetch_and_record(reference, credentials).await
        };
        match result {
            Ok((id, orphaned)) => {
                tracing::info!(
                    image = %reference,
                    id = %id,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "image pulled"
                );
                if orphaned {
                    self.collect_garbage_later();
                }
                Ok(id)
            }
            Err(e) => {
                tracing::info!(image = %reference, error = %e, "image pull failed");
                // Layers unpacked for a failed pull belong to no image: do not keep them.
                self.collect_garbage_later();
                Err(e)
            }
        }
    }

    fn credentials_for(
        &self,
        endpoint: &registry::Endpoint,
        requested: &Option<Credentials>,
    ) -> Result<Credentials> {
        if endpoint.is_origin
            && let Some(c) = requested
        {
            return Ok(c.clone());
        }
        if let Some(file) = &self.registry.auth_file {
            match auth::from_docker_config(file, &endpoint.host) {
                Ok(Some(c)) => return Ok(c),
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::FailedPrecondition(format!(
                        "registry auth file: {e}"
                    )));
                }
            }
        }
        Ok(Credentials::Anonymous)
    }

    /// Resolves the reference on the first endpoint that has it.
    async fn resolve(
        &self,
        reference: &Reference,
        credentials: &Option<Credentials>,
    ) -> Result<(Session, registry::Fetched)> {
        let mut last_error = None;
        for endpoint in registry::endpoints(reference, &self.registry.mirrors) {
            let creds = self.credentials_for(&endpoint, credentials)?;
            let session = Session::new(self.http.clone(), endpoint, &reference.repository, creds);
            match session.manifest(&reference.manifest_reference()).await {
                Ok(fetched) => return Ok((session, fetched)),
                Err(e) => {
                    tracing::info!(
                        image = %reference,
                        endpoint = %session.endpoint.base_url,
                        error = %e,
                        "endpoint failed, trying the next"
                    );
                    last_error = Some(e);
                }
            }
        }
        Err(last_error
            .map(Error::from)
            .unwrap_or_else(|| Error::Internal(format!("no endpoint for {reference}"))))
    }

    /// Returns the image id, and whether an older image lost its last name to this pull.
    async fn fetch_and_record(
        &self,
        reference: &Reference,
        credentials: Option<Credentials>,
    ) -> Result<(Digest, bool)> {
        let (session, top) = self.resolve(reference, &credentials).await?;
        let bad = |m: String| Error::FailedPrecondition(format!("image {reference}: {m}"));
        let (index, manifest_fetched) =
            match manifest::parse_document(&top.media_type, &top.bytes).map_err(bad)? {
                Document::Manifest(_) => (None, top),
                Document::Index(index) => {
                    let platform = manifest::host_platform();
                    let chosen =
                        manifest::choose(&index, &platform).ok_or_else(|| Error::NotFound {
                            kind: "image",
                            id: format!("{reference} for platform {platform}"),
                        })?;
                    let fetched = session.manifest(&chosen.digest.to_string()).await?;
                    (Some(top), fetched)
                }
            };
        let manifest =
            match manifest::parse_document(&manifest_fetched.media_type, &manifest_fetched.bytes)
                .map_err(bad)?
            {
                Document::Manifest(m) => m,
                Document::Index(_) => {
                    return Err(bad("an index inside an index is not supported".into()));
                }
            };

        let config_bytes = self.fetch_small_blob(&session, &manifest.config).await?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad(format!("invalid image config: {e}")))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(bad(format!(
                "the manifest has {} layers but the config {} diff ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut chain_ids = Vec::with_capacity(manifest.layers.len());
        for diff_id in &config.rootfs.diff_ids {
            let chain = Digest::chain(chain_ids.last(), diff_id);
            chain_ids.push(chain);
        }

        // Every layer at once; the download semaphore bounds how many transfer. Each runs to its
        // end even when another fails, so no unpack is abandoned half-way.
        let layers = manifest.layers.iter().enumerate().map(|(i, layer)| {
            let parent = i.checked_sub(1).map(|p| &chain_ids[p]);
            self.ensure_snapshot(
                &session,
                layer,
                &chain_ids[i],
                parent,
                &config.rootfs.diff_ids[i],
            )
        });
        for result in futures_util::future::join_all(layers).await {
            result?;
        }

        let id = manifest.config.digest.clone();
        let mut blobs = vec![
            (id.clone(), config_bytes, manifest.config.media_type.clone()),
            (
                manifest_fetched.digest.clone(),
                manifest_fetched.bytes,
                manifest_fetched.media_type,
            ),
        ];
        let top_digest = match &index {
            Some(i) => i.digest.clone(),
            None => blobs[1].0.clone(),
        };
        if let Some(index) = index {
            blobs.push((index.digest, index.bytes, index.media_type));
        }
        for (digest, bytes, _) in &blobs {
            self.write_blob_file(digest, bytes)?;
        }
        let size = manifest.layers.iter().map(|l| l.size).sum::<u64>()
            + blobs.iter().map(|(_, b, _)| b.len() as u64).sum::<u64>();
        let record = ImageRecord {
            id: id.clone(),
            manifest: blobs[1].0.clone(),
            index: blobs.get(2).map(|b| b.0.clone()),
            config,
            chain_ids,
            size,
            pinned: false,
        };
        let json = serde_json::to_string(&record)
            .map_err(|e| Error::Internal(format!("encoding image record: {e}")))?;
        // The names this pull gives: the tag (moved here from any older image) and the digest.
        let mut names = vec![reference.with_digest(&top_digest)];
        names.extend(reference.tagged());
        let blob_rows: Vec<(String, i64, String)> = blobs
            .iter()
            .map(|(d, b, t)| (d.to_string(), b.len() as i64, t.clone()))
            .collect();
        let image_id = id.to_string();
        let orphaned = self
            .store
            .transaction(move |tx| {
                for (digest, size, media_type) in &blob_rows {
                    tx.execute(
                        "INSERT OR IGNORE INTO blobs (digest, size, media_type) VALUES (?1, ?2, ?3)",
                        params![digest, size, media_type],
                    )?;
                }
                tx.execute(
                    "INSERT INTO images (id, record) VALUES (?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET record = excluded.record",
                    params![image_id, json],
                )?;
                let mut previous = Vec::new();
                for name in &names {
                    let old: Option<String> = rusqlite::OptionalExtension::optional(tx.query_row(
                        "SELECT image_id FROM image_refs WHERE reference = ?1",
                        [name],
                        |r| r.get(0),
                    ))?;
                    previous.extend(old.filter(|o| o != &image_id));
                    tx.execute(
                        "INSERT OR REPLACE INTO image_refs (reference, image_id) VALUES (?1, ?2)",
                        params![name, image_id],
                    )?;
                }
                // An older image that lost its last name to this pull is gone (a dangling
                // image nobody can name; containerd does the same).
                let mut orphaned = false;
                for old in previous {
                    let left: i64 = tx.query_row(
                        "SELECT COUNT(*) FROM image_refs WHERE image_id = ?1",
                        [&old],
                        |r| r.get(0),
                    )?;
                    if left == 0 {
                        tx.execute("DELETE FROM images WHERE id = ?1", [&old])?;
                        orphaned = true;
                    }
                }
                Ok(orphaned)
            })
            .await?;
        Ok((id, orphaned))
    }

    /// Fetches a small blob (the config) into memory, verifying digest and size.
    async fn fetch_small_blob(
        &self,
        session: &Session,
        descriptor: &Descriptor,
    ) -> Result<Vec<u8>> {
        if descriptor.size as usize > MAX_CONFIG_BYTES {
            return Err(Error::FailedPrecondition(format!(
                "blob {} is {} bytes, more than a config may be",
                descriptor.digest, descriptor.size
            )));
        }
        let mut response = session.blob(&descriptor.digest).await?;
        let mut bytes = Vec::with_capacity(descriptor.size as usize);
        loop {
            let chunk = tokio::time::timeout(self.stall_timeout, response.chunk())
                .await
                .map_err(|_| self.stalled(session, &descriptor.digest))?
                .map_err(|e| {
                    Error::Unavailable(format!(
                        "registry {}: downloading {}: {}",
                        session.endpoint.host,
                        descriptor.digest,
                        registry::error_chain(&e)
                    ))
                })?;
            let Some(chunk) = chunk else { break };
            if bytes.len() + chunk.len() > descriptor.size as usize {
                return Err(size_mismatch(&descriptor.digest, descriptor.size, "more"));
            }
            bytes.extend_from_slice(&chunk);
        }
        let digest = Digest::of(&bytes);
        if digest != descriptor.digest || bytes.len() as u64 != descriptor.size {
            return Err(Error::DataLoss(format!(
                "blob {} from registry {}: the content received ({} bytes, digest {digest}) \
                 does not match the manifest ({} bytes)",
                descriptor.digest,
                session.endpoint.host,
                bytes.len(),
                descriptor.size
            )));
        }
        Ok(bytes)
    }

    fn stalled(&self, session: &Session, digest: &Digest) -> Error {
        Error::Unavailable(format!(
            "registry {}: download of {digest} made no progress for {}s",
            session.endpoint.host,
            self.stall_timeout.as_secs()
        ))
    }

    fn layer_lock(&self, chain_id: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.layer_locks.lock().unwrap_or_else(|p| p.into_inner());
        // Drop locks nobody holds any more, so the map does not grow with every layer ever seen.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(chain_id.clone()).or_default().clone()
    }

    /// Makes sure the layer's snapshot exists, downloading and unpacking it if not.
    async fn ensure_snapshot(
        &self,
        session: &Session,
        layer: &Descriptor,
        chain_id: &Digest,
        parent: Option<&Digest>,
        diff_id: &Digest,
    ) -> Result<()> {
        let lock = self.layer_lock(chain_id);
        let _unpacking = lock.lock().await;
        if self.snapshot_fs(chain_id)?.is_some() {
            return Ok(());
        }
        let _download = self
            .downloads
            .acquire()
            .await
            .map_err(|_| Error::Internal("download limiter closed".into()))?;
        let num = self.begin_snapshot(chain_id, parent, diff_id).await?;
        let dest = self.snapshot_dir(num).join("fs");
        let result = self.download_and_unpack(session, layer, dest).await;
        let result = result.and_then(|u| {
            if &u.diff_id == diff_id {
                Ok(u)
            } else {
                Err(Error::DataLoss(format!(
                    "layer {}: its content has diff id {}, the image config says {diff_id}",
                    layer.digest, u.diff_id
                )))
            }
        });
        match result {
            Ok(unpacked) => {
                self.finish_snapshot(num, unpacked.bytes, unpacked.inodes)
                    .await
            }
            Err(e) => {
                self.abort_snapshot(num).await;
                Err(e)
            }
        }
    }

    /// Streams a layer from the registry into the unpacker (on a blocking thread), checking the
    /// compressed digest and size on the way.
    async fn download_and_unpack(
        &self,
        session: &Session,
        layer: &Descriptor,
        dest: std::path::PathBuf,
    ) -> Result<Unpacked> {
        let mut response = session.blob(&layer.digest).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let unpacker = tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader {
                rx,
                current: Bytes::new(),
                hasher: Hasher::new(),
                count: 0,
            };
            let unpacked = unpack::unpack_layer(&mut reader, &dest);
            // Whatever the unpacker did not need still counts for the digest.
            let drained = io::copy(&mut reader, &mut io::sink());
            (unpacked, drained, reader.hasher.finish(), reader.count)
        });
        let mut received: u64 = 0;
        let mut transfer_error = None;
        loop {
            let chunk = match tokio::time::timeout(self.stall_timeout, response.chunk()).await {
                Err(_) => {
                    transfer_error = Some(self.stalled(session, &layer.digest));
                    break;
                }
                Ok(Err(e)) => {
                    transfer_error = Some(Error::Unavailable(format!(
                        "registry {}: downloading layer {}: {}",
                        session.endpoint.host,
                        layer.digest,
                        registry::error_chain(&e)
                    )));
                    break;
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            received += chunk.len() as u64;
            if received > layer.size {
                transfer_error = Some(size_mismatch(&layer.digest, layer.size, "more"));
                break;
            }
            if tx.send(chunk).await.is_err() {
                break; // the unpacker stopped: its error says why
            }
        }
        drop(tx);
        let (unpacked, drained, digest, count) = unpacker
            .await
            .map_err(|e| Error::Internal(format!("unpack task failed: {e}")))?;
        if let Some(e) = transfer_error {
            return Err(e);
        }
        if count != layer.size || digest != layer.digest {
            return Err(Error::DataLoss(format!(
                "layer {} from registry {}: the content received ({count} bytes, digest {digest}) \
                 does not match the manifest ({} bytes, digest {})",
                layer.digest, session.endpoint.host, layer.size, layer.digest
            )));
        }
        let unpacked = unpacked
            .map_err(|e| Error::FailedPrecondition(format!("layer {}: {e}", layer.digest)))?;
        drained.map_err(|source| Error::Io {
            context: format!("reading layer {}", layer.digest),
            source,
        })?;
        Ok(unpacked)
    }
}

fn size_mismatch(digest: &Digest, size: u64, what: &str) -> Error {
    Error::DataLoss(format!(
        "blob {digest}: the registry sent {what} than the {size} bytes the manifest says"
    ))
}

/// The blocking side of the download pipe: hashes and counts what the unpacker reads.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
    hasher: Hasher,
    count: u64,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let chunk = self.current.split_to(n);
        buf[..n].copy_from_slice(&chunk);
        self.hasher.update(&chunk);
        self.count += n as u64;
        Ok(n)
    }
}
