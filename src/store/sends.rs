//! The send table: the state machine of every `cmd.send`, keyed by
//! `client_msg_id`, and the tie between a send and the from-me row it made.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use whatsnap_proto::frame::{Body, CmdSend, SendResult};

use super::{Result, Store, StoreError, now_ms};

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
    updated_ms       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sends_by_phase ON sends (phase, created_ms);
";

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
    /// chat.db `MAX(ROWID)` just before dispatch.
    pub max_rowid_before: Option<i64>,
    /// The chat it was dispatched to, when known.
    pub target_chat: Option<String>,
    /// Unix ms of dispatch.
    pub dispatched_ms: Option<i64>,
}

impl Store {
    /// The oldest send in `phase`.
    pub fn next_send(&self, phase: SendPhase) -> Result<Option<SendRecord>> {
        let conn = self.lock();
        let row = conn
            .query_row(
                "SELECT cmd, phase, max_rowid_before, target_chat, dispatched_ms FROM sends
                 WHERE phase = ?1 ORDER BY created_ms, rowid LIMIT 1",
                [phase.as_str()],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                },
            )
            .optional()?;
        row.map(
            |(cmd, phase, max_rowid_before, target_chat, dispatched_ms)| {
                Ok(SendRecord {
                    cmd: serde_json::from_str(&cmd).map_err(|e| StoreError::Corrupt {
                        kind: "send command",
                        detail: e.to_string(),
                    })?,
                    phase: SendPhase::parse(&phase),
                    max_rowid_before,
                    target_chat,
                    dispatched_ms,
                })
            },
        )
        .transpose()
    }

    /// Sends not yet finished.
    pub fn pending_sends(&self) -> Result<u64> {
        let conn = self.lock();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sends WHERE phase != 'done'",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Marks a send as handed to Messages. Committed before osascript runs, so
    /// a crash afterwards can only lead to correlation, never a second send.
    pub fn mark_dispatching(
        &self,
        client_msg_id: &str,
        max_rowid_before: i64,
        target_chat: Option<&str>,
    ) -> Result<()> {
        let conn = self.lock();
        let now = now_ms();
        conn.execute(
            "UPDATE sends SET phase = 'dispatching', max_rowid_before = ?2, target_chat = ?3,
             dispatched_ms = ?4, updated_ms = ?4 WHERE client_msg_id = ?1",
            params![client_msg_id, max_rowid_before, target_chat, now],
        )?;
        Ok(())
    }

    /// Finishes a send: stores its result and queues `send.result`, atomically.
    pub fn finish_send(&self, result: &SendResult) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE sends SET phase = 'done', result = ?2, updated_ms = ?3 WHERE client_msg_id = ?1",
            params![
                result.client_msg_id,
                serde_json::to_string(result).unwrap_or_default(),
                now_ms()
            ],
        )?;
        Self::append_in(
            &tx,
            vec![(
                send_event_key(&result.client_msg_id),
                Body::SendResult(result.clone()),
            )],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The send whose from-me row this is, if any: a recent send (dispatched
    /// in the last ten minutes) to the same chat with the same text, not yet
    /// tied to another row. A send made to a handle with no chat yet matches
    /// the one-to-one chat with that handle (`direct_handle`). Ties the send to
    /// `guid`, so one send is never the origin of two rows.
    pub fn claim_origin(
        &self,
        chat_guid: &str,
        direct_handle: Option<&str>,
        text: &str,
        guid: &str,
    ) -> Result<Option<String>> {
        let conn = self.lock();
        let since = now_ms() - 10 * 60 * 1000;
        let mut stmt = conn.prepare_cached(
            "SELECT client_msg_id, cmd, target_chat FROM sends
             WHERE dispatched_ms >= ?1 AND (origin_guid IS NULL OR origin_guid = ?2)
             ORDER BY dispatched_ms",
        )?;
        let candidates = stmt
            .query_map(params![since, guid], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for (id, cmd, target) in candidates {
            let Ok(cmd) = serde_json::from_str::<CmdSend>(&cmd) else {
                continue;
            };
            let same_chat = match &target {
                Some(t) => t == chat_guid,
                None => {
                    direct_handle.is_some()
                        && cmd.to.as_ref().map(|t| t.handle.as_str()) == direct_handle
                }
            };
            if same_chat && cmd.text == text {
                conn.execute(
                    "UPDATE sends SET origin_guid = ?2 WHERE client_msg_id = ?1",
                    params![id, guid],
                )?;
                return Ok(Some(id));
            }
        }
        Ok(None)
    }
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
}
