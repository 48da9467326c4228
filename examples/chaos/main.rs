//! `cargo run --release --example chaos -- --messages 100000 --sends 2000 --kills 200`
//!
//! The long chaos run (see `harness.rs`): real daemon and service processes,
//! killed with SIGKILL at seeded random instants while texts arrive and sends
//! go out; exits 1 with the seed and every violation if anything was lost or
//! doubled. Build the binaries of the same profile first:
//! `cargo build --release -p whatsnap-mac -p whatsnap-relay`.

mod harness;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Chaos run of the whole WhatSnap link.
#[derive(Parser)]
struct Args {
    /// Inbound texts.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Sends through `POST /v1/messages`.
    #[arg(long, default_value_t = 2000)]
    sends: usize,
    /// SIGKILLs of each process (the daemon and the service).
    #[arg(long, default_value_t = 30)]
    kills: usize,
    /// Seed (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Milliseconds between two operations of the load.
    #[arg(long, default_value_t = 2)]
    pace_ms: u64,
    /// Seconds the system may take to settle after the load.
    #[arg(long, default_value_t = 900)]
    settle_secs: u64,
    /// Keep the scratch folder here (default: a temporary one, kept on failure).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    // target/<profile>/examples/chaos → target/<profile>/
    let bin_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .context("unexpected location of the chaos example")?;
    let mac_exe = harness::sibling(&bin_dir.join("x"), "whatsnap-mac");
    let relay_exe = harness::sibling(&bin_dir.join("x"), "whatsnap-relay");
    for exe in [&mac_exe, &relay_exe] {
        anyhow::ensure!(
            exe.exists(),
            "{} is missing; build the binaries first: cargo build --release -p whatsnap-mac -p whatsnap-relay",
            exe.display()
        );
    }
    let temp = tempfile::tempdir().context("temporary folder")?;
    let dir = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let config = harness::Config {
        seed,
        messages: args.messages,
        sends: args.sends,
        daemon_kills: args.kills,
        relay_kills: args.kills,
        mac_exe,
        relay_exe,
        dir,
        pace: Duration::from_millis(args.pace_ms),
        settle: Duration::from_secs(args.settle_secs),
    };
    eprintln!(
        "chaos: seed {seed}, {} texts, {} sends, {} kills of each process",
        args.messages, args.sends, args.kills
    );
    match harness::run(&config).await {
        Ok(report) => {
            println!("{report}");
            Ok(())
        }
        Err(e) => {
            // Keep the logs of a failed run.
            let kept = temp.keep();
            Err(e.context(format!("scratch kept in {}", kept.display())))
        }
    }
}
