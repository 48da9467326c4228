//! The `whatsnap-mac` command: parse, set up, dispatch. Logic lives in the library.
//!
//! Exit codes: 0 success; 1 the operation ran and failed (pairing refused, a
//! send not sent); 2 a usage, configuration or environment error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use whatsnap_mac::config::Paths;
use whatsnap_mac::daemon::{self, DaemonOptions};
use whatsnap_mac::link::pair;

#[derive(Debug, Parser)]
#[command(
    name = "whatsnap-mac",
    version,
    about = "The SMS/iMessage account of WhatSnap, on your own Mac",
    after_help = "Exit codes: 0 success, 1 the operation failed, 2 usage or environment error."
)]
struct Cli {
    /// State folder (default: ~/Library/Application Support/whatsnap).
    #[arg(long, global = true, env = "WHATSNAP_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// The Messages database to read (default: ~/Library/Messages/chat.db).
    #[arg(long, global = true, env = "WHATSNAP_CHAT_DB", value_name = "PATH")]
    chat_db: Option<PathBuf>,
    /// The AppleScript runner (default: /usr/bin/osascript).
    #[arg(long, global = true, env = "WHATSNAP_OSASCRIPT", value_name = "PATH")]
    osascript: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the bridge (what launchd starts).
    Run {
        /// Seconds between safety polls of chat.db.
        #[arg(long, default_value_t = 2)]
        poll_secs: u64,
        /// Seconds an osascript run may take.
        #[arg(long, default_value_t = 30)]
        osascript_timeout_secs: u64,
    },
    /// Pair this Mac with a WhatSnap account, once.
    Pair {
        /// The account service, e.g. https://whatsnap.example.com.
        #[arg(long, env = "WHATSNAP_SERVER")]
        server: String,
        /// The pairing code shown by the service (XXXX-XXXX).
        code: String,
    },
    /// Run the whole system on this machine: service, simulated Messages,
    /// daemon, and a scripted conversation.
    Demo {
        /// Exit after the scripted conversation instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Messages simulator tools (for tests and the demo).
    #[command(subcommand, hide = true)]
    Sim(whatsnap_mac::sim::cli::SimCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest and tungstenite use rustls with no default provider: pick ring
    // before any client exists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let default_level = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHATSNAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("whatsnap-mac: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let paths = Paths::resolve(cli.home, cli.chat_db, cli.osascript);
    match cli.command {
        Command::Run {
            poll_secs,
            osascript_timeout_secs,
        } => {
            let options = DaemonOptions {
                paths,
                poll: Duration::from_secs(poll_secs.max(1)),
                osascript_timeout: Duration::from_secs(osascript_timeout_secs.max(1)),
            };
            runtime()?.block_on(daemon::run(options))?;
            Ok(0)
        }
        Command::Pair { server, code } => runtime()?.block_on(pair_command(&paths, &server, &code)),
        Command::Demo { once } => {
            let exe = std::env::current_exe().context("cannot find this program's own path")?;
            runtime()?.block_on(whatsnap_mac::demo::run(&exe, once))?;
            Ok(0)
        }
        Command::Sim(cmd) => {
            let code = whatsnap_mac::sim::cli::run(cmd)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}

async fn pair_command(paths: &Paths, server: &str, code: &str) -> anyhow::Result<u8> {
    whatsnap_mac::config::ensure_home(&paths.home)
        .with_context(|| format!("cannot create the state folder {}", paths.home.display()))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTPS client")?;
    match pair::pair(&client, server, code, pair::device_info()).await {
        Ok(creds) => {
            pair::save(&paths.credentials(), &creds)?;
            println!(
                "Paired with {} as account {} (tag {}).",
                creds.server, creds.account_name, creds.account_tag
            );
            println!("Start the bridge with `whatsnap-mac run` (or `whatsnap-mac install` once it ships).");
            Ok(0)
        }
        Err(e @ pair::PairError::Refused { .. }) => {
            eprintln!("whatsnap-mac: {e}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}
