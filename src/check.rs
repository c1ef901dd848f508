//! `crius check`: host preflight. Prints what the runtime needs and whether this host has it;
//! any missing requirement makes the command exit non-zero.

mod systemd;

use std::path::Path;

use crate::cgroups::{self, CGROUP_ROOT, CgroupVersion};
use crate::config::{Config, ConfigError, ConfigFiles, Overrides};
use crate::network;

/// The driver name the systemd checks apply to.
const SYSTEMD: &str = "systemd";

/// The configuration `check` runs against.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub config: Config,
    /// The cgroup driver the configuration asks for.
    pub driver: String,
}

/// Loads the configuration as the daemon does. A systemd driver the daemon refuses is not a
/// configuration error here but a finding: the rest is checked with the default driver.
pub fn load(files: &ConfigFiles, overrides: &Overrides) -> Result<CheckConfig, ConfigError> {
    let config = files.config(overrides)?;
    Ok(CheckConfig {
        driver: config.cgroup_driver.as_str().to_string(),
        config,
    })
}

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
pub fn run(checked: &CheckConfig) -> Vec<Finding> {
    let config = &checked.config;
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
    out.extend(check_cgroup_driver(checked));
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
        "cgroup version",
        format!("{version}; controllers: {}", layout.controllers.join(" ")),
    )];
    for controller in cgroups::required_controllers(layout.version) {
        let present = layout.controllers.iter().any(|c| c == controller);
        out.push(required(
            present,
            &format!("cgroup controller {controller}"),
            if present { "available" } else { "missing" },
        ));
    }
    if layout.version == CgroupVersion::V2 {
        out.push(check_v2_subtree(
            Path::new(CGROUP_ROOT),
            &layout.controllers,
        ));
    }
    out
}

/// Controllers pod cgroups get limits through on v2; the root must enable them for its children.
pub const V2_SUBTREE_CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

/// Whether the v2 cgroup at `root` enables [`V2_SUBTREE_CONTROLLERS`] for its children in its
/// `cgroup.subtree_control`. Missing ones are a warning while crius can enable them itself (it
/// does, creating pod cgroups: the controller is available and no process lives in `root`, or
/// `root` is the real root cgroup); otherwise a failure for a required controller.
pub fn check_v2_subtree(root: &Path, available: &[String]) -> Finding {
    let file = root.join("cgroup.subtree_control");
    let what = format!("cgroup.subtree_control of {}", root.display());
    let enabled = match std::fs::read_to_string(&file) {
        Ok(text) => cgroups::parse_v2_controllers(&text),
        Err(e) => {
            return finding(
                Level::Fail,
                what,
                format!("cannot read {}: {e}", file.display()),
            );
        }
    };
    let missing: Vec<&str> = V2_SUBTREE_CONTROLLERS
        .into_iter()
        .filter(|c| !enabled.iter().any(|e| e == c))
        .collect();
    if missing.is_empty() {
        return finding(
            Level::Ok,
            what,
            format!("enables {}", V2_SUBTREE_CONTROLLERS.join(" ")),
        );
    }
    let root_can_enable = can_enable_below(root);
    let (enableable, stuck): (Vec<&str>, Vec<&str>) = missing
        .iter()
        .partition(|c| root_can_enable && available.iter().any(|a| a == *c));
    let required = cgroups::required_controllers(CgroupVersion::V2);
    let level = if stuck.iter().any(|c| required.contains(c)) {
        Level::Fail
    } else {
        Level::Warn
    };
    let mut detail = format!("does not enable {}", missing.join(" "));
    if !enableable.is_empty() {
        detail.push_str(&format!(
            "; crius enables {} as it creates pod cgroups",
            enableable.join(" ")
        ));
    }
    if !stuck.is_empty() {
        detail.push_str(&format!(
            "; {} cannot be enabled ({}): limits on them are skipped",
            stuck.join(" "),
            if root_can_enable {
                "not available in cgroup.controllers"
            } else {
                "processes live in this cgroup; move them to a child cgroup first"
            }
        ));
    }
    finding(level, what, detail)
}

/// Whether controllers can be enabled for the children of the v2 cgroup at `root`: the real
/// root cgroup (which has no `cgroup.type`) always can; any other only while no process lives
/// in it ("no internal processes").
fn can_enable_below(root: &Path) -> bool {
    if !root.join("cgroup.type").exists() {
        return true;
    }
    std::fs::read_to_string(root.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
}

/// The configured cgroup driver and, for systemd, what that driver needs of the host.
fn check_cgroup_driver(checked: &CheckConfig) -> Vec<Finding> {
    let mut out = vec![finding(Level::Ok, "cgroup driver", checked.driver.as_str())];
    if checked.driver != SYSTEMD {
        return out;
    }
    out.push(systemd::check_pid1());
    out.push(systemd::check_system_bus());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_root(subtree_control: &str, typed: bool, procs: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.subtree_control"), subtree_control).unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), procs).unwrap();
        if typed {
            std::fs::write(dir.path().join("cgroup.type"), "domain\n").unwrap();
        }
        dir
    }

    fn all_available() -> Vec<String> {
        V2_SUBTREE_CONTROLLERS.map(String::from).to_vec()
    }

    #[test]
    fn v2_subtree_control_with_everything_enabled() {
        let root = v2_root("cpuset cpu io memory hugetlb pids\n", true, "1\n");
        let f = check_v2_subtree(root.path(), &all_available());
        assert_eq!(f.level, Level::Ok, "{}", f.detail);
        assert!(f.what.contains("cgroup.subtree_control"), "{}", f.what);
    }

    #[test]
    fn v2_missing_controllers_crius_can_enable_are_a_warning() {
        // The real root cgroup (no cgroup.type) can always enable them, processes or not.
        let root = v2_root("cpu memory\n", false, "1\n");
        let f = check_v2_subtree(root.path(), &all_available());
        assert_eq!(f.level, Level::Warn, "{}", f.detail);
        assert!(
            f.detail.contains("does not enable cpuset io pids"),
            "{}",
            f.detail
        );
        // A delegated cgroup without processes can too.
        let root = v2_root("cpu memory\n", true, "");
        assert_eq!(
            check_v2_subtree(root.path(), &all_available()).level,
            Level::Warn
        );
    }

    #[test]
    fn v2_missing_controllers_that_cannot_be_enabled_name_them() {
        // Processes in a non-root cgroup: nothing can be enabled below it.
        let root = v2_root("cpu cpuset io\n", true, "42\n");
        let f = check_v2_subtree(root.path(), &all_available());
        assert_eq!(f.level, Level::Fail, "{}", f.detail);
        assert!(
            f.detail.contains("memory pids") && f.detail.contains("processes"),
            "{}",
            f.detail
        );
        // Only io missing, which no pod needs to run: a warning.
        let root = v2_root("cpu cpuset memory pids\n", true, "42\n");
        let f = check_v2_subtree(root.path(), &all_available());
        assert_eq!(f.level, Level::Warn, "{}", f.detail);
        assert!(f.detail.contains("io"), "{}", f.detail);
        // Not available at all: crius cannot enable it either.
        let root = v2_root("cpu cpuset memory\n", false, "1\n");
        let available = vec!["cpu".into(), "cpuset".into(), "memory".into()];
        let f = check_v2_subtree(root.path(), &available);
        assert_eq!(f.level, Level::Fail, "{}", f.detail);
        assert!(f.detail.contains("not available"), "{}", f.detail);
    }

    #[test]
    fn v2_unreadable_subtree_control_fails() {
        let dir = tempfile::tempdir().unwrap();
        let f = check_v2_subtree(dir.path(), &all_available());
        assert_eq!(f.level, Level::Fail);
        assert!(f.detail.contains("cannot read"), "{}", f.detail);
    }

    fn files(text: &str) -> (tempfile::TempDir, ConfigFiles) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crius.toml");
        std::fs::write(&path, text).unwrap();
        let files = ConfigFiles::read(&path, true).unwrap();
        (dir, files)
    }

    #[test]
    fn the_configured_driver_is_reported() {
        let (_dir, f) = files("");
        let checked = load(&f, &Overrides::default()).unwrap();
        assert_eq!(checked.driver, "cgroupfs");
        let out = check_cgroup_driver(&checked);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].what.as_str(), out[0].level),
            ("cgroup driver", Level::Ok)
        );
        assert_eq!(out[0].detail, "cgroupfs");
    }

    #[test]
    fn the_systemd_driver_checks_pid1_and_the_bus() {
        let (_dir, f) = files("cgroup_driver = \"systemd\"\nlog_level = \"debug\"\n");
        let checked = load(&f, &Overrides::default()).unwrap();
        assert_eq!(checked.driver, "systemd");
        let out = check_cgroup_driver(&checked);
        for what in ["systemd as PID 1", "D-Bus system bus"] {
            assert!(out.iter().any(|f| f.what == what), "{what}: {out:?}");
        }
        let (_dir, f) = files("cgroup_driver = \"sistemd\"\n");
        let e = load(&f, &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("sistemd"), "{e}");
    }
}
