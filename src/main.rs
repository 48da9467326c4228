//! The `whatsnap-mac` command: parse, set up, dispatch. Logic lives in the
//! library (`whatsnap_mac::cli`).

use std::process::ExitCode;

use clap::Parser;
use whatsnap_mac::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest and tungstenite use rustls with no default provider: pick ring
    // before any client exists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHATSNAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.default_log_level()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("whatsnap-mac: {err:#}");
            ExitCode::from(2)
        }
    }
}
