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

pub mod typedstream;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use whatsnap_proto::frame::{ChatKind, EventMessage, Handle, HandleKind, Origin};

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
}

/// An open, read-only chat.db connection.
pub struct ChatDb {
    conn: Connection,
    path: PathBuf,
    message_cols: HashSet<String>,
}

impl std::fmt::Debug for ChatDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatDb").field("path", &self.path).finish()
    }
}

impl ChatDb {
    /// Opens `path` read-only and probes its schema.
    pub fn open(path: &Path) -> Result<ChatDb, ChatDbError> {
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
        let mut db = ChatDb {
            conn,
            path: path.to_path_buf(),
            message_cols: HashSet::new(),
        };
        // macOS may only refuse at the first query, so probing is also the
        // permission check.
        db.message_cols = db.columns("message")?;
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

    fn col_or(&self, col: &str, fallback: &str) -> String {
        if self.message_cols.contains(col) {
            format!("m.{col}")
        } else {
            fallback.to_owned()
        }
    }

    fn select_sql(&self, filter: &str) -> String {
        format!(
            "SELECT m.ROWID, m.guid, m.text, {body}, m.is_from_me, m.service, IFNULL(m.date, 0),
                    h.id, c.guid, c.style, c.display_name, c.ROWID, {is_sent}, {error}
             FROM message m
             LEFT JOIN handle h ON h.ROWID = m.handle_id
             LEFT JOIN chat_message_join cmj ON cmj.message_id = m.ROWID
             LEFT JOIN chat c ON c.ROWID = cmj.chat_id
             WHERE {filter}
             ORDER BY m.ROWID",
            body = self.col_or("attributedBody", "NULL"),
            is_sent = self.col_or("is_sent", "0"),
            error = self.col_or("error", "0"),
        )
    }

    fn query_rows(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<MessageRow>, ChatDbError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let raw = stmt
            .query_map(params, |r| {
                let body: Option<Vec<u8>> = match r.get_ref(3)? {
                    rusqlite::types::ValueRef::Blob(b) => Some(b.to_vec()),
                    rusqlite::types::ValueRef::Text(t) => Some(t.to_vec()),
                    _ => None,
                };
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    body,
                    r.get::<_, Option<i64>>(4)?.unwrap_or(0) != 0,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Option<i64>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                    r.get::<_, Option<i64>>(11)?,
                    r.get::<_, Option<i64>>(12)?.unwrap_or(0) != 0,
                    r.get::<_, Option<i64>>(13)?.unwrap_or(0),
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        drop(stmt);
        let mut rows = Vec::with_capacity(raw.len());
        for (
            rowid,
            guid,
            text,
            body,
            from_me,
            service,
            date,
            sender,
            chat_guid,
            chat_style,
            group_name,
            chat_rowid,
            is_sent,
            error,
        ) in raw
        {
            let (text, body_error) =
                match typedstream::message_text(body.as_deref(), text.as_deref()) {
                    Ok(t) => (t, None),
                    Err(e) => (None, Some(e.to_string())),
                };
            let participants = match chat_rowid {
                Some(id) => self.participants(id)?,
                None => Vec::new(),
            };
            rows.push(MessageRow {
                rowid,
                guid,
                text,
                body_error,
                from_me,
                service,
                date,
                sender,
                chat_guid,
                chat_style,
                group_name: group_name.filter(|n| !n.is_empty()),
                is_sent,
                error,
                participants,
            });
        }
        Ok(rows)
    }

    fn participants(&self, chat_rowid: i64) -> Result<Vec<String>, ChatDbError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT h.id FROM chat_handle_join chj JOIN handle h ON h.ROWID = chj.handle_id
                 WHERE chj.chat_id = ?1 ORDER BY chj.rowid",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map([chat_rowid], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))
    }

    /// Rows with ROWID > `cursor`, oldest first, at most `limit`.
    pub fn read_after(&self, cursor: i64, limit: usize) -> Result<Vec<MessageRow>, ChatDbError> {
        let sql = self.select_sql("m.ROWID > ?1") + " LIMIT ?2";
        self.query_rows(&sql, params![cursor, limit as i64])
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
        let chat_guid = self.chat_guid.clone().unwrap_or_default();
        let participants: Vec<Handle> = self
            .participants
            .iter()
            .map(|p| normalize_handle(p))
            .collect();
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
        EventMessage {
            event_key: whatsnap_proto::message_event_key(&self.guid),
            guid: self.guid.clone(),
            rowid: self.rowid,
            chat_kind: chat_kind(self.chat_style, &chat_guid),
            chat_guid,
            group_name: self.group_name.clone(),
            participants,
            service: self.service.clone().unwrap_or_else(|| "iMessage".into()),
            from_me: self.from_me,
            sender,
            recipients,
            text: self.text.clone().unwrap_or_default(),
            subject: None,
            reply_to_guid: None,
            thread_originator_guid: None,
            date_ms: apple_time::apple_to_unix_ms(self.date).unwrap_or(0),
            attachments: Vec::new(),
            origin: origin.map(|client_msg_id| Origin { client_msg_id }),
            backfill: false,
            backfill_request_id: None,
            suspected_echo: false,
            truncated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
