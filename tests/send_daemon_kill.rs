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

mod daemon_support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use daemon_support::{System, WAIT, kill_hard};
use tokio::process::Child;
use whatsnap_mac::send::{CRASH_AT_ENV, CrashPoint};
use whatsnap_mac::sim::fake_osascript::{CONTROL_ENV, Control, hanging_marker};
use whatsnap_mac::sim::sends::SendSim;
use whatsnap_proto::api::OutboundState;
use whatsnap_proto::frame::SendState;
use whatsnap_relay::RelayEvent;

const CUSTOMER: &str = "+15551234567";

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

/// Service up, Mac paired, and one message received from the customer
/// (so the service has the contact the CRM replies to); no daemon runs.
/// Returns the system and that contact's id.
async fn with_contact() -> (System, String) {
    let mut sys = System::new().await;
    sys.control(&Control::default());
    let daemon = start_daemon(&mut sys, None).await;
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
    kill_hard(daemon).await;
    (sys, contact_id)
}

fn osascript_calls(sys: &System) -> usize {
    std::fs::read_to_string(sys.osascript_log()).map_or(0, |t| t.lines().count())
}

/// Starts `whatsnap-mac run` (dying at `crash_at`, if set), the fake
/// osascript following the control file, and waits until the service has
/// it connected.
async fn start_daemon(sys: &mut System, crash_at: Option<CrashPoint>) -> Child {
    let control = sys.control_path();
    sys.start_daemon_with(|cmd| {
        cmd.env(CONTROL_ENV, control)
            .env("WHATSNAP_MACOS_VERSION", "15.3")
            .env_remove(CRASH_AT_ENV);
        if let Some(point) = crash_at {
            cmd.env(CRASH_AT_ENV, point.name());
        }
    })
    .await
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
    let (mut sys, contact_id) = with_contact().await;
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
    let mut daemon = start_daemon(&mut sys, crash_at).await;
    let queued = sys
        .admin
        .send_message(&contact_id, &text, Some(&client_msg_id))
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
    let daemon = start_daemon(&mut sys, None).await;
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
        osascript_calls(&sys) <= 1,
        "{step}: Messages was asked {} times",
        osascript_calls(&sys)
    );
    assert_eq!(state, expected, "{step}: log:\n{}", sys.daemon_log());
    match state {
        SendState::Sent => {
            assert_eq!(rows.len(), 1, "{step}: sent, so one row");
            assert_eq!(guids, vec![rows[0].0.clone()], "{step}");
        }
        _ => assert_eq!(
            osascript_calls(&sys),
            0,
            "{step}: not dispatched again after the restart"
        ),
    }

    // What the CRM shows.
    let outbound: Vec<_> = sys
        .admin
        .list_messages(Some(&contact_id))
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
