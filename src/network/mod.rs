//! CNI: which network configuration the runtime would use, and whether its plugins are there.
//!
//! As libcni does: files ending in .conf, .conflist or .json in the conf dir, sorted by name; the
//! first one that parses and whose plugins all exist in a bin dir is the pod network.

pub mod cni;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CniConfigError {
    #[error("no network config found in {0}")]
    NoConfig(PathBuf),
    #[error("cannot read CNI conf dir {dir}: {reason}")]
    ReadDir { dir: PathBuf, reason: String },
    #[error("no valid network config in {dir}: {problems}")]
    NoneValid { dir: PathBuf, problems: String },
}

/// A network configuration list ready to be used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub file: PathBuf,
    pub name: String,
    pub cni_version: String,
    /// Plugin types in chain order.
    pub plugins: Vec<String>,
    /// The list as JSON (a single .conf is wrapped into a list, as libcni does).
    pub list: serde_json::Value,
}

/// Finds the network config the runtime would use now. Cheap enough to call on every Status.
pub fn discover(conf_dir: &Path, bin_dirs: &[PathBuf]) -> Result<NetworkConfig, CniConfigError> {
    let entries = match std::fs::read_dir(conf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CniConfigError::NoConfig(conf_dir.to_path_buf()));
        }
        Err(e) => {
            return Err(CniConfigError::ReadDir {
                dir: conf_dir.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    if files.is_empty() {
        return Err(CniConfigError::NoConfig(conf_dir.to_path_buf()));
    }
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        match load(&file, bin_dirs) {
            Ok(config) => return Ok(config),
            Err(problem) => problems.push(format!("{}: {problem}", file.display())),
        }
    }
    Err(CniConfigError::NoneValid {
        dir: conf_dir.to_path_buf(),
        problems: problems.join("; "),
    })
}

/// Loads one config file and checks that every plugin it chains can be found.
pub fn load(file: &Path, bin_dirs: &[PathBuf]) -> Result<NetworkConfig, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))?;
    let is_list = file.extension().and_then(|x| x.to_str()) == Some("conflist");
    let list = if is_list {
        value
    } else {
        // A single plugin config becomes a one-plugin list, keeping its name and version.
        serde_json::json!({
            "cniVersion": value.get("cniVersion").cloned().unwrap_or_default(),
            "name": value.get("name").cloned().unwrap_or_default(),
            "plugins": [value],
        })
    };
    let name = list
        .get("name")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or("no network name")?
        .to_string();
    let plugins = list
        .get("plugins")
        .and_then(|v| v.as_array())
        .filter(|p| !p.is_empty())
        .ok_or("no plugins")?
        .iter()
        .map(|p| {
            p.get("type")
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .ok_or_else(|| "a plugin has no type".to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    for plugin in &plugins {
        if find_plugin(plugin, bin_dirs).is_none() {
            return Err(format!(
                "plugin {plugin:?} not found in {}",
                join_paths(bin_dirs)
            ));
        }
    }
    Ok(NetworkConfig {
        file: file.to_path_buf(),
        name,
        cni_version: list
            .get("cniVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
        plugins,
        list,
    })
}

/// The first executable named `plugin` in the bin dirs.
pub fn find_plugin(plugin: &str, bin_dirs: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if plugin.contains('/') {
        return None;
    }
    bin_dirs.iter().map(|d| d.join(plugin)).find(|p| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

pub fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_bin(dir: &Path, names: &[&str]) {
        for n in names {
            let p = dir.join(n);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn empty_dir_is_no_config() {
        let d = tempfile::tempdir().unwrap();
        let e = discover(d.path(), &[]).unwrap_err();
        assert!(matches!(e, CniConfigError::NoConfig(_)));
        let e = discover(&d.path().join("missing"), &[]).unwrap_err();
        assert!(matches!(e, CniConfigError::NoConfig(_)));
    }

    #[test]
    fn first_valid_config_by_name_wins() {
        let conf = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        fake_bin(bin.path(), &["bridge", "host-local", "portmap"]);
        let bins = vec![bin.path().to_path_buf()];
        std::fs::write(conf.path().join("05-broken.conflist"), "{not json").unwrap();
        std::fs::write(
            conf.path().join("10-missing-plugin.conflist"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"calico"}]}"#,
        )
        .unwrap();
        std::fs::write(
            conf.path().join("20-net.conflist"),
            r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(
            conf.path().join("30-single.conf"),
            r#"{"cniVersion":"0.4.0","name":"single","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(conf.path().join("README"), "ignored").unwrap();
        let c = discover(conf.path(), &bins).unwrap();
        assert_eq!(c.name, "podnet");
        assert_eq!(c.plugins, vec!["bridge", "portmap"]);

        std::fs::remove_file(conf.path().join("20-net.conflist")).unwrap();
        let c = discover(conf.path(), &bins).unwrap();
        assert_eq!(c.name, "single");
        assert_eq!(c.list["plugins"][0]["type"], "bridge");

        std::fs::remove_file(conf.path().join("30-single.conf")).unwrap();
        let e = discover(conf.path(), &bins).unwrap_err().to_string();
        assert!(e.contains("calico") && e.contains("not valid JSON"), "{e}");
    }
}

/// Validates kubelet's pod CIDR (one CIDR, or a v4 and a v6 one comma-separated for dual stack)
/// and returns it normalized (no spaces).
pub fn parse_pod_cidrs(text: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (addr, prefix) = part
            .split_once('/')
            .ok_or_else(|| format!("{part:?} is not a CIDR (address/prefix)"))?;
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{part:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(p) if p <= max => {}
            _ => return Err(format!("{part:?}: prefix must be 0 to {max}")),
        }
        out.push(part.to_string());
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod cidr_tests {
    use super::parse_pod_cidrs;

    #[test]
    fn pod_cidrs() {
        assert_eq!(parse_pod_cidrs("10.88.0.0/16").unwrap(), "10.88.0.0/16");
        assert_eq!(
            parse_pod_cidrs("10.1.0.0/24, fd00::/64").unwrap(),
            "10.1.0.0/24,fd00::/64"
        );
        assert!(parse_pod_cidrs("10.1.0.0").is_err());
        assert!(parse_pod_cidrs("10.1.0.0/33").is_err());
        assert!(parse_pod_cidrs("nope/8").is_err());
    }
}
