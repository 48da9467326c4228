//! The bulk read's fast path: a plain message's `event.message` JSON line
//! written straight from its SQLite row.
//!
//! Nineteen rows in twenty of a real history are plain messages: a text in
//! a chat, no tapback, no group change, no attachment. The general path
//! ([`super::ChatDb::read_row`], [`super::MessageRow::into_body`],
//! [`super::bulk::write_event_line`]) copies each of their strings into a
//! `MessageRow`, again into an `EventMessage`, clones the chat's fields into
//! it and has serde encode it all; at a million rows that was most of the
//! read's CPU. Here the columns are borrowed from the row, the body's text
//! from its blob, the chat's part of the line (`chat_guid` to
//! `participants`, and the `recipients` of a from-me row) is encoded once
//! per chat ([`chat_json`]) and the sender once per handle
//! ([`sender_json`]), and strings are escaped by [`super::json`].
//!
//! [`write_line`] takes a row only when it can prove the general path would
//! give the same line; anything else (reactions, group events, poll votes,
//! attachments, over-long text, a row without a chat, a column holding a
//! type the general path would reject) is left to the general path. The
//! tests below, and `tests/chatdb_kinds.rs`, hold the two equal.

use std::borrow::Cow;

use rusqlite::types::ValueRef;
use whatsnap_proto::frame::{ChatKind, Handle, HandleKind};

use super::json::{write_i64, write_str, write_str_contents};
use super::{ChatDb, ChatDbError, Lookups, MAX_TEXT_BYTES, col, normalize_handle, typedstream};
use crate::apple_time;

/// A chat's part of a plain message's line, encoded once per chat.
#[derive(Debug, Default)]
pub(super) struct ChatJson {
    /// `,"chat_guid":…,"chat_kind":…[,"group_name":…][,"participants":[…]]`.
    chat: Box<[u8]>,
    /// `,"recipients":[…]` of a from-me row; empty when the chat has no
    /// participants (the field is then left out).
    recipients: Box<[u8]>,
}

/// Encodes a chat's fields as [`super::MessageRow::into_event`] and serde
/// would put them in an `event.message` ([`ChatJson`]).
pub(super) fn chat_json(
    guid: &str,
    kind: ChatKind,
    display_name: Option<&str>,
    handles: &[Handle],
) -> ChatJson {
    let mut chat = Vec::with_capacity(64 + guid.len() + 48 * handles.len());
    chat.extend_from_slice(b",\"chat_guid\":");
    write_str(&mut chat, guid);
    chat.extend_from_slice(b",\"chat_kind\":\"");
    chat.extend_from_slice(chat_kind_name(kind).as_bytes());
    chat.push(b'"');
    if let Some(name) = display_name {
        chat.extend_from_slice(b",\"group_name\":");
        write_str(&mut chat, name);
    }
    let mut recipients = Vec::new();
    if !handles.is_empty() {
        let mut list = vec![b'['];
        for (i, handle) in handles.iter().enumerate() {
            if i > 0 {
                list.push(b',');
            }
            write_handle(&mut list, handle);
        }
        list.push(b']');
        chat.extend_from_slice(b",\"participants\":");
        chat.extend_from_slice(&list);
        recipients.extend_from_slice(b",\"recipients\":");
        recipients.extend_from_slice(&list);
    }
    ChatJson {
        chat: chat.into(),
        recipients: recipients.into(),
    }
}

/// `,"sender":{…}` for a row from `handle` (`handle.id`), empty when the row
/// names no handle.
pub(super) fn sender_json(handle: Option<&str>) -> Box<[u8]> {
    let Some(handle) = handle else {
        return Box::default();
    };
    let mut out = b",\"sender\":".to_vec();
    write_handle(&mut out, &normalize_handle(handle));
    out.into()
}

fn write_handle(out: &mut Vec<u8>, handle: &Handle) {
    out.extend_from_slice(b"{\"handle\":");
    write_str(out, &handle.handle);
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(handle_kind_name(handle.kind).as_bytes());
    out.extend_from_slice(b"\"}");
}

/// serde's names of the protocol enums (`rename_all = "snake_case"`); a
/// test checks them against serde, and a new variant fails to compile here.
fn chat_kind_name(kind: ChatKind) -> &'static str {
    match kind {
        ChatKind::Direct => "direct",
        ChatKind::Group => "group",
    }
}

fn handle_kind_name(kind: HandleKind) -> &'static str {
    match kind {
        HandleKind::Phone => "phone",
        HandleKind::Email => "email",
        HandleKind::Other => "other",
    }
}

/// An integer column as the general path reads it (`Option<i64>`, NULL as
/// 0); `None` for any other type, which the general path would reject.
fn int(r: &rusqlite::Row<'_>, i: usize) -> Option<i64> {
    match r.get_ref(i).ok()? {
        ValueRef::Integer(v) => Some(v),
        ValueRef::Null => Some(0),
        _ => None,
    }
}

/// A text column as the general path reads it (`Option<String>`): `Some(None)`
/// for NULL, `None` for a blob, a number or invalid UTF-8, which the general
/// path would reject.
fn text<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Option<Option<&'r str>> {
    match r.get_ref(i).ok()? {
        ValueRef::Text(t) => std::str::from_utf8(t).ok().map(Some),
        ValueRef::Null => Some(None),
        _ => None,
    }
}

/// Appends the `event.message` line of the row `r` (read with the lean
/// SELECT, joined to chat `chat_rowid`) to `out` and returns `true`, when the
/// row is a plain message; returns `false`, with `out` untouched, for a row
/// the general path must handle.
pub(super) fn write_line(
    db: &ChatDb,
    r: &rusqlite::Row<'_>,
    chat_rowid: Option<i64>,
    lookups: &mut Lookups,
    out: &mut Vec<u8>,
) -> Result<bool, ChatDbError> {
    let Some(chat_rowid) = chat_rowid else {
        return Ok(false);
    };
    let Some(fields) = Fields::read(r) else {
        return Ok(false);
    };
    let (chat, sender) = lookups
        .plain_parts(db, chat_rowid, fields.handle)
        .map_err(|e| db.err(e))?;
    let line_at = out.len();
    out.extend_from_slice(b"{\"type\":\"event.message\",\"event_key\":\"msg:");
    let guid_at = out.len();
    write_str_contents(out, fields.guid);
    let guid = guid_at..out.len();
    out.extend_from_slice(b"\",\"guid\":\"");
    out.extend_from_within(guid);
    out.push(b'"');
    out.extend_from_slice(b",\"rowid\":");
    write_i64(out, fields.rowid);
    out.extend_from_slice(&chat.json().chat);
    out.extend_from_slice(b",\"service\":");
    write_str(out, fields.service.unwrap_or("iMessage"));
    if fields.from_me {
        out.extend_from_slice(b",\"from_me\":true");
        out.extend_from_slice(&chat.json().recipients);
    } else {
        out.extend_from_slice(sender);
    }
    out.extend_from_slice(b",\"text\":\"");
    if !write_text(out, &fields.text()) {
        out.truncate(line_at);
        return Ok(false);
    }
    out.push(b'"');
    if let Some(subject) = fields.subject {
        out.extend_from_slice(b",\"subject\":");
        write_str(out, subject);
    }
    if let Some(thread) = fields.thread_originator {
        out.extend_from_slice(b",\"reply_to_guid\":");
        write_str(out, thread);
        out.extend_from_slice(b",\"thread_originator_guid\":");
        write_str(out, thread);
    }
    out.extend_from_slice(b",\"date_ms\":");
    write_i64(out, apple_time::apple_to_unix_ms(fields.date).unwrap_or(0));
    out.extend_from_slice(b"}\n");
    Ok(true)
}

/// The columns of a plain message, borrowed from its row.
struct Fields<'r> {
    rowid: i64,
    guid: &'r str,
    text: Option<&'r str>,
    body: Option<&'r [u8]>,
    from_me: bool,
    service: Option<&'r str>,
    date: i64,
    handle: i64,
    subject: Option<&'r str>,
    thread_originator: Option<&'r str>,
}

impl<'r> Fields<'r> {
    /// The row's columns, or `None` if it is not a plain message or a column
    /// holds something the general path would treat differently.
    fn read(r: &'r rusqlite::Row<'_>) -> Option<Fields<'r>> {
        // Only an `event.message` without attachments (their order and
        // files need the general path) and without a member change.
        let associated_type = int(r, col::ASSOCIATED_TYPE)?;
        if matches!(associated_type, 1000 | 2000..=2007 | 3000..=3007 | 4000)
            || int(r, col::ITEM_TYPE)? != 0
            || int(r, col::HAS_ATTACHMENTS)? != 0
            || int(r, col::OTHER_HANDLE)? != 0
        {
            return None;
        }
        // Read and dropped by the general path, which fails on a wrong type.
        int(r, col::GROUP_ACTION)?;
        text(r, col::ASSOCIATED_GUID)?;
        text(r, col::ASSOCIATED_EMOJI)?;
        text(r, col::GROUP_TITLE)?;
        let ValueRef::Integer(rowid) = r.get_ref(col::ROWID).ok()? else {
            return None;
        };
        let ValueRef::Integer(date) = r.get_ref(col::DATE).ok()? else {
            return None;
        };
        let body = match r.get_ref(col::BODY).ok()? {
            ValueRef::Blob(b) | ValueRef::Text(b) => Some(b).filter(|b| !b.is_empty()),
            _ => None,
        };
        Some(Fields {
            rowid,
            guid: text(r, col::GUID)??,
            text: text(r, col::TEXT)?,
            body,
            from_me: int(r, col::FROM_ME)? != 0,
            service: text(r, col::SERVICE)?,
            date,
            handle: int(r, col::HANDLE)?,
            subject: text(r, col::SUBJECT)?.filter(|s| !s.is_empty()),
            thread_originator: text(r, col::THREAD_ORIGINATOR)?.filter(|s| !s.is_empty()),
        })
    }

    /// The body's text as `read_row` chooses it (`attributedBody`, else
    /// `text`, else empty), as bytes: a body's are not checked for UTF-8 yet.
    fn text(&self) -> Cow<'r, [u8]> {
        let column = || Cow::Borrowed(self.text.unwrap_or_default().as_bytes());
        match self.body {
            None => column(),
            Some(blob) => match typedstream::decode_text_unchecked(blob) {
                Ok(text) => text,
                // An undecodable body falls back to `text`; with none, the
                // event's text is empty (the error is only logged).
                Err(_) => column(),
            },
        }
    }
}

/// Appends the event's `text` (without quotes) for the body text `raw`:
/// decoded lossily when it is not UTF-8 and without the U+FFFC and U+FFFD
/// placeholders, as [`super::display_text_owned`] gives it. Returns `false`
/// for a text too long for the event, which the general path cuts.
fn write_text(out: &mut Vec<u8>, raw: &[u8]) -> bool {
    // Both placeholders encode as EF BF BC/BD: without an 0xEF byte there
    // is nothing to drop. (Checking UTF-8 while escaping, in one pass, was
    // measured no faster than std's check and a separate escape.)
    if raw.len() <= MAX_TEXT_BYTES
        && !raw.contains(&0xEF)
        && let Ok(text) = std::str::from_utf8(raw)
    {
        write_str_contents(out, text);
        return true;
    }
    let text = String::from_utf8_lossy(raw);
    if text.len() > MAX_TEXT_BYTES {
        return false;
    }
    // Escaping is per character, so the pieces can be escaped apart.
    for piece in text.split(['\u{FFFC}', '\u{FFFD}']) {
        write_str_contents(out, piece);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_are_serdes() {
        for kind in [ChatKind::Direct, ChatKind::Group] {
            assert_eq!(
                serde_json::to_string(&kind).expect("encodes"),
                format!("\"{}\"", chat_kind_name(kind))
            );
        }
        for kind in [HandleKind::Phone, HandleKind::Email, HandleKind::Other] {
            assert_eq!(
                serde_json::to_string(&kind).expect("encodes"),
                format!("\"{}\"", handle_kind_name(kind))
            );
        }
    }
}
