//! Blob files and snapshot directories, and their rows in the store.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{OptionalExtension, params};

use super::Images;
use super::digest::Digest;
use crate::error::{Error, Result, io_error};

impl Images {
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.content_dir.join("sha256").join(digest.hex())
    }

    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.content_dir.join("ingest")
    }

    /// Writes a verified blob file (atomically, through ingest/). Its row is added by the
    /// transaction that records the image, so a crash in between leaves only a file that the
    /// next start removes.
    pub(crate) fn write_blob_file(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        let ingest = self.ingest_dir();
        let ctx = |what: &str| format!("{what} blob {digest}");
        std::fs::create_dir_all(&ingest).map_err(io_error(ctx("creating ingest dir for")))?;
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
            .map_err(io_error(ctx("creating content dir for")))?;
        let tmp = ingest.join(format!("{}.{}", digest.hex(), std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(io_error(ctx("creating")))?;
        file.write_all(bytes).map_err(io_error(ctx("writing")))?;
        file.sync_all().map_err(io_error(ctx("syncing")))?;
        std::fs::rename(&tmp, &path).map_err(io_error(ctx("storing")))
    }

    pub(crate) fn snapshot_dir(&self, num: i64) -> PathBuf {
        self.snapshots_dir.join(num.to_string())
    }

    /// The directory of a ready snapshot.
    pub fn snapshot_fs(&self, chain_id: &Digest) -> Result<Option<PathBuf>> {
        let key = chain_id.to_string();
        let num: Option<i64> = self.store.read(|c| {
            c.query_row(
                "SELECT num FROM snapshots WHERE chain_id = ?1 AND ready = 1",
                [key],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(num.map(|n| self.snapshot_dir(n).join("fs")))
    }

    /// Reserves a snapshot row (not ready) and its empty directory; returns its number.
    pub(crate) async fn begin_snapshot(
        &self,
        chain_id: &Digest,
        parent: Option<&Digest>,
        diff_id: &Digest,
    ) -> Result<i64> {
        let (chain, parent, diff) = (
            chain_id.to_string(),
            parent.map(|p| p.to_string()),
            diff_id.to_string(),
        );
        let num = self
            .store
            .transaction(move |tx| {
                let num: i64 =
                    tx.query_row("SELECT COALESCE(MAX(num), 0) + 1 FROM snapshots", [], |r| {
                        r.get(0)
                    })?;
                tx.execute(
                    "INSERT INTO snapshots (chain_id, num, parent, diff_id, ready) VALUES (?1, ?2, ?3, ?4, 0)",
                    params![chain, num, parent, diff],
                )?;
                Ok(num)
            })
            .await?;
        let fs_dir = self.snapshot_dir(num).join("fs");
        if let Err(source) = std::fs::create_dir_all(&fs_dir) {
            self.abort_snapshot(num).await;
            return Err(Error::Io {
                context: format!("creating snapshot dir {}", fs_dir.display()),
                source,
            });
        }
        Ok(num)
    }

    pub(crate) async fn finish_snapshot(&self, num: i64, size: u64, inodes: u64) -> Result<()> {
        self.store
            .transaction(move |tx| {
                tx.execute(
                    "UPDATE snapshots SET ready = 1, size = ?2, inodes = ?3 WHERE num = ?1",
                    params![num, size as i64, inodes as i64],
                )
                .map(|_| ())
            })
            .await?;
        Ok(())
    }

    /// Undoes `begin_snapshot`: the directory and the row go.
    pub(crate) async fn abort_snapshot(&self, num: i64) {
        let dir = self.snapshot_dir(num);
        let removed = tokio::task::spawn_blocking(move || remove_dir_if_exists(&dir)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(snapshot = num, error = %e, "cannot remove a failed snapshot");
        }
        let deleted = self
            .store
            .transaction(move |tx| {
                tx.execute("DELETE FROM snapshots WHERE num = ?1", [num])
                    .map(|_| ())
            })
            .await;
        if let Err(e) = deleted {
            tracing::warn!(snapshot = num, error = %e, "cannot forget a failed snapshot");
        }
    }
}

pub(crate) fn remove_dir_if_exists(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
