//! Every kind of row Messages writes, and the changes it makes to rows later.
//!
//! This module owns the simulator's coverage of the reader's cases: group
//! chats, services and GUID prefixes, replies, attachments with files,
//! tapbacks (add, and removal as Messages does it: delete the old row, insert
//! a 300x row), group events, app balloons, audio messages, second-valued
//! dates, rows whose chat join comes later, delivery/read/played updates,
//! edits, unsends, failures, deletes, iCloud backfill blocks and a database
//! rebuild that renumbers ROWIDs. Each change is one transaction left in the
//! WAL, as Messages leaves it.

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use crate::apple_time::now_apple_nanos;
use crate::chatdb::summary;
use crate::sim::body::{BodyPart, attributed_body, attributed_body_parts};
use crate::sim::writer::{
    ChatRow, MessageSpec, SimError, SimMessage, Simulator, begin, check_handle, new_guid,
};

/// Which chat a row goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimChat {
    /// The one-to-one chat with `handle` on `service` (`iMessage`, `SMS`, `RCS`).
    Direct {
        /// The other person.
        handle: String,
        /// The service.
        service: String,
    },
    /// A group chat, found by its identifier (`chat<digits>` or 32 hex digits).
    Group {
        /// `chat.chat_identifier` (also its room name).
        identifier: String,
        /// `chat.display_name` for a new group.
        name: Option<String>,
        /// Members besides the Mac's user.
        members: Vec<String>,
        /// The service.
        service: String,
    },
}

impl SimChat {
    /// A one-to-one iMessage chat.
    pub fn direct(handle: &str) -> SimChat {
        SimChat::Direct {
            handle: handle.to_owned(),
            service: "iMessage".to_owned(),
        }
    }

    /// A group iMessage chat.
    pub fn group(identifier: &str, name: Option<&str>, members: &[&str]) -> SimChat {
        SimChat::Group {
            identifier: identifier.to_owned(),
            name: name.map(str::to_owned),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            service: "iMessage".to_owned(),
        }
    }
}

/// A file sent with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimAttachment {
    /// `transfer_name`, e.g. `IMG_0001.HEIC`.
    pub name: String,
    /// `mime_type`, NULL when `None`.
    pub mime: Option<String>,
    /// `uti`.
    pub uti: Option<String>,
    /// The file's bytes (its size is `total_bytes`).
    pub content: Vec<u8>,
    /// Whether the file is on disk yet (else Messages is still downloading:
    /// `transfer_state` 3, the file appears with [`Simulator::attachment_ready`]).
    pub downloaded: bool,
}

/// Everything about a new message row.
#[derive(Debug, Clone)]
pub struct SimRow {
    /// Its chat.
    pub chat: SimChat,
    /// The sender for incoming rows; `None` = from me.
    pub from: Option<String>,
    /// The text.
    pub text: String,
    /// Files, in body order (before the text when `attachments_first`).
    pub attachments: Vec<SimAttachment>,
    /// `thread_originator_guid` of an inline reply.
    pub reply_to: Option<String>,
    /// `date` as stored (ns or s since 2001); now when `None`.
    pub date: Option<i64>,
    /// `balloon_bundle_id` of an app message (body becomes U+FFFD).
    pub balloon_bundle_id: Option<String>,
    /// An audio message (one `.caf` attachment expected).
    pub audio: bool,
    /// Also write the text into the `text` column (pre-Ventura behaviour).
    pub text_column: bool,
    /// Write the chat join in the same transaction (false: an orphan row whose
    /// join may come later with [`Simulator::join_later`]).
    pub join: bool,
    /// `subject`.
    pub subject: Option<String>,
    /// `error` on a from-me row that failed at once.
    pub error: i64,
}

impl SimRow {
    /// An incoming text message from `from` in their one-to-one iMessage chat.
    pub fn incoming(from: &str, text: &str) -> SimRow {
        SimRow {
            chat: SimChat::direct(from),
            from: Some(from.to_owned()),
            text: text.to_owned(),
            attachments: Vec::new(),
            reply_to: None,
            date: None,
            balloon_bundle_id: None,
            audio: false,
            text_column: false,
            join: true,
            subject: None,
            error: 0,
        }
    }

    /// A from-me text message into `chat`.
    pub fn from_me(chat: SimChat, text: &str) -> SimRow {
        SimRow {
            chat,
            from: None,
            ..SimRow::incoming("+10000000000", text)
        }
    }
}

/// A tapback's kind as `associated_message_type` (add; removal is +1000).
pub const TAPBACK_LOVE: i64 = 2000;
/// Emoji tapback (Sequoia+).
pub const TAPBACK_EMOJI: i64 = 2006;

impl Simulator {
    /// Writes one message row of any kind; see [`SimRow`].
    pub fn write(&mut self, row: &SimRow) -> Result<SimMessage, SimError> {
        let me = &self.me;
        let dir = attachments_dir(&me.path);
        let tx = begin(&mut self.conn, me)?;
        let (chat, service) = chat_for(me, &tx, &row.chat)?;
        let handle_id = match &row.from {
            Some(from) => {
                check_handle(from)?;
                me.find_or_create_handle_on(&tx, from, &service)?
            }
            None => match &row.chat {
                SimChat::Direct { handle, .. } => {
                    me.find_or_create_handle_on(&tx, handle, &service)?
                }
                SimChat::Group { .. } => 0,
            },
        };
        let mut parts = Vec::new();
        let mut att_rows = Vec::new();
        for (i, att) in row.attachments.iter().enumerate() {
            let guid = format!("at_{i}_{}", new_guid());
            parts.push(BodyPart::Attachment(guid.clone()));
            att_rows.push((guid, att));
        }
        if !row.text.is_empty() {
            parts.push(BodyPart::Text(row.text.clone()));
        }
        let body = if row.balloon_bundle_id.is_some() {
            attributed_body("\u{FFFD}")
        } else if row.attachments.is_empty() {
            attributed_body(&row.text)
        } else {
            attributed_body_parts(&parts)
        };
        let from_me = row.from.is_none();
        let spec = MessageSpec {
            handle_id,
            service: service.clone(),
            text: row.text_column.then(|| row.text.clone()),
            subject: row.subject.clone(),
            body: Some(body),
            is_from_me: from_me,
            is_delivered: i64::from(!from_me),
            is_sent: i64::from(from_me && row.error == 0),
            is_audio: row.audio,
            date: row.date,
            balloon_bundle_id: row.balloon_bundle_id.clone(),
            thread_originator_guid: row.reply_to.clone(),
            thread_originator_part: row.reply_to.as_ref().map(|_| "0:0:0".to_owned()),
            error: row.error,
            ..MessageSpec::default()
        };
        let written = me.insert_full(&tx, row.join.then_some(&chat), &spec)?;
        for (guid, att) in att_rows {
            let file =
                write_attachment_file(&dir, &guid, att).map_err(|source| SimError::Create {
                    path: dir.clone(),
                    source,
                })?;
            let secs = now_apple_nanos() / 1_000_000_000;
            let text = |s: &str| Value::Text(s.to_owned());
            let att_id = me.insert_row(
                &tx,
                "attachment",
                &[
                    ("guid", text(&guid)),
                    ("original_guid", text(&guid)),
                    ("created_date", Value::Integer(secs)),
                    ("start_date", Value::Integer(secs)),
                    ("filename", text(&stored_path(&file))),
                    ("uti", att.uti.as_deref().map_or(Value::Null, text)),
                    ("mime_type", att.mime.as_deref().map_or(Value::Null, text)),
                    (
                        "transfer_state",
                        Value::Integer(if att.downloaded { 5 } else { 3 }),
                    ),
                    ("is_outgoing", Value::Integer(i64::from(from_me))),
                    ("transfer_name", text(&att.name)),
                    ("total_bytes", Value::Integer(att.content.len() as i64)),
                ],
            )?;
            tx.execute(
                "INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?1, ?2)",
                [written.rowid, att_id],
            )
            .map_err(|e| me.write_err(e))?;
            if att.downloaded {
                std::fs::write(&file, &att.content).map_err(|source| SimError::Create {
                    path: file.clone(),
                    source,
                })?;
            }
        }
        if !row.attachments.is_empty() {
            // Apple's trigger does this; partial dumps come without it.
            tx.execute(
                "UPDATE message SET cache_has_attachments = 1 \
                 WHERE ROWID = ?1 AND cache_has_attachments IS NOT 1",
                [written.rowid],
            )
            .map_err(|e| me.write_err(e))?;
        }
        tx.commit().map_err(|e| me.write_err(e))?;
        Ok(SimMessage {
            chat_guid: chat.guid,
            ..written
        })
    }

    /// Joins an orphan row (written with `join: false`) to its chat, as
    /// Messages' second write does.
    pub fn join_later(&mut self, message: &SimMessage, chat: &SimChat) -> Result<(), SimError> {
        let me = &self.me;
        let tx = begin(&mut self.conn, me)?;
        let (chat, _) = chat_for(me, &tx, chat)?;
        tx.execute(
            "INSERT INTO chat_message_join (chat_id, message_id, message_date) \
             SELECT ?1, ROWID, date FROM message WHERE ROWID = ?2",
            [chat.rowid, message.rowid],
        )
        .map_err(|e| me.write_err(e))?;
        tx.commit().map_err(|e| me.write_err(e))
    }

    /// A tapback (`kind` 2000-2007, or 1000 sticker) by `from` (`None` = me)
    /// on part 0 of `target`.
    pub fn react(
        &mut self,
        chat: &SimChat,
        from: Option<&str>,
        target: &str,
        kind: i64,
        emoji: Option<&str>,
    ) -> Result<SimMessage, SimError> {
        self.associated(chat, from, &format!("p:0/{target}"), kind, emoji)
    }

    fn associated(
        &mut self,
        chat: &SimChat,
        from: Option<&str>,
        target: &str,
        kind: i64,
        emoji: Option<&str>,
    ) -> Result<SimMessage, SimError> {
        let me = &self.me;
        let tx = begin(&mut self.conn, me)?;
        let (chat_row, service) = chat_for(me, &tx, chat)?;
        let handle_id = match from {
            Some(f) => me.find_or_create_handle_on(&tx, f, &service)?,
            None => 0,
        };
        let spec = MessageSpec {
            handle_id,
            service,
            is_from_me: from.is_none(),
            is_delivered: 1,
            is_sent: i64::from(from.is_none()),
            associated_guid: Some(target.to_owned()),
            associated_type: kind,
            associated_emoji: emoji.map(str::to_owned),
            ..MessageSpec::default()
        };
        let written = me.insert_full(&tx, Some(&chat_row), &spec)?;
        tx.commit().map_err(|e| me.write_err(e))?;
        Ok(written)
    }

    /// Takes a tapback back as Messages does: the tapback row is deleted (its
    /// GUID lands in `deleted_messages`) and a 300x row is inserted.
    pub fn remove_reaction(
        &mut self,
        chat: &SimChat,
        reaction: &SimMessage,
    ) -> Result<SimMessage, SimError> {
        let (target, kind, emoji, handle): (String, i64, Option<String>, Option<String>) = self
            .conn
            .query_row(
                "SELECT m.associated_message_guid, m.associated_message_type, \
                   (SELECT associated_message_emoji FROM message WHERE ROWID = m.ROWID), h.id \
                 FROM message m LEFT JOIN handle h ON h.ROWID = m.handle_id WHERE m.guid = ?1",
                [&reaction.guid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .or_else(|_| {
                // Releases without associated_message_emoji.
                self.conn.query_row(
                    "SELECT m.associated_message_guid, m.associated_message_type, NULL, h.id \
                     FROM message m LEFT JOIN handle h ON h.ROWID = m.handle_id WHERE m.guid = ?1",
                    [&reaction.guid],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
            })
            .optional()
            .map_err(|e| self.me.write_err(e))?
            .ok_or_else(|| SimError::NoSuchMessage {
                guid: reaction.guid.clone(),
            })?;
        self.delete_message(&reaction.guid)?;
        self.associated(
            chat,
            handle.as_deref(),
            &target,
            kind + 1000,
            emoji.as_deref(),
        )
    }

    /// Deletes a message row for good, logging its GUID in `deleted_messages`
    /// as Apple's trigger does.
    pub fn delete_message(&mut self, guid: &str) -> Result<(), SimError> {
        let me = &self.me;
        let tx = begin(&mut self.conn, me)?;
        let has_trigger: bool = tx
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'add_to_deleted_messages'",
                [],
                |_| Ok(true),
            )
            .optional()
            .map_err(|e| me.write_err(e))?
            .unwrap_or(false);
        tx.execute(
            "DELETE FROM chat_message_join WHERE message_id = (SELECT ROWID FROM message WHERE guid = ?1)",
            [guid],
        )
        .map_err(|e| me.write_err(e))?;
        let n = tx
            .execute("DELETE FROM message WHERE guid = ?1", [guid])
            .map_err(|e| me.write_err(e))?;
        if n == 0 {
            return Err(SimError::NoSuchMessage {
                guid: guid.to_owned(),
            });
        }
        if !has_trigger && me.has("deleted_messages", "guid") {
            tx.execute("INSERT INTO deleted_messages (guid) VALUES (?1)", [guid])
                .map_err(|e| me.write_err(e))?;
        }
        tx.commit().map_err(|e| me.write_err(e))
    }

    fn update(
        &mut self,
        guid: &str,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<(), SimError> {
        let mut all: Vec<&dyn rusqlite::ToSql> = vec![&guid];
        all.extend_from_slice(params);
        let n = self
            .conn
            .execute(sql, all.as_slice())
            .map_err(|e| self.me.write_err(e))?;
        if n == 0 {
            return Err(SimError::NoSuchMessage {
                guid: guid.to_owned(),
            });
        }
        Ok(())
    }

    /// The recipient (or, for incoming rows, the Mac's user) read it.
    pub fn mark_read(&mut self, guid: &str) -> Result<(), SimError> {
        self.update(
            guid,
            "UPDATE message SET is_read = 1, date_read = ?2 WHERE guid = ?1",
            &[&now_apple_nanos()],
        )
    }

    /// An audio message was played.
    pub fn mark_played(&mut self, guid: &str) -> Result<(), SimError> {
        self.update(
            guid,
            "UPDATE message SET is_played = 1, date_played = ?2 WHERE guid = ?1",
            &[&now_apple_nanos()],
        )
    }

    /// A send failed with Messages' error `code`.
    pub fn fail(&mut self, guid: &str, code: i64) -> Result<(), SimError> {
        self.update(
            guid,
            "UPDATE message SET error = ?2, is_sent = 0 WHERE guid = ?1",
            &[&code],
        )
    }

    /// Edits part 0 (Ventura+): new body, `text` NULL, `date_edited` set,
    /// the history in `message_summary_info`.
    pub fn edit(&mut self, guid: &str, old_text: &str, new_text: &str) -> Result<(), SimError> {
        let now = now_apple_nanos();
        let secs = now as f64 / 1e9;
        let info = summary::encode(
            Some((
                0,
                vec![
                    (secs - 1.0, attributed_body(old_text)),
                    (secs, attributed_body(new_text)),
                ],
            )),
            &[],
        );
        self.update(
            guid,
            "UPDATE message SET attributedBody = ?2, text = NULL, date_edited = ?3, \
             message_summary_info = ?4 WHERE guid = ?1",
            &[&attributed_body(new_text), &now, &info],
        )
    }

    /// Unsends the whole message (Ventura+): body removed, `part_count` 0,
    /// `date_edited` set, part 0 listed as retracted.
    pub fn unsend(&mut self, guid: &str) -> Result<(), SimError> {
        let info = summary::encode(None, &[0]);
        self.update(
            guid,
            "UPDATE message SET attributedBody = NULL, text = NULL, part_count = 0, \
             date_edited = ?2, message_summary_info = ?3 WHERE guid = ?1",
            &[&now_apple_nanos(), &info],
        )
    }

    /// A group event: `item_type` 1 (member added: `group_action_type` 0,
    /// removed: 1, `other` = the member), 2 (renamed to `title`), 3 (left: 0,
    /// photo changed: 1, photo removed: 2). Updates the chat as Messages does.
    pub fn group_event(
        &mut self,
        chat: &SimChat,
        from: Option<&str>,
        item_type: i64,
        action: i64,
        other: Option<&str>,
        title: Option<&str>,
    ) -> Result<SimMessage, SimError> {
        let me = &self.me;
        let tx = begin(&mut self.conn, me)?;
        let (chat_row, service) = chat_for(me, &tx, chat)?;
        let handle_id = match from {
            Some(f) => me.find_or_create_handle_on(&tx, f, &service)?,
            None => 0,
        };
        let other_id = match other {
            Some(o) => me.find_or_create_handle_on(&tx, o, &service)?,
            None => 0,
        };
        match (item_type, action) {
            (1, 0) => {
                tx.execute(
                    "INSERT OR IGNORE INTO chat_handle_join (chat_id, handle_id) VALUES (?1, ?2)",
                    [chat_row.rowid, other_id],
                )
                .map_err(|e| me.write_err(e))?;
            }
            (1, 1) => {
                tx.execute(
                    "DELETE FROM chat_handle_join WHERE chat_id = ?1 AND handle_id = ?2",
                    [chat_row.rowid, other_id],
                )
                .map_err(|e| me.write_err(e))?;
            }
            (2, _) => {
                tx.execute(
                    "UPDATE chat SET display_name = ?2 WHERE ROWID = ?1",
                    rusqlite::params![chat_row.rowid, title],
                )
                .map_err(|e| me.write_err(e))?;
            }
            _ => {}
        }
        let spec = MessageSpec {
            handle_id,
            service,
            is_from_me: from.is_none(),
            is_delivered: 1,
            item_type,
            group_action_type: action,
            other_handle: other_id,
            group_title: title.map(str::to_owned),
            ..MessageSpec::default()
        };
        let written = me.insert_full(&tx, Some(&chat_row), &spec)?;
        tx.commit().map_err(|e| me.write_err(e))?;
        Ok(written)
    }

    /// A pending attachment finished downloading: file written, transfer done.
    pub fn attachment_ready(&mut self, message_guid: &str) -> Result<(), SimError> {
        let rows: Vec<(i64, String, String)> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT a.ROWID, a.filename, a.transfer_name FROM attachment a \
                     JOIN message_attachment_join j ON j.attachment_id = a.ROWID \
                     JOIN message m ON m.ROWID = j.message_id WHERE m.guid = ?1",
                )
                .map_err(|e| self.me.write_err(e))?;
            stmt.query_map([message_guid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(Iterator::collect)
                .map_err(|e| self.me.write_err(e))?
        };
        for (rowid, filename, _) in rows {
            let path = crate::chatdb::expand_home(&filename, std::env::var_os("HOME").as_deref());
            std::fs::write(&path, b"downloaded").map_err(|source| SimError::Create {
                path: path.clone(),
                source,
            })?;
            self.conn
                .execute(
                    "UPDATE attachment SET transfer_state = 5 WHERE ROWID = ?1",
                    [rowid],
                )
                .map_err(|e| self.me.write_err(e))?;
        }
        Ok(())
    }

    /// Rebuilds the database as Messages sometimes does after an upgrade or a
    /// repair: a new file (new inode) with the same rows but message ROWIDs
    /// renumbered from 1, renamed over the old one; the old WAL and SHM go.
    /// Returns the simulator on the new file.
    pub fn rebuild(self) -> Result<Simulator, SimError> {
        let path = self.me.path.clone();
        let tmp = path.with_extension("rebuild");
        let io = |source| SimError::Create {
            path: tmp.clone(),
            source,
        };
        let _ = std::fs::remove_file(&tmp);
        self.conn
            .execute("VACUUM INTO ?1", [tmp.to_string_lossy()])
            .map_err(|e| self.me.write_err(e))?;
        drop(self);
        {
            let conn = Connection::open(&tmp).map_err(|source| SimError::Open {
                path: tmp.clone(),
                source,
            })?;
            // Renumber: move every message ROWID down to 1..n, joins follow.
            conn.execute_batch(
                "PRAGMA foreign_keys = OFF;
                 BEGIN;
                 CREATE TEMP TABLE renumber AS
                   SELECT ROWID AS old, row_number() OVER (ORDER BY ROWID) AS new FROM message;
                 UPDATE message SET ROWID = -ROWID;
                 UPDATE message SET ROWID = (SELECT new FROM renumber WHERE old = -message.ROWID);
                 UPDATE chat_message_join SET message_id = (SELECT new FROM renumber WHERE old = message_id);
                 UPDATE message_attachment_join SET message_id = (SELECT new FROM renumber WHERE old = message_id);
                 UPDATE sqlite_sequence SET seq = (SELECT IFNULL(MAX(ROWID), 0) FROM message) WHERE name = 'message';
                 COMMIT;
                 PRAGMA journal_mode = WAL;",
            )
            .map_err(|source| SimError::Write {
                path: tmp.clone(),
                source,
            })?;
        }
        for suffix in ["-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        Simulator::open(&path)
    }
}

/// The chat row for a [`SimChat`] and the service its rows use.
fn chat_for(
    me: &crate::sim::writer::Writer,
    tx: &Connection,
    chat: &SimChat,
) -> Result<(ChatRow, String), SimError> {
    match chat {
        SimChat::Direct { handle, service } => {
            check_handle(handle)?;
            let h = me.find_or_create_handle_on(tx, handle, service)?;
            let row = me.find_or_create_chat(tx, service, None, handle, &[h], None)?;
            Ok((row, service.clone()))
        }
        SimChat::Group {
            identifier,
            name,
            members,
            service,
        } => {
            let mut ids = Vec::new();
            for m in members {
                check_handle(m)?;
                ids.push(me.find_or_create_handle_on(tx, m, service)?);
            }
            let row = me.find_or_create_chat(
                tx,
                service,
                Some(identifier),
                identifier,
                &ids,
                name.as_deref(),
            )?;
            Ok((row, service.clone()))
        }
    }
}

/// `Attachments/` beside the database, as `~/Library/Messages/Attachments`.
fn attachments_dir(db: &Path) -> PathBuf {
    db.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
        .join("Attachments")
}

/// `Attachments/xx/yy/<guid>/<name>`: two levels of two hex digits, then a
/// folder per transfer (reference section 16). Creates the folders.
fn write_attachment_file(dir: &Path, guid: &str, att: &SimAttachment) -> std::io::Result<PathBuf> {
    let hex: String = guid
        .chars()
        .rev()
        .filter(char::is_ascii_hexdigit)
        .take(4)
        .collect::<String>()
        .to_lowercase();
    let (a, b) = hex.split_at(hex.len().min(2));
    let folder = dir.join(a).join(b).join(guid);
    std::fs::create_dir_all(&folder)?;
    Ok(folder.join(&att.name))
}

/// The path as Messages stores it: `~/...` when under the home folder.
fn stored_path(file: &Path) -> String {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
        && let Ok(rest) = file.strip_prefix(Path::new(&home))
    {
        return format!("~/{}", rest.display());
    }
    file.display().to_string()
}
