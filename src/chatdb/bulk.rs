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
//!
//! Plain messages, nearly all rows, go straight from the SQLite row to their
//! JSON line ([`super::plain`]); every other row takes the general path
//! (`MessageRow`, protocol event, serde), and tests hold the two equal.

use std::path::Path;
use std::sync::{Mutex, mpsc};

use whatsnap_proto::frame::Body;

use super::{ChatDb, ChatDbError, Lookups, plain};

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
    let db = ChatDb::open_for_bulk(path)?;
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
                let db = match ChatDb::open_for_bulk(path) {
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
    json: Vec<u8>,
) -> Result<Chunk, BulkError> {
    chunk_json_with(db, lo, hi, lookups, json, true).map(|(chunk, _)| chunk)
}

/// [`chunk_json`], with plain messages written by [`plain::write_line`]
/// when `fast` (else every row takes the general path, for tests that hold
/// the two equal); also returns how many rows took the fast path.
fn chunk_json_with(
    db: &ChatDb,
    lo: i64,
    hi: i64,
    lookups: &mut Lookups,
    mut json: Vec<u8>,
    fast: bool,
) -> Result<(Chunk, u64), BulkError> {
    let (mut rows, mut events, mut plain_rows) = (0, 0, 0);
    if !db.joins_indexed {
        // Without the index the rows come from one joined query, already
        // decoded; no fast path there (old or odd databases only).
        let mut encode = Ok(());
        rows = db.bodies_between(lo, hi, lookups, |body| {
            if encode.is_ok() {
                encode = write_event_line(&mut json, &body);
                events += 1;
            }
            Ok(())
        })?;
        encode?;
        return Ok((Chunk { json, rows, events }, 0));
    }
    db.scan_range(lo, hi, None, true, |r, chat| -> Result<(), BulkError> {
        rows += 1;
        if fast && plain::write_line(db, r, chat, lookups, &mut json)? {
            events += 1;
            plain_rows += 1;
            return Ok(());
        }
        let (row, chat) = db.read_row(r, chat, true, lookups).map_err(|e| db.err(e))?;
        if let Some(body) = row.into_body_in(chat.as_deref()) {
            write_event_line(&mut json, &body)?;
            events += 1;
        }
        Ok(())
    })?;
    Ok((Chunk { json, rows, events }, plain_rows))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::kinds::{SimChat, SimRow};
    use crate::sim::{Release, Simulator};

    /// The chunk's JSON with and without the fast path, and how many rows
    /// took it.
    fn both_paths(path: &Path) -> (Vec<u8>, Vec<u8>, u64, u64) {
        let db = ChatDb::open(path).expect("reader opens");
        let end = db.max_rowid().expect("max rowid");
        let (fast, plain) = chunk_json_with(&db, 0, end, &mut Lookups::default(), Vec::new(), true)
            .expect("fast path");
        let (general, none) =
            chunk_json_with(&db, 0, end, &mut Lookups::default(), Vec::new(), false)
                .expect("general path");
        assert_eq!(none, 0);
        assert_eq!(fast.rows, general.rows);
        assert_eq!(fast.events, general.events);
        (fast.json, general.json, plain, fast.rows)
    }

    /// Rows the fast path takes, and rows next to them that it must leave to
    /// the general path, on every release: both paths print the same bytes.
    #[test]
    fn the_fast_path_writes_what_the_general_path_writes() {
        for release in Release::ALL {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("chat.db");
            let mut sim = Simulator::create_release(&path, release).expect("create");
            let ann = "+15551230001";
            let group = SimChat::group("chat42", Some("Crew \"A\""), &[ann, "Jo@Example.org"]);
            let texts = [
                "plain",
                "",
                "quotes \" and \\ backslashes",
                "control \u{1}\u{8}\t\n\u{c}\r\u{1f} chars",
                "emoji 😀👍🏽, 日本語, U+2028 \u{2028} and DEL \u{7f}",
                "placeholders \u{FFFC} and \u{FFFD} are dropped",
                &"long ".repeat(100),
            ];
            for text in texts {
                sim.write(&SimRow::incoming(ann, text)).expect("incoming");
                sim.write(&SimRow::from_me(group.clone(), text))
                    .expect("from me");
                let mut theirs = SimRow::incoming("Jo@Example.org", text);
                theirs.chat = group.clone();
                theirs.text_column = true;
                sim.write(&theirs).expect("group incoming");
            }
            let first = sim.receive(ann, "first").expect("first");
            let mut reply = SimRow::incoming(ann, "a reply");
            reply.reply_to = Some(first.guid.clone());
            reply.subject = Some("Re: \"house\"".into());
            sim.write(&reply).expect("reply");
            let mut orphan = SimRow::incoming(ann, "no chat yet");
            orphan.join = false;
            sim.write(&orphan).expect("orphan");
            sim.write(&SimRow::incoming(ann, &"x".repeat(70_000)))
                .expect("over-long");
            let odd: Vec<_> = (0..7)
                .map(|i| sim.receive(ann, &format!("odd {i}")).expect("odd"))
                .collect();
            sim.react(
                &SimChat::direct(ann),
                Some(ann),
                &first.guid,
                crate::sim::kinds::TAPBACK_LOVE,
                None,
            )
            .expect("tapback");
            drop(sim);
            // What Messages itself never writes, or rarely: each must
            // either be written alike or left to the general path.
            let conn = rusqlite::Connection::open(&path).expect("rw");
            let set = |sql: &str, guid: &str| {
                conn.execute(sql, [guid]).expect(sql);
            };
            set(
                "UPDATE message SET service = NULL WHERE guid = ?1",
                &odd[0].guid,
            );
            set(
                "UPDATE message SET attributedBody = x'040B', text = 'fallback' WHERE guid = ?1",
                &odd[1].guid,
            );
            set(
                "UPDATE message SET attributedBody = x'040B', text = NULL WHERE guid = ?1",
                &odd[2].guid,
            );
            set(
                "UPDATE message SET attributedBody = x'FFFE6800E900', text = NULL WHERE guid = ?1",
                &odd[3].guid,
            );
            set(
                "UPDATE message SET handle_id = 0 WHERE guid = ?1",
                &odd[4].guid,
            );
            set(
                "UPDATE message SET attributedBody = CAST(attributedBody AS TEXT) WHERE guid = ?1",
                &odd[5].guid,
            );
            // Invalid UTF-8 inside the text: decoded lossily on both paths.
            let mut body = crate::sim::body::attributed_body("bad byte");
            if let Some(at) = body.windows(3).position(|w| w == b"bad") {
                body[at] = 0xFF;
            }
            conn.execute(
                "UPDATE message SET attributedBody = ?1 WHERE guid = ?2",
                rusqlite::params![body, odd[6].guid],
            )
            .expect("invalid UTF-8");
            drop(conn);

            let (fast, general, plain, rows) = both_paths(&path);
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&general),
                "{release:?}"
            );
            assert!(
                plain * 10 >= rows * 8,
                "{release:?}: only {plain} of {rows} rows took the fast path"
            );
        }
    }

    /// The generator's realistic mix, the benchmark's database in small.
    #[test]
    fn the_fast_path_agrees_on_a_generated_history() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("chat.db");
        let mut sim = Simulator::create(&path).expect("create");
        sim.generate(5_000, 60).expect("generate");
        drop(sim);
        let (fast, general, plain, rows) = both_paths(&path);
        assert_eq!(rows, 5_000);
        assert!(
            fast == general,
            "the fast path differs from the general one"
        );
        assert!(plain * 10 >= rows * 9, "{plain} of {rows}");
    }
}
