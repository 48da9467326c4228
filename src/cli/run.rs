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
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub fn run(args: &Args, paths: Paths) -> anyhow::Result<u8> {
    let options = DaemonOptions {
        paths,
        poll: Duration::from_secs(args.poll_secs.max(1)),
        osascript_timeout: Duration::from_secs(args.osascript_timeout_secs.max(1)),
    };
    super::runtime()?.block_on(daemon::run(options))?;
    Ok(0)
}
