//! Writes `attributedBody` blobs the way Messages does.
//!
//! This module owns the simulator's side of `message.attributedBody`: the `NSArchiver`
//! typedstream of an `NSMutableAttributedString` holding the text and one attribute run that
//! marks the whole text as message part 0. The bytes follow the layout Messages writes for a plain
//! text message (header, class chains, back-references, integer forms), so the daemon's reader in
//! [`crate::chatdb::typedstream`] is exercised on what it will meet on a real Mac, including the
//! 128+ byte length forms and UTF-16 run lengths.

/// `04` streamer version, `0B` + `streamtyped` signature, `81 E8 03` system version 1000.
const HEADER: [u8; 16] = *b"\x04\x0bstreamtyped\x81\xe8\x03";

const TAG_INT16: u8 = 0x81;
const TAG_INT32: u8 = 0x82;
const TAG_NEW: u8 = 0x84;
const TAG_NIL: u8 = 0x85;
const TAG_END: u8 = 0x86;

/// The key Messages puts on every run: the part index that tapbacks and edits address.
const PART_ATTRIBUTE: &str = "__kIMMessagePartAttributeName";

// Back-references count entries in order of first appearance, from byte 0x92 for entry 0.
// Type encodings and class names share the string table:
const STR_OBJECT_TYPE: u8 = 0; // "@"
//   1 NSMutableAttributedString, 2 NSAttributedString, 3 NSObject,
//   4 NSMutableString, 5 NSString,
const STR_BYTES_TYPE: u8 = 6; // "+"
//   7 "iI", 8 NSDictionary,
const STR_INT_TYPE: u8 = 9; // "i"
//   10 NSNumber, 11 NSValue, 12 "*".
// Classes and objects share the object table; an object takes its slot before its class chain:
//   0 the root attributed string, 1 class NSMutableAttributedString, 2 class NSAttributedString,
const OBJ_NSOBJECT_CLASS: u8 = 3;
//   4 the NSMutableString, 5 class NSMutableString,
const OBJ_NSSTRING_CLASS: u8 = 6;
//   7 the NSDictionary, 8 class NSDictionary, 9 the key NSString, 10 the NSNumber,
//   11 class NSNumber, 12 class NSValue, 13 the C string "i" inside the NSNumber.

/// The typedstream bytes Messages stores for a plain text message.
///
/// # Panics
///
/// If `text` is 4 GiB or longer, which typedstream lengths cannot express.
pub fn attributed_body(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 240);
    out.extend_from_slice(&HEADER);

    // Root: one `@` value, a new NSMutableAttributedString.
    new_string(&mut out, "@");
    out.push(TAG_NEW);
    new_class(&mut out, "NSMutableAttributedString", 0);
    new_class(&mut out, "NSAttributedString", 0);
    new_class(&mut out, "NSObject", 0);
    out.push(TAG_NIL);

    // Its string: NSMutableString v1 -> NSString v1 -> NSObject (already archived).
    out.push(reference(STR_OBJECT_TYPE));
    out.push(TAG_NEW);
    new_class(&mut out, "NSMutableString", 1);
    new_class(&mut out, "NSString", 1);
    out.push(reference(OBJ_NSOBJECT_CLASS));
    new_string(&mut out, "+");
    push_length(&mut out, text.len());
    out.extend_from_slice(text.as_bytes());
    out.push(TAG_END);

    if text.is_empty() {
        // An empty body has no runs; only the root is left to close.
        out.push(TAG_END);
        return out;
    }

    // One run: attribute set 1 covering the whole text, counted in UTF-16 units.
    new_string(&mut out, "iI");
    push_length(&mut out, 1);
    push_length(&mut out, text.encode_utf16().count());

    // Attribute set 1, archived on first use: NSDictionary v0 -> NSObject.
    out.push(reference(STR_OBJECT_TYPE));
    out.push(TAG_NEW);
    new_class(&mut out, "NSDictionary", 0);
    out.push(reference(OBJ_NSOBJECT_CLASS));
    new_string(&mut out, "i");
    push_length(&mut out, 1); // entry count

    // Key: an NSString whose class and `+` type are both back-references.
    out.push(reference(STR_OBJECT_TYPE));
    out.push(TAG_NEW);
    out.push(reference(OBJ_NSSTRING_CLASS));
    out.push(reference(STR_BYTES_TYPE));
    push_length(&mut out, PART_ATTRIBUTE.len());
    out.extend_from_slice(PART_ATTRIBUTE.as_bytes());
    out.push(TAG_END);

    // Value: NSNumber v0 -> NSValue v0 -> NSObject, archived as its C type string then the value.
    out.push(reference(STR_OBJECT_TYPE));
    out.push(TAG_NEW);
    new_class(&mut out, "NSNumber", 0);
    new_class(&mut out, "NSValue", 0);
    out.push(reference(OBJ_NSOBJECT_CLASS));
    new_string(&mut out, "*");
    out.push(TAG_NEW); // a new C string, whose characters reuse the shared "i"
    out.push(reference(STR_INT_TYPE));
    out.push(reference(STR_INT_TYPE)); // the value's type, "i"
    out.push(0); // part 0
    out.push(TAG_END); // NSNumber

    out.push(TAG_END); // NSDictionary
    out.push(TAG_END); // the root attributed string
    out
}

/// One piece of a message body: text, or an attachment's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyPart {
    /// Text of its own message part.
    Text(String),
    /// An attachment, by its transfer GUID: stored as one U+FFFC carrying
    /// `__kIMFileTransferGUIDAttributeName`.
    Attachment(String),
}

/// The attribute Messages puts on each U+FFFC: which file transfer sits there.
const FILE_TRANSFER_ATTRIBUTE: &str = "__kIMFileTransferGUIDAttributeName";

/// The typedstream Messages stores for a body made of text and attachment
/// parts, each part its own attribute run (part index, and for attachments
/// the transfer GUID), so a reader can tie each U+FFFC to its file in order.
pub fn attributed_body_parts(parts: &[BodyPart]) -> Vec<u8> {
    let mut text = String::new();
    for part in parts {
        match part {
            BodyPart::Text(t) => text.push_str(t),
            BodyPart::Attachment(_) => text.push('\u{FFFC}'),
        }
    }
    let mut a = Archiver::default();
    a.out.extend_from_slice(&HEADER);
    a.shared_string("@");
    a.new_object();
    a.class_chain(&[
        ("NSMutableAttributedString", 0),
        ("NSAttributedString", 0),
        ("NSObject", 0),
    ]);
    a.string_object(&text, true);
    for (index, part) in parts.iter().enumerate() {
        let (units, guid) = match part {
            BodyPart::Text(t) => (t.encode_utf16().count(), None),
            BodyPart::Attachment(g) => (1, Some(g.as_str())),
        };
        if units == 0 {
            continue;
        }
        a.shared_string("iI");
        push_length(&mut a.out, index + 1);
        push_length(&mut a.out, units);
        // Attribute set `index + 1`, new on first use.
        a.shared_string("@");
        a.new_object();
        a.class_chain(&[("NSDictionary", 0), ("NSObject", 0)]);
        a.shared_string("i");
        push_length(&mut a.out, if guid.is_some() { 2 } else { 1 });
        a.shared_string("@");
        a.string_object(PART_ATTRIBUTE, false);
        a.shared_string("@");
        a.number_object(index);
        if let Some(guid) = guid {
            a.shared_string("@");
            a.string_object(FILE_TRANSFER_ATTRIBUTE, false);
            a.shared_string("@");
            a.string_object(guid, false);
        }
        a.out.push(TAG_END); // NSDictionary
    }
    a.out.push(TAG_END); // root
    a.out
}

/// A small typedstream writer that keeps the two reference tables, so any
/// sequence of objects gets correct back-references.
#[derive(Default)]
struct Archiver {
    out: Vec<u8>,
    strings: Vec<String>,
    /// Classes by name with their slot in the object table.
    classes: Vec<(String, usize)>,
    /// Entries in the object table (classes, objects, C strings).
    shared: usize,
}

impl Archiver {
    fn shared_string(&mut self, s: &str) {
        if let Some(i) = self.strings.iter().position(|x| x == s) {
            self.reference(i);
        } else {
            self.strings.push(s.to_owned());
            new_string(&mut self.out, s);
        }
    }

    fn reference(&mut self, index: usize) {
        // Back-references are integers counted from 0x92; larger indexes use the integer forms.
        let value = index as i64 - 110;
        if let Ok(byte) = i8::try_from(value)
            && !(-128..=-111).contains(&byte)
        {
            self.out.push(byte.to_le_bytes()[0]);
        } else if let Ok(short) = i16::try_from(value) {
            self.out.push(TAG_INT16);
            self.out.extend_from_slice(&short.to_le_bytes());
        } else {
            self.out.push(TAG_INT32);
            self.out
                .extend_from_slice(&i32::try_from(value).unwrap_or(i32::MAX).to_le_bytes());
        }
    }

    fn new_object(&mut self) {
        self.out.push(TAG_NEW);
        self.shared += 1;
    }

    /// A class chain, most derived first; stops at the first class already archived.
    fn class_chain(&mut self, chain: &[(&str, u8)]) {
        for (name, version) in chain {
            if let Some(&(_, slot)) = self.classes.iter().find(|(n, _)| n == name) {
                self.reference(slot);
                return;
            }
            self.out.push(TAG_NEW);
            self.classes.push(((*name).to_owned(), self.shared));
            self.shared += 1;
            self.shared_string(name);
            self.out.push(*version);
        }
        self.out.push(TAG_NIL);
    }

    fn string_object(&mut self, s: &str, mutable: bool) {
        if mutable {
            self.shared_string("@");
        }
        self.new_object();
        if mutable {
            self.class_chain(&[("NSMutableString", 1), ("NSString", 1), ("NSObject", 0)]);
        } else {
            self.class_chain(&[("NSString", 1), ("NSObject", 0)]);
        }
        self.shared_string("+");
        push_length(&mut self.out, s.len());
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(TAG_END);
    }

    fn number_object(&mut self, value: usize) {
        self.new_object();
        self.class_chain(&[("NSNumber", 0), ("NSValue", 0), ("NSObject", 0)]);
        self.shared_string("*");
        self.out.push(TAG_NEW);
        self.shared += 1;
        self.shared_string("i");
        self.shared_string("i");
        push_length(&mut self.out, value);
        self.out.push(TAG_END);
    }
}

/// A back-reference to table entry `index` (single-byte form; these tables stay small).
const fn reference(index: u8) -> u8 {
    0x92 + index
}

/// A new shared string: type encodings and class names.
fn new_string(out: &mut Vec<u8>, string: &str) {
    out.push(TAG_NEW);
    push_length(out, string.len());
    out.extend_from_slice(string.as_bytes());
}

/// A new class entry: its name as a new shared string, then its version.
fn new_class(out: &mut Vec<u8>, name: &str, version: u8) {
    out.push(TAG_NEW);
    new_string(out, name);
    out.push(version);
}

/// A non-negative integer in the narrowest form Apple uses: one byte below 128, then 16, then 32 bits.
fn push_length(out: &mut Vec<u8>, value: usize) {
    if let Ok(byte) = u8::try_from(value)
        && byte < 0x80
    {
        out.push(byte);
    } else if let Ok(short) = u16::try_from(value) {
        out.push(TAG_INT16);
        out.extend_from_slice(&short.to_le_bytes());
    } else {
        let long = u32::try_from(value).expect("typedstream lengths are at most 32 bits");
        out.push(TAG_INT32);
        out.extend_from_slice(&long.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chatdb::typedstream::decode_text;

    #[test]
    fn starts_with_the_streamtyped_header() {
        let body = attributed_body("hi");
        assert_eq!(
            body.get(..16),
            Some(
                &[
                    0x04, 0x0B, b's', b't', b'r', b'e', b'a', b'm', b't', b'y', b'p', b'e', b'd',
                    0x81, 0xE8, 0x03
                ][..]
            )
        );
        // Then the root's type string `@` and a new object.
        assert_eq!(body.get(16..20), Some(&[0x84, 0x01, 0x40, 0x84][..]));
    }

    #[test]
    fn short_text_layout_is_exact() {
        let body = attributed_body("Noter test");
        let mut expected = HEADER.to_vec();
        expected.extend_from_slice(b"\x84\x01@\x84");
        expected.extend_from_slice(b"\x84\x84\x19NSMutableAttributedString\x00");
        expected.extend_from_slice(b"\x84\x84\x12NSAttributedString\x00");
        expected.extend_from_slice(b"\x84\x84\x08NSObject\x00\x85");
        expected.extend_from_slice(b"\x92\x84\x84\x84\x0fNSMutableString\x01");
        expected.extend_from_slice(b"\x84\x84\x08NSString\x01\x95\x84\x01+");
        expected.extend_from_slice(b"\x0aNoter test\x86");
        expected.extend_from_slice(b"\x84\x02iI\x01\x0a");
        expected.extend_from_slice(b"\x92\x84\x84\x84\x0cNSDictionary\x00\x95\x84\x01i\x01");
        expected.extend_from_slice(b"\x92\x84\x98\x98\x1d__kIMMessagePartAttributeName\x86");
        expected.extend_from_slice(b"\x92\x84\x84\x84\x08NSNumber\x00\x84\x84\x07NSValue\x00\x95");
        expected.extend_from_slice(b"\x84\x01*\x84\x9b\x9b\x00\x86\x86\x86");
        assert_eq!(body, expected);
    }

    #[test]
    fn body_of_200_bytes_uses_the_16_bit_length() {
        let text = "a".repeat(200);
        let body = attributed_body(&text);
        let marker = b"\x84\x01+";
        let at = body
            .windows(marker.len())
            .position(|window| window == marker)
            .expect("the string object has a `+` type string");
        let length_at = at + marker.len();
        assert_eq!(
            body.get(length_at..length_at + 3),
            Some(&[0x81, 0xC8, 0x00][..])
        );
        assert_eq!(decode_text(&body), Ok(text));
    }

    #[test]
    fn run_length_counts_utf16_units() {
        // 👋 is 4 UTF-8 bytes and 2 UTF-16 units; "a👋" is 5 bytes, 3 units.
        let body = attributed_body("a👋");
        let marker = b"\x84\x02iI";
        let at = body
            .windows(marker.len())
            .position(|window| window == marker)
            .expect("the run has an `iI` type string");
        assert_eq!(body.get(at + 4..at + 6), Some(&[0x01, 0x03][..]));
        assert_eq!(body.get(at - 6..at - 1), Some("a👋".as_bytes()));
        assert_eq!(body.get(at - 7), Some(&0x05));
    }

    #[test]
    fn long_run_lengths_use_the_16_bit_form() {
        let text = "日".repeat(300); // 900 bytes, 300 UTF-16 units
        let body = attributed_body(&text);
        assert!(body.windows(3).any(|window| window == [0x81, 0x84, 0x03]));
        assert!(
            body.windows(7)
                .any(|window| window == [0x84, 0x02, b'i', b'I', 0x01, 0x81, 0x2C])
        );
        assert_eq!(decode_text(&body), Ok(text));
    }

    #[test]
    fn empty_text_has_no_runs() {
        let body = attributed_body("");
        assert_eq!(
            body.get(body.len() - 6..),
            Some(&b"\x84\x01+\x00\x86\x86"[..])
        );
        assert_eq!(decode_text(&body), Ok(String::new()));
    }

    #[test]
    fn lengths_pick_the_narrowest_form() {
        let encode = |value| {
            let mut out = Vec::new();
            push_length(&mut out, value);
            out
        };
        assert_eq!(encode(0), [0x00]);
        assert_eq!(encode(127), [0x7F]);
        assert_eq!(encode(128), [0x81, 0x80, 0x00]);
        assert_eq!(encode(157), [0x81, 0x9D, 0x00]);
        assert_eq!(encode(65_535), [0x81, 0xFF, 0xFF]);
        assert_eq!(encode(65_536), [0x82, 0x00, 0x00, 0x01, 0x00]);
    }

    #[test]
    fn a_64_kib_body_round_trips() {
        let text = "x".repeat(70_000);
        let body = attributed_body(&text);
        assert!(
            body.windows(5)
                .any(|window| window == [0x82, 0x70, 0x11, 0x01, 0x00])
        );
        assert_eq!(decode_text(&body), Ok(text));
    }
}

#[cfg(test)]
mod parts_tests {
    use super::*;
    use crate::chatdb::typedstream::decode_body;

    #[test]
    fn placeholders_come_back_tied_to_their_attachments_in_body_order() {
        let body = attributed_body_parts(&[
            BodyPart::Attachment("at_0_BBBB".into()),
            BodyPart::Text("look at these ".into()),
            BodyPart::Attachment("at_1_AAAA".into()),
            BodyPart::Attachment("at_2_CCCC".into()),
        ]);
        let decoded = decode_body(&body).expect("decodes");
        assert_eq!(decoded.text, "\u{FFFC}look at these \u{FFFC}\u{FFFC}");
        assert_eq!(
            decoded.attachment_guids,
            vec!["at_0_BBBB", "at_1_AAAA", "at_2_CCCC"]
        );
    }

    #[test]
    fn a_text_only_body_of_parts_has_no_attachments() {
        let decoded =
            decode_body(&attributed_body_parts(&[BodyPart::Text("héllo 😀".into())])).expect("ok");
        assert_eq!(decoded.text, "héllo 😀");
        assert!(decoded.attachment_guids.is_empty());
    }
}
