//! Garbage collection of snapshots and blobs no image uses, and the clean-up at start of what a
//! crash left half-done.

use std::collections::HashSet;
use std::sync::Arc;

use super::content::remove_dir_if_exists;
use super::{Images, parse_record};
use crate::error::{Error, Result};
use crate::store::Table;

impl Images {
    /// At start: forget snapshots that were being unpacked, and remove every file or directory
    /// the store does not list (partial downloads, unfinished unpacks).
    pub(crate) async fn recover(&self) -> Result<()> {
        let unfinished: Vec<i64> = self
            .store
            .transaction(|tx| {
                let nums = {
                    let mut stmt = tx.prepare("SELECT num FROM snapshots WHERE ready = 0")?;
                    let rows = stmt.query_map([], |r| r.get(0))?;
                    rows.collect::<rusqlite::Result<Vec<i64>>>()?
                };
                tx.execute("DELETE FROM snapshots WHERE ready = 0", [])?;
                Ok(nums)
            })
            .await?;
        let known_snapshots: HashSet<String> = self
            .store
            .column::<i64>("SELECT num FROM snapshots", [])?
            .into_iter()
            .map(|n| n.to_string())
            .collect();
        let known_blobs: HashSet<String> = self
            .store
            .column::<String>("SELECT digest FROM blobs", [])?
            .into_iter()
            .filter_map(|d| d.strip_prefix("sha256:").map(str::to_string))
            .collect();
        let snapshots_dir = self.snapshots_dir.clone();
        let blobs_dir = self.content_dir.join("sha256");
        let ingest = self.ingest_dir();
        let removed = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
            let mut removed = 0;
            remove_dir_if_exists(&ingest)?;
            for (dir, known) in [
                (&snapshots_dir, &known_snapshots),
                (&blobs_dir, &known_blobs),
            ] {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if !known.contains(&*entry.file_name().to_string_lossy()) {
                        let path = entry.path();
                        if path.is_dir() {
                            remove_dir_if_exists(&path)?;
                        } else {
                            std::fs::remove_file(&path)?;
                        }
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| Error::Internal(format!("image store recovery: {e}")))?
        .map_err(|source| Error::Io {
            context: "removing partial image data".into(),
            source,
        })?;
        if removed > 0 || !unfinished.is_empty() {
            tracing::info!(
                removed,
                unfinished = unfinished.len(),
                "removed partial image data left by an earlier run"
            );
        }
        self.collect_garbage().await
    }

    /// Removes snapshots and blobs that no image uses. Waits for pulls in progress.
    pub async fn collect_garbage(&self) -> Result<()> {
        let _exclusive = self.gc_lock.write().await;
        // Until the rows are deleted: no create may lease a layer this collection removes.
        let gate = self.leases.gate.lock().await;
        let mut used_snapshots: HashSet<String> = self.leases.leased().into_iter().collect();
        let mut used_blobs = HashSet::new();
        for (_, json) in self.store.list_records(Table::Images)? {
            let record = parse_record(&json)?;
            used_snapshots.extend(record.chain_ids.iter().map(|c| c.to_string()));
            used_blobs.extend(record.blobs().iter().map(|b| b.to_string()));
        }
        // Containers keep their layers even when their image is removed.
        used_snapshots.extend(crate::container::Containers::chain_ids_in_use(&self.store)?);
        let (snapshots, blobs) = self
            .store
            .transaction(move |tx| {
                let snapshots: Vec<(String, i64)> = {
                    let mut stmt =
                        tx.prepare("SELECT chain_id, num FROM snapshots WHERE ready = 1")?;
                    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()?
                };
                let snapshots: Vec<(String, i64)> = snapshots
                    .into_iter()
                    .filter(|(chain, _)| !used_snapshots.contains(chain))
                    .collect();
                for (_, num) in &snapshots {
                    tx.execute("DELETE FROM snapshots WHERE num = ?1", [num])?;
                }
                let blobs: Vec<String> = {
                    let mut stmt = tx.prepare("SELECT digest FROM blobs")?;
                    let rows = stmt.query_map([], |r| r.get(0))?;
                    rows.collect::<rusqlite::Result<Vec<String>>>()?
                };
                let blobs: Vec<String> = blobs
                    .into_iter()
                    .filter(|b| !used_blobs.contains(b))
                    .collect();
                for b in &blobs {
                    tx.execute("DELETE FROM blobs WHERE digest = ?1", [b])?;
                }
                Ok((snapshots, blobs))
            })
            .await?;
        drop(gate);
        if snapshots.is_empty() && blobs.is_empty() {
            return Ok(());
        }
        let dirs: Vec<_> = snapshots
            .iter()
            .map(|(_, n)| self.snapshot_dir(*n))
            .collect();
        let files: Vec<_> = blobs
            .iter()
            .filter_map(|b| super::digest::Digest::parse(b).ok())
            .map(|d| self.blob_path(&d))
            .collect();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for dir in dirs {
                remove_dir_if_exists(&dir)?;
            }
            for file in files {
                match std::fs::remove_file(&file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("garbage collection: {e}")))?
        .map_err(|source| Error::Io {
            context: "removing unused image data".into(),
            source,
        })?;
        tracing::info!(
            snapshots = snapshots.len(),
            blobs = blobs.len(),
            "garbage-collected unused image data"
        );
        Ok(())
    }

    /// Collects garbage in the background (RemoveImage must not wait for pulls in progress).
    pub fn collect_garbage_later(self: &Arc<Self>) {
        let images = self.clone();
        tokio::spawn(async move {
            if let Err(e) = images.collect_garbage().await {
                tracing::warn!(error = %e, "garbage collection failed");
            }
        });
    }
}
