//! `install`, `uninstall`, `restart` and `logs` against the stand-in
//! `launchctl` in a temporary HOME: the LaunchAgent written, the launchctl
//! calls made, and what the user is told, including launchctl's failures.

mod mac_support;

use std::io::{BufRead, Write};
use std::process::Stdio;

use mac_support::{LABEL, Mac};

/// The plist in `launchd/`, which is what `install` writes for a user whose
/// HOME is /Users/you.
const SHIPPED_PLIST: &str = include_str!("../launchd/com.whatsnap.mac.plist");

#[test]
fn install_writes_the_shipped_plist_and_loads_it_in_the_gui_domain() {
    let mac = Mac::new();
    let binary = mac.fake_installed_binary();
    let run = mac
        .run(&["install", "--program", binary.to_str().expect("utf-8")])
        .expect_code(0);

    let written = std::fs::read_to_string(mac.plist()).expect("plist written");
    let as_shipped = written.replace(mac.user.to_str().expect("utf-8"), "/Users/you");
    assert_eq!(
        as_shipped, SHIPPED_PLIST,
        "launchd/{LABEL}.plist must equal what `install` writes"
    );

    let uid = Mac::uid();
    let calls = mac.calls_of("launchctl");
    assert_eq!(
        calls.last().expect("a launchctl call"),
        &vec![
            "bootstrap".to_owned(),
            format!("gui/{uid}"),
            mac.plist().display().to_string()
        ]
    );
    assert!(mac.loaded());
    // What the user must do next is said, naming the exact binary.
    assert!(run.stdout.contains("Full Disk Access"), "{}", run.stdout);
    assert!(run.stdout.contains("Automation"), "{}", run.stdout);
    assert!(run.stdout.contains("whatsnap-mac pair"), "{}", run.stdout);
    assert!(run.stdout.contains(binary.to_str().expect("utf-8")));
    assert!(mac.log_dir().is_dir(), "the log folder exists for launchd");
}

#[test]
fn installing_again_reloads_in_place_and_keeps_state() {
    let mac = Mac::new();
    let binary = mac.fake_installed_binary();
    let program = binary.to_str().expect("utf-8");
    mac.run(&["install", "--program", program]).expect_code(0);
    std::fs::write(mac.home().join("credentials.json"), "{}").expect("state");
    let run = mac.run(&["install", "--program", program]).expect_code(0);
    assert!(run.stdout.contains("Reloaded"), "{}", run.stdout);
    assert!(
        !run.stdout.contains("pair --server"),
        "already paired: {}",
        run.stdout
    );
    let verbs: Vec<String> = mac
        .calls_of("launchctl")
        .into_iter()
        .map(|c| c[0].clone())
        .collect();
    assert_eq!(verbs, ["bootout", "bootstrap", "bootout", "bootstrap"]);
    assert!(mac.loaded());
    assert!(mac.home().join("credentials.json").exists());
}

#[test]
fn bootstrap_error_5_is_retried_once_after_unloading() {
    let mac = Mac::new();
    let binary = mac.fake_installed_binary();
    mac.knob("bootstrap-error5", "1");
    mac.run(&["install", "--program", binary.to_str().expect("utf-8")])
        .expect_code(0);
    let verbs: Vec<String> = mac
        .calls_of("launchctl")
        .into_iter()
        .map(|c| c[0].clone())
        .collect();
    assert_eq!(verbs, ["bootout", "bootstrap", "bootout", "bootstrap"]);
    assert!(mac.loaded());
}

#[test]
fn persistent_bootstrap_error_5_tells_the_user_what_to_do() {
    let mac = Mac::new();
    let binary = mac.fake_installed_binary();
    mac.knob("bootstrap-error5", "99");
    let run = mac
        .run(&["install", "--program", binary.to_str().expect("utf-8")])
        .expect_code(2);
    assert!(run.stderr.contains("Input/output error"), "{}", run.stderr);
    assert!(
        run.stderr.contains("whatsnap-mac uninstall"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("log out"), "{}", run.stderr);
    assert!(!mac.loaded());
}

#[test]
fn a_moved_state_folder_moves_the_agent_environment_and_logs_with_it() {
    let mac = Mac::new();
    let binary = mac.fake_installed_binary();
    let elsewhere = mac.dir.path().join("elsewhere");
    let run = mac
        .cmd(&["install", "--program", binary.to_str().expect("utf-8")])
        .args(["--home", elsewhere.to_str().expect("utf-8")])
        .arg("--osascript")
        .arg(mac.bin.join("osascript"))
        .output()
        .expect("runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let plist = plist::Value::from_file(mac.plist()).expect("plist parses");
    let dict = plist.as_dictionary().expect("dict");
    let env = dict
        .get("EnvironmentVariables")
        .and_then(|v| v.as_dictionary())
        .expect("env");
    assert_eq!(
        env.get("WHATSNAP_HOME").and_then(|v| v.as_string()),
        elsewhere.to_str()
    );
    let log = elsewhere.join("logs/whatsnap-mac.log");
    assert_eq!(
        dict.get("StandardErrorPath").and_then(|v| v.as_string()),
        log.to_str()
    );
    // The stand-in osascript is not the default, so the agent is told too.
    assert_eq!(
        env.get("WHATSNAP_OSASCRIPT").and_then(|v| v.as_string()),
        mac.bin.join("osascript").to_str()
    );
}

#[test]
fn uninstall_unloads_and_removes_the_agent_but_keeps_state_unless_purged() {
    let mac = Mac::new();
    let binary = mac.fake_installed_binary();
    mac.run(&["install", "--program", binary.to_str().expect("utf-8")])
        .expect_code(0);
    std::fs::write(mac.log_dir().join("whatsnap-mac.log"), "a line\n").expect("log");
    let run = mac.run(&["uninstall"]).expect_code(0);
    assert!(run.stdout.contains("Kept the state"), "{}", run.stdout);
    assert!(!mac.plist().exists());
    assert!(!mac.loaded());
    let uid = Mac::uid();
    assert_eq!(
        mac.calls_of("launchctl").last().expect("call"),
        &vec!["bootout".to_owned(), format!("gui/{uid}/{LABEL}")]
    );
    assert!(mac.home().exists());

    // Again: nothing to do, still fine.
    let run = mac.run(&["uninstall", "--purge"]).expect_code(0);
    assert!(run.stdout.contains("not installed"), "{}", run.stdout);
    assert!(!mac.home().exists(), "purged");
    assert!(!mac.log_dir().exists(), "logs purged");
}

#[test]
fn restart_kickstarts_the_agent_or_says_to_install_it() {
    let mac = Mac::new();
    let run = mac.run(&["restart"]).expect_code(2);
    assert!(
        run.stderr.contains("whatsnap-mac install"),
        "{}",
        run.stderr
    );

    let binary = mac.fake_installed_binary();
    mac.run(&["install", "--program", binary.to_str().expect("utf-8")])
        .expect_code(0);
    let run = mac.run(&["restart"]).expect_code(0);
    assert!(run.stdout.contains("Restarted"), "{}", run.stdout);
    let uid = Mac::uid();
    assert_eq!(
        mac.calls_of("launchctl").last().expect("call"),
        &vec![
            "kickstart".to_owned(),
            "-k".to_owned(),
            format!("gui/{uid}/{LABEL}")
        ]
    );
}

#[test]
fn logs_prints_the_last_lines_and_follows_new_ones() {
    let mac = Mac::new();
    let run = mac.run(&["logs"]).expect_code(0);
    assert!(run.stdout.contains("No log yet"), "{}", run.stdout);

    std::fs::create_dir_all(mac.log_dir()).expect("mkdir");
    let log = mac.log_dir().join("whatsnap-mac.log");
    std::fs::write(&log, "one\ntwo\nthree\n").expect("log");
    let run = mac.run(&["logs", "-n", "2"]).expect_code(0);
    assert_eq!(run.stdout, "two\nthree\n");

    let mut child = mac
        .cmd(&["logs", "--follow", "-n", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line, "three\n");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open");
    writeln!(f, "four").expect("append");
    line.clear();
    out.read_line(&mut line).expect("read");
    assert_eq!(line, "four\n");
    child.kill().expect("kill");
    child.wait().expect("wait");
}

#[test]
fn the_homebrew_service_matches_the_launch_agent() {
    let formula = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/homebrew/whatsnap-mac.rb"),
    )
    .expect("formula");
    let plist = plist::Value::from_reader_xml(SHIPPED_PLIST.as_bytes()).expect("plist");
    let dict = plist.as_dictionary().expect("dict");
    let int = |k: &str| dict.get(k).and_then(|v| v.as_unsigned_integer()).expect(k);
    let string = |k: &str| dict.get(k).and_then(|v| v.as_string()).expect(k).to_owned();
    let keep = dict
        .get("KeepAlive")
        .and_then(|v| v.as_dictionary())
        .expect("KeepAlive");
    let flag = |k: &str| keep.get(k).and_then(|v| v.as_boolean()).expect(k);
    let expected = [
        r#"run [opt_bin/"whatsnap-mac", "run"]"#.to_owned(),
        format!(
            "keep_alive successful_exit: {}, crashed: {}",
            flag("SuccessfulExit"),
            flag("Crashed")
        ),
        format!("throttle_interval {}", int("ThrottleInterval")),
        format!("process_type :{}", string("ProcessType").to_lowercase()),
        "run_type :immediate".to_owned(),
        r##"log_path "#{Dir.home}/Library/Logs/whatsnap/whatsnap-mac.log""##.to_owned(),
        r##"WHATSNAP_HOME:      "#{Dir.home}/Library/Application Support/whatsnap""##.to_owned(),
    ];
    for line in expected {
        assert!(
            formula.contains(&line),
            "the formula's service block lacks {line:?}"
        );
    }
    assert_eq!(
        string("StandardErrorPath"),
        "/Users/you/Library/Logs/whatsnap/whatsnap-mac.log"
    );
}
