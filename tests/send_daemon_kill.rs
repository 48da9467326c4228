//! `kill -9` of the daemon at every step of the send state machine, with
//! every part real: the service (whatsnap-relay) on loopback, the daemon as a
//! `whatsnap-mac run` process, a WAL chat.db, and the fake `osascript`
//! process. A send is issued as the CRM does (`POST /v1/messages`), the
//! daemon is killed with SIGKILL at one step, started again as launchd would,
//! and the customer must have received the message at most once: one from-me
//! row in chat.db for that send, and the service showing it `sent` (or
//! `unknown`, with at most that one row).
//!
//! How the daemon is stopped at an exact step, without sleeping:
//! - inside the daemon, the test-only `WHATSNAP_SEND_CRASH_AT=<step>` makes
//!   the send worker SIGKILL its own process there (see
//!   `whatsnap_mac::send::CrashPoint`); the test waits for the process to end;
//! - while osascript runs, the fake's control file makes it hang before or
//!   after writing the row; it announces that with a marker file, which the
//!   test waits for before killing the daemon, then releases the fake, as a
//!   Messages that answers late.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use whatsnap_mac::link::pair;
use whatsnap_mac::send::{CRASH_AT_ENV, CrashPoint};
use whatsnap_mac::sim::Simulator;
use whatsnap_mac::sim::fake_osascript::{self, CONTROL_ENV, Control, LOG_ENV, hanging_marker};
use whatsnap_mac::sim::sends::SendSim;
use whatsnap_proto::api::OutboundState;
use whatsnap_proto::frame::SendState;
use whatsnap_relay::client::AdminClient;
use whatsnap_relay::{RelayConfig, RelayEvent, RelayHandle};

const CUSTOMER: &str = "+15551234567";
const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");
const WAIT: Duration = Duration::from_secs(30);

/// Where the daemon dies.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// The daemon kills itself at this step of its state machine.
    At(CrashPoint),
    /// The test kills it while the fake osascript hangs at this stage
    /// (`before_row`, `after_row`).
    WhileOsascript(&'static str),
}

/// Every step, in the order a send passes them, and how the send ends.
/// Killed after `dispatching` was committed but before osascript ran,
/// Messages never got the send: the restarted daemon only correlates, finds
/// no row within its 60 s window and reports `unknown` (never dispatching
/// again); at every other step the row is found and the send is `sent`.
const STEPS: [(&str, Kill, SendState); 7] = [
    (
        "accepted and queued, not yet taken for dispatch",
        Kill::At(CrashPoint::Taken),
        SendState::Sent,
    ),
    (
        "dispatching committed, osascript not yet spawned",
        Kill::At(CrashPoint::Dispatching),
        SendState::Unknown,
    ),
    (
        "osascript running, the row not yet written",
        Kill::WhileOsascript("before_row"),
        SendState::Sent,
    ),
    (
        "the row written, osascript not yet exited",
        Kill::WhileOsascript("after_row"),
        SendState::Sent,
    ),
    (
        "osascript exited, the row not yet looked for",
        Kill::At(CrashPoint::Dispatched),
        SendState::Sent,
    ),
    (
        "the outcome known, the result not yet committed",
        Kill::At(CrashPoint::Judged),
        SendState::Sent,
    ),
    (
        "the result committed, not yet acked by the service",
        Kill::At(CrashPoint::Finished),
        SendState::Sent,
    ),
];

struct System {
    dir: tempfile::TempDir,
    relay: Option<RelayHandle>,
    shutdown: CancellationToken,
    events: broadcast::Receiver<RelayEvent>,
    /// Events received but not yet waited for: a wait never loses one.
    unclaimed: Vec<RelayEvent>,
    admin: AdminClient,
    sim: Simulator,
    chat_db: PathBuf,
    home: PathBuf,
    osascript: PathBuf,
    contact_id: String,
}

impl System {
    /// Service up, Mac paired, and one message received from the customer
    /// (so the service has the contact the CRM replies to); no daemon runs.
    async fn new() -> System {
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
        let mut sys = System {
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
            contact_id: String::new(),
        };
        sys.control(&Control::default());
        let daemon = sys.start_daemon(None).await;
        sys.sim
            .receive(CUSTOMER, "Is the flat still free?")
            .expect("incoming");
        let RelayEvent::ContactCreated { contact_id, .. } = sys
            .wait_for("the contact", |e| {
                matches!(e, RelayEvent::ContactCreated { .. })
            })
            .await
        else {
            unreachable!()
        };
        sys.contact_id = contact_id;
        kill_hard(daemon).await;
        sys
    }

    fn control_path(&self) -> PathBuf {
        self.dir.path().join("control.json")
    }

    fn control(&self, c: &Control) {
        c.write(&self.control_path()).expect("control");
    }

    fn osascript_calls(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("osascript.jsonl"))
            .map_or(0, |t| t.lines().count())
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Starts `whatsnap-mac run` (dying at `crash_at`, if set) and waits
    /// until the service has it connected.
    async fn start_daemon(&mut self, crash_at: Option<CrashPoint>) -> Child {
        let mut cmd = Command::new(EXE);
        cmd.arg("run")
            .arg("--home")
            .arg(&self.home)
            .arg("--chat-db")
            .arg(&self.chat_db)
            .arg("--osascript")
            .arg(&self.osascript)
            .env(CONTROL_ENV, self.control_path())
            .env(LOG_ENV, self.dir.path().join("osascript.jsonl"))
            .env("WHATSNAP_MACOS_VERSION", "15.3")
            .env("WHATSNAP_LOG", "debug")
            .env_remove(CRASH_AT_ENV)
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
        if let Some(point) = crash_at {
            cmd.env(CRASH_AT_ENV, point.name());
        }
        let child = cmd.spawn().expect("daemon starts");
        self.wait_for("the account to become Active", |e| {
            matches!(
                e,
                RelayEvent::AccountStatus {
                    status: whatsnap_proto::api::AccountState::Active,
                    ..
                }
            )
        })
        .await;
        child
    }

    async fn wait_for(&mut self, what: &str, want: impl Fn(&RelayEvent) -> bool) -> RelayEvent {
        self.wait_within(WAIT, what, want).await
    }

    async fn wait_within(
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

    async fn stop(mut self) {
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

async fn kill_hard(mut child: Child) {
    // Child::kill is SIGKILL: no chance to flush, ack or close the socket.
    child.kill().await.expect("kill -9");
}

/// Waits (on file system events, never by sleeping) until `path` exists.
async fn file_appears(path: &Path, what: &str, sys: &System) {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |e| {
        let _ = tx.send(e);
    })
    .expect("watcher");
    watcher
        .watch(
            path.parent().expect("a folder"),
            notify::RecursiveMode::NonRecursive,
        )
        .expect("watch");
    let appeared = tokio::time::timeout(WAIT, async {
        // Checked after the watch starts, so a file made in between counts.
        while !path.exists() {
            if rx.recv().await.is_none() {
                panic!("the watcher stopped");
            }
        }
    })
    .await;
    if appeared.is_err() {
        panic!(
            "gave up waiting for {what} ({}); daemon log:\n{}",
            path.display(),
            sys.daemon_log()
        );
    }
}

/// Issues one send, kills the daemon at `kill`, restarts it, and checks
/// what the customer and the CRM end up with.
async fn kill_at(step: &str, kill: Kill, expected: SendState) {
    let mut sys = System::new().await;
    let text = format!("Viewing confirmed for 3pm ({step})");
    let client_msg_id = format!("crm:{}", step.replace(' ', "-"));
    let hang = match kill {
        Kill::WhileOsascript("before_row") => Control {
            hang: true,
            ..Control::default()
        },
        Kill::WhileOsascript(_) => Control {
            hang_after_row: true,
            ..Control::default()
        },
        Kill::At(_) => Control::default(),
    };
    sys.control(&hang);
    let crash_at = match kill {
        Kill::At(point) => Some(point),
        Kill::WhileOsascript(_) => None,
    };
    let mut daemon = sys.start_daemon(crash_at).await;
    let queued = sys
        .admin
        .send_message(&sys.contact_id, &text, Some(&client_msg_id))
        .await
        .expect("queued at the service");
    assert_eq!(
        queued.client_msg_id.as_deref(),
        Some(client_msg_id.as_str())
    );

    match kill {
        Kill::At(point) => {
            let status = tokio::time::timeout(WAIT, daemon.wait())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{step}: the daemon never reached {}; log:\n{}",
                        point.name(),
                        sys.daemon_log()
                    )
                })
                .expect("wait");
            assert_eq!(
                status.signal(),
                Some(9),
                "{step}: the daemon must die by SIGKILL; log:\n{}",
                sys.daemon_log()
            );
        }
        Kill::WhileOsascript(stage) => {
            let marker = hanging_marker(&sys.control_path(), stage);
            file_appears(&marker, "the fake osascript to hang", &sys).await;
            kill_hard(daemon).await;
        }
    }

    // launchd starts it again; a late Messages then answers.
    let daemon = sys.start_daemon(None).await;
    sys.control(&Control::default());
    let id = client_msg_id.clone();
    // Past the daemon's 60 s window for a send it finds in flight.
    let within = Duration::from_secs(90);
    let RelayEvent::SendResult { state, guids, .. } = sys
        .wait_within(
            within,
            "the send result",
            |e| matches!(e, RelayEvent::SendResult { client_msg_id, .. } if *client_msg_id == id),
        )
        .await
    else {
        unreachable!()
    };

    // What the customer got: never two bubbles.
    let rows: Vec<(String, String)> = SendSim::open(&sys.chat_db)
        .expect("chat.db")
        .from_me_rows()
        .expect("rows")
        .into_iter()
        .filter(|(_, t)| *t == text)
        .collect();
    assert!(
        rows.len() <= 1,
        "{step}: {} rows for one send: {rows:?}; log:\n{}",
        rows.len(),
        sys.daemon_log()
    );
    assert!(
        sys.osascript_calls() <= 1,
        "{step}: Messages was asked {} times",
        sys.osascript_calls()
    );
    assert_eq!(state, expected, "{step}: log:\n{}", sys.daemon_log());
    match state {
        SendState::Sent => {
            assert_eq!(rows.len(), 1, "{step}: sent, so one row");
            assert_eq!(guids, vec![rows[0].0.clone()], "{step}");
        }
        _ => assert_eq!(
            sys.osascript_calls(),
            0,
            "{step}: not dispatched again after the restart"
        ),
    }

    // What the CRM shows.
    let outbound: Vec<_> = sys
        .admin
        .list_messages(Some(&sys.contact_id))
        .await
        .expect("messages")
        .into_iter()
        .filter(|m| m.client_msg_id.as_deref() == Some(client_msg_id.as_str()))
        .collect();
    assert_eq!(outbound.len(), 1, "{step}: {outbound:?}");
    let shown = match expected {
        SendState::Sent => OutboundState::Sent,
        _ => OutboundState::Unknown,
    };
    assert_eq!(outbound[0].state, Some(shown), "{step}");
    assert_eq!(outbound[0].guids, guids, "{step}");

    kill_hard(daemon).await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_daemon_at_any_step_of_a_send_never_sends_it_twice() {
    // Each step on its own service, Mac and daemon, all at once: most of
    // the time is spent waiting (one step waits out the 60 s window).
    let steps = STEPS.map(|(step, kill, expected)| kill_at(step, kill, expected));
    futures_util::future::join_all(steps).await;
}
