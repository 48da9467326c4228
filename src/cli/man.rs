//! `whatsnap-mac man`: Print the man page.

/// `man` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `man`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("man")
}
