//! A container's root filesystem, built in its own mount namespace: the overlay over the image's
//! layers, the spec's mounts in order, device nodes, masked and read-only paths, pivot_root.

use std::os::fd::OwnedFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use super::SetupError;
use super::path::secure_join;
use super::userns::{self, PodMappings};

fn err(what: impl std::fmt::Display) -> impl FnOnce(nix::errno::Errno) -> SetupError {
    SetupError::at(what)
}

/// What to mount the overlay from.
pub struct Overlay<'a> {
    /// The layers' parent dir: lower dirs in `options` are relative to it, which keeps a mount
    /// of many layers within the page the kernel accepts for options.
    pub layers_dir: &'a Path,
    pub options: &'a str,
}

/// A container of a user-namespaced pod: its layers and idmapped volumes are shown through
/// the pod's user namespace, and what the spec says in container ids (device owners, the
/// tty group, tmpfs owners) is written as the host ids they are.
pub struct UserNamespace<'a> {
    pub userns: &'a OwnedFd,
    pub maps: PodMappings,
}

/// Builds the root under `rootfs` and pivots into it. Runs in the container's new mount
/// namespace; nothing done here is visible on the host.
pub fn prepare(
    spec: &Spec,
    rootfs: &Path,
    overlay: &Overlay,
    userns: Option<&UserNamespace>,
    enter_cgroup: &mut dyn FnMut() -> Result<(), SetupError>,
) -> Result<(), SetupError> {
    // The host's mounts reach us; ours reach the host only through volumes that ask for it
    // (rshared), and those need the copies of the host's mounts to stay in their peer groups.
    let linux = spec.linux().clone().unwrap_or_default();
    let propagation = match linux.rootfs_propagation().as_deref() {
        Some("rshared") | Some("shared") => MsFlags::MS_SHARED,
        _ => MsFlags::MS_SLAVE,
    };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | propagation,
        None::<&str>,
    )
    .map_err(err("setting the propagation of /"))?;
    // The mount holding the rootfs is private here, so the rootfs and everything mounted in
    // it stay in this namespace whatever the propagation of /.
    let holder = mount_point_of(rootfs.parent().unwrap_or(rootfs));
    mount(
        None::<&str>,
        &holder,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(err(format!("making {} private", holder.display())))?;
    std::env::set_current_dir(overlay.layers_dir)
        .map_err(|e| format!("entering {}: {e}", overlay.layers_dir.display()))?;
    let options = match userns {
        Some(ns) => idmap_lower_layers(overlay, rootfs, ns)?,
        None => overlay.options.to_string(),
    };
    mount(
        Some("overlay"),
        rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(err(format!(
        "mounting the overlay rootfs at {}",
        rootfs.display()
    )))?;

    for m in spec.mounts().iter().flatten() {
        // cgroupfs shows the mounter's cgroup namespace.
        if m.typ().as_deref() == Some("cgroup") {
            enter_cgroup()?;
        }
        mount_one(rootfs, m, userns)?;
    }
    for device in linux.devices().iter().flatten() {
        create_device(rootfs, device, userns.map(|ns| ns.maps))?;
    }
    dev_symlinks(rootfs);
    if let Some(cwd) = spec.process().as_ref().map(|p| p.cwd().clone()) {
        let dir = secure_join(rootfs, &cwd)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("creating the working dir {}: {e}", cwd.display()))?;
    }
    for path in linux.masked_paths().iter().flatten() {
        mask(rootfs, path)?;
    }
    for path in linux.readonly_paths().iter().flatten() {
        make_readonly(rootfs, path)?;
    }
    pivot(rootfs)?;
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(err("making the rootfs read-only"))?;
    }
    Ok(())
}

/// Attaches an idmapped copy of each lower layer under `<bundle>/idmapped/<n>` (the bundle's
/// mount is private here, so nothing reaches the host) and returns the overlay options with
/// those as lower dirs, relative to it: the cwd from here on. The upper dir's root becomes the
/// pod root's, so the container's / is its own; files it creates land as its host ids.
fn idmap_lower_layers(
    overlay: &Overlay,
    rootfs: &Path,
    ns: &UserNamespace,
) -> Result<String, SetupError> {
    let staging = rootfs.parent().unwrap_or(rootfs).join("idmapped");
    let mut lower = Vec::new();
    let mut rest = Vec::new();
    for option in overlay.options.split(',') {
        match option.strip_prefix("lowerdir=") {
            Some(dirs) => lower.extend(dirs.split(':')),
            None => rest.push(option),
        }
    }
    for (n, dir) in lower.iter().enumerate() {
        let source = overlay.layers_dir.join(dir);
        let target = staging.join(n.to_string());
        std::fs::create_dir_all(&target)
            .map_err(|e| format!("creating {}: {e}", target.display()))?;
        let tree = userns::idmapped_tree(&source, ns.userns, false).map_err(|errno| {
            SetupError::os(
                userns::idmap_refusal("the image layer", &source, errno),
                errno,
            )
        })?;
        userns::attach_tree(&tree, &target).map_err(err(format!(
            "attaching the idmapped layer at {}",
            target.display()
        )))?;
    }
    if let Some(upper) = rest.iter().find_map(|o| o.strip_prefix("upperdir=")) {
        nix::unistd::chown(
            upper,
            Some(nix::unistd::Uid::from_raw(ns.maps.uids.host)),
            Some(nix::unistd::Gid::from_raw(ns.maps.gids.host)),
        )
        .map_err(err(format!("giving {upper} to the pod's root")))?;
    }
    std::env::set_current_dir(&staging)
        .map_err(|e| format!("entering {}: {e}", staging.display()))?;
    let numbers: Vec<String> = (0..lower.len()).map(|n| n.to_string()).collect();
    let mut options = vec![format!("lowerdir={}", numbers.join(":"))];
    options.extend(rest.iter().map(|o| o.to_string()));
    Ok(options.join(","))
}

/// The mount point of the mount that holds `path` (the longest mount point above it).
fn mount_point_of(path: &Path) -> PathBuf {
    mount_holding(path).map_or_else(|| PathBuf::from("/"), |(point, _)| point)
}

/// The mount point and filesystem type of the mount that holds `path`, from
/// /proc/self/mountinfo.
pub fn mount_holding(path: &Path) -> Option<(PathBuf, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo
        .lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let point = PathBuf::from(head.split_whitespace().nth(4)?.replace("\\040", " "));
            let fstype = tail.split_whitespace().next()?;
            path.starts_with(&point)
                .then(|| (point, fstype.to_string()))
        })
        .max_by_key(|(point, _)| point.as_os_str().len())
}

/// Mount options as flags, propagation flags and the data string for the filesystem.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "private" => propagation |= MsFlags::MS_PRIVATE,
            "rprivate" => propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "slave" => propagation |= MsFlags::MS_SLAVE,
            "rslave" => propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "shared" => propagation |= MsFlags::MS_SHARED,
            "rshared" => propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC,
            // Applied after the mount, to it and every mount below it (see recursive_read_only).
            "rro" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, propagation, data.join(","))
}

fn mount_one(rootfs: &Path, m: &Mount, userns: Option<&UserNamespace>) -> Result<(), SetupError> {
    let options = m.options().clone().unwrap_or_default();
    let (flags, propagation, data) = parse_options(&options);
    let typ = m.typ().clone().unwrap_or_default();
    let data = match userns {
        Some(ns) => owners_as_host_ids(&typ, &data, ns.maps),
        None => data,
    };
    // An idmapped volume: the pod's user namespace sees its files as the host's root does.
    let idmap = userns.filter(|_| m.uid_mappings().is_some());
    let target = secure_join(rootfs, m.destination())?;
    let is_bind = flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
    // A file is bind-mounted onto a file, anything else onto a directory.
    let onto_file = is_bind && std::fs::metadata(&source).is_ok_and(|s| !s.is_dir());
    if onto_file {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        if !target.exists() {
            std::fs::File::create(&target)
                .map_err(|e| format!("creating {}: {e}", target.display()))?;
        }
    } else {
        std::fs::create_dir_all(&target)
            .map_err(|e| format!("creating {}: {e}", target.display()))?;
    }
    let what = format!(
        "mounting {} at {}",
        source.display(),
        m.destination().display()
    );
    if typ == "cgroup" {
        return mount_cgroups(&target, flags);
    }
    if is_bind {
        let base = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
        match idmap {
            Some(ns) => {
                let recursive = flags.contains(MsFlags::MS_REC);
                let tree = userns::idmapped_tree(&source, ns.userns, recursive).map_err(|e| {
                    SetupError::os(userns::idmap_refusal("the volume", &source, e), e)
                })?;
                userns::attach_tree(&tree, &target).map_err(err(&what))?;
            }
            None => mount(Some(&source), &target, None::<&str>, base, None::<&str>)
                .map_err(err(&what))?,
        }
        // Bind mounts take their other flags only on a remount.
        let extra = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                None::<&str>,
            )
            .map_err(err(format!("{what} (remount {options:?})")))?;
        }
    } else {
        let data = (!data.is_empty()).then_some(data.as_str());
        mount(Some(&source), &target, Some(typ.as_str()), flags, data).map_err(err(&what))?;
    }
    if !propagation.is_empty() {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .map_err(err(format!("{what} (propagation)")))?;
    }
    if options.iter().any(|o| o == "rro") {
        recursive_read_only(&target).map_err(err(format!("{what} (recursive read-only)")))?;
    }
    Ok(())
}

/// In a user-namespaced container, the owners that mount options give in container ids
/// (devpts' `gid=5`, the tty group) become the host ids they are, and a tmpfs with no owner
/// given belongs to the pod's root rather than to the host's.
fn owners_as_host_ids(typ: &str, data: &str, maps: PodMappings) -> String {
    if !matches!(typ, "tmpfs" | "devpts") {
        return data.to_string();
    }
    let mut options: Vec<String> = Vec::new();
    let (mut uid, mut gid) = (false, false);
    for option in data.split(',').filter(|o| !o.is_empty()) {
        let translated = match option.split_once('=') {
            Some(("uid", id)) => {
                uid = true;
                id.parse()
                    .ok()
                    .and_then(|id| maps.uids.to_host(id))
                    .map(|h| format!("uid={h}"))
            }
            Some(("gid", id)) => {
                gid = true;
                id.parse()
                    .ok()
                    .and_then(|id| maps.gids.to_host(id))
                    .map(|h| format!("gid={h}"))
            }
            _ => None,
        };
        options.push(translated.unwrap_or_else(|| option.to_string()));
    }
    if typ == "tmpfs" {
        if !uid {
            options.push(format!("uid={}", maps.uids.host));
        }
        if !gid {
            options.push(format!("gid={}", maps.gids.host));
        }
    }
    options.join(",")
}

/// Makes the mount at `target` and every mount below it read-only (mount_setattr(2) with
/// AT_RECURSIVE, Linux 5.12): a read-only bind alone leaves the submounts writable.
pub fn recursive_read_only(target: &Path) -> Result<(), nix::errno::Errno> {
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is a NUL-terminated string and `attr` a mount_attr of the size passed,
    // both alive for the call; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Whether this kernel has mount_setattr(2), which recursive read-only mounts need: asked with
/// arguments it must refuse (no path), an ENOSYS says it does not.
pub fn supports_recursive_read_only() -> bool {
    // SAFETY: a null path with an empty mount_attr size: the kernel reads nothing and fails.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<libc::mount_attr>(),
            0,
        )
    };
    rc == 0 || nix::errno::Errno::last() != nix::errno::Errno::ENOSYS
}

/// /sys/fs/cgroup as the container sees it: its own cgroup as the root (the process is in a new
/// cgroup namespace by now). v2 is one mount; v1 is a tmpfs holding one mount per hierarchy.
fn mount_cgroups(target: &Path, flags: MsFlags) -> Result<(), SetupError> {
    let flags = flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v1 = Vec::new();
    let mut v2 = false;
    for line in mountinfo.lines() {
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mut tail = tail.split_whitespace();
        let fstype = tail.next().unwrap_or_default();
        let super_options = tail.nth(1).unwrap_or_default();
        let Some(point) = head.split_whitespace().nth(4) else {
            continue;
        };
        if point == "/sys/fs/cgroup" && fstype == "cgroup2" {
            v2 = true;
        }
        if fstype == "cgroup"
            && let Some(name) = point.strip_prefix("/sys/fs/cgroup/")
        {
            let options: Vec<&str> = super_options
                .split(',')
                .filter(|o| *o != "rw" && *o != "ro")
                .collect();
            v1.push((name.to_string(), options.join(",")));
        }
    }
    if v2 {
        return mount(Some("cgroup"), target, Some("cgroup2"), flags, None::<&str>)
            .map_err(err("mounting cgroup2"));
    }
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .map_err(err("mounting the cgroup tmpfs"))?;
    for (name, options) in &v1 {
        let dir = target.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        mount(
            Some("cgroup"),
            &dir,
            Some("cgroup"),
            flags,
            Some(options.as_str()),
        )
        .map_err(err(format!("mounting cgroup {name}")))?;
    }
    // The usual aliases of co-mounted hierarchies (cpu -> cpu,cpuacct).
    for (name, _) in &v1 {
        if name.contains(',') {
            for part in name.split(',') {
                let _ = symlink(name, target.join(part));
            }
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
        )
        .map_err(err("making the cgroup tmpfs read-only"))?;
    }
    Ok(())
}

fn create_device(
    rootfs: &Path,
    device: &LinuxDevice,
    maps: Option<PodMappings>,
) -> Result<(), SetupError> {
    let target = secure_join(rootfs, device.path())?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let kind = match device.typ() {
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    let mode = Mode::from_bits_truncate(device.file_mode().unwrap_or(0o666));
    let dev = makedev(device.major() as u64, device.minor() as u64);
    let _ = std::fs::remove_file(&target);
    mknod(&target, kind, mode, dev).map_err(err(format!("mknod {}", device.path().display())))?;
    // mknod applies the umask; the spec's mode is meant exactly.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &target,
        mode,
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(err(format!("chmod {}", device.path().display())))?;
    let (uid, gid) = (device.uid().unwrap_or(0), device.gid().unwrap_or(0));
    let (uid, gid) = match maps {
        Some(m) => (
            m.uids.to_host(uid).unwrap_or(m.uids.host),
            m.gids.to_host(gid).unwrap_or(m.gids.host),
        ),
        None => (uid, gid),
    };
    nix::unistd::chown(
        &target,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(err(format!("chown {}", device.path().display())))
}

/// The links every /dev has.
fn dev_symlinks(rootfs: &Path) {
    let dev = rootfs.join("dev");
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        if std::fs::symlink_metadata(dev.join(link)).is_err() {
            let _ = symlink(target, dev.join(link));
        }
    }
}

/// Hides a path: an empty read-only tmpfs over a directory, /dev/null over a file.
fn mask(rootfs: &Path, path: &str) -> Result<(), SetupError> {
    let target = secure_join(rootfs, Path::new(path))?;
    let Ok(meta) = std::fs::metadata(&target) else {
        return Ok(());
    };
    let result = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    result.map_err(err(format!("masking {path}")))
}

fn make_readonly(rootfs: &Path, path: &str) -> Result<(), SetupError> {
    let target = secure_join(rootfs, Path::new(path))?;
    if !target.exists() {
        return Ok(());
    }
    mount(
        Some(&target),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err(format!("binding {path}")))?;
    mount(
        None::<&str>,
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err(format!("making {path} read-only")))
}

/// pivot_root with the old root stacked under the new one, then detached.
fn pivot(rootfs: &Path) -> Result<(), SetupError> {
    std::env::set_current_dir(rootfs).map_err(|e| format!("entering {}: {e}", rootfs.display()))?;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detaching the old root"))?;
    std::env::set_current_dir("/").map_err(SetupError::at_io("entering /"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options() {
        let o = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (flags, prop, data) =
            parse_options(&o(&["nosuid", "strictatime", "mode=755", "size=65536k"]));
        assert_eq!(flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert!(prop.is_empty());
        assert_eq!(data, "mode=755,size=65536k");
        let (flags, prop, data) = parse_options(&o(&["rbind", "ro", "rslave"]));
        assert_eq!(
            flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(prop, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert!(data.is_empty());
    }
}
