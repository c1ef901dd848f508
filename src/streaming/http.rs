//! The HTTP/1.1 side of the streaming server: the request head a client sends to
//! `/exec/<token>`, `/attach/<token>` or `/portforward/<token>`, and the answer that either
//! upgrades the connection to SPDY/3.1 or refuses it.
//!
//! Only what the upgrade needs is parsed: no bodies, no keep-alive, no chunking. The head is
//! bounded in size and in time so that a client cannot hold a connection or memory with it.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted, request line and headers together.
pub const MAX_HEAD_LEN: usize = 16 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 100;

/// Subprotocols for exec and attach, most preferred first.
pub const EXEC_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// Subprotocols for port-forward.
pub const PORT_FORWARD_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

/// The header a client lists its subprotocols in, and the server answers its choice in.
pub const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
/// Lists what the server accepts when nothing the client offered matched.
pub const ACCEPTED_PROTOCOLS_HEADER: &str = "X-Accepted-Stream-Protocol-Versions";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
    #[error("no complete request head within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the request head was complete")]
    Closed,
    #[error("request head is over {MAX_HEAD_LEN} bytes")]
    HeadTooLarge,
    #[error("request has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl HttpError {
    /// The answer to send before closing, if the client is owed one.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => Some(Rejection::new(
                431,
                "Request Header Fields Too Large",
                self.to_string(),
            )),
            HttpError::Malformed(_) => Some(Rejection::new(400, "Bad Request", self.to_string())),
            HttpError::Io(_) | HttpError::Timeout(_) | HttpError::Closed => None,
        }
    }
}

/// A parsed request line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The target's path, not percent-decoded.
    pub path: String,
    /// The target's query without the `?`, not percent-decoded; empty if none.
    pub query: String,
    /// Names as sent; look them up with [`RequestHead::header`], which ignores case.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of header `name`, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` in order, case-insensitively.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query's `name=value` pairs, percent-decoded (`+` is a space), in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        parse_query(&self.query)
    }
}

/// Reads a request head from `io`, waiting at most `timeout` for all of it. Also returns the
/// bytes read past the head, which belong to whatever the connection carries next.
pub async fn read_request_head<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> Result<(RequestHead, BytesMut), HttpError> {
    tokio::time::timeout(timeout, read_head(io))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn read_head<R: AsyncRead + Unpin>(io: &mut R) -> Result<(RequestHead, BytesMut), HttpError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanned = 0;
    loop {
        if let Some(end) = head_end(&buf, scanned) {
            let head = buf.split_to(end);
            return Ok((parse_head(&head)?, buf));
        }
        if buf.len() >= MAX_HEAD_LEN {
            return Err(HttpError::HeadTooLarge);
        }
        // Rescan the last few bytes: the blank line may straddle two reads.
        scanned = buf.len().saturating_sub(3);
        // Never read past the limit, so that a large head cannot make the buffer grow.
        let room = MAX_HEAD_LEN - buf.len();
        buf.reserve(room.min(4096));
        let n = (&mut *io).take(room as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(HttpError::Closed);
        }
    }
}

/// Index just past the blank line ending the head (CRLF, or bare LF as lenient servers take).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

fn parse_head(raw: &[u8]) -> Result<RequestHead, HttpError> {
    let text = std::str::from_utf8(raw).map_err(|_| HttpError::Malformed("head is not UTF-8"))?;
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .take_while(|l| !l.is_empty());
    let request_line = lines
        .next()
        .ok_or(HttpError::Malformed("no request line"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(
            "request line is not `METHOD target HTTP/1.x`",
        ));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(HttpError::Malformed("bad method"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Malformed("not HTTP/1.x"));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("target is not an absolute path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        // Folded continuation lines are obsolete and a known smuggling vector.
        if line.starts_with([' ', '\t']) {
            return Err(HttpError::Malformed("folded header line"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("header line without a colon"))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HttpError::Malformed("bad header name"));
        }
        headers.push((
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    Ok(RequestHead {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
    })
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `a=1&b=x%20y&b=z` into pairs, percent-decoded, `+` as a space; a name without `=` gets an
/// empty value. Undecodable escapes are kept as they are.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a streaming URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Exec,
    Attach,
    PortForward,
}

impl Route {
    /// The subprotocols this kind of request may speak, most preferred first.
    pub fn protocols(self) -> &'static [&'static str] {
        match self {
            Route::Exec | Route::Attach => EXEC_PROTOCOLS,
            Route::PortForward => PORT_FORWARD_PROTOCOLS,
        }
    }
}

/// The kind of request and its token, from `/exec/<token>`, `/attach/<token>` or
/// `/portforward/<token>` with GET or POST.
pub fn route(head: &RequestHead) -> Result<(Route, &str), Rejection> {
    let routes = [
        ("/exec/", Route::Exec),
        ("/attach/", Route::Attach),
        ("/portforward/", Route::PortForward),
    ];
    let found = routes.iter().find_map(|(prefix, route)| {
        let token = head.path.strip_prefix(prefix)?;
        (!token.is_empty() && !token.contains('/')).then_some((*route, token))
    });
    let Some(found) = found else {
        return Err(Rejection::not_found());
    };
    if head.method != "GET" && head.method != "POST" {
        return Err(Rejection::new(
            405,
            "Method Not Allowed",
            format!("method {} is not allowed; use GET or POST", head.method),
        )
        .with_header("Allow", "GET, POST"));
    }
    Ok(found)
}

/// Checks that `head` asks for an upgrade to SPDY/3.1 and picks the subprotocol: the first of
/// `supported` (most preferred first) that the client offers in any of its
/// `X-Stream-Protocol-Version` headers, each of which may list several, comma-separated.
pub fn handshake(
    head: &RequestHead,
    supported: &[&'static str],
) -> Result<&'static str, Rejection> {
    let connection_upgrade = head
        .header_values("Connection")
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let spdy = head
        .header("Upgrade")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("SPDY/3.1"));
    if !connection_upgrade || !spdy {
        return Err(Rejection::new(
            400,
            "Bad Request",
            "unable to upgrade: the request needs `Connection: Upgrade` and `Upgrade: SPDY/3.1`"
                .to_string(),
        ));
    }
    let offered: Vec<&str> = head
        .header_values(PROTOCOL_HEADER)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Err(Rejection::new(
            400,
            "Bad Request",
            format!("unable to upgrade: {PROTOCOL_HEADER} is required"),
        ));
    }
    if let Some(chosen) = supported.iter().find(|s| offered.contains(s)) {
        return Ok(chosen);
    }
    let mut rejection = Rejection::new(
        403,
        "Forbidden",
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, \
             server accepts {supported:?}"
        ),
    );
    for protocol in supported {
        rejection = rejection.with_header(ACCEPTED_PROTOCOLS_HEADER, *protocol);
    }
    Err(rejection)
}

/// The `101 Switching Protocols` answer naming the chosen subprotocol; SPDY frames follow it.
pub fn switching_protocols(protocol: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         {PROTOCOL_HEADER}: {protocol}\r\n\r\n"
    )
    .into_bytes()
}

/// A refusal: status, reason phrase, extra headers and a plain-text body; the connection
/// closes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Rejection {
    pub fn new(status: u16, reason: &'static str, body: String) -> Self {
        Rejection {
            status,
            reason,
            headers: Vec::new(),
            body,
        }
    }

    /// For unknown paths and for tokens that are unknown, used or expired: the three look
    /// alike on purpose, so that a client learns nothing about other clients' tokens.
    pub fn not_found() -> Self {
        Rejection::new(404, "Not Found", "404 page not found".to_string())
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{}",
            self.body.len(),
            self.body
        ));
        out.into_bytes()
    }

    pub async fn write_to<W: AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.to_bytes()).await?;
        w.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /exec/tok?command=sh&command=-c&command=echo%20hi+there&stdout=1 \
                           HTTP/1.1\r\nHost: x\r\nconnection: Upgrade\r\nUPGRADE: spdy/3.1\r\n\
                           X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
                           X-Stream-Protocol-Version: v3.channel.k8s.io\r\n\r\n";

    async fn parse(raw: &[u8]) -> Result<(RequestHead, BytesMut), HttpError> {
        read_request_head(&mut &raw[..], Duration::from_secs(1)).await
    }

    fn head_with(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "POST".into(),
            path: "/exec/t".into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn parses_a_head_and_keeps_what_follows() {
        let mut raw = UPGRADE.as_bytes().to_vec();
        raw.extend_from_slice(b"\x80\x03spdy");
        let (head, rest) = parse(&raw).await.unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/exec/tok");
        assert_eq!(
            head.query_pairs(),
            [
                ("command", "sh"),
                ("command", "-c"),
                ("command", "echo hi there"),
                ("stdout", "1")
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        assert_eq!(head.header("HOST"), Some("x"));
        assert_eq!(head.header("Connection"), Some("Upgrade"));
        assert_eq!(
            head.header_values("x-stream-protocol-version")
                .collect::<Vec<_>>(),
            ["v4.channel.k8s.io", "v3.channel.k8s.io"]
        );
        assert_eq!(&rest[..], b"\x80\x03spdy");
        assert_eq!(route(&head).unwrap(), (Route::Exec, "tok"));
    }

    #[tokio::test]
    async fn a_head_may_arrive_in_pieces() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for chunk in UPGRADE.as_bytes().chunks(3) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let (head, rest) = read_request_head(&mut server, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(head.path, "/exec/tok");
        assert!(rest.is_empty());
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn bare_lf_line_endings_are_accepted() {
        let (head, _) = parse(b"POST /attach/a HTTP/1.1\nA: b\n\n").await.unwrap();
        assert_eq!(head.header("a"), Some("b"));
        assert_eq!(route(&head).unwrap(), (Route::Attach, "a"));
    }

    #[tokio::test]
    async fn bad_heads_are_refused() {
        let cases: [(&[u8], &str); 7] = [
            (b"GET /exec/t\r\n\r\n", "request line"),
            (b"GET exec/t HTTP/1.1\r\n\r\n", "absolute path"),
            (b"GET /exec/t HTTP/2\r\n\r\n", "HTTP/1.x"),
            (b"GET /exec/t HTTP/1.1\r\nNo colon\r\n\r\n", "colon"),
            (
                b"GET /exec/t HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n",
                "folded",
            ),
            (
                b"GET /exec/t HTTP/1.1\r\nBad Name: b\r\n\r\n",
                "header name",
            ),
            (b"G\xffT /exec/t HTTP/1.1\r\n\r\n", "UTF-8"),
        ];
        for (raw, want) in cases {
            let err = parse(raw).await.unwrap_err();
            assert!(matches!(err, HttpError::Malformed(_)), "{err}");
            assert!(err.to_string().contains(want), "{err}");
            assert_eq!(err.rejection().unwrap().status, 400);
        }
        assert!(matches!(
            parse(b"GET /exec/t HTTP/1.1\r\n").await,
            Err(HttpError::Closed)
        ));
    }

    #[tokio::test]
    async fn the_head_is_bounded() {
        let mut raw = b"GET /exec/t HTTP/1.1\r\nX: ".to_vec();
        raw.resize(MAX_HEAD_LEN + 10, b'a');
        raw.extend_from_slice(b"\r\n\r\n");
        let err = parse(&raw).await.unwrap_err();
        assert!(matches!(err, HttpError::HeadTooLarge), "{err}");
        assert_eq!(err.rejection().unwrap().status, 431);

        let mut raw = b"GET /exec/t HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&raw).await, Err(HttpError::TooManyHeaders)));
    }

    #[tokio::test]
    async fn a_slow_head_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET /exec/t HTTP/1.1\r\n").await.unwrap();
        let err = read_request_head(&mut server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Timeout(_)), "{err}");
        assert!(err.rejection().is_none());
    }

    #[test]
    fn routes() {
        let head = |method: &str, path: &str| RequestHead {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: vec![],
        };
        assert_eq!(
            route(&head("POST", "/portforward/abc")).unwrap(),
            (Route::PortForward, "abc")
        );
        for path in ["/", "/exec/", "/exec/a/b", "/exec", "/logs/a", "/execx/a"] {
            assert_eq!(route(&head("GET", path)).unwrap_err().status, 404, "{path}");
        }
        let refused = route(&head("PUT", "/exec/a")).unwrap_err();
        assert_eq!(refused.status, 405);
        assert!(
            refused
                .headers
                .contains(&("Allow", "GET, POST".to_string()))
        );
    }

    #[tokio::test]
    async fn negotiation_prefers_the_newest_protocol_offered() {
        let (head, _) = parse(UPGRADE.as_bytes()).await.unwrap();
        assert_eq!(
            handshake(&head, EXEC_PROTOCOLS).unwrap(),
            "v4.channel.k8s.io"
        );

        let up = [
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "SPDY/3.1"),
        ];
        let offer = |offers: &[&str]| {
            let mut hs = up.to_vec();
            hs.extend(offers.iter().map(|o| (PROTOCOL_HEADER, *o)));
            handshake(&head_with(&hs), EXEC_PROTOCOLS)
        };
        // The client's order does not matter; the server's does.
        assert_eq!(
            offer(&["channel.k8s.io", "v3.channel.k8s.io"]).unwrap(),
            "v3.channel.k8s.io"
        );
        assert_eq!(
            offer(&["v5.channel.k8s.io, v4.channel.k8s.io,v2.channel.k8s.io"]).unwrap(),
            "v4.channel.k8s.io"
        );
        assert_eq!(
            handshake(
                &head_with(&[up[0], up[1], (PROTOCOL_HEADER, "portforward.k8s.io")]),
                PORT_FORWARD_PROTOCOLS
            )
            .unwrap(),
            "portforward.k8s.io"
        );
    }

    #[test]
    fn negotiation_refusals() {
        let up = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        let unknown = handshake(
            &head_with(&[up[0], up[1], (PROTOCOL_HEADER, "v9.channel.k8s.io")]),
            EXEC_PROTOCOLS,
        )
        .unwrap_err();
        assert_eq!(unknown.status, 403);
        assert!(
            unknown.body.contains("unable to negotiate protocol"),
            "{}",
            unknown.body
        );
        assert!(
            unknown.body.contains("v9.channel.k8s.io"),
            "{}",
            unknown.body
        );
        let accepted: Vec<&str> = unknown
            .headers
            .iter()
            .filter(|(n, _)| *n == ACCEPTED_PROTOCOLS_HEADER)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(accepted, EXEC_PROTOCOLS);

        let none = handshake(&head_with(&up), EXEC_PROTOCOLS).unwrap_err();
        assert_eq!(none.status, 400);
        assert!(none.body.contains(PROTOCOL_HEADER), "{}", none.body);

        let offer = (PROTOCOL_HEADER, "v4.channel.k8s.io");
        for hs in [
            vec![offer],
            vec![up[0], offer],
            vec![up[1], offer],
            vec![("Connection", "close"), up[1], offer],
            vec![up[0], ("Upgrade", "websocket"), offer],
        ] {
            let refused = handshake(&head_with(&hs), EXEC_PROTOCOLS).unwrap_err();
            assert_eq!(refused.status, 400, "{hs:?}");
            assert!(refused.body.contains("SPDY/3.1"), "{}", refused.body);
        }
    }

    #[test]
    fn responses_are_well_formed() {
        assert_eq!(
            switching_protocols("v4.channel.k8s.io"),
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
              X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        );
        let body = "404 page not found";
        assert_eq!(
            String::from_utf8(Rejection::not_found().to_bytes()).unwrap(),
            format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        );
    }

    #[test]
    fn query_decoding() {
        let pairs = parse_query("a=%41%2f&b&=c&d=%zz&e=100%&&f=%E2%9C%93");
        let want = [
            ("a", "A/"),
            ("b", ""),
            ("", "c"),
            ("d", "%zz"),
            ("e", "100%"),
            ("f", "✓"),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()));
        assert_eq!(pairs, want);
    }
}
