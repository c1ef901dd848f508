//! OCI / Docker schema 2 manifests, indexes (manifest lists) and image configs, and the choice of
//! the host's platform in an index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// What a manifest endpoint returned.
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

/// Parses a manifest response, by its Content-Type or, failing that, by its content.
pub fn parse_document(media_type: &str, bytes: &[u8]) -> Result<Document, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let declared = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or(media_type);
    let kind = match (media_type, declared) {
        (OCI_INDEX | DOCKER_LIST, _) | (_, OCI_INDEX | DOCKER_LIST) => "index",
        (OCI_MANIFEST | DOCKER_MANIFEST, _) | (_, OCI_MANIFEST | DOCKER_MANIFEST) => "manifest",
        _ if value.get("manifests").is_some() => "index",
        _ if value.get("layers").is_some() => "manifest",
        _ => {
            return Err(format!(
                "unsupported manifest media type {media_type:?} (schema 1 and other formats are not pulled)"
            ));
        }
    };
    if kind == "index" {
        serde_json::from_value(value)
            .map(Document::Index)
            .map_err(|e| format!("invalid image index: {e}"))
    } else {
        serde_json::from_value(value)
            .map(Document::Manifest)
            .map_err(|e| format!("invalid image manifest: {e}"))
    }
}

/// This host's platform, named as Go (and so image indexes) name it.
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", ""),
        "aarch64" => ("arm64", "v8"),
        "arm" => ("arm", "v7"),
        "x86" => ("386", ""),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", ""),
        "s390x" => ("s390x", ""),
        "riscv64" => ("riscv64", ""),
        other => (other, ""),
    };
    Platform {
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        variant: variant.to_string(),
    }
}

/// The index entry for `platform`: same os and architecture, the same variant preferred, an
/// entry without variant next (arm64 images often omit v8).
pub fn choose<'a>(index: &'a Index, platform: &Platform) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
        })
        .collect();
    let variant = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .map(|p| p.variant.clone())
            .unwrap_or_default()
    };
    candidates
        .iter()
        .find(|d| variant(d) == platform.variant)
        .or_else(|| candidates.iter().find(|d| variant(d).is_empty()))
        .or_else(|| candidates.first())
        .copied()
}

/// The image config, as much of it as the runtime uses; the whole document is kept as JSON too.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: ContainerDefaults,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerDefaults {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(arch: &str, variant: &str, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(&[n]),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.into(),
            }),
        }
    }

    #[test]
    fn platform_choice() {
        let index = Index {
            manifests: vec![
                d("arm", "v6", 1),
                d("arm", "v7", 2),
                d("arm64", "", 3),
                d("amd64", "", 4),
            ],
        };
        let p = |a: &str, v: &str| Platform {
            architecture: a.into(),
            os: "linux".into(),
            variant: v.into(),
        };
        assert_eq!(
            choose(&index, &p("amd64", "")).unwrap().digest,
            Digest::of(&[4])
        );
        assert_eq!(
            choose(&index, &p("arm", "v7")).unwrap().digest,
            Digest::of(&[2])
        );
        assert_eq!(
            choose(&index, &p("arm64", "v8")).unwrap().digest,
            Digest::of(&[3])
        );
        assert!(choose(&index, &p("s390x", "")).is_none());
        assert_eq!(host_platform().os, "linux");
    }

    #[test]
    fn documents_by_type_or_content() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{}","size":1}},"layers":[]}}"#,
            Digest::of(b"c")
        );
        assert!(matches!(
            parse_document("", m.as_bytes()),
            Ok(Document::Manifest(_))
        ));
        assert!(matches!(
            parse_document(DOCKER_LIST, br#"{"manifests":[]}"#),
            Ok(Document::Index(_))
        ));
        assert!(
            parse_document(
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                b"{}"
            )
            .is_err()
        );
        assert!(parse_document("", b"not json").is_err());
    }
}
