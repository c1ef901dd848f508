//! The persistent metadata store: the single source of truth for sandboxes, containers, images
//! and runtime settings.
//!
//! SQLite in WAL mode. Every write goes through one writer thread that owns the write connection
//! and runs each request as one transaction, so writes never interleave and a gRPC worker never
//! blocks on the disk. Reads use their own connection: WAL lets them run beside the writer and
//! they see only committed transactions. `synchronous=NORMAL` makes each commit durable against a
//! crash of the process (kill -9): the WAL frames are in the kernel before the commit returns. A
//! power loss may drop the last commits, never consistency.

pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::thread;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("metadata store {path}: cannot create its directory: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "metadata store {path} has schema version {found}, newer than this crius understands ({supported})"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("metadata store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("metadata store: the writer thread has stopped")]
    WriterGone,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The record tables. Each row is `id` plus a JSON document owned by the module that writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Sandboxes,
    Containers,
    Images,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Sandboxes => "sandboxes",
            Table::Containers => "containers",
            Table::Images => "images",
        }
    }
}

type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

pub struct Store {
    path: PathBuf,
    writer: mpsc::Sender<WriteJob>,
    reader: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut write_conn = Connection::open(path).map_err(open_err)?;
        configure(&write_conn).map_err(open_err)?;
        migrate(path, &mut write_conn)?;
        let read_conn = Connection::open(path).map_err(open_err)?;
        configure(&read_conn).map_err(open_err)?;

        let (writer, jobs) = mpsc::channel::<WriteJob>();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                // Runs until every Store handle (and so every sender) is dropped.
                for job in jobs {
                    job(&mut write_conn);
                }
            })
            .map_err(|e| StoreError::CreateDir {
                path: path.to_path_buf(),
                source: e,
            })?;
        Ok(Store {
            path: path.to_path_buf(),
            writer,
            reader: Mutex::new(read_conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` as one transaction on the writer thread; it commits when `f` returns Ok.
    pub async fn transaction<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn: &mut Connection| {
            let started = std::time::Instant::now();
            let result = (|| {
                let tx = conn.transaction()?;
                let value = f(&tx)?;
                tx.commit()?;
                Ok(value)
            })();
            crate::metrics::METRICS.observe_store_transaction(started.elapsed());
            // The caller may have gone away (its RPC was cancelled); the commit stands anyway.
            let _ = reply.send(result);
        });
        self.writer.send(job).map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs a read on the read connection. Reads see only committed transactions.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        // A poisoned lock only means another reader panicked; the connection itself is intact.
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&conn)?)
    }

    /// The first column of every row a query returns.
    pub fn column<T: rusqlite::types::FromSql>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<T>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt.query_map(params, |r| r.get(0))?;
            rows.collect()
        })
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| {
            c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_string());
        self.transaction(move |tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
        })
        .await
    }

    /// Inserts or replaces a record. `parent` is the sandbox id for containers.
    pub async fn put_record(
        &self,
        table: Table,
        id: &str,
        parent: Option<&str>,
        record: String,
    ) -> Result<()> {
        let (id, parent) = (id.to_string(), parent.map(str::to_string));
        self.transaction(move |tx| {
            let changed = match table {
                Table::Containers => tx.execute(
                    "INSERT OR REPLACE INTO containers (id, sandbox_id, record) VALUES (?1, ?2, ?3)",
                    params![id, parent.unwrap_or_default(), record],
                )?,
                _ => tx.execute(
                    &format!(
                        "INSERT OR REPLACE INTO {} (id, record) VALUES (?1, ?2)",
                        table.name()
                    ),
                    params![id, record],
                )?,
            };
            debug_assert_eq!(changed, 1);
            Ok(())
        })
        .await
    }

    pub fn get_record(&self, table: Table, id: &str) -> Result<Option<String>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT record FROM {} WHERE id = ?1", table.name()),
                [id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// All records of a table as (id, record), ordered by id.
    pub fn list_records(&self, table: Table) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT id, record FROM {} ORDER BY id",
                table.name()
            ))?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// Deletes a record; Ok(false) when there was none (removal is idempotent).
    pub async fn delete_record(&self, table: Table, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.transaction(move |tx| {
            let n = tx.execute(&format!("DELETE FROM {} WHERE id = ?1", table.name()), [id])?;
            Ok(n > 0)
        })
        .await
    }

    /// `PRAGMA integrity_check`: "ok" when the file is consistent.
    pub fn integrity_check(&self) -> Result<String> {
        self.read(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn migrate(path: &Path, conn: &mut Connection) -> Result<()> {
    let found: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > schema::CURRENT_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: schema::CURRENT_VERSION,
        });
    }
    for (version, sql) in schema::MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as u32 + 1)?;
        tx.commit()?;
        tracing::info!(
            path = %path.display(),
            version = version + 1,
            "metadata store migrated"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db/crius.db");
        {
            let store = Store::open(&path).unwrap();
            store
                .put_record(Table::Sandboxes, "p1", None, "{\"a\":1}".into())
                .await
                .unwrap();
            store
                .put_record(Table::Containers, "c1", Some("p1"), "{}".into())
                .await
                .unwrap();
            store.set_setting("pod_cidr", "10.0.0.0/24").await.unwrap();
            assert_eq!(
                store.get_record(Table::Sandboxes, "p1").unwrap().as_deref(),
                Some("{\"a\":1}")
            );
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list_records(Table::Containers).unwrap().len(), 1);
        assert_eq!(
            store.setting("pod_cidr").unwrap().as_deref(),
            Some("10.0.0.0/24")
        );
        assert!(store.delete_record(Table::Containers, "c1").await.unwrap());
        assert!(!store.delete_record(Table::Containers, "c1").await.unwrap());
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[tokio::test]
    async fn foreign_keys_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("crius.db")).unwrap();
        let err = store
            .put_record(Table::Containers, "c1", Some("missing"), "{}".into())
            .await;
        assert!(err.is_err());
        assert!(store.list_records(Table::Containers).unwrap().is_empty());
    }

    #[tokio::test]
    async fn failed_transaction_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("crius.db")).unwrap();
        let result: Result<()> = store
            .transaction(|tx| {
                tx.execute("INSERT INTO settings VALUES ('k', 'v')", [])?;
                tx.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                Ok(())
            })
            .await;
        assert!(result.is_err());
        assert_eq!(store.setting("k").unwrap(), None);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crius.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        drop(conn);
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("999"), "{err}");
    }
}
