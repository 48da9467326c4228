//! `kill -9` at every step of the send state machine, with real processes:
//! `whatsnap-mac send` (the sender's state machine, on the daemon's store)
//! kills itself with SIGKILL at the chosen step (`WHATSNAP_SEND_CRASH_AT`),
//! then runs again with the same id, as launchd would restart the daemon.
//! Whatever the step, Messages never holds two rows for one send: a send that
//! reached `dispatching` is only correlated after the restart, never
//! dispatched again.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::{Connection, OpenFlags};
use whatsnap_mac::chatdb::typedstream;
use whatsnap_mac::send::{CRASH_AT_ENV, CrashPoint};
use whatsnap_mac::sim::Simulator;
use whatsnap_mac::sim::fake_osascript::{self, CONTROL_ENV, Control};
use whatsnap_proto::frame::{SendResult, SendState};

const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");
const ANN: &str = "+15551234567";

struct Mac {
    dir: tempfile::TempDir,
    chat_db: PathBuf,
    osascript: PathBuf,
}

impl Mac {
    fn new(control: &Control) -> Mac {
        let dir = tempfile::tempdir().expect("tempdir");
        let messages = dir.path().join("Messages");
        std::fs::create_dir(&messages).expect("Messages folder");
        let chat_db = messages.join("chat.db");
        Simulator::create(&chat_db).expect("chat.db");
        let osascript =
            fake_osascript::write_wrapper(dir.path(), Path::new(EXE), &chat_db).expect("wrapper");
        control
            .write(&dir.path().join("control.json"))
            .expect("control");
        Mac {
            dir,
            chat_db,
            osascript,
        }
    }

    fn send(&self, crash_at: Option<&str>, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(EXE);
        cmd.args(["send", "--json", "--confirm-secs", "1", "--id", "crash-me"])
            .args(args)
            .env("WHATSNAP_HOME", self.dir.path().join("home"))
            .env("WHATSNAP_CHAT_DB", &self.chat_db)
            .env("WHATSNAP_OSASCRIPT", &self.osascript)
            .env("WHATSNAP_MACOS_VERSION", "15.3")
            .env(CONTROL_ENV, self.dir.path().join("control.json"))
            .env_remove(CRASH_AT_ENV);
        if let Some(at) = crash_at {
            cmd.env(CRASH_AT_ENV, at);
        }
        cmd.output().expect("run send")
    }

    /// (text, service, error) of every from-me row.
    fn sent(&self) -> Vec<(String, String, i64)> {
        let db = Connection::open_with_flags(
            format!("file:{}?mode=ro", self.chat_db.display()),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .expect("open");
        let mut stmt = db
            .prepare(
                "SELECT text, attributedBody, service, error FROM message
                 WHERE is_from_me = 1 ORDER BY ROWID",
            )
            .expect("prepare");
        stmt.query_map([], |r| {
            let text: Option<String> = r.get(0)?;
            let body: Option<Vec<u8>> = r.get(1)?;
            Ok((
                typedstream::message_text(body.as_deref(), text.as_deref())
                    .expect("body")
                    .unwrap_or_default(),
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }
}

fn result_of(out: &std::process::Output) -> SendResult {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no result ({e}): {stdout:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Crashes at `at`, restarts, and returns the final result and the rows.
fn crash_and_restart(
    control: &Control,
    at: &str,
    args: &[&str],
) -> (SendResult, Vec<(String, String, i64)>) {
    let mac = Mac::new(control);
    let crashed = mac.send(Some(at), args);
    assert_eq!(
        crashed.status.signal(),
        Some(9),
        "{at}: the process must die by SIGKILL; stderr {}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    let after = mac.send(None, args);
    let result = result_of(&after);
    // And a third run only reports: the state is final.
    let again = result_of(&mac.send(None, args));
    assert_eq!(again, result, "{at}: the stored result is final");
    (result, mac.sent())
}

#[test]
fn kill_9_at_every_step_never_gives_two_rows_for_one_send() {
    let args = ["--to", ANN, "exactly once"];
    for point in CrashPoint::ALL {
        let (result, rows) = crash_and_restart(&Control::default(), point.name(), &args);
        let copies = rows.iter().filter(|r| r.0 == "exactly once").count();
        assert!(copies <= 1, "{point:?}: {copies} rows");
        match point {
            // Nothing committed: the restarted run sends it, once.
            CrashPoint::Taken => assert_eq!((result.state, copies), (SendState::Sent, 1)),
            // Committed but never handed to Messages: correlated only, so
            // the honest answer is unknown and nothing is sent.
            CrashPoint::Dispatching => {
                assert_eq!(
                    (result.state, copies),
                    (SendState::Unknown, 0),
                    "{result:?}"
                );
            }
            // Messages wrote the row before the crash: correlation finds it.
            _ => assert_eq!((result.state, copies), (SendState::Sent, 1), "{point:?}"),
        }
    }
}

#[test]
fn kill_9_during_an_sms_fallback_never_sends_either_attempt_twice() {
    let control = Control {
        not_imessage: vec![ANN.into()],
        ..Control::default()
    };
    let args = ["--to", ANN, "fallback once"];
    // The second time a step is reached is the SMS attempt.
    for point in [CrashPoint::Dispatching, CrashPoint::Dispatched] {
        for nth in [1, 2] {
            let at = format!("{}:{nth}", point.name());
            let (result, rows) = crash_and_restart(&control, &at, &args);
            let imessage = rows.iter().filter(|r| r.1 == "iMessage").count();
            let sms = rows.iter().filter(|r| r.1 == "SMS").count();
            assert!(imessage <= 1 && sms <= 1, "{at}: {rows:?}");
            if result.state == SendState::Sent {
                assert_eq!(result.service.as_deref(), Some("SMS"), "{at}");
                assert_eq!(sms, 1, "{at}");
            } else {
                assert_eq!(result.state, SendState::Unknown, "{at}: {result:?}");
            }
        }
    }
}

#[test]
fn kill_9_between_the_text_and_a_file_sends_the_rest_once() {
    let mac_file = tempfile::tempdir().expect("tempdir");
    let file = mac_file.path().join("menu.pdf");
    std::fs::write(&file, b"%PDF").expect("file");
    let path = file.to_str().expect("utf-8");
    let args = ["--to", ANN, "--file", path, "tonight's menu"];
    for at in ["judged:1", "dispatching:2", "dispatched:2"] {
        let (result, rows) = crash_and_restart(&Control::default(), at, &args);
        let texts = rows.iter().filter(|r| r.0 == "tonight's menu").count();
        let files = rows.iter().filter(|r| r.0 == "\u{FFFC}").count();
        assert!(texts <= 1 && files <= 1, "{at}: {rows:?}");
        assert_eq!(texts, 1, "{at}: the text went out before the crash");
        match at {
            "dispatching:2" => assert_eq!((result.state, files), (SendState::Unknown, 0)),
            _ => assert_eq!(
                (result.state, files),
                (SendState::Sent, 1),
                "{at}: {result:?}"
            ),
        }
    }
}
