//! HPACK (RFC 7541) as far as this layer needs it: a decoder that follows the client's encoder
//! (its dynamic table, size updates and Huffman-coded strings), and an encoder of literals that
//! never touches the dynamic table.

use std::borrow::Cow;
use std::collections::VecDeque;

/// Why a header block cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("the block ends inside a field")]
    Truncated,
    #[error("an integer of more than 5 bytes")]
    IntegerTooLong,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("a table size update to {0}, over the {1} allowed")]
    TableTooLarge(usize, usize),
    #[error("a table size update after a field")]
    LateSizeUpdate,
    #[error("an invalid Huffman-coded string")]
    Huffman,
}

/// Follows one client's HPACK encoder through every header block it sends.
pub struct Decoder {
    /// Newest entry first.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// The table's size as RFC 7541 §4.1 counts it.
    size: usize,
    /// The size the encoder chose (at most `limit`).
    max_size: usize,
    /// The server's SETTINGS_HEADER_TABLE_SIZE.
    limit: usize,
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    /// Decodes one whole header block, handing each field to `field` in order.
    pub fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut at_start = true;
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                let (index, rest) = integer(block, 7)?;
                let (name, value) = self.entry(index)?;
                field(name, value);
                block = rest;
            } else if first & 0x40 != 0 {
                let (name, value, used) = self.literal(block, 6)?;
                field(&name, &value);
                let entry = (name.into_owned(), value.into_owned());
                self.insert(entry);
                block = block.get(used..).unwrap_or_default();
            } else if first & 0x20 != 0 {
                if !at_start {
                    return Err(HpackError::LateSizeUpdate);
                }
                let (size, rest) = integer(block, 5)?;
                self.resize(size)?;
                block = rest;
                continue;
            } else {
                // Without indexing (0000) or never indexed (0001): the table stays as it is.
                let (name, value, used) = self.literal(block, 4)?;
                field(&name, &value);
                block = block.get(used..).unwrap_or_default();
            }
            at_start = false;
        }
        Ok(())
    }

    /// A field by its index in the static table and then the dynamic one.
    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if let Some((name, value)) = index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
            return Ok((name.as_bytes(), value.as_bytes()));
        }
        index
            .checked_sub(STATIC_TABLE.len() + 1)
            .and_then(|i| self.table.get(i))
            .map(|(name, value)| (name.as_slice(), value.as_slice()))
            .ok_or(HpackError::BadIndex(index))
    }

    /// A literal field: name by index (non-zero) or as a string, then the value string; and
    /// how many bytes of `block` it took.
    fn literal<'a>(&'a self, block: &'a [u8], prefix_bits: u32) -> Result<Literal<'a>, HpackError> {
        let (index, rest) = integer(block, prefix_bits)?;
        let (name, rest) = match index {
            0 => string(rest)?,
            index => (Cow::Borrowed(self.entry(index)?.0), rest),
        };
        let (value, rest) = string(rest)?;
        Ok((name, value, block.len() - rest.len()))
    }

    fn insert(&mut self, (name, value): (Vec<u8>, Vec<u8>)) {
        let size = entry_size(&name, &value);
        if size > self.max_size {
            // RFC 7541 §4.4: an entry larger than the table empties it.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(self.max_size - size);
        self.size += size;
        self.table.push_front((name, value));
    }

    fn resize(&mut self, size: usize) -> Result<(), HpackError> {
        if size > self.limit {
            return Err(HpackError::TableTooLarge(size, self.limit));
        }
        self.max_size = size;
        self.evict(size);
        Ok(())
    }

    /// Drops the oldest entries until the table takes at most `size`.
    fn evict(&mut self, size: usize) {
        while self.size > size {
            match self.table.pop_back() {
                Some((name, value)) => self.size -= entry_size(&name, &value),
                None => self.size = 0,
            }
        }
    }
}

/// A literal field's name and value, and how many bytes of the block it took.
type Literal<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>, usize);

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// An integer with an N-bit prefix (RFC 7541 §5.1), and the bytes after it. Up to 4
/// continuation bytes: far more than any size or index a header block can need.
fn integer(block: &[u8], prefix_bits: u32) -> Result<(usize, &[u8]), HpackError> {
    let (&first, mut rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let max_prefix = (1usize << prefix_bits) - 1;
    let mut value = usize::from(first) & max_prefix;
    if value < max_prefix {
        return Ok((value, rest));
    }
    for shift in [0, 7, 14, 21] {
        let (&byte, after) = rest.split_first().ok_or(HpackError::Truncated)?;
        rest = after;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value, rest));
        }
    }
    Err(HpackError::IntegerTooLong)
}

/// A string literal (RFC 7541 §5.2), and the bytes after it.
fn string(block: &[u8]) -> Result<(Cow<'_, [u8]>, &[u8]), HpackError> {
    let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
    let (len, rest) = integer(block, 7)?;
    if len > rest.len() {
        return Err(HpackError::Truncated);
    }
    let (s, rest) = rest.split_at(len);
    let s = if huffman {
        Cow::Owned(huffman_decode(s)?)
    } else {
        Cow::Borrowed(s)
    };
    Ok((s, rest))
}

/// The bit length of each symbol's code (RFC 7541 Appendix B), for bytes 0 to 255 and EOS (256).
/// The code is canonical: within a length, codes go up with the symbol, and each length's first
/// code follows the previous length's last.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];
const LONGEST_CODE: usize = 30;

/// The canonical code's tables: per bit length, the first code, how many codes, and where
/// their symbols start in `symbols` (symbols sorted by code).
struct Canonical {
    first: [u32; LONGEST_CODE + 1],
    count: [u32; LONGEST_CODE + 1],
    offset: [u16; LONGEST_CODE + 1],
    symbols: [u16; 257],
}

const fn canonical() -> Canonical {
    let mut c = Canonical {
        first: [0; LONGEST_CODE + 1],
        count: [0; LONGEST_CODE + 1],
        offset: [0; LONGEST_CODE + 1],
        symbols: [0; 257],
    };
    let mut next = 0;
    let mut code = 0;
    let mut len = 1;
    while len <= LONGEST_CODE {
        code <<= 1;
        c.first[len] = code;
        c.offset[len] = next;
        let mut symbol = 0;
        while symbol < 257 {
            if CODE_LENGTHS[symbol] as usize == len {
                c.symbols[next as usize] = symbol as u16;
                next += 1;
                c.count[len] += 1;
                code += 1;
            }
            symbol += 1;
        }
        len += 1;
    }
    c
}

static HUFFMAN: Canonical = canonical();

/// Decodes a Huffman-coded string (RFC 7541 §5.2): no EOS inside, at most 7 bits of padding,
/// all ones.
fn huffman_decode(coded: &[u8]) -> Result<Vec<u8>, HpackError> {
    let mut out = Vec::with_capacity(coded.len() * 8 / 5);
    let mut code = 0u32;
    let mut len = 0;
    for byte in coded {
        for bit in (0..8).rev() {
            code = code << 1 | u32::from(byte >> bit & 1);
            len += 1;
            let index = code.wrapping_sub(HUFFMAN.first[len]);
            if index < HUFFMAN.count[len] {
                let symbol = HUFFMAN.symbols[usize::from(HUFFMAN.offset[len]) + index as usize];
                // Any other symbol is a byte.
                let byte = u8::try_from(symbol).map_err(|_| HpackError::Huffman)?;
                out.push(byte);
                code = 0;
                len = 0;
            } else if len == LONGEST_CODE {
                return Err(HpackError::Huffman);
            }
        }
    }
    let padding_ok = len <= 7 && code == (1 << len) - 1;
    padding_ok.then_some(out).ok_or(HpackError::Huffman)
}

/// HPACK's static table (RFC 7541 Appendix A), index 1 first.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Encodes one field without touching the dynamic table: the static entry when both name and
/// value match one, else a literal without indexing, naming a static entry where one has the
/// name. Strings go raw (no Huffman).
pub fn encode_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let mut name_index = None;
    for (i, (n, v)) in STATIC_TABLE.iter().enumerate() {
        if n.as_bytes() == name {
            if !v.is_empty() && v.as_bytes() == value {
                encode_integer(i + 1, 7, 0x80, out);
                return;
            }
            name_index = name_index.or(Some(i + 1));
        }
    }
    match name_index {
        Some(index) => encode_integer(index, 4, 0x00, out),
        None => {
            out.push(0x00);
            encode_string(name, out);
        }
    }
    encode_string(value, out);
}

pub(super) fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// An integer with an N-bit prefix (RFC 7541 §5.1), `flags` in the first byte's other bits.
pub(super) fn encode_integer(mut value: usize, prefix_bits: u32, flags: u8, out: &mut Vec<u8>) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        // Below the prefix's maximum, so it fits the byte.
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix as u8);
    value -= max_prefix;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests;
