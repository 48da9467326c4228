//! `whatsnap-mac completions`: Print shell completions.

/// `completions` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `completions`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("completions")
}
