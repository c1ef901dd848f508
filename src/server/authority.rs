//! Any HTTP/2 `:authority` is served on the CRI socket.
//!
//! gRPC clients that dial a unix socket send whatever authority their library makes of the
//! address: grpc-go sends `localhost`, tonic its endpoint URI's authority, gRPC C-core (Python's
//! grpcio 1.57 and later) the percent-encoded socket path (`%2Frun%2Fcrius%2Fcrius.sock`),
//! grpc-java the raw path. h2, under tonic, parses `:authority` as a URI authority and resets
//! every stream whose authority does not parse, while grpc-go servers (containerd, CRI-O) serve
//! them all. So [`AuthorityFix`] sits between the accepted socket and tonic and, in the client's
//! bytes, replaces an `:authority` that h2 would reject (tested with the very parser h2 uses)
//! with `localhost`.
//!
//! Header blocks are HPACK-compressed against a dynamic table that the client's encoder and the
//! server's decoder keep in step, so every header block of the connection is decoded here, by a
//! decoder of our own that mirrors the client's encoder ([`hpack`]: the stateful HPACK decoders
//! on crates.io rebuild a Huffman tree for every coded string, tens of microseconds, and tonic's
//! client sends `:path` Huffman-coded on every request). Frames go through verbatim until the
//! first block that needs a fix; from then on, for the rest of the connection, every header
//! block is re-encoded without the dynamic table (static-table indices where they fit, literals
//! otherwise), so the server's decoder never needs the entries it did not see. The rewritten
//! block is sent as HEADERS and CONTINUATION frames of at most 16384 bytes (the smallest
//! SETTINGS_MAX_FRAME_SIZE a server may have), without padding, keeping the priority fields and
//! END_STREAM. All other frames, and everything the server sends, pass untouched.
//!
//! The server's SETTINGS_HEADER_TABLE_SIZE is taken to stay at the protocol's default (4096):
//! tonic sets none. A stream that does not start with the HTTP/2 client preface, or whose frames
//! are malformed before any rewrite, is passed through for h2 to reject; once blocks are being
//! rewritten, malformed input ends the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use hpack::{HpackError, encode_field};

mod hpack;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;

/// Largest frame payload written: the default SETTINGS_MAX_FRAME_SIZE, which every server
/// accepts.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// Largest header block (its fragments over all frames, compressed) accepted.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Largest decoded header list kept for re-encoding, counted as in RFC 7540 §6.5.2 (name,
/// value and 32 bytes per field).
const MAX_HEADER_LIST: usize = 1 << 20;
/// The server's HPACK table size: SETTINGS_HEADER_TABLE_SIZE is left at its default.
const SERVER_HEADER_TABLE_SIZE: usize = 4096;
/// What replaces an `:authority` h2 would reject.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Why a connection is ended.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("a header block of more than {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge,
    #[error("a header list of more than {MAX_HEADER_LIST} bytes")]
    ListTooLarge,
    #[error("a header block that cannot be decoded: {0}")]
    Hpack(#[from] HpackError),
    #[error("malformed frames: {0}")]
    Malformed(&'static str),
}

/// A connection to the CRI socket whose client→server bytes get an acceptable `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    fixer: Box<Fixer>,
    chunk: Box<[u8]>,
    /// Fixed-up bytes not yet read by the server, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            fixer: Box::new(Fixer::new()),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            pending: Vec::new(),
            pending_at: 0,
        }
    }

    /// Moves pending bytes into `buf`; false when there are none.
    fn drain_pending(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let available = &self.pending[self.pending_at..];
        if available.is_empty() {
            return false;
        }
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.pending_at += n;
        if self.pending_at == self.pending.len() {
            self.pending.clear();
            self.pending.shrink_to(2 * READ_CHUNK);
            self.pending_at = 0;
        }
        true
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 || this.drain_pending(buf) {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                // End of stream: a frame cut short is h2's to notice.
                return Poll::Ready(Ok(()));
            }
            this.fixer
                .feed(chunk.filled(), &mut this.pending)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where the client's byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Matching the client preface.
    Preface,
    /// Collecting a frame header.
    FrameHeader,
    /// Collecting a HEADERS or CONTINUATION frame of this payload length.
    HeaderFrame { len: usize },
    /// Passing on this many more bytes of another frame's payload.
    Forward { remaining: usize },
    /// Passing on everything: not HTTP/2, or malformed for h2 to reject.
    Opaque,
}

/// A frame header.
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    /// The stream identifier field as sent (reserved bit included).
    stream: [u8; 4],
}

impl FrameHead {
    fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> FrameHead {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *bytes;
        FrameHead {
            len: usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2),
            kind,
            flags,
            stream: [s0, s1, s2, s3],
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        // Payloads written here are at most MAX_FRAME_PAYLOAD, well within 24 bits.
        let len = (self.len as u32).to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.stream);
    }
}

/// A header block whose END_HEADERS has not come yet.
struct Block {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    /// Its frames as received.
    raw: Vec<u8>,
    /// Its header block fragments, joined.
    fragment: Vec<u8>,
}

/// A decoded header block.
#[derive(Default)]
struct HeaderList {
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// Its size as RFC 7540 §6.5.2 counts it.
    size: usize,
    /// Fields past MAX_HEADER_LIST were counted but not kept.
    overflow: bool,
    /// The first `:authority` h2 would reject.
    bad_authority: Option<Vec<u8>>,
}

impl HeaderList {
    fn add(&mut self, name: &[u8], value: &[u8]) {
        self.size = self.size.saturating_add(name.len() + value.len() + 32);
        if self.bad_authority.is_none() && is_authority(name) && !acceptable(value) {
            self.bad_authority = Some(value.to_vec());
        }
        if self.size > MAX_HEADER_LIST {
            self.overflow = true;
            self.fields = Vec::new();
        } else if !self.overflow {
            self.fields.push((name.to_vec(), value.to_vec()));
        }
    }
}

fn is_authority(name: &[u8]) -> bool {
    name == b":authority"
}

/// Whether h2 takes this `:authority` (it parses it with `http::uri::Authority`).
fn acceptable(authority: &[u8]) -> bool {
    http::uri::Authority::try_from(authority).is_ok()
}

/// The client→server byte stream's state, fed in chunks of any size.
struct Fixer {
    phase: Phase,
    /// The preface, frame header or header frame being collected.
    unit: Vec<u8>,
    block: Option<Block>,
    /// Mirrors the client's HPACK encoder.
    decoder: hpack::Decoder,
    /// Set at the first block that needed a fix: from then on every block is re-encoded.
    rewriting: bool,
}

impl Fixer {
    fn new() -> Fixer {
        Fixer {
            phase: Phase::Preface,
            unit: Vec::new(),
            block: None,
            decoder: hpack::Decoder::new(SERVER_HEADER_TABLE_SIZE),
            rewriting: false,
        }
    }

    /// Takes in `input`, appending to `out` what the server may read now.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        while !input.is_empty() {
            input = match self.phase {
                Phase::Opaque => {
                    out.extend_from_slice(input);
                    &[]
                }
                Phase::Forward { remaining } => self.forward(input, remaining, out),
                Phase::Preface => self.preface(input, out),
                Phase::FrameHeader => self.frame_header(input, out)?,
                Phase::HeaderFrame { len } => self.header_frame(input, len, out)?,
            };
        }
        Ok(())
    }

    /// Moves up to `want - unit.len()` bytes of `input` into `unit`; returns the rest of `input`.
    fn collect<'a>(&mut self, input: &'a [u8], want: usize) -> &'a [u8] {
        let n = want.saturating_sub(self.unit.len()).min(input.len());
        self.unit.extend_from_slice(&input[..n]);
        &input[n..]
    }

    fn forward<'a>(&mut self, input: &'a [u8], remaining: usize, out: &mut Vec<u8>) -> &'a [u8] {
        let n = remaining.min(input.len());
        out.extend_from_slice(&input[..n]);
        self.phase = match remaining - n {
            0 => Phase::FrameHeader,
            remaining => Phase::Forward { remaining },
        };
        &input[n..]
    }

    fn preface<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        let rest = self.collect(input, PREFACE.len());
        if !PREFACE.starts_with(&self.unit) {
            tracing::debug!("not an HTTP/2 client preface; passing the connection through");
            out.append(&mut self.unit);
            self.phase = Phase::Opaque;
        } else if self.unit.len() == PREFACE.len() {
            out.append(&mut self.unit);
            self.phase = Phase::FrameHeader;
        }
        rest
    }

    fn frame_header<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8], AuthorityError> {
        let rest = self.collect(input, FRAME_HEADER_LEN);
        let Ok(bytes) = <&[u8; FRAME_HEADER_LEN]>::try_from(self.unit.as_slice()) else {
            return Ok(rest);
        };
        let head = FrameHead::parse(bytes);
        if let Some(block) = &self.block
            && (head.kind != CONTINUATION || head.stream != block.stream)
        {
            self.malformed("a frame other than CONTINUATION inside a header block", out)?;
            return Ok(rest);
        }
        match head.kind {
            HEADERS | CONTINUATION => {
                if head.kind == CONTINUATION && self.block.is_none() {
                    self.malformed("CONTINUATION without HEADERS", out)?;
                    return Ok(rest);
                }
                let so_far = self.block.as_ref().map_or(0, |b| b.fragment.len());
                if so_far + head.len > MAX_HEADER_BLOCK {
                    return Err(AuthorityError::BlockTooLarge);
                }
                self.phase = Phase::HeaderFrame { len: head.len };
                if head.len == 0 {
                    self.header_frame_done(out)?;
                }
            }
            PUSH_PROMISE => {
                // A client may not send one; its header block would be one more to track.
                self.malformed("PUSH_PROMISE from the client", out)?;
            }
            _ => {
                out.append(&mut self.unit);
                self.phase = match head.len {
                    0 => Phase::FrameHeader,
                    remaining => Phase::Forward { remaining },
                };
            }
        }
        Ok(rest)
    }

    fn header_frame<'a>(
        &mut self,
        input: &'a [u8],
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<&'a [u8], AuthorityError> {
        let rest = self.collect(input, FRAME_HEADER_LEN + len);
        if self.unit.len() == FRAME_HEADER_LEN + len {
            self.header_frame_done(out)?;
        }
        Ok(rest)
    }

    /// A whole HEADERS or CONTINUATION frame is in `unit`.
    fn header_frame_done(&mut self, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let unit = std::mem::take(&mut self.unit);
        let Some((head_bytes, payload)) = unit.split_first_chunk::<FRAME_HEADER_LEN>() else {
            return Err(AuthorityError::Malformed("a frame shorter than its header"));
        };
        let head = FrameHead::parse(head_bytes);
        match self.block.as_mut() {
            Some(block) => block.fragment.extend_from_slice(payload),
            None => match start_block(&head, payload) {
                Some(block) => self.block = Some(block),
                None => {
                    self.unit = unit;
                    return self.malformed("HEADERS padding longer than the frame", out);
                }
            },
        }
        if let Some(block) = self.block.as_mut() {
            block.raw.extend_from_slice(&unit);
        }
        self.unit = unit;
        self.unit.clear();
        // A large block's buffer is not kept for the rest of the connection.
        self.unit.shrink_to(READ_CHUNK);
        self.phase = Phase::FrameHeader;
        if head.flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.block_done(block, out)?;
        }
        Ok(())
    }

    /// A header block is complete: decodes it, then passes it on as it came or re-encoded.
    fn block_done(&mut self, block: Block, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let mut list = HeaderList::default();
        let decoded = self
            .decoder
            .decode(&block.fragment, |name, value| list.add(name, value));
        if let Err(e) = decoded {
            if self.rewriting {
                return Err(AuthorityError::Hpack(e));
            }
            tracing::debug!(error = %e, "undecodable header block; passing the connection through");
            out.extend_from_slice(&block.raw);
            self.phase = Phase::Opaque;
            return Ok(());
        }
        if let Some(authority) = &list.bad_authority
            && !self.rewriting
        {
            tracing::debug!(
                authority = %String::from_utf8_lossy(authority),
                "h2 rejects this :authority; serving the connection with `localhost` instead"
            );
            self.rewriting = true;
        }
        if !self.rewriting {
            out.extend_from_slice(&block.raw);
            return Ok(());
        }
        if list.overflow {
            return Err(AuthorityError::ListTooLarge);
        }
        let mut encoded = Vec::with_capacity(list.size);
        for (name, value) in &list.fields {
            let value = if is_authority(name) && !acceptable(value) {
                REPLACEMENT_AUTHORITY
            } else {
                value
            };
            encode_field(name, value, &mut encoded);
        }
        write_block(&block, &encoded, out);
        Ok(())
    }

    /// Malformed framing: passed through for h2 to reject, unless blocks are being rewritten
    /// (h2's decoder would no longer follow the client's).
    fn malformed(&mut self, what: &'static str, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        if self.rewriting {
            return Err(AuthorityError::Malformed(what));
        }
        tracing::debug!(problem = what, "passing the connection through");
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        out.append(&mut self.unit);
        self.phase = Phase::Opaque;
        Ok(())
    }
}

/// The block a HEADERS frame starts; None when its padding does not fit.
fn start_block(head: &FrameHead, payload: &[u8]) -> Option<Block> {
    let mut body = payload;
    let mut pad = 0;
    if head.flags & PADDED != 0 {
        let (&len, rest) = body.split_first()?;
        pad = usize::from(len);
        body = rest;
    }
    let mut priority = None;
    if head.flags & PRIORITY != 0 {
        let (fields, rest) = body.split_first_chunk::<PRIORITY_LEN>()?;
        priority = Some(*fields);
        body = rest;
    }
    let fragment = body.get(..body.len().checked_sub(pad)?)?;
    Some(Block {
        stream: head.stream,
        end_stream: head.flags & END_STREAM != 0,
        priority,
        raw: Vec::new(),
        fragment: fragment.to_vec(),
    })
}

/// Writes a re-encoded header block as HEADERS and CONTINUATION frames.
fn write_block(block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
    let priority: &[u8] = block.priority.as_ref().map_or(&[], |p| p.as_slice());
    let first_len = encoded.len().min(MAX_FRAME_PAYLOAD - priority.len());
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = 0;
    if block.end_stream {
        flags |= END_STREAM;
    }
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let head = FrameHead {
        len: priority.len() + first.len(),
        kind: HEADERS,
        flags,
        stream: block.stream,
    };
    head.write(out);
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        rest = after;
        let head = FrameHead {
            len: chunk.len(),
            kind: CONTINUATION,
            flags: if rest.is_empty() { END_HEADERS } else { 0 },
            stream: block.stream,
        };
        head.write(out);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests;
