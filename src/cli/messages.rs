//! `whatsnap-mac messages`: Print what the bridge reads from chat.db, one protocol event per JSON line.

/// `messages` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `messages`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("messages")
}
