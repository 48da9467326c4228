//! `cargo run --release --example link_bench -- --events 100000`
//!
//! Durable events through the link on loopback, and the daemon's memory while
//! it drains a backlog: the outbox of a fresh state folder is filled with
//! `--events` inbound texts (as if the Mac had been offline while they
//! arrived), then the real `whatsnap-mac run` process is started against an
//! in-process service, and the time until the service has committed every
//! one is measured, together with the daemon's peak RSS (Linux `VmHWM`) and
//! the CPU time each side spent per event (the service's is this process's,
//! it runs in it). CPU per event is the figure to compare across runs on a
//! busy machine, where the rate depends on what else runs. Build the
//! binaries of the same profile first:
//! `cargo build --release -p whatsnap-mac`.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use whatsnap_mac::store::Store;
use whatsnap_proto::frame::{Body, ChatKind, EventMessage, Handle, HandleKind};

#[path = "support/procfs.rs"]
mod procfs;
#[path = "support/stand.rs"]
mod stand;
use procfs::{cpu_seconds, load_average};
use stand::Stand;

/// Link throughput and backlog drain.
#[derive(Parser)]
struct Args {
    /// Events in the backlog.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?
        .block_on(run(args.events))
}

fn event(n: usize) -> (String, Body) {
    let guid = format!("BENCH-{n:08}");
    let handle = format!("+1555{:07}", n % 1000);
    let body = Body::EventMessage(EventMessage {
        event_key: whatsnap_proto::message_event_key(&guid),
        guid,
        rowid: i64::try_from(n).unwrap_or(i64::MAX),
        chat_guid: format!("iMessage;-;{handle}"),
        chat_kind: ChatKind::Direct,
        group_name: None,
        participants: vec![],
        service: "iMessage".into(),
        from_me: false,
        sender: Some(Handle {
            handle,
            kind: HandleKind::Phone,
        }),
        recipients: vec![],
        text: format!("backlog text number {n}, about as long as a real one"),
        subject: None,
        reply_to_guid: None,
        thread_originator_guid: None,
        date_ms: 1_764_000_000_000,
        attachments: vec![],
        origin: None,
        backfill: false,
        backfill_request_id: None,
        suspected_echo: false,
        truncated: false,
    });
    (
        whatsnap_proto::message_event_key(&format!("BENCH-{n:08}")),
        body,
    )
}

/// CPU time (user + system) of process `pid` (`"self"` for this one), from
/// `/proc/<pid>/stat`, in seconds (Linux clock ticks of 1/100 s).
/// The service's committed mark for the (only) device, read from its
/// database the way any other reader would (WAL allows it alongside).
fn committed(conn: &rusqlite::Connection) -> anyhow::Result<usize> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(MAX(events_committed), 0) FROM devices",
        [],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
}

async fn run(total: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let stand = Stand::start(dir.path(), None).await?;
    let home = stand.home.clone();

    // The backlog, written as the reader would have (cursor set so the
    // reader has nothing of its own to add).
    let fill = Instant::now();
    let store = Store::open(&home.join("state.db"))?;
    for start in (0..total).step_by(5000) {
        let batch: Vec<_> = (start..(start + 5000).min(total)).map(event).collect();
        store.append_events(0, batch)?;
    }
    drop(store);
    eprintln!(
        "link_bench: {total} events in the outbox ({:.1} s)",
        fill.elapsed().as_secs_f64()
    );

    let relay_db = rusqlite::Connection::open_with_flags(
        dir.path().join("relay.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .context("open the service database to watch it")?;
    let own_cpu_before = cpu_seconds("self").unwrap_or(0.0);
    let started = Instant::now();
    let mut child = stand.daemon()?;
    let pid = child.id().context("daemon pid")?;
    // Done when the service has committed every event: its high-water
    // mark, not the bus (a slow bus reader may lag behind; the mark cannot).
    let mut first = None;
    let mut peak = 0;
    let mut daemon_cpu = 0.0;
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    loop {
        tick.tick().await;
        // A one-row read; block_in_place keeps it off the async workers' turn.
        let done = tokio::task::block_in_place(|| committed(&relay_db))?;
        if done > 0 {
            first.get_or_insert_with(Instant::now);
        }
        peak = peak.max(procfs::status_kib(pid, "VmHWM").unwrap_or(0));
        daemon_cpu = cpu_seconds(&pid.to_string()).unwrap_or(daemon_cpu);
        if done >= total {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "no progress in 30 min"
        );
    }
    let drained = started.elapsed();
    let streaming = first.map_or(drained, |f| f.elapsed());
    peak = peak.max(procfs::status_kib(pid, "VmHWM").unwrap_or(0));
    let service_cpu = cpu_seconds("self").unwrap_or(0.0) - own_cpu_before;
    let _ = child.kill().await;
    stand.stop().await;
    println!(
        "link_bench: {total} durable events drained in {:.2} s from daemon start \
         ({:.0} events/s while streaming, {:.0} events/s overall); daemon peak RSS {:.1} MiB; \
         CPU per event: service {:.1} µs, daemon {:.1} µs (load average {})",
        drained.as_secs_f64(),
        total as f64 / streaming.as_secs_f64(),
        total as f64 / drained.as_secs_f64(),
        peak as f64 / 1024.0,
        service_cpu * 1e6 / total as f64,
        daemon_cpu * 1e6 / total as f64,
        load_average(),
    );
    Ok(())
}
