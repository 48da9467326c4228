//! `whatsnap-mac run`: the daemon, as launchd starts it.

use std::time::Duration;

use crate::config::Paths;
use crate::daemon::{self, DaemonOptions};

/// `run` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds between safety polls of chat.db.
    #[arg(long, default_value_t = 2)]
    pub poll_secs: u64,
    /// Seconds an osascript run may take.
    #[arg(long, default_value_t = 30)]
    pub osascript_timeout_secs: u64,
    /// Ceiling of the reconnect delay in ms (protocol: 60000). Only for test
    /// harnesses that restart the service many times a minute.
    #[arg(long, default_value_t = 60_000, hide = true)]
    pub backoff_cap_ms: u64,
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub fn run(args: &Args, paths: Paths) -> anyhow::Result<u8> {
    let options = DaemonOptions {
        paths,
        poll: Duration::from_secs(args.poll_secs.max(1)),
        osascript_timeout: Duration::from_secs(args.osascript_timeout_secs.max(1)),
        backoff_cap: Duration::from_millis(args.backoff_cap_ms.clamp(250, 60_000)),
    };
    super::runtime()?.block_on(daemon::run(options))?;
    Ok(0)
}
