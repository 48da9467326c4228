//! The simulated Messages process: the rows Messages writes into chat.db.
//!
//! A [`Simulator`] owns one read-write connection to a chat.db and writes the
//! rows a Mac writes when a message arrives or after a send succeeds: handle,
//! chat, participants, the message itself (body only in `attributedBody`, as
//! on Ventura and later) and its chat join, each event in one transaction. The
//! database stays in WAL mode with checkpoints off, so new rows live in
//! `chat.db-wal` exactly as they do while Messages is running; a reader that
//! only looked at `chat.db` would miss them here too.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};

use crate::apple_time::now_apple_nanos;
use crate::sim::body::attributed_body;
use crate::sim::schema::Release;

/// The Mac user's own Apple ID unless the caller picks another.
pub const DEFAULT_OWN_ADDRESS: &str = "me@icloud.example";

/// GUID of the simulated local iMessage account (`message.account_guid`,
/// `chat.account_id`). Fixed, so every process writing the same chat.db agrees.
pub const DEFAULT_ACCOUNT_GUID: &str = "5A1B0C2D-3E4F-4A5B-8C6D-7E8F9A0B1C2D";

/// The service the simulator sends and receives on.
const IMESSAGE: &str = "iMessage";

/// `chat.style` of a one-to-one chat (ASCII `-`, as in the guid).
const STYLE_ONE_TO_ONE: i64 = 45;

/// `chat.style` of a group chat (ASCII `+`).
const STYLE_GROUP: i64 = 43;

/// `message.version` on rows written by current releases.
const MESSAGE_VERSION: i64 = 10;

/// How long a write waits for another writer (the daemon never writes, but a
/// test may run several simulator processes at once).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong, phrased so the user knows what to do next.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "{} already exists; the simulator only creates new databases, so delete it \
         (with its -wal and -shm files) or choose another path",
        path.display()
    )]
    AlreadyExists { path: PathBuf },

    #[error("cannot create {}: {source}; check that its folder exists and is writable", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no chat.db at {}; create one first with `whatsnap-mac sim init --chat-db {}`",
        path.display(),
        path.display()
    )]
    Missing { path: PathBuf },

    #[error(
        "{} is not a Messages database (it has no message table); point --chat-db at a \
         file made by `whatsnap-mac sim init`",
        path.display()
    )]
    NotChatDb { path: PathBuf },

    #[error("cannot open {} for writing: {source}; check the path and its permissions", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "SQLite kept {} in journal mode {mode:?} instead of WAL; create the database on a \
         local disk, where WAL works",
        path.display()
    )]
    NoWal { path: PathBuf, mode: String },

    #[error(
        "no chat with guid {guid:?} (AppleScript reports this as -1728); use the exact \
         chat.guid of an existing chat, or send to a handle to start a new one"
    )]
    NoSuchChat { guid: String },

    #[error("no message with guid {guid:?}; use the guid returned when the message was written")]
    NoSuchMessage { guid: String },

    #[error(
        "{handle:?} is not an address Messages accepts; use an E.164 phone number such as \
         +15551234567 or an email address"
    )]
    BadHandle { handle: String },

    #[error(
        "writing {} failed: {source}; if another process holds the database for more \
         than 5 s, stop it and retry",
        path.display()
    )]
    Write {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// Where a from-me message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimTarget {
    /// An existing chat, by its exact `chat.guid` (as AppleScript's `chat id`).
    Chat(String),
    /// A person by address; their one-to-one iMessage chat is made if missing
    /// (as AppleScript's `participant ... of account`).
    Handle(String),
}

/// A message row the simulator wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimMessage {
    /// `message.ROWID`.
    pub rowid: i64,
    /// `message.guid` (an uppercase UUID).
    pub guid: String,
    /// `chat.guid` of the chat it was joined to.
    pub chat_guid: String,
}

/// A writer of chat.db that behaves like Messages.
///
/// Its fields are visible to the sibling modules (`sends.rs`, `kinds.rs`, ...)
/// that add their own `impl Simulator` blocks.
#[derive(Debug)]
pub struct Simulator {
    pub(crate) conn: Connection,
    pub(crate) me: Writer,
}

/// Who writes and where: everything a row needs besides the connection, kept
/// apart from it so a transaction (which borrows the connection) can be used
/// alongside.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) path: PathBuf,
    pub(crate) own_address: String,
    pub(crate) account_guid: String,
    /// Columns of each table, probed at open: rows are written with only the
    /// columns this release has, as Messages of that release would.
    pub(crate) cols: HashMap<String, HashSet<String>>,
    /// New chats get `any;` GUIDs (Tahoe and later), else the service prefix.
    pub(crate) any_prefix: bool,
}

/// The values that differ between an incoming and a from-me row.
struct NewMessage<'a> {
    handle_id: i64,
    service: &'a str,
    text: &'a str,
    is_from_me: bool,
}

/// A chat as far as sending needs it.
#[derive(Debug, Clone)]
pub(crate) struct ChatRow {
    pub(crate) rowid: i64,
    pub(crate) guid: String,
}

impl Simulator {
    /// Creates a new chat.db at `path` with the macOS 15 Sequoia schema, in WAL
    /// mode. Refuses to touch an existing file.
    pub fn create(path: &Path) -> Result<Simulator, SimError> {
        Self::create_release(path, Release::Sequoia)
    }

    /// Creates a new chat.db with the schema of `release`.
    pub fn create_release(path: &Path, release: Release) -> Result<Simulator, SimError> {
        Self::create_with_sql(path, release.sql())
    }

    /// Creates a new chat.db from any schema SQL, e.g. a `sqlite3 .schema`
    /// dump of a real Mac; SQLite's own tables in it are skipped.
    pub fn create_with_sql(path: &Path, sql: &str) -> Result<Simulator, SimError> {
        // create_new makes "exists" and "create" one atomic step; SQLite then
        // treats the empty file as an empty database.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => SimError::AlreadyExists {
                    path: path.to_owned(),
                },
                _ => SimError::Create {
                    path: path.to_owned(),
                    source,
                },
            })?;
        let result = Self::initialise(path, &strip_internal_tables(sql));
        if result.is_err() {
            // Leave nothing half-made behind; the error says what failed.
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.as_os_str().to_owned();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
        }
        result
    }

    fn initialise(path: &Path, sql: &str) -> Result<Simulator, SimError> {
        let open_err = |source| SimError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        // journal_mode is stored in the file, so it is set once, here, and
        // must be set outside any transaction.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SimError::NoWal {
                path: path.to_owned(),
                mode,
            });
        }
        configure(&conn).map_err(open_err)?;
        conn.execute_batch(&format!("BEGIN IMMEDIATE; {sql}; COMMIT;"))
            .map_err(|source| SimError::Write {
                path: path.to_owned(),
                source,
            })?;
        let mut sim = Simulator::with_connection(conn, path).map_err(open_err)?;
        // The schema goes into chat.db itself, as on a Mac where Messages has
        // long since checkpointed it; only messages written from here on wait
        // in the WAL.
        sim.checkpoint()?;
        Ok(sim)
    }

    /// Opens an existing chat.db for writing.
    pub fn open(path: &Path) -> Result<Simulator, SimError> {
        let conn = open_existing(path)?;
        Simulator::with_connection(conn, path).map_err(|source| SimError::Open {
            path: path.to_owned(),
            source,
        })
    }

    fn with_connection(conn: Connection, path: &Path) -> rusqlite::Result<Simulator> {
        let mut cols: HashMap<String, HashSet<String>> = HashMap::new();
        {
            let mut stmt = conn.prepare(
                "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type = 'table'",
            )?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (table, col) = row?;
                cols.entry(table).or_default().insert(col);
            }
        }
        // Tahoe is the first release whose message table has is_time_sensitive,
        // and the first that names new chats `any;...`.
        let any_prefix = cols
            .get("message")
            .is_some_and(|c| c.contains("is_time_sensitive"));
        Ok(Simulator {
            conn,
            me: Writer {
                path: path.to_owned(),
                own_address: DEFAULT_OWN_ADDRESS.to_owned(),
                account_guid: DEFAULT_ACCOUNT_GUID.to_owned(),
                cols,
                any_prefix,
            },
        })
    }

    /// Uses `address` as the Mac user's own Apple ID from now on.
    #[must_use]
    pub fn with_own_address(mut self, address: impl Into<String>) -> Simulator {
        self.me.own_address = address.into();
        self
    }

    /// The Mac user's own address (`destination_caller_id`).
    pub fn own_address(&self) -> &str {
        &self.me.own_address
    }

    /// The chat.db this simulator writes.
    pub fn path(&self) -> &Path {
        &self.me.path
    }

    /// Writes an incoming one-to-one iMessage from `from`, as Messages does
    /// when it arrives: handle, chat and participant if new, then the message
    /// and its chat join, in one transaction.
    pub fn receive(&mut self, from: &str, text: &str) -> Result<SimMessage, SimError> {
        check_handle(from)?;
        let me = &self.me;
        let tx = begin(&mut self.conn, me)?;
        let handle_id = me.find_or_create_handle(&tx, from)?;
        let chat = me.find_or_create_one_to_one(&tx, from, handle_id)?;
        let message = NewMessage {
            handle_id,
            service: IMESSAGE,
            text,
            is_from_me: false,
        };
        let written = me.insert_message(&tx, &chat, &message)?;
        tx.commit().map_err(|e| me.write_err(e))?;
        Ok(written)
    }

    /// Writes the from-me row Messages leaves after a successful send: sent and
    /// finished, not yet delivered. A chat target must exist
    /// ([`SimError::NoSuchChat`], AppleScript's -1728); a handle target gets
    /// its one-to-one iMessage chat made if missing.
    pub fn send_from_me(&mut self, target: &SimTarget, text: &str) -> Result<SimMessage, SimError> {
        let me = &self.me;
        let tx = begin(&mut self.conn, me)?;
        let (chat, handle_id, service) = match target {
            SimTarget::Chat(guid) => me.existing_chat(&tx, guid)?,
            SimTarget::Handle(handle) => {
                check_handle(handle)?;
                let handle_id = me.find_or_create_handle(&tx, handle)?;
                let chat = me.find_or_create_one_to_one(&tx, handle, handle_id)?;
                (chat, handle_id, IMESSAGE.to_owned())
            }
        };
        let message = NewMessage {
            handle_id,
            service: &service,
            text,
            is_from_me: true,
        };
        let written = me.insert_message(&tx, &chat, &message)?;
        tx.commit().map_err(|e| me.write_err(e))?;
        Ok(written)
    }

    /// Records that the recipient's device got the message: `is_delivered` 1
    /// and `date_delivered` now, as the delivery receipt does on a Mac.
    pub fn mark_delivered(&mut self, guid: &str) -> Result<(), SimError> {
        let changed = self
            .conn
            .execute(
                "UPDATE message SET is_delivered = 1, date_delivered = ?1 WHERE guid = ?2",
                rusqlite::params![now_apple_nanos(), guid],
            )
            .map_err(|e| self.me.write_err(e))?;
        if changed == 0 {
            return Err(SimError::NoSuchMessage {
                guid: guid.to_owned(),
            });
        }
        Ok(())
    }

    /// Moves everything in the WAL into chat.db and empties the WAL, as
    /// Messages does now and then (and when it quits). Readers must keep
    /// seeing every row across it.
    pub fn checkpoint(&mut self) -> Result<(), SimError> {
        // The pragma returns (busy, log frames, checkpointed frames); busy 1
        // means a reader held it back, which a later call will finish.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.me.write_err(e))
    }
}

/// A schema dump without SQLite's own tables (`sqlite_sequence`,
/// `sqlite_stat1`), which cannot be created by hand, and without comments.
pub fn strip_internal_tables(sql: &str) -> String {
    let mut kept = String::with_capacity(sql.len());
    let mut skipping = false;
    for line in sql.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") {
            continue;
        }
        if trimmed.starts_with("CREATE TABLE sqlite_") {
            skipping = true;
        }
        if !skipping {
            kept.push_str(line);
            kept.push('\n');
        }
        if skipping && trimmed.ends_with(';') {
            skipping = false;
        }
    }
    kept
}

/// An IMMEDIATE transaction: takes the write lock up front, so the
/// find-or-create steps cannot race another simulator process.
pub(crate) fn begin<'c>(
    conn: &'c mut Connection,
    me: &Writer,
) -> Result<Transaction<'c>, SimError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| me.write_err(e))
}

impl Writer {
    /// Whether `table` has `col` in this database.
    pub(crate) fn has(&self, table: &str, col: &str) -> bool {
        self.cols.get(table).is_some_and(|c| c.contains(col))
    }

    /// Inserts a row with those of `values` whose columns exist in this
    /// release; returns its ROWID.
    pub(crate) fn insert_row(
        &self,
        tx: &Connection,
        table: &str,
        values: &[(&str, Value)],
    ) -> Result<i64, SimError> {
        let kept: Vec<&(&str, Value)> = values.iter().filter(|(c, _)| self.has(table, c)).collect();
        let names: Vec<&str> = kept.iter().map(|(c, _)| *c).collect();
        let marks: Vec<String> = (1..=kept.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            marks.join(", ")
        );
        tx.prepare_cached(&sql)
            .and_then(|mut stmt| {
                stmt.execute(rusqlite::params_from_iter(kept.iter().map(|(_, v)| v)))
            })
            .map_err(|e| self.write_err(e))?;
        Ok(tx.last_insert_rowid())
    }

    /// `message.account` / `chat.account_login`: `E:` and an email, or `P:`
    /// and a phone number.
    pub(crate) fn account(&self) -> String {
        let prefix = if self.own_address.starts_with('+') {
            "P"
        } else {
            "E"
        };
        format!("{prefix}:{}", self.own_address)
    }

    pub(crate) fn write_err(&self, source: rusqlite::Error) -> SimError {
        SimError::Write {
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn find_or_create_handle(
        &self,
        tx: &Connection,
        address: &str,
    ) -> Result<i64, SimError> {
        self.find_or_create_handle_on(tx, address, IMESSAGE)
    }

    /// The `handle` row of `address` on `service` (one row per address and
    /// service, `UNIQUE(id, service)`), made if missing.
    pub(crate) fn find_or_create_handle_on(
        &self,
        tx: &Connection,
        address: &str,
        service: &str,
    ) -> Result<i64, SimError> {
        let found: Option<i64> = tx
            .query_row(
                "SELECT ROWID FROM handle WHERE id = ?1 AND service = ?2",
                [address, service],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.write_err(e))?;
        if let Some(rowid) = found {
            return Ok(rowid);
        }
        // Phone handles carry the account's country; email handles have none
        // to derive, so the column stays NULL.
        let country = address.starts_with('+').then_some("us");
        self.insert_row(
            tx,
            "handle",
            &[
                ("id", Value::Text(address.to_owned())),
                (
                    "country",
                    country.map_or(Value::Null, |c| Value::Text(c.into())),
                ),
                ("service", Value::Text(service.to_owned())),
                ("uncanonicalized_id", Value::Null),
                ("person_centric_id", Value::Null),
            ],
        )
    }

    /// The chat GUID Messages of this release gives a new chat.
    pub(crate) fn chat_guid(&self, service: &str, kind: char, identifier: &str) -> String {
        let prefix = if self.any_prefix { "any" } else { service };
        format!("{prefix};{kind};{identifier}")
    }

    pub(crate) fn find_or_create_one_to_one(
        &self,
        tx: &Connection,
        address: &str,
        handle_id: i64,
    ) -> Result<ChatRow, SimError> {
        self.find_or_create_chat(tx, IMESSAGE, None, address, &[handle_id], None)
    }

    /// A chat by identifier and service, made if missing, with `members` as
    /// participants. `group` is `Some(room name)` for groups.
    pub(crate) fn find_or_create_chat(
        &self,
        tx: &Connection,
        service: &str,
        group: Option<&str>,
        identifier: &str,
        members: &[i64],
        display_name: Option<&str>,
    ) -> Result<ChatRow, SimError> {
        let style = if group.is_some() {
            STYLE_GROUP
        } else {
            STYLE_ONE_TO_ONE
        };
        let found: Option<(i64, String)> = tx
            .query_row(
                "SELECT ROWID, guid FROM chat WHERE chat_identifier = ?1 AND style = ?2 \
                 AND (service_name = ?3 OR guid LIKE 'any;%') ORDER BY ROWID LIMIT 1",
                rusqlite::params![identifier, style, service],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.write_err(e))?;
        let (rowid, guid) = match found {
            Some(found) => found,
            None => {
                let guid =
                    self.chat_guid(service, if group.is_some() { '+' } else { '-' }, identifier);
                // state 3 and successful_query 1 are what chats show on a
                // Mac; room_name is set for groups only, which keeps
                // cache_roomnames NULL for one-to-one rows through the trigger.
                let text = |s: &str| Value::Text(s.to_owned());
                let rowid = self.insert_row(
                    tx,
                    "chat",
                    &[
                        ("guid", text(&guid)),
                        ("style", Value::Integer(style)),
                        ("state", Value::Integer(3)),
                        ("account_id", text(&self.account_guid)),
                        ("properties", Value::Null),
                        ("chat_identifier", text(identifier)),
                        ("service_name", text(service)),
                        ("room_name", group.map_or(Value::Null, text)),
                        ("account_login", text(&self.account())),
                        ("is_archived", Value::Integer(0)),
                        ("last_addressed_handle", text(&self.own_address)),
                        ("display_name", text(display_name.unwrap_or(""))),
                        ("group_id", text(&new_guid())),
                        ("is_filtered", Value::Integer(0)),
                        ("successful_query", Value::Integer(1)),
                    ],
                )?;
                (rowid, guid)
            }
        };
        for handle_id in members {
            tx.execute(
                "INSERT OR IGNORE INTO chat_handle_join (chat_id, handle_id) VALUES (?1, ?2)",
                [rowid, *handle_id],
            )
            .map_err(|e| self.write_err(e))?;
        }
        Ok(ChatRow { rowid, guid })
    }

    /// The chat with exactly this guid, the handle a from-me row names (the
    /// other person in a one-to-one chat, 0 in a group) and its service.
    pub(crate) fn existing_chat(
        &self,
        tx: &Transaction<'_>,
        guid: &str,
    ) -> Result<(ChatRow, i64, String), SimError> {
        let found: Option<(i64, Option<i64>, Option<String>)> = tx
            .query_row(
                "SELECT ROWID, style, service_name FROM chat WHERE guid = ?1",
                [guid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.write_err(e))?;
        let Some((rowid, style, service)) = found else {
            return Err(SimError::NoSuchChat {
                guid: guid.to_owned(),
            });
        };
        let handle_id = if style == Some(STYLE_ONE_TO_ONE) {
            tx.query_row(
                "SELECT handle_id FROM chat_handle_join WHERE chat_id = ?1 \
                 ORDER BY ROWID LIMIT 1",
                [rowid],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.write_err(e))?
            .unwrap_or(0)
        } else {
            0
        };
        let chat = ChatRow {
            rowid,
            guid: guid.to_owned(),
        };
        Ok((
            chat,
            handle_id,
            service.unwrap_or_else(|| IMESSAGE.to_owned()),
        ))
    }

    fn insert_message(
        &self,
        tx: &Connection,
        chat: &ChatRow,
        message: &NewMessage<'_>,
    ) -> Result<SimMessage, SimError> {
        let from_me = i64::from(message.is_from_me);
        let row = MessageSpec {
            handle_id: message.handle_id,
            service: message.service.to_owned(),
            body: Some(attributed_body(message.text)),
            is_from_me: message.is_from_me,
            is_delivered: 1 - from_me,
            is_read: 0,
            is_sent: from_me,
            ..MessageSpec::default()
        };
        self.insert_full(tx, Some(chat), &row)
    }

    /// Writes one `message` row (and its chat join when `chat` is given).
    /// Unset dates are 0, not NULL, as Messages writes them; `text` stays
    /// NULL unless asked for, as on Ventura and later.
    pub(crate) fn insert_full(
        &self,
        tx: &Connection,
        chat: Option<&ChatRow>,
        m: &MessageSpec,
    ) -> Result<SimMessage, SimError> {
        let guid = m.guid.clone().unwrap_or_else(new_guid);
        let date = m.date.unwrap_or_else(now_apple_nanos);
        let text = |s: &str| Value::Text(s.to_owned());
        let opt = |s: &Option<String>| s.as_deref().map_or(Value::Null, text);
        let int = Value::Integer;
        let rowid = self.insert_row(
            tx,
            "message",
            &[
                ("guid", text(&guid)),
                ("text", opt(&m.text)),
                ("handle_id", int(m.handle_id)),
                ("subject", opt(&m.subject)),
                (
                    "attributedBody",
                    m.body.clone().map_or(Value::Null, Value::Blob),
                ),
                ("version", int(MESSAGE_VERSION)),
                ("service", text(&m.service)),
                ("account", text(&self.account())),
                ("account_guid", text(&self.account_guid)),
                ("date", int(date)),
                ("date_read", int(0)),
                ("date_delivered", int(0)),
                ("is_delivered", int(m.is_delivered)),
                ("is_finished", int(1)),
                ("is_from_me", int(i64::from(m.is_from_me))),
                ("is_read", int(m.is_read)),
                ("is_sent", int(m.is_sent)),
                ("is_audio_message", int(i64::from(m.is_audio))),
                ("date_played", int(0)),
                ("item_type", int(m.item_type)),
                ("other_handle", int(m.other_handle)),
                ("group_title", opt(&m.group_title)),
                ("group_action_type", int(m.group_action_type)),
                ("associated_message_guid", opt(&m.associated_guid)),
                ("associated_message_type", int(m.associated_type)),
                ("associated_message_emoji", opt(&m.associated_emoji)),
                ("balloon_bundle_id", opt(&m.balloon_bundle_id)),
                (
                    "payload_data",
                    m.payload.clone().map_or(Value::Null, Value::Blob),
                ),
                ("thread_originator_guid", opt(&m.thread_originator_guid)),
                ("thread_originator_part", opt(&m.thread_originator_part)),
                ("destination_caller_id", text(&self.own_address)),
                ("error", int(m.error)),
                ("part_count", int(1)),
            ],
        )?;
        if let Some(chat) = chat {
            tx.execute(
                "INSERT INTO chat_message_join (chat_id, message_id, message_date) \
                 VALUES (?1, ?2, ?3)",
                [chat.rowid, rowid, date],
            )
            .map_err(|e| self.write_err(e))?;
        }
        Ok(SimMessage {
            rowid,
            guid,
            chat_guid: chat.map(|c| c.guid.clone()).unwrap_or_default(),
        })
    }
}

/// Every column the simulator may set on a new `message` row; columns a
/// release lacks are dropped by [`Writer::insert_row`].
#[derive(Debug, Clone, Default)]
pub(crate) struct MessageSpec {
    pub(crate) guid: Option<String>,
    pub(crate) handle_id: i64,
    pub(crate) service: String,
    pub(crate) text: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) body: Option<Vec<u8>>,
    pub(crate) is_from_me: bool,
    pub(crate) is_delivered: i64,
    pub(crate) is_read: i64,
    pub(crate) is_sent: i64,
    pub(crate) is_audio: bool,
    pub(crate) date: Option<i64>,
    pub(crate) item_type: i64,
    pub(crate) other_handle: i64,
    pub(crate) group_title: Option<String>,
    pub(crate) group_action_type: i64,
    pub(crate) associated_guid: Option<String>,
    pub(crate) associated_type: i64,
    pub(crate) associated_emoji: Option<String>,
    pub(crate) balloon_bundle_id: Option<String>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) thread_originator_guid: Option<String>,
    pub(crate) thread_originator_part: Option<String>,
    pub(crate) error: i64,
}

/// Per-connection settings, applied to every connection the simulator opens.
/// A writing connection to an existing simulated chat.db, configured as the
/// simulator writes (rows stay in the WAL). Refuses a missing file and one
/// without a `message` table: a typo in the path must not make an empty
/// database.
pub(crate) fn open_existing(path: &Path) -> Result<Connection, SimError> {
    if !path.exists() {
        return Err(SimError::Missing {
            path: path.to_owned(),
        });
    }
    let open_err = |source| SimError::Open {
        path: path.to_owned(),
        source,
    };
    // No CREATE flag, for the same reason.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    configure(&conn).map_err(open_err)?;
    let has_message: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'message'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(open_err)?;
    if has_message.is_none() {
        return Err(SimError::NotChatDb {
            path: path.to_owned(),
        });
    }
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Messages keeps its connection open, so new rows sit in the WAL until a
    // checkpoint. No automatic checkpoints and none on close reproduce that:
    // each simulator process leaves its rows in chat.db-wal.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(())
}

/// A message/chat guid as Messages makes them: an uppercase UUID v4.
pub(crate) fn new_guid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase()
}

/// Accepts what Messages stores in `handle.id`: `+` and 1-15 digits (E.164),
/// or an email address.
pub(crate) fn check_handle(handle: &str) -> Result<(), SimError> {
    let phone = handle.strip_prefix('+').is_some_and(|digits| {
        (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    });
    let email = match handle.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !handle.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    if phone || email {
        Ok(())
    } else {
        Err(SimError::BadHandle {
            handle: handle.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::OpenFlags;

    use super::*;

    fn new_db() -> (tempfile::TempDir, PathBuf, Simulator) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("chat.db");
        let sim = Simulator::create(&path).expect("create chat.db");
        (dir, path, sim)
    }

    /// A reader opened the way the daemon opens chat.db.
    fn reader(path: &Path) -> Connection {
        Connection::open_with_flags(
            format!("file:{}?mode=ro", path.display()),
            OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("read-only open")
    }

    fn is_uppercase_uuid_v4(guid: &str) -> bool {
        guid == guid.to_uppercase()
            && uuid::Uuid::parse_str(guid).is_ok_and(|u| u.get_version_num() == 4)
    }

    #[test]
    fn a_created_database_is_in_wal_mode() {
        let (_dir, path, _sim) = new_db();
        let mode: String = reader(&path)
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn create_refuses_an_existing_file() {
        let (_dir, path, sim) = new_db();
        drop(sim);
        let err = Simulator::create(&path).expect_err("must not overwrite");
        assert!(matches!(err, SimError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("delete it"), "{err}");
        // The refused call did not damage the existing database.
        Simulator::open(&path).expect("still a chat.db");
    }

    #[test]
    fn open_refuses_a_missing_file_and_says_how_to_make_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = Simulator::open(&dir.path().join("nope.db")).expect_err("missing");
        assert!(err.to_string().contains("sim init"), "{err}");
        assert!(!dir.path().join("nope.db").exists(), "open must not create");
    }

    #[test]
    fn a_received_message_is_visible_to_a_read_only_reader_as_messages_writes_it() {
        let (_dir, path, mut sim) = new_db();
        let before = now_apple_nanos();
        let msg = sim.receive("+15551234567", "hello there").expect("receive");
        let after = now_apple_nanos();
        assert!(is_uppercase_uuid_v4(&msg.guid), "{}", msg.guid);
        assert_eq!(msg.chat_guid, "iMessage;-;+15551234567");

        let db = reader(&path);
        let row = db
            .query_row(
                "SELECT m.text, m.attributedBody, m.date, m.is_from_me, m.is_finished, \
                   m.is_read, m.is_sent, m.part_count, m.service, m.account, \
                   m.destination_caller_id, m.cache_roomnames, h.id, h.country, h.service, \
                   c.guid, c.style, c.chat_identifier, c.account_login, j.message_date \
                 FROM message m \
                 JOIN handle h ON h.ROWID = m.handle_id \
                 JOIN chat_message_join j ON j.message_id = m.ROWID \
                 JOIN chat c ON c.ROWID = j.chat_id \
                 WHERE m.guid = ?1",
                [&msg.guid],
                |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                        (
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?,
                        ),
                        (r.get::<_, i64>(6)?, r.get::<_, i64>(7)?),
                        (
                            r.get::<_, String>(8)?,
                            r.get::<_, String>(9)?,
                            r.get::<_, String>(10)?,
                        ),
                        r.get::<_, Option<String>>(11)?,
                        (
                            r.get::<_, String>(12)?,
                            r.get::<_, String>(13)?,
                            r.get::<_, String>(14)?,
                        ),
                        (
                            r.get::<_, String>(15)?,
                            r.get::<_, i64>(16)?,
                            r.get::<_, String>(17)?,
                        ),
                        r.get::<_, String>(18)?,
                        r.get::<_, i64>(19)?,
                    ))
                },
            )
            .expect("message joined to handle and chat");
        let (text, body, date, flags, sent, ids, rooms, handle, chat, login, join_date) = row;
        assert_eq!(text, None, "body lives only in attributedBody");
        assert!(!body.is_empty());
        assert_eq!(body, attributed_body("hello there"));
        assert!(before <= date && date <= after, "date is now in ns");
        assert!((now_apple_nanos() - date).abs() < 1_000_000_000);
        assert_eq!(flags, (0, 1, 0), "incoming, finished, unread");
        assert_eq!(sent, (0, 1), "not sent by me, one part");
        assert_eq!(
            ids,
            (
                "iMessage".into(),
                "E:me@icloud.example".into(),
                "me@icloud.example".into()
            )
        );
        assert_eq!(rooms, None, "one-to-one chats have no room name");
        assert_eq!(
            handle,
            ("+15551234567".into(), "us".into(), "iMessage".into())
        );
        assert_eq!(
            chat,
            ("iMessage;-;+15551234567".into(), 45, "+15551234567".into())
        );
        assert_eq!(login, "E:me@icloud.example");
        assert_eq!(join_date, date);
        let participants: i64 = db
            .query_row("SELECT count(*) FROM chat_handle_join", [], |r| r.get(0))
            .expect("count");
        assert_eq!(participants, 1);
    }

    #[test]
    fn a_second_message_from_the_same_person_reuses_handle_and_chat() {
        let (_dir, path, mut sim) = new_db();
        let first = sim.receive("ann@example.com", "one").expect("first");
        let second = sim.receive("ann@example.com", "two").expect("second");
        assert!(second.rowid > first.rowid);
        assert_eq!(first.chat_guid, second.chat_guid);
        let db = reader(&path);
        let counts: (i64, i64, i64, i64) = db
            .query_row(
                "SELECT (SELECT count(*) FROM handle), (SELECT count(*) FROM chat), \
                   (SELECT count(*) FROM chat_handle_join), (SELECT count(*) FROM message)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("counts");
        assert_eq!(counts, (1, 1, 1, 2));
    }

    #[test]
    fn rows_stay_in_the_wal_after_the_simulator_closes() {
        let (_dir, path, mut sim) = new_db();
        let msg = sim.receive("+15550000001", "in the wal").expect("receive");
        drop(sim);
        let wal = std::fs::metadata(format!("{}-wal", path.display())).expect("wal file kept");
        assert!(wal.len() > 0, "rows were not checkpointed away");
        let found: i64 = reader(&path)
            .query_row(
                "SELECT count(*) FROM message WHERE guid = ?1",
                [&msg.guid],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(found, 1, "a WAL-aware reader still sees the row");
    }

    #[test]
    fn a_send_to_an_existing_chat_writes_a_sent_undelivered_from_me_row() {
        let (_dir, path, mut sim) = new_db();
        let incoming = sim.receive("+15551230000", "hi").expect("receive");
        let sent = sim
            .send_from_me(&SimTarget::Chat(incoming.chat_guid.clone()), "hello back")
            .expect("send");
        assert_eq!(sent.chat_guid, incoming.chat_guid);
        assert!(is_uppercase_uuid_v4(&sent.guid));
        let db = reader(&path);
        let row: (i64, i64, i64, i64, i64, i64, Option<String>, String) = db
            .query_row(
                "SELECT m.is_from_me, m.is_sent, m.is_finished, m.is_delivered, m.handle_id, \
                   j.chat_id, m.text, m.service \
                 FROM message m JOIN chat_message_join j ON j.message_id = m.ROWID \
                 WHERE m.guid = ?1",
                [&sent.guid],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ))
                },
            )
            .expect("from-me row");
        let handle: i64 = db
            .query_row(
                "SELECT ROWID FROM handle WHERE id = '+15551230000'",
                [],
                |r| r.get(0),
            )
            .expect("handle");
        assert_eq!(
            (row.0, row.1, row.2, row.3),
            (1, 1, 1, 0),
            "from me, sent, finished, not delivered"
        );
        assert_eq!(row.4, handle, "1:1 from-me rows name the recipient");
        assert_eq!(row.5, 1, "joined to the chat");
        assert_eq!(row.6, None);
        assert_eq!(row.7, "iMessage");
    }

    #[test]
    fn a_send_to_a_missing_chat_is_refused_and_writes_nothing() {
        let (_dir, path, mut sim) = new_db();
        let err = sim
            .send_from_me(&SimTarget::Chat("iMessage;-;+15559999999".into()), "x")
            .expect_err("no such chat");
        assert!(matches!(err, SimError::NoSuchChat { .. }));
        assert!(err.to_string().contains("-1728"), "{err}");
        let count: i64 = reader(&path)
            .query_row("SELECT count(*) FROM message", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 0);
    }

    #[test]
    fn a_send_to_a_new_handle_starts_its_chat() {
        let (_dir, path, mut sim) = new_db();
        let sent = sim
            .send_from_me(&SimTarget::Handle("bob@example.com".into()), "first words")
            .expect("send");
        assert_eq!(sent.chat_guid, "iMessage;-;bob@example.com");
        let (style, participants): (i64, i64) = reader(&path)
            .query_row(
                "SELECT c.style, (SELECT count(*) FROM chat_handle_join WHERE chat_id = c.ROWID) \
                 FROM chat c WHERE c.guid = ?1",
                [&sent.chat_guid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("chat");
        assert_eq!((style, participants), (45, 1));
    }

    #[test]
    fn bad_handles_are_refused_with_a_hint() {
        let (_dir, _path, mut sim) = new_db();
        for bad in [
            "",
            "5551234567",
            "+1 555",
            "+",
            "no-at-sign",
            "a@b",
            "a b@c.d",
        ] {
            let err = sim.receive(bad, "x").expect_err(bad);
            assert!(err.to_string().contains("E.164"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn mark_delivered_sets_the_flag_and_the_date() {
        let (_dir, path, mut sim) = new_db();
        let sent = sim
            .send_from_me(&SimTarget::Handle("+15550001111".into()), "x")
            .expect("send");
        sim.mark_delivered(&sent.guid).expect("deliver");
        let (delivered, date): (i64, i64) = reader(&path)
            .query_row(
                "SELECT is_delivered, date_delivered FROM message WHERE guid = ?1",
                [&sent.guid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("row");
        assert_eq!(delivered, 1);
        assert!((now_apple_nanos() - date).abs() < 1_000_000_000);
        let err = sim.mark_delivered("NOPE").expect_err("unknown guid");
        assert!(matches!(err, SimError::NoSuchMessage { .. }));
    }

    #[test]
    fn own_address_is_configurable() {
        let (_dir, path, sim) = new_db();
        let mut sim = sim.with_own_address("+15550009999");
        let msg = sim.receive("+15550001234", "x").expect("receive");
        let caller: String = reader(&path)
            .query_row(
                "SELECT destination_caller_id FROM message WHERE guid = ?1",
                [&msg.guid],
                |r| r.get(0),
            )
            .expect("row");
        assert_eq!(caller, "+15550009999");
        let account: String = reader(&path)
            .query_row(
                "SELECT account FROM message WHERE guid = ?1",
                [&msg.guid],
                |r| r.get(0),
            )
            .expect("row");
        assert_eq!(account, "P:+15550009999", "phone accounts are P:");
    }

    #[test]
    fn a_new_database_keeps_its_schema_in_the_main_file_and_messages_in_the_wal() {
        let (_dir, path, mut sim) = new_db();
        let wal = || std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
        assert_eq!(wal(), 0, "schema checkpointed into chat.db");
        let msg = sim.receive("+15550002222", "x").expect("receive");
        assert!(wal() > 0, "the new row waits in the WAL");
        sim.checkpoint().expect("checkpoint");
        assert_eq!(wal(), 0);
        let found: i64 = reader(&path)
            .query_row(
                "SELECT count(*) FROM message WHERE guid = ?1",
                [&msg.guid],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(found, 1, "still there after the checkpoint");
    }
}
