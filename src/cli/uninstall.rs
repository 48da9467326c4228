//! `whatsnap-mac uninstall`: Remove the LaunchAgent.

/// `uninstall` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `uninstall`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("uninstall")
}
