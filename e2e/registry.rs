//! The test registries and images that `hack/test-registry.py` started and pushed, and a
//! stalling proxy in front of them for interrupted-download tests.

use std::collections::HashMap;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Deserialize)]
pub struct TestImage {
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default)]
    pub repo: String,
    pub id: String,
    pub manifest: String,
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub layers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TestRegistry {
    pub registry: String,
    pub auth_registry: String,
    pub user: String,
    pub password: String,
    pub images: HashMap<String, TestImage>,
}

impl TestRegistry {
    /// The registries `hack/test.sh` started (it exports CRIUS_TEST_IMAGES).
    pub fn get() -> TestRegistry {
        let path = std::env::var("CRIUS_TEST_IMAGES").unwrap_or_else(|_| {
            panic!(
                "CRIUS_TEST_IMAGES is not set: run the suite with hack/test.sh, or \
                 `python3 hack/test-registry.py start DIR && . DIR/env` first"
            )
        });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    pub fn image(&self, name: &str) -> &TestImage {
        self.images
            .get(name)
            .unwrap_or_else(|| panic!("no test image {name}"))
    }
}

/// A loopback port nothing listens on.
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

/// An HTTP proxy to a registry that answers layer blob requests with their headers and half
/// the body, then sends nothing more (a hung download).
pub struct StallingProxy {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    pub async fn start(upstream: &str) -> StallingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Some((_, path, headers, _)) = read_request(&mut conn).await else {
                        return;
                    };
                    let Some((status, content_type, body)) =
                        forward(&upstream, &path, &headers).await
                    else {
                        return;
                    };
                    if path.contains("/blobs/") && body.len() > 4096 {
                        respond_head(&mut conn, status, &content_type, body.len()).await;
                        let _ = conn.write_all(&body[..body.len() / 2]).await;
                        let _ = conn.flush().await;
                        // Hold the connection open, sending nothing.
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    } else {
                        respond(&mut conn, status, &content_type, &body).await;
                    }
                });
            }
        });
        StallingProxy { addr, task }
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A registry front that wants a bearer token, as Docker Hub and most cloud registries do: a
/// request without `Authorization: Bearer <token>` gets 401 with a Bearer challenge naming its
/// token endpoint; `GET /token` answers the token for the right basic credentials, `POST /token`
/// for the right refresh token (an identity token). Authorized requests go to the real registry.
pub struct BearerFront {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

pub const BEARER_TOKEN: &str = "crius-bearer-token";
pub const REFRESH_TOKEN: &str = "crius-refresh-token";

impl BearerFront {
    pub async fn start(upstream: &str, user: &str, password: &str) -> BearerFront {
        use base64::Engine;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_string();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let realm = format!("http://{addr}/token");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (upstream, basic, realm) = (upstream.clone(), basic.clone(), realm.clone());
                tokio::spawn(async move {
                    let Some((method, path, headers, body)) = read_request(&mut conn).await else {
                        return;
                    };
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let (status, content_type, payload) = if path.starts_with("/token") {
                        let ok = if method == "POST" {
                            body.contains(&format!("refresh_token={REFRESH_TOKEN}"))
                                && body.contains("grant_type=refresh_token")
                        } else {
                            header("authorization") == basic
                        };
                        if ok && (path.contains("scope=repository") || body.contains("scope=")) {
                            (
                                200,
                                "application/json".to_string(),
                                format!(r#"{{"token":"{BEARER_TOKEN}"}}"#).into_bytes(),
                            )
                        } else {
                            (401, "application/json".to_string(), br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.to_vec())
                        }
                    } else if header("authorization") != format!("Bearer {BEARER_TOKEN}") {
                        let challenge = format!(
                            "Bearer realm=\"{realm}\",service=\"crius-test\",scope=\"repository:crius-test/busybox:pull\""
                        );
                        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                        let head = format!(
                            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = conn.write_all(head.as_bytes()).await;
                        let _ = conn.write_all(body).await;
                        return;
                    } else {
                        let Some(answer) = forward(&upstream, &path, &headers).await else {
                            return;
                        };
                        answer
                    };
                    respond(&mut conn, status, &content_type, &payload).await;
                });
            }
        });
        BearerFront { addr, task }
    }
}

impl Drop for BearerFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/1.1 request: method, path, headers and body (by Content-Length).
async fn read_request(
    conn: &mut tokio::net::TcpStream,
) -> Option<(String, String, Vec<(String, String)>, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await.ok()?;
    Some((
        method,
        path,
        headers,
        String::from_utf8_lossy(&body).to_string(),
    ))
}

/// GETs `path` from the upstream registry with the client's Accept header.
async fn forward(
    upstream: &str,
    path: &str,
    headers: &[(String, String)],
) -> Option<(u16, String, Vec<u8>)> {
    let mut req = reqwest::Client::new().get(format!("http://{upstream}{path}"));
    if let Some((_, accept)) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("accept"))
    {
        req = req.header("Accept", accept);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    Some((status, content_type, resp.bytes().await.ok()?.to_vec()))
}

async fn respond_head(
    conn: &mut tokio::net::TcpStream,
    status: u16,
    content_type: &str,
    len: usize,
) {
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let _ = conn.write_all(head.as_bytes()).await;
}

async fn respond(conn: &mut tokio::net::TcpStream, status: u16, content_type: &str, body: &[u8]) {
    respond_head(conn, status, content_type, body.len()).await;
    let _ = conn.write_all(body).await;
}
