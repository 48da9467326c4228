//! `whatsnap-mac install`: Install the LaunchAgent so the bridge starts at login.

/// `install` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `install`.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    super::coming::not_yet("install")
}
