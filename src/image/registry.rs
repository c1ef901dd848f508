//! A client for registries that speak the OCI distribution / Docker Registry v2 API: endpoints
//! (mirrors first, then the registry itself), the bearer-token and basic auth challenges, and
//! manifests and blobs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use tokio::sync::Mutex;

use super::auth::Credentials;
use super::digest::Digest;
use super::reference::{DEFAULT_REGISTRY, DOCKER_HUB_HOST, Reference};

/// Manifest media types we accept, best first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// Manifests are small; anything larger is not one.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {host} is unreachable: {cause}")]
    Unreachable { host: String, cause: String },
    #[error("registry {host} refused the credentials for {repository}: {message}")]
    Unauthenticated {
        host: String,
        repository: String,
        message: String,
    },
    #[error("registry {host} denied access to {repository}: {message}")]
    Denied {
        host: String,
        repository: String,
        message: String,
    },
    #[error("{what} not found in registry {host}")]
    NotFound { host: String, what: String },
    #[error("registry {host}: {message}")]
    Protocol { host: String, message: String },
}

/// One place to fetch a repository from: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// e.g. `http://127.0.0.1:5000` (no trailing slash).
    pub base_url: String,
    /// host[:port], for messages and credentials lookup.
    pub host: String,
    /// Whether this is the image's own registry (request credentials apply to it).
    pub is_origin: bool,
}

/// The endpoints to try for `reference`, in order: its mirrors, then the registry itself
/// unless a mirror already is it.
pub fn endpoints(reference: &Reference, mirrors: &BTreeMap<String, Vec<String>>) -> Vec<Endpoint> {
    let origin_host = if reference.registry == DEFAULT_REGISTRY {
        DOCKER_HUB_HOST.to_string()
    } else {
        reference.registry.clone()
    };
    let mut out: Vec<Endpoint> = mirrors
        .get(&reference.registry)
        .into_iter()
        .flatten()
        .map(|url| {
            let base_url = url.trim_end_matches('/').to_string();
            let host = base_url
                .split_once("://")
                .map_or(base_url.as_str(), |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            Endpoint {
                is_origin: host == origin_host,
                base_url,
                host,
            }
        })
        .collect();
    if !out.iter().any(|e| e.is_origin) {
        // Loopback registries speak plain HTTP, as Docker treats 127.0.0.0/8 as insecure.
        let scheme = if is_loopback(&origin_host) {
            "http"
        } else {
            "https"
        };
        out.push(Endpoint {
            base_url: format!("{scheme}://{origin_host}"),
            host: origin_host,
            is_origin: true,
        });
    }
    out
}

fn is_loopback(host_port: &str) -> bool {
    let host = match host_port.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A repository on one endpoint, with the token its auth challenge gave us.
pub struct Session {
    http: reqwest::Client,
    pub endpoint: Endpoint,
    pub repository: String,
    credentials: Credentials,
    authorization: Mutex<Option<String>>,
}

pub struct Fetched {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

impl Session {
    pub fn new(
        http: reqwest::Client,
        endpoint: Endpoint,
        repository: &str,
        credentials: Credentials,
    ) -> Session {
        // A registry token is a ready bearer token; basic credentials are sent only when asked.
        let authorization = match &credentials {
            Credentials::RegistryToken(t) => Some(format!("Bearer {t}")),
            _ => None,
        };
        Session {
            http,
            endpoint,
            repository: repository.to_string(),
            credentials,
            authorization: Mutex::new(authorization),
        }
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{reference}",
            self.endpoint.base_url, self.repository
        )
    }

    fn unreachable(&self, cause: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unreachable {
            host: self.endpoint.host.clone(),
            cause: cause.to_string(),
        }
    }

    /// GETs a URL, answering one auth challenge if the registry sends it.
    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut answered_challenge = false;
        loop {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(auth) = self.authorization.lock().await.clone() {
                request = request.header(AUTHORIZATION, auth);
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.unreachable(error_chain(&e)))?;
            match response.status() {
                StatusCode::UNAUTHORIZED if !answered_challenge => {
                    answered_challenge = true;
                    let challenge = response
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(super::auth::Challenge::parse);
                    let authorization = match challenge {
                        Some(Some(challenge)) => super::auth::answer(
                            &self.http,
                            &challenge,
                            &self.credentials,
                            &self.repository,
                        )
                        .await
                        .map_err(|message| self.auth_error(StatusCode::UNAUTHORIZED, message))?,
                        _ => return Err(self.status_error(response, "authentication").await),
                    };
                    *self.authorization.lock().await = Some(authorization);
                }
                status if status.is_success() => return Ok(response),
                _ => return Err(self.status_error(response, url).await),
            }
        }
    }

    fn auth_error(&self, status: StatusCode, message: String) -> RegistryError {
        if status == StatusCode::FORBIDDEN {
            RegistryError::Denied {
                host: self.endpoint.host.clone(),
                repository: self.repository.clone(),
                message,
            }
        } else {
            RegistryError::Unauthenticated {
                host: self.endpoint.host.clone(),
                repository: self.repository.clone(),
                message,
            }
        }
    }

    async fn status_error(&self, response: reqwest::Response, what: &str) -> RegistryError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let message = registry_message(&body).unwrap_or_else(|| status.to_string());
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => self.auth_error(status, message),
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                host: self.endpoint.host.clone(),
                what: what.to_string(),
            },
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                self.unreachable(format!("{status}: {message}"))
            }
            _ => RegistryError::Protocol {
                host: self.endpoint.host.clone(),
                message: format!("{what}: {status}: {message}"),
            },
        }
    }

    /// Fetches a manifest or index by tag or digest, verifying it when asked by digest.
    pub async fn manifest(&self, reference: &str) -> Result<Fetched, RegistryError> {
        let what = format!("manifest {}:{reference}", self.repository);
        let url = self.url("manifests", reference);
        let response = self
            .get(&url, Some(MANIFEST_ACCEPT))
            .await
            .map_err(|e| match e {
                RegistryError::NotFound { host, .. } => RegistryError::NotFound {
                    host,
                    what: what.clone(),
                },
                e => e,
            })?;
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let bytes = read_limited(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| self.unreachable(format!("reading {what}: {e}")))?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = Digest::parse(reference)
            && expected != digest
        {
            return Err(RegistryError::Protocol {
                host: self.endpoint.host.clone(),
                message: format!("{what} has digest {digest}, not the one asked for"),
            });
        }
        Ok(Fetched {
            media_type,
            digest,
            bytes,
        })
    }

    /// Starts a blob download; the caller streams and verifies the body.
    pub async fn blob(&self, digest: &Digest) -> Result<reqwest::Response, RegistryError> {
        let what = format!("blob {digest} of {}", self.repository);
        self.get(&self.url("blobs", &digest.to_string()), None)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound { host, .. } => RegistryError::NotFound { host, what },
                e => e,
            })
    }
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if out.len() + chunk.len() > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The first message of a registry's JSON error body (`{"errors":[{"message":…}]}`).
fn registry_message(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let e = v.get("errors")?.get(0)?;
    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or_default();
    let message = e
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    Some(
        format!("{code}: {message}")
            .trim_matches([':', ' '])
            .to_string(),
    )
}

/// An error with its causes, which reqwest keeps in `source()`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The HTTP client every pull shares (connection reuse across layers and pulls).
pub fn http_client(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(concat!("crius/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `user:password` as HTTP basic auth.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrors(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn mirrors_first_then_the_registry() {
        let r = Reference::parse("registry.k8s.io/pause:3.9").unwrap();
        let m = mirrors(&[(
            "registry.k8s.io",
            &["http://127.0.0.1:5000/", "https://m.example"],
        )]);
        let e = endpoints(&r, &m);
        assert_eq!(
            e.iter().map(|e| e.base_url.as_str()).collect::<Vec<_>>(),
            vec![
                "http://127.0.0.1:5000",
                "https://m.example",
                "https://registry.k8s.io"
            ]
        );
        assert!(!e[0].is_origin && e[2].is_origin);
        assert_eq!(e[0].host, "127.0.0.1:5000");
    }

    #[test]
    fn a_listed_registry_is_not_tried_twice() {
        let r = Reference::parse("busybox").unwrap();
        let m = mirrors(&[(
            "docker.io",
            &["https://mirror.example", "https://registry-1.docker.io"],
        )]);
        let e = endpoints(&r, &m);
        assert_eq!(e.len(), 2);
        assert!(e[1].is_origin);
        let e = endpoints(&r, &BTreeMap::new());
        assert_eq!(e[0].base_url, "https://registry-1.docker.io");
    }

    #[test]
    fn loopback_registries_use_http() {
        for (r, url) in [
            ("127.0.0.1:5000/x", "http://127.0.0.1:5000"),
            ("localhost:5000/x", "http://localhost:5000"),
            ("[::1]:5000/x", "http://[::1]:5000"),
            ("quay.io/x", "https://quay.io"),
        ] {
            let e = endpoints(&Reference::parse(r).unwrap(), &BTreeMap::new());
            assert_eq!(e[0].base_url, url, "{r}");
        }
    }

    #[test]
    fn registry_error_bodies() {
        assert_eq!(
            registry_message(
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
            )
            .as_deref(),
            Some("UNAUTHORIZED: authentication required")
        );
        assert_eq!(registry_message("<html>"), None);
    }
}
