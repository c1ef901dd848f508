//! `crius check`: host preflight. Prints what the runtime needs and whether this host has it;
//! any missing requirement makes the command exit non-zero.

use std::path::Path;

use crate::cgroups::{self, CgroupVersion};
use crate::config::Config;
use crate::network;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Not needed to start, but some pods will not run without it.
    Warn,
    /// The runtime cannot work without it.
    Fail,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub detail: String,
}

fn finding(level: Level, what: impl Into<String>, detail: impl Into<String>) -> Finding {
    Finding {
        level,
        what: what.into(),
        detail: detail.into(),
    }
}

fn required(ok: bool, what: &str, detail: impl Into<String>) -> Finding {
    finding(if ok { Level::Ok } else { Level::Fail }, what, detail)
}

/// Runs every check against this host and the given configuration.
pub fn run(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let uid = nix::unistd::geteuid();
    out.push(required(
        uid.is_root(),
        "running as root",
        format!("effective uid {uid}"),
    ));

    for ns in ["mnt", "uts", "ipc", "net", "pid", "cgroup", "user"] {
        let path = format!("/proc/self/ns/{ns}");
        let present = Path::new(&path).exists();
        // User namespaces are only needed for pods that ask for them.
        let level = match (present, ns) {
            (true, _) => Level::Ok,
            (false, "user") => Level::Warn,
            (false, _) => Level::Fail,
        };
        out.push(finding(level, format!("{ns} namespace"), path));
    }

    out.push(check_overlay());
    out.extend(check_cgroups());
    out.extend(check_cni(config));

    let iptables = ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    out.push(required(
        iptables.is_some(),
        "iptables (port mappings, hostport)",
        iptables.unwrap_or("not found in /usr/sbin, /sbin or /usr/bin"),
    ));
    out
}

fn check_overlay() -> Finding {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("\toverlay"))
    {
        return finding(Level::Ok, "overlayfs", "in /proc/filesystems");
    }
    // Not loaded yet: the kernel loads the module on the first overlay mount if it exists.
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let module_dir = Path::new("/lib/modules")
        .join(&release)
        .join("kernel/fs/overlayfs");
    required(
        module_dir.exists(),
        "overlayfs",
        if module_dir.exists() {
            format!("loadable module in {}", module_dir.display())
        } else {
            "not in /proc/filesystems and no overlay module".to_string()
        },
    )
}

fn check_cgroups() -> Vec<Finding> {
    let layout = match cgroups::detect() {
        Ok(layout) => layout,
        Err(e) => {
            return vec![finding(
                Level::Fail,
                "cgroups",
                format!("cannot read the cgroup layout: {e}"),
            )];
        }
    };
    let version = match layout.version {
        CgroupVersion::V1 => "v1",
        CgroupVersion::V2 => "v2 (unified)",
    };
    let mut out = vec![finding(
        Level::Ok,
        format!("cgroup {version}"),
        format!("controllers: {}", layout.controllers.join(" ")),
    )];
    for controller in cgroups::required_controllers(layout.version) {
        let present = layout.controllers.iter().any(|c| c == controller);
        out.push(required(
            present,
            &format!("cgroup controller {controller}"),
            if present { "available" } else { "missing" },
        ));
    }
    out
}

fn check_cni(config: &Config) -> Vec<Finding> {
    let bin_dirs = &config.cni.bin_dirs;
    let searched = network::join_paths(bin_dirs);
    let mut out = Vec::new();
    // loopback is what every pod's lo is brought up with; the rest back the default bridge setup.
    for (plugin, level_if_missing) in [
        ("loopback", Level::Fail),
        ("bridge", Level::Warn),
        ("host-local", Level::Warn),
        ("portmap", Level::Warn),
    ] {
        let found = network::find_plugin(plugin, bin_dirs);
        out.push(match found {
            Some(path) => finding(
                Level::Ok,
                format!("CNI plugin {plugin}"),
                path.display().to_string(),
            ),
            None => finding(
                level_if_missing,
                format!("CNI plugin {plugin}"),
                format!("not found in {searched}"),
            ),
        });
    }
    out.push(match network::discover(&config.cni.conf_dir, bin_dirs) {
        Ok(net) => finding(
            Level::Ok,
            "CNI network config",
            format!(
                "{} (network {:?}, plugins {})",
                net.file.display(),
                net.name,
                net.plugins.join(",")
            ),
        ),
        // Pods with host networking still run; kubelet reports the node NotReady until then.
        Err(e) => finding(Level::Warn, "CNI network config", e.to_string()),
    });
    out
}

/// Prints the findings and returns whether every requirement is met.
pub fn report(findings: &[Finding]) -> bool {
    for f in findings {
        let tag = match f.level {
            Level::Ok => " ok ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("[{tag}] {}: {}", f.what, f.detail);
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    if failed == 0 {
        println!("crius can run on this host");
    } else {
        println!("crius cannot run on this host: {failed} requirement(s) missing");
    }
    failed == 0
}
