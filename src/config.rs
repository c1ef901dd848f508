//! Daemon configuration: a TOML file with documented defaults, the drop-ins of the `config.d`
//! directory next to it merged over it in file-name order, and command-line flags over both.
//!
//! Every key is listed in README.md. Parsing is strict: an unknown key, a wrong type or an invalid
//! value is a [`ConfigError`] that names the file (or flag) it came from, the key and the value,
//! and the daemon exits with status 2.
//!
//! Merging, as CRI-O's `crio.conf.d`: a key set in a later file wins; tables merge key by key
//! (mirrors from several files accumulate); any other value, arrays included, is replaced whole.
//! Each file must be valid on its own as to keys and types; values are validated once, on the
//! merged result, and an invalid one is blamed on the file or flag that set it last.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod files;

use files::key_path;
pub use files::{ConfigFiles, drop_in_dir};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/crius/config.toml";
pub const DEFAULT_ROOT: &str = "/var/lib/crius";
pub const DEFAULT_STATE: &str = "/run/crius";
/// The socket file name inside the state dir when `listen` is not set.
pub const SOCKET_NAME: &str = "crius.sock";
/// The drop-in directory, next to the main config file.
pub const DROP_IN_DIR: &str = "config.d";
/// Drop-ins are the files of [`DROP_IN_DIR`] with this extension.
pub const DROP_IN_EXTENSION: &str = "toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read config directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The files were each valid but their merge is not (cannot happen with the merge rules).
    #[error("merging config files {files}: {message}")]
    Merge { files: String, message: String },
    /// A [`ConfigError::Invalid`] value and the file or flag that set it.
    #[error("{origin}: {source}")]
    At {
        origin: Origin,
        source: Box<ConfigError>,
    },
    #[error("invalid value for {key}: {value:?}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    fn invalid(
        key: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// A command-line flag, by its long name.
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Flag(name) => write!(f, "command-line flag --{name}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How pods' and containers' cgroups are made: directories crius names (cgroupfs), or
/// transient systemd units (systemd, which needs systemd as PID 1 and its system bus).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl CgroupDriver {
    /// The key whose value this is.
    pub const KEY: &'static str = "cgroup_driver";

    /// The name as the config file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }
}

/// The whole configuration as the file spells it. Paths are absolute after [`Config::validate`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent state: metadata store, image content, snapshots, container bundles.
    pub root: PathBuf,
    /// Runtime state (tmpfs): sockets, pinned namespaces, pod agent sockets.
    pub state: PathBuf,
    /// The CRI socket; empty means `<state>/crius.sock`. `unix://` prefix allowed.
    pub listen: String,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub cgroup_driver: CgroupDriver,
    /// How long SIGTERM waits for in-flight RPCs before the daemon exits anyway, in seconds.
    pub shutdown_timeout_secs: u64,
    pub cni: CniConfig,
    pub streaming: StreamingConfig,
    pub registry: RegistryConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` of the Prometheus endpoint (`/metrics`); empty: no endpoint.
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// `host:port` of the exec/attach/port-forward server; port 0 picks a free port at start.
    pub address: String,
    /// PEM certificate chain and private key: with both, the server speaks TLS (https URLs).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long a URL handed out by Exec, Attach or PortForward stays valid, in seconds.
    pub token_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry host → endpoints tried in order (`http://` = plain HTTP, `https://` = TLS).
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// A docker config.json whose `auths` serve registries the pull request has no credentials for.
    pub auth_file: Option<PathBuf>,
    /// Layers downloaded at once, over all pulls.
    pub max_concurrent_downloads: usize,
    /// A download that receives nothing for this long fails instead of hanging.
    pub stall_timeout_secs: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            mirrors: BTreeMap::new(),
            auth_file: None,
            max_concurrent_downloads: 3,
            stall_timeout_secs: 60,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            state: PathBuf::from(DEFAULT_STATE),
            listen: String::new(),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            shutdown_timeout_secs: 10,
            cni: CniConfig::default(),
            streaming: StreamingConfig::default(),
            registry: RegistryConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1:0".to_string(),
            tls_cert: None,
            tls_key: None,
            token_ttl_secs: 60,
        }
    }
}

/// Values given on the command line; each one set overrides the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub listen: Option<String>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Reads `path` (a missing file at the default path means defaults) and the drop-ins next to
    /// it, merges them, applies the overrides and validates the result.
    pub fn load(
        path: &Path,
        explicit_path: bool,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        ConfigFiles::read(path, explicit_path)?.config(overrides)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.root {
            self.root = v.clone();
        }
        if let Some(v) = &o.state {
            self.state = v.clone();
        }
        if let Some(v) = &o.listen {
            self.listen = v.clone();
        }
        if let Some(v) = o.log_level {
            self.log_level = v;
        }
        if let Some(v) = o.log_format {
            self.log_format = v;
        }
    }

    /// Checks every value the type system cannot, and normalizes `listen` to a plain path.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        require_absolute("root", &self.root)?;
        require_absolute("state", &self.state)?;
        require_absolute("cni.conf_dir", &self.cni.conf_dir)?;
        for dir in &self.cni.bin_dirs {
            require_absolute("cni.bin_dirs", dir)?;
        }
        if self.cni.bin_dirs.is_empty() {
            return Err(ConfigError::invalid(
                "cni.bin_dirs",
                "[]",
                "at least one directory is needed",
            ));
        }
        self.listen = normalize_listen(&self.listen, &self.state)?;
        if self.shutdown_timeout_secs == 0 || self.shutdown_timeout_secs > 3600 {
            return Err(ConfigError::invalid(
                "shutdown_timeout_secs",
                self.shutdown_timeout_secs.to_string(),
                "must be between 1 and 3600",
            ));
        }
        validate_streaming_address(&self.streaming.address)?;
        if !(1..=3600).contains(&self.streaming.token_ttl_secs) {
            return Err(ConfigError::invalid(
                "streaming.token_ttl_secs",
                self.streaming.token_ttl_secs.to_string(),
                "must be 1-3600",
            ));
        }
        // Blamed on the key that is set, so the error names the file that set it.
        match (&self.streaming.tls_cert, &self.streaming.tls_key) {
            (Some(cert), None) => {
                return Err(ConfigError::invalid(
                    "streaming.tls_cert",
                    cert.display().to_string(),
                    "streaming.tls_key is not set: give both or neither",
                ));
            }
            (None, Some(key)) => {
                return Err(ConfigError::invalid(
                    "streaming.tls_key",
                    key.display().to_string(),
                    "streaming.tls_cert is not set: give both or neither",
                ));
            }
            _ => {}
        }
        if !self.metrics.address.is_empty() && self.metrics.address.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "metrics.address",
                &self.metrics.address,
                "expected ip:port (or empty for no endpoint)",
            ));
        }
        if let Some(path) = &self.registry.auth_file {
            require_absolute("registry.auth_file", path)?;
        }
        if !(1..=64).contains(&self.registry.max_concurrent_downloads) {
            return Err(ConfigError::invalid(
                "registry.max_concurrent_downloads",
                self.registry.max_concurrent_downloads.to_string(),
                "must be between 1 and 64",
            ));
        }
        if !(1..=3600).contains(&self.registry.stall_timeout_secs) {
            return Err(ConfigError::invalid(
                "registry.stall_timeout_secs",
                self.registry.stall_timeout_secs.to_string(),
                "must be between 1 and 3600",
            ));
        }
        for (host, endpoints) in &self.registry.mirrors {
            let key = key_path("registry.mirrors", host);
            validate_registry_host(&key, host)?;
            if endpoints.is_empty() {
                return Err(ConfigError::invalid(
                    key,
                    "[]",
                    "list at least one endpoint",
                ));
            }
            for endpoint in endpoints {
                validate_endpoint(&key, endpoint)?;
            }
        }
        Ok(())
    }

    pub fn socket_path(&self) -> PathBuf {
        PathBuf::from(&self.listen)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The metadata database file.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("crius.db")
    }
}

fn require_absolute(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            path.display().to_string(),
            "must be an absolute path",
        ))
    }
}

fn normalize_listen(listen: &str, state: &Path) -> Result<String, ConfigError> {
    if listen.is_empty() {
        return Ok(state.join(SOCKET_NAME).display().to_string());
    }
    let path = listen.strip_prefix("unix://").unwrap_or(listen);
    if !path.starts_with('/') {
        return Err(ConfigError::invalid(
            "listen",
            listen,
            "must be an absolute socket path or unix:///absolute/path",
        ));
    }
    // sun_path holds 108 bytes including the terminating NUL.
    if path.len() > 107 {
        return Err(ConfigError::invalid(
            "listen",
            listen,
            "socket path longer than 107 bytes",
        ));
    }
    Ok(path.to_string())
}

fn validate_streaming_address(address: &str) -> Result<(), ConfigError> {
    let bad = |reason: &str| ConfigError::invalid("streaming.address", address, reason);
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad("expected host:port"));
    }
    port.parse::<u16>()
        .map(|_| ())
        .map_err(|_| bad("port must be a number from 0 to 65535"))
}

fn validate_registry_host(key: &str, host: &str) -> Result<(), ConfigError> {
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            host,
            "a registry host is a name or address with an optional :port",
        ))
    }
}

fn validate_endpoint(key: &str, endpoint: &str) -> Result<(), ConfigError> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| {
            ConfigError::invalid(key, endpoint, "an endpoint starts with http:// or https://")
        })?;
    let host = rest.split('/').next().unwrap_or_default();
    validate_registry_host(key, host)
        .map_err(|_| ConfigError::invalid(key, endpoint, "the endpoint has no valid host"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::parse(Path::new("t.toml"), text)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = parse("").unwrap();
        assert_eq!(c.root, PathBuf::from("/var/lib/crius"));
        assert_eq!(c.listen, "/run/crius/crius.sock");
        assert_eq!(c.cni.conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.cni.bin_dirs.len(), 2);
        assert_eq!(c.streaming.address, "127.0.0.1:0");
        assert_eq!(c.log_level, LogLevel::Info);
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
            root = "/tmp/r"
            state = "/tmp/s"
            listen = "unix:///tmp/s/x.sock"
            log_level = "debug"
            log_format = "json"
            cgroup_driver = "cgroupfs"
            [cni]
            conf_dir = "/tmp/net.d"
            bin_dirs = ["/usr/lib/cni"]
            [streaming]
            address = "localhost:10010"
            [registry.mirrors]
            "registry.k8s.io" = ["http://127.0.0.1:5000"]
            "docker.io" = ["https://mirror.example", "https://registry-1.docker.io"]
            "#,
        )
        .unwrap();
        assert_eq!(c.listen, "/tmp/s/x.sock");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.registry.mirrors["docker.io"].len(), 2);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("rooot = \"/x\"").unwrap_err().to_string();
        assert!(e.contains("rooot"), "{e}");
        let e = parse("[cni]\nconfdir = \"/x\"").unwrap_err().to_string();
        assert!(e.contains("confdir"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_values_are_named() {
        let e = parse("shutdown_timeout_secs = \"ten\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shutdown_timeout_secs"), "{e}");
        let e = parse("log_level = \"loud\"").unwrap_err().to_string();
        assert!(e.contains("log_level") && e.contains("loud"), "{e}");
        let e = parse("root = \"relative\"").unwrap_err().to_string();
        assert!(e.contains("root") && e.contains("relative"), "{e}");
        let e = parse("cgroup_driver = \"systemdd\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("systemdd"), "{e}");
        let e = parse("[streaming]\naddress = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("streaming.address") && e.contains("nope"), "{e}");
        let e = parse("[metrics]\naddress = \"localhost\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("metrics.address") && e.contains("localhost"),
            "{e}"
        );
        assert!(parse("[metrics]\naddress = \"127.0.0.1:9101\"").is_ok());
        let e = parse("[registry.mirrors]\n\"docker.io\" = [\"ftp://x\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("docker.io") && e.contains("ftp://x"), "{e}");
        let e = parse("listen = \"rel.sock\"").unwrap_err().to_string();
        assert!(e.contains("listen") && e.contains("rel.sock"), "{e}");
    }

    #[test]
    fn overrides_win_over_file() {
        let mut c = Config::parse(Path::new("t"), "root = \"/a\"\nlog_level = \"warn\"").unwrap();
        c.apply(&Overrides {
            root: Some("/b".into()),
            log_level: Some(LogLevel::Error),
            ..Default::default()
        });
        c.validate().unwrap();
        assert_eq!(c.root, PathBuf::from("/b"));
        assert_eq!(c.log_level, LogLevel::Error);
    }
}
