//! The few JSON writing primitives the bulk read's fast path needs
//! ([`super::plain`]), producing exactly the bytes `serde_json` does.
//!
//! `serde_json` escapes a string one byte at a time through an `io::Write`,
//! which was the largest single cost of encoding a million events; message
//! text is almost never escaped, so [`write_str`] checks eight bytes per
//! step for the three things JSON escapes (`"`, `\` and bytes below 0x20)
//! and copies clean runs whole. The escapes themselves are serde_json's:
//! the short forms `\b \t \n \f \r \" \\`, `\u00xx` with lower-case hex for
//! the other control characters, and everything else (DEL, non-ASCII,
//! U+2028) as is. The property tests hold the two byte-for-byte equal.

/// `0x0101…01`: one in every byte of a word.
const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
/// `0x8080…80`: the high bit of every byte of a word.
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Appends `s` as a JSON string, quotes included.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_str_contents(out, s);
    out.push(b'"');
}

/// Appends `s` escaped as the inside of a JSON string, without quotes
/// (so a string may be written in pieces).
pub fn write_str_contents(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Everything before `clean` has been written.
    let mut clean = 0;
    let mut at = 0;
    while at < bytes.len() {
        match find_escape(bytes, at) {
            None => break,
            Some(i) => {
                out.extend_from_slice(bytes.get(clean..i).unwrap_or_default());
                write_escape(out, bytes[i]);
                clean = i + 1;
                at = i + 1;
            }
        }
    }
    out.extend_from_slice(bytes.get(clean..).unwrap_or_default());
}

/// The index of the first byte at or after `from` that JSON escapes.
fn find_escape(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    let mut words = rest.chunks_exact(8);
    let mut base = from;
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        let mask = escape_mask(u64::from_le_bytes(w));
        if mask != 0 {
            // The lowest flagged byte is exact (false positives of the
            // borrow trick only ever sit above a true one).
            return Some(base + (mask.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| needs_escape(b))
        .map(|i| base + i)
}

/// High bit set in each byte of `w` (little-endian) that is `"`, `\` or
/// below 0x20, using the classic "has zero byte / has byte less than"
/// word tricks.
fn escape_mask(w: u64) -> u64 {
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b;
    (control | quote | backslash) & HIGHS
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn write_escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0C => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xF)],
            ]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

/// Appends `n` in decimal, as serde_json writes an `i64`, two digits per
/// division (dates in milliseconds have 13 digits).
pub fn write_i64(out: &mut Vec<u8>, n: i64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut rest = n.unsigned_abs();
    while rest >= 100 {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if rest >= 10 {
        let pair = rest as usize * 2;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buf[at] = b'0' + rest as u8;
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(buf.get(at..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).expect("escaping keeps UTF-8")
    }

    fn serde(s: &str) -> String {
        serde_json::to_string(s).expect("a str always encodes")
    }

    /// Characters that matter to an escaper, mixed with ordinary ones.
    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            (0u8..0x20).prop_map(char::from),
            Just('"'),
            Just('\\'),
            Just('/'),
            Just('\u{7F}'),
            Just('\u{2028}'),
            Just('\u{2029}'),
            Just('\u{FFFC}'),
            Just('\u{FFFD}'),
            Just('😀'),
            Just('é'),
            Just('日'),
            proptest::char::range(' ', '~'),
            any::<char>(),
        ]
    }

    proptest! {
        #[test]
        fn strings_escape_exactly_as_serde_json_does(
            s in proptest::collection::vec(tricky_char(), 0..80)
                .prop_map(|cs| cs.into_iter().collect::<String>())
        ) {
            prop_assert_eq!(ours(&s), serde(&s));
        }

        #[test]
        fn arbitrary_strings_escape_exactly_as_serde_json_does(s in any::<String>()) {
            prop_assert_eq!(ours(&s), serde(&s));
        }

        #[test]
        fn integers_print_exactly_as_serde_json_does(n in any::<i64>()) {
            let mut out = Vec::new();
            write_i64(&mut out, n);
            prop_assert_eq!(out, serde_json::to_vec(&n).expect("an i64 encodes"));
        }
    }

    #[test]
    fn every_byte_value_and_position_in_a_word() {
        // Each ASCII byte at each offset of a 17-byte string, so the word
        // loop and the tail both see it at every lane.
        for b in 0u8..0x80 {
            for at in 0..17 {
                let mut s = vec![b'a'; 17];
                s[at] = b;
                let s = String::from_utf8(s).expect("ASCII");
                assert_eq!(ours(&s), serde(&s), "byte {b:#04x} at {at}");
            }
        }
    }

    #[test]
    fn integer_edges() {
        for n in [0, 1, -1, 9, 10, -10, i64::MAX, i64::MIN, 1_794_601_606_876] {
            let mut out = Vec::new();
            write_i64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
