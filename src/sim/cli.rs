//! `whatsnap-mac sim ...`: drive the simulator from the command line.
//!
//! STUB: being written by a helper.

/// Simulator commands (hidden from the main help).
#[derive(Debug, clap::Subcommand)]
pub enum SimCommand {}

/// Runs a simulator command and returns the process exit code.
pub fn run(cmd: SimCommand) -> anyhow::Result<i32> {
    match cmd {}
}
