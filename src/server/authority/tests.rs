//! Byte-level tests with hand-built frames, and h2's own server behind the layer.

use super::hpack::{encode_integer, encode_string};
use super::*;
use loona_hpack::Decoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;

const C_CORE: &[u8] = b"%2Frun%2Fcrius%2Fcrius.sock";
const JAVA: &[u8] = b"/run/crius/crius.sock";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    FrameHead {
        len: payload.len(),
        kind,
        flags,
        stream: stream.to_be_bytes(),
    }
    .write(&mut out);
    out.extend_from_slice(payload);
    out
}

fn settings() -> Vec<u8> {
    frame(SETTINGS, 0, 0, &[])
}

fn headers(stream: u32, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, stream, block)
}

/// A connection's start: the preface and empty SETTINGS.
fn start() -> Vec<u8> {
    [PREFACE, &settings()].concat()
}

// HPACK representations (RFC 7541 §6).
fn indexed(index: usize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_integer(index, 7, 0x80, &mut out);
    out
}

/// Literal with incremental indexing: the client's encoder and our decoder add it to the table.
fn literal_indexing(name_index: usize, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_integer(name_index, 6, 0x40, &mut out);
    encode_string(value, &mut out);
    out
}

fn literal_new_name_indexing(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x40];
    encode_string(name, &mut out);
    encode_string(value, &mut out);
    out
}

fn literal(name_index: usize, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_integer(name_index, 4, 0x00, &mut out);
    encode_string(value, &mut out);
    out
}

fn size_update(size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_integer(size, 5, 0x20, &mut out);
    out
}

/// GET / over http, then `rest`.
fn request(rest: &[u8]) -> Vec<u8> {
    [&[0x82, 0x86, 0x84][..], rest].concat()
}

fn run(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Fixer::new().feed(input, &mut out).unwrap();
    out
}

type Fields = Vec<(String, String)>;

/// The frames after the preface.
fn frames(bytes: &[u8]) -> Vec<(FrameHead, Vec<u8>)> {
    let mut rest = bytes.strip_prefix(PREFACE).expect("the preface");
    let mut frames = Vec::new();
    while let Some((head, after)) = rest.split_first_chunk::<FRAME_HEADER_LEN>() {
        let head = FrameHead::parse(head);
        frames.push((head, after[..head.len].to_vec()));
        rest = &after[head.len..];
    }
    assert!(rest.is_empty(), "a frame cut short");
    frames
}

/// The header lists a fresh server decoder makes of `bytes`, one per block.
fn server_view(bytes: &[u8]) -> Vec<Fields> {
    let mut decoder = Decoder::new();
    let mut lists = Vec::new();
    let mut block: Option<Block> = None;
    for (head, payload) in frames(bytes) {
        match head.kind {
            HEADERS => block = Some(start_block(&head, &payload).expect("HEADERS")),
            CONTINUATION => block
                .as_mut()
                .expect("a block")
                .fragment
                .extend_from_slice(&payload),
            _ => continue,
        }
        if head.flags & END_HEADERS != 0 {
            let fragment = block.take().expect("a block").fragment;
            let fields = decoder.decode(&fragment).expect("a decodable block");
            lists.push(
                fields
                    .into_iter()
                    .map(|(n, v)| {
                        (
                            String::from_utf8_lossy(&n).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect(),
            );
        }
    }
    lists
}

fn get(authority: &str) -> Fields {
    [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", authority),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

/// HEADERS frames and their flags.
fn header_frames(bytes: &[u8]) -> Vec<(u8, u8, usize)> {
    frames(bytes)
        .into_iter()
        .filter(|(h, _)| h.kind == HEADERS || h.kind == CONTINUATION)
        .map(|(h, p)| (h.kind, h.flags, p.len()))
        .collect()
}

#[test]
fn the_authority_parser_rejects_what_grpc_clients_send() {
    assert!(acceptable(b"localhost"));
    assert!(acceptable(b"127.0.0.1:10010"));
    assert!(!acceptable(C_CORE));
    assert!(!acceptable(JAVA));
    assert!(!acceptable(b""));
}

#[test]
fn a_good_authority_passes_verbatim() {
    let input = [
        start(),
        headers(1, &request(&literal_indexing(1, b"localhost"))),
        frame(DATA, END_STREAM, 1, b"\0\0\0\0\0"),
        headers(3, &request(&indexed(62))),
        frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]),
    ]
    .concat();
    assert_eq!(run(&input), input);
}

#[test]
fn a_percent_encoded_authority_becomes_localhost() {
    let input = [start(), headers(1, &request(&literal_indexing(1, C_CORE)))].concat();
    let out = run(&input);
    assert_eq!(server_view(&out), [get("localhost")]);
    assert_eq!(
        header_frames(&out),
        [(HEADERS, END_HEADERS | END_STREAM, 14)]
    );
    // Static-table indices where they fit: 0x82 0x86 0x84, then :authority by name index.
    let (_, payload) = &frames(&out)[1];
    assert_eq!(&payload[..5], [0x82, 0x86, 0x84, 0x01, 0x09]);
}

#[test]
fn a_raw_path_authority_becomes_localhost() {
    let input = [start(), headers(1, &request(&literal(1, JAVA)))].concat();
    assert_eq!(server_view(&run(&input)), [get("localhost")]);
}

#[test]
fn an_empty_authority_becomes_localhost() {
    let input = [start(), headers(1, &request(&literal(1, b"")))].concat();
    assert_eq!(server_view(&run(&input)), [get("localhost")]);
}

#[test]
fn a_huffman_coded_authority_becomes_localhost() {
    // "https://www.example.com", Huffman-coded (RFC 7541 C.6.1).
    let coded = [
        0x9d, 0x29, 0xad, 0x17, 0x18, 0x63, 0xc7, 0x8f, 0x0b, 0x97, 0xc8, 0xe9, 0xae, 0x82, 0xae,
        0x43, 0xd3,
    ];
    let mut field = vec![0x41, 0x80 | coded.len() as u8];
    field.extend_from_slice(&coded);
    assert_eq!(
        Decoder::new().decode(&field).unwrap(),
        [(b":authority".to_vec(), b"https://www.example.com".to_vec())]
    );
    let input = [start(), headers(1, &request(&field))].concat();
    assert_eq!(server_view(&run(&input)), [get("localhost")]);
}

#[test]
fn an_authority_from_the_dynamic_table_becomes_localhost() {
    let input = [
        start(),
        headers(1, &request(&literal_indexing(1, C_CORE))),
        headers(3, &request(&indexed(62))),
        headers(5, &request(&indexed(62))),
    ]
    .concat();
    let out = run(&input);
    assert_eq!(
        server_view(&out),
        [get("localhost"), get("localhost"), get("localhost")]
    );
}

#[test]
fn the_tables_stay_in_step_across_the_switch_to_rewriting() {
    let user_agent = literal_indexing(58, b"grpc-python/1.85");
    // Passed verbatim: the server's decoder adds both entries, as ours does.
    let first = headers(
        1,
        &request(&[literal_indexing(1, b"a.example"), user_agent].concat()),
    );
    let input = [
        start(),
        first.clone(),
        // Needs a fix: from here on, blocks are re-encoded.
        headers(3, &request(&[literal(1, JAVA), indexed(62)].concat())),
        // 62 = user-agent, 63 = :authority a.example, from the client's table.
        headers(5, &request(&[indexed(63), indexed(62)].concat())),
    ]
    .concat();
    let out = run(&input);
    let ua = ("user-agent".to_string(), "grpc-python/1.85".to_string());
    let with_ua = |authority| [get(authority), vec![ua.clone()]].concat();
    assert_eq!(
        server_view(&out),
        [
            with_ua("a.example"),
            with_ua("localhost"),
            with_ua("a.example")
        ]
    );
    // The first block went through as it came.
    assert!(out.starts_with(&[start(), first].concat()));
}

#[test]
fn a_block_split_over_continuations_is_joined() {
    let block = request(
        &[
            literal_indexing(1, C_CORE),
            literal(31, b"application/grpc"),
        ]
        .concat(),
    );
    // Cut inside the authority's string, and once more.
    let (a, rest) = block.split_at(8);
    let (b, c) = rest.split_at(10);
    let input = [
        start(),
        frame(HEADERS, END_STREAM, 1, a),
        frame(CONTINUATION, 0, 1, b),
        frame(CONTINUATION, END_HEADERS, 1, c),
    ]
    .concat();
    let out = run(&input);
    let mut expected = get("localhost");
    expected.push(("content-type".into(), "application/grpc".into()));
    assert_eq!(server_view(&out), [expected]);
    assert_eq!(
        header_frames(&out)
            .iter()
            .map(|&(kind, flags, _)| (kind, flags))
            .collect::<Vec<_>>(),
        [(HEADERS, END_HEADERS | END_STREAM)]
    );

    // With a good authority the same frames pass verbatim.
    let good = request(&literal_indexing(1, b"localhost"));
    let (a, b) = good.split_at(5);
    let input = [
        start(),
        frame(HEADERS, 0, 1, a),
        frame(CONTINUATION, END_HEADERS, 1, b),
    ]
    .concat();
    assert_eq!(run(&input), input);
}

#[test]
fn padding_is_dropped_and_priority_kept() {
    let block = request(&literal_indexing(1, C_CORE));
    let priority = [0x80, 0, 0, 0x01, 0x0f]; // exclusive, on stream 1, weight 16
    let mut payload = vec![7];
    payload.extend_from_slice(&priority);
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0; 7]);
    let flags = END_HEADERS | END_STREAM | PADDED | PRIORITY;
    let input = [start(), frame(HEADERS, flags, 3, &payload)].concat();
    let out = run(&input);
    assert_eq!(server_view(&out), [get("localhost")]);
    let (head, payload) = &frames(&out)[1];
    assert_eq!(head.flags, END_HEADERS | END_STREAM | PRIORITY);
    assert_eq!(head.stream, 3u32.to_be_bytes());
    assert_eq!(&payload[..5], priority);
}

#[test]
fn table_size_updates_are_followed() {
    let trace = literal_new_name_indexing(b"x-trace", b"two");
    let input = [
        start(),
        headers(1, &request(&literal_indexing(1, C_CORE))),
        // Empties the table, then lets it grow again, then adds one entry.
        headers(
            3,
            &[size_update(0), size_update(4096), request(&trace)].concat(),
        ),
        headers(5, &request(&indexed(62))),
    ]
    .concat();
    let out = run(&input);
    let mut last = get("localhost");
    last.truncate(3);
    last.push(("x-trace".into(), "two".into()));
    assert_eq!(server_view(&out)[2], last);

    // The first request's authority went with the size update: 63 is no entry any more.
    let mut bad = input.clone();
    bad.extend(headers(7, &request(&indexed(63))));
    let mut out = Vec::new();
    assert!(matches!(
        Fixer::new().feed(&bad, &mut out),
        Err(AuthorityError::Hpack(_))
    ));
}

#[test]
fn a_table_size_over_the_servers_passes_through_before_a_rewrite() {
    let input = [
        start(),
        headers(
            1,
            &[size_update(8192), request(&literal(1, C_CORE))].concat(),
        ),
        headers(3, &request(&literal(1, C_CORE))),
    ]
    .concat();
    // Undecodable for h2 too: everything goes through, for h2 to refuse.
    assert_eq!(run(&input), input);
}

#[test]
fn a_large_rewritten_block_is_split_into_frames() {
    let big = vec![b'x'; 40_000];
    let block = request(
        &[
            literal(1, C_CORE),
            literal_new_name_indexing(b"x-big", &big),
        ]
        .concat(),
    );
    let mut input = start();
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME_PAYLOAD).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let last = i + 1 == chunks.len();
        let flags = if last { END_HEADERS } else { 0 };
        input.extend(frame(kind, flags, 1, chunk));
    }
    let out = run(&input);
    let lists = server_view(&out);
    assert_eq!(lists[0][3], (":authority".into(), "localhost".into()));
    assert_eq!(lists[0][4].1.len(), 40_000);
    let frames = header_frames(&out);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0], (HEADERS, 0, MAX_FRAME_PAYLOAD));
    assert_eq!(frames[1], (CONTINUATION, 0, MAX_FRAME_PAYLOAD));
    assert_eq!((frames[2].0, frames[2].1), (CONTINUATION, END_HEADERS));
}

#[test]
fn other_frames_pass_untouched_while_rewriting() {
    let data = frame(DATA, 0, 1, &[7; 20_000]);
    let ping = frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
    let update = frame(WINDOW_UPDATE, 0, 1, &[0, 0, 1, 0]);
    let input = [
        start(),
        frame(HEADERS, END_HEADERS, 1, &request(&literal(1, C_CORE))),
        data.clone(),
        ping.clone(),
        update.clone(),
    ]
    .concat();
    let out = run(&input);
    assert!(out.ends_with(&[data, ping, update].concat()));
}

#[test]
fn input_in_pieces_gives_the_same_output() {
    let input = [
        start(),
        headers(1, &request(&literal_indexing(1, b"localhost"))),
        frame(DATA, 0, 1, &[9; 100]),
        frame(
            HEADERS,
            END_STREAM,
            3,
            &request(&literal_indexing(1, C_CORE)),
        ),
        // An empty CONTINUATION ends the block.
        frame(CONTINUATION, END_HEADERS, 3, &[]),
        frame(PING, 0, 0, &[0; 8]),
        headers(5, &request(&indexed(62))),
    ]
    .concat();
    let whole = run(&input);
    assert_eq!(server_view(&whole).len(), 3);
    for size in [1, 2, 3, 7, 9, 10, 100] {
        let mut fixer = Fixer::new();
        let mut out = Vec::new();
        for piece in input.chunks(size) {
            fixer.feed(piece, &mut out).unwrap();
        }
        assert_eq!(out, whole, "pieces of {size}");
    }
}

#[test]
fn not_http2_passes_through() {
    let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3);
    assert_eq!(run(&input), input);
}

#[test]
fn malformed_frames_pass_through_before_a_rewrite() {
    // Padding longer than the frame.
    let input = [
        start(),
        frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 0x82]),
        headers(3, &request(&literal(1, C_CORE))),
    ]
    .concat();
    assert_eq!(run(&input), input);
    // A CONTINUATION out of nowhere.
    let input = [start(), frame(CONTINUATION, END_HEADERS, 1, &[0x82])].concat();
    assert_eq!(run(&input), input);
    // Another frame inside a block.
    let input = [
        start(),
        frame(HEADERS, 0, 1, &[0x82]),
        frame(PING, 0, 0, &[0; 8]),
    ]
    .concat();
    assert_eq!(run(&input), input);
}

#[test]
fn malformed_frames_after_a_rewrite_end_the_connection() {
    let rewritten = [start(), headers(1, &request(&literal(1, C_CORE)))].concat();
    for tail in [
        frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
        [frame(HEADERS, 0, 3, &[0x82]), frame(DATA, 0, 3, &[])].concat(),
        frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]),
        headers(3, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
    ] {
        let mut out = Vec::new();
        let result = Fixer::new().feed(&[rewritten.clone(), tail].concat(), &mut out);
        assert!(result.is_err(), "{result:?}");
    }
}

#[test]
fn an_oversized_header_block_ends_the_connection() {
    let mut fixer = Fixer::new();
    let mut out = Vec::new();
    let input = [start(), frame(HEADERS, 0, 1, &vec![0; 600_000])].concat();
    fixer.feed(&input, &mut out).unwrap();
    let more = frame(CONTINUATION, 0, 1, &vec![0; 600_000]);
    assert!(matches!(
        fixer.feed(&more[..FRAME_HEADER_LEN], &mut out),
        Err(AuthorityError::BlockTooLarge)
    ));
    // Memory stays bounded: the frame header alone is refused.
    let mut head = Vec::new();
    FrameHead {
        len: 2 << 20,
        kind: HEADERS,
        flags: 0,
        stream: [0, 0, 0, 1],
    }
    .write(&mut head);
    let mut out = Vec::new();
    assert!(
        Fixer::new()
            .feed(&[start(), head].concat(), &mut out)
            .is_err()
    );
}

#[test]
fn a_header_list_over_the_bound_ends_a_rewriting_connection() {
    // 600 indexed references to a 2000-byte entry: 1.2 MB decoded from 1.2 kB.
    let entry = literal_new_name_indexing(b"x-fill", &[b'f'; 2000]);
    let refs = indexed(62).repeat(600);
    let input = [
        start(),
        headers(1, &request(&[literal(1, C_CORE), entry].concat())),
        headers(3, &request(&refs)),
    ]
    .concat();
    let mut out = Vec::new();
    assert!(matches!(
        Fixer::new().feed(&input, &mut out),
        Err(AuthorityError::ListTooLarge)
    ));
}

#[test]
fn garbage_never_panics() {
    let mut seed: u32 = 0x1234_5678;
    let mut next = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 16) as u8
    };
    for round in 0..300 {
        // Random frames, biased to header frames, with random HPACK in them.
        let mut input = start();
        for _ in 0..20 {
            let kind =
                [HEADERS, CONTINUATION, DATA, PUSH_PROMISE, next() & 0xf][usize::from(next() % 5)];
            let len = usize::from(next() % 40);
            let payload: Vec<u8> = (0..len).map(|_| next()).collect();
            input.extend(frame(kind, next(), u32::from(next() % 4), &payload));
        }
        if round % 3 == 0 {
            input.truncate(input.len() - usize::from(next() % 20));
        }
        let mut fixer = Fixer::new();
        let mut out = Vec::new();
        for piece in input.chunks(1 + usize::from(next() % 50)) {
            if fixer.feed(piece, &mut out).is_err() {
                break;
            }
        }
    }
}

/// A client speaking raw HTTP/2 frames.
struct RawClient {
    io: DuplexStream,
    decoder: Decoder<'static>,
    input: Vec<u8>,
}

/// How a stream ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Status(String),
    Reset(u32),
    GoAway,
}

impl RawClient {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn frame(&mut self) -> (FrameHead, Vec<u8>) {
        loop {
            if let Some((head, rest)) = self.input.split_first_chunk::<FRAME_HEADER_LEN>() {
                let head = FrameHead::parse(head);
                if rest.len() >= head.len {
                    let payload = rest[..head.len].to_vec();
                    self.input.drain(..FRAME_HEADER_LEN + head.len);
                    return (head, payload);
                }
            }
            let mut buf = [0; 4096];
            let n = self.io.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            self.input.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads frames until stream `id` ends.
    async fn outcome(&mut self, id: u32) -> Outcome {
        let mut status = None;
        loop {
            let (head, payload) = self.frame().await;
            let ours = head.stream == id.to_be_bytes();
            match head.kind {
                SETTINGS if head.flags & 1 == 0 => self.send(&frame(SETTINGS, 1, 0, &[])).await,
                HEADERS => {
                    let block = start_block(&head, &payload).unwrap();
                    for (name, value) in self.decoder.decode(&block.fragment).unwrap() {
                        if ours && name == b":status" {
                            status = Some(String::from_utf8(value).unwrap());
                        }
                    }
                    if ours && head.flags & END_STREAM != 0 {
                        return Outcome::Status(status.unwrap_or_default());
                    }
                }
                RST_STREAM if ours => {
                    return Outcome::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                }
                GOAWAY => return Outcome::GoAway,
                _ => {}
            }
        }
    }
}

/// h2's server on `io`: answers every request 200 and reports its authority.
async fn serve<T>(io: T, seen: tokio::sync::mpsc::UnboundedSender<String>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        let authority = request.uri().authority().map(|a| a.to_string());
        let _ = seen.send(authority.unwrap_or_default());
        let _ = respond.send_response(http::Response::new(()), true);
    }
}

/// A client and h2's server, with or without the layer between; a small pipe, so reads and
/// writes come in pieces.
fn connect(fixed: bool) -> (RawClient, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (client, server) = tokio::io::duplex(64);
    let (seen, authorities) = tokio::sync::mpsc::unbounded_channel();
    if fixed {
        tokio::spawn(serve(AuthorityFix::new(server), seen));
    } else {
        tokio::spawn(serve(server, seen));
    }
    let client = RawClient {
        io: client,
        decoder: Decoder::new(),
        input: Vec::new(),
    };
    (client, authorities)
}

#[tokio::test]
async fn h2_alone_resets_a_c_core_request() {
    let (mut client, _) = connect(false);
    client.send(&start()).await;
    client
        .send(&headers(1, &request(&literal_indexing(1, C_CORE))))
        .await;
    // PROTOCOL_ERROR: the problem this layer exists for.
    assert_eq!(client.outcome(1).await, Outcome::Reset(0x1));
}

#[tokio::test]
async fn h2_serves_requests_behind_the_layer() {
    let (mut client, mut authorities) = connect(true);
    client.send(&start()).await;
    client
        .send(&headers(1, &request(&literal_indexing(1, b"localhost"))))
        .await;
    assert_eq!(client.outcome(1).await, Outcome::Status("200".into()));
    client
        .send(&headers(3, &request(&literal_indexing(1, C_CORE))))
        .await;
    assert_eq!(client.outcome(3).await, Outcome::Status("200".into()));
    // 62 is the C-core authority now, 63 the first request's.
    client.send(&headers(5, &request(&indexed(62)))).await;
    assert_eq!(client.outcome(5).await, Outcome::Status("200".into()));
    client.send(&headers(7, &request(&indexed(63)))).await;
    assert_eq!(client.outcome(7).await, Outcome::Status("200".into()));
    // Padded, with priority, split, with grpc-java's authority.
    let block = request(&literal(1, JAVA));
    let mut payload = vec![3, 0, 0, 0, 0, 15];
    payload.extend_from_slice(&block[..6]);
    payload.extend_from_slice(&[0; 3]);
    client
        .send(
            &[
                frame(HEADERS, END_STREAM | PADDED | PRIORITY, 9, &payload),
                frame(CONTINUATION, END_HEADERS, 9, &block[6..]),
            ]
            .concat(),
        )
        .await;
    assert_eq!(client.outcome(9).await, Outcome::Status("200".into()));
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(authorities.recv().await.unwrap());
    }
    assert_eq!(
        seen,
        [
            "localhost",
            "localhost",
            "localhost",
            "localhost",
            "localhost"
        ]
    );
}

#[tokio::test]
async fn h2_keeps_good_authorities_behind_the_layer() {
    let (mut client, mut authorities) = connect(true);
    client.send(&start()).await;
    client
        .send(&headers(
            1,
            &request(&literal_indexing(1, b"crius.example:1")),
        ))
        .await;
    assert_eq!(client.outcome(1).await, Outcome::Status("200".into()));
    client.send(&headers(3, &request(&literal(1, JAVA)))).await;
    assert_eq!(client.outcome(3).await, Outcome::Status("200".into()));
    client.send(&headers(5, &request(&indexed(62)))).await;
    assert_eq!(client.outcome(5).await, Outcome::Status("200".into()));
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(authorities.recv().await.unwrap());
    }
    assert_eq!(seen, ["crius.example:1", "localhost", "crius.example:1"]);
}
