//! The daemon's own SQLite file: chat.db cursor, event outbox, command
//! high-water mark and the send table.
//!
//! This is what makes the link exactly-once. Reading chat.db advances the
//! cursor and appends the resulting events in one transaction, so a crash
//! either keeps both or neither. A command is accepted by recording it in the
//! send table and raising the command high-water mark in one transaction, so
//! it is acked only once it can no longer be lost, and a replay finds it.
//!
//! The store is synchronous; async callers run it on the blocking pool. One
//! connection behind a std mutex is enough: every critical section is a short
//! local transaction and none spans an `.await`.

mod sends;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;
use whatsnap_proto::frame::{Body, CmdSend, SendResult, SettingsApplied, SettingsData};

pub use sends::{SendPhase, SendRecord, send_event_key};

/// A store failure; always a local disk or database problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error(
        "the daemon's state database failed: {0} (check disk space and permissions of the state folder)"
    )]
    Sqlite(#[from] rusqlite::Error),
    /// A stored frame no longer parses (written by a newer version?).
    #[error("a stored {kind} is unreadable: {detail}")]
    Corrupt {
        /// What was being read.
        kind: &'static str,
        /// The parse error.
        detail: String,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Where the reader stands besides the ROWID cursor, kept so a restart
/// neither misses the hard deletes made while the daemon was down nor
/// overlooks a database replaced meanwhile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderMarks {
    /// The last `deleted_messages` ROWID turned into events.
    pub deleted_cursor: Option<i64>,
    /// The inode of the chat.db last read.
    pub identity: Option<u64>,
}

/// A durable event waiting for the service's ack.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Its sequence number in the current epoch.
    pub seq: u64,
    /// The frame body.
    pub body: Body,
}

/// What happened to a `cmd.send` offered to [`Store::accept_command`].
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// New: queued for dispatch.
    Queued,
    /// Seen before (by seq or by `client_msg_id`): nothing to do but ack.
    Duplicate,
    /// The seq skipped ahead: not processed; ask for a resend.
    Gap {
        /// Highest seq processed.
        committed: u64,
    },
}

/// The daemon's state database.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- Durable events not yet acked; seq is assigned from meta.events_last_seq so a
-- deleted (acked) seq is never reused.
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY,
    event_key  TEXT NOT NULL UNIQUE,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
";

pub(super) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Store {
    /// Opens (creating if needed) the state database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(sends::SCHEMA)?;
        let store = Store {
            conn: Arc::new(Mutex::new(conn)),
        };
        {
            let conn = store.lock();
            // The epoch is born with the outbox: a new file is a new stream.
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('events_epoch', ?1)",
                params![uuid::Uuid::new_v4().to_string()],
            )?;
        }
        Ok(store)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the
        // transaction rolls back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn meta(conn: &Connection, key: &str) -> Result<Option<String>> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn meta_u64(conn: &Connection, key: &str) -> Result<u64> {
        Ok(Self::meta(conn, key)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<()> {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The event stream's epoch and the highest seq ever assigned.
    pub fn events_position(&self) -> Result<(String, u64)> {
        let conn = self.lock();
        let epoch = Self::meta(&conn, "events_epoch")?.unwrap_or_default();
        Ok((epoch, Self::meta_u64(&conn, "events_last_seq")?))
    }

    /// The chat.db ROWID cursor, `None` before the first baseline.
    pub fn chatdb_cursor(&self) -> Result<Option<i64>> {
        let conn = self.lock();
        Ok(Self::meta(&conn, "chatdb_cursor")?.and_then(|v| v.parse().ok()))
    }

    /// Sets the cursor without emitting anything (first start: announce only
    /// what arrives from now on, never the whole history).
    pub fn baseline_cursor(&self, rowid: i64) -> Result<()> {
        let conn = self.lock();
        Self::set_meta(&conn, "chatdb_cursor", &rowid.to_string())
    }

    /// Appends events and moves the cursor to `cursor`, atomically. An event
    /// whose key is already waiting in the outbox is not added twice. Each
    /// event may carry a from-me row's `(chat_guid, text)` so it can be tied to
    /// the send that produced it (see [`Store::claim_origin`]).
    pub fn append_events(&self, cursor: i64, events: Vec<(String, Body)>) -> Result<Vec<u64>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seqs = Self::append_in(&tx, events)?;
        Self::set_meta(&tx, "chatdb_cursor", &cursor.to_string())?;
        tx.commit()?;
        Ok(seqs)
    }

    /// The reader's positions beside the cursor (see [`ReaderMarks`]).
    pub fn reader_marks(&self) -> Result<ReaderMarks> {
        let conn = self.lock();
        let num = |key: &str| -> Result<Option<i64>> {
            Ok(Self::meta(&conn, key)?.and_then(|v| v.parse().ok()))
        };
        Ok(ReaderMarks {
            deleted_cursor: num("chatdb_deleted_cursor")?,
            identity: num("chatdb_identity")?.map(|v| v as u64),
        })
    }

    /// Stores the reader's positions.
    pub fn set_reader_marks(&self, marks: ReaderMarks) -> Result<()> {
        let conn = self.lock();
        Self::set_marks(&conn, marks)
    }

    fn set_marks(conn: &Connection, marks: ReaderMarks) -> Result<()> {
        if let Some(d) = marks.deleted_cursor {
            Self::set_meta(conn, "chatdb_deleted_cursor", &d.to_string())?;
        }
        if let Some(i) = marks.identity {
            Self::set_meta(conn, "chatdb_identity", &(i as i64).to_string())?;
        }
        Ok(())
    }

    /// Appends the events of hard deletes and moves the `deleted_messages`
    /// position with them, atomically, like [`Store::append_events`].
    pub fn append_deletes(
        &self,
        cursor: i64,
        events: Vec<(String, Body)>,
        marks: ReaderMarks,
    ) -> Result<Vec<u64>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seqs = Self::append_in(&tx, events)?;
        Self::set_meta(&tx, "chatdb_cursor", &cursor.to_string())?;
        Self::set_marks(&tx, marks)?;
        tx.commit()?;
        Ok(seqs)
    }

    pub(super) fn append_in(conn: &Connection, events: Vec<(String, Body)>) -> Result<Vec<u64>> {
        let mut last = Self::meta_u64(conn, "events_last_seq")?;
        let mut seqs = Vec::with_capacity(events.len());
        let now = now_ms();
        for (key, body) in events {
            let exists: bool = conn
                .query_row("SELECT 1 FROM outbox WHERE event_key = ?1", [&key], |_| {
                    Ok(true)
                })
                .optional()?
                .unwrap_or(false);
            if exists {
                continue;
            }
            let data = serde_json::to_string(&frame_data(&body)).unwrap_or_default();
            last += 1;
            conn.execute(
                "INSERT INTO outbox (seq, event_key, type, data, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![last as i64, key, body.type_name(), data, now],
            )?;
            seqs.push(last);
        }
        Self::set_meta(conn, "events_last_seq", &last.to_string())?;
        Ok(seqs)
    }

    /// Unacked events with seq > `after`, oldest first, at most `limit`.
    pub fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, type, data FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, ty, data) = row?;
            out.push(OutboxEntry {
                seq: seq as u64,
                body: parse_body(&ty, &data)?,
            });
        }
        Ok(out)
    }

    /// Unacked events with seq > `after`, oldest first, at most `limit`, as
    /// `(seq, frame text)` ready to send: the stored `data` goes out as it
    /// was written, neither parsed nor serialized again (that was half of
    /// the daemon's work while draining a backlog). Each frame gets a fresh
    /// id and `ts`.
    pub fn outbox_frames_after(
        &self,
        after: u64,
        limit: usize,
        ts: i64,
    ) -> Result<Vec<(u64, String)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, type, data FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![after as i64, limit as i64])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)? as u64;
            let ty = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            let data = row.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?;
            let id = whatsnap_proto::new_frame_id();
            out.push((
                seq,
                whatsnap_proto::Frame::durable_json(ty, &id, seq, ts, data),
            ));
        }
        Ok(out)
    }

    /// Number of events waiting for an ack.
    pub fn outbox_depth(&self) -> Result<u64> {
        let conn = self.lock();
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Drops every event up to `upto` (a cumulative ack).
    pub fn ack_events(&self, upto: u64) -> Result<()> {
        let conn = self.lock();
        conn.execute("DELETE FROM outbox WHERE seq <= ?1", [upto as i64])?;
        Ok(())
    }

    /// The command stream's epoch (empty before the first welcome) and the
    /// highest command seq durably processed.
    pub fn commands_position(&self) -> Result<(String, u64)> {
        let conn = self.lock();
        let epoch = Self::meta(&conn, "commands_epoch")?.unwrap_or_default();
        Ok((epoch, Self::meta_u64(&conn, "commands_acked_upto")?))
    }

    /// Adopts the service's command epoch. A new epoch forgets the count
    /// altogether: the first command of an unfamiliar epoch sets the start
    /// (protocol 4.2 rule 1), because the service may resend from any seq
    /// (e.g. 46 when the rows up to 45 were acked by storage this daemon
    /// lost). The `client_msg_id` key keeps such replays from sending twice.
    pub fn adopt_commands_epoch(&self, epoch: &str) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if Self::meta(&tx, "commands_epoch")?.as_deref() != Some(epoch) {
            Self::set_meta(&tx, "commands_epoch", epoch)?;
            tx.execute("DELETE FROM meta WHERE key = 'commands_acked_upto'", [])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The settings in force (version 0 and no values before the first).
    pub fn settings(&self) -> Result<SettingsData> {
        let conn = self.lock();
        Ok(Self::meta(&conn, "settings")?
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or(SettingsData {
                version: 0,
                values: serde_json::Map::new(),
            }))
    }

    /// Applies a settings version: from a durable `settings` command (`seq`)
    /// or from `welcome` (`None`). A newer version is stored together with its
    /// `settings.applied` event (carrying `errors`, the keys refused) and, for
    /// a command, the new command high-water mark, in one transaction.
    /// `Queued` means the settings changed.
    pub fn accept_settings(
        &self,
        seq: Option<u64>,
        data: &SettingsData,
        errors: serde_json::Map<String, Value>,
    ) -> Result<Accepted> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(seq) = seq
            && let Some(refusal) = Self::check_command_seq(&tx, seq)?
        {
            return Ok(refusal);
        }
        let current: u64 = Self::meta(&tx, "settings")?
            .and_then(|json| serde_json::from_str::<SettingsData>(&json).ok())
            .map_or(0, |s| s.version);
        let mut outcome = Accepted::Duplicate;
        if data.version > current {
            let json = serde_json::to_string(data).map_err(|e| StoreError::Corrupt {
                kind: "settings",
                detail: e.to_string(),
            })?;
            Self::set_meta(&tx, "settings", &json)?;
            Self::append_in(
                &tx,
                vec![(
                    format!("settings:{}", data.version),
                    Body::SettingsApplied(SettingsApplied {
                        version: data.version,
                        errors,
                    }),
                )],
            )?;
            outcome = Accepted::Queued;
        }
        if let Some(seq) = seq {
            Self::set_meta(&tx, "commands_acked_upto", &seq.to_string())?;
        }
        tx.commit()?;
        Ok(outcome)
    }

    /// Rule 4.2 for command `seq`: `None` when it is the next one to process
    /// (rule 1 makes the first of an unfamiliar epoch the next one), else
    /// how to answer it.
    fn check_command_seq(conn: &Connection, seq: u64) -> Result<Option<Accepted>> {
        let committed = match Self::meta(conn, "commands_acked_upto")? {
            Some(v) => v.parse().unwrap_or(0),
            None => seq.saturating_sub(1),
        };
        Ok(if seq <= committed {
            Some(Accepted::Duplicate)
        } else if seq > committed + 1 {
            Some(Accepted::Gap { committed })
        } else {
            None
        })
    }

    /// Records a durable command with sequence number `seq`. `cmd` is `None`
    /// for commands the daemon does not act on (yet): they still advance the
    /// stream so it never stalls.
    pub fn accept_command(&self, seq: u64, cmd: Option<&CmdSend>) -> Result<Accepted> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(refusal) = Self::check_command_seq(&tx, seq)? {
            return Ok(refusal);
        }
        let mut outcome = Accepted::Duplicate;
        if let Some(cmd) = cmd {
            let now = now_ms();
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO sends (client_msg_id, phase, cmd, created_ms, updated_ms)
                 VALUES (?1, 'queued', ?2, ?3, ?3)",
                params![
                    cmd.client_msg_id,
                    serde_json::to_string(cmd).unwrap_or_default(),
                    now
                ],
            )?;
            if inserted == 1 {
                outcome = Accepted::Queued;
            } else {
                // A replay of a known send: answer with the stored result
                // again, never dispatch again.
                let stored: Option<String> = tx.query_row(
                    "SELECT result FROM sends WHERE client_msg_id = ?1",
                    [&cmd.client_msg_id],
                    |r| r.get(0),
                )?;
                if let Some(result) = stored {
                    let result: SendResult =
                        serde_json::from_str(&result).map_err(|e| StoreError::Corrupt {
                            kind: "send result",
                            detail: e.to_string(),
                        })?;
                    Self::append_in(
                        &tx,
                        vec![(
                            send_event_key(&result.client_msg_id),
                            Body::SendResult(result),
                        )],
                    )?;
                }
            }
        }
        Self::set_meta(&tx, "commands_acked_upto", &seq.to_string())?;
        tx.commit()?;
        Ok(outcome)
    }
}

fn frame_data(body: &Body) -> Value {
    // A frame with a placeholder id: only its `data` is stored.
    whatsnap_proto::Frame::new(body.clone(), 0)
        .to_value()
        .get("data")
        .cloned()
        .unwrap_or(Value::Null)
}

fn parse_body(ty: &str, data: &str) -> Result<Body> {
    let corrupt = |detail: String| StoreError::Corrupt {
        kind: "outbox frame",
        detail,
    };
    Body::from_data_json(ty, data)
        .map_err(|e| corrupt(format!("{ty} frame has invalid data: {e}")))?
        .ok_or_else(|| corrupt(format!("unknown frame type {ty:?}")))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use whatsnap_proto::frame::{SendState, SendTo, ServicePref};

    pub(super) fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.db")).expect("open");
        (dir, store)
    }

    pub(super) fn cmd(id: &str, text: &str) -> CmdSend {
        CmdSend {
            client_msg_id: id.into(),
            to: Some(SendTo {
                handle: "+15551234567".into(),
            }),
            chat_guid: None,
            text: text.into(),
            attachments: vec![],
            service_pref: ServicePref::Auto,
            reply_to_guid: None,
            expires_at_ms: None,
        }
    }

    pub(super) fn result(id: &str) -> SendResult {
        SendResult {
            client_msg_id: id.into(),
            state: SendState::Sent,
            guids: vec!["G1".into()],
            service: Some("iMessage".into()),
            error: None,
        }
    }

    #[test]
    fn cursor_and_events_survive_reopen_and_seqs_continue() {
        let (dir, store) = store();
        let seqs = store
            .append_events(10, vec![("send:a".into(), Body::SendResult(result("a")))])
            .expect("append");
        assert_eq!(seqs, vec![1]);
        drop(store);
        let store = Store::open(&dir.path().join("state.db")).expect("reopen");
        assert_eq!(store.chatdb_cursor().expect("cursor"), Some(10));
        assert_eq!(store.outbox_after(0, 10).expect("outbox").len(), 1);
        store.ack_events(1).expect("ack");
        let seqs = store
            .append_events(11, vec![("send:b".into(), Body::SendResult(result("b")))])
            .expect("append");
        assert_eq!(seqs, vec![2], "an acked seq is never reused");
    }

    #[test]
    fn outbox_frames_are_sent_as_stored() {
        let (_dir, store) = store();
        store
            .append_events(
                1,
                vec![
                    ("send:a".into(), Body::SendResult(result("a"))),
                    ("send:b".into(), Body::SendResult(result("b"))),
                ],
            )
            .expect("append");
        let entries = store.outbox_after(0, 10).expect("entries");
        let frames = store.outbox_frames_after(1, 10, 77).expect("frames");
        assert_eq!(frames.len(), 1, "only seqs after `after`");
        let (seq, text) = &frames[0];
        let frame = whatsnap_proto::frame::decode(text).expect("a valid frame");
        assert_eq!((*seq, frame.seq, frame.ts), (2, Some(2), 77));
        assert_eq!(frame.body, entries[1].body);
    }

    #[test]
    fn an_event_key_already_waiting_is_not_queued_twice() {
        let (_dir, store) = store();
        let ev = || vec![("send:a".to_string(), Body::SendResult(result("a")))];
        store.append_events(1, ev()).expect("first");
        assert!(store.append_events(2, ev()).expect("second").is_empty());
        assert_eq!(store.outbox_depth().expect("depth"), 1);
    }

    #[test]
    fn commands_are_accepted_once_in_order() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        assert_eq!(
            store.accept_command(1, Some(&cmd("a", "x"))).expect("new"),
            Accepted::Queued
        );
        assert_eq!(
            store.accept_command(3, Some(&cmd("c", "x"))).expect("gap"),
            Accepted::Gap { committed: 1 }
        );
        assert_eq!(
            store.accept_command(1, Some(&cmd("a", "x"))).expect("dup"),
            Accepted::Duplicate
        );
        // Same client_msg_id under a new epoch: recorded, not queued again.
        store.adopt_commands_epoch("F").expect("epoch");
        assert_eq!(
            store
                .accept_command(1, Some(&cmd("a", "x")))
                .expect("replay"),
            Accepted::Duplicate
        );
        assert_eq!(store.pending_sends().expect("pending"), 1);
    }

    #[test]
    fn a_newer_settings_version_is_stored_once_with_its_applied_event() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        let mut values = serde_json::Map::new();
        values.insert("max_sends_per_hour".into(), 500.into());
        let v2 = SettingsData { version: 2, values };
        assert_eq!(
            store
                .accept_settings(Some(1), &v2, serde_json::Map::new())
                .expect("apply"),
            Accepted::Queued
        );
        assert_eq!(store.settings().expect("settings"), v2);
        // The same version again (from welcome, or replayed): nothing new.
        assert_eq!(
            store
                .accept_settings(None, &v2, serde_json::Map::new())
                .expect("again"),
            Accepted::Duplicate
        );
        let outbox = store.outbox_after(0, 10).expect("outbox");
        assert_eq!(outbox.len(), 1);
        assert!(matches!(
            &outbox[0].body,
            Body::SettingsApplied(a) if a.version == 2 && a.errors.is_empty()
        ));
        assert_eq!(store.commands_position().expect("pos").1, 1);
    }

    /// Regression: after the daemon lost its state, the service resent from
    /// 46 (rows up to 45 were acked before) and the daemon insisted on seq 1,
    /// so the command stream stalled for good.
    #[test]
    fn the_first_command_of_an_unfamiliar_epoch_is_the_start_of_the_stream() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        assert_eq!(store.commands_position().expect("pos").1, 0);
        assert_eq!(
            store
                .accept_command(46, Some(&cmd("a", "x")))
                .expect("start"),
            Accepted::Queued
        );
        assert_eq!(
            store.accept_command(47, None).expect("next"),
            Accepted::Duplicate
        );
        assert_eq!(
            store.commands_position().expect("pos"),
            ("E".to_string(), 47)
        );
        assert_eq!(
            store.accept_command(49, None).expect("gap"),
            Accepted::Gap { committed: 47 }
        );
        // The same epoch again (a reconnect) keeps the count.
        store.adopt_commands_epoch("E").expect("epoch");
        assert_eq!(store.commands_position().expect("pos").1, 47);
    }
}
