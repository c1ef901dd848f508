//! Registry credentials (from the CRI request or a docker config.json) and the answer to a
//! registry's `WWW-Authenticate` challenge. Secrets are never logged: `Credentials` has no
//! Debug output of its contents.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::cri;
use base64::Engine;

use super::registry::{basic, error_chain};

#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token, exchanged at the token endpoint.
    IdentityToken(String),
    /// A bearer token sent as is.
    RegistryToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Credentials::Anonymous => "anonymous",
            Credentials::Basic { .. } => "basic",
            Credentials::IdentityToken(_) => "identity-token",
            Credentials::RegistryToken(_) => "registry-token",
        };
        write!(f, "Credentials({kind})")
    }
}

impl Credentials {
    /// The credentials of a CRI AuthConfig; `None` when it carries none.
    pub fn from_cri(auth: &cri::AuthConfig) -> Result<Option<Credentials>, String> {
        for (field, token) in [
            ("registry_token", &auth.registry_token),
            ("identity_token", &auth.identity_token),
        ] {
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "{field} has characters a token cannot carry (only visible ASCII)"
                ));
            }
        }
        if !auth.registry_token.is_empty() {
            return Ok(Some(Credentials::RegistryToken(
                auth.registry_token.clone(),
            )));
        }
        if !auth.identity_token.is_empty() {
            return Ok(Some(Credentials::IdentityToken(
                auth.identity_token.clone(),
            )));
        }
        if !auth.username.is_empty() || !auth.password.is_empty() {
            return Ok(Some(Credentials::Basic {
                username: auth.username.clone(),
                password: auth.password.clone(),
            }));
        }
        if !auth.auth.is_empty() {
            return decode_auth(&auth.auth).map(Some);
        }
        Ok(None)
    }
}

/// `base64(user:password)`, as in AuthConfig.auth and config.json.
fn decode_auth(encoded: &str) -> Result<Credentials, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "auth is not valid base64".to_string())?;
    let text = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_string())?;
    let (username, password) = text
        .split_once(':')
        .ok_or_else(|| "auth is not user:password".to_string())?;
    Ok(Credentials::Basic {
        username: username.to_string(),
        password: password.to_string(),
    })
}

/// Credentials for `host` from a docker config.json (`auths` keyed by host or URL).
pub fn from_docker_config(path: &Path, host: &str) -> Result<Option<Credentials>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: String,
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
        #[serde(default)]
        identitytoken: String,
    }
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    let file: File =
        serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))?;
    let wanted = [
        host,
        if host == "registry-1.docker.io" {
            "docker.io"
        } else {
            host
        },
    ];
    for (key, entry) in &file.auths {
        let key_host = key
            .split_once("://")
            .map_or(key.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default();
        let key_host = if key_host == "index.docker.io" {
            "docker.io"
        } else {
            key_host
        };
        if !wanted.contains(&key_host) {
            continue;
        }
        let creds = if !entry.identitytoken.is_empty() {
            Credentials::IdentityToken(entry.identitytoken.clone())
        } else if !entry.username.is_empty() {
            Credentials::Basic {
                username: entry.username.clone(),
                password: entry.password.clone(),
            }
        } else if !entry.auth.is_empty() {
            decode_auth(&entry.auth).map_err(|e| format!("{}: {key}: {e}", path.display()))?
        } else {
            continue;
        };
        return Ok(Some(creds));
    }
    Ok(None)
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => {
                let params = parse_params(params);
                Some(Challenge::Bearer {
                    realm: params.get("realm")?.clone(),
                    service: params.get("service").cloned(),
                    scope: params.get("scope").cloned(),
                })
            }
            _ => None,
        }
    }
}

/// `key="value",key2=value2` (quoted values may contain commas).
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// Answers a challenge: the Authorization header value to retry with.
pub async fn answer(
    http: &reqwest::Client,
    challenge: &Challenge,
    credentials: &Credentials,
    repository: &str,
) -> Result<String, String> {
    match challenge {
        Challenge::Basic => match credentials {
            Credentials::Basic { username, password } => Ok(basic(username, password)),
            _ => Err("the registry asks for a user name and password".to_string()),
        },
        Challenge::Bearer {
            realm,
            service,
            scope,
        } => {
            let scope = scope
                .clone()
                .unwrap_or_else(|| format!("repository:{repository}:pull"));
            let mut form: Vec<(&str, String)> = vec![("scope", scope)];
            if let Some(service) = service {
                form.push(("service", service.clone()));
            }
            let request = match credentials {
                Credentials::IdentityToken(token) => {
                    form.push(("grant_type", "refresh_token".into()));
                    form.push(("refresh_token", token.clone()));
                    form.push(("client_id", "crius".into()));
                    http.post(realm).form(&form)
                }
                Credentials::Basic { username, password } => http
                    .get(realm)
                    .query(&form)
                    .header(reqwest::header::AUTHORIZATION, basic(username, password)),
                _ => http.get(realm).query(&form),
            };
            let response = request
                .send()
                .await
                .map_err(|e| format!("token endpoint {realm}: {}", error_chain(&e)))?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(format!("token endpoint {realm} answered {status}"));
            }
            #[derive(serde::Deserialize)]
            struct TokenResponse {
                #[serde(default)]
                token: String,
                #[serde(default)]
                access_token: String,
            }
            let t: TokenResponse = serde_json::from_str(&body)
                .map_err(|_| format!("token endpoint {realm} sent no token"))?;
            let token = if t.token.is_empty() {
                t.access_token
            } else {
                t.token
            };
            if token.is_empty() {
                return Err(format!("token endpoint {realm} sent no token"));
            }
            Ok(format!("Bearer {token}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[test]
    fn cri_auth_config() {
        let a = cri::AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:w"),
            ..Default::default()
        };
        match Credentials::from_cri(&a).unwrap().unwrap() {
            Credentials::Basic { username, password } => {
                assert_eq!((username.as_str(), password.as_str()), ("u", "p:w"))
            }
            c => panic!("{c:?}"),
        }
        assert!(
            Credentials::from_cri(&cri::AuthConfig::default())
                .unwrap()
                .is_none()
        );
        let bad = cri::AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert!(Credentials::from_cri(&bad).is_err());
        for token in ["a\0b", "two words", "line\n"] {
            let bad = cri::AuthConfig {
                registry_token: token.into(),
                ..Default::default()
            };
            let reason = Credentials::from_cri(&bad).unwrap_err();
            assert!(reason.contains("registry_token"), "{reason}");
            let bad = cri::AuthConfig {
                identity_token: token.into(),
                ..Default::default()
            };
            assert!(Credentials::from_cri(&bad).is_err());
        }
        // Debug output never shows secrets.
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn docker_config_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},"127.0.0.1:5001":{{"username":"a","password":"b"}}}}}}"#,
                base64::engine::general_purpose::STANDARD.encode("hub:pw")
            ),
        )
        .unwrap();
        assert!(matches!(
            from_docker_config(&path, "registry-1.docker.io").unwrap(),
            Some(Credentials::Basic { .. })
        ));
        assert!(matches!(
            from_docker_config(&path, "127.0.0.1:5001").unwrap(),
            Some(Credentials::Basic { .. })
        ));
        assert!(from_docker_config(&path, "quay.io").unwrap().is_none());
        assert!(
            from_docker_config(&dir.path().join("none"), "x")
                .unwrap()
                .is_none()
        );
    }
}
