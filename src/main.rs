//! The `whatsnap-mac` command: parse, set up, dispatch. Logic lives in the library.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "whatsnap-mac", version, about = "The SMS/iMessage account of WhatSnap, on your own Mac")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Messages simulator tools (for tests and the demo).
    #[command(subcommand, hide = true)]
    Sim(whatsnap_mac::sim::cli::SimCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(cmd) => whatsnap_mac::sim::cli::run(cmd),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("whatsnap-mac: {err:#}");
            ExitCode::from(2)
        }
    }
}
