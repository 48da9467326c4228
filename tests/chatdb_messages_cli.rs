//! `whatsnap-mac messages` as a user runs it: a real process over a chat.db
//! written by the simulator, one JSON object per line on stdout, nothing on
//! stderr when it is not a terminal.

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");

fn run(args: &[&str]) -> (String, String) {
    let out = Command::new(EXE).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    )
}

#[test]
fn messages_prints_each_event_data_with_its_type_one_per_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chat.db");
    let db_s = db.to_str().expect("utf-8 path");
    run(&["sim", "init", "--release", "tahoe", "--chat-db", db_s]);
    for text in ["first", "second \"quoted\"", "third 👋🏽"] {
        run(&[
            "sim",
            "receive",
            "--chat-db",
            db_s,
            "--from",
            "+15551230001",
            text,
        ]);
    }
    let (stdout, stderr) = run(&["--chat-db", db_s, "messages", "--since-rowid", "0"]);
    assert_eq!(stderr, "", "no progress when stderr is not a terminal");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["type"], "event.message");
    assert_eq!(lines[1]["text"], "second \"quoted\"");
    assert_eq!(lines[2]["chat_guid"], "any;-;+15551230001");
    assert!(
        lines[0]["event_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("msg:"))
    );

    let (stdout, _) = run(&["--chat-db", db_s, "messages", "--last", "1"]);
    let last: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(last["text"], "third 👋🏽");
}

#[test]
fn messages_on_a_missing_database_says_where_it_looked() {
    let out = Command::new(EXE)
        .args(["--chat-db", "/nonexistent/chat.db", "messages"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/chat.db"), "{err}");
}
