//! A short seeded chaos run in the test suite: the real daemon and service
//! processes are `kill -9`ed at random instants while texts arrive and sends
//! go out; nothing may be lost or doubled. The long run is
//! `cargo run --release --example chaos` (figures in docs/benchmarks.md).
//! Replay a failure with `WHATSNAP_CHAOS_SEED=<seed>`.

#[path = "../examples/chaos/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");

/// The service binary. `cargo test --workspace` builds it (the relay's own
/// tests need it); a narrower `cargo test` gets it built here.
fn relay_exe() -> PathBuf {
    let exe = harness::sibling(std::path::Path::new(EXE), "whatsnap-relay");
    if !exe.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "whatsnap-relay", "--bin", "whatsnap-relay"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building whatsnap-relay failed");
    }
    exe
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_daemon_and_service_at_random_instants_loses_and_doubles_nothing() {
    let seed = std::env::var("WHATSNAP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("chaos seed {seed} (replay with WHATSNAP_CHAOS_SEED={seed})");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = harness::Config {
        seed,
        messages: 300,
        sends: 40,
        daemon_kills: 4,
        relay_kills: 4,
        mac_exe: PathBuf::from(EXE),
        relay_exe: relay_exe(),
        dir: dir.path().to_owned(),
        pace: Duration::from_millis(5),
        settle: Duration::from_secs(90),
    };
    match harness::run(&config).await {
        Ok(report) => {
            eprintln!("{report}");
            assert_eq!(report.inbound, 300);
            assert_eq!(report.sent + report.unknown + report.other, 40);
            assert_eq!((report.daemon_kills, report.relay_kills), (4, 4));
        }
        Err(e) => {
            let kept = dir.keep();
            panic!(
                "{e:#}\n(replay with WHATSNAP_CHAOS_SEED={seed}; scratch kept in {})",
                kept.display()
            );
        }
    }
}
