//! SPDY/3.1 framing, the multiplexing layer Kubernetes' streaming uses: kubelet, kubectl and
//! crictl upgrade an HTTP request to `SPDY/3.1` and then run exec, attach and port-forward over
//! it (Go's moby/spdystream on their side).
//!
//! [`Codec`] turns bytes into [`Frame`]s and back, following the SPDY/3 draft with the 3.1
//! changes (connection-level `WINDOW_UPDATE`, no `CREDENTIAL`). Header blocks are compressed as
//! one zlib stream per direction for the whole connection, seeded with the draft's dictionary,
//! so a `Codec` belongs to exactly one connection and every frame of it must go through it in
//! order. Streams, flow control and replies are the session's business, not the codec's.
//!
//! An error from [`Codec::decode`] or [`Codec::encode`] is fatal to the connection: the zlib
//! streams may no longer match the peer's.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version this codec speaks (3.1 did not change the version field).
pub const VERSION: u16 = 3;

/// Last frame the sender sends on the stream (SYN_STREAM, SYN_REPLY, HEADERS, DATA).
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM: the receiver must not send on the new stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// SETTINGS: forget previously persisted settings.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

/// Largest payload a frame's 24-bit length field can describe (16 MiB - 1).
pub const MAX_FRAME_LEN: usize = 0xff_ffff;

/// RST_STREAM status codes (SPDY/3.1; 10, INVALID_CREDENTIALS, went with CREDENTIAL).
pub mod status {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const UNSUPPORTED_VERSION: u32 = 4;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

// Control frame types. 5 (NOOP, SPDY/2) and 10 (CREDENTIAL, gone in 3.1) are unknown here.
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

const CONTROL_BIT: u32 = 0x8000_0000;
/// Stream ids and window deltas are 31 bits; the top bit is reserved.
const MASK_31: u32 = 0x7fff_ffff;
/// SETTINGS ids are 24 bits, below an 8-bit flags field.
const MASK_24: u32 = 0x00ff_ffff;
/// Frame header: two 32-bit words.
const HEADER_LEN: usize = 8;

/// One SPDY frame. Stream ids are 31-bit, SYN_STREAM priorities 3-bit; `encode` refuses
/// values that do not fit rather than truncating them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_id: u32,
        /// 0 (highest) to 7 (lowest).
        priority: u8,
        /// [`FLAG_FIN`], [`FLAG_UNIDIRECTIONAL`].
        flags: u8,
        headers: Vec<(String, String)>,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Vec<(String, String)>,
    },
    RstStream {
        stream_id: u32,
        /// One of [`status`].
        status: u32,
    },
    Settings {
        /// [`FLAG_CLEAR_SETTINGS`].
        flags: u8,
        /// `(flags, id, value)`; ids are 24 bits.
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Vec<(String, String)>,
    },
    /// Stream 0 is the whole connection (SPDY/3.1).
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY version {0} is not supported (only 3)")]
    UnsupportedVersion(u16),
    #[error("frame of {len} bytes is over the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("a {frame} frame cannot be {len} bytes long")]
    InvalidLength { frame: &'static str, len: usize },
    #[error("stream id {0:#x} does not fit in 31 bits")]
    InvalidStreamId(u32),
    #[error("priority {0} does not fit in 3 bits")]
    InvalidPriority(u8),
    #[error("window delta {0:#x} does not fit in 31 bits")]
    InvalidWindowDelta(u32),
    #[error("settings id {0:#x} does not fit in 24 bits")]
    InvalidSettingsId(u32),
    #[error("header {name:?} cannot be sent: {reason}")]
    InvalidHeader { name: String, reason: &'static str },
    #[error("malformed header block: {0}")]
    MalformedHeaderBlock(&'static str),
    #[error("header block inflates to more than {max} bytes")]
    HeaderBlockTooLarge { max: usize },
    #[error("header block is compressed with zlib dictionary {0:#010x}, not SPDY/3's")]
    WrongDictionary(u32),
    #[error("compressing a header block: {0}")]
    Compress(#[from] flate2::CompressError),
    #[error("inflating a header block: {0}")]
    Decompress(#[from] flate2::DecompressError),
}

/// The zlib dictionary of the SPDY/3 draft, section 2.6.10.1: length-prefixed header names
/// and values, then common status lines, dates and media types.
const DICTIONARY: &[u8; 1423] = b"\
    \x00\x00\x00\x07options\
    \x00\x00\x00\x04head\
    \x00\x00\x00\x04post\
    \x00\x00\x00\x03put\
    \x00\x00\x00\x06delete\
    \x00\x00\x00\x05trace\
    \x00\x00\x00\x06accept\
    \x00\x00\x00\x0eaccept-charset\
    \x00\x00\x00\x0faccept-encoding\
    \x00\x00\x00\x0faccept-language\
    \x00\x00\x00\x0daccept-ranges\
    \x00\x00\x00\x03age\
    \x00\x00\x00\x05allow\
    \x00\x00\x00\x0dauthorization\
    \x00\x00\x00\x0dcache-control\
    \x00\x00\x00\x0aconnection\
    \x00\x00\x00\x0ccontent-base\
    \x00\x00\x00\x10content-encoding\
    \x00\x00\x00\x10content-language\
    \x00\x00\x00\x0econtent-length\
    \x00\x00\x00\x10content-location\
    \x00\x00\x00\x0bcontent-md5\
    \x00\x00\x00\x0dcontent-range\
    \x00\x00\x00\x0ccontent-type\
    \x00\x00\x00\x04date\
    \x00\x00\x00\x04etag\
    \x00\x00\x00\x06expect\
    \x00\x00\x00\x07expires\
    \x00\x00\x00\x04from\
    \x00\x00\x00\x04host\
    \x00\x00\x00\x08if-match\
    \x00\x00\x00\x11if-modified-since\
    \x00\x00\x00\x0dif-none-match\
    \x00\x00\x00\x08if-range\
    \x00\x00\x00\x13if-unmodified-since\
    \x00\x00\x00\x0dlast-modified\
    \x00\x00\x00\x08location\
    \x00\x00\x00\x0cmax-forwards\
    \x00\x00\x00\x06pragma\
    \x00\x00\x00\x12proxy-authenticate\
    \x00\x00\x00\x13proxy-authorization\
    \x00\x00\x00\x05range\
    \x00\x00\x00\x07referer\
    \x00\x00\x00\x0bretry-after\
    \x00\x00\x00\x06server\
    \x00\x00\x00\x02te\
    \x00\x00\x00\x07trailer\
    \x00\x00\x00\x11transfer-encoding\
    \x00\x00\x00\x07upgrade\
    \x00\x00\x00\x0auser-agent\
    \x00\x00\x00\x04vary\
    \x00\x00\x00\x03via\
    \x00\x00\x00\x07warning\
    \x00\x00\x00\x10www-authenticate\
    \x00\x00\x00\x06method\
    \x00\x00\x00\x03get\
    \x00\x00\x00\x06status\
    \x00\x00\x00\x06200 OK\
    \x00\x00\x00\x07version\
    \x00\x00\x00\x08HTTP/1.1\
    \x00\x00\x00\x03url\
    \x00\x00\x00\x06public\
    \x00\x00\x00\x0aset-cookie\
    \x00\x00\x00\x0akeep-alive\
    \x00\x00\x00\x06origin\
    100101\
    201202205206\
    300302303304305306307\
    402405406407408409410411412413414415416417\
    502504505\
    203 Non-Authoritative Information\
    204 No Content\
    301 Moved Permanently\
    400 Bad Request\
    401 Unauthorized\
    403 Forbidden\
    404 Not Found\
    500 Internal Server Error\
    501 Not Implemented\
    503 Service Unavailable\
    Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 \
    Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
    chunked,text/html,image/png,image/jpg,image/gif,application/xml,\
    application/xhtml+xml,text/plain,text/javascript,\
    publicprivatemax-age=gzip,deflate,sdch\
    charset=utf-8charset=iso-8859-1,utf-,*,enq=0.\
";

/// Adler-32 of [`DICTIONARY`]: the id a zlib stream names it by.
const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// Frame codec for one SPDY/3.1 connection, both directions.
#[derive(Debug)]
pub struct Codec {
    compressor: Compress,
    decompressor: Decompress,
    /// zlib takes the dictionary before the stream's first byte; set on first use so that
    /// `new` cannot fail.
    dictionary_set: bool,
    max_frame_len: usize,
    /// Scratch buffers kept across frames to spare an allocation per header block.
    block: Vec<u8>,
    zblock: Vec<u8>,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    pub fn new() -> Self {
        Codec {
            // Header blocks are small and compressed once; spdystream uses the best level too.
            compressor: Compress::new(Compression::best(), true),
            decompressor: Decompress::new(true),
            dictionary_set: false,
            max_frame_len: MAX_FRAME_LEN,
            block: Vec::new(),
            zblock: Vec::new(),
        }
    }

    /// Sets the largest frame payload `decode` accepts, and the largest a header block may
    /// inflate to (default [`MAX_FRAME_LEN`] for both), to bound what a peer can make us buffer.
    pub fn set_max_frame_len(&mut self, len: usize) {
        self.max_frame_len = len;
    }

    /// Appends `frame` to `out`. Nothing is appended on error.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        match frame {
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers,
            } => {
                let stream_id = id31(*stream_id)?;
                let associated_id = id31(*associated_id)?;
                if *priority > 7 {
                    return Err(SpdyError::InvalidPriority(*priority));
                }
                self.compress_headers(headers)?;
                let len = payload_len(10 + self.zblock.len())?;
                put_control_header(out, SYN_STREAM, *flags, len);
                out.put_u32(stream_id);
                out.put_u32(associated_id);
                out.put_u8(priority << 5);
                out.put_u8(0); // slot: unused since CREDENTIAL went away
                out.extend_from_slice(&self.zblock);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => self.encode_headers(out, SYN_REPLY, *stream_id, *flags, headers)?,
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => self.encode_headers(out, HEADERS, *stream_id, *flags, headers)?,
            Frame::RstStream { stream_id, status } => {
                let stream_id = id31(*stream_id)?;
                put_control_header(out, RST_STREAM, 0, 8);
                out.put_u32(stream_id);
                out.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                if let Some((_, id, _)) = entries.iter().find(|(_, id, _)| id & !MASK_24 != 0) {
                    return Err(SpdyError::InvalidSettingsId(*id));
                }
                let len = payload_len(entries.len().saturating_mul(8).saturating_add(4))?;
                put_control_header(out, SETTINGS, *flags, len);
                // The count fits: the length check bounds it far below u32::MAX.
                out.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    out.put_u32(u32::from(*flags) << 24 | id);
                    out.put_u32(*value);
                }
            }
            Frame::Ping { id } => {
                put_control_header(out, PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let last_good_stream_id = id31(*last_good_stream_id)?;
                put_control_header(out, GOAWAY, 0, 8);
                out.put_u32(last_good_stream_id);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let stream_id = id31(*stream_id)?;
                if delta & !MASK_31 != 0 {
                    return Err(SpdyError::InvalidWindowDelta(*delta));
                }
                put_control_header(out, WINDOW_UPDATE, 0, 8);
                out.put_u32(stream_id);
                out.put_u32(*delta);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let stream_id = id31(*stream_id)?;
                let len = payload_len(data.len())?;
                out.reserve(HEADER_LEN + data.len());
                out.put_u32(stream_id);
                out.put_u32(u32::from(*flags) << 24 | len);
                out.extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// Takes the next whole frame off the front of `buf`; `None` (with room reserved for the
    /// rest of a partial frame) until one is buffered. Control frames of unknown types are
    /// skipped, as the spec requires.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        loop {
            let Some(mut head) = buf.get(..HEADER_LEN) else {
                return Ok(None);
            };
            let word = head.get_u32();
            let flags_len = head.get_u32();
            let flags = (flags_len >> 24) as u8;
            let len = (flags_len & MASK_24) as usize;
            let control = word & CONTROL_BIT != 0;
            // Checked before the payload arrives, so a bad peer is cut off without buffering.
            if control {
                let version = (word >> 16) as u16 & 0x7fff;
                if version != VERSION {
                    return Err(SpdyError::UnsupportedVersion(version));
                }
            }
            if len > self.max_frame_len {
                return Err(SpdyError::FrameTooLarge {
                    len,
                    max: self.max_frame_len,
                });
            }
            if buf.len() < HEADER_LEN + len {
                buf.reserve(HEADER_LEN + len - buf.len());
                return Ok(None);
            }
            buf.advance(HEADER_LEN);
            let payload = buf.split_to(len);
            if !control {
                return Ok(Some(Frame::Data {
                    stream_id: word & MASK_31,
                    flags,
                    data: payload.freeze(),
                }));
            }
            if let Some(frame) = self.decode_control(word as u16, flags, &payload)? {
                return Ok(Some(frame));
            }
        }
    }

    fn encode_headers(
        &mut self,
        out: &mut BytesMut,
        kind: u16,
        stream_id: u32,
        flags: u8,
        headers: &[(String, String)],
    ) -> Result<(), SpdyError> {
        let stream_id = id31(stream_id)?;
        self.compress_headers(headers)?;
        let len = payload_len(4 + self.zblock.len())?;
        put_control_header(out, kind, flags, len);
        out.put_u32(stream_id);
        out.extend_from_slice(&self.zblock);
        Ok(())
    }

    /// `None` for a control frame type this codec does not know.
    fn decode_control(
        &mut self,
        kind: u16,
        flags: u8,
        mut p: &[u8],
    ) -> Result<Option<Frame>, SpdyError> {
        let len = p.len();
        let frame = match kind {
            SYN_STREAM => {
                at_least("SYN_STREAM", len, 10)?;
                let stream_id = p.get_u32() & MASK_31;
                let associated_id = p.get_u32() & MASK_31;
                let priority = p.get_u8() >> 5;
                p.advance(1); // slot
                Frame::SynStream {
                    stream_id,
                    associated_id,
                    priority,
                    flags,
                    headers: self.decompress_headers(p)?,
                }
            }
            SYN_REPLY | HEADERS => {
                at_least(
                    if kind == SYN_REPLY {
                        "SYN_REPLY"
                    } else {
                        "HEADERS"
                    },
                    len,
                    4,
                )?;
                let stream_id = p.get_u32() & MASK_31;
                let headers = self.decompress_headers(p)?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            RST_STREAM => {
                exactly("RST_STREAM", len, 8)?;
                Frame::RstStream {
                    stream_id: p.get_u32() & MASK_31,
                    status: p.get_u32(),
                }
            }
            SETTINGS => {
                at_least("SETTINGS", len, 4)?;
                let count = p.get_u32() as usize;
                if count.checked_mul(8) != Some(p.len()) {
                    return Err(SpdyError::InvalidLength {
                        frame: "SETTINGS",
                        len,
                    });
                }
                let entries = (0..count)
                    .map(|_| {
                        let flags_id = p.get_u32();
                        ((flags_id >> 24) as u8, flags_id & MASK_24, p.get_u32())
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            PING => {
                exactly("PING", len, 4)?;
                Frame::Ping { id: p.get_u32() }
            }
            GOAWAY => {
                exactly("GOAWAY", len, 8)?;
                Frame::GoAway {
                    last_good_stream_id: p.get_u32() & MASK_31,
                    status: p.get_u32(),
                }
            }
            WINDOW_UPDATE => {
                exactly("WINDOW_UPDATE", len, 8)?;
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & MASK_31,
                    delta: p.get_u32() & MASK_31,
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }

    /// Leaves the compressed name/value block for `headers` in `self.zblock`.
    fn compress_headers(&mut self, headers: &[(String, String)]) -> Result<(), SpdyError> {
        self.block.clear();
        write_header_block(headers, &mut self.block)?;
        // Refused before the compressor sees it, so the zlib stream stays in step with the peer.
        if self.block.len() > MAX_FRAME_LEN {
            return Err(SpdyError::FrameTooLarge {
                len: self.block.len(),
                max: MAX_FRAME_LEN,
            });
        }
        self.deflate()
    }

    /// Compresses `self.block` into `self.zblock`, ending with a sync flush so that the peer
    /// can inflate the whole block from this frame alone while the stream goes on.
    fn deflate(&mut self) -> Result<(), SpdyError> {
        if !self.dictionary_set {
            self.compressor.set_dictionary(DICTIONARY)?;
            self.dictionary_set = true;
        }
        self.zblock.clear();
        self.zblock.reserve(self.block.len() / 2 + 64);
        let mut pos = 0;
        loop {
            if self.zblock.len() == self.zblock.capacity() {
                self.zblock.reserve(self.zblock.len().max(256));
            }
            let before = self.compressor.total_in();
            self.compressor.compress_vec(
                &self.block[pos..],
                &mut self.zblock,
                FlushCompress::Sync,
            )?;
            pos += (self.compressor.total_in() - before) as usize;
            // Room left over after a sync flush means zlib has nothing more to give.
            if pos == self.block.len() && self.zblock.len() < self.zblock.capacity() {
                return Ok(());
            }
        }
    }

    fn decompress_headers(&mut self, input: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let mut block = std::mem::take(&mut self.block);
        let parsed = self
            .inflate(input, &mut block)
            .and_then(|()| parse_header_block(&block));
        self.block = block;
        parsed
    }

    /// Inflates one frame's share of the connection's header stream into `out`.
    fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let max = self.max_frame_len;
        out.clear();
        out.reserve(input.len().saturating_mul(4).clamp(256, max.max(256)));
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= max {
                    return Err(SpdyError::HeaderBlockTooLarge { max });
                }
                out.reserve(out.len().min(max - out.len()).max(256));
            }
            let (pos_before, out_before) = (pos, out.len());
            let in_before = self.decompressor.total_in();
            let result =
                self.decompressor
                    .decompress_vec(&input[pos..], out, FlushDecompress::Sync);
            pos += (self.decompressor.total_in() - in_before) as usize;
            if out.len() > max {
                return Err(SpdyError::HeaderBlockTooLarge { max });
            }
            match result {
                Ok(Status::StreamEnd) => {
                    // The peer ended its header stream; nothing may follow in this frame.
                    return if pos == input.len() {
                        Ok(())
                    } else {
                        Err(SpdyError::MalformedHeaderBlock(
                            "data after the zlib stream's end",
                        ))
                    };
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        self.decompressor.set_dictionary(DICTIONARY)?;
                        continue;
                    }
                    Some(other) => return Err(SpdyError::WrongDictionary(other)),
                    None => return Err(e.into()),
                },
            }
            if pos == input.len() && out.len() < out.capacity() {
                return Ok(());
            }
            if pos == pos_before && out.len() == out_before {
                // Only reachable if zlib stalls with room to write; don't spin on it.
                return Err(SpdyError::MalformedHeaderBlock(
                    "zlib stream made no progress",
                ));
            }
        }
    }
}

fn put_control_header(out: &mut BytesMut, kind: u16, flags: u8, len: u32) {
    out.reserve(HEADER_LEN + len as usize);
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(u32::from(flags) << 24 | len);
}

fn payload_len(len: usize) -> Result<u32, SpdyError> {
    if len > MAX_FRAME_LEN {
        return Err(SpdyError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len as u32)
}

fn id31(id: u32) -> Result<u32, SpdyError> {
    if id & !MASK_31 != 0 {
        return Err(SpdyError::InvalidStreamId(id));
    }
    Ok(id)
}

fn at_least(frame: &'static str, len: usize, min: usize) -> Result<(), SpdyError> {
    if len < min {
        return Err(SpdyError::InvalidLength { frame, len });
    }
    Ok(())
}

fn exactly(frame: &'static str, len: usize, want: usize) -> Result<(), SpdyError> {
    if len != want {
        return Err(SpdyError::InvalidLength { frame, len });
    }
    Ok(())
}

/// Writes the uncompressed name/value block: a 32-bit count, then each name and value with a
/// 32-bit length. SPDY allows a name once, so repeated names go as one value joined by NULs,
/// in order of first appearance; names go lowercase, as the spec requires.
fn write_header_block(headers: &[(String, String)], block: &mut Vec<u8>) -> Result<(), SpdyError> {
    let invalid = |name: &str, reason| SpdyError::InvalidHeader {
        name: name.to_owned(),
        reason,
    };
    let mut names: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, value) in headers {
        if name.is_empty() {
            return Err(invalid(name, "empty name"));
        }
        if name.contains('\0') || value.contains('\0') {
            return Err(invalid(name, "NUL separates values on the wire"));
        }
        let name = name.to_ascii_lowercase();
        match names.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => names.push((name, vec![value])),
        }
    }
    let too_large = |len| SpdyError::FrameTooLarge {
        len,
        max: MAX_FRAME_LEN,
    };
    let count = u32::try_from(names.len()).map_err(|_| too_large(names.len()))?;
    block.put_u32(count);
    for (name, values) in &names {
        // The spec forbids empty pieces in a multi-value: they would read back as nothing.
        if values.len() > 1 && values.iter().any(|v| v.is_empty()) {
            return Err(invalid(name, "an empty value among several"));
        }
        let value = values.join("\0");
        for s in [name.as_str(), value.as_str()] {
            let len = u32::try_from(s.len()).map_err(|_| too_large(s.len()))?;
            block.put_u32(len);
            block.extend_from_slice(s.as_bytes());
        }
    }
    Ok(())
}

/// Reads an inflated name/value block, one `(name, value)` pair per NUL-separated value.
/// Lenient where it costs nothing: uppercase names are lowercased and repeated names kept.
fn parse_header_block(mut block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    fn take_u32(block: &mut &[u8]) -> Result<u32, SpdyError> {
        if block.len() < 4 {
            return Err(SpdyError::MalformedHeaderBlock("truncated"));
        }
        Ok(block.get_u32())
    }
    fn take_str(block: &mut &[u8]) -> Result<String, SpdyError> {
        let len = take_u32(block)? as usize;
        if block.len() < len {
            return Err(SpdyError::MalformedHeaderBlock("truncated"));
        }
        let (s, rest) = block.split_at(len);
        *block = rest;
        String::from_utf8(s.to_vec())
            .map_err(|_| SpdyError::MalformedHeaderBlock("a name or value is not UTF-8"))
    }

    let count = take_u32(&mut block)? as usize;
    // Every pair takes at least 8 bytes, which bounds what a lying count can allocate.
    let mut headers = Vec::with_capacity(count.min(block.len() / 8));
    for _ in 0..count {
        let mut name = take_str(&mut block)?;
        if name.is_empty() {
            return Err(SpdyError::MalformedHeaderBlock("empty name"));
        }
        name.make_ascii_lowercase();
        let value = take_str(&mut block)?;
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    if !block.is_empty() {
        return Err(SpdyError::MalformedHeaderBlock("bytes after the last pair"));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn encode_all(codec: &mut Codec, frames: &[Frame]) -> BytesMut {
        let mut out = BytesMut::new();
        for frame in frames {
            codec.encode(frame, &mut out).unwrap();
        }
        out
    }

    fn decode_all(codec: &mut Codec, buf: &mut BytesMut) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(buf).unwrap() {
            frames.push(frame);
        }
        frames
    }

    fn one_of_each() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: headers(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream_id: 0x7fff_ffff,
                associated_id: 1,
                priority: 7,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                headers: headers(&[("streamtype", "stdin"), ("x-empty", "")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::SynReply {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: headers(&[(":status", "200"), (":version", "HTTP/1.1")]),
            },
            Frame::RstStream {
                stream_id: 5,
                status: status::CANCEL,
            },
            Frame::Settings {
                flags: FLAG_CLEAR_SETTINGS,
                entries: vec![(0, 4, 100), (1, 7, 65536), (2, 0xff_ffff, u32::MAX)],
            },
            Frame::Settings {
                flags: 0,
                entries: vec![],
            },
            Frame::Ping { id: 1 },
            Frame::Ping { id: u32::MAX },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: 1,
            },
            Frame::Headers {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: headers(&[("port", "8080"), ("requestid", "0")]),
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 0x7fff_ffff,
            },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 1,
            },
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: Bytes::from_static(b"hello\n"),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
        ]
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
        // The Adler-32 other SPDY/3 implementations publish for it.
        let mut z = Compress::new(Compression::best(), true);
        assert_eq!(z.set_dictionary(DICTIONARY).unwrap(), DICTIONARY_ID);
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = one_of_each();
        let (mut client, mut server) = (Codec::new(), Codec::new());
        let mut wire = encode_all(&mut client, &frames);
        assert_eq!(decode_all(&mut server, &mut wire), frames);
        assert!(wire.is_empty());
    }

    #[test]
    fn fixed_frames_have_the_specified_layout() {
        let mut codec = Codec::new();
        let cases = [
            (
                Frame::RstStream {
                    stream_id: 5,
                    status: 5,
                },
                "80030003 00000008 00000005 00000005",
            ),
            (Frame::Ping { id: 1 }, "80030006 00000004 00000001"),
            (
                Frame::GoAway {
                    last_good_stream_id: 7,
                    status: 0,
                },
                "80030007 00000008 00000007 00000000",
            ),
            (
                Frame::WindowUpdate {
                    stream_id: 3,
                    delta: 0x10000,
                },
                "80030009 00000008 00000003 00010000",
            ),
            (
                Frame::Settings {
                    flags: 1,
                    entries: vec![(1, 7, 0x10000)],
                },
                "80030004 0100000c 00000001 01000007 00010000",
            ),
            (
                Frame::Data {
                    stream_id: 3,
                    flags: FLAG_FIN,
                    data: Bytes::from_static(b"hi"),
                },
                "00000003 01000002 6869",
            ),
        ];
        for (frame, want) in cases {
            let mut out = BytesMut::new();
            codec.encode(&frame, &mut out).unwrap();
            assert_eq!(&out[..], hex(want), "{frame:?}");
        }

        let mut out = BytesMut::new();
        let syn = Frame::SynStream {
            stream_id: 1,
            associated_id: 3,
            priority: 2,
            flags: FLAG_UNIDIRECTIONAL,
            headers: headers(&[("streamtype", "error")]),
        };
        codec.encode(&syn, &mut out).unwrap();
        let len = out.len() - 8;
        let mut want = hex("80030001");
        want.extend(((0x02 << 24) | len as u32).to_be_bytes());
        want.extend(hex("00000001 00000003 40 00"));
        assert_eq!(&out[..18], want);
        // A zlib header naming the SPDY dictionary, and a block that ends in a sync flush.
        assert_eq!(&out[18..24], hex("78f9 e3c6a7c2"));
        assert!(out.ends_with(&hex("0000ffff")));
    }

    #[test]
    fn values_of_one_name_travel_joined_by_nul() {
        let mut block = Vec::new();
        write_header_block(
            &headers(&[("Port", "8080"), ("x", "1"), ("port", "9090")]),
            &mut block,
        )
        .unwrap();
        let mut want = hex("00000002");
        want.extend(hex("00000004"));
        want.extend(b"port");
        want.extend(hex("00000009"));
        want.extend(b"8080\x009090");
        want.extend(hex("00000001"));
        want.extend(b"x");
        want.extend(hex("00000001"));
        want.extend(b"1");
        assert_eq!(block, want);
        assert_eq!(
            parse_header_block(&block).unwrap(),
            headers(&[("port", "8080"), ("port", "9090"), ("x", "1")])
        );

        let frame = Frame::Headers {
            stream_id: 1,
            flags: 0,
            headers: headers(&[("a", "1"), ("B", "2"), ("A", "3"), ("a", "4")]),
        };
        let mut wire = encode_all(&mut Codec::new(), &[frame]);
        let Some(Frame::Headers { headers: got, .. }) = Codec::new().decode(&mut wire).unwrap()
        else {
            panic!("not a HEADERS frame");
        };
        assert_eq!(
            got,
            headers(&[("a", "1"), ("a", "3"), ("a", "4"), ("b", "2")])
        );
    }

    #[test]
    fn compression_state_carries_across_header_blocks() {
        let hs = headers(&[
            ("streamtype", "stdout"),
            ("x-kubernetes-request-id", "0123456789abcdef"),
        ]);
        let frames: Vec<Frame> = (0..5)
            .map(|i| Frame::SynStream {
                stream_id: 2 * i + 1,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: hs.clone(),
            })
            .collect();
        let (mut client, mut server) = (Codec::new(), Codec::new());
        let mut lens = Vec::new();
        let mut wire = BytesMut::new();
        for frame in &frames {
            let before = wire.len();
            client.encode(frame, &mut wire).unwrap();
            lens.push(wire.len() - before);
        }
        // Later blocks refer back to the first, so they are much shorter.
        assert!(lens[1..].iter().all(|&l| l < lens[0] / 2), "{lens:?}");

        let mut copy = wire.clone();
        assert_eq!(decode_all(&mut server, &mut wire), frames);

        // Without the first block, a fresh decompressor cannot make sense of the second.
        let mut fresh = Codec::new();
        copy.advance(lens[0]);
        assert!(fresh.decode(&mut copy).is_err());
    }

    #[test]
    fn decoding_survives_any_split() {
        let frames = one_of_each();
        let wire = encode_all(&mut Codec::new(), &frames);
        for chunk in 1..=13 {
            let mut codec = Codec::new();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(frame) = codec.decode(&mut buf).unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, frames, "chunks of {chunk}");
            assert!(buf.is_empty());
        }
    }

    /// SYN_STREAMs as spdystream (kubectl, crictl) sends them for exec and port-forward, then a
    /// HEADERS with two values, one connection's worth. The header blocks were compressed by
    /// Python's zlib (`compressobj(9, zdict=<SPDY/3 dictionary>)`, `flush(Z_SYNC_FLUSH)` per
    /// block), not by this module: a standard zlib stream with the dictionary.
    #[test]
    fn reads_header_blocks_compressed_by_another_zlib() {
        let mut wire = BytesMut::from(
            &hex(
                "80030001000000280000000100000000000078f9e3c6a7c202a62346703a2b294a4dcc85162
                 5aca9a08006000000ffff
                 800300010000001900000003000000000000c22a054ccc29f9a52500000000ffff
                 800300010000002e0000000500000000000002a5550c395009940829cc8bc0f9c6c2c0c200
                 48731641223f139429180d00000000ffff
                 800300080000001900000003829acb5ea19b5b9a5392092e88199200000000ffff",
            )[..],
        );
        let syn = |stream_id, hs: &[(&str, &str)]| Frame::SynStream {
            stream_id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: headers(hs),
        };
        let want = vec![
            syn(1, &[("streamtype", "error")]),
            syn(3, &[("streamtype", "stdout")]),
            syn(
                5,
                &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")],
            ),
            Frame::Headers {
                stream_id: 3,
                flags: 0,
                headers: headers(&[("x-multi", "a"), ("x-multi", "b")]),
            },
        ];
        assert_eq!(decode_all(&mut Codec::new(), &mut wire), want);
        assert!(wire.is_empty());
    }

    #[test]
    fn decodes_ping_and_settings_from_hex() {
        let mut codec = Codec::new();
        let mut buf = BytesMut::from(&hex("80030006 00000004 00000001")[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Ping { id: 1 }));

        // MAX_CONCURRENT_STREAMS = 100; INITIAL_WINDOW_SIZE = 64 KiB with PERSIST_VALUE.
        let mut buf = BytesMut::from(
            &hex("80030004 00000014 00000002 00000004 00000064 01000007 00010000")[..],
        );
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Settings {
                flags: 0,
                entries: vec![(0, 4, 100), (1, 7, 0x10000)],
            })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        let mut codec = Codec::new();
        // NOOP (SPDY/2's type 5), CREDENTIAL (type 10), a type never assigned, then a PING.
        let mut buf = BytesMut::from(
            &hex("80030005 00000000 8003000a 00000006 000102030405 8003ffff 01000001 ff")[..],
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        buf.extend_from_slice(&hex("80030006 00000004 0000000b"));
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Ping { id: 11 })
        );
    }

    #[test]
    fn other_versions_are_refused() {
        let mut buf = BytesMut::from(&hex("80020006 00000004 00000001")[..]);
        assert!(matches!(
            Codec::new().decode(&mut buf),
            Err(SpdyError::UnsupportedVersion(2))
        ));
        // Known from the header alone: no need to wait for the payload.
        let mut buf = BytesMut::from(&hex("80040001 00001000")[..]);
        assert!(matches!(
            Codec::new().decode(&mut buf),
            Err(SpdyError::UnsupportedVersion(4))
        ));
    }

    #[test]
    fn frames_over_the_limit_are_refused() {
        // The default takes anything the 24-bit length can say, and waits for it.
        let mut buf = BytesMut::from(&hex("00000001 00ffffff")[..]);
        assert_eq!(Codec::new().decode(&mut buf).unwrap(), None);

        let mut codec = Codec::new();
        codec.set_max_frame_len(1024);
        let mut buf = BytesMut::from(&hex("00000001 00000401")[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(SpdyError::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        ));

        let big = Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from(vec![0; MAX_FRAME_LEN + 1]),
        };
        let mut out = BytesMut::new();
        assert!(matches!(
            Codec::new().encode(&big, &mut out),
            Err(SpdyError::FrameTooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn a_header_block_that_inflates_too_far_is_refused() {
        let bomb = Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: vec![("x".into(), "a".repeat(1 << 20))],
        };
        let mut wire = encode_all(&mut Codec::new(), &[bomb]);
        assert!(wire.len() < 4096);
        let mut codec = Codec::new();
        codec.set_max_frame_len(64 * 1024);
        assert!(matches!(
            codec.decode(&mut wire),
            Err(SpdyError::HeaderBlockTooLarge { max: 65536 })
        ));
    }

    #[test]
    fn a_foreign_dictionary_is_refused() {
        let mut codec = Codec::new();
        codec
            .compressor
            .set_dictionary(b"not the spdy one")
            .unwrap();
        codec.dictionary_set = true;
        let mut wire = encode_all(
            &mut codec,
            &[Frame::Headers {
                stream_id: 1,
                flags: 0,
                headers: headers(&[("a", "b")]),
            }],
        );
        assert!(matches!(
            Codec::new().decode(&mut wire),
            Err(SpdyError::WrongDictionary(id)) if id != DICTIONARY_ID
        ));
    }

    #[test]
    fn malformed_frames_are_refused() {
        let cases = [
            ("80030003 00000004 00000001", "RST_STREAM"),
            ("80030006 00000008 00000001 00000000", "PING"),
            ("80030007 00000004 00000001", "GOAWAY"),
            ("80030009 00000004 00000001", "WINDOW_UPDATE"),
            ("80030004 0000000c 00000002 00000004 00000064", "SETTINGS"),
            ("80030004 00000000", "SETTINGS"),
            ("80030001 00000008 00000001 00000000", "SYN_STREAM"),
            ("80030002 00000002 0000", "SYN_REPLY"),
        ];
        for (wire, kind) in cases {
            let mut buf = BytesMut::from(&hex(wire)[..]);
            match Codec::new().decode(&mut buf) {
                Err(SpdyError::InvalidLength { frame, .. }) => assert_eq!(frame, kind),
                other => panic!("{wire}: {other:?}"),
            }
        }

        // Header blocks that inflate fine but do not parse.
        let blocks: [&[u8]; 5] = [
            b"",
            b"\0\0\0\x01\0\0\0\x01a",
            b"\0\0\0\x01\0\0\0\x01a\0\0\0\x01b!",
            b"\0\0\0\x01\0\0\0\0\0\0\0\0",
            b"\0\0\0\x01\0\0\0\x01\xff\0\0\0\0",
        ];
        for raw in blocks {
            let mut sender = Codec::new();
            sender.block = raw.to_vec();
            sender.deflate().unwrap();
            let mut buf = BytesMut::new();
            put_control_header(&mut buf, HEADERS, 0, 4 + sender.zblock.len() as u32);
            buf.put_u32(1);
            buf.extend_from_slice(&sender.zblock);
            assert!(
                matches!(
                    Codec::new().decode(&mut buf),
                    Err(SpdyError::MalformedHeaderBlock(_))
                ),
                "{raw:?}"
            );
        }

        // Not zlib at all.
        let mut buf = BytesMut::from(&hex("80030008 00000008 00000001 01020304")[..]);
        assert!(matches!(
            Codec::new().decode(&mut buf),
            Err(SpdyError::Decompress(_))
        ));
    }

    #[test]
    fn unrepresentable_frames_are_refused_whole() {
        let syn = |stream_id, priority, hs| Frame::SynStream {
            stream_id,
            associated_id: 0,
            priority,
            flags: 0,
            headers: hs,
        };
        let cases = [
            syn(0x8000_0000, 0, vec![]),
            syn(1, 8, vec![]),
            syn(1, 0, headers(&[("", "x")])),
            syn(1, 0, headers(&[("a", "x\0y")])),
            syn(1, 0, headers(&[("a", "x"), ("a", "")])),
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 0x8000_0000,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 0x100_0000, 1)],
            },
            Frame::Data {
                stream_id: u32::MAX,
                flags: 0,
                data: Bytes::new(),
            },
        ];
        let mut codec = Codec::new();
        for frame in cases {
            let mut out = BytesMut::new();
            assert!(codec.encode(&frame, &mut out).is_err(), "{frame:?}");
            assert!(out.is_empty(), "{frame:?}");
        }
        // None of those reached the compressor, so the peer's decompressor is still in step.
        let ok = syn(1, 0, headers(&[("a", "b")]));
        let mut wire = encode_all(&mut codec, std::slice::from_ref(&ok));
        assert_eq!(Codec::new().decode(&mut wire).unwrap(), Some(ok));
    }
}
