//! `whatsnap-mac completions SHELL`: shell completions generated from the
//! same clap definitions the parser uses, so they cannot drift.

use clap::CommandFactory;

/// `completions` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Prints the completion script on stdout.
pub fn run(args: &Args, _paths: &crate::config::Paths) -> anyhow::Result<u8> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "whatsnap-mac", &mut std::io::stdout());
    Ok(0)
}
