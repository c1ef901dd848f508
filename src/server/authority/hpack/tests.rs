//! The decoder against RFC 7541's examples and against an independent decoder (loona-hpack).

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
    let mut fields = Vec::new();
    decoder.decode(block, |n, v| fields.push((n.to_vec(), v.to_vec())))?;
    Ok(fields)
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Each symbol's code and length, from the canonical construction.
fn codes() -> Vec<(u32, u8)> {
    let mut codes = vec![(0, 0); 257];
    for len in 1..=LONGEST_CODE {
        for i in 0..HUFFMAN.count[len] {
            let symbol = HUFFMAN.symbols[usize::from(HUFFMAN.offset[len]) + i as usize];
            codes[usize::from(symbol)] = (HUFFMAN.first[len] + i, len as u8);
        }
    }
    codes
}

fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let codes = codes();
    let mut bits: Vec<bool> = Vec::new();
    for &b in s {
        let (code, len) = codes[usize::from(b)];
        bits.extend((0..len).rev().map(|i| code >> i & 1 == 1));
    }
    while !bits.len().is_multiple_of(8) {
        bits.push(true);
    }
    bits.chunks(8)
        .map(|byte| byte.iter().fold(0u8, |acc, &bit| acc << 1 | u8::from(bit)))
        .collect()
}

/// A string literal, Huffman-coded or raw.
fn string_literal(s: &[u8], huffman: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if huffman {
        let coded = huffman_encode(s);
        encode_integer(coded.len(), 7, 0x80, &mut out);
        out.extend(coded);
    } else {
        encode_string(s, &mut out);
    }
    out
}

#[test]
fn the_huffman_code_is_complete_and_ends_with_eos() {
    let kraft: u64 = CODE_LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
    assert_eq!(kraft, 1 << 30);
    assert_eq!(codes()[256], ((1 << 30) - 1, 30));
    assert_eq!(codes()[usize::from(b'a')], (0b00011, 5));
    assert_eq!(codes()[usize::from(b':')], (0b1011100, 7));
}

#[test]
fn huffman_strings_of_rfc_7541_appendix_c() {
    for (coded, plain) in [
        ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
        ("a8eb 1064 9cbf", "no-cache"),
        ("25a8 49e9 5ba9 7d7f", "custom-key"),
        ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
        ("6402", "302"),
        ("aec3 771a 4b", "private"),
        (
            "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
            "Mon, 21 Oct 2013 20:13:21 GMT",
        ),
        (
            "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
            "https://www.example.com",
        ),
    ] {
        assert_eq!(huffman_decode(&hex(coded)).unwrap(), plain.as_bytes());
        assert_eq!(huffman_encode(plain.as_bytes()), hex(coded));
    }
}

#[test]
fn every_byte_decodes_as_loona_hpack_decodes_it() {
    let all: Vec<u8> = (0..=255).collect();
    let mut strings: Vec<Vec<u8>> = all.iter().map(|&b| vec![b]).collect();
    strings.push(all.clone());
    strings.push(all.iter().rev().copied().collect());
    for s in strings {
        let block = [
            &[0x00][..],
            &string_literal(b"x", false),
            &string_literal(&s, true),
        ]
        .concat();
        let theirs = loona_hpack::Decoder::new().decode(&block).unwrap();
        assert_eq!(theirs, [(b"x".to_vec(), s.clone())]);
        assert_eq!(decode(&mut Decoder::new(4096), &block).unwrap(), theirs);
    }
}

#[test]
fn bad_huffman_strings_are_refused() {
    // EOS inside.
    assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xfc]).is_err());
    // Eight bits of padding.
    assert!(huffman_decode(&[0x1f, 0xff]).is_err());
    // Padding that is not all ones: 'a' (00011) then 000.
    assert!(huffman_decode(&[0b0001_1000]).is_err());
    assert_eq!(huffman_decode(&[0b0001_1111]).unwrap(), b"a");
    assert_eq!(huffman_decode(&[]).unwrap(), b"");
}

#[test]
fn requests_of_rfc_7541_appendix_c3_and_c4() {
    let first = fields(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ]);
    let mut second = first.clone();
    second.extend(fields(&[("cache-control", "no-cache")]));
    let third = fields(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ]);
    for blocks in [
        [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ],
        [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ],
    ] {
        let mut decoder = Decoder::new(4096);
        assert_eq!(decode(&mut decoder, &hex(blocks[0])).unwrap(), first);
        assert_eq!(decoder.size, 57);
        assert_eq!(decode(&mut decoder, &hex(blocks[1])).unwrap(), second);
        assert_eq!(decoder.size, 110);
        assert_eq!(decode(&mut decoder, &hex(blocks[2])).unwrap(), third);
        assert_eq!(decoder.size, 164);
        assert_eq!(decoder.table.len(), 3);
    }
}

#[test]
fn entries_are_evicted_oldest_first() {
    let mut decoder = Decoder::new(4096);
    let block = [
        size_update(100),
        // 32 + 1 + 30 = 63 each: the second evicts the first.
        literal_new(b"a", &[b'1'; 30]),
        literal_new(b"b", &[b'2'; 30]),
    ]
    .concat();
    decode(&mut decoder, &block).unwrap();
    assert_eq!(decoder.table.len(), 1);
    assert_eq!(decoder.size, 63);
    assert_eq!(
        decode(&mut decoder, &[0xbe]).unwrap(),
        [(b"b".to_vec(), vec![b'2'; 30])]
    );
    assert_eq!(decode(&mut decoder, &[0xbf]), Err(HpackError::BadIndex(63)));
    // An entry larger than the table empties it.
    decode(&mut decoder, &literal_new(b"c", &[b'3'; 80])).unwrap();
    assert_eq!((decoder.table.len(), decoder.size), (0, 0));
}

fn size_update(size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_integer(size, 5, 0x20, &mut out);
    out
}

fn literal_new(name: &[u8], value: &[u8]) -> Vec<u8> {
    [
        &[0x40][..],
        &string_literal(name, false),
        &string_literal(value, false),
    ]
    .concat()
}

#[test]
fn malformed_blocks_are_refused() {
    let mut d = Decoder::new(4096);
    assert_eq!(decode(&mut d, &[0x80]), Err(HpackError::BadIndex(0)));
    assert_eq!(decode(&mut d, &[0xbe]), Err(HpackError::BadIndex(62)));
    assert_eq!(
        decode(&mut d, &[0x41, 0x05, b'a']),
        Err(HpackError::Truncated)
    );
    assert_eq!(decode(&mut d, &[0xff]), Err(HpackError::Truncated));
    assert_eq!(
        decode(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        Err(HpackError::IntegerTooLong)
    );
    assert_eq!(
        decode(&mut d, &size_update(4097)),
        Err(HpackError::TableTooLarge(4097, 4096))
    );
    assert_eq!(
        decode(&mut d, &[&[0x82][..], &size_update(0)].concat()),
        Err(HpackError::LateSizeUpdate)
    );
    // Size updates at the start, one after another, are fine.
    let block = [size_update(0), size_update(4096), vec![0x82]].concat();
    assert_eq!(
        decode(&mut d, &block).unwrap(),
        fields(&[(":method", "GET")])
    );
}

#[test]
fn static_table_is_hpacks() {
    let mut loona = loona_hpack::Decoder::new();
    let mut ours = Decoder::new(4096);
    for (i, (name, value)) in STATIC_TABLE.iter().enumerate() {
        let block = [0x80 | (i as u8 + 1)];
        let expected = fields(&[(name, value)]);
        assert_eq!(loona.decode(&block).unwrap(), expected);
        assert_eq!(decode(&mut ours, &block).unwrap(), expected);
    }
}

#[test]
fn integers_encode_as_rfc_7541_shows() {
    let encode = |value, prefix| {
        let mut out = Vec::new();
        encode_integer(value, prefix, 0, &mut out);
        out
    };
    assert_eq!(encode(10, 5), [0x0a]);
    assert_eq!(encode(1337, 5), [0x1f, 0x9a, 0x0a]);
    assert_eq!(encode(42, 8), [0x2a]);
    assert_eq!(encode(127, 7), [0x7f, 0x00]);
    for (value, prefix) in [(10, 5), (1337, 5), (42, 8), (127, 7), (1 << 20, 4)] {
        assert_eq!(
            integer(&encode(value, prefix), prefix).unwrap(),
            (value, &[][..])
        );
    }
}

#[test]
fn encoded_fields_decode_to_themselves() {
    let list = fields(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/runtime.v1.RuntimeService/Version"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "1999m"),
        ("x-long", &"v".repeat(300)),
    ]);
    let mut block = Vec::new();
    for (n, v) in &list {
        encode_field(n, v, &mut block);
    }
    let mut decoder = Decoder::new(4096);
    assert_eq!(decode(&mut decoder, &block).unwrap(), list);
    assert!(decoder.table.is_empty());
    // POST and http are whole static entries.
    assert_eq!(&block[..2], [0x83, 0x86]);
}

/// Random blocks of every representation, decoded by us and by loona-hpack: the same fields, or
/// both refuse.
#[test]
fn random_blocks_decode_as_loona_hpack_decodes_them() {
    let mut seed: u32 = 7;
    let mut next = move |n: u32| {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) % n
    };
    let names: [&[u8]; 4] = [b"x-a", b"x-bb", b"grpc-timeout", b":authority"];
    // loona-hpack is slow with Huffman-coded strings: a few hundred blocks.
    let mut agreed = 0;
    for _ in 0..40 {
        let mut ours = Decoder::new(4096);
        let mut theirs = loona_hpack::Decoder::new();
        theirs.set_max_allowed_table_size(4096);
        for _ in 0..20 {
            let mut block = Vec::new();
            if next(4) == 0 {
                block.extend(size_update(next(4200) as usize));
            }
            for _ in 0..1 + next(6) {
                let value: Vec<u8> = (0..next(80)).map(|_| next(256) as u8).collect();
                let value = string_literal(&value, next(2) == 0);
                let name_index = next(3) as usize * 20 + 1;
                let name = string_literal(names[next(4) as usize], next(2) == 0);
                match next(5) {
                    0 => encode_integer(1 + next(75) as usize, 7, 0x80, &mut block),
                    1 => {
                        encode_integer(name_index, 6, 0x40, &mut block);
                        block.extend(&value);
                    }
                    2 => block.extend([&[0x40][..], &name, &value].concat()),
                    3 => block.extend([&[0x10][..], &name, &value].concat()),
                    _ => {
                        encode_integer(name_index, 4, 0x00, &mut block);
                        block.extend(&value);
                    }
                }
            }
            let a = decode(&mut ours, &block);
            let b = theirs.decode(&block);
            assert_eq!(a.is_ok(), b.is_ok(), "{a:?} / {b:?} for {block:02x?}");
            match (a, b) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                _ => break,
            }
            agreed += 1;
        }
    }
    assert!(agreed > 100, "only {agreed} blocks decoded");
}

#[test]
fn garbage_never_panics() {
    let mut seed: u32 = 99;
    let mut next = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 16) as u8
    };
    let mut decoder = Decoder::new(4096);
    for _ in 0..5000 {
        let len = usize::from(next() % 64);
        let block: Vec<u8> = (0..len).map(|_| next()).collect();
        let _ = decode(&mut decoder, &block);
        let _ = huffman_decode(&block);
    }
}
