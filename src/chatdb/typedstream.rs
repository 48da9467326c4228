//! Clean-room reader of the text inside `message.attributedBody`.
//!
//! This module owns turning the bytes of that column into the message's plain text. Messages
//! stores the body as an `NSAttributedString` archived with `NSArchiver`, the little-endian
//! "typedstream" format (`streamtyped` header). Since macOS 13 many rows leave `text` NULL, so
//! this is the authoritative source of what a message says. The reader is a small walker of the
//! format itself (type-encoding strings, objects, class chains, back-reference tables) rather than
//! a search for marker bytes: marker searches cut bodies whose UTF-8 happens to contain the marker
//! and misread length prefixes of 128+ byte bodies. The text is the root's NSString, archived
//! before the attribute runs as one length-prefixed byte string, so a blob cut short or damaged
//! before or inside that string is reported as an error, never as a silently shorter text. Once
//! the string's last byte has been read the text is known: the rest of the stream (attribute runs,
//! their dictionaries, classes this reader has never seen, the closing bytes) is still walked, but
//! a failure there is only logged at debug level and the text returned, because on macOS 13+ rows
//! whose `text` is NULL the body is the only copy of what the user wrote. It never panics, never
//! loops without consuming input, nests at most [`MAX_DEPTH`] levels, and checks every length
//! against the bytes actually present before using it.
//! Attachment (U+FFFC) and app-balloon (U+FFFD) placeholders are returned as they are stored.

use std::borrow::Cow;

use thiserror::Error;

/// How deeply objects, arrays and structs may nest before the stream is rejected; real bodies
/// nest three or four levels, and the limit keeps hostile input from exhausting the stack.
pub const MAX_DEPTH: usize = 64;

/// Only the little-endian variant exists on macOS; `typedstream` would be a big-endian stream.
const SIGNATURE: &[u8] = b"streamtyped";
const BIG_ENDIAN_SIGNATURE: &[u8] = b"typedstream";
const STREAMER_VERSION: u8 = 4;
/// NeXTSTEP's older streamer version; recognised only to name it in the error.
const OLD_STREAMER_VERSION: u8 = 3;

// Tag bytes. Single-byte integers in 0x80..=0x91 are reserved for these, which is why a value
// byte in that range is never a literal.
const TAG_INT16: u8 = 0x81;
const TAG_INT32: u8 = 0x82;
const TAG_FLOAT: u8 = 0x83;
const TAG_NEW: u8 = 0x84;
const TAG_NIL: u8 = 0x85;
const TAG_END: u8 = 0x86;
/// Back-references are integers counted from -110 (byte 0x92), so 0x92 names entry 0. Indexes
/// beyond the single-byte range continue as ordinary integers (0x00.., then 0x81/0x82 forms).
const FIRST_REFERENCE: i64 = -110;

/// Some rows hold a plain UTF-16LE body instead of a typedstream.
const UTF16LE_BOM: [u8; 2] = [0xFF, 0xFE];

/// Why a body could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TypedStreamError {
    /// The blob does not start with the typedstream header.
    #[error(
        "attributedBody is not a typedstream (it does not start with the `streamtyped` header)"
    )]
    NotTypedStream,
    /// The header names a streamer version other than 4.
    #[error(
        "attributedBody uses typedstream streamer version {version}; only version 4 is supported"
    )]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// The header says `typedstream`: a big-endian stream, which macOS does not write.
    #[error(
        "attributedBody is a big-endian typedstream; only the little-endian `streamtyped` variant is supported"
    )]
    BigEndian,
    /// The blob ends before a value it announces.
    #[error("attributedBody is truncated at byte {offset} (needed {needed} more bytes)")]
    Truncated {
        /// Where the blob ends (its length).
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A byte that cannot appear at this point of the format.
    #[error(
        "attributedBody has unexpected byte 0x{byte:02X} at byte {offset} (expected {expected})"
    )]
    UnexpectedByte {
        /// Position of the byte.
        offset: usize,
        /// The byte found.
        byte: u8,
        /// What the format allows here.
        expected: &'static str,
    },
    /// A back-reference to an entry that has not been introduced yet.
    #[error(
        "attributedBody back-reference {index} at byte {offset} points past the {table} table ({len} entries)"
    )]
    BadReference {
        /// Position of the reference.
        offset: usize,
        /// The referenced index.
        index: usize,
        /// Which table: "string" (type encodings and class names) or "object" (classes and objects).
        table: &'static str,
        /// How many entries the table had.
        len: usize,
    },
    /// A class chain that leads to an entry that is not a class.
    #[error(
        "attributedBody class chain of the object at byte {offset} leads to an entry that is not a class"
    )]
    NotAClass {
        /// Position of the object whose class chain is broken.
        offset: usize,
    },
    /// A type encoding this reader does not walk (unions, bit fields, unknown letters).
    #[error("attributedBody type encoding {encoding:?} at byte {offset} is not supported")]
    UnsupportedType {
        /// Position of the type-encoding string.
        offset: usize,
        /// The encoding, lossily as text.
        encoding: String,
    },
    /// Objects, arrays or structs nested more than [`MAX_DEPTH`] levels.
    #[error("attributedBody nests more than {limit} levels deep at byte {offset}")]
    TooDeep {
        /// Where the limit was crossed.
        offset: usize,
        /// The limit, [`MAX_DEPTH`].
        limit: usize,
    },
    /// The root object is neither an attributed string nor a string.
    #[error("attributedBody root object is a {class}, not an NSAttributedString")]
    UnexpectedRoot {
        /// The root's class name, lossily as text.
        class: String,
    },
    /// The attributed string does not start with its NSString.
    #[error(
        "attributedBody has no NSString text where the attributed string's string belongs (byte {offset})"
    )]
    MissingString {
        /// Where the string was expected.
        offset: usize,
    },
    /// The stream holds no root object at all.
    #[error("attributedBody holds no root object")]
    NoRootObject,
}

type Result<T> = std::result::Result<T, TypedStreamError>;

/// The plain text of an `attributedBody` blob.
///
/// Accepts a typedstream whose root is an `NSAttributedString` (or `NSMutableAttributedString`,
/// or a bare `NSString`) and also the UTF-16LE bodies that start with a byte-order mark. Invalid
/// UTF-8 or UTF-16 is decoded lossily rather than rejected. A stream that is wrong or ends before
/// the text's last byte is an error; one that only goes wrong after it still yields the text.
pub fn decode_text(blob: &[u8]) -> std::result::Result<String, TypedStreamError> {
    decode_body(blob).map(|body| body.text)
}

/// U+FFFC OBJECT REPLACEMENT CHARACTER, an attachment's place in the text, as
/// UTF-8.
const OBJECT_REPLACEMENT_UTF8: &[u8] = "\u{FFFC}".as_bytes();

/// The attribute naming the file transfer a U+FFFC stands for.
pub const FILE_TRANSFER_KEY: &[u8] = b"__kIMFileTransferGUIDAttributeName";

/// What a body says: its text and, in body order, the transfer GUIDs of the
/// attachments its U+FFFC placeholders stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodedBody {
    /// The text, placeholders included.
    pub text: String,
    /// `__kIMFileTransferGUIDAttributeName` values in the order they appear,
    /// which is the order of the U+FFFC characters (mautrix sorts attachments
    /// the same way; `message_attachment_join` order is not body order).
    pub attachment_guids: Vec<String>,
}

/// [`decode_text`] plus the attachment order. A failure in the attributes
/// after the text keeps the text and whatever GUIDs were read before it.
pub fn decode_body(blob: &[u8]) -> std::result::Result<DecodedBody, TypedStreamError> {
    if let Some(utf16) = blob.strip_prefix(&UTF16LE_BOM) {
        return Ok(DecodedBody {
            text: decode_utf16le(utf16),
            attachment_guids: Vec::new(),
        });
    }
    // The common body: Messages' fixed header, then a text with no
    // attachment placeholder. The file-transfer GUIDs stand for U+FFFC
    // characters, so with none there is nothing to find in the attributes,
    // and walking them was most of the decoder's time.
    if let Some(bytes) = plain_text(blob)
        && (!bytes.contains(&OBJECT_REPLACEMENT_UTF8[0])
            || !bytes.windows(3).any(|w| w == OBJECT_REPLACEMENT_UTF8))
    {
        return Ok(DecodedBody {
            text: String::from_utf8_lossy(bytes).into_owned(),
            attachment_guids: Vec::new(),
        });
    }
    let mut walker = Walker::new(blob);
    let bytes = walker.decode()?;
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    let mut attachment_guids = Vec::new();
    let mut values = walker.values.iter();
    while let Some(value) = values.next() {
        if *value == Some(FILE_TRANSFER_KEY)
            && let Some(Some(guid)) = values.next()
        {
            attachment_guids.push(String::from_utf8_lossy(guid).into_owned());
        }
    }
    Ok(DecodedBody {
        text,
        attachment_guids,
    })
}

/// [`decode_text`] without copying or checking: the text's bytes as the
/// body stores them, borrowed from the blob, UTF-8 not yet checked (the
/// caller checks it, and decodes it lossily as [`decode_text`] does when
/// it is not, without a copy in the usual case). For the bulk read of messages
/// that have no attachments ([`super::plain`]), so it neither collects the
/// attachment GUIDs nor walks the attributes after the text: the text is
/// known once its byte string has been read, and what follows could only
/// add a debug log line ([`decode_text`] returns the text either way).
pub fn decode_text_unchecked(blob: &[u8]) -> std::result::Result<Cow<'_, [u8]>, TypedStreamError> {
    if let Some(utf16) = blob.strip_prefix(&UTF16LE_BOM) {
        return Ok(Cow::Owned(decode_utf16le(utf16).into_bytes()));
    }
    match plain_text(blob) {
        Some(bytes) => Ok(Cow::Borrowed(bytes)),
        None => {
            let mut walker = Walker::new(blob);
            walker.text_only = true;
            walker.decode().map(Cow::Borrowed)
        }
    }
}

/// The bytes Messages writes before the text of a plain message, up to the
/// text's length: the header, the root `NSMutableAttributedString` (or
/// `NSAttributedString`) class chain, the string's `NSMutableString` (or
/// `NSString`) chain and its `+` type. Nearly every body starts with one of
/// them, and the walker reads them the same way every time; matching them
/// whole skips the part of decoding that cost the most per row.
const PLAIN_PREFIXES: [&[u8]; 2] = [
    b"\x04\x0bstreamtyped\x81\xe8\x03\x84\x01@\
      \x84\x84\x84\x19NSMutableAttributedString\x00\
      \x84\x84\x12NSAttributedString\x00\
      \x84\x84\x08NSObject\x00\x85\
      \x92\x84\x84\x84\x0fNSMutableString\x01\
      \x84\x84\x08NSString\x01\x95\
      \x84\x01+",
    b"\x04\x0bstreamtyped\x81\xe8\x03\x84\x01@\
      \x84\x84\x84\x12NSAttributedString\x00\
      \x84\x84\x08NSObject\x00\x85\
      \x92\x84\x84\x84\x08NSString\x01\x94\
      \x84\x01+",
];

/// The text of a body that starts with one of [`PLAIN_PREFIXES`], exactly as
/// the walker would find it; `None` for any other blob, or one whose length
/// or text is cut short (the walker then reports why).
fn plain_text(blob: &[u8]) -> Option<&[u8]> {
    let prefix = PLAIN_PREFIXES.iter().find(|p| blob.starts_with(p))?;
    let mut walker = Walker::bare(blob);
    walker.pos = prefix.len();
    let len = walker.read_length().ok()?;
    walker.take(len).ok()
}

/// The text of a message row: `attributedBody` first, `text` as fallback.
///
/// `Ok(None)` means the row has no body at all. A blob that cannot be decoded yields the error
/// only when there is no `text` to fall back to.
pub fn message_text(
    attributed_body: Option<&[u8]>,
    text: Option<&str>,
) -> std::result::Result<Option<String>, TypedStreamError> {
    let Some(blob) = attributed_body.filter(|blob| !blob.is_empty()) else {
        return Ok(text.map(str::to_owned));
    };
    match decode_text(blob) {
        Ok(decoded) => Ok(Some(decoded)),
        Err(error) => match text {
            Some(text) => Ok(Some(text.to_owned())),
            None => Err(error),
        },
    }
}

fn decode_utf16le(bytes: &[u8]) -> String {
    let units = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]));
    let mut text: String = char::decode_utf16(units)
        .map(|unit| unit.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    if bytes.len() % 2 == 1 {
        // Half a code unit is damage, not text; mark it like any other undecodable unit.
        text.push(char::REPLACEMENT_CHARACTER);
    }
    text
}

/// An entry of the table shared by classes and objects, in order of first appearance.
#[derive(Clone, Copy)]
enum Shared<'a> {
    Class {
        name: &'a [u8],
        superclass: Option<usize>,
    },
    Object,
    /// C strings take a slot too; being generous here only widens what references may name.
    CString,
}

/// What kind of string-bearing class an object is, as far as text extraction cares.
enum ClassKind<'a> {
    String,
    AttributedString,
    Other(&'a [u8]),
}

struct Walker<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Type-encoding strings and class names, in order of first appearance.
    strings: Vec<&'a [u8]>,
    /// Classes and objects, in order of first appearance.
    shared: Vec<Shared<'a>>,
    depth: usize,
    /// The root's text, set the moment its byte string has been read in full.
    text: Option<&'a [u8]>,
    /// The string contents of NSString objects, by object-table index, so a
    /// back-referenced key still reads as its text.
    object_strings: Vec<(usize, &'a [u8])>,
    /// Every object value read after the text, as its string when it is one,
    /// in stream order: attribute dictionaries come out as key, value, ...
    values: Vec<Option<&'a [u8]>>,
    /// Stop as soon as [`Self::text`] is known: no [`Self::values`], no
    /// walk of the attributes ([`decode_text_unchecked`]).
    text_only: bool,
}

impl<'a> Walker<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            // Sized for a typical body, so decoding does not regrow them.
            strings: Vec::with_capacity(16),
            shared: Vec::with_capacity(16),
            ..Self::bare(buf)
        }
    }

    /// A walker that has allocated nothing yet.
    fn bare(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            strings: Vec::new(),
            shared: Vec::new(),
            depth: 0,
            text: None,
            object_strings: Vec::new(),
            values: Vec::new(),
            text_only: false,
        }
    }

    /// The root attributed string's UTF-8 bytes.
    ///
    /// Walks the whole stream; if that fails after the text's byte string has been read in full,
    /// the text is returned anyway and the failure only logged.
    fn decode(&mut self) -> Result<&'a [u8]> {
        match (self.walk(), self.text) {
            (Ok(text), _) => Ok(text),
            (Err(error), Some(text)) => {
                tracing::debug!(
                    %error,
                    text_bytes = text.len(),
                    "attributedBody text decoded, but the attributes after it could not be walked"
                );
                Ok(text)
            }
            (Err(error), None) => Err(error),
        }
    }

    /// Walks the whole stream strictly: any error anywhere, attributes included, is returned.
    fn walk(&mut self) -> Result<&'a [u8]> {
        self.read_header()?;
        while self.pos < self.buf.len() && !self.done() {
            let (encoding, at) = self.read_type_string()?;
            if self.text.is_none() && encoding == b"@" {
                self.read_root()?;
            } else {
                self.read_values(encoding, at, false)?;
            }
        }
        self.text.ok_or(TypedStreamError::NoRootObject)
    }

    fn read_header(&mut self) -> Result<()> {
        match self.buf.first() {
            Some(&STREAMER_VERSION) => self.pos = 1,
            Some(&OLD_STREAMER_VERSION) => {
                return Err(TypedStreamError::UnsupportedVersion {
                    version: OLD_STREAMER_VERSION,
                });
            }
            _ => return Err(TypedStreamError::NotTypedStream),
        }
        if self.read_length()? != SIGNATURE.len() {
            return Err(TypedStreamError::NotTypedStream);
        }
        match self.take(SIGNATURE.len())? {
            SIGNATURE => {}
            BIG_ENDIAN_SIGNATURE => return Err(TypedStreamError::BigEndian),
            _ => return Err(TypedStreamError::NotTypedStream),
        }
        // The system version (1000 on every macOS seen) does not change the layout.
        self.read_int("the system version")?;
        Ok(())
    }

    // ---- the message body ----

    /// Reads the root object; on success [`Self::text`] holds its text.
    fn read_root(&mut self) -> Result<()> {
        let at = self.pos;
        let head = self.byte()?;
        if head != TAG_NEW {
            return Err(TypedStreamError::UnexpectedByte {
                offset: at,
                byte: head,
                expected: "a new root object (0x84)",
            });
        }
        self.shared.push(Shared::Object);
        let class = self.read_object_class()?;
        match self.classify(class, at)? {
            ClassKind::String => self.nested(|walker| walker.read_string_contents(at)),
            ClassKind::AttributedString => self.nested(Self::read_attributed_contents),
            ClassKind::Other(name) => Err(TypedStreamError::UnexpectedRoot {
                class: String::from_utf8_lossy(name).into_owned(),
            }),
        }
    }

    /// NSAttributedString archives its string first, then the attribute runs.
    fn read_attributed_contents(&mut self) -> Result<()> {
        let at = self.pos;
        if self.peek()? == TAG_END {
            return Err(TypedStreamError::MissingString { offset: at });
        }
        let (encoding, encoding_at) = self.read_type_string()?;
        let Some((b'@', rest)) = encoding.split_first() else {
            return Err(TypedStreamError::MissingString { offset: at });
        };
        self.read_string_object()?;
        self.read_values(rest, encoding_at, false)?;
        self.read_contents()
    }

    fn read_string_object(&mut self) -> Result<()> {
        let at = self.pos;
        if self.byte()? != TAG_NEW {
            return Err(TypedStreamError::MissingString { offset: at });
        }
        self.shared.push(Shared::Object);
        let class = self.read_object_class()?;
        match self.classify(class, at)? {
            ClassKind::String => self.nested(|walker| walker.read_string_contents(at)),
            ClassKind::AttributedString | ClassKind::Other(_) => {
                Err(TypedStreamError::MissingString { offset: at })
            }
        }
    }

    /// NSString archives its UTF-8 as one `+` byte string; the first one is the text, kept in
    /// [`Self::text`] as soon as it is read. Whatever follows it is walked like any object.
    fn read_string_contents(&mut self, object_at: usize) -> Result<()> {
        while self.text.is_none() {
            if self.peek()? == TAG_END {
                self.pos += 1;
                return Err(TypedStreamError::MissingString { offset: object_at });
            }
            let (encoding, at) = self.read_type_string()?;
            self.read_values(encoding, at, true)?;
        }
        self.read_contents()
    }

    /// Whether the walk can stop here: the text is known and nothing else
    /// is wanted ([`Self::text_only`]). Every loop checks it, so the walk
    /// unwinds without reading another byte.
    fn done(&self) -> bool {
        self.text_only && self.text.is_some()
    }

    /// The class of a new object; an object without a class cannot be decoded.
    fn read_object_class(&mut self) -> Result<usize> {
        let at = self.pos;
        match self.read_class_chain()? {
            Some(class) => Ok(class),
            None => Err(TypedStreamError::UnexpectedByte {
                offset: at,
                byte: TAG_NIL,
                expected: "the class of a new object",
            }),
        }
    }

    fn classify(&self, class: usize, object_at: usize) -> Result<ClassKind<'a>> {
        let mut own_name = None;
        let mut next = Some(class);
        // Each hop visits a distinct entry unless the chain loops, so the table size bounds it.
        for _ in 0..=self.shared.len() {
            let Some(index) = next else { break };
            let Some(&Shared::Class { name, superclass }) = self.shared.get(index) else {
                return Err(TypedStreamError::NotAClass { offset: object_at });
            };
            match name {
                b"NSString" | b"NSMutableString" => return Ok(ClassKind::String),
                b"NSAttributedString" | b"NSMutableAttributedString" => {
                    return Ok(ClassKind::AttributedString);
                }
                _ => {}
            }
            own_name.get_or_insert(name);
            next = superclass;
        }
        Ok(ClassKind::Other(own_name.unwrap_or_default()))
    }

    // ---- the generic walker ----

    /// Reads type groups until the end-of-object byte.
    fn read_contents(&mut self) -> Result<()> {
        self.read_contents_string().map(drop)
    }

    /// [`Self::read_contents`], returning the object's first `+` byte string (an NSString's text).
    fn read_contents_string(&mut self) -> Result<Option<&'a [u8]>> {
        let mut first = None;
        if self.done() {
            return Ok(None);
        }
        while self.peek()? != TAG_END {
            let (encoding, at) = self.read_type_string()?;
            let bytes = self.read_values(encoding, at, false)?;
            first = first.or(bytes);
            if self.done() {
                return Ok(first);
            }
        }
        self.pos += 1;
        Ok(first)
    }

    /// Reads one value per type in `encoding`. With `keep_text` (only the root's string does
    /// that), the first `+` byte string becomes [`Self::text`] the moment it has been read, so a
    /// failure in a later value cannot lose it.
    fn read_values(
        &mut self,
        encoding: &'a [u8],
        at: usize,
        keep_text: bool,
    ) -> Result<Option<&'a [u8]>> {
        let mut start = 0;
        let mut first = None;
        while start < encoding.len() && !self.done() {
            let end = type_end(encoding, start, at)?;
            let bytes = self.read_value(encoding.get(start..end).unwrap_or_default(), at)?;
            if keep_text && self.text.is_none() {
                self.text = bytes;
            }
            first = first.or(bytes);
            start = end;
        }
        Ok(first)
    }

    /// Reads one value of type `ty`; returns the bytes if it is a `+` byte string.
    fn read_value(&mut self, ty: &'a [u8], at: usize) -> Result<Option<&'a [u8]>> {
        // Qualifiers do not change the bytes, and a pointer is archived as what it points to.
        let start = ty
            .iter()
            .position(|b| !b"rnNoORV^".contains(b))
            .unwrap_or(ty.len());
        let ty = ty.get(start..).unwrap_or_default();
        let Some(&letter) = ty.first() else {
            return Err(unsupported(ty, at));
        };
        match letter {
            b'@' => self.read_object_value()?,
            b'#' => {
                self.read_class_chain()?;
            }
            b':' => self.read_selector()?,
            b'*' | b'%' => self.read_c_string()?,
            b'+' => {
                let len = self.read_length()?;
                return self.take(len).map(Some);
            }
            b'c' | b'C' | b's' | b'S' | b'i' | b'I' | b'l' | b'L' | b'q' | b'Q' | b'B' => {
                self.read_int("an integer")?;
            }
            b'f' => self.read_float(4)?,
            b'd' => self.read_float(8)?,
            b'!' => {}
            b'[' => self.nested(|walker| walker.read_array(ty, at))?,
            b'{' => self.nested(|walker| walker.read_struct(ty, at))?,
            _ => return Err(unsupported(ty, at)),
        }
        Ok(None)
    }

    fn read_object_value(&mut self) -> Result<()> {
        let at = self.pos;
        let value = match self.byte()? {
            TAG_NIL => None,
            TAG_NEW => {
                let index = self.shared.len();
                self.shared.push(Shared::Object);
                self.read_object_class()?;
                let string = self.nested(Self::read_contents_string)?;
                if let Some(string) = string {
                    self.object_strings.push((index, string));
                }
                string
            }
            head => {
                let index = self.read_object_reference(head, at)?;
                self.object_strings
                    .iter()
                    .find(|(i, _)| *i == index)
                    .map(|(_, s)| *s)
            }
        };
        if self.text.is_some() {
            self.values.push(value);
        }
        Ok(())
    }

    /// Reads a class and its superclasses up to nil or a class seen before; returns the first.
    fn read_class_chain(&mut self) -> Result<Option<usize>> {
        let mut first = None;
        let mut previous: Option<usize> = None;
        loop {
            let at = self.pos;
            let (link, is_new) = match self.byte()? {
                TAG_NIL => (None, false),
                TAG_NEW => {
                    let index = self.shared.len();
                    // The slot is taken before the name: Apple numbers a class ahead of its
                    // superclasses, which is what later back-references count on.
                    self.shared.push(Shared::Class {
                        name: &[],
                        superclass: None,
                    });
                    let name = self.read_shared_string("a class name")?;
                    self.read_int("a class version")?;
                    if let Some(Shared::Class { name: slot, .. }) = self.shared.get_mut(index) {
                        *slot = name;
                    }
                    (Some(index), true)
                }
                head => (Some(self.read_object_reference(head, at)?), false),
            };
            if let Some(Shared::Class { superclass, .. }) =
                previous.and_then(|index| self.shared.get_mut(index))
            {
                *superclass = link;
            }
            first = first.or(link);
            if !is_new {
                return Ok(first);
            }
            previous = link;
        }
    }

    fn read_selector(&mut self) -> Result<()> {
        if self.peek()? == TAG_NIL {
            self.pos += 1;
            return Ok(());
        }
        self.read_shared_string("a selector name").map(drop)
    }

    /// A C string is a new/nil/reference wrapper around a shared string.
    fn read_c_string(&mut self) -> Result<()> {
        let at = self.pos;
        match self.byte()? {
            TAG_NIL => Ok(()),
            TAG_NEW => {
                self.shared.push(Shared::CString);
                self.read_shared_string("a C string").map(drop)
            }
            head => self.read_object_reference(head, at).map(drop),
        }
    }

    fn read_float(&mut self, size: usize) -> Result<()> {
        let at = self.pos;
        let head = self.byte()?;
        if head == TAG_FLOAT {
            self.take(size).map(drop)
        } else {
            // Integral floats are archived as integers.
            self.read_int_after(head, at, "a number").map(drop)
        }
    }

    /// `[N type]`: arrays of chars are raw bytes, anything else is N values.
    fn read_array(&mut self, ty: &'a [u8], at: usize) -> Result<()> {
        let inner = ty.get(1..ty.len().saturating_sub(1)).unwrap_or_default();
        let digits = inner.iter().take_while(|b| b.is_ascii_digit()).count();
        let (count, element) = inner.split_at(digits);
        let count = count.iter().try_fold(0usize, |n, d| {
            n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        });
        let (Some(count), false) = (count, element.is_empty()) else {
            return Err(unsupported(ty, at));
        };
        if element == b"c" || element == b"C" {
            return self.take(count).map(drop);
        }
        for _ in 0..count {
            let before = self.pos;
            self.read_values(element, at, false)?;
            if self.pos == before {
                // A type that reads no bytes never will; the other elements are empty too.
                break;
            }
        }
        Ok(())
    }

    /// `{name=fields}`: the fields in order; a struct without `=` has no archived fields.
    fn read_struct(&mut self, ty: &'a [u8], at: usize) -> Result<()> {
        let inner = ty.get(1..ty.len().saturating_sub(1)).unwrap_or_default();
        let name_len = inner.iter().take_while(|b| !b"={}[]()".contains(b)).count();
        match inner.get(name_len) {
            Some(b'=') => self
                .read_values(inner.get(name_len + 1..).unwrap_or_default(), at, false)
                .map(drop),
            None => Ok(()),
            Some(_) => Err(unsupported(ty, at)),
        }
    }

    // ---- shared strings, references, integers, bytes ----

    /// A type-encoding string, returned with its position for error messages.
    fn read_type_string(&mut self) -> Result<(&'a [u8], usize)> {
        let at = self.pos;
        let encoding = self.read_shared_string("a type encoding")?;
        if encoding.is_empty() {
            return Err(unsupported(encoding, at));
        }
        Ok((encoding, at))
    }

    fn read_shared_string(&mut self, expected: &'static str) -> Result<&'a [u8]> {
        let at = self.pos;
        match self.byte()? {
            TAG_NEW => {
                let len = self.read_length()?;
                let string = self.take(len)?;
                self.strings.push(string);
                Ok(string)
            }
            head @ (TAG_NIL | TAG_END) => Err(TypedStreamError::UnexpectedByte {
                offset: at,
                byte: head,
                expected,
            }),
            head => {
                let index = self.read_reference(head, at, expected)?;
                self.strings
                    .get(index)
                    .copied()
                    .ok_or(TypedStreamError::BadReference {
                        offset: at,
                        index,
                        table: "string",
                        len: self.strings.len(),
                    })
            }
        }
    }

    fn read_object_reference(&mut self, head: u8, at: usize) -> Result<usize> {
        let index = self.read_reference(head, at, "an object or class")?;
        if index < self.shared.len() {
            Ok(index)
        } else {
            Err(TypedStreamError::BadReference {
                offset: at,
                index,
                table: "object",
                len: self.shared.len(),
            })
        }
    }

    fn read_reference(&mut self, head: u8, at: usize, expected: &'static str) -> Result<usize> {
        let value = self.read_int_after(head, at, expected)?;
        usize::try_from(value - FIRST_REFERENCE).map_err(|_| TypedStreamError::UnexpectedByte {
            offset: at,
            byte: head,
            expected,
        })
    }

    fn read_int(&mut self, expected: &'static str) -> Result<i64> {
        let at = self.pos;
        let head = self.byte()?;
        self.read_int_after(head, at, expected)
    }

    fn read_int_after(&mut self, head: u8, at: usize, expected: &'static str) -> Result<i64> {
        match head {
            TAG_INT16 => Ok(i16::from_le_bytes(self.array()?).into()),
            TAG_INT32 => Ok(i32::from_le_bytes(self.array()?).into()),
            0x80 | TAG_FLOAT..=0x91 => Err(TypedStreamError::UnexpectedByte {
                offset: at,
                byte: head,
                expected,
            }),
            _ => Ok(i8::from_le_bytes([head]).into()),
        }
    }

    /// A byte count. Lengths are never negative, so the wide forms are read unsigned, and a
    /// bare byte 0x92..=0xFF is the unsigned value itself.
    fn read_length(&mut self) -> Result<usize> {
        let at = self.pos;
        match self.byte()? {
            TAG_INT16 => Ok(u16::from_le_bytes(self.array()?).into()),
            // Beyond usize (16-bit targets only) is necessarily more than the blob holds.
            TAG_INT32 => {
                Ok(usize::try_from(u32::from_le_bytes(self.array()?)).unwrap_or(usize::MAX))
            }
            head @ (0x80 | TAG_FLOAT..=0x91) => Err(TypedStreamError::UnexpectedByte {
                offset: at,
                byte: head,
                expected: "a length",
            }),
            head => Ok(head.into()),
        }
    }

    fn byte(&mut self) -> Result<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Ok(byte)
    }

    fn peek(&self) -> Result<u8> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(TypedStreamError::Truncated {
                offset: self.pos,
                needed: 1,
            })
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        let available = self.buf.len().saturating_sub(self.pos);
        if len > available {
            return Err(TypedStreamError::Truncated {
                offset: self.buf.len(),
                needed: len - available,
            });
        }
        let bytes = self.buf.get(self.pos..self.pos + len).unwrap_or_default();
        self.pos += len;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn nested<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.depth >= MAX_DEPTH {
            return Err(TypedStreamError::TooDeep {
                offset: self.pos,
                limit: MAX_DEPTH,
            });
        }
        self.depth += 1;
        let result = read(self);
        self.depth -= 1;
        result
    }
}

/// The end (exclusive) of the single type that starts at `start` in `encoding`.
fn type_end(encoding: &[u8], start: usize, at: usize) -> Result<usize> {
    let mut pos = start;
    // Qualifiers and pointer marks belong to the type that follows them.
    while encoding.get(pos).is_some_and(|b| b"rnNoORV^".contains(b)) {
        pos += 1;
    }
    let Some(&first) = encoding.get(pos) else {
        return Err(unsupported(encoding, at));
    };
    if !matches!(first, b'[' | b'{' | b'(') {
        return Ok(pos + 1);
    }
    // Compound types end at their matching bracket; any bracket kind nests.
    let mut open = 0usize;
    for (offset, byte) in encoding.iter().enumerate().skip(pos) {
        match byte {
            b'[' | b'{' | b'(' => open += 1,
            b']' | b'}' | b')' => {
                open -= 1;
                if open == 0 {
                    return Ok(offset + 1);
                }
            }
            _ => {}
        }
    }
    Err(unsupported(encoding, at))
}

fn unsupported(encoding: &[u8], at: usize) -> TypedStreamError {
    TypedStreamError::UnsupportedType {
        offset: at,
        encoding: String::from_utf8_lossy(encoding).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::body::attributed_body;
    use proptest::prelude::*;

    /// `04` streamer version 4, `0B` + "streamtyped", `81 E8 03` system version 1000.
    const HEADER: &[u8] = b"\x04\x0bstreamtyped\x81\xe8\x03";

    /// Root `@` + new NSMutableAttributedString v0 -> NSAttributedString v0 -> NSObject v0 -> nil.
    /// String table after it: 0 "@", 1..=3 the class names. Object table: 0 root, 1..=3 classes.
    const MUTABLE_ROOT: &[u8] = b"\x84\x01@\
        \x84\
        \x84\x84\x19NSMutableAttributedString\x00\
        \x84\x84\x12NSAttributedString\x00\
        \x84\x84\x08NSObject\x00\
        \x85";

    /// `92` = type "@" again, new object NSMutableString v1 -> NSString v1 -> `95` = object
    /// entry 3 (NSObject's class), then new type string "+".
    const MUTABLE_STRING: &[u8] = b"\x92\x84\
        \x84\x84\x0fNSMutableString\x01\
        \x84\x84\x08NSString\x01\
        \x95\
        \x84\x01+";

    /// Root `@` + new NSAttributedString v0 -> NSObject v0 -> nil (object entries 0..=2).
    const PLAIN_ROOT: &[u8] = b"\x84\x01@\
        \x84\
        \x84\x84\x12NSAttributedString\x00\
        \x84\x84\x08NSObject\x00\
        \x85";

    /// `92` = "@", new object NSString v1 -> `94` = object entry 2 (NSObject), new type "+".
    const PLAIN_STRING: &[u8] = b"\x92\x84\
        \x84\x84\x08NSString\x01\
        \x94\
        \x84\x01+";

    /// A run `iI` (set 1, `run` UTF-16 units) and its dictionary, numbered for the plain root:
    /// strings 0 "@", 1 NSAttributedString, 2 NSObject, 3 NSString, 4 "+", 5 "iI",
    /// 6 NSDictionary, 7 "i", 8 NSNumber, 9 NSValue, 10 "*";
    /// objects 0 root, 1-2 classes, 3 string, 4 NSString class, 5 dictionary,
    /// 6 NSDictionary class, 7 key, 8 NSNumber, 9-10 classes, 11 C string.
    fn plain_run(run: &[u8]) -> Vec<u8> {
        let mut out = b"\x84\x02iI\x01".to_vec();
        out.extend_from_slice(run);
        // `92` "@", new NSDictionary v0 -> `94` NSObject, type "i", 1 entry.
        out.extend_from_slice(b"\x92\x84\x84\x84\x0cNSDictionary\x00\x94\x84\x01i\x01");
        // Key: `92` "@", new object of class `96` (NSString), type `96` ("+"), 29 bytes.
        out.extend_from_slice(b"\x92\x84\x96\x96\x1d__kIMMessagePartAttributeName\x86");
        // Value: NSNumber v0 -> NSValue v0 -> `94`, type "*", C string new + `99` ("i"),
        // then type `99` ("i") and the value 0; close NSNumber, NSDictionary, root.
        out.extend_from_slice(b"\x92\x84\x84\x84\x08NSNumber\x00\x84\x84\x07NSValue\x00\x94");
        out.extend_from_slice(b"\x84\x01*\x84\x99\x99\x00\x86\x86\x86");
        out
    }

    /// A full mutable-root body: `length` is the already-encoded byte length of `text`.
    fn mutable_body(length: &[u8], text: &[u8]) -> Vec<u8> {
        let mut out = [HEADER, MUTABLE_ROOT, MUTABLE_STRING, length, text].concat();
        // End of the string object, then the root closes (no runs needed to be valid).
        out.extend_from_slice(b"\x86\x86");
        out
    }

    fn plain_body(length: &[u8], text: &[u8], run: &[u8]) -> Vec<u8> {
        let mut out = [HEADER, PLAIN_ROOT, PLAIN_STRING, length, text, b"\x86"].concat();
        out.extend_from_slice(&plain_run(run));
        out
    }

    fn ok(text: &str) -> std::result::Result<String, TypedStreamError> {
        Ok(text.to_owned())
    }

    /// The strict walk: like [`decode_text`] on typedstreams, but an error after the text (in
    /// the attribute runs) is returned instead of forgiven.
    fn walk_fully(blob: &[u8]) -> std::result::Result<String, TypedStreamError> {
        Walker::new(blob)
            .walk()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    }

    /// Where the text's last byte ends in a hand-built body, i.e. the shortest prefix that holds
    /// the whole text: header, root, string object, length prefix and the text itself.
    fn text_end(root: &[u8], string: &[u8], length: &[u8], text: &[u8]) -> usize {
        [HEADER, root, string, length, text].concat().len()
    }

    /// The same for a simulator body: an empty text's body is everything before its `00`
    /// length, then `00 86 86`; a longer text adds the length prefix's extra bytes and the text.
    fn simulator_text_end(text: &str) -> usize {
        let length_len = match text.len() {
            0..0x80 => 1,
            0x80..=0xFFFF => 3,
            _ => 5,
        };
        attributed_body("").len() - 3 + length_len + text.len()
    }

    /// Every prefix that cuts the header, class chains or text is an error; every prefix that
    /// holds the text's last byte decodes to exactly the text.
    fn check_prefixes(blob: &[u8], text: &str, end: usize) {
        assert_eq!(
            blob.get(end - text.len()..end),
            Some(text.as_bytes()),
            "the text does not end at byte {end}"
        );
        for len in 0..=blob.len() {
            let prefix = blob.get(..len).unwrap_or_default();
            let decoded = decode_text(prefix);
            if len < end {
                assert!(
                    decoded.is_err(),
                    "prefix of {len} bytes decoded: {decoded:?}"
                );
            } else {
                assert_eq!(decoded, ok(text), "prefix of {len} bytes");
            }
        }
    }

    #[test]
    fn decodes_a_hand_built_mutable_body() {
        assert_eq!(
            decode_text(&mutable_body(b"\x0a", b"Noter test")),
            ok("Noter test")
        );
    }

    #[test]
    fn decodes_the_nsstring_chain_under_a_plain_root_with_a_run() {
        let blob = plain_body(b"\x05", b"hello", b"\x05");
        assert_eq!(decode_text(&blob), ok("hello"));
    }

    #[test]
    fn decodes_the_simulator_layout() {
        for text in ["Noter test", "a", "héllo 👋🏽 日本語", "\u{FFFC}"] {
            assert_eq!(decode_text(&attributed_body(text)), ok(text));
        }
    }

    #[test]
    fn length_of_200_bytes_uses_the_16_bit_form() {
        let text = "é".repeat(100); // 200 UTF-8 bytes
        let blob = mutable_body(b"\x81\xc8\x00", text.as_bytes());
        assert_eq!(decode_text(&blob), Ok(text));
    }

    #[test]
    fn length_of_exactly_200_ascii_bytes_is_not_cut() {
        let text = "0123456789".repeat(20);
        let blob = plain_body(b"\x81\xc8\x00", text.as_bytes(), b"\x81\xc8\x00");
        assert_eq!(decode_text(&blob), Ok(text));
    }

    #[test]
    fn bare_high_byte_is_an_unsigned_length() {
        // 0xC8 alone, as python-typedstream's unsigned read accepts, is 200 as well.
        let text = "z".repeat(200);
        assert_eq!(
            decode_text(&mutable_body(b"\xc8", text.as_bytes())),
            Ok(text)
        );
    }

    #[test]
    fn length_in_the_32_bit_form() {
        let text = "q".repeat(300);
        assert_eq!(
            decode_text(&mutable_body(b"\x82\x2c\x01\x00\x00", text.as_bytes())),
            Ok(text)
        );
    }

    #[test]
    fn emoji_and_multibyte_text_decode_exactly() {
        let text = "héllo 👋🏽 日本語";
        let length = u8::try_from(text.len()).expect("short test text");
        let run = u8::try_from(text.encode_utf16().count()).expect("short test text");
        assert_eq!(
            decode_text(&plain_body(&[length], text.as_bytes(), &[run])),
            ok(text)
        );
    }

    #[test]
    fn end_marker_bytes_inside_utf8_do_not_cut_the_body() {
        // U+2184 is E2 86 84 and U+1F184 is F0 9F 86 84: both contain the `86 84` pair that
        // marker-based extractors stop at.
        let text = "aↄb🆄c";
        assert!(text.as_bytes().windows(2).any(|pair| pair == [0x86, 0x84]));
        let length = u8::try_from(text.len()).expect("short test text");
        assert_eq!(
            decode_text(&mutable_body(&[length], text.as_bytes())),
            ok(text)
        );
        assert_eq!(decode_text(&attributed_body(text)), ok(text));
    }

    #[test]
    fn placeholders_are_kept() {
        let text = "\u{FFFC}see this\u{FFFC}\u{FFFD}";
        assert_eq!(decode_text(&attributed_body(text)), ok(text));
    }

    #[test]
    fn empty_body_decodes_to_empty_text() {
        // Like Apple's `Blank`: NSAttributedString root, length 00, then 86 86.
        let blob = [HEADER, PLAIN_ROOT, PLAIN_STRING, b"\x00\x86\x86"].concat();
        assert_eq!(decode_text(&blob), ok(""));
    }

    #[test]
    fn class_chains_may_arrive_as_back_references() {
        // A top-level `#` value introduces NSString v1 -> NSObject v0 -> nil first (strings
        // 0 "#", 1 NSString, 2 NSObject; objects 0-1 classes), so the root's string object
        // names its class with `92` and the root's superclass is `93` (NSObject).
        let mut blob = HEADER.to_vec();
        blob.extend_from_slice(b"\x84\x01#\x84\x84\x08NSString\x01\x84\x84\x08NSObject\x00\x85");
        // Root: new type "@" (string 3), new object (object 2), NSAttributedString (string 4,
        // object 3) -> `93`.
        blob.extend_from_slice(b"\x84\x01@\x84\x84\x84\x12NSAttributedString\x00\x93");
        // String: type `95` ("@"), new object (4) of class `92`, new type "+", text, closes.
        blob.extend_from_slice(b"\x95\x84\x92\x84\x01+\x03abc\x86\x86");
        assert_eq!(decode_text(&blob), ok("abc"));
    }

    #[test]
    fn mutable_string_whose_superclass_is_a_back_reference() {
        // A top-level `#` value introduces NSString v1 -> NSObject v0 -> nil first
        // (strings 0 "#", 1 NSString, 2 NSObject; objects 0 NSString, 1 NSObject).
        let mut blob = HEADER.to_vec();
        blob.extend_from_slice(b"\x84\x01#\x84\x84\x08NSString\x01\x84\x84\x08NSObject\x00\x85");
        // Root: new type "@" (string 3), new object (object 2), NSMutableAttributedString
        // (object 3) -> NSAttributedString (object 4) -> `93` (NSObject).
        blob.extend_from_slice(b"\x84\x01@\x84");
        blob.extend_from_slice(b"\x84\x84\x19NSMutableAttributedString\x00");
        blob.extend_from_slice(b"\x84\x84\x12NSAttributedString\x00\x93");
        // String: type `95` ("@"), new object (5), NSMutableString v1 (object 6) -> `92`
        // (NSString, object 0), new type "+", the text, then both objects close.
        blob.extend_from_slice(b"\x95\x84\x84\x84\x0fNSMutableString\x01\x92");
        blob.extend_from_slice(b"\x84\x01+\x03one\x86\x86");
        assert_eq!(decode_text(&blob), ok("one"));
    }

    #[test]
    fn utf16le_bom_body() {
        let mut blob = vec![0xFF, 0xFE];
        for unit in "hé 👋".encode_utf16() {
            blob.extend_from_slice(&unit.to_le_bytes());
        }
        assert_eq!(decode_text(&blob), ok("hé 👋"));
        assert_eq!(
            message_text(Some(&blob), None),
            Ok(Some("hé 👋".to_owned()))
        );
        // A lone surrogate and an odd trailing byte are replaced, not rejected.
        assert_eq!(
            decode_text(&[0xFF, 0xFE, 0x3D, 0xD8, 0x41]),
            ok("\u{FFFD}\u{FFFD}")
        );
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        let blob = mutable_body(b"\x03", b"a\xffb");
        assert_eq!(decode_text(&blob), ok("a\u{FFFD}b"));
    }

    #[test]
    fn message_text_prefers_the_body_and_falls_back_to_text() {
        let body = attributed_body("from body");
        assert_eq!(
            message_text(Some(&body), Some("from text")),
            Ok(Some("from body".to_owned()))
        );
        assert_eq!(
            message_text(None, Some("from text")),
            Ok(Some("from text".to_owned()))
        );
        assert_eq!(
            message_text(Some(&[]), Some("from text")),
            Ok(Some("from text".to_owned()))
        );
        assert_eq!(
            message_text(Some(b"garbage"), Some("from text")),
            Ok(Some("from text".to_owned()))
        );
        assert_eq!(
            message_text(Some(b"garbage"), None),
            Err(TypedStreamError::NotTypedStream)
        );
        assert_eq!(message_text(None, None), Ok(None));
        assert_eq!(message_text(Some(&[]), None), Ok(None));
    }

    #[test]
    fn prefixes_are_errors_until_the_text_is_complete_then_the_text() {
        for text in ["héllo 👋🏽 日本語", "", &"y".repeat(300)] {
            let blob = attributed_body(text);
            assert_eq!(walk_fully(&blob), ok(text));
            check_prefixes(&blob, text, simulator_text_end(text));
        }
        let long = "x".repeat(200);
        let blob = mutable_body(b"\x81\xc8\x00", long.as_bytes());
        let end = text_end(
            MUTABLE_ROOT,
            MUTABLE_STRING,
            b"\x81\xc8\x00",
            long.as_bytes(),
        );
        assert_eq!(walk_fully(&blob), Ok(long.clone()));
        check_prefixes(&blob, &long, end);
        let blob = plain_body(b"\x02", b"hi", b"\x02");
        assert_eq!(walk_fully(&blob), ok("hi"));
        check_prefixes(
            &blob,
            "hi",
            text_end(PLAIN_ROOT, PLAIN_STRING, b"\x02", b"hi"),
        );
    }

    #[test]
    fn unknown_attribute_objects_after_the_string_keep_the_text() {
        let text_part = [HEADER, PLAIN_ROOT, PLAIN_STRING, b"\x05hello"].concat();
        // String table after the text: 0 "@", 1 NSAttributedString, 2 NSObject, 3 NSString,
        // 4 "+"; objects 0 root, 1-2 classes, 3 the string, 4 NSString's class.
        let tails: [&[u8]; 7] = [
            // Garbage instead of the string's closing byte.
            b"\xff\x00\x13\x37",
            // The string closes, then bytes that are no type encoding.
            b"\x86\x80\x80",
            // A run, then an attribute object of a class never seen, archived with a bit
            // field (`b4`), which the reader does not walk.
            b"\x86\x84\x02iI\x01\x05\x92\x84\x84\x84\x10IMUnknownFeature\x00\x94\x84\x02b4\x0f\x86\x86\x86",
            // A union in the attributes.
            b"\x86\x84\x03(i)\x00\x86",
            // A back-reference to an object that does not exist.
            b"\x86\x84\x02iI\x01\x05\x92\xf0\x86",
            // Attribute runs cut short.
            b"\x86\x84\x02iI\x01",
            // The root never closes.
            b"\x86",
        ];
        for tail in tails {
            let blob = [text_part.as_slice(), tail].concat();
            assert!(walk_fully(&blob).is_err(), "{tail:02x?} walks fully");
            assert_eq!(decode_text(&blob), ok("hello"), "after {tail:02x?}");
        }
        // The same bytes before the text, or where a length says the text still goes on
        // (0x50 = 80 bytes, more than "hello" and any tail hold), are still an error.
        for tail in tails {
            let cut = [HEADER, PLAIN_ROOT, PLAIN_STRING, b"\x50hello", tail].concat();
            assert!(
                matches!(decode_text(&cut), Err(TypedStreamError::Truncated { .. })),
                "{tail:02x?} inside the text"
            );
            let before = [HEADER, PLAIN_ROOT, tail].concat();
            assert!(decode_text(&before).is_err(), "{tail:02x?} before the text");
        }
    }

    #[test]
    fn text_survives_attributes_the_reader_cannot_walk() {
        // A Ventura+ row: `text` is NULL, and the run's dictionary holds a link whose value is
        // archived by a class this reader has never met, with a type encoding it cannot walk.
        // Before, the whole body failed to decode and the message was lost.
        let mut blob = [HEADER, PLAIN_ROOT, PLAIN_STRING, b"\x0fsee example.com\x86"].concat();
        // Run `iI`: attribute set 1 over 15 UTF-16 units; NSDictionary with 1 entry (strings
        // 5 "iI", 6 NSDictionary, 7 "i"; objects 5 the dictionary, 6 its class).
        blob.extend_from_slice(b"\x84\x02iI\x01\x0f");
        blob.extend_from_slice(b"\x92\x84\x84\x84\x0cNSDictionary\x00\x94\x84\x01i\x01");
        // Key: an NSString (class `96`, type `96` "+").
        blob.extend_from_slice(b"\x92\x84\x96\x96\x0dIMLinkAttrKey\x86");
        // Value: a new IMLinkPresentationThing -> NSObject, archived as a union.
        blob.extend_from_slice(b"\x92\x84\x84\x84\x17IMLinkPresentationThing\x00\x94");
        blob.extend_from_slice(b"\x84\x05(i@q)\x00\x86\x86\x86");
        assert!(matches!(
            walk_fully(&blob),
            Err(TypedStreamError::UnsupportedType { .. })
        ));
        assert_eq!(decode_text(&blob), ok("see example.com"));
        assert_eq!(
            message_text(Some(&blob), None),
            Ok(Some("see example.com".to_owned()))
        );
    }

    #[test]
    fn truncation_reports_where_and_how_much() {
        let blob = mutable_body(b"\x0a", b"Noter test");
        // Cut inside the text: its closing `86 86` and last 4 of its 10 bytes are missing.
        let cut = blob.len() - 6;
        let prefix = blob.get(..cut).unwrap_or_default();
        assert_eq!(
            decode_text(prefix),
            Err(TypedStreamError::Truncated {
                offset: cut,
                needed: 4
            })
        );
        assert_eq!(
            TypedStreamError::Truncated {
                offset: 17,
                needed: 40
            }
            .to_string(),
            "attributedBody is truncated at byte 17 (needed 40 more bytes)"
        );
    }

    #[test]
    fn huge_lengths_fail_without_allocating() {
        let blob = mutable_body(b"\x82\xff\xff\xff\x7f", b"x");
        assert!(matches!(
            decode_text(&blob),
            Err(TypedStreamError::Truncated { .. })
        ));
    }

    #[test]
    fn header_errors() {
        assert_eq!(decode_text(b""), Err(TypedStreamError::NotTypedStream));
        assert_eq!(decode_text(b"hello"), Err(TypedStreamError::NotTypedStream));
        assert_eq!(
            decode_text(b"\x03\x0bstreamtyped\x81\xe8\x03"),
            Err(TypedStreamError::UnsupportedVersion { version: 3 })
        );
        assert_eq!(
            decode_text(b"\x04\x0btypedstream\x81\x03\xe8"),
            Err(TypedStreamError::BigEndian)
        );
        // A header alone holds no object.
        assert_eq!(decode_text(HEADER), Err(TypedStreamError::NoRootObject));
    }

    #[test]
    fn structural_errors() {
        // A string-table reference to an entry that does not exist yet.
        let blob = [HEADER, b"\x99"].concat();
        assert_eq!(
            decode_text(&blob),
            Err(TypedStreamError::BadReference {
                offset: 16,
                index: 7,
                table: "string",
                len: 0
            })
        );
        // A root that is not an attributed string.
        let blob = [HEADER, b"\x84\x01@\x84\x84\x84\x08NSNumber\x00\x85\x86"].concat();
        assert_eq!(
            decode_text(&blob),
            Err(TypedStreamError::UnexpectedRoot {
                class: "NSNumber".to_owned()
            })
        );
        // An attributed string whose first value is not a string.
        let blob = [HEADER, PLAIN_ROOT, b"\x84\x01i\x05\x86"].concat();
        assert_eq!(
            decode_text(&blob),
            Err(TypedStreamError::MissingString { offset: 55 })
        );
        // Trailing bytes after the root do not parse, but they come after the text.
        let mut blob = attributed_body("x");
        blob.push(0x86);
        assert!(matches!(
            walk_fully(&blob),
            Err(TypedStreamError::UnexpectedByte { byte: 0x86, .. })
        ));
        assert_eq!(decode_text(&blob), ok("x"));
        // An NSString with no byte string at all has no text.
        let blob = [
            HEADER,
            PLAIN_ROOT,
            b"\x92\x84\x84\x84\x08NSString\x01\x94\x86\x86",
        ]
        .concat();
        assert!(matches!(
            decode_text(&blob),
            Err(TypedStreamError::MissingString { .. })
        ));
        // Unions are not archivable, so they are not walked.
        let blob = [HEADER, b"\x84\x03(i)\x00"].concat();
        assert!(matches!(
            decode_text(&blob),
            Err(TypedStreamError::UnsupportedType { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        // After a valid root, objects nested inside objects: `92` type "@", `84` a new object
        // of class `95` (NSObject in the simulator's numbering), whose first value is again...
        let mut blob = attributed_body("x");
        for _ in 0..10_000 {
            blob.extend_from_slice(b"\x92\x84\x95");
        }
        assert!(matches!(
            walk_fully(&blob),
            Err(TypedStreamError::TooDeep {
                limit: MAX_DEPTH,
                ..
            })
        ));
        // ...which comes after the text, so the text survives it.
        assert_eq!(decode_text(&blob), ok("x"));
        // The same nesting before any root: a top-level `[1@]` (string 0) holding a new object
        // (object 0) of a new class X (object 1, string 1), whose first value is type "@"
        // (string 2), a new object of class `93` (X), whose first value is `94` ("@") again...
        let mut blob = [
            HEADER,
            b"\x84\x04[1@]\x84\x84\x84\x01X\x00\x85\x84\x01@\x84\x93",
        ]
        .concat();
        for _ in 0..10_000 {
            blob.extend_from_slice(b"\x94\x84\x93");
        }
        assert!(matches!(
            decode_text(&blob),
            Err(TypedStreamError::TooDeep {
                limit: MAX_DEPTH,
                ..
            })
        ));
        // Deeply nested arrays of structs in a type string.
        let mut encoding = Vec::new();
        for _ in 0..200 {
            encoding.extend_from_slice(b"[1{a=");
        }
        encoding.push(b'i');
        for _ in 0..200 {
            encoding.extend_from_slice(b"}]");
        }
        let mut blob = HEADER.to_vec();
        blob.extend_from_slice(b"\x84\x82");
        blob.extend_from_slice(
            &u32::try_from(encoding.len())
                .expect("small encoding")
                .to_le_bytes(),
        );
        blob.extend_from_slice(&encoding);
        blob.push(0x00);
        assert!(matches!(
            decode_text(&blob),
            Err(TypedStreamError::TooDeep {
                limit: MAX_DEPTH,
                ..
            })
        ));
    }

    #[test]
    fn empty_array_elements_do_not_spin() {
        // Four billion elements of a type that reads no bytes finish at once.
        let blob = [HEADER, b"\x84\x0d[4000000000!]"].concat();
        assert_eq!(decode_text(&blob), Err(TypedStreamError::NoRootObject));
    }

    #[test]
    fn generic_values_are_walked() {
        // After the root, a top-level group of every scalar kind, a char array and a struct,
        // then a float and a double archived with 0x83, a nil C string, object and selector.
        let mut values = b"\x84\x12cCsSiIqQ[3c]{p=ii}".to_vec();
        values.extend_from_slice(b"\x01\x02\x81\x00\x01\x03\xff\x82\x00\x00\x00\x01\x04\x05");
        values.extend_from_slice(b"xyz\x07\x08");
        values.extend_from_slice(b"\x84\x05fd*@:");
        values.extend_from_slice(b"\x83\x00\x00\xc0\x3f\x83\x00\x00\x00\x00\x00\x00\xf8\x3f");
        values.extend_from_slice(b"\x85\x85\x85");
        let blob = [attributed_body("after").as_slice(), &values].concat();
        assert_eq!(walk_fully(&blob), ok("after"));
        assert_eq!(decode_text(&blob), ok("after"));
        // Without a root, the values alone parse to the end of the stream.
        assert_eq!(
            decode_text(&[HEADER, &values].concat()),
            Err(TypedStreamError::NoRootObject)
        );
    }

    /// [`decode_text_unchecked`] stops at the text; it must still agree
    /// with the full walk on every input, errors included.
    fn same_as_full_walk(blob: &[u8]) -> std::result::Result<(), TestCaseError> {
        prop_assert_eq!(
            decode_text_unchecked(blob).map(|b| String::from_utf8_lossy(&b).into_owned()),
            decode_text(blob)
        );
        Ok(())
    }

    #[test]
    fn the_text_only_decoder_agrees_on_the_hand_built_bodies() {
        for text in ["", "hello", "日本語", "a\u{FFFC}b", &"x".repeat(300)] {
            let body = attributed_body(text);
            assert_eq!(decode_text_unchecked(&body).as_deref(), Ok(text.as_bytes()));
        }
    }

    /// The shortcut for plain bodies must not lose an attachment's place:
    /// with a U+FFFC in the text the attributes are still walked.
    #[test]
    fn decode_body_keeps_attachment_order_and_agrees_with_the_full_walk() {
        use crate::sim::body::{BodyPart, attributed_body_parts};
        let parts = [
            BodyPart::Text("look ".into()),
            BodyPart::Attachment("AT-1".into()),
            BodyPart::Attachment("AT-2".into()),
        ];
        let decoded = decode_body(&attributed_body_parts(&parts)).expect("decodes");
        assert_eq!(decoded.text, "look \u{FFFC}\u{FFFC}");
        assert_eq!(decoded.attachment_guids, ["AT-1", "AT-2"]);
        for text in [
            "",
            "plain",
            "日本語 \u{FFFD} balloon",
            "\u{FEFF}bom-like",
            &"y".repeat(70_000),
        ] {
            let body = attributed_body(text);
            assert!(plain_text(&body).is_some(), "takes the shortcut");
            let decoded = decode_body(&body).expect("decodes");
            assert_eq!(Ok(decoded.text), walk_fully(&body));
            assert!(decoded.attachment_guids.is_empty());
        }
    }

    #[test]
    fn the_plain_prefixes_are_what_the_walker_reads_before_the_text() {
        // The simulator writes the first one, as Messages does.
        assert!(attributed_body("hi").starts_with(PLAIN_PREFIXES[0]));
        for prefix in PLAIN_PREFIXES {
            for text in ["", "hello", &"é".repeat(150)] {
                let mut blob = prefix.to_vec();
                blob.extend_from_slice(&length_bytes(text.len()));
                blob.extend_from_slice(text.as_bytes());
                assert_eq!(plain_text(&blob), Some(text.as_bytes()));
                // The full walk, with the stream closed properly.
                blob.extend_from_slice(&[TAG_END, TAG_END]);
                assert_eq!(walk_fully(&blob), ok(text));
            }
        }
    }

    fn length_bytes(len: usize) -> Vec<u8> {
        match u8::try_from(len) {
            Ok(b) if !(0x80..=0x91).contains(&b) => vec![b],
            _ => [
                &[TAG_INT16][..],
                &u16::try_from(len).expect("short").to_le_bytes(),
            ]
            .concat(),
        }
    }

    proptest! {
        #[test]
        fn plain_prefixes_then_anything_agree_with_the_full_walk(
            which in 0..PLAIN_PREFIXES.len(),
            bytes in any::<Vec<u8>>(),
            text in any::<String>(),
        ) {
            let prefix = PLAIN_PREFIXES[which];
            same_as_full_walk(&[prefix, &bytes].concat())?;
            let mut blob = prefix.to_vec();
            blob.extend_from_slice(&length_bytes(text.len().min(60_000)));
            blob.extend_from_slice(text.as_bytes());
            same_as_full_walk(&blob)?;
            blob.extend_from_slice(&bytes);
            same_as_full_walk(&blob)?;
        }

        #[test]
        fn the_text_only_decoder_agrees_with_the_full_walk(
            text in any::<String>(),
            cut in any::<prop::sample::Index>(),
            bytes in any::<Vec<u8>>(),
        ) {
            same_as_full_walk(&bytes)?;
            same_as_full_walk(&[HEADER, &bytes].concat())?;
            let body = attributed_body(&text);
            same_as_full_walk(&body)?;
            let kept = body.get(..cut.index(body.len() + 1)).unwrap_or_default();
            same_as_full_walk(kept)?;
            same_as_full_walk(&[kept, &bytes].concat())?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in any::<Vec<u8>>()) {
            let _ = decode_text(&bytes);
            let _ = message_text(Some(&bytes), None);
        }

        #[test]
        fn header_then_arbitrary_bytes_never_panic(bytes in any::<Vec<u8>>()) {
            let _ = decode_text(&[HEADER, &bytes].concat());
        }

        #[test]
        fn valid_prefix_then_arbitrary_bytes_never_panic(
            text in any::<String>(),
            cut in any::<prop::sample::Index>(),
            bytes in any::<Vec<u8>>(),
        ) {
            let body = attributed_body(&text);
            let kept = body.get(..cut.index(body.len())).unwrap_or_default();
            let _ = decode_text(&[kept, &bytes].concat());
        }

        #[test]
        fn simulator_bodies_round_trip(text in any::<String>()) {
            let body = attributed_body(&text);
            prop_assert_eq!(walk_fully(&body), Ok(text.clone()));
            prop_assert_eq!(decode_text(&body), Ok(text));
        }

        #[test]
        fn simulator_body_prefixes_are_errors_until_the_text_is_complete(
            text in any::<String>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let body = attributed_body(&text);
            let len = cut.index(body.len() + 1);
            let prefix = body.get(..len).unwrap_or_default();
            let end = simulator_text_end(&text);
            prop_assert_eq!(body.get(end - text.len()..end), Some(text.as_bytes()));
            if len < end {
                prop_assert!(decode_text(prefix).is_err());
            } else {
                prop_assert_eq!(decode_text(prefix), Ok(text));
            }
        }

        #[test]
        fn anything_after_the_text_keeps_it(
            text in any::<String>(),
            cut in any::<prop::sample::Index>(),
            bytes in any::<Vec<u8>>(),
        ) {
            let body = attributed_body(&text);
            let end = simulator_text_end(&text);
            let len = end + cut.index(body.len() - end + 1);
            let kept = body.get(..len).unwrap_or_default();
            prop_assert_eq!(decode_text(&[kept, &bytes].concat()), Ok(text));
        }
    }
}
