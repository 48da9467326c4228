//! `whatsnap-mac doctor`: Check everything the bridge needs and say how to fix what is missing.

/// `doctor` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `doctor`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("doctor")
}
