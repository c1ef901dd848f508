//! Paths inside a container's root resolved the way the container will see them: symlinks in
//! the image are followed within the root, never out of it.

use super::SetupError;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up (as the kernel's own limit for path walks).
const MAX_LINKS: usize = 40;

/// `unsafe_path` (absolute or not) joined under `root`, each symlink met on the way resolved as
/// if `root` were `/`. The result is always under `root`; its tail need not exist.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf, SetupError> {
    let mut pending: Vec<std::ffi::OsString> = components(unsafe_path);
    pending.reverse();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = root.join(resolved.iter().collect::<PathBuf>()).join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!(
                        "{}: too many levels of symbolic links",
                        unsafe_path.display()
                    )
                    .into());
                }
                let target = std::fs::read_link(&candidate)
                    .map_err(|e| format!("reading link {}: {e}", candidate.display()))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut parts = components(&target);
                parts.reverse();
                pending.extend(parts);
            }
            _ => resolved.push(part),
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

/// The normal and `..` components of a path; `/` and `.` carry no meaning here.
fn components(path: &Path) -> Vec<std::ffi::OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/lib/x")).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            secure_join(root, Path::new("/usr/escape/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("../../a/./b")).unwrap(),
            root.join("a/b")
        );
        assert!(secure_join(root, Path::new("/loop/x")).is_err());
    }
}
