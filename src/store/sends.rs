//! The send table: the state machine of every send, keyed by `client_msg_id`,
//! and the ties between a send and the from-me rows it made.
//!
//! A send is `queued` until the sender takes it, `dispatching` from the moment
//! it commits the chat.db snapshot (before osascript runs) until it has a
//! result, then `done` with the `send.result` stored next to it. A send may
//! have several parts (the text, then each file) and several attempts (an SMS
//! fallback after a definite iMessage failure); which part and which attempt
//! is in flight is stored with the snapshot it must be confirmed against, so a
//! daemon killed at any instant restarts by correlating exactly that attempt
//! and never dispatches it a second time.
//!
//! Sends come from two places: the service (`cmd.send`, source `service`,
//! answered with a durable `send.result`) and the `whatsnap-mac send` command
//! (source `cli`, answered on the terminal only). Each worker takes only its
//! own, so a manual send never produces a `send.result` the service did not ask
//! for, and never claims origin of a row (the service should record a manual
//! send as a message typed on the Mac).

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use whatsnap_proto::frame::{Body, CmdSend, SendResult};

use super::{Result, Store, StoreError, now_ms};
use crate::send::record::{
    Admitted, Attempt, DispatchCounts, QueueDepth, SendProgress, SendSource,
};

/// The `sends` table, created with the store.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sends (
    client_msg_id    TEXT PRIMARY KEY,
    phase            TEXT NOT NULL,
    cmd              TEXT NOT NULL,
    result           TEXT,
    max_rowid_before INTEGER,
    target_chat      TEXT,
    origin_guid      TEXT,
    created_ms       INTEGER NOT NULL,
    dispatched_ms    INTEGER,
    updated_ms       INTEGER NOT NULL,
    -- 'service' (cmd.send) or 'cli' (whatsnap-mac send).
    source           TEXT NOT NULL DEFAULT 'service',
    -- The one-to-one handle the send went to, when it went to a person.
    target_handle    TEXT,
    -- 1 when the send started a conversation with a handle (pacing).
    new_handle       INTEGER NOT NULL DEFAULT 0,
    -- JSON SendProgress: part and attempt in flight, GUIDs confirmed so far.
    progress         TEXT
);
CREATE INDEX IF NOT EXISTS sends_by_phase ON sends (phase, created_ms);
CREATE INDEX IF NOT EXISTS sends_by_dispatch ON sends (dispatched_ms);
";

pub use crate::send::record::ECHO_WINDOW_MS;

/// Where a send stands in its state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPhase {
    /// Accepted, not yet handed to Messages.
    Queued,
    /// Handed to Messages; confirmation pending. Never dispatched again.
    Dispatching,
    /// Finished with a `send.result`.
    Done,
}

impl SendPhase {
    fn as_str(self) -> &'static str {
        match self {
            SendPhase::Queued => "queued",
            SendPhase::Dispatching => "dispatching",
            SendPhase::Done => "done",
        }
    }

    fn parse(s: &str) -> SendPhase {
        match s {
            "queued" => SendPhase::Queued,
            "dispatching" => SendPhase::Dispatching,
            _ => SendPhase::Done,
        }
    }
}

/// A send as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SendRecord {
    /// The command.
    pub cmd: CmdSend,
    /// Its phase.
    pub phase: SendPhase,
    /// chat.db `MAX(ROWID)` just before the attempt in flight was dispatched.
    pub max_rowid_before: Option<i64>,
    /// The chat it was dispatched to, when known.
    pub target_chat: Option<String>,
    /// Unix ms of the (latest) dispatch.
    pub dispatched_ms: Option<i64>,
    /// The one-to-one handle it went to, when it went to a person.
    pub target_handle: Option<String>,
    /// Where it got to.
    pub progress: SendProgress,
    /// The stored result, once done.
    pub result: Option<SendResult>,
}

const RECORD_COLUMNS: &str = "cmd, phase, max_rowid_before, target_chat, dispatched_ms, \
                              target_handle, progress, result";

fn read_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        cmd: r.get(0)?,
        phase: r.get(1)?,
        max_rowid_before: r.get(2)?,
        target_chat: r.get(3)?,
        dispatched_ms: r.get(4)?,
        target_handle: r.get(5)?,
        progress: r.get(6)?,
        result: r.get(7)?,
    })
}

struct RawRecord {
    cmd: String,
    phase: String,
    max_rowid_before: Option<i64>,
    target_chat: Option<String>,
    dispatched_ms: Option<i64>,
    target_handle: Option<String>,
    progress: Option<String>,
    result: Option<String>,
}

impl RawRecord {
    fn parse(self) -> Result<SendRecord> {
        Ok(SendRecord {
            cmd: serde_json::from_str(&self.cmd).map_err(|e| corrupt("send command", &e))?,
            phase: SendPhase::parse(&self.phase),
            max_rowid_before: self.max_rowid_before,
            target_chat: self.target_chat,
            dispatched_ms: self.dispatched_ms,
            target_handle: self.target_handle,
            progress: match self.progress {
                Some(p) => serde_json::from_str(&p).map_err(|e| corrupt("send progress", &e))?,
                None => SendProgress::default(),
            },
            result: self
                .result
                .map(|r| serde_json::from_str(&r).map_err(|e| corrupt("send result", &e)))
                .transpose()?,
        })
    }
}

fn corrupt(kind: &'static str, e: &serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        kind,
        detail: e.to_string(),
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Our own plain data types always serialise.
    serde_json::to_string(value).unwrap_or_default()
}

impl Store {
    /// The oldest service send in `phase`.
    pub fn next_send(&self, phase: SendPhase) -> Result<Option<SendRecord>> {
        let conn = self.lock();
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM sends WHERE phase = ?1 AND source = 'service'
             ORDER BY created_ms, rowid LIMIT 1"
        );
        conn.query_row(&sql, [phase.as_str()], read_record)
            .optional()?
            .map(RawRecord::parse)
            .transpose()
    }

    /// The send a worker should take next: first one left in `dispatching` by
    /// a previous run (it is only correlated), then the oldest queued one.
    /// `only` restricts the choice to one `client_msg_id`.
    pub fn next_pending_send(
        &self,
        source: SendSource,
        only: Option<&str>,
    ) -> Result<Option<SendRecord>> {
        let conn = self.lock();
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM sends
             WHERE phase != 'done' AND source = ?1 AND (?2 IS NULL OR client_msg_id = ?2)
             ORDER BY phase = 'queued', created_ms, rowid LIMIT 1"
        );
        conn.query_row(&sql, params![source.as_str(), only], read_record)
            .optional()?
            .map(RawRecord::parse)
            .transpose()
    }

    /// The send stored under `client_msg_id`, if any.
    pub fn send_record(&self, client_msg_id: &str) -> Result<Option<SendRecord>> {
        let conn = self.lock();
        let sql = format!("SELECT {RECORD_COLUMNS} FROM sends WHERE client_msg_id = ?1");
        conn.query_row(&sql, [client_msg_id], read_record)
            .optional()?
            .map(RawRecord::parse)
            .transpose()
    }

    /// Records a send made with `whatsnap-mac send`. Returns `false` when the
    /// id is already known (the caller then resumes or reports that send).
    pub fn insert_cli_send(&self, cmd: &CmdSend) -> Result<bool> {
        let conn = self.lock();
        let now = now_ms();
        let n = conn.execute(
            "INSERT OR IGNORE INTO sends (client_msg_id, phase, cmd, created_ms, updated_ms, source)
             VALUES (?1, 'queued', ?2, ?3, ?3, 'cli')",
            params![cmd.client_msg_id, to_json(cmd), now],
        )?;
        Ok(n == 1)
    }

    /// Sends not yet finished.
    pub fn pending_sends(&self) -> Result<u64> {
        let depth = self.queue_depth()?;
        Ok(depth.queued + depth.dispatching)
    }

    /// Sends waiting and in flight, for `status`.
    pub fn queue_depth(&self) -> Result<QueueDepth> {
        let conn = self.lock();
        let (queued, dispatching): (i64, i64) = conn.query_row(
            "SELECT IFNULL(SUM(phase = 'queued'), 0), IFNULL(SUM(phase = 'dispatching'), 0)
             FROM sends WHERE phase != 'done'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(QueueDepth {
            queued: queued.max(0) as u64,
            dispatching: dispatching.max(0) as u64,
        })
    }

    /// Queued sends of `source` whose deadline is before `now_ms`; the
    /// worker finishes them as `expired` without dispatching.
    pub fn overdue_sends(&self, source: SendSource, now_ms: i64) -> Result<Vec<CmdSend>> {
        let conn = self.lock();
        // Filtered in SQL so a long queue costs one index walk, not a parse
        // of every waiting command on each turn of the worker.
        let mut stmt = conn.prepare_cached(
            "SELECT cmd FROM sends WHERE phase = 'queued' AND source = ?1
               AND json_extract(cmd, '$.expires_at_ms') < ?2
             ORDER BY created_ms, rowid",
        )?;
        let cmds = stmt
            .query_map(params![source.as_str(), now_ms], |r| r.get::<_, String>(0))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        cmds.iter()
            .map(|raw| serde_json::from_str(raw).map_err(|e| corrupt("send command", &e)))
            .collect()
    }

    /// Sends (of any source: the Apple ID is the same) dispatched at or after
    /// `since_ms`.
    pub fn dispatch_counts(&self, since_ms: i64) -> Result<DispatchCounts> {
        let conn = self.lock();
        let (sends, new_handles, oldest, oldest_new): (i64, i64, Option<i64>, Option<i64>) = conn
            .query_row(
            "SELECT COUNT(*), IFNULL(SUM(new_handle), 0), MIN(dispatched_ms),
                        MIN(CASE WHEN new_handle = 1 THEN dispatched_ms END)
                 FROM sends WHERE dispatched_ms >= ?1",
            [since_ms],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        Ok(DispatchCounts {
            sends: u32::try_from(sends).unwrap_or(u32::MAX),
            new_handles: u32::try_from(new_handles).unwrap_or(u32::MAX),
            oldest_ms: oldest,
            oldest_new_handle_ms: oldest_new,
        })
    }

    /// Marks a send as handed to Messages. Committed before osascript runs, so
    /// a crash afterwards can only lead to correlation, never a second send.
    pub fn mark_dispatching(
        &self,
        client_msg_id: &str,
        max_rowid_before: i64,
        target_chat: Option<&str>,
    ) -> Result<()> {
        self.begin_attempt(
            client_msg_id,
            &Attempt {
                max_rowid_before,
                target_chat,
                target_handle: None,
                new_handle: false,
                progress: &SendProgress::default(),
            },
            now_ms(),
        )?;
        Ok(())
    }

    /// Commits the snapshot and target of the attempt about to be handed to
    /// Messages, and the part/attempt it is. The first attempt takes the send
    /// from `queued` atomically: `false` means another worker holds it (or it
    /// is already finished) and it must not be dispatched.
    pub fn begin_attempt(
        &self,
        client_msg_id: &str,
        attempt: &Attempt<'_>,
        now_ms: i64,
    ) -> Result<bool> {
        let conn = self.lock();
        let n = conn.execute(
            "UPDATE sends SET phase = 'dispatching', max_rowid_before = ?2,
                 target_chat = IFNULL(?3, target_chat), target_handle = IFNULL(?4, target_handle),
                 new_handle = MAX(new_handle, ?5), progress = ?6,
                 dispatched_ms = ?7, updated_ms = ?7
             WHERE client_msg_id = ?1 AND phase != 'done'",
            params![
                client_msg_id,
                attempt.max_rowid_before,
                attempt.target_chat,
                attempt.target_handle,
                i64::from(attempt.new_handle),
                to_json(attempt.progress),
                now_ms
            ],
        )?;
        Ok(n == 1)
    }

    /// Accepts `cmd.send` number `seq` and begins its first attempt in one
    /// transaction, so a send that can leave at once costs one durable
    /// commit (one fsync) before osascript instead of two. Returns
    /// [`Admitted::Wait`] without writing anything when the send cannot begin
    /// at once (another service send is still unfinished and this one must
    /// wait its turn, or the id is known already); the caller then accepts it
    /// the ordinary way ([`Store::accept_command`]). A refused seq (a
    /// duplicate or a gap) is answered as `accept_command` answers it, also
    /// without writing.
    ///
    /// Why one commit keeps every guarantee of the two:
    /// - The ack: the link acks only after this returns, and this returns
    ///   after the commit, so an acked command is durable (as `dispatching`,
    ///   which is more than `queued`). If the daemon dies before the commit,
    ///   nothing of the command is stored and nothing was acked or
    ///   dispatched: the service resends it and it starts afresh.
    /// - Never two sends: osascript is spawned only after this commit, and
    ///   the commit records the command already in `dispatching` with the
    ///   `MAX(ROWID)` snapshot taken before it. A daemon killed at any
    ///   instant after the commit finds `dispatching` and only correlates
    ///   against that snapshot; a resent command hits the stored
    ///   `client_msg_id` and is never dispatched again. There is no instant
    ///   at which the command is durable but its dispatch is not recorded.
    /// - Order: the check that no other service send is unfinished is made
    ///   inside the same write transaction, so a send never overtakes one
    ///   accepted before it.
    /// - What the worker checks before `dispatching` (deadline, text, target,
    ///   pacing, pause) it checks before calling this, on the command in hand.
    pub fn accept_dispatching(
        &self,
        seq: u64,
        cmd: &CmdSend,
        attempt: &Attempt<'_>,
        now_ms: i64,
    ) -> Result<Admitted> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(refusal) = Self::check_command_seq(&tx, seq)? {
            return Ok(Admitted::Refused(refusal));
        }
        let waits: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sends
                WHERE client_msg_id = ?1 OR (phase != 'done' AND source = 'service'))",
            [&cmd.client_msg_id],
            |r| r.get(0),
        )?;
        if waits {
            // Rolled back on drop: nothing was written, no fsync.
            return Ok(Admitted::Wait);
        }
        tx.execute(
            "INSERT INTO sends (client_msg_id, phase, cmd, created_ms, updated_ms,
                 max_rowid_before, target_chat, target_handle, new_handle, progress,
                 dispatched_ms)
             VALUES (?1, 'dispatching', ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?3)",
            params![
                cmd.client_msg_id,
                to_json(cmd),
                now_ms,
                attempt.max_rowid_before,
                attempt.target_chat,
                attempt.target_handle,
                i64::from(attempt.new_handle),
                to_json(attempt.progress),
            ],
        )?;
        Self::set_meta(&tx, "commands_acked_upto", &seq.to_string())?;
        tx.commit()?;
        Ok(Admitted::Began)
    }

    /// Stores how far a send in `dispatching` got after a part finished and
    /// before the next is dispatched.
    pub fn record_progress(&self, client_msg_id: &str, progress: &SendProgress) -> Result<()> {
        let conn = self.lock();
        conn.execute(
            "UPDATE sends SET progress = ?2, updated_ms = ?3
             WHERE client_msg_id = ?1 AND phase = 'dispatching'",
            params![client_msg_id, to_json(progress), now_ms()],
        )?;
        Ok(())
    }

    /// Finishes a send: stores its result and queues `send.result`, atomically.
    /// A manual (`cli`) send stores its result only.
    pub fn finish_send(&self, result: &SendResult) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let source: Option<String> = tx
            .query_row(
                "SELECT source FROM sends WHERE client_msg_id = ?1",
                [&result.client_msg_id],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            "UPDATE sends SET phase = 'done', result = ?2, updated_ms = ?3 WHERE client_msg_id = ?1",
            params![result.client_msg_id, to_json(result), now_ms()],
        )?;
        if source.as_deref() != Some(SendSource::Cli.as_str()) {
            Self::append_in(
                &tx,
                vec![(
                    send_event_key(&result.client_msg_id),
                    Body::SendResult(result.clone()),
                )],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The send whose from-me row this is, if any: a recent send (dispatched
    /// in the last ten minutes) to the same chat with the same text (or, for
    /// a file row, a send with files), not yet tied to as many rows as it can
    /// make. A send made to a handle with no chat yet matches the one-to-one
    /// chat with that handle (`direct_handle`). Ties the send to `guid`.
    ///
    /// A send makes one row per part (its text, each file), and one more per
    /// part that fell back to SMS; it is never the origin of more rows than
    /// that, so a copy the user typed by hand is still reported as theirs.
    /// Manual sends are never an origin.
    pub fn claim_origin(
        &self,
        chat_guid: &str,
        direct_handle: Option<&str>,
        text: &str,
        guid: &str,
    ) -> Result<Option<String>> {
        let conn = self.lock();
        let since = now_ms() - 10 * 60 * 1000;
        let candidates: Vec<Candidate> = recent_sends(&conn, since)?
            .into_iter()
            .filter(|c| c.source == SendSource::Service.as_str())
            .filter(|c| c.same_chat(chat_guid, direct_handle))
            .collect();
        if let Some(c) = candidates
            .iter()
            .find(|c| c.claims().any(|(_, g)| g == guid))
        {
            return Ok(Some(c.id.clone()));
        }
        let file_row = text.is_empty() || text == OBJECT_REPLACEMENT;
        for c in candidates {
            let kind = if !text.is_empty() && c.cmd.text == text {
                'T'
            } else if file_row && !c.cmd.attachments.is_empty() {
                'F'
            } else {
                continue;
            };
            let rows_per_part = 1 + c.fallbacks as usize;
            let parts = if kind == 'T' {
                1
            } else {
                c.cmd.attachments.len()
            };
            let taken = c.claims().filter(|(k, _)| *k == kind).count();
            if taken >= parts * rows_per_part {
                continue;
            }
            let mut list = c.origin.clone().unwrap_or_default();
            if !list.is_empty() {
                list.push(',');
            }
            list.push(kind);
            list.push(':');
            list.push_str(guid);
            conn.execute(
                "UPDATE sends SET origin_guid = ?2 WHERE client_msg_id = ?1",
                params![c.id, list],
            )?;
            return Ok(Some(c.id));
        }
        Ok(None)
    }

    /// Whether a not-from-me row is probably a copy of our own send that
    /// macOS wrote as incoming (protocol §7.7 "Echo rows"): a send with the
    /// same text was dispatched to the same chat at most
    /// [`ECHO_WINDOW_MS`] before `row_ms`. `sender` is the row's handle; for
    /// a one-to-one chat it names the person the send went to. Returns the
    /// send's `client_msg_id`. Empty texts are never echoes.
    pub fn suspected_echo(
        &self,
        chat_guid: &str,
        sender: Option<&str>,
        text: &str,
        row_ms: i64,
    ) -> Result<Option<String>> {
        if text.is_empty() {
            return Ok(None);
        }
        let conn = self.lock();
        let candidates = recent_sends(&conn, row_ms - ECHO_WINDOW_MS)?;
        Ok(candidates
            .into_iter()
            .find(|c| {
                // A send dispatched after the row was written cannot have
                // produced it (one second of slack for clock granularity).
                c.dispatched_ms <= row_ms + 1_000
                    && c.same_chat(chat_guid, sender)
                    && c.cmd.text == text
            })
            .map(|c| c.id))
    }
}

/// What Messages writes as the body of a row that is only a file.
const OBJECT_REPLACEMENT: &str = "\u{FFFC}";

/// A dispatched send, as origin and echo matching see it.
struct Candidate {
    id: String,
    cmd: CmdSend,
    target_chat: Option<String>,
    target_handle: Option<String>,
    dispatched_ms: i64,
    source: String,
    /// `origin_guid`: the rows tied to it, `T:<guid>` (text) or `F:<guid>`
    /// (file), comma-separated. An older single bare GUID counts as text.
    origin: Option<String>,
    fallbacks: u32,
}

impl Candidate {
    fn claims(&self) -> impl Iterator<Item = (char, &str)> {
        self.origin
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once(':') {
                Some(("F", g)) => ('F', g),
                Some(("T", g)) => ('T', g),
                _ => ('T', s),
            })
    }

    fn same_chat(&self, chat_guid: &str, direct_handle: Option<&str>) -> bool {
        if self.target_chat.as_deref() == Some(chat_guid) {
            return true;
        }
        let Some(handle) = direct_handle else {
            return false;
        };
        let sent_to =
            self.target_handle
                .as_deref()
                .or(self.cmd.to.as_ref().map(|t| t.handle.as_str()));
        // Only a send that went to a person (not a chat by GUID) may match
        // by handle: a group with the same member is another chat.
        (self.target_chat.is_none() || self.target_handle.is_some()) && sent_to == Some(handle)
    }
}

fn recent_sends(conn: &Connection, since_ms: i64) -> Result<Vec<Candidate>> {
    let mut stmt = conn.prepare_cached(
        "SELECT client_msg_id, cmd, target_chat, target_handle, dispatched_ms, source,
                origin_guid, progress
           FROM sends WHERE dispatched_ms >= ?1 ORDER BY dispatched_ms",
    )?;
    let rows = stmt
        .query_map(params![since_ms], |r| {
            Ok((
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ),
                (
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ),
            ))
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(
            |((id, cmd, target_chat, target_handle), (dispatched_ms, source, origin, progress))| {
                // A command this version cannot read is no one's origin.
                let cmd = serde_json::from_str::<CmdSend>(&cmd).ok()?;
                let fallbacks = progress
                    .and_then(|p| serde_json::from_str::<SendProgress>(&p).ok())
                    .map_or(0, |p| p.fallbacks);
                Some(Candidate {
                    id,
                    cmd,
                    target_chat,
                    target_handle,
                    dispatched_ms,
                    source,
                    origin,
                    fallbacks,
                })
            },
        )
        .collect())
}

/// The idempotency key of a send's result event.
pub fn send_event_key(client_msg_id: &str) -> String {
    format!("send:{client_msg_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{cmd, result, store};

    #[test]
    fn a_replayed_finished_send_answers_its_stored_result_again() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        store.accept_command(1, Some(&cmd("a", "x"))).expect("new");
        store.finish_send(&result("a")).expect("finish");
        store.ack_events(1).expect("ack");
        store.adopt_commands_epoch("F").expect("epoch");
        store
            .accept_command(1, Some(&cmd("a", "x")))
            .expect("replay");
        let out = store.outbox_after(0, 10).expect("outbox");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].body, Body::SendResult(result("a")));
    }

    #[test]
    fn origin_is_claimed_by_one_row_only() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        store
            .accept_command(1, Some(&cmd("a", "hello")))
            .expect("new");
        store
            .mark_dispatching("a", 5, Some("iMessage;-;+15551234567"))
            .expect("dispatch");
        let chat = "iMessage;-;+15551234567";
        let claim =
            |text: &str, guid: &str| store.claim_origin(chat, None, text, guid).expect("claim");
        assert_eq!(claim("other", "G0"), None);
        assert_eq!(claim("hello", "G1"), Some("a".into()));
        assert_eq!(claim("hello", "G1"), Some("a".into()), "the same row again");
        assert_eq!(
            claim("hello", "G2"),
            None,
            "a second row with the same text"
        );
    }

    /// Regression: after an SMS fallback the failed iMessage row took the
    /// send's only origin claim, so the SMS row that actually went out
    /// reached the service as a message typed on the phone (a CRM duplicate).
    #[test]
    fn an_sms_fallback_row_also_carries_the_origin_but_a_third_copy_does_not() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        store
            .accept_command(1, Some(&cmd("a", "hello")))
            .expect("new");
        let progress = SendProgress {
            fell_back: true,
            fallbacks: 1,
            ..SendProgress::default()
        };
        store
            .begin_attempt(
                "a",
                &Attempt {
                    max_rowid_before: 1,
                    target_chat: Some("iMessage;-;+15551234567"),
                    target_handle: Some("+15551234567"),
                    new_handle: false,
                    progress: &progress,
                },
                now_ms(),
            )
            .expect("attempt");
        let claim = |chat: &str, guid: &str| {
            store
                .claim_origin(chat, Some("+15551234567"), "hello", guid)
                .expect("claim")
        };
        assert_eq!(claim("iMessage;-;+15551234567", "FAILED"), Some("a".into()));
        assert_eq!(claim("SMS;-;+15551234567", "SMS-ROW"), Some("a".into()));
        assert_eq!(
            claim("SMS;-;+15551234567", "SMS-ROW"),
            Some("a".into()),
            "again"
        );
        assert_eq!(claim("SMS;-;+15551234567", "TYPED"), None, "typed by hand");
    }

    #[test]
    fn file_rows_of_a_send_with_files_carry_its_origin() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        let mut c = cmd("f", "see attached");
        c.attachments = vec![whatsnap_proto::frame::OutboundAttachment {
            url: "file:///tmp/a.pdf".into(),
            name: "a.pdf".into(),
            mime: None,
            size: 1,
            sha256: String::new(),
        }];
        store.accept_command(1, Some(&c)).expect("new");
        store
            .mark_dispatching("f", 1, Some("iMessage;-;+15551234567"))
            .expect("dispatch");
        let claim = |text: &str, guid: &str| {
            store
                .claim_origin("iMessage;-;+15551234567", None, text, guid)
                .expect("claim")
        };
        assert_eq!(claim("see attached", "T1"), Some("f".into()));
        assert_eq!(claim("\u{FFFC}", "F1"), Some("f".into()));
        assert_eq!(claim("\u{FFFC}", "F2"), None, "one file, one row");
    }

    #[test]
    fn a_manual_send_gets_no_send_result_and_is_no_origin() {
        let (_dir, store) = store();
        let mut c = cmd("cli:1", "by hand");
        c.to = None;
        c.chat_guid = Some("any;-;+15551234567".into());
        assert!(store.insert_cli_send(&c).expect("insert"));
        assert!(!store.insert_cli_send(&c).expect("again"), "known id");
        assert_eq!(
            store.next_send(SendPhase::Queued).expect("next"),
            None,
            "the daemon's worker does not take manual sends"
        );
        store
            .mark_dispatching("cli:1", 0, Some("any;-;+15551234567"))
            .expect("dispatch");
        assert_eq!(
            store
                .claim_origin("any;-;+15551234567", None, "by hand", "G")
                .expect("claim"),
            None
        );
        store.finish_send(&result("cli:1")).expect("finish");
        assert_eq!(store.outbox_depth().expect("depth"), 0);
        let rec = store.send_record("cli:1").expect("read").expect("stored");
        assert_eq!(rec.result, Some(result("cli:1")));
    }

    #[test]
    fn an_attempt_is_not_begun_on_a_finished_send() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        store.accept_command(1, Some(&cmd("a", "x"))).expect("new");
        store.finish_send(&result("a")).expect("finish");
        let began = store
            .begin_attempt(
                "a",
                &Attempt {
                    max_rowid_before: 1,
                    target_chat: None,
                    target_handle: Some("+15551234567"),
                    new_handle: true,
                    progress: &SendProgress::default(),
                },
                now_ms(),
            )
            .expect("attempt");
        assert!(!began, "a finished send is never dispatched again");
    }

    #[test]
    fn a_copy_of_our_text_arriving_as_incoming_soon_after_is_an_echo() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        store
            .accept_command(1, Some(&cmd("a", "see you at 5")))
            .expect("new");
        let now = now_ms();
        store
            .begin_attempt(
                "a",
                &Attempt {
                    max_rowid_before: 1,
                    target_chat: Some("any;-;+15551234567"),
                    target_handle: Some("+15551234567"),
                    new_handle: false,
                    progress: &SendProgress::default(),
                },
                now,
            )
            .expect("attempt");
        let echo = |chat: &str, who: Option<&str>, text: &str, at: i64| {
            store.suspected_echo(chat, who, text, at).expect("query")
        };
        let chat = "any;-;+15551234567";
        assert_eq!(
            echo(chat, Some("+15551234567"), "see you at 5", now + 2_000),
            Some("a".into())
        );
        assert_eq!(
            echo(
                "iMessage;-;+15551234567",
                Some("+15551234567"),
                "see you at 5",
                now + 2_000
            ),
            Some("a".into()),
            "the same person under another chat GUID"
        );
        assert_eq!(echo(chat, None, "something else", now + 2_000), None);
        assert_eq!(
            echo(chat, None, "see you at 5", now + ECHO_WINDOW_MS + 5_000),
            None,
            "too late to be an echo"
        );
        assert_eq!(
            echo(chat, None, "see you at 5", now - 60_000),
            None,
            "written before we sent"
        );
    }

    #[test]
    fn a_send_accepted_and_begun_at_once_is_one_commit_that_never_overtakes() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        let progress = SendProgress::default();
        let attempt = Attempt {
            max_rowid_before: 7,
            target_chat: Some("any;-;+15551234567"),
            target_handle: Some("+15551234567"),
            new_handle: false,
            progress: &progress,
        };
        let admit = |seq: u64, id: &str| {
            store
                .accept_dispatching(seq, &cmd(id, "x"), &attempt, now_ms())
                .expect("admit")
        };
        assert_eq!(admit(1, "a"), Admitted::Began);
        let a = store.send_record("a").expect("read").expect("kept");
        assert_eq!(
            (a.phase, a.max_rowid_before),
            (SendPhase::Dispatching, Some(7))
        );
        assert_eq!(
            store.commands_position().expect("position").1,
            1,
            "acked with it"
        );
        // A seq already taken is refused as accept_command refuses it.
        assert_eq!(
            admit(1, "z"),
            Admitted::Refused(super::super::Accepted::Duplicate)
        );
        assert_eq!(store.send_record("z").expect("read"), None);
        // While `a` is unfinished, `b` must wait its turn: nothing written.
        assert_eq!(admit(2, "b"), Admitted::Wait);
        assert_eq!(store.send_record("b").expect("read"), None);
        assert_eq!(store.commands_position().expect("position").1, 1);
        store.finish_send(&result("a")).expect("finish");
        // A known id is never begun again.
        assert_eq!(admit(2, "a"), Admitted::Wait);
        assert_eq!(admit(2, "b"), Admitted::Began);
    }

    #[test]
    fn queue_depth_counts_waiting_and_in_flight_sends() {
        let (_dir, store) = store();
        store.adopt_commands_epoch("E").expect("epoch");
        store.accept_command(1, Some(&cmd("a", "x"))).expect("a");
        store.accept_command(2, Some(&cmd("b", "y"))).expect("b");
        store.mark_dispatching("a", 0, None).expect("dispatch");
        assert_eq!(
            store.queue_depth().expect("depth"),
            QueueDepth {
                queued: 1,
                dispatching: 1
            }
        );
        assert_eq!(store.pending_sends().expect("pending"), 2);
    }
}
