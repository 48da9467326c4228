//! `whatsnap-mac restart`: kills the running bridge and lets launchd start it
//! again at once (`launchctl kickstart -k`), e.g. after granting a permission.

use crate::config::Paths;
use crate::launchd::Launchctl;

/// `restart` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `restart`.
pub fn run(_args: &Args, _paths: &Paths) -> anyhow::Result<u8> {
    let launchctl = Launchctl::from_env()?;
    launchctl.kickstart()?;
    println!("Restarted the bridge ({}).", launchctl.service());
    Ok(0)
}
