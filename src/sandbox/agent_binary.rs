//! The pod agent's binary (`crius-agent`): found and checked at start-up, then copied once into
//! a sealed memfd that every pod agent is executed from.
//!
//! Why a sealed copy: a container can make the kernel execute its agent's binary (a script whose
//! interpreter is `/proc/self/exe`, run through ExecSync) and then reach that binary through
//! `/proc/<pid>/exe` — runc's CVE-2019-5736. Executed from the memfd, every agent's
//! `/proc/<pid>/exe` is the sealed copy: it can be neither written nor resized, and the file on
//! the host's disk is not reachable from it at all. One copy serves all agents, so their text
//! pages stay shared.

use std::ffi::CStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The agent binary's file name, looked up next to the daemon's own binary by default.
pub const AGENT_FILE_NAME: &str = "crius-agent";

#[derive(Debug, thiserror::Error)]
pub enum AgentBinaryError {
    #[error(
        "the pod agent binary {path}: {source} (install crius-agent next to crius, or set agent_path)"
    )]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("copying the pod agent binary {path} into a sealed memfd: {source}")]
    Seal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pod agent binary {path} does not run: {reason}")]
    Run { path: PathBuf, reason: String },
    #[error(
        "the pod agent binary {path} is {found:?}, this daemon needs {wanted:?} (install the crius-agent built with this crius)"
    )]
    Version {
        path: PathBuf,
        found: String,
        wanted: &'static str,
    },
}

/// The checked, sealed agent binary the daemon executes pod agents from.
#[derive(Debug)]
pub struct AgentBinary {
    /// Where it was read from (for messages).
    path: PathBuf,
    sealed: OwnedFd,
}

impl AgentBinary {
    /// `configured`, else `crius-agent` next to the running daemon; sealed, then asked for its
    /// version, which must be this daemon's.
    pub fn load(configured: Option<&Path>) -> Result<AgentBinary, AgentBinaryError> {
        let path = match configured {
            Some(path) => path.to_path_buf(),
            None => default_path().map_err(|source| AgentBinaryError::Open {
                path: PathBuf::from(AGENT_FILE_NAME),
                source,
            })?,
        };
        let file = File::open(&path).map_err(|source| AgentBinaryError::Open {
            path: path.clone(),
            source,
        })?;
        let sealed = sealed_copy(file).map_err(|source| AgentBinaryError::Seal {
            path: path.clone(),
            source,
        })?;
        let binary = AgentBinary { path, sealed };
        binary.check_version()?;
        Ok(binary)
    }

    /// The path to execute: the daemon's descriptor of the sealed copy. Valid in the daemon
    /// and in a child forked from it up to its exec.
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.sealed.as_raw_fd()))
    }

    fn check_version(&self) -> Result<(), AgentBinaryError> {
        let run_error = |reason: String| AgentBinaryError::Run {
            path: self.path.clone(),
            reason,
        };
        let output = std::process::Command::new(self.exec_path())
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| run_error(e.to_string()))?;
        if !output.status.success() {
            return Err(run_error(format!(
                "--version: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let found = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if found != crate::agent::VERSION_LINE {
            return Err(AgentBinaryError::Version {
                path: self.path.clone(),
                found,
                wanted: crate::agent::VERSION_LINE,
            });
        }
        Ok(())
    }
}

fn default_path() -> std::io::Result<PathBuf> {
    let daemon = std::env::current_exe()?;
    let dir = daemon
        .parent()
        .ok_or_else(|| std::io::Error::other("the daemon's binary has no directory"))?;
    Ok(dir.join(AGENT_FILE_NAME))
}

/// Copies what the kernel loads of the ELF binary `file` into a new memfd and seals it against
/// every change.
fn sealed_copy(mut file: File) -> std::io::Result<OwnedFd> {
    const NAME: &CStr = c"crius-agent";
    let image = loadable_image(&mut file)?;
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new descriptor
    // or -1, checked below, and touches no memory of ours.
    let fd =
        unsafe { libc::memfd_create(NAME.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nothing else.
    let mut copy = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    std::io::Write::write_all(&mut copy, &image)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl(F_ADD_SEALS) on a descriptor we own, with integer arguments only.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(copy))
}

/// The part of a 64-bit little-endian ELF executable that exec and the dynamic loader read:
/// everything up to the end of its last segment. The debug sections after it (most of the
/// file in a build with debug info) stay behind, and the section header table's entries in the
/// copy's header are cleared since it is not copied.
fn loadable_image(file: &mut File) -> std::io::Result<Vec<u8>> {
    let bad = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a 64-bit little-endian ELF executable: {why}"),
        )
    };
    let mut header = [0u8; 64];
    file.read_exact(&mut header)
        .map_err(|_| bad("shorter than an ELF header"))?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(bad("wrong magic, class or byte order"));
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as u64;
    let u64_at = |b: &[u8], at: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(v)
    };
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 0x20),
        u16_at(&header, 0x36),
        u16_at(&header, 0x38),
    );
    if phentsize < 0x28 || phnum == 0 {
        return Err(bad("no program headers"));
    }
    let table_end = phoff + phentsize * phnum;
    let mut end = table_end;
    let mut table = vec![0u8; (table_end - phoff) as usize];
    std::io::Seek::seek(file, std::io::SeekFrom::Start(phoff))?;
    file.read_exact(&mut table)
        .map_err(|_| bad("program headers past the end"))?;
    for entry in table.chunks_exact(phentsize as usize) {
        end = end.max(u64_at(entry, 0x08).saturating_add(u64_at(entry, 0x20)));
    }
    let mut image = Vec::new();
    std::io::Seek::seek(file, std::io::SeekFrom::Start(0))?;
    file.take(end).read_to_end(&mut image)?;
    if (image.len() as u64) < end {
        return Err(bad("a segment past the end"));
    }
    // e_shoff, e_shnum, e_shstrndx: no section headers in the copy.
    image[0x28..0x30].fill(0);
    image[0x3c..0x40].fill(0);
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_runs_and_is_sealed_against_writes() {
        let sealed = sealed_copy(File::open("/bin/true").unwrap()).unwrap();
        let path = format!("/proc/self/fd/{}", sealed.as_raw_fd());
        let status = std::process::Command::new(&path).status().unwrap();
        assert!(status.success(), "{status}");
        // Opening for writing succeeds on a memfd, writing does not.
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let e = std::io::Write::write_all(&mut writer, b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        let e = writer.set_len(0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    }

    #[test]
    fn only_the_loaded_part_is_copied() {
        let exe = std::env::current_exe().unwrap();
        let image = loadable_image(&mut File::open(&exe).unwrap()).unwrap();
        let size = std::fs::metadata(&exe).unwrap().len();
        assert!((image.len() as u64) < size, "{} of {size}", image.len());
        let e = loadable_image(&mut File::open("/etc/hostname").unwrap()).unwrap_err();
        assert!(e.to_string().contains("ELF"), "{e}");
    }

    #[test]
    fn a_missing_binary_is_named() {
        let e = AgentBinary::load(Some(Path::new("/nonexistent/crius-agent"))).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/nonexistent/crius-agent"), "{text}");
        assert!(text.contains("agent_path"), "{text}");
    }
}
