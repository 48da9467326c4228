//! The Messages simulator as real processes: `whatsnap-mac sim init`,
//! `sim receive`, and the `osascript` wrapper driven with the exact command
//! line the daemon uses (`osascript - <text> <target>`, script on stdin).
//!
//! These pin down the send path's safety property end to end: message text
//! travels only as an argument, so quotes, backslashes, newlines, emoji and
//! AppleScript or shell syntax arrive byte for byte and are never run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rusqlite::{Connection, OpenFlags};
use whatsnap_mac::send::scripts;
use whatsnap_mac::sim::body::attributed_body;
use whatsnap_mac::sim::fake_osascript::{self, LOG_ENV};

const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");

/// The text the brief of this test names: AppleScript string syntax that
/// would run `do shell script` if it were ever spliced into source, plus a
/// literal backslash, a literal `\n`, a real newline and a skin-toned emoji.
const HOSTILE: &str =
    "He said \"hi\" \\ back\\nslash\n& 👋🏽 \" & do shell script \"touch /tmp/pwned\" & \"";

struct Mac {
    dir: tempfile::TempDir,
    chat_db: PathBuf,
    wrapper: PathBuf,
    log: PathBuf,
}

impl Mac {
    /// A simulated Mac: a chat.db made by `sim init` and an osascript wrapper.
    fn new() -> Mac {
        let dir = tempfile::tempdir().expect("temp dir");
        let chat_db = dir.path().join("chat.db");
        let out = Command::new(EXE)
            .args(["sim", "init", "--chat-db"])
            .arg(&chat_db)
            .output()
            .expect("run sim init");
        assert!(out.status.success(), "sim init: {}", stderr(&out));
        assert!(chat_db.exists());
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let wrapper =
            fake_osascript::write_wrapper(&bin, Path::new(EXE), &chat_db).expect("wrapper");
        let log = dir.path().join("osascript.jsonl");
        Mac {
            dir,
            chat_db,
            wrapper,
            log,
        }
    }

    /// `sim receive`; returns the printed message guid.
    fn receive(&self, from: &str, text: &str) -> String {
        let out = Command::new(EXE)
            .args(["sim", "receive", "--chat-db"])
            .arg(&self.chat_db)
            .args(["--from", from, text])
            .output()
            .expect("run sim receive");
        assert!(out.status.success(), "sim receive: {}", stderr(&out));
        String::from_utf8(out.stdout)
            .expect("utf-8 guid")
            .trim_end()
            .to_owned()
    }

    /// Runs the wrapper exactly as the daemon runs /usr/bin/osascript.
    fn osascript(&self, args: &[&str], script: &str) -> Output {
        let mut child = Command::new(&self.wrapper)
            .args(args)
            .env(LOG_ENV, &self.log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the osascript wrapper");
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(script.as_bytes())
            .expect("write the script to stdin");
        child.wait_with_output().expect("wait for osascript")
    }

    /// Read-only, as the daemon opens chat.db (and so it cannot checkpoint).
    fn read(&self) -> Connection {
        Connection::open_with_flags(
            format!("file:{}?mode=ro", self.chat_db.display()),
            OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open chat.db read-only")
    }

    fn message_count(&self) -> i64 {
        self.read()
            .query_row("SELECT count(*) FROM message", [], |r| r.get(0))
            .expect("count messages")
    }

    /// The attributedBody of each from-me row joined to `chat_guid`.
    fn sent_bodies(&self, chat_guid: &str) -> Vec<Vec<u8>> {
        let db = self.read();
        let mut stmt = db
            .prepare(
                "SELECT m.attributedBody FROM message m \
                 JOIN chat_message_join j ON j.message_id = m.ROWID \
                 JOIN chat c ON c.ROWID = j.chat_id \
                 WHERE c.guid = ?1 AND m.is_from_me = 1 AND m.is_sent = 1 \
                 ORDER BY m.ROWID",
            )
            .expect("prepare");
        stmt.query_map([chat_guid], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    fn log_lines(&self) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => panic!("read log: {err}"),
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn receive_prints_the_guid_of_a_row_a_reader_can_see() {
    let mac = Mac::new();
    let guid = mac.receive("+15551234567", "hello from the simulator");
    let parsed = uuid::Uuid::parse_str(&guid).expect("guid is a UUID");
    assert_eq!(guid, parsed.hyphenated().to_string().to_uppercase());
    let (chat, from_me): (String, i64) = mac
        .read()
        .query_row(
            "SELECT c.guid, m.is_from_me FROM message m \
             JOIN chat_message_join j ON j.message_id = m.ROWID \
             JOIN chat c ON c.ROWID = j.chat_id WHERE m.guid = ?1",
            [&guid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("received row joined to its chat");
    assert_eq!((chat.as_str(), from_me), ("iMessage;-;+15551234567", 0));
}

#[test]
fn init_refuses_to_overwrite_an_existing_database() {
    let mac = Mac::new();
    let out = Command::new(EXE)
        .args(["sim", "init", "--chat-db"])
        .arg(&mac.chat_db)
        .output()
        .expect("run sim init");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

#[test]
fn hostile_text_reaches_the_chat_byte_for_byte_and_runs_nothing() {
    let mac = Mac::new();
    let chat = "iMessage;-;+15551234567";
    mac.receive("+15551234567", "hi");
    let pwned = Path::new("/tmp/pwned");
    let pwned_before = pwned.exists();

    let out = mac.osascript(&["-", HOSTILE, chat], scripts::SEND_TO_CHAT.source);

    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(out.stdout.is_empty(), "nothing on stdout, as osascript");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert_eq!(
        mac.sent_bodies(chat),
        vec![attributed_body(HOSTILE)],
        "one from-me row carrying exactly the text"
    );
    assert_eq!(
        mac.log_lines(),
        vec![serde_json::json!({ "script": "send_to_chat", "args": [HOSTILE, chat] })],
        "the arguments arrived byte for byte"
    );
    if !pwned_before {
        assert!(!pwned.exists(), "the text was executed");
    }
}

#[test]
fn shell_syntax_in_arguments_is_not_run_by_the_wrapper() {
    let mac = Mac::new();
    let marker = mac.dir.path().join("sh-ran");
    let text = format!(
        "$(touch '{m}') `touch '{m}'` ; touch '{m}' \"$@\" $0 '",
        m = marker.display()
    );
    let out = mac.osascript(
        &["-", &text, "friend@example.com"],
        scripts::SEND_TO_HANDLE.source,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(!marker.exists(), "the shell evaluated an argument");
    assert_eq!(
        mac.sent_bodies("iMessage;-;friend@example.com"),
        vec![attributed_body(&text)],
        "a send to a new handle starts its chat"
    );
    assert_eq!(
        mac.log_lines(),
        vec![serde_json::json!({
            "script": "send_to_handle",
            "args": [text, "friend@example.com"],
        })]
    );
}

#[test]
fn an_unknown_script_is_refused_and_writes_nothing() {
    let mac = Mac::new();
    mac.receive("+15551234567", "hi");
    let before = mac.message_count();
    let out = mac.osascript(
        &["-", "x", "iMessage;-;+15551234567"],
        "on run argv\n\tdo shell script \"touch /tmp/pwned\"\nend run\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("(-2740)"), "{}", stderr(&out));
    assert_eq!(mac.message_count(), before, "no row written");
    assert!(mac.log_lines().is_empty(), "refused before acting");
}

#[test]
fn a_missing_chat_fails_with_1728_and_writes_nothing() {
    let mac = Mac::new();
    let out = mac.osascript(
        &["-", "hello", "iMessage;-;+15550000000"],
        scripts::SEND_TO_CHAT.source,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("(-1728)"), "{err}");
    assert!(
        err.contains("Can’t get chat id \"iMessage;-;+15550000000\""),
        "{err}"
    );
    assert_eq!(mac.message_count(), 0);
}
