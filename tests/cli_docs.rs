//! Shell completions and the man page come from the real command line
//! definitions: every command a user can type appears in them.

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");

fn run(args: &[&str]) -> String {
    let out = Command::new(EXE).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn zsh_completions_offer_every_command() {
    let script = run(&["completions", "zsh"]);
    assert!(
        script.starts_with("#compdef whatsnap-mac"),
        "{}",
        &script[..80.min(script.len())]
    );
    for command in [
        "run", "pair", "status", "doctor", "install", "send", "messages",
    ] {
        assert!(
            script.contains(&format!("'{command}:")),
            "{command} missing"
        );
    }
}

#[test]
fn the_man_page_documents_the_commands_and_global_options() {
    let page = run(&["man"]);
    assert!(page.contains(".TH whatsnap-mac 1"), "not a man page");
    for text in ["pair", "status", "doctor", "\\-\\-home", "\\-\\-chat\\-db"] {
        assert!(page.contains(text), "{text} missing from the man page");
    }
}
