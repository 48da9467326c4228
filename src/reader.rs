//! The reader task: turns new chat.db rows into durable events.
//!
//! On each wake-up it reads rows after the cursor in batches and, for each
//! batch, appends the events and advances the cursor in one transaction of the
//! daemon's store. A row that has no chat join yet is held back for a grace
//! period, because Messages writes the message and its join separately; the
//! cursor stops before it so it is read again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use whatsnap_proto::frame::{Body, ChatKind};

use crate::chatdb::{ChatDbError, MessageRow, SharedChatDb};
use crate::store::Store;

/// Rows read per transaction.
pub const BATCH: usize = 200;

/// How long a row without a chat join is waited for.
pub const JOIN_GRACE: Duration = Duration::from_secs(10);

/// What the reader last saw, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReaderHealth {
    /// Why chat.db cannot be read, if it cannot.
    pub error: Option<String>,
    /// Date of the newest row announced, Unix ms.
    pub last_row_ms: Option<i64>,
}

/// The reader task.
#[derive(Debug)]
pub struct Reader {
    /// The daemon's store.
    pub store: Store,
    /// Its own chat.db connection.
    pub chat_db: SharedChatDb,
    /// Ticks when chat.db may have changed.
    pub ticks: watch::Receiver<u64>,
    /// Woken when events were appended.
    pub outbox: Arc<Notify>,
    /// Published after every scan.
    pub health: watch::Sender<ReaderHealth>,
}

impl Reader {
    /// Scans on every tick until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            match self.scan().await {
                Ok(n) => {
                    if n > 0 {
                        self.outbox.notify_one();
                    }
                    self.health.send_if_modified(|h| h.error.take().is_some());
                }
                Err(e) => {
                    let message = e.to_string();
                    let changed = self.health.send_if_modified(|h| {
                        let changed = h.error.as_deref() != Some(message.as_str());
                        h.error = Some(message.clone());
                        changed
                    });
                    if changed {
                        tracing::error!("{message}");
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.ticks.changed() => if r.is_err() { return },
            }
        }
    }

    /// Reads everything new; returns how many events were appended.
    pub async fn scan(&self) -> Result<usize, ScanError> {
        let mut appended = 0;
        loop {
            let store = self.store.clone();
            let cursor = crate::blocking(move || store.chatdb_cursor()).await?;
            let Some(cursor) = cursor else {
                // First start: announce what arrives from now on, not history.
                let max = self.chat_db.call(|db| db.max_rowid()).await?;
                let store = self.store.clone();
                crate::blocking(move || store.baseline_cursor(max)).await?;
                tracing::info!("chat.db baseline at ROWID {max}");
                continue;
            };
            let rows = self
                .chat_db
                .call(move |db| db.read_after(cursor, BATCH))
                .await?;
            let full = rows.len() == BATCH;
            let store = self.store.clone();
            let (n, new_cursor, last_ms) =
                crate::blocking(move || commit_batch(&store, cursor, &rows)).await?;
            appended += n;
            if let Some(ms) = last_ms {
                self.health.send_modify(|h| h.last_row_ms = Some(ms));
            }
            if !full || new_cursor == cursor {
                return Ok(appended);
            }
        }
    }
}

/// Builds the events of `rows` and commits them with the new cursor. Returns
/// (events appended, new cursor, date of the newest row).
fn commit_batch(
    store: &Store,
    cursor: i64,
    rows: &[MessageRow],
) -> Result<(usize, i64, Option<i64>), crate::store::StoreError> {
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let mut new_cursor = cursor;
    let mut events = Vec::new();
    let mut last_ms = None;
    for row in rows {
        let Some(chat_guid) = row.chat_guid.as_deref() else {
            let age_ms = now_ms - crate::apple_time::apple_to_unix_ms(row.date).unwrap_or(0);
            if age_ms < JOIN_GRACE.as_millis() as i64 {
                break; // read again on the next wake-up
            }
            tracing::debug!(guid = %row.guid, "skipping a row that never joined a chat");
            new_cursor = row.rowid;
            continue;
        };
        if let Some(err) = &row.body_error {
            tracing::warn!(guid = %row.guid, "message body unreadable, sent without text: {err}");
        }
        let event = {
            let origin = if row.from_me {
                let direct = row.to_event(None);
                let handle = (direct.chat_kind == ChatKind::Direct)
                    .then(|| direct.participants.first().map(|p| p.handle.clone()))
                    .flatten();
                store.claim_origin(
                    chat_guid,
                    handle.as_deref(),
                    row.text.as_deref().unwrap_or_default(),
                    &row.guid,
                )?
            } else {
                None
            };
            row.to_event(origin)
        };
        last_ms = Some(event.date_ms);
        events.push((event.event_key.clone(), Body::EventMessage(event)));
        new_cursor = row.rowid;
    }
    let n = if new_cursor == cursor {
        0
    } else {
        store.append_events(new_cursor, events)?.len()
    };
    Ok((n, new_cursor, last_ms))
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// chat.db could not be read.
    #[error(transparent)]
    ChatDb(#[from] ChatDbError),
    /// The daemon's store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}
