//! The whole system for tests that run the daemon as a real process: the
//! account service (whatsnap-relay) on loopback with one account, "Mike", a
//! WAL chat.db written by the simulator, the fake `osascript`, and a state
//! folder paired with the service. Shared by `tests/e2e.rs` and
//! `tests/send_daemon_kill.rs`; each starts the daemon from
//! [`System::daemon_command`] with what it needs on top.

#![allow(dead_code, reason = "each test file uses part of the stand")]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use whatsnap_mac::link::pair;
use whatsnap_mac::sim::Simulator;
use whatsnap_mac::sim::fake_osascript::{self, Control, LOG_ENV};
use whatsnap_proto::api::AccountState;
use whatsnap_relay::client::AdminClient;
use whatsnap_relay::{RelayConfig, RelayEvent, RelayHandle};

/// The daemon binary under test.
pub const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");

/// How long a wait for a service event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct System {
    pub dir: tempfile::TempDir,
    relay: Option<RelayHandle>,
    shutdown: CancellationToken,
    events: broadcast::Receiver<RelayEvent>,
    /// Events received but not yet waited for: a wait never loses one.
    pub unclaimed: Vec<RelayEvent>,
    pub admin: AdminClient,
    pub sim: Simulator,
    pub chat_db: PathBuf,
    pub home: PathBuf,
    pub osascript: PathBuf,
    pub account_id: String,
}

impl System {
    /// Service up, account "Mike" created, Mac paired; daemon not started.
    pub async fn new() -> System {
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let relay = whatsnap_relay::start(
            RelayConfig {
                db_path: dir.path().join("relay.db"),
                listen: ([127, 0, 0, 1], 0).into(),
                admin_token: "admin-secret".into(),
                public_url: None,
            },
            shutdown.clone(),
        )
        .await
        .expect("relay starts");
        let events = relay.subscribe();
        let admin = AdminClient::new(&relay.base_url(), Some("admin-secret".into()));
        let created = admin.create_account("Mike").await.expect("account");
        let messages = dir.path().join("Messages");
        std::fs::create_dir_all(&messages).expect("messages dir");
        let chat_db = messages.join("chat.db");
        let sim = Simulator::create(&chat_db).expect("chat.db");
        let osascript = fake_osascript::write_wrapper(dir.path(), Path::new(EXE), &chat_db)
            .expect("fake osascript");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let creds = pair::pair(
            &reqwest::Client::new(),
            &relay.base_url(),
            &created.pairing.code,
            pair::device_info(),
        )
        .await
        .expect("pairs");
        pair::save(&home.join("credentials.json"), &creds).expect("save");
        System {
            account_id: created.account.id,
            dir,
            relay: Some(relay),
            shutdown,
            events,
            unclaimed: Vec::new(),
            admin,
            sim,
            chat_db,
            home,
            osascript,
        }
    }

    /// The service's address, `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.relay.as_ref().expect("the service runs").base_url()
    }

    /// Every osascript call the fake received, one JSON line each.
    pub fn osascript_log(&self) -> PathBuf {
        self.dir.path().join("osascript.jsonl")
    }

    /// The fake osascript's control file (hang, fail, ...).
    pub fn control_path(&self) -> PathBuf {
        self.dir.path().join("control.json")
    }

    pub fn control(&self, c: &Control) {
        c.write(&self.control_path()).expect("control");
    }

    /// What every daemon started so far has logged.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `whatsnap-mac run` on this system, logging at debug level to
    /// [`Self::daemon_log`], the fake's calls to [`Self::osascript_log`].
    pub fn daemon_command(&self) -> Command {
        let mut cmd = Command::new(EXE);
        cmd.arg("run")
            .arg("--home")
            .arg(&self.home)
            .arg("--chat-db")
            .arg(&self.chat_db)
            .arg("--osascript")
            .arg(&self.osascript)
            .env(LOG_ENV, self.osascript_log())
            .env("WHATSNAP_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("daemon.log"))
                    .expect("log"),
            )
            .kill_on_drop(true);
        cmd
    }

    /// Starts the daemon ([`Self::daemon_command`], changed by `setup`) and
    /// waits until the service shows it connected.
    pub async fn start_daemon_with(&mut self, setup: impl FnOnce(&mut Command)) -> Child {
        let mut cmd = self.daemon_command();
        setup(&mut cmd);
        let child = cmd.spawn().expect("daemon starts");
        self.wait_active().await;
        child
    }

    /// Starts `whatsnap-mac run` and waits until the account is Active.
    pub async fn start_daemon(&mut self) -> Child {
        self.start_daemon_with(|_| {}).await
    }

    /// Waits until the service shows Mike's account Active.
    pub async fn wait_active(&mut self) {
        let account = self.account_id.clone();
        self.wait_for("the account to become Active", |e| {
            matches!(e, RelayEvent::AccountStatus { account_id, status: AccountState::Active, .. } if *account_id == account)
        })
        .await;
    }

    pub async fn wait_for(&mut self, what: &str, want: impl Fn(&RelayEvent) -> bool) -> RelayEvent {
        self.wait_within(WAIT, what, want).await
    }

    /// The first service event `want` accepts, among those not yet claimed
    /// and those to come within `within`; fails the test with the daemon's
    /// log otherwise.
    pub async fn wait_within(
        &mut self,
        within: Duration,
        what: &str,
        want: impl Fn(&RelayEvent) -> bool,
    ) -> RelayEvent {
        if let Some(i) = self.unclaimed.iter().position(&want) {
            return self.unclaimed.remove(i);
        }
        let (events, unclaimed) = (&mut self.events, &mut self.unclaimed);
        let found = tokio::time::timeout(within, async {
            loop {
                match events.recv().await {
                    Ok(e) if want(&e) => return e,
                    Ok(e) => unclaimed.push(e),
                    Err(e) => panic!("relay event bus: {e}"),
                }
            }
        })
        .await;
        match found {
            Ok(e) => e,
            Err(_) => panic!(
                "gave up waiting for {what}; daemon log:\n{}",
                self.daemon_log()
            ),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(relay) = self.relay.take() {
            relay.wait().await;
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        // A fake osascript left hanging by a failed test is let go, so no
        // process outlives the test.
        let _ = Control::default().write(&self.control_path());
    }
}

pub async fn kill_hard(mut child: Child) {
    // Child::kill is SIGKILL: no chance to flush, ack or close the socket.
    child.kill().await.expect("kill -9");
}
