//! `whatsnap-mac demo`: the whole system on one machine, nothing beyond loopback.
//!
//! It starts the account service in this process, creates a simulated
//! Messages database, pairs a real daemon (this same binary, `run`, as a child
//! process) driven by the fake `osascript`, and plays a short conversation in
//! both directions, printing each step as the service reports it. Every wait
//! is on an event from the service, with a time limit that names the log to
//! read when it runs out.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use whatsnap_proto::api::AccountState;
use whatsnap_proto::frame::SendState;
use whatsnap_relay::{RelayConfig, RelayEvent, client::AdminClient};

use crate::chatdb::ChatDb;
use crate::link::pair;
use crate::sim::{Simulator, fake_osascript};

const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const CUSTOMER: &str = "+15551234567";

/// Runs the demo; `exe` is this program (started again as the daemon).
pub async fn run(exe: &Path, once: bool) -> anyhow::Result<()> {
    let dir = DemoDir::create()?;
    let result = play(exe, dir.path(), once).await;
    if result.is_err() {
        eprintln!(
            "The daemon's log is {} (kept for you).",
            dir.path().join("daemon.log").display()
        );
        dir.keep();
    }
    result
}

async fn play(exe: &Path, dir: &Path, once: bool) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let admin_token = format!("demo-{}", uuid::Uuid::new_v4().simple());

    step("Starting the account service (whatsnap-relay) on 127.0.0.1");
    let relay = whatsnap_relay::start(
        RelayConfig {
            db_path: dir.join("relay.db"),
            listen: ([127, 0, 0, 1], 0).into(),
            admin_token: admin_token.clone(),
            public_url: None,
        },
        shutdown.clone(),
    )
    .await
    .context("cannot start the account service")?;
    let base = relay.base_url();
    let mut events = relay.subscribe();
    let admin = AdminClient::new(&base, Some(admin_token.clone()));
    detail(&format!("listening on {base}"));

    step("Creating the SMS/iMessage account \"Mike\"");
    let created = admin.create_account("Mike").await?;
    detail(&format!(
        "tag {}, pairing code {}",
        created.account.tag, created.pairing.code
    ));

    step("Creating a simulated Messages database (macOS 15 schema, WAL mode)");
    let messages_dir = dir.join("Messages");
    std::fs::create_dir_all(&messages_dir)?;
    let chat_db = messages_dir.join("chat.db");
    let mut sim = Simulator::create(&chat_db)?;
    let osascript = fake_osascript::write_wrapper(dir, exe, &chat_db)
        .context("cannot write the fake osascript")?;
    detail(&chat_db.display().to_string());

    step("Pairing the Mac daemon with the code");
    let home = dir.join("home");
    crate::config::ensure_home(&home)?;
    let client = reqwest::Client::new();
    let creds = pair::pair(&client, &base, &created.pairing.code, pair::device_info()).await?;
    // The demo's token lives in its throw-away folder, never in the
    // user's Keychain.
    pair::CredentialStore {
        store: pair::TokenStore::File,
        keychain: crate::link::keychain::Keychain::from_env(),
    }
    .save(&home.join("credentials.json"), &creds, None)?;
    detail(&format!("device {} paired", creds.device_id));

    step("Starting the daemon: whatsnap-mac run");
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let mut daemon = tokio::process::Command::new(exe)
        .arg("run")
        .arg("--home")
        .arg(&home)
        .arg("--chat-db")
        .arg(&chat_db)
        .arg("--osascript")
        .arg(&osascript)
        .env("WHATSNAP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the daemon")?;
    wait_for(&mut events, "the account to become Active", |e| {
        matches!(
            e,
            RelayEvent::AccountStatus {
                status: AccountState::Active,
                ..
            }
        )
    })
    .await?;
    detail("account Mike is Active");

    let first = "Hi Mike, is the apartment on Elm Street still available? 🏠";
    step(&format!("{CUSTOMER} texts the Mac: {first:?}"));
    sim.receive(CUSTOMER, first)?;
    let contact_id = match wait_for(&mut events, "the contact to be created", |e| {
        matches!(e, RelayEvent::ContactCreated { .. })
    })
    .await?
    {
        RelayEvent::ContactCreated {
            contact_id,
            handle,
            tag,
        } => {
            detail(&format!(
                "contact {handle} created with tag {}",
                tag.as_deref().unwrap_or("(none)")
            ));
            contact_id
        }
        _ => unreachable!("matched above"),
    };
    wait_for(&mut events, "the message to reach the service", |e| {
        matches!(e, RelayEvent::MessageReceived { .. })
    })
    .await?;
    detail("message recorded in the CRM conversation");

    let reply = "Yes it is! Would Saturday at 10 work for a viewing?";
    step(&format!("The CRM replies through the service: {reply:?}"));
    let queued = admin.send_message(&contact_id, reply, None).await?;
    detail("routed by the contact's tag to account Mike's Mac");
    let guids = match wait_for(&mut events, "the send result", |e| {
        matches!(e, RelayEvent::SendResult { .. })
    })
    .await?
    {
        RelayEvent::SendResult { state, guids, .. } => {
            if state != SendState::Sent {
                bail!("the send ended {state:?}, not sent");
            }
            guids
        }
        _ => unreachable!("matched above"),
    };
    let guid = guids.first().cloned().unwrap_or_default();
    let db = ChatDb::open(&chat_db)?;
    let rows = db.read_after(0, 1000)?;
    let row = rows
        .iter()
        .find(|r| r.guid == guid && r.from_me)
        .context("the sent message is not in chat.db")?;
    detail(&format!(
        "sent by Messages: from-me row ROWID {} guid {guid} (message {})",
        row.rowid, queued.id
    ));

    let second = "Saturday works, see you then!";
    step(&format!("{CUSTOMER} answers: {second:?}"));
    sim.receive(CUSTOMER, second)?;
    wait_for(
        &mut events,
        "the answer to reach the service",
        |e| matches!(e, RelayEvent::MessageReceived { text, .. } if text == second),
    )
    .await?;
    detail("recorded on the same contact");

    let accounts = admin.list_accounts().await?;
    for account in &accounts {
        step(&format!(
            "Account {} ({}) is {:?}",
            account.name, account.tag, account.status
        ));
    }

    if once {
        println!("\nDemo complete.");
    } else {
        println!("\nThe system keeps running. Try the service's API (Ctrl-C to stop):");
        println!("  export WHATSNAP_ADMIN_TOKEN={admin_token}");
        println!("  curl -s -H \"Authorization: Bearer $WHATSNAP_ADMIN_TOKEN\" {base}/v1/accounts");
        println!("  curl -s -H \"Authorization: Bearer $WHATSNAP_ADMIN_TOKEN\" {base}/v1/contacts");
        println!("  curl -s -H \"Authorization: Bearer $WHATSNAP_ADMIN_TOKEN\" {base}/v1/messages");
        println!(
            "  curl -s -H \"Authorization: Bearer $WHATSNAP_ADMIN_TOKEN\" -H 'Content-Type: application/json' \\\n       -d '{{\"contact\":\"{CUSTOMER}\",\"text\":\"Hello from curl\"}}' {base}/v1/messages"
        );
        println!(
            "  {} sim receive --chat-db {} --from {CUSTOMER} 'Another message'",
            exe.display(),
            chat_db.display()
        );
        crate::shutdown_signal().await;
    }
    let _ = daemon.kill().await;
    shutdown.cancel();
    relay.wait().await;
    Ok(())
}

fn step(text: &str) {
    println!("▶ {text}");
}

fn detail(text: &str) {
    println!("  {text}");
}

/// Waits for the first relay event matching `want`, up to [`STEP_TIMEOUT`].
async fn wait_for(
    events: &mut broadcast::Receiver<RelayEvent>,
    what: &str,
    want: impl Fn(&RelayEvent) -> bool,
) -> anyhow::Result<RelayEvent> {
    let found = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match events.recv().await {
                Ok(e) if want(&e) => return Ok(e),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    bail!("the account service stopped")
                }
            }
        }
    })
    .await;
    match found {
        Ok(r) => r,
        Err(_) => bail!("gave up waiting {} s for {what}", STEP_TIMEOUT.as_secs()),
    }
}

/// A private scratch folder, removed at the end unless kept.
struct DemoDir {
    path: PathBuf,
    keep: std::cell::Cell<bool>,
}

impl DemoDir {
    fn create() -> anyhow::Result<DemoDir> {
        let path = std::env::temp_dir().join(format!(
            "whatsnap-demo-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        crate::config::ensure_home(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(DemoDir {
            path,
            keep: std::cell::Cell::new(false),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(&self) {
        self.keep.set(true);
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if !self.keep.get() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
