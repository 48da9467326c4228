//! What the sender reads from chat.db to confirm a send: the snapshot
//! `MAX(ROWID)`, the chat a GUID names, and the from-me rows (with their
//! attachments' transfer names) written after the snapshot.
//!
//! It has its own read-only connection (`mode=ro`, never `immutable=1`, which
//! would hide rows still in the WAL) because confirmation needs what the
//! reader does not: attachment transfer names, and from-me rows with no chat
//! join at all (Tahoe's ghost rows). Every call runs on the blocking pool, and
//! a failed call drops the connection so a replaced database or a permission
//! granted later is picked up by the next one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::chatdb::typedstream;

/// `chat.style` of a one-to-one chat.
const STYLE_DIRECT: i64 = 45;

/// Why chat.db could not be read for a confirmation.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read {path} to confirm a send: {source} (check Full Disk Access for whatsnap-mac in \
     System Settings > Privacy & Security)"
)]
pub struct ConfirmError {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

/// A chat as the sender needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatInfo {
    /// `chat.guid`.
    pub guid: String,
    /// The other person, for a one-to-one chat (`chat.chat_identifier`).
    pub direct_handle: Option<String>,
}

/// A from-me row written after a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRow {
    /// `message.ROWID`.
    pub rowid: i64,
    /// `message.guid`.
    pub guid: String,
    /// The decoded body (attributedBody first, then `text`).
    pub text: Option<String>,
    /// `message.service`.
    pub service: Option<String>,
    /// `is_sent`.
    pub is_sent: bool,
    /// `error` (0 when fine).
    pub error: i64,
    /// The chat it is joined to; `None` for an unjoined row.
    pub chat_guid: Option<String>,
    /// Transfer names of its attachments.
    pub transfer_names: Vec<String>,
}

impl SentRow {
    /// An unjoined row with no body and no attachment: what Tahoe writes when
    /// a group send "succeeds" without sending anything (openclaw/imsg#90).
    pub fn is_ghost(&self) -> bool {
        self.chat_guid.is_none()
            && self.text.as_deref().is_none_or(str::is_empty)
            && self.transfer_names.is_empty()
    }
}

/// Where the rows of one attempt may appear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// This exact chat.
    pub chat_guid: Option<String>,
    /// Any one-to-one chat with this person (iMessage, SMS or Tahoe's `any`):
    /// Messages may put a send to a person in another chat than the one named.
    pub direct_handle: Option<String>,
}

/// chat.db, read-only, for the sender.
#[derive(Debug, Clone)]
pub struct ConfirmDb {
    path: PathBuf,
    conn: Arc<Mutex<Option<Connection>>>,
}

impl ConfirmDb {
    /// A handle for `path`; nothing is opened yet.
    pub fn new(path: PathBuf) -> ConfirmDb {
        ConfirmDb {
            path,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// The database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<R, F>(&self, f: F) -> Result<R, ConfirmError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let this = self.clone();
        crate::blocking(move || {
            let mut guard = this.conn.lock().unwrap_or_else(|e| e.into_inner());
            let result = match guard.as_ref() {
                Some(conn) => f(conn),
                None => match open(&this.path) {
                    Ok(conn) => f(guard.insert(conn)),
                    Err(e) => Err(e),
                },
            };
            if result.is_err() {
                *guard = None;
            }
            result.map_err(|source| ConfirmError {
                path: this.path.clone(),
                source,
            })
        })
        .await
    }

    /// `MAX(ROWID)` of `message` (0 when empty).
    pub async fn max_rowid(&self) -> Result<i64, ConfirmError> {
        self.call(|c| {
            c.query_row("SELECT IFNULL(MAX(ROWID), 0) FROM message", [], |r| {
                r.get(0)
            })
        })
        .await
    }

    /// The chat with exactly this GUID, if chat.db has it.
    pub async fn chat(&self, guid: &str) -> Result<Option<ChatInfo>, ConfirmError> {
        let guid = guid.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT guid, chat_identifier, style FROM chat WHERE guid = ?1",
                [&guid],
                |r| {
                    let style: Option<i64> = r.get(2)?;
                    Ok(ChatInfo {
                        guid: r.get(0)?,
                        direct_handle: if style == Some(STYLE_DIRECT) {
                            r.get(1)?
                        } else {
                            None
                        },
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// The newest one-to-one chat with `handle`, on any service.
    pub async fn direct_chat(&self, handle: &str) -> Result<Option<String>, ConfirmError> {
        let handle = handle.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT guid FROM chat WHERE chat_identifier = ?1 AND style = ?2
                 ORDER BY ROWID DESC LIMIT 1",
                params![handle, STYLE_DIRECT],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// From-me rows after `after` that are in `scope`, or joined to no chat
    /// at all (so ghosts can be seen), oldest first.
    pub async fn from_me_after(
        &self,
        after: i64,
        scope: &Scope,
    ) -> Result<Vec<SentRow>, ConfirmError> {
        let scope = scope.clone();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT m.ROWID, m.guid, m.text, m.attributedBody, m.service,
                        IFNULL(m.is_sent, 0), IFNULL(m.error, 0), ch.guid,
                        (SELECT group_concat(a.transfer_name, char(31))
                           FROM message_attachment_join maj
                           JOIN attachment a ON a.ROWID = maj.attachment_id
                          WHERE maj.message_id = m.ROWID)
                   FROM message m
                   LEFT JOIN chat_message_join cmj ON cmj.message_id = m.ROWID
                   LEFT JOIN chat ch ON ch.ROWID = cmj.chat_id
                  WHERE m.ROWID > ?1 AND m.is_from_me = 1
                    AND (ch.ROWID IS NULL
                         OR ch.guid = ?2
                         OR (ch.style = ?4 AND ch.chat_identifier = ?3))
                  ORDER BY m.ROWID",
            )?;
            let rows = stmt.query_map(
                params![after, scope.chat_guid, scope.direct_handle, STYLE_DIRECT],
                |r| {
                    let body: Option<Vec<u8>> = r.get(3)?;
                    let text: Option<String> = r.get(2)?;
                    let names: Option<String> = r.get(8)?;
                    Ok(SentRow {
                        rowid: r.get(0)?,
                        guid: r.get(1)?,
                        // An undecodable body is treated as no text: it then
                        // matches nothing rather than failing the check.
                        text: typedstream::message_text(body.as_deref(), text.as_deref())
                            .ok()
                            .flatten(),
                        service: r.get(4)?,
                        is_sent: r.get::<_, i64>(5)? != 0,
                        error: r.get(6)?,
                        chat_guid: r.get(7)?,
                        transfer_names: names
                            .map(|n| n.split('\u{1f}').map(str::to_owned).collect())
                            .unwrap_or_default(),
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        // What SQLite's URI parser would misread in a path.
        match c {
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            '%' => uri.push_str("%25"),
            _ => uri.push(c),
        }
    }
    uri.push_str("?mode=ro");
    let conn = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}
