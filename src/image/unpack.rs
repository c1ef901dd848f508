//! Unpacks one layer (a tar, gzip- or zstd-compressed or not) into an empty snapshot directory,
//! in the form overlayfs reads as a lower dir: OCI whiteouts (`.wh.name`) become 0:0 character
//! devices and opaque markers (`.wh..wh..opq`) the `trusted.overlay.opaque` xattr.
//!
//! Safety: every entry path is taken relative to the snapshot; absolute paths, `..` components,
//! paths through a symlink and hard links to anything outside the layer are refused, so nothing
//! is ever written outside. Only this function writes into the snapshot while it runs, so the
//! checks cannot be raced.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat};
use tar::EntryType;

use super::digest::{Digest, Hasher};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} is refused: {reason}")]
    Unsafe { path: String, reason: &'static str },
    #[error("layer entry {path:?}: {source}")]
    Entry { path: String, source: io::Error },
    #[error("reading the layer: {0}")]
    Read(io::Error),
}

/// What unpacking measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar: the layer's diff id.
    pub diff_id: Digest,
    /// Bytes of disk the layer's files use.
    pub bytes: u64,
    /// Entries created.
    pub inodes: u64,
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The decompressed stream of a layer, by its first bytes (media types are not always right).
fn decompressed<'a, R: Read + 'a>(input: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(256 * 1024, input);
    let head = buffered.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?)
    } else {
        Box::new(buffered)
    })
}

/// Unpacks the layer read from `input` into the existing empty directory `dest`.
pub fn unpack_layer<R: Read>(input: R, dest: &Path) -> Result<Unpacked, UnpackError> {
    let mut reader = HashingReader {
        inner: decompressed(input).map_err(UnpackError::Read)?,
        hasher: Hasher::new(),
    };
    let mut stats = Unpacked {
        diff_id: Digest::of(b""),
        bytes: 0,
        inodes: 0,
    };
    // Directory times are set last: creating their children changes them.
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    // Directories this unpack made or checked: their paths need no second look.
    let mut known_dirs: HashSet<PathBuf> = HashSet::new();
    let mut copy_buffer = vec![0u8; 256 * 1024];
    {
        let mut archive = tar::Archive::new(&mut reader);
        for entry in archive.entries().map_err(UnpackError::Read)? {
            let mut entry = entry.map_err(UnpackError::Read)?;
            let raw_path = entry.path().map_err(UnpackError::Read)?.into_owned();
            let shown = raw_path.display().to_string();
            let err = |source: io::Error| UnpackError::Entry {
                path: shown.clone(),
                source,
            };
            let kind = entry.header().entry_type();
            if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
                continue;
            }
            let rel = clean(&raw_path, &shown)?;
            let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                // The layer's root ("./"): only its metadata matters.
                if kind.is_dir() {
                    apply_metadata(&mut entry, dest, kind).map_err(err)?;
                }
                continue;
            };
            let parent = prepare_parent(dest, &rel, &shown, &mut known_dirs)?;
            if name == OPAQUE_MARKER {
                set_xattr(&parent, "trusted.overlay.opaque", b"y").map_err(err)?;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let target = parent.join(hidden);
                remove_existing(&target, &mut known_dirs).map_err(err)?;
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| err(e.into()))?;
                stats.inodes += 1;
                continue;
            }
            let target = parent.join(&name);
            let existing = fs::symlink_metadata(&target).ok();
            match kind {
                EntryType::Directory => {
                    if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                        remove_existing(&target, &mut known_dirs).map_err(err)?;
                        fs::create_dir(&target).map_err(err)?;
                    }
                    known_dirs.insert(target.clone());
                }
                EntryType::Regular | EntryType::Continuous => {
                    remove_existing(&target, &mut known_dirs).map_err(err)?;
                    let mut file = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .mode(0o600)
                        .open(&target)
                        .map_err(err)?;
                    let written = copy(&mut entry, &mut file, &mut copy_buffer).map_err(err)?;
                    // Disk use, as ImageFsInfo reports it; the length when blocks are unknown.
                    stats.bytes += file
                        .metadata()
                        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                        .unwrap_or(written);
                    // Through the open file: no path lookups for the common case.
                    apply_file_metadata(&mut entry, &file, &target).map_err(err)?;
                    stats.inodes += 1;
                    continue;
                }
                EntryType::Symlink => {
                    let link = entry
                        .link_name()
                        .map_err(err)?
                        .ok_or_else(|| err(io::Error::other("symlink without a target")))?;
                    remove_existing(&target, &mut known_dirs).map_err(err)?;
                    std::os::unix::fs::symlink(&link, &target).map_err(err)?;
                }
                EntryType::Link => {
                    let link = entry
                        .link_name()
                        .map_err(err)?
                        .ok_or_else(|| err(io::Error::other("hard link without a target")))?;
                    let source_rel = clean(&link, &shown)?;
                    let source = dest.join(&source_rel);
                    // The source must be inside this layer and reached without a symlink.
                    check_no_symlink_parents(dest, &source_rel, &shown)?;
                    if fs::symlink_metadata(&source).is_err() {
                        return Err(UnpackError::Unsafe {
                            path: shown,
                            reason: "hard link to a file that is not in this layer",
                        });
                    }
                    if source != target {
                        remove_existing(&target, &mut known_dirs).map_err(err)?;
                        fs::hard_link(&source, &target).map_err(err)?;
                    }
                    stats.inodes += 1;
                    continue; // a hard link shares its source's metadata
                }
                EntryType::Char | EntryType::Block | EntryType::Fifo => {
                    remove_existing(&target, &mut known_dirs).map_err(err)?;
                    let header = entry.header();
                    let (major, minor) = if kind == EntryType::Fifo {
                        (0, 0)
                    } else {
                        (
                            header.device_major().map_err(err)?.unwrap_or(0),
                            header.device_minor().map_err(err)?.unwrap_or(0),
                        )
                    };
                    let flag = match kind {
                        EntryType::Char => SFlag::S_IFCHR,
                        EntryType::Block => SFlag::S_IFBLK,
                        _ => SFlag::S_IFIFO,
                    };
                    mknod(
                        &target,
                        flag,
                        Mode::from_bits_truncate(0o600),
                        makedev(major.into(), minor.into()),
                    )
                    .map_err(|e| err(e.into()))?;
                }
                _ => {
                    tracing::debug!(path = %shown, ?kind, "skipping unsupported tar entry type");
                    continue;
                }
            }
            apply_metadata(&mut entry, &target, kind).map_err(err)?;
            if kind == EntryType::Directory {
                dir_times.push((target, entry.header().mtime().unwrap_or(0)));
            }
            stats.inodes += 1;
        }
    }
    for (dir, mtime) in dir_times.iter().rev() {
        set_mtime(dir, *mtime).map_err(|source| UnpackError::Entry {
            path: dir.display().to_string(),
            source,
        })?;
    }
    // The tar end marker may be followed by padding that is part of the diff id.
    io::copy(&mut reader, &mut io::sink()).map_err(UnpackError::Read)?;
    stats.diff_id = reader.hasher.finish();
    Ok(stats)
}

/// The entry path relative to the snapshot, refusing absolute paths and `..`.
fn clean(path: &Path, shown: &str) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::Unsafe {
                    path: shown.to_string(),
                    reason: "absolute path",
                });
            }
            Component::ParentDir => {
                return Err(UnpackError::Unsafe {
                    path: shown.to_string(),
                    reason: "path with ..",
                });
            }
        }
    }
    Ok(out)
}

fn check_no_symlink_parents(dest: &Path, rel: &Path, shown: &str) -> Result<(), UnpackError> {
    let mut current = dest.to_path_buf();
    let components: Vec<_> = rel.components().collect();
    for c in &components[..components.len().saturating_sub(1)] {
        current.push(c);
        if let Ok(meta) = fs::symlink_metadata(&current)
            && meta.file_type().is_symlink()
        {
            return Err(UnpackError::Unsafe {
                path: shown.to_string(),
                reason: "path through a symlink",
            });
        }
    }
    Ok(())
}

/// Makes sure the entry's parent directories exist as real directories inside `dest`.
fn prepare_parent(
    dest: &Path,
    rel: &Path,
    shown: &str,
    known_dirs: &mut HashSet<PathBuf>,
) -> Result<PathBuf, UnpackError> {
    let mut current = dest.to_path_buf();
    let components: Vec<_> = rel.components().collect();
    for c in &components[..components.len() - 1] {
        current.push(c);
        if known_dirs.contains(&current) {
            continue;
        }
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(UnpackError::Unsafe {
                    path: shown.to_string(),
                    reason: "path through a symlink",
                });
            }
            Ok(_) => {
                return Err(UnpackError::Entry {
                    path: shown.to_string(),
                    source: io::Error::other(format!(
                        "{} is not a directory",
                        current.strip_prefix(dest).unwrap_or(&current).display()
                    )),
                });
            }
            Err(_) => {
                fs::create_dir(&current).map_err(|source| UnpackError::Entry {
                    path: shown.to_string(),
                    source,
                })?;
                fs::set_permissions(&current, fs::Permissions::from_mode(0o755)).map_err(
                    |source| UnpackError::Entry {
                        path: shown.to_string(),
                        source,
                    },
                )?;
            }
        }
        known_dirs.insert(current.clone());
    }
    Ok(current)
}

/// A later entry replaces an earlier one at the same path (a directory only by a directory).
fn remove_existing(path: &Path, known_dirs: &mut HashSet<PathBuf>) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            known_dirs.retain(|d| !d.starts_with(path));
            fs::remove_dir_all(path)
        }
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

fn apply_metadata<R: Read>(
    entry: &mut tar::Entry<R>,
    path: &Path,
    kind: EntryType,
) -> io::Result<()> {
    let header = entry.header();
    let uid = header.uid()? as u32;
    let gid = header.gid()? as u32;
    let mode = header.mode()? & 0o7777;
    let mtime = header.mtime().unwrap_or(0);
    fchownat(
        AT_FDCWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)?;
    if kind != EntryType::Symlink {
        // After chown, which clears setuid/setgid bits.
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    if let Some(extensions) = entry.pax_extensions()? {
        for ext in extensions {
            let ext = ext?;
            if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                set_xattr(path, name, ext.value_bytes())?;
            }
        }
    }
    if kind != EntryType::Directory {
        set_mtime(path, mtime)?;
    }
    Ok(())
}

/// Owner, mode, xattrs and mtime of a regular file just written, set through its descriptor.
fn apply_file_metadata<R: Read>(
    entry: &mut tar::Entry<R>,
    file: &fs::File,
    path: &Path,
) -> io::Result<()> {
    let header = entry.header();
    let (uid, gid) = (header.uid()? as u32, header.gid()? as u32);
    let mode = header.mode()? & 0o7777;
    let mtime = header.mtime().unwrap_or(0);
    std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    // After chown, which clears setuid/setgid bits.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    if let Some(extensions) = entry.pax_extensions()? {
        for ext in extensions {
            let ext = ext?;
            if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                set_xattr(path, name, ext.value_bytes())?;
            }
        }
    }
    let t = TimeSpec::new(mtime as i64, 0);
    nix::sys::stat::futimens(file, &t, &t).map_err(io::Error::from)
}

/// io::copy with a large buffer: far fewer reads and writes for big files.
fn copy(from: &mut impl Read, to: &mut fs::File, buffer: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let n = match from.read(buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        io::Write::write_all(to, &buffer[..n])?;
        total += n as u64;
    }
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let t = TimeSpec::new(mtime as i64, 0);
    utimensat(AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let c_name = CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; value points to
    // value.len() readable bytes. lsetxattr does not follow a final symlink.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }
        fn header(kind: EntryType, mode: u32, size: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h
        }
        fn dir(mut self, path: &str) -> Tar {
            let mut h = Tar::header(EntryType::Directory, 0o755, 0);
            self.0.append_data(&mut h, path, io::empty()).unwrap();
            self
        }
        fn file(mut self, path: &str, data: &[u8]) -> Tar {
            let mut h = Tar::header(EntryType::Regular, 0o644, data.len() as u64);
            self.0.append_data(&mut h, path, data).unwrap();
            self
        }
        /// Writes a raw name, bypassing the builder's own path checks.
        fn raw(mut self, kind: EntryType, path: &str, link: &str, data: &[u8]) -> Tar {
            let mut h = Tar::header(kind, 0o644, data.len() as u64);
            let name = h.as_old_mut();
            name.name[..path.len()].copy_from_slice(path.as_bytes());
            name.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let fs_dir = dir.path().join("fs");
        fs::create_dir(&fs_dir).unwrap();
        let r = unpack_layer(bytes, &fs_dir);
        (dir, r)
    }

    #[test]
    fn files_dirs_links_and_diff_id() {
        let tar = Tar::new()
            .dir("etc/")
            .file("etc/hostname", b"box\n")
            .raw(EntryType::Symlink, "etc/alias", "hostname", b"")
            .raw(EntryType::Link, "etc/hard", "etc/hostname", b"")
            .raw(EntryType::Fifo, "etc/fifo", "", b"")
            .bytes();
        let (dir, r) = unpack(&tar);
        let r = r.unwrap();
        let root = dir.path().join("fs");
        assert_eq!(r.diff_id, Digest::of(&tar));
        assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"box\n");
        assert_eq!(
            fs::read_link(root.join("etc/alias")).unwrap(),
            Path::new("hostname")
        );
        let a = fs::metadata(root.join("etc/hostname")).unwrap();
        assert_eq!(a.ino(), fs::metadata(root.join("etc/hard")).unwrap().ino());
        assert_eq!(a.mode() & 0o777, 0o644);
        assert_eq!(a.mtime(), 1_700_000_000);
        assert_eq!(
            fs::metadata(root.join("etc")).unwrap().mtime(),
            1_700_000_000
        );
        assert!(
            fs::symlink_metadata(root.join("etc/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn gzip_and_zstd_layers_unpack_to_the_same_diff_id() {
        let tar = Tar::new().file("a", b"hello").bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for data in [&gz, &zst] {
            let (dir, r) = unpack(data);
            assert_eq!(r.unwrap().diff_id, Digest::of(&tar));
            assert_eq!(fs::read(dir.path().join("fs/a")).unwrap(), b"hello");
        }
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let tar = Tar::new()
            .dir("d/")
            .file("d/.wh..wh..opq", b"")
            .file(".wh.gone", b"")
            .bytes();
        let (dir, r) = unpack(&tar);
        r.unwrap();
        let root = dir.path().join("fs");
        let m = fs::symlink_metadata(root.join("gone")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0);
        assert!(!root.join("d/.wh..wh..opq").exists());
        let mut buf = [0u8; 4];
        let c_path = CString::new(root.join("d").as_os_str().as_bytes()).unwrap();
        let c_name = CString::new("trusted.overlay.opaque").unwrap();
        // SAFETY: NUL-terminated strings and a 4-byte buffer, as lgetxattr needs.
        let n = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(&buf[..n as usize], b"y");
    }

    #[test]
    fn escapes_are_refused_and_nothing_lands_outside() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "dotdot",
                Tar::new()
                    .raw(EntryType::Regular, "../escape", "", b"x")
                    .bytes(),
                "path with ..",
            ),
            (
                "absolute",
                Tar::new()
                    .raw(EntryType::Regular, "/escape", "", b"x")
                    .bytes(),
                "absolute path",
            ),
            (
                "through symlink",
                Tar::new()
                    .raw(EntryType::Symlink, "evil", "/", b"")
                    .raw(EntryType::Regular, "evil/escape", "", b"x")
                    .bytes(),
                "path through a symlink",
            ),
            (
                "hard link out",
                Tar::new()
                    .raw(EntryType::Link, "h", "../../etc/passwd", b"")
                    .bytes(),
                "path with ..",
            ),
            (
                "hard link through symlink",
                Tar::new()
                    .raw(EntryType::Symlink, "s", "/etc", b"")
                    .raw(EntryType::Link, "h", "s/passwd", b"")
                    .bytes(),
                "path through a symlink",
            ),
        ];
        for (what, tar, reason) in cases {
            let (dir, r) = unpack(&tar);
            let e = r.err().unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(e.to_string().contains(reason), "{what}: {e}");
            assert!(!dir.path().join("escape").exists(), "{what}");
        }
        assert!(!Path::new("/escape").exists());
    }
}
