//! `cargo run --release --example idle_bench -- --seconds 60`
//!
//! What the daemon costs while nothing happens, the state a bridge spends
//! nearly all its life in: the real `whatsnap-mac run` process, paired with
//! an in-process service on loopback and connected (pings, status frames),
//! watching a simulated chat.db that holds `--history` messages. Once the
//! service shows the account Active, the daemon is left to settle, then its
//! CPU time is taken over `--seconds` and its memory at the end (Linux
//! `/proc`: resident, anonymous, file-backed, peak). Build the binaries of
//! the same profile first: `cargo build --release -p whatsnap-mac`.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use whatsnap_mac::sim::Simulator;
use whatsnap_proto::api::AccountState;

#[path = "support/procfs.rs"]
mod procfs;
#[path = "support/stand.rs"]
mod stand;
use procfs::{cpu_seconds, load_average, status_kib};
use stand::Stand;

/// The idle daemon's CPU and memory.
#[derive(Parser)]
struct Args {
    /// Seconds to measure CPU over.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds to let the daemon settle after it is Active.
    #[arg(long, default_value_t = 8)]
    settle: u64,
    /// Messages in chat.db before the daemon starts.
    #[arg(long, default_value_t = 2000)]
    history: u32,
    /// The daemon binary (default: the `whatsnap-mac` beside this example).
    #[arg(long)]
    mac: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("tempdir")?;
    let stand = Stand::start(dir.path(), args.mac.clone()).await?;
    let mut sim = Simulator::open(&stand.chat_db)?;
    for i in 0..args.history {
        sim.receive(&format!("+1555{:07}", i % 300), &format!("history {i}"))?;
    }
    // Messages checkpoints now and then; without it the WAL (and the shared
    // memory index every reader maps) would hold the whole history.
    sim.checkpoint()?;
    drop(sim);
    let mut child = stand.daemon()?;
    let pid = child.id().context("daemon pid")?;
    let started = Instant::now();
    loop {
        let accounts = stand.admin.list_accounts().await?;
        if accounts.iter().any(|a| a.status == AccountState::Active) {
            break;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the daemon exited before it was Active: {status}");
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the account is not Active after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let active = started.elapsed();
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let pid_s = pid.to_string();
    let cpu_before = cpu_seconds(&pid_s).context("daemon CPU time")?;
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let cpu = cpu_seconds(&pid_s).context("daemon CPU time")? - cpu_before;
    let kib = |field: &str| status_kib(pid, field).map_or(f64::NAN, |k| k as f64);
    let (rss, anon, file, peak) = (kib("VmRSS"), kib("RssAnon"), kib("RssFile"), kib("VmHWM"));
    let _ = child.kill().await;
    stand.stop().await;
    println!(
        "idle_bench: daemon Active {:.1} s after start; over {} s after a {} s settle: \
         CPU {:.3} s ({:.3} % of a core); RSS {:.1} MB = {:.1} MiB \
         (anonymous {:.1} MB, file-backed {:.1} MB), peak {:.1} MB (load average {})",
        active.as_secs_f64(),
        args.seconds,
        args.settle,
        cpu,
        cpu * 100.0 / args.seconds as f64,
        rss * 1.024 / 1000.0,
        rss / 1024.0,
        anon * 1.024 / 1000.0,
        file * 1.024 / 1000.0,
        peak * 1.024 / 1000.0,
        load_average(),
    );
    Ok(())
}
