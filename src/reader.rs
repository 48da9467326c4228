//! The reader task: turns chat.db rows and their later changes into durable
//! events.
//!
//! On each wake-up it (1) notices a rebuilt or replaced database (a new
//! inode, or `MAX(ROWID)` below the cursor) and re-baselines by date instead
//! of replaying or skipping; (2) reads rows after the cursor in batches and,
//! for each batch, appends the events and advances the cursor in one
//! transaction of the daemon's store; (3) re-reads the status columns of a
//! window of recent rows and turns changes (delivered, read, played, edited,
//! unsent, failed, attachment ready) into `event.message_update`; (4) tails
//! `deleted_messages` for hard deletes. A row without a chat join is held
//! back for a grace period, because Messages writes the message and its join
//! separately; rows whose date lags far behind the newest live one are iCloud
//! backfill and are flagged so.
//!
//! The tracking state ([`Tracker`]) lives in memory: after a restart the
//! window is re-read and its updates offered again, which is harmless because
//! update event keys are idempotent.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use whatsnap_proto::frame::{Body, ChatKind, EventMessageUpdate, UpdateKind};

use crate::chatdb::{
    ChatDbError, MessageRow, RowKind, RowStatus, SharedChatDb, StatusRow, display_text,
};
use crate::store::{ReaderMarks, Store};

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
        let mut tracker = Tracker::default();
        loop {
            match self.scan(&mut tracker).await {
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

    /// Reads everything new and every change; returns how many events were
    /// appended.
    pub async fn scan(&self, tracker: &mut Tracker) -> Result<usize, ScanError> {
        // One trip to the blocking pool reads the cursor, probes chat.db
        // and, when the probe says a plain read will do (the usual wake-up),
        // reads the new rows and commits their events: every hop between
        // threads was a wake-up delay on a busy 2-core machine.
        let store = self.store.clone();
        let outbox = self.outbox.clone();
        let expect = Expect {
            identity: tracker.identity,
            seen: tracker.seen,
            idle_ok: tracker.pending.is_empty() && tracker.orphan.is_none(),
            ready: tracker.marks_loaded && tracker.newest_live != 0,
        };
        let slot = TrackerSlot::new(tracker);
        let inner = slot.clone();
        let first = self
            .chat_db
            .call(move |db| {
                let cursor = match store.chatdb_cursor() {
                    Ok(c) => c,
                    Err(e) => return Ok(Err(e.into())),
                };
                let probe = Probe {
                    generation: db.generation(),
                    version: db.data_version()?,
                    identity: db.identity(),
                    max_rowid: db.max_rowid()?,
                    high_water: db.rowid_high_water()?,
                    max_deleted: db.max_deleted_rowid()?,
                };
                let read = match cursor {
                    Some(c) if expect.plain_read(&probe, c) => {
                        match read_new(db, &store, &outbox, &mut inner.lock(), c) {
                            Ok(r) => Some(r),
                            Err(ScanError::ChatDb(e)) => return Err(e),
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                    _ => None,
                };
                Ok(Ok((cursor, probe, read)))
            })
            .await;
        slot.restore(tracker);
        let (cursor, probe, read) = first??;
        let Some(mut cursor) = cursor else {
            // First start: announce what arrives from now on, not history.
            let max = probe.max_rowid;
            let store = self.store.clone();
            crate::blocking(move || store.baseline_cursor(max)).await?;
            tracing::info!("chat.db baseline at ROWID {max}");
            tracker.reset(&probe);
            tracker.seed_silently = true;
            return Box::pin(self.scan(tracker)).await;
        };
        let mut appended = 0;
        let plain = read.is_some();
        match read {
            Some(read) => {
                appended += read.appended;
                cursor = read.cursor;
                self.publish(read.last_ms);
            }
            None => {
                if !tracker.marks_loaded {
                    let store = self.store.clone();
                    let marks = crate::blocking(move || store.reader_marks()).await?;
                    tracker.identity = tracker.identity.or(marks.identity);
                    tracker.deleted_cursor = tracker.deleted_cursor.or(marks.deleted_cursor);
                    tracker.persisted = marks;
                    tracker.marks_loaded = true;
                }
                // Nothing committed since the last scan on this connection: done.
                if tracker.seen == Some((probe.generation, probe.version))
                    && tracker.pending.is_empty()
                    && tracker.orphan.is_none()
                {
                    return Ok(0);
                }
                let replaced = tracker.identity.is_some() && tracker.identity != probe.identity;
                // The high-water mark, not MAX(ROWID): deleting the newest
                // message lowers MAX(ROWID) below the cursor without any
                // rebuild.
                if replaced || probe.high_water < cursor {
                    cursor = self.rebaseline(tracker, cursor, &probe).await?;
                }
                tracker.identity = probe.identity;
                if tracker.newest_live == 0 {
                    tracker.newest_live = self
                        .chat_db
                        .call(move |db| db.newest_date_upto(cursor))
                        .await?;
                }
                let store = self.store.clone();
                let outbox = self.outbox.clone();
                let slot = TrackerSlot::new(tracker);
                let inner = slot.clone();
                let result = self
                    .chat_db
                    .call(move |db| {
                        match read_new(db, &store, &outbox, &mut inner.lock(), cursor) {
                            Ok(r) => Ok(Ok(r)),
                            Err(ScanError::ChatDb(e)) => Err(e),
                            Err(e) => Ok(Err(e)),
                        }
                    })
                    .await;
                slot.restore(tracker);
                let read = result??;
                appended += read.appended;
                cursor = read.cursor;
                self.publish(read.last_ms);
            }
        }
        // A plain read that found new rows, soon after the last look at
        // changes: leave them for a later tick (one follows every file
        // event, and the poll). The scan is then incomplete, so `seen` is
        // not updated and that tick scans again.
        let now = Instant::now();
        if plain
            && appended > 0
            && tracker
                .changes_at
                .is_some_and(|at| now.duration_since(at) < CHANGES_EVERY)
        {
            return Ok(appended);
        }
        if tracker.deleted_cursor.is_none() {
            tracker.deleted_cursor = Some(probe.max_deleted);
        }
        appended += self.scan_changes(tracker, cursor).await?;
        tracker.changes_at = Some(now);
        let marks = tracker.marks();
        if marks != tracker.persisted {
            let store = self.store.clone();
            crate::blocking(move || store.set_reader_marks(marks)).await?;
            tracker.persisted = marks;
        }
        tracker.seed_silently = false;
        tracker.seen = Some((probe.generation, probe.version));
        Ok(appended)
    }

    fn publish(&self, last_ms: Option<i64>) {
        if let Some(ms) = last_ms {
            self.health.send_modify(|h| h.last_row_ms = Some(ms));
        }
    }

    /// Status changes in the recent window and hard deletes, read in one
    /// trip to the blocking pool.
    async fn scan_changes(&self, tracker: &mut Tracker, cursor: i64) -> Result<usize, ScanError> {
        let lo = (cursor - WINDOW).max(0);
        let deleted_after = tracker.deleted_cursor;
        let (statuses, deleted) = self
            .chat_db
            .call(move |db| {
                let deleted = match deleted_after {
                    Some(after) => db.deleted_after(after, BATCH)?,
                    None => Vec::new(),
                };
                Ok((db.status_window(lo, cursor)?, deleted))
            })
            .await?;
        let updates = self.scan_updates(tracker, cursor, statuses).await?;
        Ok(updates + self.scan_deletes(tracker, cursor, deleted).await?)
    }

    /// The database was rebuilt or replaced: its ROWIDs no longer line up
    /// with the cursor. Resume after the last row at or before the newest
    /// date already announced, so nothing is replayed and nothing new is
    /// skipped; forget the window and the deletes cursor.
    async fn rebaseline(
        &self,
        tracker: &mut Tracker,
        cursor: i64,
        probe: &Probe,
    ) -> Result<i64, ScanError> {
        let newest = tracker.newest_live;
        let new_cursor = if newest > 0 {
            self.chat_db
                .call(move |db| db.rowid_at_date(newest))
                .await?
        } else {
            probe.max_rowid
        };
        tracing::warn!(
            old_cursor = cursor,
            new_cursor,
            max_rowid = probe.max_rowid,
            "chat.db was rebuilt or replaced; re-baselined by date"
        );
        let store = self.store.clone();
        crate::blocking(move || store.baseline_cursor(new_cursor)).await?;
        tracker.reset(probe);
        tracker.newest_live = newest;
        tracker.seed_silently = true;
        Ok(new_cursor)
    }

    /// Diffs the status columns of the recent window against what was seen.
    async fn scan_updates(
        &self,
        tracker: &mut Tracker,
        cursor: i64,
        statuses: Vec<StatusRow>,
    ) -> Result<usize, ScanError> {
        let lo = (cursor - WINDOW).max(0);
        let mut changed = Vec::new();
        for s in &statuses {
            let before = tracker.known.get(&s.rowid);
            let differs = match before {
                Some(k) => k.status_columns_differ(&s.status),
                None => true,
            };
            if differs || tracker.pending.contains(&s.rowid) {
                changed.push(s.rowid);
            }
        }
        // Forget rows that left the window.
        tracker.known.retain(|rowid, _| *rowid > lo);
        tracker.pending.retain(|rowid| *rowid > lo);
        if changed.is_empty() {
            return Ok(0);
        }
        let rows = self.chat_db.call(move |db| db.rows_by_id(&changed)).await?;
        let mut events = Vec::new();
        for row in &rows {
            let previous = tracker.known.get(&row.rowid).cloned();
            if !tracker.seed_silently {
                events.extend(update_events(row, previous.as_ref()));
            }
            tracker.remember(row);
        }
        if events.is_empty() {
            return Ok(0);
        }
        let store = self.store.clone();
        let n = crate::blocking(move || store.append_events(cursor, events)).await?;
        Ok(n.len())
    }

    /// Hard deletes, from the GUIDs Apple's trigger logs in `deleted_messages`.
    async fn scan_deletes(
        &self,
        tracker: &mut Tracker,
        cursor: i64,
        deleted: Vec<(i64, String)>,
    ) -> Result<usize, ScanError> {
        let Some(&(last, _)) = deleted.last() else {
            return Ok(0);
        };
        tracker.deleted_cursor = Some(last);
        let marks = tracker.marks();
        let events: Vec<(String, Body)> = deleted
            .into_iter()
            // A removed tapback's old row is deleted too; the 300x row
            // already said so as a reaction.
            .filter(|(_, guid)| !tracker.reactions.contains(guid))
            .map(|(_, guid)| {
                let update = EventMessageUpdate {
                    event_key: format!("deleted:{guid}"),
                    guid,
                    kind: UpdateKind::Deleted,
                    at_ms: None,
                    text: None,
                    error_code: None,
                    service: None,
                };
                (update.event_key.clone(), Body::EventMessageUpdate(update))
            })
            .collect();
        if events.is_empty() {
            return Ok(0);
        }
        let store = self.store.clone();
        let n = crate::blocking(move || store.append_deletes(cursor, events, marks)).await?;
        tracker.persisted = marks;
        Ok(n.len())
    }
}

/// How many recent rows (by ROWID) are re-read for status changes.
pub const WINDOW: i64 = 500;

/// While new rows keep arriving, how often the status window and the
/// deletes are looked at. Re-reading 500 rows on every wake-up took as long
/// as reading and storing the new message itself, so under a stream of
/// messages (one a millisecond in `sim bench-wakeup`) the next message
/// waited behind it; a delivery or read receipt can wait this long instead.
pub const CHANGES_EVERY: Duration = Duration::from_millis(20);

/// A row whose date is this far behind the newest live row is iCloud
/// backfill, not a new message (real floods were 82 min to 14 h old, §17.2).
pub const BACKFILL_LAG_NS: i64 = 30 * 60 * 1_000_000_000;

/// What the reader expects of the database, to decide inside the probe's
/// trip to the blocking pool whether a plain read after the cursor is what
/// the scan will do (no baseline, no rebuild, something committed).
#[derive(Debug, Clone, Copy)]
struct Expect {
    identity: Option<u64>,
    seen: Option<(u64, i64)>,
    /// No held-back row or pending download forces a scan.
    idle_ok: bool,
    /// Marks and the newest live date are known (not the first scan).
    ready: bool,
}

impl Expect {
    fn plain_read(&self, probe: &Probe, cursor: i64) -> bool {
        let unchanged = self.seen == Some((probe.generation, probe.version)) && self.idle_ok;
        self.ready && !unchanged && self.identity == probe.identity && probe.high_water >= cursor
    }
}

/// What one cheap query says about the database before a scan.
#[derive(Debug, Clone, Copy)]
struct Probe {
    generation: u64,
    version: i64,
    identity: Option<u64>,
    max_rowid: i64,
    /// Highest ROWID ever assigned (see `ChatDb::rowid_high_water`).
    high_water: i64,
    max_deleted: i64,
}

/// The reader's memory between scans.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Status of recent rows by ROWID, as last announced.
    known: HashMap<i64, RowStatus>,
    /// Rows with attachments still downloading: re-read every scan.
    pending: HashSet<i64>,
    /// GUIDs of tapback rows seen in the window.
    reactions: HashSet<String>,
    /// `deleted_messages` ROWID already handled.
    deleted_cursor: Option<i64>,
    /// Inode of the database last scanned.
    identity: Option<u64>,
    /// Newest `date` of a live (non-backfill) row.
    newest_live: i64,
    /// (connection, data_version) of the last complete scan.
    seen: Option<(u64, i64)>,
    /// A row without a chat join: since when it has been waited for.
    orphan: Option<(i64, Instant)>,
    /// Record the window without announcing (after a baseline).
    seed_silently: bool,
    /// The marks were read from the store after a (re)start.
    marks_loaded: bool,
    /// The marks as last stored.
    persisted: ReaderMarks,
    /// When the status window and deletes were last scanned.
    changes_at: Option<Instant>,
}

impl Tracker {
    fn marks(&self) -> ReaderMarks {
        ReaderMarks {
            deleted_cursor: self.deleted_cursor,
            identity: self.identity,
        }
    }

    fn reset(&mut self, probe: &Probe) {
        *self = Tracker {
            identity: probe.identity,
            deleted_cursor: Some(probe.max_deleted),
            ..Tracker::default()
        };
    }

    fn remember(&mut self, row: &MessageRow) {
        self.known.insert(row.rowid, row.status.clone());
        if row.status.pending_attachments > 0 {
            self.pending.insert(row.rowid);
        } else {
            self.pending.remove(&row.rowid);
        }
        if row.kind() == RowKind::Reaction {
            self.reactions.insert(row.guid.clone());
        }
    }
}

impl RowStatus {
    fn status_columns_differ(&self, other: &RowStatus) -> bool {
        (
            self.is_delivered,
            self.date_delivered,
            self.is_read,
            self.date_read,
            self.is_played,
            self.date_played,
            self.date_edited,
            self.date_retracted,
            self.part_count,
            self.error,
        ) != (
            other.is_delivered,
            other.date_delivered,
            other.is_read,
            other.date_read,
            other.is_played,
            other.date_played,
            other.date_edited,
            other.date_retracted,
            other.part_count,
            other.error,
        )
    }
}

/// The `event.message_update`s that take a row from `before` (`None`: not
/// seen since start, so every state it is in is offered) to its state now.
pub fn update_events(row: &MessageRow, before: Option<&RowStatus>) -> Vec<(String, Body)> {
    let unset = RowStatus::default();
    let b = before.unwrap_or(&unset);
    let n = &row.status;
    let mut out = Vec::new();
    let mut push = |kind: UpdateKind,
                    name: &str,
                    revision: Option<String>,
                    at: i64,
                    text: Option<String>,
                    error: Option<i64>| {
        let event_key = match revision {
            Some(r) => format!("{name}:{}:{r}", row.guid),
            None => format!("{name}:{}", row.guid),
        };
        let update = EventMessageUpdate {
            event_key: event_key.clone(),
            guid: row.guid.clone(),
            kind,
            at_ms: crate::apple_time::apple_to_unix_ms(at),
            text,
            error_code: error,
            service: None,
        };
        out.push((event_key, Body::EventMessageUpdate(update)));
    };
    // Delivery receipts only mean something for what the Mac's user sent.
    if row.from_me && n.is_delivered && !b.is_delivered {
        push(
            UpdateKind::Delivered,
            "delivered",
            None,
            n.date_delivered,
            None,
            None,
        );
    }
    if n.date_read > 0 && b.date_read == 0 || n.is_read && !b.is_read && row.from_me {
        push(UpdateKind::Read, "read", None, n.date_read, None, None);
    }
    if n.is_played && !b.is_played {
        push(
            UpdateKind::Played,
            "played",
            None,
            n.date_played,
            None,
            None,
        );
    }
    let unsent = n.part_count == Some(0) || n.retracted_parts > 0 || n.date_retracted > 0;
    let was_unsent = b.part_count == Some(0) || b.retracted_parts > 0 || b.date_retracted > 0;
    if unsent && (!was_unsent || before.is_none()) {
        let at = if n.date_retracted > 0 {
            n.date_retracted
        } else {
            n.date_edited
        };
        push(UpdateKind::Unsent, "unsent", None, at, None, None);
    } else if !unsent && n.date_edited > 0 && n.date_edited != b.date_edited {
        // The edit number names the revision; without history, its date.
        let revision = if n.edit_events > 1 {
            (n.edit_events - 1).to_string()
        } else {
            n.date_edited.to_string()
        };
        let (text, _) = display_text(row.text.as_deref().unwrap_or_default());
        push(
            UpdateKind::Edited,
            "edited",
            Some(revision),
            n.date_edited,
            Some(text),
            None,
        );
    }
    if n.error != 0 && b.error == 0 && row.from_me {
        push(UpdateKind::Failed, "failed", None, 0, None, Some(n.error));
    }
    // Files that finished downloading since the row was last read.
    if before.is_some_and(|b| b.pending_attachments > n.pending_attachments) {
        for att in row.attachments.iter().filter(|a| a.on_disk) {
            push(
                UpdateKind::AttachmentReady,
                "attachment_ready",
                Some(att.guid.clone()),
                0,
                None,
                None,
            );
        }
    }
    out
}

/// What [`read_new`] did.
#[derive(Debug, Clone, Copy)]
struct Read {
    appended: usize,
    cursor: i64,
    last_ms: Option<i64>,
}

/// Reads the rows after `cursor` in batches and commits each batch's events
/// with the new cursor, waking the link after each commit. Runs on the
/// blocking pool, inside the chat.db call.
fn read_new(
    db: &crate::chatdb::ChatDb,
    store: &Store,
    outbox: &Notify,
    tracker: &mut Tracker,
    mut cursor: i64,
) -> Result<Read, ScanError> {
    let mut read = Read {
        appended: 0,
        cursor,
        last_ms: None,
    };
    loop {
        let rows = db.read_after(cursor, BATCH)?;
        let full = rows.len() == BATCH;
        let (n, new_cursor, last_ms) = commit_batch(store, cursor, &rows, tracker, Instant::now())?;
        read.appended += n;
        read.last_ms = last_ms.or(read.last_ms);
        if n > 0 {
            // Wake the link now, not after the update and delete scans.
            outbox.notify_one();
        }
        let stop = !full || new_cursor == cursor;
        cursor = new_cursor;
        read.cursor = cursor;
        if stop {
            return Ok(read);
        }
    }
}

/// The tracker, lent to a closure on the blocking pool. It comes back even
/// when the closure never runs (the database cannot be opened) or fails.
#[derive(Clone)]
struct TrackerSlot(Arc<std::sync::Mutex<Tracker>>);

impl TrackerSlot {
    fn new(tracker: &mut Tracker) -> TrackerSlot {
        TrackerSlot(Arc::new(std::sync::Mutex::new(std::mem::take(tracker))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the tracker back (the blocking call has finished).
    fn restore(self, tracker: &mut Tracker) {
        *tracker = std::mem::take(&mut *self.lock());
    }
}

/// Builds the events of `rows` and commits them with the new cursor. Returns
/// (events appended, new cursor, date of the newest row).
fn commit_batch(
    store: &Store,
    cursor: i64,
    rows: &[MessageRow],
    tracker: &mut Tracker,
    now: Instant,
) -> Result<(usize, i64, Option<i64>), crate::store::StoreError> {
    let mut new_cursor = cursor;
    let mut events = Vec::new();
    let mut last_ms = None;
    for row in rows {
        let Some(chat_guid) = row.chat_guid.as_deref() else {
            // Wait for the join from when the row was first seen, not from
            // its date: a backfilled row is old the moment it appears.
            let since = match tracker.orphan {
                Some((rowid, since)) if rowid == row.rowid => since,
                _ => {
                    tracker.orphan = Some((row.rowid, now));
                    now
                }
            };
            if now.duration_since(since) < JOIN_GRACE {
                break; // read again on the next wake-up
            }
            tracing::debug!(guid = %row.guid, "skipping a row that never joined a chat");
            new_cursor = row.rowid;
            continue;
        };
        if let Some(err) = &row.body_error {
            tracing::warn!(guid = %row.guid, "message body unreadable, sent without text: {err}");
        }
        let backfill = tracker.newest_live > 0
            && row.date > 0
            && row.date < tracker.newest_live - BACKFILL_LAG_NS;
        if !backfill && row.date > tracker.newest_live {
            tracker.newest_live = row.date;
        }
        let origin = if row.from_me && row.kind() == RowKind::Message && !backfill {
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
        tracker.remember(row);
        new_cursor = row.rowid;
        let Some(mut body) = row.to_body(origin) else {
            tracing::debug!(guid = %row.guid, kind = ?row.kind(), "row has no v1 event");
            continue;
        };
        if let Body::EventGroup(event) = &mut body {
            event.backfill = backfill;
        }
        if let Body::EventMessage(event) = &mut body {
            event.backfill = backfill;
            last_ms = Some(event.date_ms);
            // macOS sometimes writes a copy of our own send as an incoming
            // row; flag it rather than drop it (protocol §7.7 "Echo rows").
            if !event.from_me && !backfill {
                event.suspected_echo = store
                    .suspected_echo(
                        chat_guid,
                        event.sender.as_ref().map(|s| s.handle.as_str()),
                        &event.text,
                        event.date_ms,
                    )?
                    .is_some();
            }
        }
        let key = match &body {
            Body::EventMessage(e) => e.event_key.clone(),
            Body::EventReaction(e) => e.event_key.clone(),
            Body::EventGroup(e) => e.event_key.clone(),
            _ => continue,
        };
        events.push((key, body));
    }
    if tracker.orphan.is_some_and(|(rowid, _)| rowid <= new_cursor) {
        tracker.orphan = None;
    }
    if !events.is_empty() {
        probe::events_read(&events);
    }
    let n = if new_cursor == cursor {
        0
    } else {
        store.append_events(new_cursor, events)?.len()
    };
    Ok((n, new_cursor, last_ms))
}

/// A way for a benchmark to see the moment the reader has produced events,
/// before they are committed to the store: `sim bench-wakeup` measures
/// commit-to-read with it. Process-wide (the reader struct is built by the
/// daemon and carries no hooks); costs one atomic load per batch when unset.
pub mod probe {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, mpsc};
    use std::time::Instant;

    use whatsnap_proto::frame::Body;

    static SET: AtomicBool = AtomicBool::new(false);
    static SINK: Mutex<Option<mpsc::Sender<(String, Instant)>>> = Mutex::new(None);

    /// Sends `(message GUID, when read)` for every `event.message` the
    /// reader produces from now on, until [`clear`].
    pub fn install(sink: mpsc::Sender<(String, Instant)>) {
        *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        SET.store(true, Ordering::Release);
    }

    /// Stops [`install`]'s reports.
    pub fn clear() {
        SET.store(false, Ordering::Release);
        *SINK.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(super) fn events_read(events: &[(String, Body)]) {
        if !SET.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        if let Some(sink) = SINK.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            for (_, body) in events {
                if let Body::EventMessage(m) = body {
                    let _ = sink.send((m.guid.clone(), now));
                }
            }
        }
    }
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
