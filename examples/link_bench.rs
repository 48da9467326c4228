//! `cargo run --release --example link_bench -- --events 100000`
//!
//! Durable events through the link on loopback, and the daemon's memory while
//! it drains a backlog: the outbox of a fresh state folder is filled with
//! `--events` inbound texts (as if the Mac had been offline while they
//! arrived), then the real `whatsnap-mac run` process is started against an
//! in-process service, and the time until the service has committed every
//! one is measured, together with the daemon's peak RSS (Linux `VmHWM`).
//! Build the binaries of the same profile first:
//! `cargo build --release -p whatsnap-mac`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use whatsnap_mac::link::pair;
use whatsnap_mac::sim::Simulator;
use whatsnap_mac::store::Store;
use whatsnap_proto::frame::{Body, ChatKind, EventMessage, Handle, HandleKind};
use whatsnap_relay::client::AdminClient;
use whatsnap_relay::{RelayConfig, RelayEvent};

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

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn run(total: usize) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("own path")?;
    let mac_exe = exe
        .parent()
        .and_then(Path::parent)
        .context("examples folder")?
        .join("whatsnap-mac");
    anyhow::ensure!(
        mac_exe.exists(),
        "{} is missing; build it first: cargo build --release -p whatsnap-mac",
        mac_exe.display()
    );
    let dir = tempfile::tempdir().context("tempdir")?;
    let shutdown = CancellationToken::new();
    let relay = whatsnap_relay::start(
        RelayConfig {
            db_path: dir.path().join("relay.db"),
            listen: ([127, 0, 0, 1], 0).into(),
            admin_token: "bench".into(),
            public_url: None,
        },
        shutdown.clone(),
    )
    .await?;
    let mut events = relay.subscribe();
    let admin = AdminClient::new(&relay.base_url(), Some("bench".into()));
    let created = admin.create_account("Bench").await?;
    let creds = pair::pair(
        &reqwest::Client::new(),
        &relay.base_url(),
        &created.pairing.code,
        pair::device_info(),
    )
    .await?;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home)?;
    pair::save(&home.join("credentials.json"), &creds)?;
    let messages = dir.path().join("Messages");
    std::fs::create_dir_all(&messages)?;
    let chat_db = messages.join("chat.db");
    Simulator::create(&chat_db)?;

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

    let started = Instant::now();
    let mut child = tokio::process::Command::new(&mac_exe)
        .arg("run")
        .arg("--home")
        .arg(&home)
        .arg("--chat-db")
        .arg(&chat_db)
        .arg("--osascript")
        .arg("/bin/false")
        .env("WHATSNAP_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start the daemon")?;
    let pid = child.id().context("daemon pid")?;
    let mut received = 0usize;
    let mut first = None;
    let mut peak = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while received < total {
        tokio::select! {
            e = events.recv() => match e {
                Ok(RelayEvent::MessageReceived { .. }) => {
                    received += 1;
                    first.get_or_insert_with(Instant::now);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    anyhow::bail!("the benchmark fell {n} events behind the service's bus");
                }
                Err(e) => anyhow::bail!("event bus: {e}"),
            },
            _ = tick.tick() => {
                peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
                anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "no progress in 30 min");
            }
        }
    }
    let drained = started.elapsed();
    let streaming = first.map_or(drained, |f| f.elapsed());
    peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
    let _ = child.kill().await;
    shutdown.cancel();
    relay.wait().await;
    println!(
        "link_bench: {total} durable events drained in {:.2} s from daemon start \
         ({:.0} events/s while streaming, {:.0} events/s overall); daemon peak RSS {:.1} MiB",
        drained.as_secs_f64(),
        total as f64 / streaming.as_secs_f64(),
        total as f64 / drained.as_secs_f64(),
        peak as f64 / 1024.0
    );
    Ok(())
}
