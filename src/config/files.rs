//! The files one configuration is read from, and how they merge: the main file, then the
//! drop-ins of the `config.d` directory next to it, in file-name order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError, DROP_IN_DIR, DROP_IN_EXTENSION, Origin, Overrides};

/// The config files of one start, in the order they apply.
#[derive(Debug, Clone, Default)]
pub struct ConfigFiles {
    files: Vec<ConfigFile>,
}

#[derive(Debug, Clone)]
struct ConfigFile {
    path: PathBuf,
    text: String,
    table: toml::Table,
}

impl ConfigFile {
    fn parse(path: PathBuf, text: String) -> Result<ConfigFile, ConfigError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| parse_error(&path, e))?;
        Ok(ConfigFile { path, text, table })
    }

    /// The strict checks of one file alone: unknown keys and wrong types, with the offending
    /// line quoted and the dotted key (or, for an unknown key, its table) named.
    fn check_keys_and_types(&self) -> Result<(), ConfigError> {
        toml::from_str::<Config>(&self.text).map(drop).map_err(|e| {
            let quoted = e.to_string().trim_end().to_string();
            let message = match self.dotted_key() {
                Some(key) if !quoted.contains(&key) => format!("{quoted}\nin `{key}`"),
                _ => quoted,
            };
            ConfigError::Parse {
                path: self.path.clone(),
                message,
            }
        })
    }

    /// Where in the tables the file's error is: deserializing the parsed table (no source text
    /// to quote), toml ends its message with "in `a.b`".
    fn dotted_key(&self) -> Option<String> {
        let e = self.table.clone().try_into::<Config>().err()?;
        e.to_string()
            .lines()
            .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`').map(String::from))
    }
}

fn parse_error(path: &Path, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    }
}

impl ConfigFiles {
    /// Reads the main file `main` (when it does not exist and was not named explicitly, the
    /// defaults stand in for it) and every drop-in of the directory next to it.
    pub fn read(main: &Path, explicit: bool) -> Result<ConfigFiles, ConfigError> {
        let mut files = Vec::new();
        if let Some(text) = read_main(main, explicit)? {
            files.push(ConfigFile::parse(main.to_path_buf(), text)?);
        }
        for path in drop_ins(&drop_in_dir(main))? {
            let text = read_file(&path)?;
            files.push(ConfigFile::parse(path, text)?);
        }
        Ok(ConfigFiles { files })
    }

    /// The files read, in the order they apply.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// The effective configuration: the files merged in order, then the flags, validated.
    pub fn config(&self, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        let mut origins = Origins::default();
        for file in &self.files {
            file.check_keys_and_types()?;
            merge(&mut merged, &file.table);
            origins.record(&file.table, &Origin::File(file.path.clone()));
        }
        let mut config: Config = merged.try_into().map_err(|e| ConfigError::Merge {
            files: self.describe(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.apply(overrides);
        origins.record_flags(overrides);
        config.validate().map_err(|e| origins.attribute(e))?;
        Ok(config)
    }

    fn describe(&self) -> String {
        let paths: Vec<String> = self
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        paths.join(", ")
    }
}

fn read_main(path: &Path, explicit: bool) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `config.d` next to the main file (`./config.d` for a bare file name).
pub fn drop_in_dir(main: &Path) -> PathBuf {
    match main.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(DROP_IN_DIR),
        _ => Path::new(".").join(DROP_IN_DIR),
    }
}

/// The drop-ins in `dir`, sorted by file name: every `*.toml` whose name does not start with a
/// dot (editors' lock and swap files). A missing directory has none.
pub fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir_error = |source| ConfigError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(dir_error(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(dir_error)?.path();
        if is_drop_in(&path) {
            paths.push(path);
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(paths)
}

fn is_drop_in(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
    !hidden && path.extension().is_some_and(|e| e == DROP_IN_EXTENSION)
}

/// Merges `over` into `base`: tables key by key, any other value (arrays too) replaced whole.
pub fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(into)), toml::Value::Table(from)) => merge(into, from),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// A dotted key as validation errors name it: `prefix.segment`, the segment quoted unless it
/// is a bare TOML key (so `registry.mirrors."docker.io"`).
pub fn key_path(prefix: &str, segment: &str) -> String {
    let bare = !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let segment = if bare {
        segment.to_string()
    } else {
        format!("{segment:?}")
    };
    if prefix.is_empty() {
        segment
    } else {
        format!("{prefix}.{segment}")
    }
}

/// Which file or flag set each value last, by dotted key (tables are not values: their keys are).
#[derive(Debug, Default)]
struct Origins(BTreeMap<String, Origin>);

impl Origins {
    fn record(&mut self, table: &toml::Table, origin: &Origin) {
        self.record_under("", table, origin);
    }

    fn record_under(&mut self, prefix: &str, table: &toml::Table, origin: &Origin) {
        for (key, value) in table {
            let path = key_path(prefix, key);
            match value {
                toml::Value::Table(inner) => self.record_under(&path, inner, origin),
                _ => {
                    self.0.insert(path, origin.clone());
                }
            }
        }
    }

    fn record_flags(&mut self, o: &Overrides) {
        let flags = [
            ("root", o.root.is_some()),
            ("state", o.state.is_some()),
            ("listen", o.listen.is_some()),
            ("log_level", o.log_level.is_some()),
            ("log_format", o.log_format.is_some()),
        ];
        for (key, set) in flags {
            if set {
                let flag = match key {
                    "log_level" => "log-level",
                    "log_format" => "log-format",
                    other => other,
                };
                self.0.insert(key.to_string(), Origin::Flag(flag));
            }
        }
    }

    /// An invalid value's error, naming where the value came from (defaults name nothing).
    fn attribute(&self, e: ConfigError) -> ConfigError {
        let origin = match &e {
            ConfigError::Invalid { key, .. } => self.0.get(key).cloned(),
            _ => None,
        };
        match origin {
            Some(origin) => ConfigError::At {
                origin,
                source: Box::new(e),
            },
            None => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::LogLevel;
    use super::*;

    /// A main config file and its config.d in a temporary directory.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new(main: &str) -> Files {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("crius.toml"), main).unwrap();
            Files { dir }
        }

        fn main(&self) -> PathBuf {
            self.dir.path().join("crius.toml")
        }

        fn drop_in(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
            let d = self.dir.path().join(DROP_IN_DIR);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), text).unwrap();
            d.join(name)
        }

        fn load(&self) -> Result<Config, ConfigError> {
            Config::load(&self.main(), true, &Overrides::default())
        }

        fn error(&self) -> String {
            self.load().unwrap_err().to_string()
        }
    }

    #[test]
    fn drop_ins_apply_in_file_name_order() {
        let f = Files::new("shutdown_timeout_secs = 3\n[streaming]\ntoken_ttl_secs = 10\n");
        // Written out of order: the name decides, not the creation time.
        f.drop_in("20-b.toml", "[streaming]\ntoken_ttl_secs = 30\n");
        f.drop_in("10-a.toml", "[streaming]\ntoken_ttl_secs = 20\n");
        f.drop_in("15-c.toml", "log_level = \"debug\"\n");
        let c = f.load().unwrap();
        assert_eq!(c.streaming.token_ttl_secs, 30);
        assert_eq!(c.log_level, LogLevel::Debug);
        let files = ConfigFiles::read(&f.main(), true).unwrap();
        let names: Vec<_> = files
            .paths()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["crius.toml", "10-a.toml", "15-c.toml", "20-b.toml"]);
    }

    #[test]
    fn tables_merge_key_by_key() {
        let f = Files::new(
            "[streaming]\naddress = \"127.0.0.1:10010\"\n\
             [registry.mirrors]\n\"a.example\" = [\"http://127.0.0.1:5000\"]\n\
             \"b.example\" = [\"http://127.0.0.1:5001\"]\n",
        );
        f.drop_in("10.toml", "[streaming]\ntoken_ttl_secs = 90\n");
        f.drop_in(
            "20.toml",
            "[registry.mirrors]\n\"b.example\" = [\"https://mirror.example\"]\n\
             \"c.example\" = [\"https://c.mirror\"]\n",
        );
        let c = f.load().unwrap();
        assert_eq!(c.streaming.address, "127.0.0.1:10010");
        assert_eq!(c.streaming.token_ttl_secs, 90);
        let mirrors = &c.registry.mirrors;
        assert_eq!(mirrors.len(), 3, "{mirrors:?}");
        assert_eq!(mirrors["a.example"], ["http://127.0.0.1:5000"]);
        assert_eq!(mirrors["b.example"], ["https://mirror.example"]);
        assert_eq!(mirrors["c.example"], ["https://c.mirror"]);
        // Defaults of keys no file sets stay.
        assert_eq!(c.registry.max_concurrent_downloads, 3);
    }

    #[test]
    fn arrays_are_replaced_not_appended() {
        let f = Files::new("[cni]\nbin_dirs = [\"/a\", \"/b\"]\n");
        f.drop_in("10.toml", "[cni]\nbin_dirs = [\"/c\"]\n");
        let c = f.load().unwrap();
        assert_eq!(c.cni.bin_dirs, [PathBuf::from("/c")]);
        let mut base: toml::Table = "x = [1, 2]\n[t]\ny = [3]".parse().unwrap();
        merge(&mut base, &"x = [4]\n[t]\nz = 5".parse().unwrap());
        assert_eq!(base.to_string(), "x = [4]\n\n[t]\ny = [3]\nz = 5\n");
    }

    #[test]
    fn an_invalid_value_names_the_file_that_set_it_last() {
        let f = Files::new("[streaming]\ntoken_ttl_secs = 30\n");
        f.drop_in("10-ok.toml", "[registry]\nstall_timeout_secs = 5\n");
        let bad = f.drop_in("20-bad.toml", "[streaming]\ntoken_ttl_secs = 0\n");
        f.drop_in("30-other.toml", "log_level = \"warn\"\n");
        let e = f.error();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        assert!(
            e.contains("streaming.token_ttl_secs") && e.contains("\"0\""),
            "{e}"
        );
        // A later file setting it again wins, and the merged value is what is validated.
        f.drop_in("40-fix.toml", "[streaming]\ntoken_ttl_secs = 45\n");
        assert_eq!(f.load().unwrap().streaming.token_ttl_secs, 45);
    }

    #[test]
    fn an_invalid_mirror_names_its_file_and_host() {
        let f = Files::new("[registry.mirrors]\n\"a.example\" = [\"http://127.0.0.1:5000\"]\n");
        let bad = f.drop_in(
            "50-mirrors.toml",
            "[registry.mirrors]\n\"docker.io\" = [\"ftp://x\"]\n",
        );
        let e = f.error();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        assert!(
            e.contains("registry.mirrors.\"docker.io\"") && e.contains("ftp://x"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_file_key_and_value() {
        let f = Files::new("log_level = \"info\"\n");
        let bad = f.drop_in("10-typo.toml", "[registry]\nmirros = {}\n");
        let e = f.error();
        assert!(
            e.contains(&bad.display().to_string()) && e.contains("mirros"),
            "{e}"
        );
        assert!(e.contains("in `registry`"), "{e}");
        std::fs::remove_file(&bad).unwrap();
        let bad = f.drop_in("10-type.toml", "[streaming]\ntoken_ttl_secs = \"soon\"\n");
        let e = f.error();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        assert!(
            e.contains("streaming.token_ttl_secs") && e.contains("soon"),
            "{e}"
        );
        std::fs::remove_file(&bad).unwrap();
        let bad = f.drop_in("10-syntax.toml", "root = \n");
        let e = f.error();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        std::fs::remove_file(&bad).unwrap();
        let bad = f.drop_in("10-enum.toml", "log_format = \"xml\"\n");
        let e = f.error();
        assert!(
            e.contains(&bad.display().to_string()) && e.contains("xml"),
            "{e}"
        );
    }

    #[test]
    fn a_flag_overrides_every_file_and_is_named_when_invalid() {
        let f = Files::new("root = \"/from-main\"\n");
        f.drop_in("10.toml", "root = \"/from-drop-in\"\n");
        let flag = Overrides {
            root: Some("/from-flag".into()),
            ..Default::default()
        };
        let c = Config::load(&f.main(), true, &flag).unwrap();
        assert_eq!(c.root, PathBuf::from("/from-flag"));
        let flag = Overrides {
            root: Some("relative".into()),
            ..Default::default()
        };
        let e = Config::load(&f.main(), true, &flag)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--root") && e.contains("root") && e.contains("relative"),
            "{e}"
        );
    }

    #[test]
    fn a_key_pair_may_be_split_over_files_and_a_lone_half_names_its_file() {
        let f = Files::new("");
        let cert = f.drop_in("10-cert.toml", "[streaming]\ntls_cert = \"/etc/c.pem\"\n");
        let e = f.error();
        assert!(
            e.contains(&cert.display().to_string()) && e.contains("tls_cert"),
            "{e}"
        );
        f.drop_in("20-key.toml", "[streaming]\ntls_key = \"/etc/k.pem\"\n");
        let c = f.load().unwrap();
        assert_eq!(c.streaming.tls_key, Some(PathBuf::from("/etc/k.pem")));
    }

    #[test]
    fn what_is_not_a_drop_in_is_ignored() {
        let f = Files::new("");
        f.drop_in("README", "not toml at all [");
        f.drop_in("10.toml.bak", "rooot = 1");
        f.drop_in(".#10.toml", "rooot = 1");
        f.drop_in("10.toml", "log_level = \"error\"\n");
        let c = f.load().unwrap();
        assert_eq!(c.log_level, LogLevel::Error);
        assert_eq!(ConfigFiles::read(&f.main(), true).unwrap().paths().len(), 2);
    }

    #[test]
    fn a_missing_config_d_is_fine_and_an_unreadable_drop_in_is_named() {
        let f = Files::new("log_level = \"warn\"\n");
        assert_eq!(f.load().unwrap().log_level, LogLevel::Warn);
        let bad = f.drop_in("10-binary.toml", b"\xff\xfe\x00");
        let e = f.error();
        assert!(
            e.contains("cannot read") && e.contains(&bad.display().to_string()),
            "{e}"
        );
        std::fs::remove_file(&bad).unwrap();
        let dir = f.dir.path().join(DROP_IN_DIR).join("20-dir.toml");
        std::fs::create_dir(&dir).unwrap();
        let e = f.error();
        assert!(e.contains(&dir.display().to_string()), "{e}");
        // config.d that is not a directory is named too.
        std::fs::remove_dir_all(f.dir.path().join(DROP_IN_DIR)).unwrap();
        std::fs::write(f.dir.path().join(DROP_IN_DIR), "").unwrap();
        let e = f.error();
        assert!(
            e.contains("config directory") && e.contains("config.d"),
            "{e}"
        );
    }

    #[test]
    fn drop_ins_apply_without_the_default_main_file() {
        let f = Files::new("");
        std::fs::remove_file(f.main()).unwrap();
        f.drop_in("10.toml", "[streaming]\ntoken_ttl_secs = 7\n");
        let c = Config::load(&f.main(), false, &Overrides::default()).unwrap();
        assert_eq!(c.streaming.token_ttl_secs, 7);
        // A main file named on the command line must exist.
        let e = f.error();
        assert!(e.contains("crius.toml"), "{e}");
    }

    #[test]
    fn the_drop_in_dir_is_next_to_the_main_file() {
        assert_eq!(
            drop_in_dir(Path::new("/etc/crius/config.toml")),
            Path::new("/etc/crius/config.d")
        );
        assert_eq!(
            drop_in_dir(Path::new("crius.toml")),
            Path::new("./config.d")
        );
        assert_eq!(drop_in_dir(Path::new("a/b.toml")), Path::new("a/config.d"));
    }

    #[test]
    fn key_paths_quote_what_is_not_bare() {
        assert_eq!(key_path("", "root"), "root");
        assert_eq!(
            key_path("registry.mirrors", "localhost"),
            "registry.mirrors.localhost"
        );
        assert_eq!(
            key_path("registry.mirrors", "docker.io"),
            "registry.mirrors.\"docker.io\""
        );
    }
}
