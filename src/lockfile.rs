//! Exclusive lock files: one daemon per root dir and per socket.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open lock file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another crius daemon{holder} already uses {what} (lock file {path})")]
    Held {
        what: String,
        path: PathBuf,
        holder: String,
    },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: Errno },
}

/// Held for the daemon's lifetime; the kernel drops the lock when the process dies, so a crashed
/// daemon never leaves a stale lock behind.
pub struct LockFile {
    _lock: Flock<File>,
}

impl LockFile {
    /// Takes the lock at `path` without waiting; `what` names the guarded thing in the error.
    pub fn acquire(path: &Path, what: &str) -> Result<LockFile, LockError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| LockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    what: what.to_string(),
                    path: path.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err((_, source)) => {
                return Err(LockError::Lock {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        // Record who holds it, for the message a second daemon prints.
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = write!(lock, "{}", std::process::id());
        Ok(LockFile { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = LockFile::acquire(&path, "root /x").unwrap();
        let err = LockFile::acquire(&path, "root /x")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("root /x"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        LockFile::acquire(&path, "root /x").unwrap();
    }
}
