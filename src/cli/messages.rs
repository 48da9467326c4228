//! `whatsnap-mac messages`: print what the bridge reads from chat.db, one
//! protocol event per JSON line.
//!
//! Each line is exactly the `data` object of the event the bridge would send,
//! with its frame `type` added as the first key, so a user can see what the
//! bridge sees (`--chat-db` is the global option). History is read straight
//! from chat.db in ROWID chunks by one thread per core, printed in order
//! ([`bulk`]); `--follow` then runs the
//! daemon's own reader task (against a throw-away store) so updates, deletes
//! and backfill flags appear exactly as the bridge would send them.
//! Progress goes to stderr, and only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use whatsnap_proto::frame::Body;

use crate::chatdb::{ChatDb, SharedChatDb, bulk};
use crate::config::Paths;
use crate::reader::{Reader, ReaderHealth};
use crate::store::Store;

/// `messages` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print rows with ROWID above N (0 = everything).
    #[arg(long, value_name = "N", conflicts_with = "last")]
    pub since_rowid: Option<i64>,
    /// Print the last N rows (default 20 when neither option is given).
    #[arg(long, value_name = "N")]
    pub last: Option<u64>,
    /// Keep running and print new rows and changes as they happen.
    #[arg(long)]
    pub follow: bool,
}

/// Runs `messages`.
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    let db = ChatDb::open(&paths.chat_db)?;
    let start = match (args.since_rowid, args.last) {
        (Some(rowid), _) => rowid.max(0),
        (None, last) => db
            .rowid_before_last(last.unwrap_or(20))
            .context("cannot find where the last messages start")?,
    };
    let total = db.max_rowid()?.saturating_sub(start);
    drop(db);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let progress = std::io::stderr().is_terminal();
    let result = bulk::read_json(
        &paths.chat_db,
        start,
        bulk::default_workers(),
        |lines, p| {
            out.write_all(lines)?;
            if progress {
                eprint!(
                    "\rread up to ROWID {} ({} events, {total} rows to read)   ",
                    p.cursor, p.events
                );
            }
            Ok(())
        },
    );
    if progress {
        eprintln!();
    }
    let cursor = match result {
        Ok(p) => p.cursor,
        Err(bulk::BulkError::Write(e)) => return broken_pipe_is_fine(e),
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = out.flush() {
        return broken_pipe_is_fine(e);
    }
    if args.follow {
        follow(paths, cursor)?;
    }
    Ok(0)
}

/// Runs the daemon's reader against a temporary store from `cursor` on and
/// prints every event it appends, until Ctrl-C.
fn follow(paths: &Paths, cursor: i64) -> anyhow::Result<()> {
    let dir = tempfile_dir().context("cannot create a temporary folder for --follow")?;
    let store = Store::open(&dir.join("follow.db")).context("cannot create the --follow store")?;
    store.baseline_cursor(cursor)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let (ticks_tx, ticks) = watch::channel(0u64);
        let _watcher = crate::watch::spawn(
            &paths.chat_db,
            crate::watch::POLL_INTERVAL,
            ticks_tx,
            shutdown.clone(),
        );
        let outbox = Arc::new(Notify::new());
        let (health, mut health_rx) = watch::channel(ReaderHealth::default());
        let reader = Reader {
            store: store.clone(),
            chat_db: SharedChatDb::new(paths.chat_db.clone()),
            ticks,
            outbox: outbox.clone(),
            health,
        };
        let task = tokio::spawn(reader.run(shutdown.clone()));
        let mut seen = 0u64;
        let mut line = Vec::new();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                () = outbox.notified() => {}
                r = health_rx.changed() => {
                    if r.is_err() { break }
                    if let Some(e) = health_rx.borrow_and_update().error.clone() {
                        eprintln!("{e}");
                    }
                }
            }
            let s = store.clone();
            let entries = crate::blocking(move || s.outbox_after(seen, 10_000)).await?;
            let mut out = std::io::stdout().lock();
            for entry in entries {
                seen = entry.seq;
                line.clear();
                write_line(&mut line, &entry.body)?;
                if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                    shutdown.cancel();
                    return Ok(());
                }
            }
            let s = store.clone();
            crate::blocking(move || s.ack_events(seen)).await?;
        }
        shutdown.cancel();
        let _ = task.await;
        anyhow::Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("whatsnap-messages-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `{"type":"<frame type>", ...data}` and a newline
/// ([`bulk::write_event_line`]).
pub fn write_line(line: &mut Vec<u8>, body: &Body) -> anyhow::Result<()> {
    bulk::write_event_line(line, body).context("cannot encode an event as JSON")
}

/// `messages | head` closes the pipe early; that is not an error.
fn broken_pipe_is_fine(e: std::io::Error) -> anyhow::Result<u8> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(0)
    } else {
        Err(e).context("cannot write to stdout")
    }
}
