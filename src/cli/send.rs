//! `whatsnap-mac send`: send a text (and files) through Messages by hand, on
//! the same path the bridge uses: the same scripts, the same confirmation by
//! the chat.db row, the same state machine in the daemon's store, and the same
//! hourly limits (a manual send counts against the Apple ID like any other).
//!
//! The send is stored under an id (`--id`, or a new `cli:<uuid>`), so running
//! the command again with the same id never sends twice: it finishes or
//! reports the first run. Manual sends are never reported to the service as
//! `send.result`; the bridge announces their row as a message typed on the Mac.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use whatsnap_proto::frame::{
    CmdSend, OutboundAttachment, SendResult, SendState, SendTo, ServicePref,
};

use crate::chatdb::SharedChatDb;
use crate::config::{self, Paths};
use crate::send::runner::Runner;
use crate::send::{SendSettings, Sender, file_url};
use crate::store::Store;

/// Exit code: the message was sent (Messages wrote the row).
pub const EXIT_SENT: u8 = 0;
/// Exit code: it was not sent (failed, refused, or expired); safe to retry.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or environment.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: it may have been sent; check the phone before retrying.
pub const EXIT_UNKNOWN: u8 = 3;

/// `send` options.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 sent (Messages wrote the row); 1 not sent (failed, refused or \
                  expired: safe to retry); 2 usage or environment error; 3 unknown (it may have \
                  been sent: check the phone before retrying, never resend blindly).\n\n\
                  Examples:\n  whatsnap-mac send --to +15551234567 \"On my way\"\n  \
                  whatsnap-mac send --chat 'any;+;chat123' --file ~/plan.pdf \"The plan\""
)]
pub struct Args {
    /// The person: an E.164 phone number (+15551234567) or an email address.
    #[arg(
        long,
        value_name = "HANDLE",
        conflicts_with = "chat",
        required_unless_present = "chat"
    )]
    pub to: Option<String>,
    /// An existing chat by its exact chat.guid (as `whatsnap-mac messages` prints it).
    #[arg(long, value_name = "GUID")]
    pub chat: Option<String>,
    /// A file to send after the text; repeat for several.
    #[arg(long = "file", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// The text (may be left out when files are given).
    #[arg(allow_hyphen_values = true)]
    pub text: Option<String>,
    /// Which service: auto (iMessage, SMS only after a definite iMessage failure), imessage, sms.
    #[arg(long, value_enum, default_value = "auto")]
    pub service: ServiceArg,
    /// Print the result as one JSON object (the protocol's send.result).
    #[arg(long)]
    pub json: bool,
    /// Idempotency key: the same id never sends twice.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Seconds one osascript call may take before it is killed (the send is then unknown).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub timeout_secs: u64,
    /// Seconds to wait for Messages to write the sent row (for a resumed send: since its dispatch).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub confirm_secs: u64,
}

/// `--service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceArg {
    /// iMessage, falling back to SMS only after a definite failure.
    Auto,
    /// iMessage only.
    Imessage,
    /// SMS only (needs an iPhone forwarding texts to this Mac).
    Sms,
}

/// Runs `send`.
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    let text = args.text.clone().unwrap_or_default();
    if text.is_empty() && args.files.is_empty() {
        eprintln!("error: nothing to send: give a TEXT, a --file, or both");
        return Ok(EXIT_USAGE);
    }
    let mut attachments = Vec::new();
    for file in &args.files {
        let path = std::path::absolute(file)
            .with_context(|| format!("cannot resolve {}", file.display()))?;
        let meta = std::fs::metadata(&path).with_context(|| {
            format!(
                "cannot read {}: check the path and that it is a file",
                path.display()
            )
        })?;
        if !meta.is_file() {
            bail!("{} is not a file; only files can be sent", path.display());
        }
        attachments.push(OutboundAttachment {
            url: file_url(&path),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            mime: None,
            size: meta.len(),
            sha256: String::new(),
        });
    }
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("cli:{}", uuid::Uuid::now_v7()));
    let cmd = CmdSend {
        client_msg_id: id.clone(),
        to: args.to.clone().map(|handle| SendTo { handle }),
        chat_guid: args.chat.clone(),
        text,
        attachments,
        service_pref: match args.service {
            ServiceArg::Auto => ServicePref::Auto,
            ServiceArg::Imessage => ServicePref::Imessage,
            ServiceArg::Sms => ServicePref::Sms,
        },
        reply_to_guid: None,
        expires_at_ms: None,
    };
    config::ensure_home(&paths.home)
        .with_context(|| format!("cannot create the state folder {}", paths.home.display()))?;
    let store = Store::open(&paths.state_db())?;
    if !store.insert_cli_send(&cmd)? {
        let Some(stored) = store.send_record(&id)? else {
            bail!("the send {id} vanished from the state database while starting");
        };
        if stored.cmd.to != cmd.to
            || stored.cmd.chat_guid != cmd.chat_guid
            || stored.cmd.text != cmd.text
        {
            eprintln!(
                "error: the id {id} was already used for another send; choose a new --id (or none)"
            );
            return Ok(EXIT_USAGE);
        }
        if !args.json && stored.result.is_none() {
            eprintln!("resuming send {id}: it is never dispatched twice");
        }
    }
    let settings = SendSettings {
        osascript_timeout: Duration::from_secs(args.timeout_secs.max(1)),
        confirm_window: Duration::from_secs(args.confirm_secs),
        // A resumed send is looked for as long, counted from its dispatch.
        restart_confirm_window: Duration::from_secs(args.confirm_secs),
        ..SendSettings::default()
    };
    let result = super::runtime()?.block_on(async move {
        let (_ticks, db_changed) = watch::channel(0u64);
        let (_settings, settings_rx) = watch::channel(settings.clone());
        let worker = Sender {
            store,
            chat_db: SharedChatDb::new(paths.chat_db.clone()),
            runner: Runner::new(paths.osascript.clone(), settings.osascript_timeout),
            wake: Arc::new(Notify::new()),
            db_changed,
            outbox: Arc::new(Notify::new()),
        }
        .with_settings(settings_rx)
        .for_cli(&id);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            stop.cancel();
        });
        worker.run(shutdown).await
    });
    let Some(result) = result else {
        eprintln!(
            "interrupted: the send is kept; run the same command with --id {} to finish or report it",
            cmd.client_msg_id
        );
        return Ok(EXIT_UNKNOWN);
    };
    print_result(&result, args.json);
    Ok(exit_code(result.state))
}

/// The exit code of a final state.
pub fn exit_code(state: SendState) -> u8 {
    match state {
        SendState::Sent => EXIT_SENT,
        SendState::Unknown => EXIT_UNKNOWN,
        SendState::Failed | SendState::Expired | SendState::Rejected => EXIT_FAILED,
    }
}

fn print_result(result: &SendResult, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(result).unwrap_or_else(|_| "{}".into())
        );
        return;
    }
    let service = result.service.as_deref().unwrap_or("Messages");
    let why = result
        .error
        .as_ref()
        .map(|e| format!("{} ({})", e.message, e.code))
        .unwrap_or_default();
    match result.state {
        SendState::Sent => println!("sent via {service}: {}", result.guids.join(", ")),
        SendState::Failed => println!("not sent: {why}"),
        SendState::Rejected => println!("refused, nothing sent: {why}"),
        SendState::Expired => println!("expired, nothing sent: {why}"),
        SendState::Unknown => println!(
            "unknown, it may have been sent: {why}{}",
            if result.guids.is_empty() {
                String::new()
            } else {
                format!(" [rows: {}]", result.guids.join(", "))
            }
        ),
    }
}
