//! Large simulated databases for benchmarks: `whatsnap-mac sim generate`.
//!
//! This module owns making a chat.db with a million rows in seconds, with a
//! realistic mix: one-to-one and group chats, incoming and from-me rows,
//! bodies of every length (short, 128+ bytes with the 16-bit length form,
//! multibyte), tapbacks, replies and a few attachments. It writes through one
//! transaction and cached statements instead of the row-at-a-time
//! [`Simulator::write`], and checkpoints at the end so the file stands alone.

use rusqlite::params;

use crate::apple_time::now_apple_nanos;
use crate::sim::body::attributed_body;
use crate::sim::writer::{SimError, Simulator, begin, new_guid};

/// What a generated database holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    /// Message rows written.
    pub messages: u64,
    /// Chats.
    pub chats: u64,
}

/// Rows per transaction.
const CHUNK: u64 = 20_000;

const WORDS: &[&str] = &[
    "ok",
    "see you at",
    "the",
    "viewing",
    "tomorrow",
    "📸",
    "thanks!",
    "日本語",
    "price",
    "keys",
    "lockbox",
    "can we move it to 3pm?",
    "👍🏽",
    "Grüße",
    "address is 12 Main St",
    "call me",
];

impl Simulator {
    /// Appends `messages` rows over `chats` chats (a tenth of them groups).
    pub fn generate(&mut self, messages: u64, chats: u64) -> Result<Generated, SimError> {
        let chats = chats.max(1);
        let mut rng = fastrand::Rng::with_seed(0x5EED);
        let me = &self.me;
        let tx = begin(&mut self.conn, me)?;
        let err = |e| me.write_err(e);
        // Chats and their members.
        let mut chat_rows = Vec::with_capacity(chats as usize);
        for c in 0..chats {
            let group = c % 10 == 9;
            let members: Vec<String> = (0..if group { 4 } else { 1 })
                .map(|m| format!("+1555{:07}", (c * 7 + m) % 10_000_000))
                .collect();
            let mut ids = Vec::new();
            for m in &members {
                ids.push(me.find_or_create_handle(&tx, m)?);
            }
            let ident = if group {
                format!("chat{}", 100_000_000 + c)
            } else {
                members[0].clone()
            };
            let chat = me.find_or_create_chat(
                &tx,
                "iMessage",
                group.then_some(ident.as_str()),
                &ident,
                &ids,
                group.then_some("Generated group"),
            )?;
            chat_rows.push((chat.rowid, ids));
        }
        tx.commit().map_err(err)?;
        // Rows go in chunks, each its own transaction followed by a passive
        // checkpoint, as Messages' own auto-checkpoint keeps the WAL small;
        // one giant transaction would grow the WAL by ~1 KB per row.
        let conn = &self.conn;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        let mut insert = conn
            .prepare(
                "INSERT INTO message (guid, text, handle_id, attributedBody, version, service, \
                   account, account_guid, date, is_delivered, is_finished, is_from_me, is_sent, \
                   is_read, destination_caller_id, associated_message_guid, \
                   associated_message_type, thread_originator_guid) \
                 VALUES (?1, NULL, ?2, ?3, 10, 'iMessage', ?4, ?5, ?6, 1, 1, ?7, ?7, 1, ?8, ?9, ?10, ?11)",
            )
            .map_err(err)?;
        let mut join = conn
            .prepare("INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (?1, ?2, ?3)")
            .map_err(err)?;
        let account = me.account();
        let start = now_apple_nanos() - messages as i64 * 1_000_000_000;
        let mut recent: Vec<String> = Vec::with_capacity(64);
        for i in 0..messages {
            let (chat_rowid, ids) = &chat_rows[rng.usize(..chat_rows.len())];
            let from_me = rng.u8(..3) == 0;
            let handle = if from_me && ids.len() > 1 {
                0
            } else {
                ids[rng.usize(..ids.len())]
            };
            // 5% tapbacks, 5% replies, the rest text of varied length.
            let roll = rng.u8(..100);
            let (assoc, kind, thread) = match (roll, recent.is_empty()) {
                (0..=4, false) => (
                    Some(format!("p:0/{}", recent[rng.usize(..recent.len())])),
                    2000 + i64::from(rng.u8(..6)),
                    None,
                ),
                (5..=9, false) => (None, 0, Some(recent[rng.usize(..recent.len())].clone())),
                _ => (None, 0, None),
            };
            let body = if kind != 0 {
                None
            } else {
                let n = match rng.u8(..10) {
                    0..=5 => rng.usize(1..6),
                    6..=8 => rng.usize(6..20),
                    _ => rng.usize(20..60),
                };
                let text: Vec<&str> = (0..n).map(|_| WORDS[rng.usize(..WORDS.len())]).collect();
                Some(attributed_body(&text.join(" ")))
            };
            let guid = new_guid();
            let date = start + i as i64 * 1_000_000_000;
            insert
                .execute(params![
                    guid,
                    handle,
                    body,
                    account,
                    me.account_guid,
                    date,
                    i64::from(from_me),
                    me.own_address,
                    assoc,
                    kind,
                    thread,
                ])
                .map_err(err)?;
            let rowid = conn.last_insert_rowid();
            join.execute(params![chat_rowid, rowid, date])
                .map_err(err)?;
            if recent.len() == 64 {
                recent.swap_remove(rng.usize(..64));
            }
            recent.push(guid);
            if i % CHUNK == CHUNK - 1 {
                conn.execute_batch("COMMIT").map_err(err)?;
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    .map_err(err)?;
                conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
            }
        }
        drop(insert);
        drop(join);
        conn.execute_batch("COMMIT").map_err(err)?;
        self.checkpoint()?;
        Ok(Generated { messages, chats })
    }
}
