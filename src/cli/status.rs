//! `whatsnap-mac status`: the bridge's state for a person, a program
//! (`--json`) or the menu bar (`--format swiftbar|xbar`), and the control
//! requests `--pause`, `--resume`, `--rescan`, `--reload` to the running daemon.
//!
//! Exit codes: 0 connected, 1 degraded (running, but something needs
//! attention), 3 down (not running); the menu-bar formats always exit 0.

use anyhow::Context;

use crate::config::Paths;
use crate::control::{self, ControlError, Request};
use crate::link::pair::{self, PairError};
use crate::status::{Account, MenuFlavor, Status};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a person.
    Text,
    /// One JSON object.
    Json,
    /// A SwiftBar plugin's output.
    Swiftbar,
    /// An xbar plugin's output.
    Xbar,
}

/// `status` options.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 connected, 1 degraded, 3 down (menu-bar formats always exit 0)."
)]
pub struct Args {
    /// Print JSON (same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Ask the running bridge to stop handing texts to Messages (they stay queued).
    #[arg(long, group = "control")]
    pub pause: bool,
    /// Ask the running bridge to send again.
    #[arg(long, group = "control")]
    pub resume: bool,
    /// Ask the running bridge to read chat.db again now.
    #[arg(long, group = "control")]
    pub rescan: bool,
    /// Ask the running bridge to read its settings again.
    #[arg(long, group = "control")]
    pub reload: bool,
}

/// Runs `status`.
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    let socket = control::socket_path(&paths.home);
    let control_request = [
        (args.pause, Request::Pause),
        (args.resume, Request::Resume),
        (args.rescan, Request::Rescan),
        (args.reload, Request::Reload),
    ]
    .into_iter()
    .find_map(|(on, req)| on.then_some(req));
    if let Some(req) = control_request {
        let answer = control::request(&socket, req)?;
        return if answer.ok {
            println!("{}", answer.message.unwrap_or_else(|| "done".into()));
            Ok(0)
        } else {
            eprintln!(
                "whatsnap-mac: {}",
                answer.error.unwrap_or_else(|| "refused".into())
            );
            Ok(1)
        };
    }
    let status = gather(paths)?;
    let now = jiff::Timestamp::now().as_millisecond();
    let format = if args.json { Format::Json } else { args.format };
    match format {
        Format::Text => print!("{}", status.render_text(now)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&status.render_json())?),
        Format::Swiftbar | Format::Xbar => {
            let flavor = if format == Format::Swiftbar {
                MenuFlavor::Swiftbar
            } else {
                MenuFlavor::Xbar
            };
            let exe = std::env::current_exe().context("cannot find this program's own path")?;
            print!("{}", status.render_menu(flavor, now, &exe));
            return Ok(0);
        }
    }
    Ok(status.overall().exit_code())
}

/// Puts the picture together from the daemon, the credentials and the
/// state database.
pub fn gather(paths: &Paths) -> anyhow::Result<Status> {
    let daemon = match control::request(&control::socket_path(&paths.home), Request::Status) {
        Ok(answer) => answer.status,
        Err(ControlError::NotRunning { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let (account, credentials_error) = match pair::load_paired(&paths.credentials()) {
        Ok(c) => (
            Some(Account {
                name: c.account_name,
                tag: c.account_tag,
                server: c.server,
            }),
            None,
        ),
        Err(PairError::NotPaired) => (None, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let queue = crate::status::read_queue(&paths.state_db()).with_context(|| {
        format!(
            "cannot read the state database {}",
            paths.state_db().display()
        )
    })?;
    Ok(Status {
        daemon,
        account,
        queue,
        agent_installed: crate::launchd::plist_path(&crate::logfile::user_home()).exists(),
        credentials_error,
    })
}
