//! `whatsnap-mac man`: the man page (roff), generated from the clap
//! definitions. `whatsnap-mac man > whatsnap-mac.1`.

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

/// `man` options.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints the man page on stdout.
pub fn run(_args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(super::Cli::command())
        .render(&mut out)
        .context("cannot render the man page")?;
    std::io::stdout()
        .write_all(&out)
        .context("cannot write the man page")?;
    Ok(0)
}
