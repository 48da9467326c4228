//! Benchmarks of the chat.db reader, run as hidden `sim bench-*` commands
//! (long measurements are commands, not tests). Figures and the commands that
//! produced them are in `docs/benchmarks.md`, section "chat.db reader".
//!
//! - [`read`]: events per second reading a whole database, against a bare
//!   scan of the same SELECT in the same run.
//! - [`decode`]: typedstream body decoding throughput.
//! - [`wakeup`]: latency from a simulator commit to the reader having
//!   appended its event, with the real watcher and store.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::chatdb::{ChatDb, SharedChatDb, typedstream};

/// Reads every row after ROWID 0 into event JSON (to a sink) and times it
/// against [`ChatDb::bare_scan`]; prints both and their ratio.
pub fn read(path: &Path) -> anyhow::Result<()> {
    let db = ChatDb::open(path)?;
    // Warm the page cache so neither side pays for the first disk read.
    db.bare_scan(0)?;
    let t = Instant::now();
    let (bare_rows, bytes) = db.bare_scan(0)?;
    let bare = t.elapsed();
    let t = Instant::now();
    let mut cursor = 0;
    let mut rows = 0u64;
    let mut events = 0u64;
    let mut line = Vec::new();
    let mut sink = 0usize;
    loop {
        let batch = db.read_after(cursor, 5_000)?;
        let Some(last) = batch.last() else { break };
        cursor = last.rowid;
        rows += batch.len() as u64;
        for row in batch {
            if let Some(body) = row.into_body(None) {
                line.clear();
                crate::cli::messages::write_line(&mut line, &body)?;
                sink += line.len();
                events += 1;
            }
        }
    }
    let full = t.elapsed();
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "bare scan: {bare_rows} rows, {:.0} MB in {:.2} s = {:.0} rows/s",
        bytes as f64 / 1e6,
        bare.as_secs_f64(),
        rate(bare_rows, bare)
    );
    println!(
        "events:    {rows} rows -> {events} events, {:.0} MB JSON in {:.2} s = {:.0} rows/s",
        sink as f64 / 1e6,
        full.as_secs_f64(),
        rate(rows, full)
    );
    println!(
        "ratio events/bare time: {:.2}x",
        full.as_secs_f64() / bare.as_secs_f64()
    );
    Ok(())
}

/// Decodes up to `limit` bodies from the database `rounds` times.
pub fn decode(path: &Path, limit: usize, rounds: u32) -> anyhow::Result<()> {
    let bodies = ChatDb::open(path)?.bodies(limit)?;
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    let t = Instant::now();
    let mut chars = 0usize;
    for _ in 0..rounds {
        for b in &bodies {
            chars += typedstream::decode_body(b).map_or(0, |d| d.text.len());
        }
    }
    let d = t.elapsed();
    println!(
        "decoded {} bodies x {rounds} ({:.1} MB of bodies, {:.0} MB of text) in {:.2} s = {:.0} MB/s, {:.0} bodies/s",
        bodies.len(),
        bytes as f64 * f64::from(rounds) / 1e6,
        chars as f64 / 1e6,
        d.as_secs_f64(),
        bytes as f64 * f64::from(rounds) / 1e6 / d.as_secs_f64(),
        bodies.len() as f64 * f64::from(rounds) / d.as_secs_f64()
    );
    Ok(())
}

/// Writes `messages` incoming messages at `rate` per second into a fresh
/// database while the daemon's watcher and reader run, and reports the
/// latency from each commit to its event being in the store.
pub fn wakeup(dir: &Path, messages: u32, rate: u32) -> anyhow::Result<()> {
    use crate::reader::{Reader, ReaderHealth, Tracker};
    use crate::sim::Simulator;
    use crate::store::Store;
    use tokio::sync::{Notify, watch};

    let path = dir.join("chat.db");
    let mut sim = Simulator::create(&path)?;
    let store = Store::open(&dir.join("state.db"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("runtime")?;
    let latencies = rt.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (ticks_tx, ticks) = watch::channel(0u64);
        let _w = crate::watch::spawn(
            &path,
            crate::watch::POLL_INTERVAL,
            ticks_tx,
            shutdown.clone(),
        );
        let outbox = Arc::new(Notify::new());
        let (health, health_rx) = watch::channel(ReaderHealth::default());
        let reader = Reader {
            store: store.clone(),
            chat_db: SharedChatDb::new(path.clone()),
            ticks,
            outbox: outbox.clone(),
            health,
        };
        // Baseline before writing.
        reader.scan(&mut Tracker::default()).await?;
        let task = tokio::spawn(reader.run(shutdown.clone()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
        let writer = std::thread::spawn(move || -> anyhow::Result<()> {
            let period = Duration::from_secs_f64(1.0 / f64::from(rate));
            let start = Instant::now();
            for i in 0..messages {
                let due = start + period * i;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let m = sim.receive("+15551230001", &format!("message {i}"))?;
                // Messages checkpoints as it goes (SQLite's default is every
                // 1,000 WAL pages); without it the WAL grows by ~100 KB per
                // message on this schema's indexes.
                if i % 200 == 199 {
                    sim.conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
                }
                let _ = tx.send((m.guid, Instant::now()));
            }
            Ok(())
        });
        let mut committed = std::collections::HashMap::new();
        let mut arrived: std::collections::HashMap<String, Instant> =
            std::collections::HashMap::new();
        let mut latencies = Vec::with_capacity(messages as usize);
        let mut seen = 0u64;
        while latencies.len() < messages as usize {
            tokio::select! {
                () = outbox.notified() => {}
                Some((guid, at)) = rx.recv() => {
                    // The event may be read before the writer thread reports
                    // its commit time.
                    match arrived.remove(&guid) {
                        Some(seen_at) => latencies.push(seen_at.saturating_duration_since(at)),
                        None => { committed.insert(guid, at); }
                    }
                    continue;
                }
                () = tokio::time::sleep(Duration::from_secs(5)) => {
                    anyhow::bail!("no event for 5 s (reader: {:?})", health_rx.borrow().error)
                }
            }
            let now = Instant::now();
            while let Ok((guid, at)) = rx.try_recv() {
                match arrived.remove(&guid) {
                    Some(seen_at) => latencies.push(seen_at.saturating_duration_since(at)),
                    None => {
                        committed.insert(guid, at);
                    }
                }
            }
            let s = store.clone();
            let entries = crate::blocking(move || s.outbox_after(seen, 100_000)).await?;
            for e in entries {
                seen = e.seq;
                if let whatsnap_proto::frame::Body::EventMessage(m) = e.body {
                    match committed.remove(&m.guid) {
                        Some(at) => latencies.push(now.saturating_duration_since(at)),
                        None => {
                            arrived.insert(m.guid, now);
                        }
                    }
                }
            }
        }
        shutdown.cancel();
        let _ = task.await;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        anyhow::Ok(latencies)
    })?;
    let mut l = latencies;
    l.sort();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    println!(
        "{} messages at {rate}/s: wake-up latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3
    );
    Ok(())
}
