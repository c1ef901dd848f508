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
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let mut lines = head.lines();
                    let path = lines
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .unwrap_or("/")
                        .to_string();
                    let accept = lines
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("accept:")
                                .then(|| l[7..].trim().to_string())
                        })
                        .unwrap_or_default();
                    let client = reqwest::Client::new();
                    let mut req = client.get(format!("http://{upstream}{path}"));
                    if !accept.is_empty() {
                        req = req.header("Accept", accept);
                    }
                    let Ok(resp) = req.send().await else { return };
                    let status = resp.status().as_u16();
                    let content_type = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/octet-stream")
                        .to_string();
                    let body = resp.bytes().await.unwrap_or_default();
                    let header = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(header.as_bytes()).await;
                    let is_layer = path.contains("/blobs/") && body.len() > 4096;
                    if is_layer {
                        let _ = conn.write_all(&body[..body.len() / 2]).await;
                        let _ = conn.flush().await;
                        // Hold the connection open, sending nothing.
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    } else {
                        let _ = conn.write_all(&body).await;
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
