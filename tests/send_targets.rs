//! Every send target and every failure, through the real path: the
//! `whatsnap-mac send` process (the sender's state machine and runner) spawning
//! the fake `osascript` process, which writes a WAL chat.db as Messages would.
//! Each test asserts what the user sees (the result, the exit code) and what
//! Messages holds afterwards (the rows), and that every call was one of our
//! constant scripts with the data only as arguments.

use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use whatsnap_mac::chatdb::typedstream;
use whatsnap_mac::sim::Simulator;
use whatsnap_mac::sim::fake_osascript::{self, CONTROL_ENV, Control, LOG_ENV};
use whatsnap_mac::sim::sends::{ATTACHMENT_BODY, SendSim};
use whatsnap_proto::frame::{SendResult, SendState};

const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");
const ANN: &str = "+15551234567";

struct Mac {
    dir: tempfile::TempDir,
    chat_db: PathBuf,
    osascript: PathBuf,
    macos: String,
}

/// One chat.db row as a user would look at it in Messages.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    guid: String,
    from_me: bool,
    text: Option<String>,
    service: String,
    chat: Option<String>,
    is_sent: bool,
    error: i64,
    transfer: Option<String>,
}

impl Mac {
    fn new() -> Mac {
        let dir = tempfile::tempdir().expect("tempdir");
        let messages = dir.path().join("Messages");
        std::fs::create_dir(&messages).expect("Messages folder");
        let chat_db = messages.join("chat.db");
        Simulator::create(&chat_db).expect("chat.db");
        let osascript =
            fake_osascript::write_wrapper(dir.path(), Path::new(EXE), &chat_db).expect("wrapper");
        Mac {
            dir,
            chat_db,
            osascript,
            macos: "15.3".into(),
        }
    }

    /// Runs the simulated Messages (and tells the sender) as macOS `version`.
    fn on_macos(mut self, version: &str) -> Mac {
        self.macos = version.into();
        self
    }

    fn control(&self, mut c: Control) {
        c.macos = Some(self.macos.clone());
        c.write(&self.dir.path().join("control.json"))
            .expect("control");
    }

    fn sim(&self) -> SendSim {
        SendSim::open(&self.chat_db).expect("sim")
    }

    /// `whatsnap-mac send --json ARGS...`: exit code and the printed result.
    fn send(&self, args: &[&str]) -> (i32, SendResult) {
        let out = Command::new(EXE)
            .arg("send")
            .arg("--json")
            .args(args)
            .env("WHATSNAP_HOME", self.dir.path().join("home"))
            .env("WHATSNAP_CHAT_DB", &self.chat_db)
            .env("WHATSNAP_OSASCRIPT", &self.osascript)
            .env("WHATSNAP_MACOS_VERSION", &self.macos)
            .env(CONTROL_ENV, self.dir.path().join("control.json"))
            .env(LOG_ENV, self.dir.path().join("osascript.jsonl"))
            .output()
            .expect("run send");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let result = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "send printed no result ({e}): stdout {stdout:?} stderr {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().expect("exit code"), result)
    }

    /// Every osascript call: (script name, arguments).
    fn calls(&self) -> Vec<(String, Vec<String>)> {
        let Ok(text) = std::fs::read_to_string(self.dir.path().join("osascript.jsonl")) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("log line");
                (
                    v["script"].as_str().expect("script").to_owned(),
                    v["args"]
                        .as_array()
                        .expect("args")
                        .iter()
                        .map(|a| a.as_str().expect("string arg").to_owned())
                        .collect(),
                )
            })
            .collect()
    }

    fn scripts(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.0).collect()
    }

    fn rows(&self) -> Vec<Row> {
        let db = Connection::open_with_flags(
            format!("file:{}?mode=ro", self.chat_db.display()),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .expect("open");
        let mut stmt = db
            .prepare(
                "SELECT m.guid, m.is_from_me, m.text, m.attributedBody, m.service, c.guid,
                        m.is_sent, m.error, a.transfer_name
                   FROM message m
                   LEFT JOIN chat_message_join j ON j.message_id = m.ROWID
                   LEFT JOIN chat c ON c.ROWID = j.chat_id
                   LEFT JOIN message_attachment_join maj ON maj.message_id = m.ROWID
                   LEFT JOIN attachment a ON a.ROWID = maj.attachment_id
                  ORDER BY m.ROWID",
            )
            .expect("prepare");
        stmt.query_map([], |r| {
            let body: Option<Vec<u8>> = r.get(3)?;
            let text: Option<String> = r.get(2)?;
            Ok(Row {
                guid: r.get(0)?,
                from_me: r.get::<_, i64>(1)? == 1,
                text: typedstream::message_text(body.as_deref(), text.as_deref())
                    .expect("decodable body"),
                service: r.get(4)?,
                chat: r.get(5)?,
                is_sent: r.get::<_, i64>(6)? == 1,
                error: r.get(7)?,
                transfer: r.get(8)?,
            })
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    fn sent_rows(&self) -> Vec<Row> {
        self.rows().into_iter().filter(|r| r.from_me).collect()
    }
}

fn error_code(r: &SendResult) -> &str {
    r.error.as_ref().map_or("", |e| e.code.as_str())
}

#[test]
fn a_text_to_a_person_with_a_chat_goes_to_that_chat_by_its_exact_guid() {
    let mac = Mac::new();
    mac.control(Control::default());
    Simulator::open(&mac.chat_db)
        .expect("sim")
        .receive(ANN, "hi")
        .expect("incoming");
    let (code, result) = mac.send(&["--to", ANN, "On my way"]);
    assert_eq!((code, result.state), (0, SendState::Sent), "{result:?}");
    assert_eq!(result.service.as_deref(), Some("iMessage"));
    assert_eq!(
        mac.calls(),
        vec![(
            "send_to_chat".to_string(),
            vec!["On my way".to_string(), format!("iMessage;-;{ANN}")]
        )]
    );
    let sent = mac.sent_rows();
    assert_eq!(sent.len(), 1);
    assert_eq!(result.guids, vec![sent[0].guid.clone()]);
    assert_eq!(sent[0].text.as_deref(), Some("On my way"));
    assert_eq!(sent[0].chat.as_deref(), Some("iMessage;-;+15551234567"));
}

#[test]
fn tahoe_any_guids_are_used_exactly_as_stored_for_one_to_one_and_group_chats() {
    let mac = Mac::new().on_macos("26.1");
    mac.control(Control::default());
    let mut sim = mac.sim();
    let direct = sim
        .create_direct_chat("any;-;+15551234567", ANN, "iMessage")
        .expect("direct");
    let group = sim
        .create_group(
            "any;+;5e0b0c7a1f2d4b3c8d9e0f1a2b3c4d5e",
            &[ANN, "+15557654321"],
            "Flatmates",
            "iMessage",
        )
        .expect("group");
    let (code, one) = mac.send(&["--chat", &direct, "to one"]);
    assert_eq!((code, one.state), (0, SendState::Sent), "{one:?}");
    let (code, many) = mac.send(&["--chat", &group, "to all"]);
    assert_eq!((code, many.state), (0, SendState::Sent), "{many:?}");
    assert_eq!(
        mac.calls(),
        vec![
            ("send_to_chat".into(), vec!["to one".into(), direct.clone()]),
            ("send_to_chat".into(), vec!["to all".into(), group.clone()]),
        ],
        "never rewritten into a service type"
    );
    let chats: Vec<_> = mac.sent_rows().into_iter().map(|r| r.chat).collect();
    assert_eq!(chats, vec![Some(direct), Some(group)]);
}

#[test]
fn a_person_with_no_chat_is_reached_through_the_imessage_accounts_participant() {
    let mac = Mac::new();
    mac.control(Control::default());
    let (code, result) = mac.send(&["--to", "new.friend@example.com", "Hello!"]);
    assert_eq!((code, result.state), (0, SendState::Sent), "{result:?}");
    assert_eq!(mac.scripts(), vec!["send_to_handle"]);
    let sent = mac.sent_rows();
    assert_eq!(
        sent[0].chat.as_deref(),
        Some("iMessage;-;new.friend@example.com"),
        "the send started the conversation"
    );
}

#[test]
fn on_monterey_the_service_dialect_is_chosen_from_the_probed_version() {
    let mac = Mac::new().on_macos("12.7.4");
    mac.control(Control::default());
    let (code, result) = mac.send(&["--to", ANN, "hi from 12"]);
    assert_eq!((code, result.state), (0, SendState::Sent), "{result:?}");
    assert_eq!(mac.scripts(), vec!["send_to_handle_bigsur"]);
}

#[test]
fn a_group_chat_is_sent_to_by_its_guid() {
    let mac = Mac::new();
    mac.control(Control::default());
    let group = mac
        .sim()
        .create_group(
            "iMessage;+;chat493021993821",
            &[ANN, "bob@example.com"],
            "Team",
            "iMessage",
        )
        .expect("group");
    let (code, result) = mac.send(&["--chat", &group, "Standup in 5"]);
    assert_eq!((code, result.state), (0, SendState::Sent), "{result:?}");
    assert_eq!(mac.sent_rows()[0].chat.as_deref(), Some(group.as_str()));
}

#[test]
fn files_are_copied_inside_the_messages_folder_first_and_confirmed_by_transfer_name() {
    let mac = Mac::new();
    mac.control(Control::default());
    let name = "plan \"v2\" it's & $(touch pwned) `x`\nnew ü.pdf";
    let original = mac.dir.path().join(name);
    std::fs::write(&original, b"%PDF-1.7").expect("file");
    let (code, result) = mac.send(&[
        "--to",
        ANN,
        "--file",
        original.to_str().expect("utf-8"),
        "The plan",
    ]);
    assert_eq!((code, result.state), (0, SendState::Sent), "{result:?}");
    let calls = mac.calls();
    assert_eq!(calls.len(), 2, "text, then the file");
    assert_eq!(calls[1].0, "send_file_to_handle");
    let staged = PathBuf::from(&calls[1].1[0]);
    let root = mac
        .chat_db
        .parent()
        .expect("folder")
        .join("Attachments/whatsnap");
    assert!(staged.starts_with(&root), "{staged:?} not under {root:?}");
    assert_eq!(
        staged.file_name().and_then(|n| n.to_str()),
        Some(name),
        "the name arrived byte for byte"
    );
    assert_eq!(std::fs::read(&staged).expect("staged"), b"%PDF-1.7");
    assert!(original.exists(), "the user's file is left alone");
    assert!(!mac.dir.path().join("pwned").exists());
    let sent = mac.sent_rows();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].text.as_deref(), Some(ATTACHMENT_BODY));
    assert_eq!(sent[1].transfer.as_deref(), Some(name));
    assert_eq!(
        result.guids,
        sent.iter().map(|r| r.guid.clone()).collect::<Vec<_>>(),
        "every resulting row"
    );
}

#[test]
fn automation_denied_is_one_clear_error_naming_system_settings_and_the_binary() {
    let mac = Mac::new();
    mac.control(Control {
        fail_code: Some(-1743),
        ..Control::default()
    });
    let (code, result) = mac.send(&["--to", ANN, "x"]);
    assert_eq!((code, result.state), (1, SendState::Failed));
    assert_eq!(error_code(&result), "automation_denied");
    let message = &result.error.as_ref().expect("error").message;
    assert!(
        message.contains("System Settings > Privacy & Security > Automation"),
        "{message}"
    );
    assert!(
        message.contains("whatsnap-mac"),
        "names the binary: {message}"
    );
    assert_eq!(
        mac.calls().len(),
        1,
        "no SMS fallback for a permission problem"
    );
    assert!(mac.sent_rows().is_empty());
}

#[test]
fn a_script_error_before_dispatch_is_a_definite_failure() {
    let mac = Mac::new();
    mac.control(Control {
        fail_code: Some(-1700),
        ..Control::default()
    });
    let (code, result) = mac.send(&["--to", ANN, "x"]);
    assert_eq!((code, result.state), (1, SendState::Failed));
    assert_eq!(error_code(&result), "applescript_1700");
}

#[test]
fn a_hung_osascript_is_killed_at_the_timeout_and_the_send_is_unknown_not_retried() {
    let mac = Mac::new();
    mac.control(Control {
        hang: true,
        ..Control::default()
    });
    let started = std::time::Instant::now();
    let (code, result) = mac.send(&[
        "--timeout-secs",
        "1",
        "--confirm-secs",
        "1",
        "--to",
        ANN,
        "x",
    ]);
    assert_eq!((code, result.state), (3, SendState::Unknown), "{result:?}");
    let message = &result.error.as_ref().expect("error").message;
    assert!(message.contains("check the phone"), "{message}");
    assert_eq!(mac.calls().len(), 1, "never dispatched twice");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn a_slow_messages_that_succeeds_is_sent() {
    let mac = Mac::new();
    mac.control(Control {
        delay_ms: 700,
        ..Control::default()
    });
    let (code, result) = mac.send(&["--to", ANN, "slow but sure"]);
    assert_eq!((code, result.state), (0, SendState::Sent), "{result:?}");
}

#[test]
fn accepted_without_a_row_is_unknown() {
    let mac = Mac::new();
    mac.control(Control {
        no_row: true,
        ..Control::default()
    });
    let (code, result) = mac.send(&["--confirm-secs", "1", "--to", ANN, "lost"]);
    assert_eq!((code, result.state), (3, SendState::Unknown), "{result:?}");
    assert_eq!(mac.calls().len(), 1);
}

#[test]
fn a_number_not_on_imessage_falls_back_to_sms_and_the_result_says_so() {
    let mac = Mac::new();
    mac.control(Control {
        not_imessage: vec![ANN.into()],
        ..Control::default()
    });
    let (code, result) = mac.send(&["--to", ANN, "Your table is ready"]);
    assert_eq!((code, result.state), (0, SendState::Sent), "{result:?}");
    assert_eq!(result.service.as_deref(), Some("SMS"));
    assert_eq!(mac.scripts(), vec!["send_to_handle", "send_sms_to_handle"]);
    let sent = mac.sent_rows();
    assert_eq!(
        sent.iter()
            .map(|r| (r.service.as_str(), r.error, r.chat.as_deref()))
            .collect::<Vec<_>>(),
        vec![
            ("iMessage", 22, Some("iMessage;-;+15551234567")),
            ("SMS", 0, Some("SMS;-;+15551234567"))
        ]
    );
    assert_eq!(result.guids.len(), 2, "both rows the send produced");
}

#[test]
fn imessage_only_reports_the_failure_instead_of_falling_back() {
    let mac = Mac::new();
    mac.control(Control {
        not_imessage: vec![ANN.into()],
        ..Control::default()
    });
    let (code, result) = mac.send(&["--service", "imessage", "--to", ANN, "x"]);
    assert_eq!((code, result.state), (1, SendState::Failed), "{result:?}");
    assert_eq!(error_code(&result), "messages_error_22");
    assert_eq!(mac.scripts(), vec!["send_to_handle"]);
}

#[test]
fn sms_only_goes_straight_to_the_sms_account_and_fails_clearly_without_one() {
    let mac = Mac::new();
    mac.control(Control::default());
    let (code, result) = mac.send(&["--service", "sms", "--to", ANN, "by sms"]);
    assert_eq!((code, result.state), (0, SendState::Sent), "{result:?}");
    assert_eq!(result.service.as_deref(), Some("SMS"));
    mac.control(Control {
        no_sms: true,
        ..Control::default()
    });
    let (code, result) = mac.send(&["--service", "sms", "--to", "+15550001111", "x"]);
    assert_eq!((code, result.state), (1, SendState::Failed), "{result:?}");
    assert_eq!(error_code(&result), "applescript_1719");
}

#[test]
fn the_tahoe_ghost_row_is_reported_as_a_failure_not_success() {
    let mac = Mac::new().on_macos("26.3.1");
    mac.control(Control {
        ghost_groups: true,
        ..Control::default()
    });
    let group = mac
        .sim()
        .create_group(
            "any;-;chat123456789",
            &[ANN, "+15557654321"],
            "",
            "iMessage",
        )
        .expect("group");
    let (code, result) = mac.send(&["--chat", &group, "hello group"]);
    assert_eq!((code, result.state), (1, SendState::Failed), "{result:?}");
    assert_eq!(error_code(&result), "ghost_row");
    let rows = mac.sent_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].chat, None, "the ghost is joined to no chat");
}

#[test]
fn a_chat_messages_does_not_list_is_reached_through_the_person() {
    let mac = Mac::new();
    let chat = mac
        .sim()
        .create_direct_chat("any;-;+15551234567", ANN, "iMessage")
        .expect("chat");
    mac.control(Control {
        unknown_chats: vec![chat.clone()],
        ..Control::default()
    });
    let (code, result) = mac.send(&["--chat", &chat, "still reaches Ann"]);
    assert_eq!((code, result.state), (0, SendState::Sent), "{result:?}");
    assert_eq!(mac.scripts(), vec!["send_to_chat", "send_to_handle"]);
}

#[test]
fn a_repeated_send_id_answers_the_stored_result_and_never_sends_twice() {
    let mac = Mac::new();
    mac.control(Control::default());
    let first = mac.send(&["--id", "order-17", "--to", ANN, "Your order shipped"]);
    assert_eq!(first.1.state, SendState::Sent);
    // Messages later marks it failed (red exclamation mark): the stored
    // result of this send does not change, and nothing is resent.
    mac.sim()
        .fail_later(&first.1.guids[0], 22)
        .expect("fail later");
    let again = mac.send(&["--id", "order-17", "--to", ANN, "Your order shipped"]);
    assert_eq!(again, first);
    assert_eq!(mac.calls().len(), 1);
    let row = &mac.sent_rows()[0];
    assert_eq!((row.is_sent, row.error), (false, 22));
}

#[test]
fn hostile_texts_reach_osascript_byte_for_byte_as_arguments() {
    let mac = Mac::new();
    mac.control(Control::default());
    let texts = [
        "quotes \" ' and backslashes \\ \\\\ \\\" and \\n",
        "line one\nline two\r\nthree\ttab",
        "\" & do shell script \"touch /tmp/whatsnap-pwned\" & \"",
        "\u{202E}RTL override\u{200F} mark \u{2028} sep",
        &"😀👋🏽".repeat(64 * 1024 / 12),
        "-e not an option",
    ];
    for (i, text) in texts.iter().enumerate() {
        let (code, result) = mac.send(&["--to", ANN, text]);
        assert_eq!((code, result.state), (0, SendState::Sent), "text {i}");
    }
    let calls = mac.calls();
    assert_eq!(calls.len(), texts.len());
    for (call, text) in calls.iter().zip(texts) {
        assert_eq!(call.1[0], text, "argument byte for byte");
    }
    let bodies: Vec<_> = mac.sent_rows().into_iter().map(|r| r.text).collect();
    assert_eq!(
        bodies,
        texts
            .iter()
            .map(|t| Some((*t).to_owned()))
            .collect::<Vec<_>>()
    );
    assert!(!Path::new("/tmp/whatsnap-pwned").exists());
}
