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

use crate::chatdb::{ChatDb, SharedChatDb, bulk, typedstream};

/// Reads every row after ROWID 0 into event JSON (to a sink), as `messages
/// --since-rowid 0` does, and times it against [`ChatDb::bare_scan`] of the
/// same columns in the same run; prints both, their ratio, and the same read
/// on one worker thread.
pub fn read(path: &Path) -> anyhow::Result<()> {
    let db = ChatDb::open_for_bulk(path)?;
    // Warm the page cache so neither side pays for the first disk read.
    db.bare_scan(0)?;
    let (t, cpu) = (Instant::now(), cpu_time());
    let (bare_rows, bytes) = db.bare_scan(0)?;
    let (bare, bare_cpu) = (t.elapsed(), since(cpu));
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "bare scan (1 thread, message + chat_message_join): {bare_rows} rows, {:.0} MB in {:.2} s{} = {:.0} rows/s",
        bytes as f64 / 1e6,
        bare.as_secs_f64(),
        cpu_note(bare_cpu),
        rate(bare_rows, bare)
    );
    let workers = bulk::default_workers();
    for w in [workers, 1] {
        let (t, cpu) = (Instant::now(), cpu_time());
        let mut sink = 0usize;
        let p = bulk::read_json(path, 0, w, |lines, _| {
            sink += std::hint::black_box(lines).len();
            Ok(())
        })?;
        let (full, full_cpu) = (t.elapsed(), since(cpu));
        println!(
            "events ({w} worker{}): {} rows -> {} events, {:.0} MB JSON in {:.2} s{} = {:.0} rows/s, {:.2}x the bare scan's time",
            if w == 1 { "" } else { "s" },
            p.rows,
            p.events,
            sink as f64 / 1e6,
            full.as_secs_f64(),
            cpu_note(full_cpu),
            rate(p.rows, full),
            full.as_secs_f64() / bare.as_secs_f64()
        );
    }
    Ok(())
}

/// CPU time this process has used (user + system), where the system says
/// (Linux `/proc`); the benchmark machine is shared, so CPU time tells the
/// cost apart from waiting for a core.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th, in clock ticks (100 per second).
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ').skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
}

fn since(start: Option<Duration>) -> Option<Duration> {
    Some(cpu_time()?.saturating_sub(start?))
}

fn cpu_note(cpu: Option<Duration>) -> String {
    cpu.map(|c| format!(" ({:.2} s CPU)", c.as_secs_f64()))
        .unwrap_or_default()
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
/// database while the daemon's watcher and reader run, and reports two
/// latencies from each simulator commit: to the reader having produced its
/// event ([`crate::reader::probe`], before the store commit), and to the
/// event being durably in the store (the store's `fsync` included).
pub fn wakeup(dir: &Path, messages: u32, rate: u32) -> anyhow::Result<()> {
    use std::collections::HashMap;

    use crate::reader::{Reader, ReaderHealth, Tracker, probe};
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
    let (read_tx, read_rx) = std::sync::mpsc::channel::<(String, Instant)>();
    let (committed, stored) = rt.block_on(async {
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
        probe::install(read_tx);
        let task = tokio::spawn(reader.run(shutdown.clone()));
        let writer = std::thread::spawn(move || -> anyhow::Result<HashMap<String, Instant>> {
            let period = Duration::from_secs_f64(1.0 / f64::from(rate));
            let mut committed = HashMap::with_capacity(messages as usize);
            let start = Instant::now();
            for i in 0..messages {
                let due = start + period * i;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let m = sim.receive("+15551230001", &format!("message {i}"))?;
                committed.insert(m.guid, Instant::now());
                // Messages checkpoints as it goes (SQLite's default is every
                // 1,000 WAL pages); without it the WAL grows by ~100 KB per
                // message on this schema's indexes.
                if i % 200 == 199 {
                    sim.conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
                }
            }
            Ok(committed)
        });
        let mut stored: HashMap<String, Instant> = HashMap::with_capacity(messages as usize);
        let mut seen = 0u64;
        while stored.len() < messages as usize {
            tokio::select! {
                () = outbox.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(5)) => {
                    anyhow::bail!("no event for 5 s (reader: {:?})", health_rx.borrow().error)
                }
            }
            let now = Instant::now();
            let s = store.clone();
            let entries = crate::blocking(move || s.outbox_after(seen, 100_000)).await?;
            for e in entries {
                seen = e.seq;
                if let whatsnap_proto::frame::Body::EventMessage(m) = e.body {
                    stored.insert(m.guid, now);
                }
            }
        }
        shutdown.cancel();
        let _ = task.await;
        probe::clear();
        let committed = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        anyhow::Ok((committed, stored))
    })?;
    let mut read: HashMap<String, Instant> = HashMap::new();
    for (guid, at) in read_rx.try_iter() {
        read.entry(guid).or_insert(at);
    }
    // The event can be read before the writer thread takes its timestamp
    // (it is preempted between the commit and `Instant::now()`): count 0.
    let latencies = |to: &HashMap<String, Instant>| -> anyhow::Result<Vec<Duration>> {
        let mut l = committed
            .iter()
            .map(|(guid, at)| {
                to.get(guid)
                    .map(|t| t.saturating_duration_since(*at))
                    .with_context(|| format!("message {guid} was committed but never seen"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        l.sort();
        Ok(l)
    };
    let report = |what: &str, l: &[Duration]| {
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
        println!(
            "{} messages at {rate}/s: commit -> {what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.len(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            pct(1.0).as_secs_f64() * 1e3
        );
    };
    report("event read", &latencies(&read)?);
    report("event stored", &latencies(&stored)?);
    Ok(())
}
