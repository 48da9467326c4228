//! Reading a whole history into event JSON lines, fast: what `whatsnap-mac
//! messages --since-rowid 0` and `sim bench-read` do with a million rows.
//!
//! The ROWID range is cut into chunks of [`CHUNK_ROWIDS`]; each of a few
//! worker threads owns one read-only connection and takes every n-th chunk,
//! reading it ([`ChatDb::read_between`], one short read transaction) and
//! turning its rows into JSON lines; the caller's thread receives the chunks
//! strictly in order, so the output is the same as a single-threaded read.
//! Stepping SQLite, decoding bodies and building and encoding events all
//! cost CPU per row, none of it shared, so this is how a 2-core Mac (or
//! this project's 2-core benchmark VM) gets both cores working. Rows committed after the read
//! started are picked up by a final sequential pass.

use std::path::Path;
use std::sync::{Mutex, mpsc};

use whatsnap_proto::frame::Body;

use super::{ChatDb, ChatDbError, Lookups};

/// ROWIDs per chunk: large enough that a chunk's query and its lookups are
/// noise, small enough that a read transaction lasts a few milliseconds.
pub const CHUNK_ROWIDS: i64 = 4096;

/// Rows per read in the final sequential pass.
const TAIL_BATCH: usize = 5_000;

/// Why a bulk read stopped.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// chat.db could not be read.
    #[error(transparent)]
    ChatDb(#[from] ChatDbError),
    /// An event could not be encoded (a bug: every event is plain data).
    #[error("cannot encode an event as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The output could not be written.
    #[error("cannot write the events: {0}")]
    Write(#[source] std::io::Error),
}

/// How far a bulk read has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Rows read.
    pub rows: u64,
    /// Events written (rows that have no v1 event are skipped).
    pub events: u64,
    /// The highest ROWID covered so far.
    pub cursor: i64,
}

/// One chunk's output.
struct Chunk {
    json: Vec<u8>,
    rows: u64,
    events: u64,
}

/// How many workers to use: every core, but no more than four (SQLite and
/// the writer stop scaling before that).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Reads every row with ROWID above `start` and hands `sink` its event JSON
/// lines ([`write_event_line`]) in ROWID order, a chunk at a time, with the
/// progress after that chunk. `workers` threads read in parallel, each on
/// its own connection (1: a single worker). An error from `sink` stops the
/// read and is returned as [`BulkError::Write`].
pub fn read_json(
    path: &Path,
    start: i64,
    workers: usize,
    sink: impl FnMut(&[u8], &Progress) -> std::io::Result<()>,
) -> Result<Progress, BulkError> {
    read_json_in_chunks(path, start, workers, CHUNK_ROWIDS, sink)
}

/// [`read_json`] with chunks of `chunk_rowids` ROWIDs (tests use small
/// ones to cross chunk boundaries on small databases).
pub fn read_json_in_chunks(
    path: &Path,
    start: i64,
    workers: usize,
    chunk_rowids: i64,
    mut sink: impl FnMut(&[u8], &Progress) -> std::io::Result<()>,
) -> Result<Progress, BulkError> {
    let chunk_rowids = chunk_rowids.max(1);
    let db = ChatDb::open(path)?;
    let end = db.max_rowid()?;
    let mut progress = Progress {
        cursor: start,
        ..Progress::default()
    };
    if end > start {
        let span = Span {
            start,
            end,
            chunk: chunk_rowids,
        };
        parallel(path, span, workers.max(1), &mut progress, &mut sink)?;
    }
    // Rows that arrived while reading.
    loop {
        let rows = db.read_after(progress.cursor, TAIL_BATCH)?;
        let Some(last) = rows.last() else { break };
        let cursor = last.rowid;
        let chunk = to_json(rows)?;
        progress.rows += chunk.rows;
        progress.events += chunk.events;
        progress.cursor = cursor;
        sink(&chunk.json, &progress).map_err(BulkError::Write)?;
    }
    Ok(progress)
}

/// The ROWIDs `(start, end]` cut into chunks of `chunk`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: i64,
    end: i64,
    chunk: i64,
}

fn parallel(
    path: &Path,
    span: Span,
    workers: usize,
    progress: &mut Progress,
    sink: &mut impl FnMut(&[u8], &Progress) -> std::io::Result<()>,
) -> Result<(), BulkError> {
    let chunks = (span.end - span.start + span.chunk - 1) / span.chunk;
    let bounds = move |k: i64| {
        let lo = span.start + k * span.chunk;
        (lo, (lo + span.chunk).min(span.end))
    };
    // Output buffers go back to the workers once written: allocating and
    // freeing a few MB per chunk made glibc consolidate its heap each time.
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let pool = &pool;
    std::thread::scope(|scope| {
        let mut receivers = Vec::with_capacity(workers);
        for w in 0..workers {
            // Two chunks in flight per worker: enough to keep it busy while
            // the sink writes, bounded so memory stays a few MB.
            let (tx, rx) = mpsc::sync_channel::<Result<Chunk, BulkError>>(2);
            receivers.push(rx);
            scope.spawn(move || {
                let db = match ChatDb::open(path) {
                    Ok(db) => db,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let mut lookups = Lookups::default();
                let mut k = w as i64;
                while k < chunks {
                    let (lo, hi) = bounds(k);
                    let json = pool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pop()
                        .unwrap_or_default();
                    let chunk = chunk_json(&db, lo, hi, &mut lookups, json);
                    let failed = chunk.is_err();
                    // A closed channel means the reader gave up: stop too.
                    if tx.send(chunk).is_err() || failed {
                        return;
                    }
                    k += workers as i64;
                }
            });
        }
        for k in 0..chunks {
            let rx = &receivers[(k as usize) % workers];
            let mut chunk = rx.recv().map_err(|_| {
                // Only a panicking worker hangs up early; scope re-raises it.
                BulkError::Write(std::io::Error::other("a reader thread stopped"))
            })??;
            progress.rows += chunk.rows;
            progress.events += chunk.events;
            progress.cursor = bounds(k).1;
            sink(&chunk.json, progress).map_err(BulkError::Write)?;
            chunk.json.clear();
            pool.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(chunk.json);
        }
        // Dropping the receivers (on error too) stops the workers.
        Ok(())
    })
}

/// One chunk's rows as JSON lines, appended to `json`.
fn chunk_json(
    db: &ChatDb,
    lo: i64,
    hi: i64,
    lookups: &mut Lookups,
    mut json: Vec<u8>,
) -> Result<Chunk, BulkError> {
    let mut events = 0;
    let mut encode = Ok(());
    let rows = db.bodies_between(lo, hi, lookups, |body| {
        if encode.is_ok() {
            encode = write_event_line(&mut json, &body);
            events += 1;
        }
        Ok(())
    })?;
    encode?;
    Ok(Chunk { json, rows, events })
}

fn to_json(rows: Vec<super::MessageRow>) -> Result<Chunk, BulkError> {
    let mut json = Vec::with_capacity(rows.len() * 512);
    let mut chunk_rows = 0;
    let mut events = 0;
    for row in rows {
        chunk_rows += 1;
        if let Some(body) = row.into_body(None) {
            write_event_line(&mut json, &body)?;
            events += 1;
        }
    }
    Ok(Chunk {
        json,
        rows: chunk_rows,
        events,
    })
}

/// Appends `{"type":"<frame type>", ...data}` and a newline to `line`: the
/// `data` object of the event with its frame type as the first key. The
/// data is encoded in place and its opening brace overwritten, instead of
/// encoding it to a buffer and splicing.
pub fn write_event_line(line: &mut Vec<u8>, body: &Body) -> serde_json::Result<()> {
    line.extend_from_slice(b"{\"type\":");
    serde_json::to_writer(&mut *line, body.type_name())?;
    let at = line.len();
    match body {
        Body::EventMessage(d) => serde_json::to_writer(&mut *line, d),
        Body::EventReaction(d) => serde_json::to_writer(&mut *line, d),
        Body::EventMessageUpdate(d) => serde_json::to_writer(&mut *line, d),
        Body::EventGroup(d) => serde_json::to_writer(&mut *line, d),
        other => serde_json::to_writer(
            &mut *line,
            &serde_json::json!({ "unexpected": other.type_name() }),
        ),
    }?;
    if line.get(at..) == Some(b"{}".as_slice()) {
        line.truncate(at);
        line.push(b'}');
    } else {
        // `data` is a JSON object: its `{` becomes the `,` after `type`.
        line[at] = b',';
    }
    line.push(b'\n');
    Ok(())
}
