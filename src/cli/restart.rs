//! `whatsnap-mac restart`: Restart the running bridge.

/// `restart` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `restart`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("restart")
}
