//! Read-only access to the Messages database (`~/Library/Messages/chat.db`).
//!
//! The file belongs to Messages. We open it with a read-only URI (`mode=ro`,
//! never `immutable=1`, which would hide rows still in the WAL), wait on locks
//! with a busy timeout, and keep every read transaction short so Messages can
//! checkpoint. Columns are probed once per connection, because schemas differ
//! between releases and even between machines on the same release; queries
//! are built from what is present.
//!
//! This module turns rows into protocol events ([`MessageRow::to_event`]); it
//! knows nothing of the outbox or the link.

pub mod bulk;
mod json;
mod plain;
pub mod summary;
pub mod typedstream;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use whatsnap_proto::frame::{
    Attachment, AttachmentState, Body, ChatKind, EventGroup, EventMessage, EventReaction,
    GroupAction, Handle, HandleKind, Origin,
};

use crate::apple_time;

/// Why chat.db cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ChatDbError {
    /// No file at the path.
    #[error(
        "no Messages database at {path}: open Messages and sign in to iMessage, or pass --chat-db"
    )]
    Missing {
        /// Where we looked.
        path: PathBuf,
    },
    /// macOS refused access: Full Disk Access is missing.
    #[error(
        "macOS denied access to {path}: grant Full Disk Access to {binary} in System Settings > Privacy & Security > Full Disk Access, then restart whatsnap-mac"
    )]
    PermissionDenied {
        /// The database.
        path: PathBuf,
        /// The binary that needs the grant.
        binary: String,
    },
    /// The file is not a Messages database.
    #[error("{path} is not a Messages database: it has no `{table}` table")]
    NotMessagesDb {
        /// The file.
        path: PathBuf,
        /// The table that is missing.
        table: &'static str,
    },
    /// Any other SQLite failure.
    #[error("reading {path} failed: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
}

/// One `message` row with what the bridge needs from its joins.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    /// `message.ROWID`.
    pub rowid: i64,
    /// `message.guid`.
    pub guid: String,
    /// Decoded body (attributedBody first, `text` second); `None` if neither.
    pub text: Option<String>,
    /// Why the body could not be decoded, when it could not.
    pub body_error: Option<String>,
    /// `is_from_me`.
    pub from_me: bool,
    /// `service`.
    pub service: Option<String>,
    /// `date` as stored.
    pub date: i64,
    /// Sender handle id (`handle.id`) for incoming rows.
    pub sender: Option<String>,
    /// `chat.guid` through `chat_message_join`; `None` if not joined (yet).
    pub chat_guid: Option<String>,
    /// `chat.style`.
    pub chat_style: Option<i64>,
    /// `chat.display_name`.
    pub group_name: Option<String>,
    /// `is_sent`.
    pub is_sent: bool,
    /// `error`.
    pub error: i64,
    /// Members of the chat (not the Mac's user).
    pub participants: Vec<String>,
    /// `subject`.
    pub subject: Option<String>,
    /// `thread_originator_guid`: the message an inline reply answers.
    pub thread_originator_guid: Option<String>,
    /// `associated_message_guid` (`p:N/GUID`, `bp:GUID` or bare).
    pub associated_guid: Option<String>,
    /// `associated_message_type` (0, 1000, 2000-2007, 3000-3007, 4000).
    pub associated_type: i64,
    /// `associated_message_emoji` of an emoji tapback.
    pub associated_emoji: Option<String>,
    /// `item_type` (0 message, 1-3 group events, ...).
    pub item_type: i64,
    /// `group_action_type`.
    pub group_action_type: i64,
    /// `group_title` of a rename.
    pub group_title: Option<String>,
    /// `handle.id` of `other_handle` (member added or removed).
    pub other_handle: Option<String>,
    /// `balloon_bundle_id` of an app message.
    pub balloon_bundle_id: Option<String>,
    /// `is_audio_message`.
    pub is_audio: bool,
    /// Status columns the update tracker diffs.
    pub status: RowStatus,
    /// Files, in body order.
    pub attachments: Vec<AttachmentRow>,
}

/// The columns of a row that change after it was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowStatus {
    /// `is_delivered` / `date_delivered` (0 = unset).
    pub is_delivered: bool,
    /// `date_delivered`.
    pub date_delivered: i64,
    /// `date_read` (0 = unread), with `is_read`.
    pub is_read: bool,
    /// `date_read`.
    pub date_read: i64,
    /// `is_played` / `date_played`.
    pub is_played: bool,
    /// `date_played`.
    pub date_played: i64,
    /// `date_edited` (edits and unsends set it).
    pub date_edited: i64,
    /// `date_retracted`.
    pub date_retracted: i64,
    /// `part_count`; 0 after a full unsend. `None` before Ventura.
    pub part_count: Option<i64>,
    /// `error`.
    pub error: i64,
    /// `is_sent`.
    pub is_sent: bool,
    /// Edit events in `message_summary_info`.
    pub edit_events: usize,
    /// Unsent parts in `message_summary_info`.
    pub retracted_parts: usize,
    /// Attachments not downloaded yet.
    pub pending_attachments: usize,
}

/// One `attachment` row of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRow {
    /// `attachment.guid`.
    pub guid: String,
    /// `filename` with `~/` expanded; `None` when Messages has no path yet.
    pub path: Option<PathBuf>,
    /// `transfer_name`, else the path's last component.
    pub name: String,
    /// `mime_type`, else derived from `uti`.
    pub mime: Option<String>,
    /// `total_bytes` (bytes transferred, not necessarily the file size).
    pub size: Option<u64>,
    /// `transfer_state`.
    pub transfer_state: i64,
    /// Whether the file is on disk.
    pub on_disk: bool,
}

/// An open, read-only chat.db connection.
pub struct ChatDb {
    conn: Connection,
    path: PathBuf,
    message_cols: HashSet<String>,
    attachment_cols: HashSet<String>,
    /// The SELECT list, built once per connection from the probed columns.
    select_list: String,
    /// [`Self::range_sql`], built once, full and lean.
    range_sql: String,
    lean_sql: String,
    /// `chat_message_join` has an index on `message_id`, so the bulk read
    /// can walk it in message order; without one it falls back to joining.
    joins_indexed: bool,
    /// Inode of the file at open, to notice a replaced database.
    identity: Option<u64>,
    home: Option<std::ffi::OsString>,
    generation: u64,
}

/// Counts connections opened, so a caller can tell a reopened one.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The status columns of one row ([`ChatDb::status_window`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    /// `ROWID`.
    pub rowid: i64,
    /// `guid`.
    pub guid: String,
    /// `is_from_me`.
    pub from_me: bool,
    /// The columns (summary-derived fields left at 0).
    pub status: RowStatus,
}

impl std::fmt::Debug for ChatDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatDb").field("path", &self.path).finish()
    }
}

impl ChatDb {
    /// Opens `path` read-only and probes its schema. Pages go through
    /// SQLite's page cache, which is bounded: what the daemon, reading a few
    /// rows at a time for months, wants.
    pub fn open(path: &Path) -> Result<ChatDb, ChatDbError> {
        Self::open_with(path, false)
    }

    /// [`Self::open`] for reading a whole history ([`bulk`]): the file is
    /// mapped instead of each page being copied through `read()`, several
    /// times faster. Every page touched then stays resident (shared with the
    /// OS file cache) as long as the connection lives, which is why the
    /// daemon's long-lived connection does not map.
    pub fn open_for_bulk(path: &Path) -> Result<ChatDb, ChatDbError> {
        Self::open_with(path, true)
    }

    fn open_with(path: &Path, mmap: bool) -> Result<ChatDb, ChatDbError> {
        if !path.exists() {
            return Err(match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    permission_denied(path)
                }
                _ => ChatDbError::Missing {
                    path: path.to_path_buf(),
                },
            });
        }
        let uri = format!("file:{}?mode=ro", uri_path(path));
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&uri, flags).map_err(|e| classify(path, e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| classify(path, e))?;
        if mmap {
            // Read-only, so mapping is safe with Messages writing; WAL
            // frames are still read normally.
            conn.pragma_update(None, "mmap_size", 1i64 << 30)
                .map_err(|e| classify(path, e))?;
        }
        let mut db = ChatDb {
            conn,
            path: path.to_path_buf(),
            message_cols: HashSet::new(),
            attachment_cols: HashSet::new(),
            select_list: String::new(),
            range_sql: String::new(),
            lean_sql: String::new(),
            joins_indexed: false,
            identity: file_identity(path),
            home: std::env::var_os("HOME"),
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        // macOS may only refuse at the first query, so probing is also the
        // permission check.
        db.message_cols = db.columns("message")?;
        db.attachment_cols = db.columns("attachment")?;
        db.select_list = db.build_select_list(false);
        db.range_sql = db.range_sql(false);
        db.lean_sql = db.range_sql(true);
        db.joins_indexed = db.joins_indexed()?;
        for table in ["message", "chat", "handle", "chat_message_join"] {
            if db.columns(table)?.is_empty() {
                return Err(ChatDbError::NotMessagesDb {
                    path: path.to_path_buf(),
                    table,
                });
            }
        }
        Ok(db)
    }

    fn columns(&self, table: &str) -> Result<HashSet<String>, ChatDbError> {
        let mut stmt = self
            .conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .map_err(|e| self.err(e))?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(1))
            .map_err(|e| self.err(e))?
            .collect::<Result<HashSet<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(names)
    }

    fn err(&self, e: rusqlite::Error) -> ChatDbError {
        classify(&self.path, e)
    }
    /// Whether an index of `chat_message_join` starts with `message_id`.
    fn joins_indexed(&self) -> Result<bool, ChatDbError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT 1 FROM pragma_index_list('chat_message_join') l
                 WHERE (SELECT name FROM pragma_index_info(l.name) WHERE seqno = 0) = 'message_id'",
            )
            .map_err(|e| self.err(e))?;
        stmt.exists([]).map_err(|e| self.err(e))
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `MAX(ROWID)` of `message` (0 when empty).
    pub fn max_rowid(&self) -> Result<i64, ChatDbError> {
        self.conn
            .query_row("SELECT IFNULL(MAX(ROWID), 0) FROM message", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))
    }

    /// Whether the file at the path is no longer the one this connection
    /// opened (Messages rebuilt or replaced it).
    pub fn is_replaced(&self) -> bool {
        file_identity(&self.path) != self.identity
    }

    /// Inode of the database file when opened.
    pub fn identity(&self) -> Option<u64> {
        self.identity
    }

    /// Sets the home folder used to expand `~/` in attachment paths.
    pub fn set_home(&mut self, home: Option<std::ffi::OsString>) {
        self.home = home;
    }

    fn col_or(&self, col: &str, fallback: &str) -> String {
        if self.message_cols.contains(col) {
            format!("m.{col}")
        } else {
            fallback.to_owned()
        }
    }

    /// The `message` columns read from each row, in the fixed order of
    /// [`col`]; columns this release lacks are replaced by their "unset"
    /// value. Chats and handles are not joined here: they are resolved from
    /// [`Lookups`], once per read rather than once per row.
    ///
    /// `lean` leaves out (as NULL) what no event carries, only the update
    /// tracker: status columns, `message_summary_info` and balloon columns. The bulk read ([`Self::bodies_between`]) uses it.
    fn build_select_list(&self, lean: bool) -> String {
        let status = |c: &str, fallback: &str| {
            if lean {
                "NULL".to_owned()
            } else {
                self.col_or(c, fallback)
            }
        };
        let body = |c: &str| {
            // A few databases store blobs with TEXT affinity; CAST keeps the bytes.
            if self.message_cols.contains(c) {
                format!("CAST(m.{c} AS BLOB)")
            } else {
                "NULL".to_owned()
            }
        };
        [
            "m.ROWID".to_owned(),
            "m.guid".to_owned(),
            "m.text".to_owned(),
            body("attributedBody"),
            "m.is_from_me".to_owned(),
            "m.service".to_owned(),
            "IFNULL(m.date, 0)".to_owned(),
            self.col_or("handle_id", "0"),
            status("is_sent", "0"),
            status("error", "0"),
            self.col_or("subject", "NULL"),
            self.col_or("thread_originator_guid", "NULL"),
            self.col_or("associated_message_guid", "NULL"),
            self.col_or("associated_message_type", "0"),
            self.col_or("associated_message_emoji", "NULL"),
            self.col_or("item_type", "0"),
            // Group events are events too (`event.group`): read even when lean.
            self.col_or("group_action_type", "0"),
            self.col_or("group_title", "NULL"),
            self.col_or("other_handle", "0"),
            status("balloon_bundle_id", "NULL"),
            status("is_audio_message", "0"),
            status("is_delivered", "0"),
            status("date_delivered", "0"),
            status("is_read", "0"),
            status("date_read", "0"),
            status("is_played", "0"),
            status("date_played", "0"),
            status("date_edited", "0"),
            status("date_retracted", "0"),
            status("part_count", "NULL"),
            if lean {
                "NULL".to_owned()
            } else {
                body("message_summary_info")
            },
            self.col_or("cache_has_attachments", "1"),
        ]
        .join(", ")
    }

    /// A SELECT that joins `chat` only to filter on it (sent-message
    /// confirmation, single rows); the chat's ROWID comes back as
    /// [`col::CHAT`].
    fn select_sql(&self, filter: &str) -> String {
        format!(
            "SELECT {list}, cmj.chat_id
             FROM message m
             LEFT JOIN chat_message_join cmj ON cmj.message_id = m.ROWID
             LEFT JOIN chat c ON c.ROWID = cmj.chat_id
             WHERE {filter}
             ORDER BY m.ROWID",
            list = self.select_list,
        )
    }

    /// The bulk SELECT: `message` alone over a ROWID range, in ROWID order.
    /// `?1 < ROWID <= ?2`, at most `?3` rows (-1: no limit).
    fn range_sql(&self, lean: bool) -> String {
        format!(
            "SELECT {list}, NULL FROM message m
             WHERE m.ROWID > ?1 AND m.ROWID <= ?2 ORDER BY m.ROWID LIMIT ?3",
            list = self.build_select_list(lean),
        )
    }

    /// `chat_message_join` over the same range, in message order (the
    /// `message_id` index, present on every release, makes it a range scan).
    const JOIN_SQL: &'static str = "SELECT message_id, chat_id FROM chat_message_join
         WHERE message_id > ?1 AND message_id <= ?2 ORDER BY message_id";

    fn query_rows(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<MessageRow>, ChatDbError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let mut lookups = Lookups::default();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        let mut cursor = stmt.query(params).map_err(|e| self.err(e))?;
        while let Some(r) = cursor.next().map_err(|e| self.err(e))? {
            let chat: Option<i64> = r.get(col::CHAT).map_err(|e| self.err(e))?;
            let (mut row, chat) = self
                .read_row(r, chat, false, &mut lookups)
                .map_err(|e| self.err(e))?;
            row.set_chat(chat.as_deref());
            // A message joined to several chats comes once per chat; the
            // first (lowest chat ROWID is not guaranteed) wins.
            if seen.insert(row.rowid) {
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// Rows with `after < ROWID <= upto`, oldest first, at most `limit`
    /// (`None`: all), each with its chat.
    ///
    /// One short read transaction holds two cursors walking in ROWID order,
    /// `message` and `chat_message_join`, merged like a sorted-list merge;
    /// chats and handles come from [`Lookups`]. Joining per row instead made
    /// SQLite seek three other B-trees for every message and cost more than
    /// everything else the reader does (docs/benchmarks.md, "chat.db
    /// reader").
    fn read_range(
        &self,
        after: i64,
        upto: i64,
        limit: Option<usize>,
        lean: bool,
        lookups: &mut Lookups,
        mut each: impl FnMut(MessageRow, Option<std::sync::Arc<ChatInfo>>) -> Result<(), ChatDbError>,
    ) -> Result<(), ChatDbError> {
        self.scan_range(after, upto, limit, lean, |r, chat| {
            let (row, chat) = self
                .read_row(r, chat, lean, lookups)
                .map_err(|e| self.err(e))?;
            each(row, chat)
        })
    }

    /// The walk under [`Self::read_range`]: hands `each` every SQLite row of
    /// the range, still undecoded, with the ROWID of its chat (`None`: not
    /// joined), so the bulk read can write a plain message's JSON straight
    /// from the row ([`plain`]).
    fn scan_range<E: From<ChatDbError>>(
        &self,
        after: i64,
        upto: i64,
        limit: Option<usize>,
        lean: bool,
        mut each: impl FnMut(&rusqlite::Row<'_>, Option<i64>) -> Result<(), E>,
    ) -> Result<(), E> {
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        // Both cursors must see the same snapshot: a join committed between
        // two statements would otherwise be missed or half-seen.
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = self
                .conn
                .prepare_cached(if lean {
                    &self.lean_sql
                } else {
                    &self.range_sql
                })
                .map_err(|e| self.err(e))?;
            let mut joins_stmt = self
                .conn
                .prepare_cached(Self::JOIN_SQL)
                .map_err(|e| self.err(e))?;
            let mut cursor = stmt
                .query(params![after, upto, limit])
                .map_err(|e| self.err(e))?;
            let mut joins = joins_stmt
                .query(params![after, upto])
                .map_err(|e| self.err(e))?;
            let mut join = next_join(&mut joins).map_err(|e| self.err(e))?;
            while let Some(r) = cursor.next().map_err(|e| self.err(e))? {
                let rowid: i64 = r.get(col::ROWID).map_err(|e| self.err(e))?;
                // Skip joins of rows not read (deleted, or a second chat of
                // a row already matched: the first one wins).
                while let Some((message_id, _)) = join
                    && message_id < rowid
                {
                    join = next_join(&mut joins).map_err(|e| self.err(e))?;
                }
                let chat = match join {
                    Some((message_id, chat)) if message_id == rowid => chat,
                    _ => None,
                };
                each(r, chat)?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// [`Self::read_range`] into a vector of complete rows.
    fn read_range_rows(
        &self,
        after: i64,
        upto: i64,
        limit: Option<usize>,
        lookups: &mut Lookups,
    ) -> Result<Vec<MessageRow>, ChatDbError> {
        let mut rows = Vec::new();
        self.read_range(after, upto, limit, false, lookups, |mut row, chat| {
            row.set_chat(chat.as_deref());
            rows.push(row);
            Ok(())
        })?;
        Ok(rows)
    }

    /// Every row with `after < ROWID <= upto`, oldest first, straight into
    /// `each` as its protocol event ([`MessageRow::into_body`]) without
    /// collecting the rows, and with each chat's part of the event (kind,
    /// normalised participants) worked out once per chat rather than once
    /// per row. `lookups` is kept across calls as for [`Self::read_between`].
    /// Returns the number of rows read.
    pub fn bodies_between(
        &self,
        after: i64,
        upto: i64,
        lookups: &mut Lookups,
        mut each: impl FnMut(Body) -> Result<(), ChatDbError>,
    ) -> Result<u64, ChatDbError> {
        let mut n = 0;
        if !self.joins_indexed {
            for row in self.read_between(after, upto, lookups)? {
                n += 1;
                if let Some(body) = row.into_body(None) {
                    each(body)?;
                }
            }
            return Ok(n);
        }
        self.read_range(after, upto, None, true, lookups, |row, chat| {
            n += 1;
            match row.into_body_in(chat.as_deref()) {
                Some(body) => each(body),
                None => Ok(()),
            }
        })?;
        Ok(n)
    }

    fn read_row(
        &self,
        r: &rusqlite::Row<'_>,
        chat_rowid: Option<i64>,
        lean: bool,
        lookups: &mut Lookups,
    ) -> rusqlite::Result<(MessageRow, Option<std::sync::Arc<ChatInfo>>)> {
        let flag = |i: usize| -> rusqlite::Result<bool> {
            Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0) != 0)
        };
        let int =
            |i: usize| -> rusqlite::Result<i64> { Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0)) };
        let text_col: Option<String> = r.get(col::TEXT)?;
        let body = match r.get_ref(col::BODY)? {
            rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => Some(b),
            _ => None,
        };
        let (text, body_error, attachment_order) = match body.filter(|b| !b.is_empty()) {
            None => (text_col, None, Vec::new()),
            Some(blob) => match typedstream::decode_body(blob) {
                Ok(decoded) => (Some(decoded.text), None, decoded.attachment_guids),
                Err(e) => match text_col {
                    Some(t) => (Some(t), None, Vec::new()),
                    None => (None, Some(e.to_string()), Vec::new()),
                },
            },
        };
        let rowid: i64 = r.get(col::ROWID)?;
        let summary = match r.get_ref(col::SUMMARY)? {
            _ if lean => summary::SummaryInfo::default(),
            rusqlite::types::ValueRef::Blob(b) if !b.is_empty() => match summary::parse(b) {
                Ok(info) => info,
                Err(e) => {
                    tracing::debug!(rowid, "{e}");
                    summary::SummaryInfo::default()
                }
            },
            _ => summary::SummaryInfo::default(),
        };
        let has_attachments = flag(col::HAS_ATTACHMENTS)?;
        let attachments = if has_attachments {
            self.attachments(rowid, &attachment_order)?
        } else {
            Vec::new()
        };
        let chat = match chat_rowid {
            Some(id) => Some(lookups.chat(self, id)?),
            None => None,
        };
        let sender = lookups.handle(self, int(col::HANDLE)?)?;
        let other_handle = lookups.handle(self, int(col::OTHER_HANDLE)?)?;
        let status = if lean {
            RowStatus {
                pending_attachments: attachments.iter().filter(|a| !a.on_disk).count(),
                ..RowStatus::default()
            }
        } else {
            self.row_status(r, &summary, &attachments)?
        };
        let row = MessageRow {
            rowid,
            guid: r.get(col::GUID)?,
            text,
            body_error,
            from_me: flag(col::FROM_ME)?,
            service: r.get(col::SERVICE)?,
            date: r.get(col::DATE)?,
            sender,
            // Filled by the caller (`set_chat`), or left out when the event
            // is built from the chat directly (`into_event_in`).
            chat_guid: None,
            chat_style: None,
            group_name: None,
            is_sent: status.is_sent,
            error: status.error,
            participants: Vec::new(),
            subject: r
                .get::<_, Option<String>>(col::SUBJECT)?
                .filter(|s| !s.is_empty()),
            thread_originator_guid: r
                .get::<_, Option<String>>(col::THREAD_ORIGINATOR)?
                .filter(|s| !s.is_empty()),
            associated_guid: r
                .get::<_, Option<String>>(col::ASSOCIATED_GUID)?
                .filter(|s| !s.is_empty()),
            associated_type: int(col::ASSOCIATED_TYPE)?,
            associated_emoji: r.get(col::ASSOCIATED_EMOJI)?,
            item_type: int(col::ITEM_TYPE)?,
            group_action_type: int(col::GROUP_ACTION)?,
            group_title: r.get(col::GROUP_TITLE)?,
            other_handle,
            balloon_bundle_id: if lean { None } else { r.get(col::BALLOON)? },
            is_audio: !lean && flag(col::IS_AUDIO)?,
            status,
            attachments,
        };
        Ok((row, chat))
    }

    /// The status columns of a full row.
    fn row_status(
        &self,
        r: &rusqlite::Row<'_>,
        summary: &summary::SummaryInfo,
        attachments: &[AttachmentRow],
    ) -> rusqlite::Result<RowStatus> {
        let flag = |i: usize| -> rusqlite::Result<bool> {
            Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0) != 0)
        };
        let int =
            |i: usize| -> rusqlite::Result<i64> { Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0)) };
        Ok(RowStatus {
            is_delivered: flag(col::IS_DELIVERED)?,
            date_delivered: int(col::DATE_DELIVERED)?,
            is_read: flag(col::IS_READ)?,
            date_read: int(col::DATE_READ)?,
            is_played: flag(col::IS_PLAYED)?,
            date_played: int(col::DATE_PLAYED)?,
            date_edited: int(col::DATE_EDITED)?,
            date_retracted: int(col::DATE_RETRACTED)?,
            part_count: r.get(col::PART_COUNT)?,
            error: int(col::ERROR)?,
            is_sent: flag(col::IS_SENT)?,
            edit_events: summary.edit_events,
            retracted_parts: summary.retracted_parts.len(),
            pending_attachments: attachments.iter().filter(|a| !a.on_disk).count(),
        })
    }

    /// The attachments of a message, in body order (the order of the
    /// transfer GUIDs in the body), then any the body does not name.
    fn attachments(&self, rowid: i64, order: &[String]) -> rusqlite::Result<Vec<AttachmentRow>> {
        let col = |c: &str, d: &str| {
            if self.attachment_cols.contains(c) {
                format!("a.{c}")
            } else {
                d.to_owned()
            }
        };
        let sql = format!(
            "SELECT a.guid, {filename}, {name}, {mime}, {uti}, {size}, {state}
             FROM message_attachment_join j JOIN attachment a ON a.ROWID = j.attachment_id
             WHERE j.message_id = ?1 ORDER BY a.ROWID",
            filename = col("filename", "NULL"),
            name = col("transfer_name", "NULL"),
            mime = col("mime_type", "NULL"),
            uti = col("uti", "NULL"),
            size = col("total_bytes", "NULL"),
            state = col("transfer_state", "0"),
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut out: Vec<AttachmentRow> = stmt
            .query_map([rowid], |r| {
                let filename: Option<String> = r.get(1)?;
                let path = filename
                    .as_deref()
                    .map(|f| expand_home(f, self.home.as_deref()));
                let name = r
                    .get::<_, Option<String>>(2)?
                    .filter(|n| !n.is_empty())
                    .or_else(|| {
                        path.as_ref()
                            .and_then(|p| p.file_name())
                            .map(|n| n.to_string_lossy().into_owned())
                    })
                    .unwrap_or_default();
                let uti: Option<String> = r.get(4)?;
                let mime = r
                    .get::<_, Option<String>>(3)?
                    .filter(|m| !m.is_empty())
                    .or_else(|| uti.as_deref().and_then(mime_for_uti).map(str::to_owned));
                let size = r
                    .get::<_, Option<i64>>(5)?
                    .and_then(|s| u64::try_from(s).ok());
                let on_disk = path.as_ref().is_some_and(|p| p.is_file());
                Ok(AttachmentRow {
                    guid: r.get(0)?,
                    path,
                    name,
                    mime,
                    size,
                    transfer_state: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                    on_disk,
                })
            })?
            .collect::<Result<_, _>>()?;
        // Body order: GUIDs as the body lists them (attachment GUIDs may
        // carry prefixes, so compare the last 36 characters too).
        let key = |g: &str| g.get(g.len().saturating_sub(36)..).unwrap_or(g).to_owned();
        out.sort_by_key(|a| {
            order
                .iter()
                .position(|g| *g == a.guid || key(g) == key(&a.guid))
                .unwrap_or(usize::MAX)
        });
        Ok(out)
    }

    fn participants_raw(&self, chat_rowid: i64) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT h.id FROM chat_handle_join chj JOIN handle h ON h.ROWID = chj.handle_id
             WHERE chj.chat_id = ?1 ORDER BY chj.rowid",
        )?;
        stmt.query_map([chat_rowid], |r| r.get::<_, String>(0))?
            .collect()
    }

    /// Rows with ROWID > `cursor`, oldest first, at most `limit`.
    pub fn read_after(&self, cursor: i64, limit: usize) -> Result<Vec<MessageRow>, ChatDbError> {
        if !self.joins_indexed {
            let sql = self.select_sql("m.ROWID > ?1") + " LIMIT ?2";
            return self.query_rows(&sql, params![cursor, limit as i64]);
        }
        self.read_range_rows(cursor, i64::MAX, Some(limit), &mut Lookups::default())
    }

    /// Every row with `after < ROWID <= upto`, oldest first, resolving chats
    /// and handles through `lookups`, which the caller keeps across calls
    /// of one bulk read ([`bulk`]) so each chat is read once. A chat renamed
    /// during that read keeps the name it had when first looked up.
    pub fn read_between(
        &self,
        after: i64,
        upto: i64,
        lookups: &mut Lookups,
    ) -> Result<Vec<MessageRow>, ChatDbError> {
        if !self.joins_indexed {
            let sql = self.select_sql("m.ROWID > ?1 AND m.ROWID <= ?2");
            return self.query_rows(&sql, params![after, upto]);
        }
        self.read_range_rows(after, upto, None, lookups)
    }

    /// The floor for [`Self::bodies_between`]: what the `sqlite3` shell does
    /// for the same two statements over rows after `cursor` (the `message`
    /// columns the bulk read reads, and `chat_message_join` in message order),
    /// in one read transaction on one thread, every column fetched and
    /// touched, nothing decoded or looked up. Returns (rows, bytes of text
    /// and blobs). For benchmarks.
    pub fn bare_scan(&self, cursor: i64) -> Result<(u64, u64), ChatDbError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let (mut count, mut bytes) = (0u64, 0u64);
        for (sql, rows) in [(self.lean_sql.as_str(), true), (Self::JOIN_SQL, false)] {
            let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
            let n = stmt.column_count();
            let mut cursor = if rows {
                stmt.query(params![cursor, i64::MAX, -1])
            } else {
                stmt.query(params![cursor, i64::MAX])
            }
            .map_err(|e| self.err(e))?;
            while let Some(r) = cursor.next().map_err(|e| self.err(e))? {
                for i in 0..n {
                    bytes += match r.get_ref(i).map_err(|e| self.err(e))? {
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            t.len() as u64
                        }
                        _ => 0,
                    };
                }
                count += u64::from(rows);
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok((count, bytes))
    }

    /// Every non-empty `attributedBody` after `cursor`, at most `limit`. For
    /// the decoding benchmark.
    pub fn bodies(&self, limit: usize) -> Result<Vec<Vec<u8>>, ChatDbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT attributedBody FROM message WHERE attributedBody IS NOT NULL LIMIT ?1")
            .map_err(|e| self.err(e))?;
        stmt.query_map([limit as i64], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// The ROWID after which the last `n` rows start (0 when fewer exist).
    pub fn rowid_before_last(&self, n: u64) -> Result<i64, ChatDbError> {
        if n == 0 {
            return self.max_rowid();
        }
        self.conn
            .query_row(
                "SELECT IFNULL((SELECT ROWID FROM message ORDER BY ROWID DESC LIMIT 1 OFFSET ?1), 0)",
                [i64::try_from(n).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Full rows by ROWID (those that still exist), oldest first.
    pub fn rows_by_id(&self, rowids: &[i64]) -> Result<Vec<MessageRow>, ChatDbError> {
        let sql = self.select_sql("m.ROWID = ?1");
        let mut out = Vec::with_capacity(rowids.len());
        for id in rowids {
            out.extend(self.query_rows(&sql, [id])?);
        }
        Ok(out)
    }

    /// The status columns of rows with ROWID in `(lo, hi]`: a cheap query
    /// (no body decoding) that the update tracker runs on every wake-up.
    pub fn status_window(&self, lo: i64, hi: i64) -> Result<Vec<StatusRow>, ChatDbError> {
        let sql = format!(
            "SELECT m.ROWID, m.guid, m.is_from_me, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}
             FROM message m WHERE m.ROWID > ?1 AND m.ROWID <= ?2 ORDER BY m.ROWID",
            self.col_or("is_delivered", "0"),
            self.col_or("date_delivered", "0"),
            self.col_or("is_read", "0"),
            self.col_or("date_read", "0"),
            self.col_or("is_played", "0"),
            self.col_or("date_played", "0"),
            self.col_or("date_edited", "0"),
            self.col_or("date_retracted", "0"),
            self.col_or("part_count", "NULL"),
            self.col_or("error", "0"),
            self.col_or("is_sent", "0"),
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        stmt.query_map(params![lo, hi], |r| {
            let int = |i: usize| -> rusqlite::Result<i64> {
                Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0))
            };
            Ok(StatusRow {
                rowid: r.get(0)?,
                guid: r.get(1)?,
                from_me: int(2)? != 0,
                status: RowStatus {
                    is_delivered: int(3)? != 0,
                    date_delivered: int(4)?,
                    is_read: int(5)? != 0,
                    date_read: int(6)?,
                    is_played: int(7)? != 0,
                    date_played: int(8)?,
                    date_edited: int(9)?,
                    date_retracted: int(10)?,
                    part_count: r.get(11)?,
                    error: int(12)?,
                    is_sent: int(13)? != 0,
                    ..RowStatus::default()
                },
            })
        })
        .map_err(|e| self.err(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.err(e))
    }

    /// GUIDs of hard-deleted messages logged after `rowid` in
    /// `deleted_messages`, oldest first; empty when the table is absent.
    pub fn deleted_after(
        &self,
        rowid: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, ChatDbError> {
        if !self.has_table("deleted_messages")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT ROWID, guid FROM deleted_messages WHERE ROWID > ?1 ORDER BY ROWID LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map(params![rowid, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// The highest `message` ROWID ever assigned: AUTOINCREMENT's
    /// `sqlite_sequence` entry, which, unlike `MAX(ROWID)`, does not drop when
    /// the newest message is deleted. Falls back to `MAX(ROWID)`.
    pub fn rowid_high_water(&self) -> Result<i64, ChatDbError> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'message'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or(None);
        Ok(seq.unwrap_or(0).max(self.max_rowid()?))
    }

    /// `MAX(ROWID)` of `deleted_messages` (0 when empty or absent).
    pub fn max_deleted_rowid(&self) -> Result<i64, ChatDbError> {
        if !self.has_table("deleted_messages")? {
            return Ok(0);
        }
        self.conn
            .query_row(
                "SELECT IFNULL(MAX(ROWID), 0) FROM deleted_messages",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    fn has_table(&self, table: &str) -> Result<bool, ChatDbError> {
        self.conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// The newest `date` among the last rows up to `rowid` (0 when none):
    /// where live time stood at the cursor, for telling backfill apart.
    pub fn newest_date_upto(&self, rowid: i64) -> Result<i64, ChatDbError> {
        self.conn
            .query_row(
                "SELECT IFNULL(MAX(date), 0) FROM (SELECT date FROM message WHERE ROWID <= ?1
                 ORDER BY ROWID DESC LIMIT 200)",
                [rowid],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// The highest ROWID whose `date` is at most `date`: where to resume in
    /// a rebuilt database, whose ROWIDs no longer match the cursor.
    pub fn rowid_at_date(&self, date: i64) -> Result<i64, ChatDbError> {
        self.conn
            .query_row(
                "SELECT IFNULL(MAX(ROWID), 0) FROM message WHERE date <= ?1",
                [date],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// SQLite's `PRAGMA data_version`: changes when another connection
    /// commits, so an idle wake-up can stop after one cheap query.
    pub fn data_version(&self) -> Result<i64, ChatDbError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Which connection this is; changes on every (re)open.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// From-me rows after `rowid` in chat `chat_guid`, oldest first.
    pub fn from_me_after(
        &self,
        rowid: i64,
        chat_guid: &str,
    ) -> Result<Vec<MessageRow>, ChatDbError> {
        let sql = self.select_sql("m.ROWID > ?1 AND m.is_from_me = 1 AND c.guid = ?2");
        self.query_rows(&sql, params![rowid, chat_guid])
    }

    /// From-me rows after `rowid` in the chat `chat_guid`, or, when no chat
    /// was known at dispatch, in the one-to-one chat with `handle`.
    pub fn sent_rows_after(
        &self,
        rowid: i64,
        chat_guid: Option<&str>,
        handle: Option<&str>,
    ) -> Result<Vec<MessageRow>, ChatDbError> {
        match (chat_guid, handle) {
            (Some(chat), _) => self.from_me_after(rowid, chat),
            (None, Some(handle)) => {
                let sql = self.select_sql(
                    "m.ROWID > ?1 AND m.is_from_me = 1 AND c.chat_identifier = ?2 AND c.style = 45",
                );
                self.query_rows(&sql, params![rowid, handle])
            }
            (None, None) => Ok(Vec::new()),
        }
    }

    /// The `chat.guid` of the one-to-one chat with `handle`, newest first, if
    /// there is one.
    pub fn direct_chat_for(&self, handle: &str) -> Result<Option<String>, ChatDbError> {
        self.conn
            .query_row(
                "SELECT guid FROM chat WHERE chat_identifier = ?1 AND style = 45
                 ORDER BY ROWID DESC LIMIT 1",
                [handle],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}

/// Positions in the SELECT list ([`ChatDb::build_select_list`]).
mod col {
    pub const ROWID: usize = 0;
    pub const GUID: usize = 1;
    pub const TEXT: usize = 2;
    pub const BODY: usize = 3;
    pub const FROM_ME: usize = 4;
    pub const SERVICE: usize = 5;
    pub const DATE: usize = 6;
    pub const HANDLE: usize = 7;
    pub const IS_SENT: usize = 8;
    pub const ERROR: usize = 9;
    pub const SUBJECT: usize = 10;
    pub const THREAD_ORIGINATOR: usize = 11;
    pub const ASSOCIATED_GUID: usize = 12;
    pub const ASSOCIATED_TYPE: usize = 13;
    pub const ASSOCIATED_EMOJI: usize = 14;
    pub const ITEM_TYPE: usize = 15;
    pub const GROUP_ACTION: usize = 16;
    pub const GROUP_TITLE: usize = 17;
    pub const OTHER_HANDLE: usize = 18;
    pub const BALLOON: usize = 19;
    pub const IS_AUDIO: usize = 20;
    pub const IS_DELIVERED: usize = 21;
    pub const DATE_DELIVERED: usize = 22;
    pub const IS_READ: usize = 23;
    pub const DATE_READ: usize = 24;
    pub const IS_PLAYED: usize = 25;
    pub const DATE_PLAYED: usize = 26;
    pub const DATE_EDITED: usize = 27;
    pub const DATE_RETRACTED: usize = 28;
    pub const PART_COUNT: usize = 29;
    pub const SUMMARY: usize = 30;
    pub const HAS_ATTACHMENTS: usize = 31;
    /// `chat_message_join.chat_id` when the query joins, else NULL.
    pub const CHAT: usize = 32;
}

/// The next `(message_id, chat_id)` of a `chat_message_join` cursor.
fn next_join(rows: &mut rusqlite::Rows<'_>) -> rusqlite::Result<Option<(i64, Option<i64>)>> {
    match rows.next()? {
        Some(r) => Ok(Some((r.get(0)?, r.get(1)?))),
        None => Ok(None),
    }
}

/// A chat as the events need it.
#[derive(Debug)]
pub struct ChatInfo {
    guid: Option<String>,
    style: Option<i64>,
    /// `display_name`, `None` when empty.
    display_name: Option<String>,
    /// Members (not the Mac's user), in `chat_handle_join` order.
    participants: Vec<String>,
    /// The event's view, worked out once per chat: [`chat_kind`] and the
    /// normalised participants.
    kind: ChatKind,
    handles: Vec<Handle>,
    /// This chat's part of a plain message's JSON line, encoded once per
    /// chat instead of once per row ([`plain::chat_json`]), and only by the
    /// bulk read: the daemon's reader never asks for it.
    json: std::sync::OnceLock<plain::ChatJson>,
}

impl ChatInfo {
    /// [`Self::json`], encoded at the first call.
    fn json(&self) -> &plain::ChatJson {
        self.json.get_or_init(|| {
            plain::chat_json(
                self.guid.as_deref().unwrap_or_default(),
                self.kind,
                self.display_name.as_deref(),
                &self.handles,
            )
        })
    }
}

/// Chats and handles already read during one read: a few hundred rows that
/// thousands of messages share, looked up once each instead of joined into
/// every row.
#[derive(Debug, Default)]
pub struct Lookups {
    chats: RowidCache<std::sync::Arc<ChatInfo>>,
    /// `handle.id` by ROWID (`None`: no such handle or no id).
    handles: RowidCache<Option<String>>,
    /// `,"sender":{…}` of each handle as a plain message's JSON line has it
    /// (empty for no handle), encoded once per handle.
    senders: RowidCache<Box<[u8]>>,
}

/// ROWIDs below this are cached in a [`RowidCache`]'s vector.
const NEAR: i64 = 1 << 16;

/// Values by ROWID: small ROWIDs (all of them, in practice) index a vector,
/// the rest a map.
#[derive(Debug)]
struct RowidCache<T> {
    near: Vec<Option<T>>,
    far: HashMap<i64, T>,
}

impl<T> Default for RowidCache<T> {
    fn default() -> Self {
        RowidCache {
            near: Vec::new(),
            far: HashMap::new(),
        }
    }
}

impl<T> RowidCache<T> {
    fn slot(rowid: i64) -> Option<usize> {
        usize::try_from(rowid).ok().filter(|_| rowid < NEAR)
    }

    fn get(&self, rowid: i64) -> Option<&T> {
        match Self::slot(rowid) {
            Some(i) => self.near.get(i)?.as_ref(),
            None => self.far.get(&rowid),
        }
    }

    fn insert(&mut self, rowid: i64, value: T) {
        match Self::slot(rowid) {
            Some(i) => {
                if self.near.len() <= i {
                    self.near.resize_with(i + 1, || None);
                }
                self.near[i] = Some(value);
            }
            None => {
                self.far.insert(rowid, value);
            }
        }
    }
}

impl Lookups {
    fn chat(&mut self, db: &ChatDb, rowid: i64) -> rusqlite::Result<std::sync::Arc<ChatInfo>> {
        if let Some(c) = self.chats.get(rowid) {
            return Ok(c.clone());
        }
        let mut stmt = db
            .conn
            .prepare_cached("SELECT guid, style, display_name FROM chat WHERE ROWID = ?1")?;
        let (guid, style, display_name) = stmt
            .query_row([rowid], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .optional()?
            .unwrap_or((None, None, None));
        let participants = db.participants_raw(rowid)?;
        let kind = chat_kind(style, guid.as_deref().unwrap_or_default());
        let handles: Vec<Handle> = participants.iter().map(|p| normalize_handle(p)).collect();
        let display_name = display_name.filter(|n| !n.is_empty());
        let info = std::sync::Arc::new(ChatInfo {
            kind,
            handles,
            guid,
            style,
            display_name,
            participants,
            json: std::sync::OnceLock::new(),
        });
        self.chats.insert(rowid, info.clone());
        Ok(info)
    }

    /// A plain message's chat and its `,"sender":{…}` ([`Self::cache_sender`]),
    /// borrowed: the fast path needs no copy of either.
    fn plain_parts(
        &mut self,
        db: &ChatDb,
        chat_rowid: i64,
        handle_rowid: i64,
    ) -> rusqlite::Result<(&ChatInfo, &[u8])> {
        if self.chats.get(chat_rowid).is_none() {
            self.chat(db, chat_rowid)?;
        }
        self.cache_sender(db, handle_rowid)?;
        // `chat` has just cached it; the error cannot happen.
        let chat = self
            .chats
            .get(chat_rowid)
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        let sender = self.senders.get(handle_rowid).map_or(&[][..], |j| &**j);
        Ok((chat, sender))
    }

    /// Encodes, once per handle, the `,"sender":{…}` of a row whose
    /// `handle_id` is `rowid` (empty when it names no handle): what
    /// [`MessageRow::to_event`] makes of [`Self::handle`].
    fn cache_sender(&mut self, db: &ChatDb, rowid: i64) -> rusqlite::Result<()> {
        if self.senders.get(rowid).is_none() {
            let json = plain::sender_json(self.handle(db, rowid)?.as_deref());
            self.senders.insert(rowid, json);
        }
        Ok(())
    }

    /// `handle.id` of a `handle_id` / `other_handle` (0: none).
    fn handle(&mut self, db: &ChatDb, rowid: i64) -> rusqlite::Result<Option<String>> {
        if rowid <= 0 {
            return Ok(None);
        }
        if let Some(h) = self.handles.get(rowid) {
            return Ok(h.clone());
        }
        let mut stmt = db
            .conn
            .prepare_cached("SELECT id FROM handle WHERE ROWID = ?1")?;
        let id: Option<String> = stmt.query_row([rowid], |r| r.get(0)).optional()?.flatten();
        self.handles.insert(rowid, id.clone());
        Ok(id)
    }
}

/// Percent-encodes what SQLite's URI parser would misread in a path.
fn uri_path(path: &Path) -> String {
    let raw = path.to_string_lossy();
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            '%' => out.push_str("%25"),
            _ => out.push(c),
        }
    }
    out
}

fn permission_denied(path: &Path) -> ChatDbError {
    ChatDbError::PermissionDenied {
        path: path.to_path_buf(),
        binary: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "whatsnap-mac".into()),
    }
}

/// Sorts a SQLite error into a permission problem or a plain failure. Apple's
/// SQLite reports a TCC refusal as SQLITE_AUTH (23); other stacks see
/// SQLITE_CANTOPEN (14) on a file that exists.
fn classify(path: &Path, e: rusqlite::Error) -> ChatDbError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            rusqlite::ErrorCode::AuthorizationForStatementDenied => return permission_denied(path),
            rusqlite::ErrorCode::CannotOpen if path.exists() => return permission_denied(path),
            _ => {}
        }
    }
    ChatDbError::Sqlite {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Normalises a Messages handle: E.164 stays, emails are lower-cased.
pub fn normalize_handle(raw: &str) -> Handle {
    let trimmed = raw.trim();
    if trimmed.contains('@') {
        return Handle {
            handle: trimmed.to_lowercase(),
            kind: HandleKind::Email,
        };
    }
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    if trimmed.starts_with('+') && (8..=15).contains(&digits.len()) {
        return Handle {
            handle: format!("+{digits}"),
            kind: HandleKind::Phone,
        };
    }
    Handle {
        handle: trimmed.to_owned(),
        kind: HandleKind::Other,
    }
}

/// Whether a chat is a group: by `style` (43), else by the GUID's kind field.
fn chat_kind(style: Option<i64>, chat_guid: &str) -> ChatKind {
    match style {
        Some(43) => ChatKind::Group,
        Some(45) => ChatKind::Direct,
        _ => {
            // `<service>;<kind>;<identifier>`: split on the first two `;` only,
            // identifiers may contain anything.
            let mut parts = chat_guid.splitn(3, ';');
            match (parts.next(), parts.next()) {
                (Some(_), Some("+")) => ChatKind::Group,
                _ => ChatKind::Direct,
            }
        }
    }
}

impl MessageRow {
    /// The `event.message` for this row. `origin` ties a from-me row to the
    /// send that produced it.
    pub fn to_event(&self, origin: Option<String>) -> EventMessage {
        self.clone().into_event(origin)
    }

    /// [`Self::to_body`] without copying the row's strings (for bulk reads).
    pub fn into_body(self, origin: Option<String>) -> Option<Body> {
        if self.kind() != RowKind::Message {
            return self.to_body(origin);
        }
        Some(Body::EventMessage(self.into_event(origin)))
    }

    /// [`Self::to_event`], moving the row's strings instead of copying them.
    pub fn into_event(mut self, origin: Option<String>) -> EventMessage {
        let chat_kind = chat_kind(
            self.chat_style,
            self.chat_guid.as_deref().unwrap_or_default(),
        );
        let participants: Vec<Handle> = self
            .participants
            .iter()
            .map(|p| normalize_handle(p))
            .collect();
        let chat_guid = self.chat_guid.take().unwrap_or_default();
        let group_name = self.group_name.take();
        self.event_with(origin, chat_kind, chat_guid, group_name, participants)
    }

    /// [`Self::into_event`] for a row read without its chat fields, taking
    /// them from `chat` as looked up once for many rows.
    fn into_event_in(self, origin: Option<String>, chat: &ChatInfo) -> EventMessage {
        self.event_with(
            origin,
            chat.kind,
            chat.guid.clone().unwrap_or_default(),
            chat.display_name.clone(),
            chat.handles.clone(),
        )
    }

    /// [`Self::into_body`] for a row read without its chat fields, joined to
    /// `chat` as looked up once for many rows (`None`: not joined).
    fn into_body_in(mut self, chat: Option<&ChatInfo>) -> Option<Body> {
        match chat {
            Some(chat) if self.kind() == RowKind::Message => {
                Some(Body::EventMessage(self.into_event_in(None, chat)))
            }
            chat => {
                self.set_chat(chat);
                self.into_body(None)
            }
        }
    }

    /// Fills the chat fields from a looked-up chat (`None`: not joined).
    fn set_chat(&mut self, chat: Option<&ChatInfo>) {
        if let Some(c) = chat {
            self.chat_guid = c.guid.clone();
            self.chat_style = c.style;
            self.group_name = c.display_name.clone();
            self.participants = c.participants.clone();
        }
    }

    fn event_with(
        self,
        origin: Option<String>,
        chat_kind: ChatKind,
        chat_guid: String,
        group_name: Option<String>,
        participants: Vec<Handle>,
    ) -> EventMessage {
        let sender = if self.from_me {
            None
        } else {
            self.sender.as_deref().map(normalize_handle)
        };
        let recipients = if self.from_me {
            participants.clone()
        } else {
            Vec::new()
        };
        let (text, truncated) = display_text_owned(self.text.unwrap_or_default());
        EventMessage {
            event_key: message_event_key(&self.guid),
            guid: self.guid,
            rowid: self.rowid,
            chat_kind,
            chat_guid,
            group_name,
            participants,
            service: self.service.unwrap_or_else(|| "iMessage".into()),
            from_me: self.from_me,
            sender,
            recipients,
            text,
            subject: self.subject,
            reply_to_guid: self.thread_originator_guid.clone(),
            thread_originator_guid: self.thread_originator_guid,
            date_ms: apple_time::apple_to_unix_ms(self.date).unwrap_or(0),
            attachments: self
                .attachments
                .iter()
                .map(AttachmentRow::to_attachment)
                .collect(),
            origin: origin.map(|client_msg_id| Origin { client_msg_id }),
            backfill: false,
            backfill_request_id: None,
            suspected_echo: false,
            truncated,
        }
    }

    /// What kind of row this is, which decides the event it becomes.
    pub fn kind(&self) -> RowKind {
        match self.associated_type {
            1000 | 2000..=2007 | 3000..=3007 => return RowKind::Reaction,
            4000 => return RowKind::PollVote,
            _ => {}
        }
        match self.item_type {
            0 => RowKind::Message,
            1..=3 => RowKind::GroupEvent,
            _ => RowKind::Other,
        }
    }

    /// The protocol event this row becomes, if the protocol has one:
    /// `event.message` for messages (app balloons and audio included),
    /// `event.reaction` for tapbacks, `event.group` for group changes. Poll
    /// votes and other system rows have no v1 frame yet and give `None`.
    pub fn to_body(&self, origin: Option<String>) -> Option<Body> {
        match self.kind() {
            RowKind::Message => Some(Body::EventMessage(self.to_event(origin))),
            RowKind::Reaction => self.to_reaction().map(Body::EventReaction),
            RowKind::GroupEvent => self.to_group_event().map(Body::EventGroup),
            RowKind::PollVote | RowKind::Other => None,
        }
    }

    /// The `event.group` of a group-change row (`item_type` 1–3, reference
    /// chatdb.md §14.3); `None` for a row not joined to a chat yet, for the
    /// kinds the protocol does not name (chat backgrounds), and for an
    /// "added" row naming the sender itself, which is Messages recording a
    /// member's new phone number rather than a new member.
    pub fn to_group_event(&self) -> Option<EventGroup> {
        let chat_guid = self.chat_guid.clone()?;
        let member = self.other_handle.as_deref().map(normalize_handle);
        let (action, member, name) = match (self.item_type, self.group_action_type) {
            (1, 0) if self.other_handle.is_some() && self.other_handle == self.sender => {
                return None;
            }
            (1, 0) => (GroupAction::MemberAdded, Some(member?), None),
            (1, 1) => (GroupAction::MemberRemoved, Some(member?), None),
            (2, _) => (
                GroupAction::Renamed,
                None,
                Some(self.group_title.clone().unwrap_or_default()),
            ),
            (3, 0) => (GroupAction::MemberLeft, None, None),
            (3, 1) => (GroupAction::PhotoChanged, None, None),
            (3, 2) => (GroupAction::PhotoRemoved, None, None),
            _ => return None,
        };
        Some(EventGroup {
            event_key: format!("group:{}", self.guid),
            guid: self.guid.clone(),
            chat_guid,
            action,
            actor: if self.from_me {
                None
            } else {
                self.sender.as_deref().map(normalize_handle)
            },
            member,
            name,
            date_ms: apple_time::apple_to_unix_ms(self.date).unwrap_or(0),
            backfill: false,
        })
    }

    /// The `event.reaction` of a tapback row.
    pub fn to_reaction(&self) -> Option<EventReaction> {
        const KINDS: [&str; 8] = [
            "love",
            "like",
            "dislike",
            "laugh",
            "emphasize",
            "question",
            "emoji",
            "sticker",
        ];
        let (kind, removed) = match self.associated_type {
            1000 => ("sticker", false),
            t @ 2000..=2007 => (KINDS[(t - 2000) as usize], false),
            t @ 3000..=3007 => (KINDS[(t - 3000) as usize], true),
            _ => return None,
        };
        let target_guid = target_guid(self.associated_guid.as_deref()?).to_owned();
        Some(EventReaction {
            event_key: format!("react:{}", self.guid),
            target_guid,
            kind: kind.to_owned(),
            emoji: self.associated_emoji.clone().filter(|e| !e.is_empty()),
            removed,
            sender: if self.from_me {
                None
            } else {
                self.sender.as_deref().map(normalize_handle)
            },
        })
    }
}

/// [`whatsnap_proto::message_event_key`] without `format!`, which cost a
/// few percent of a bulk read (a unit test keeps the two equal).
fn message_event_key(guid: &str) -> String {
    let mut key = String::with_capacity(guid.len() + 4);
    key.push_str("msg:");
    key.push_str(guid);
    key
}

/// Which protocol event a row becomes ([`MessageRow::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// A message (text, attachments, app balloon, audio).
    Message,
    /// A tapback or sticker on another message.
    Reaction,
    /// Rename, member added/removed/left, group photo.
    GroupEvent,
    /// A poll vote (Tahoe).
    PollVote,
    /// Location sharing, kept audio, SharePlay...
    Other,
}

/// The GUID a tapback targets: `p:<part>/<GUID>`, `bp:<GUID>` or bare.
pub fn target_guid(associated: &str) -> &str {
    if let Some(rest) = associated.strip_prefix("bp:") {
        return rest;
    }
    if let Some(rest) = associated.strip_prefix("p:")
        && let Some((_, guid)) = rest.split_once('/')
    {
        return guid;
    }
    associated
}

/// Most text an event carries; longer bodies are cut and flagged.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The text shown to the service: the body without the U+FFFC attachment and
/// U+FFFD balloon placeholders (the files travel in `attachments`), cut at
/// [`MAX_TEXT_BYTES`] on a character boundary. Returns (text, truncated).
pub fn display_text(raw: &str) -> (String, bool) {
    display_text_owned(raw.to_owned())
}

/// [`display_text`] without a copy when there is nothing to strip or cut.
pub fn display_text_owned(raw: String) -> (String, bool) {
    // Both placeholders encode as EF BF BC/BD; most bodies have no 0xEF byte
    // at all, and a byte search is far cheaper than a char-by-char one.
    let mut text = if raw.as_bytes().contains(&0xEF) && raw.contains(['\u{FFFC}', '\u{FFFD}']) {
        raw.chars()
            .filter(|c| !matches!(c, '\u{FFFC}' | '\u{FFFD}'))
            .collect()
    } else {
        raw
    };
    if text.len() <= MAX_TEXT_BYTES {
        return (text, false);
    }
    let mut cut = MAX_TEXT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    (text, true)
}

impl AttachmentRow {
    /// The protocol's view: `pending` while Messages is still downloading,
    /// `missing` when the transfer finished but the file is gone, else
    /// `uploaded` (on disk and ready; the link uploads it before the event
    /// leaves the Mac).
    pub fn to_attachment(&self) -> Attachment {
        // transfer_state 0 and 5 are finished, 6 failed; others in progress
        // (values documented only by one inferred source, section 16).
        let finished = matches!(self.transfer_state, 0 | 5 | 6);
        let state = if self.on_disk {
            AttachmentState::Uploaded
        } else if finished && self.path.is_some() {
            AttachmentState::Missing
        } else {
            AttachmentState::Pending
        };
        Attachment {
            att_id: self.guid.clone(),
            name: self.name.clone(),
            mime: self.mime.clone(),
            size: self.size,
            sha256: None,
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_key_is_the_protocol_one() {
        let guid = "7D3CF618-7CAE-4BDA-B20A-4D5E380DB7A7";
        assert_eq!(
            message_event_key(guid),
            whatsnap_proto::message_event_key(guid)
        );
    }

    #[test]
    fn handles_are_normalised() {
        assert_eq!(normalize_handle("+1 (555) 123-4567").handle, "+15551234567");
        assert_eq!(
            normalize_handle("+1 (555) 123-4567").kind,
            HandleKind::Phone
        );
        assert_eq!(
            normalize_handle("Mike@Example.COM").handle,
            "mike@example.com"
        );
        assert_eq!(normalize_handle("12345").kind, HandleKind::Other);
    }

    #[test]
    fn chat_kind_uses_style_then_the_guid_kind_field() {
        assert_eq!(chat_kind(Some(43), "iMessage;-;x"), ChatKind::Group);
        assert_eq!(chat_kind(None, "any;+;chat123"), ChatKind::Group);
        assert_eq!(chat_kind(None, "SMS;-;+1555;+;odd"), ChatKind::Direct);
    }

    #[test]
    fn a_missing_database_says_where_it_looked() {
        let err = ChatDb::open(Path::new("/nonexistent/chat.db")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/chat.db"), "{err}");
    }
}

/// A chat.db connection shared by one task, used on the blocking pool.
///
/// The connection is opened lazily and dropped after any error, so a database
/// that was replaced, or a permission granted later, is picked up by the next
/// call without restarting the daemon.
#[derive(Debug, Clone)]
pub struct SharedChatDb {
    path: PathBuf,
    conn: std::sync::Arc<std::sync::Mutex<Option<ChatDb>>>,
}

impl SharedChatDb {
    /// A handle for `path`; nothing is opened yet.
    pub fn new(path: PathBuf) -> SharedChatDb {
        SharedChatDb {
            path,
            conn: std::sync::Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` against the open database on the blocking pool.
    pub async fn call<R, F>(&self, f: F) -> Result<R, ChatDbError>
    where
        R: Send + 'static,
        F: FnOnce(&ChatDb) -> Result<R, ChatDbError> + Send + 'static,
    {
        let this = self.clone();
        crate::blocking(move || {
            let mut guard = this.conn.lock().unwrap_or_else(|e| e.into_inner());
            // A database rebuilt or replaced under us (new inode) is reopened:
            // the old connection would keep reading the unlinked file.
            if guard.as_ref().is_some_and(ChatDb::is_replaced) {
                tracing::info!("{} was replaced; reopening it", this.path.display());
                *guard = None;
            }
            if guard.is_none() {
                *guard = Some(ChatDb::open(&this.path)?);
            }
            let Some(db) = guard.as_ref() else {
                unreachable!("opened above");
            };
            let result = f(db);
            if result.is_err() {
                *guard = None;
            }
            result
        })
        .await
    }
}

/// Expands a leading `~/` (only that one: a `~` elsewhere is part of a
/// name, the bug imessage-exporter fixed in 1.6.0) with `home`.
pub fn expand_home(path: &str, home: Option<&std::ffi::OsStr>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) if !home.is_empty() => Path::new(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// The inode of a file, to tell a replaced database from the one opened.
fn file_identity(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// A MIME type for the UTIs Messages uses when `mime_type` is NULL
/// (reference section 16).
pub fn mime_for_uti(uti: &str) -> Option<&'static str> {
    Some(match uti {
        "public.jpeg" => "image/jpeg",
        "public.heic" => "image/heic",
        "public.png" => "image/png",
        "com.compuserve.gif" => "image/gif",
        "com.apple.quicktime-movie" => "video/quicktime",
        "public.mpeg-4" => "video/mp4",
        "com.apple.m4a-audio" => "audio/mp4",
        "com.apple.coreaudio-format" => "audio/x-caf",
        "public.vcard" => "text/vcard",
        "com.adobe.pdf" => "application/pdf",
        "public.plain-text" => "text/plain",
        _ => return None,
    })
}
