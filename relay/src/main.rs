//! `whatsnap-relay`: run the account service, or talk to a running one.
//!
//! Thin on purpose: parse arguments, set up TLS and logging, call the
//! library ([`whatsnap_relay::start`], [`whatsnap_relay::client`]), print.
//!
//! Exit codes: 0 ok; 1 the service refused the request (its message says
//! why); 2 usage error, or the service could not be reached.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use whatsnap_proto::api::{AccountState, AccountView, ContactView, MessageView};
use whatsnap_relay::client::{AdminClient, ClientError};
use whatsnap_relay::{RelayConfig, secret};

const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "whatsnap-relay",
    version,
    about = "The WhatSnap account service"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// The service to talk to.
    #[arg(
        long,
        global = true,
        env = "WHATSNAP_RELAY_URL",
        default_value = "http://127.0.0.1:8787"
    )]
    server: String,
    /// Admin token (default: the one `serve` stored in <data-dir>/admin-token).
    #[arg(
        long,
        global = true,
        env = "WHATSNAP_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Where the service keeps its database and admin token.
    #[arg(long, global = true, env = "WHATSNAP_RELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the account service until Ctrl-C or SIGTERM.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        /// Database file (default <data-dir>/relay.db).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Base URL devices use to reach this service (for pairing answers).
        #[arg(long)]
        public_url: Option<String>,
    },
    /// Accounts: add, list, remove, pairing codes, settings.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Contacts: list, move to another account.
    #[command(subcommand)]
    Contact(ContactCmd),
    /// Send a text to a contact through the account its tag names.
    Send {
        /// Contact id or handle (+15551234567, a@b.co).
        #[arg(long)]
        contact: String,
        /// The text.
        text: String,
        /// Idempotency key (default: a new one).
        #[arg(long)]
        client_msg_id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Create an account and print its tag and first pairing code.
    Add {
        /// Display name; the tag is made from it.
        #[arg(long)]
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List accounts with their status.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an account; its Mac is disconnected and must pair again.
    Remove {
        /// Id, tag or name.
        account: String,
    },
    /// A new pairing code (10 minutes, single use).
    PairCode {
        /// Id, tag or name.
        account: String,
    },
    /// Show settings, or set KEY=VALUE pairs (VALUE as JSON, else text; KEY= removes).
    Settings {
        /// Id, tag or name.
        account: String,
        /// KEY=VALUE pairs.
        pairs: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ContactCmd {
    /// List contacts with their tags.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Route a contact through another account (replaces its account tag).
    Tag {
        /// Contact id or handle.
        contact: String,
        /// The account tag, e.g. whatsnap-account-Mike.
        tag: String,
    },
}

fn main() -> ExitCode {
    // reqwest is built without a TLS provider; install ring before anything builds a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("whatsnap-relay: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("whatsnap-relay: {e:#}");
            let code = match e.downcast_ref::<ClientError>() {
                Some(ClientError::Api { .. }) => EXIT_REFUSED,
                _ => EXIT_USAGE,
            };
            ExitCode::from(code)
        }
    }
}

fn data_dir(global: &Global) -> Result<PathBuf> {
    if let Some(dir) = &global.data_dir {
        return Ok(dir.clone());
    }
    directories::ProjectDirs::from("app", "whatsnap", "whatsnap-relay")
        .map(|d| d.data_dir().to_owned())
        .context("cannot find a home folder for the data directory; pass --data-dir")
}

fn admin_token_path(dir: &Path) -> PathBuf {
    dir.join("admin-token")
}

fn client(global: &Global) -> Result<AdminClient> {
    let token = match &global.admin_token {
        Some(t) => t.clone(),
        None => {
            let dir = data_dir(global)?;
            let path = admin_token_path(&dir);
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "no admin token: pass --admin-token or set WHATSNAP_ADMIN_TOKEN (could not read {})",
                        path.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    Ok(AdminClient::new(&global.server, Some(token)))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            db,
            public_url,
        } => serve(&cli.global, listen, db, public_url).await,
        Command::Account(cmd) => account(&client(&cli.global)?, cmd).await,
        Command::Contact(cmd) => contact(&client(&cli.global)?, cmd).await,
        Command::Send {
            contact,
            text,
            client_msg_id,
            json,
        } => {
            let c = client(&cli.global)?;
            let m = c
                .send_message(&contact, &text, client_msg_id.as_deref())
                .await?;
            if json {
                print_json(&m)
            } else {
                print_message(&m);
                Ok(())
            }
        }
    }
}

/// The admin token for `serve`: flag/env, else the stored one, else a new one
/// written with mode 0600.
fn serve_admin_token(global: &Global, dir: &Path) -> Result<String> {
    if let Some(t) = &global.admin_token {
        return Ok(t.clone());
    }
    let path = admin_token_path(dir);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            eprintln!("whatsnap-relay: admin token read from {}", path.display());
            return Ok(t);
        }
    }
    let token = secret::new_admin_token()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    writeln!(file, "{token}")
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    eprintln!(
        "whatsnap-relay: new admin token stored in {} (the CLI on this machine reads it from there)",
        path.display()
    );
    Ok(token)
}

async fn serve(
    global: &Global,
    listen: SocketAddr,
    db: Option<PathBuf>,
    public_url: Option<String>,
) -> Result<()> {
    let dir = data_dir(global)?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let admin_token = serve_admin_token(global, &dir)?;
    let config = RelayConfig {
        db_path: db.unwrap_or_else(|| dir.join("relay.db")),
        listen,
        admin_token,
        public_url,
    };
    let shutdown = CancellationToken::new();
    let handle = whatsnap_relay::start(config, shutdown.clone()).await?;
    eprintln!("whatsnap-relay: listening on {}", handle.base_url());
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("whatsnap-relay: shutting down");
        signal.cancel();
    });
    handle.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot format JSON")?;
    println!("{text}");
    Ok(())
}

fn format_ms(ms: i64) -> String {
    // Seconds ago keeps the CLI free of a date library; the JSON has the exact value.
    let ago = (whatsnap_now_ms() - ms).max(0) / 1000;
    match ago {
        0..=59 => format!("{ago}s ago"),
        60..=3599 => format!("{}m ago", ago / 60),
        3600..=86_399 => format!("{}h ago", ago / 3600),
        _ => format!("{}d ago", ago / 86_400),
    }
}

fn whatsnap_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn status_text(a: &AccountView) -> String {
    match a.status {
        AccountState::Active => match &a.warning {
            Some(w) => format!("Active (warning: {w})"),
            None => "Active".to_owned(),
        },
        AccountState::Disconnected => {
            let reason = a
                .reason
                .and_then(|r| serde_json::to_value(r).ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned());
            match a.since_ms {
                Some(ms) => format!("Disconnected ({reason}, since {})", format_ms(ms)),
                None => format!("Disconnected ({reason})"),
            }
        }
    }
}

async fn account(c: &AdminClient, cmd: AccountCmd) -> Result<()> {
    match cmd {
        AccountCmd::Add { name, json } => {
            let r = c.create_account(&name).await?;
            if json {
                return print_json(&r);
            }
            println!("account   {} ({})", r.account.name, r.account.id);
            println!("tag       {}", r.account.tag);
            println!(
                "pair code {}  (valid until {}; single use)",
                r.pairing.code,
                in_minutes(r.pairing.expires_at_ms)
            );
            println!(
                "On the Mac: whatsnap-mac pair --server {} --code {}",
                c.base_url(),
                r.pairing.code
            );
        }
        AccountCmd::List { json } => {
            let accounts = c.list_accounts().await?;
            if json {
                return print_json(&accounts);
            }
            if accounts.is_empty() {
                println!("no accounts; add one with `whatsnap-relay account add --name NAME`");
                return Ok(());
            }
            let w_name = accounts
                .iter()
                .map(|a| a.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            let w_tag = accounts
                .iter()
                .map(|a| a.tag.len())
                .max()
                .unwrap_or(3)
                .max(3);
            println!("{:w_name$}  {:w_tag$}  STATUS", "NAME", "TAG");
            for a in &accounts {
                println!("{:w_name$}  {:w_tag$}  {}", a.name, a.tag, status_text(a));
            }
        }
        AccountCmd::Remove { account } => {
            let a = c.remove_account(&account).await?;
            println!(
                "removed {} ({}); contacts keep the tag {}",
                a.name, a.id, a.tag
            );
        }
        AccountCmd::PairCode { account } => {
            let code = c.new_pairing_code(&account).await?;
            println!(
                "pair code {}  (valid until {}; single use)",
                code.code,
                in_minutes(code.expires_at_ms)
            );
        }
        AccountCmd::Settings { account, pairs } => {
            let view = if pairs.is_empty() {
                let accounts = c.list_accounts().await?;
                match accounts
                    .into_iter()
                    .find(|a| a.id == account || a.tag == account || a.name == account)
                {
                    Some(a) => a,
                    None => bail!(
                        "no account {account:?}; list accounts with `whatsnap-relay account list`"
                    ),
                }
            } else {
                c.update_settings(&account, &parse_pairs(&pairs)?).await?
            };
            println!(
                "settings of {} (version {})",
                view.name, view.settings.version
            );
            for (k, v) in &view.settings.values {
                println!("  {k} = {v}");
            }
        }
    }
    Ok(())
}

fn in_minutes(expires_ms: i64) -> String {
    let mins = (expires_ms - whatsnap_now_ms()).max(0) / 60_000;
    format!("{mins} minutes from now")
}

fn parse_pairs(pairs: &[String]) -> Result<Map<String, Value>> {
    let mut values = Map::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("{pair:?} is not KEY=VALUE (e.g. mark_read_on_send=true)");
        };
        let value = if v.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()))
        };
        values.insert(k.to_owned(), value);
    }
    Ok(values)
}

async fn contact(c: &AdminClient, cmd: ContactCmd) -> Result<()> {
    match cmd {
        ContactCmd::List { json } => {
            let contacts = c.list_contacts().await?;
            if json {
                return print_json(&contacts);
            }
            if contacts.is_empty() {
                println!("no contacts yet; they appear when someone messages an account");
            }
            for ct in &contacts {
                print_contact(ct);
            }
        }
        ContactCmd::Tag { contact, tag } => {
            let ct = c.set_contact_tag(&contact, &tag).await?;
            print_contact(&ct);
        }
    }
    Ok(())
}

fn print_contact(c: &ContactView) {
    println!("{}  {}  {}", c.handle, c.tags.join(","), c.id);
}

fn print_message(m: &MessageView) {
    let state = m
        .state
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    println!(
        "{} {}  {}  client_msg_id={}",
        m.direction,
        state,
        m.id,
        m.client_msg_id.as_deref().unwrap_or("-")
    );
}
