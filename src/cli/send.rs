//! `whatsnap-mac send`: Send a text (and files) through Messages, the same path the bridge uses.

/// `send` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `send`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("send")
}
