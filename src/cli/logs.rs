//! `whatsnap-mac logs`: Show the bridge's logs.

/// `logs` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `logs`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("logs")
}
