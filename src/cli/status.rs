//! `whatsnap-mac status`: Show the bridge's state (also for the menu bar).

/// `status` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `status`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("status")
}
