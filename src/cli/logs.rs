//! `whatsnap-mac logs`: prints the end of the bridge's log file, and with
//! `--follow` keeps printing what is appended (across rotations) until Ctrl-C.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use crate::config::Paths;
use crate::logfile::{self, Follower};

/// `logs` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the last lines to print first.
    #[arg(short = 'n', long, default_value_t = 50, value_name = "N")]
    pub lines: usize,
}

/// Runs `logs`.
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    let path = logfile::log_file(&paths.home);
    if !path.exists() && !args.follow {
        println!(
            "No log yet at {}: the bridge writes it once launchd runs it (`whatsnap-mac install`).",
            path.display()
        );
        return Ok(0);
    }
    let mut follower = Follower::from_end(&path);
    let mut out = std::io::stdout().lock();
    for line in logfile::tail(&path, args.lines)
        .with_context(|| format!("cannot read {}", path.display()))?
    {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if !args.follow {
        return Ok(0);
    }
    drop(out);
    // Polling a file is what `tail -F` does portably; a quarter second is
    // quick enough for a person watching.
    loop {
        let lines = follower
            .poll()
            .with_context(|| format!("cannot read {}", path.display()))?;
        if !lines.is_empty() {
            let mut out = std::io::stdout().lock();
            for line in lines {
                if writeln!(out, "{line}").is_err() {
                    // The reader went away (e.g. `| head`): stop quietly.
                    return Ok(0);
                }
            }
            if out.flush().is_err() {
                return Ok(0);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
