//! The `whatsnap-mac` command line: one file per command, each with its own
//! `Args` and `run`, so commands can grow without touching each other.
//!
//! Exit codes (all commands): 0 success; 1 the operation ran and failed
//! (pairing refused, a send not sent); 2 a usage, configuration or environment
//! error. `status` adds its own (see its help).

pub mod coming;
pub mod completions;
pub mod doctor;
pub mod install;
pub mod logs;
pub mod man;
pub mod messages;
pub mod pair;
pub mod restart;
pub mod run;
pub mod send;
pub mod status;
pub mod uninstall;
pub mod unpair;

use std::path::PathBuf;

use clap::Parser;

use crate::config::Paths;

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "whatsnap-mac",
    version,
    about = "The SMS/iMessage account of WhatSnap, on your own Mac",
    after_help = "Exit codes: 0 success, 1 the operation failed, 2 usage or environment error."
)]
pub struct Cli {
    /// State folder (default: ~/Library/Application Support/whatsnap).
    #[arg(long, global = true, env = "WHATSNAP_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// The Messages database to read (default: ~/Library/Messages/chat.db).
    #[arg(long, global = true, env = "WHATSNAP_CHAT_DB", value_name = "PATH")]
    pub chat_db: Option<PathBuf>,
    /// The AppleScript runner (default: /usr/bin/osascript).
    #[arg(long, global = true, env = "WHATSNAP_OSASCRIPT", value_name = "PATH")]
    pub osascript: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the bridge (what launchd starts).
    Run(run::Args),
    /// Pair this Mac with a WhatSnap account, once.
    Pair(pair::Args),
    /// Revoke this Mac at the service and forget its token.
    Unpair(unpair::Args),
    /// Show the bridge's state (also for the menu bar).
    Status(status::Args),
    /// Check everything the bridge needs and say how to fix what is missing.
    Doctor(doctor::Args),
    /// Install the LaunchAgent so the bridge starts at login.
    Install(install::Args),
    /// Remove the LaunchAgent.
    Uninstall(uninstall::Args),
    /// Restart the running bridge.
    Restart(restart::Args),
    /// Show the bridge's logs.
    Logs(logs::Args),
    /// Send a text (and files) through Messages, the path the bridge uses.
    Send(send::Args),
    /// Print what the bridge reads from chat.db, one protocol event per line.
    Messages(messages::Args),
    /// Print shell completions.
    Completions(completions::Args),
    /// Print the man page.
    Man(man::Args),
    /// Run the whole system on this machine: service, simulated Messages,
    /// daemon, and a scripted conversation.
    Demo(DemoArgs),
    /// Messages simulator tools (for tests and the demo).
    #[command(subcommand, hide = true)]
    Sim(crate::sim::cli::SimCommand),
}

/// `demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Exit after the scripted conversation instead of waiting for Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

impl Cli {
    /// The log level a command runs at unless `WHATSNAP_LOG` says otherwise.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Command::Run(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs the parsed command; returns the exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let paths = Paths::resolve(cli.home, cli.chat_db, cli.osascript);
    match cli.command {
        Command::Run(args) => run::run(&args, paths),
        Command::Pair(args) => pair::run(&args, &paths),
        Command::Unpair(args) => unpair::run(&args, &paths),
        Command::Status(args) => status::run(&args, &paths),
        Command::Doctor(args) => doctor::run(&args, &paths),
        Command::Install(args) => install::run(&args, &paths),
        Command::Uninstall(args) => uninstall::run(&args, &paths),
        Command::Restart(args) => restart::run(&args, &paths),
        Command::Logs(args) => logs::run(&args, &paths),
        Command::Send(args) => send::run(&args, &paths),
        Command::Messages(args) => messages::run(&args, &paths),
        Command::Completions(args) => completions::run(&args, &paths),
        Command::Man(args) => man::run(&args, &paths),
        Command::Demo(args) => {
            let exe = std::env::current_exe()
                .map_err(|e| anyhow::anyhow!("cannot find this program's own path: {e}"))?;
            runtime()?.block_on(crate::demo::run(&exe, args.once))?;
            Ok(0)
        }
        Command::Sim(cmd) => {
            let code = crate::sim::cli::run(cmd)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// The multi-thread runtime the daemon and network commands use.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}
