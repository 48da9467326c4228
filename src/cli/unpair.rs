//! `whatsnap-mac unpair`: Revoke this Mac at the service and forget its token.

/// `unpair` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `unpair`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("unpair")
}
