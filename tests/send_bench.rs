//! Benchmark of the send path's own overhead (figures in
//! `docs/benchmarks.md`, section "Sending"): from a `cmd.send` handed to the
//! store to osascript spawned (both ways a command is accepted: queued, and
//! at once through the link's `Admission`), and from osascript's exit (the fake has
//! committed the confirming row by then) to `send.result` committed in the
//! outbox, with the fake osascript answering at once; and sends per second
//! through the whole path. It runs a few sends in every test run so it cannot
//! rot; for figures:
//!
//! ```text
//! SEND_BENCH_N=500 cargo test --release --test send_bench -- --nocapture
//! SEND_BENCH_DIR=/dev/shm SEND_BENCH_N=500 cargo test --release --test send_bench -- --nocapture
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use whatsnap_mac::chatdb::SharedChatDb;
use whatsnap_mac::send::runner::Runner;
use whatsnap_mac::send::{MacosProbe, SendSettings, Sender, scripts::MacosVersion};
use whatsnap_mac::sim::Simulator;
use whatsnap_mac::sim::fake_osascript;
use whatsnap_mac::store::Store;
use whatsnap_proto::frame::{CmdSend, SendState, SendTo, ServicePref};

const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");

fn cmd(id: &str) -> CmdSend {
    CmdSend {
        client_msg_id: id.into(),
        to: Some(SendTo {
            handle: "+15551234567".into(),
        }),
        chat_guid: None,
        text: format!("benchmark {id}"),
        attachments: vec![],
        service_pref: ServicePref::Auto,
        reply_to_guid: None,
        expires_at_ms: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_path_overhead_and_throughput() {
    let n: usize = std::env::var("SEND_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // SEND_BENCH_DIR puts the state and chat.db elsewhere (e.g. /dev/shm to
    // take the disk's fsync out of the figures).
    let dir = match std::env::var_os("SEND_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .expect("tempdir");
    let messages = dir.path().join("Messages");
    std::fs::create_dir(&messages).expect("Messages");
    let chat_db = messages.join("chat.db");
    Simulator::create(&chat_db).expect("chat.db");
    let osascript =
        fake_osascript::write_wrapper(dir.path(), Path::new(EXE), &chat_db).expect("wrapper");
    let store = Store::open(&dir.path().join("state.db")).expect("store");
    store.adopt_commands_epoch("E").expect("epoch");
    let wake = Arc::new(Notify::new());
    let outbox = Arc::new(Notify::new());
    let (_ticks, db_changed) = watch::channel(0u64);
    let (_settings, settings) = watch::channel(SendSettings {
        max_sends_per_hour: 100_000,
        max_new_handles_per_hour: 100_000,
        ..SendSettings::default()
    });
    let (tx, mut timings) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let worker = Sender {
        store: store.clone(),
        chat_db: SharedChatDb::new(chat_db.clone()),
        runner: Runner::new(osascript, Duration::from_secs(30)),
        wake: wake.clone(),
        db_changed,
        outbox: outbox.clone(),
    }
    .with_settings(settings)
    .with_probe(MacosProbe::Fixed(MacosVersion::parse("15.3").expect("v")))
    .with_timings(tx);
    let admission = worker.admission();
    let worker = tokio::spawn(worker.run(shutdown.clone()));

    // Latency: one command at a time, as the service's window of 3 sends
    // mostly delivers them, to an idle worker. Alternately through the two
    // ways a command is accepted, so both see the same machine load:
    // queued (`accept_command`, then the worker's `dispatching` commit: two
    // fsyncs before osascript) and at once (the link's `Admission`: one).
    let mut to_spawn_queued = Vec::new();
    let mut to_spawn_at_once = Vec::new();
    let mut to_result = Vec::new();
    let mut seq = 0;
    for i in 0..2 * n {
        seq += 1;
        let id = format!("lat{i}");
        admission.until_idle().await;
        let received = Instant::now();
        if i % 2 == 0 {
            store.accept_command(seq, Some(&cmd(&id))).expect("accept");
            wake.notify_one();
        } else {
            admission.accept(seq, Some(cmd(&id))).await.expect("accept");
        }
        let t = timings.recv().await.expect("timing");
        let spawned = t.spawned.into_std() - received;
        if i % 2 == 0 {
            to_spawn_queued.push(spawned);
        } else {
            to_spawn_at_once.push(spawned);
        }
        to_result.push(t.finished.into_std() - t.exited.into_std());
        let r = store
            .send_record(&t.client_msg_id)
            .expect("read")
            .and_then(|r| r.result)
            .expect("result");
        assert_eq!(r.state, SendState::Sent);
    }
    // Throughput: a burst of n commands through the whole path.
    let started = Instant::now();
    for i in 0..n {
        seq += 1;
        admission
            .accept(seq, Some(cmd(&format!("tp{i}"))))
            .await
            .expect("accept");
    }
    for _ in 0..n {
        timings.recv().await.expect("timing");
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    // Stopped before the runtime is, so no store call is cut off.
    let _ = worker.await;
    let _ = outbox;
    to_spawn_queued.sort_unstable();
    to_spawn_at_once.sort_unstable();
    to_result.sort_unstable();
    println!(
        "send bench, {n}+{n} sends: cmd.send -> osascript spawned: at once p50 {:.2} ms p99 {:.2} ms, \
         queued p50 {:.2} ms p99 {:.2} ms; row committed (osascript exit) -> send.result committed \
         p50 {:.2} ms p99 {:.2} ms; throughput {:.1} sends/s",
        ms(percentile(&to_spawn_at_once, 0.5)),
        ms(percentile(&to_spawn_at_once, 0.99)),
        ms(percentile(&to_spawn_queued, 0.5)),
        ms(percentile(&to_spawn_queued, 0.99)),
        ms(percentile(&to_result, 0.5)),
        ms(percentile(&to_result, 0.99)),
        n as f64 / elapsed.as_secs_f64()
    );
}
