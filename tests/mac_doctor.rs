//! `doctor --json` on a pretend Mac: all green first, then each failure a
//! user can meet, made real (a chat.db macOS refuses to open, a denied
//! Automation, an unloaded agent, an unsigned binary, a dead or skewed
//! service …), each compared with a stored snapshot
//! (`tests/mac_snapshots/doctor_*.json`, rewritten with `WHATSNAP_BLESS=1`).

mod mac_support;

use std::path::{Path, PathBuf};

use mac_support::{EXE, Mac, Run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use whatsnap_mac::sim::Simulator;

fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mac_snapshots")
        .join(name);
    if std::env::var_os("WHATSNAP_BLESS").is_some() {
        std::fs::write(&path, actual).expect("bless");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("no snapshot {}; run with WHATSNAP_BLESS=1", path.display()));
    assert_eq!(actual, expected, "snapshot {name} differs");
}

/// A service answering `/healthz` and `GET /v1/device` (for the token
/// `secret-token` only) with its clock `skew_secs` off ours.
async fn service(skew_secs: i64) -> String {
    service_accepting(skew_secs, "secret-token").await
}

async fn service_accepting(skew_secs: i64, token: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let t = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(skew_secs))
                .expect("time");
            let date = jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&t)
                .expect("date");
            let (status, body) = if request.starts_with("GET /v1/device ") {
                let authorized = request
                    .lines()
                    .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {token}")));
                if authorized {
                    let view = serde_json::json!({
                        "device_id": "dev",
                        "account_id": "acc",
                        "account_name": "Mike",
                        "account_tag": "whatsnap-account-Mike",
                        "now_ms": t.as_millisecond(),
                    });
                    ("200 OK", view.to_string())
                } else {
                    let err = serde_json::json!({"error": {"code": "revoked", "message": "this device was unpaired or removed by an admin; run `whatsnap-mac pair` with a new code"}});
                    ("401 Unauthorized", err.to_string())
                }
            } else {
                ("200 OK", "ok".to_owned())
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\nDate: {date}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    format!("http://{addr}/")
}

/// An address where nothing listens.
async fn dead_service() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/")
}

struct Setup {
    mac: Mac,
    chat_db: PathBuf,
}

impl Setup {
    /// Everything right: Messages with a recent message, Automation allowed,
    /// the agent installed, loaded and running, the binary signed, paired.
    async fn green() -> Setup {
        let mac = Mac::new();
        let chat_db = mac.user.join("Library/Messages/chat.db");
        std::fs::create_dir_all(chat_db.parent().expect("parent")).expect("mkdir");
        let mut sim = Simulator::create(&chat_db).expect("chat.db");
        sim.receive("+15551234567", "hello").expect("a message");
        let binary = mac.fake_installed_binary();
        mac.run(&["install", "--program", binary.to_str().expect("utf-8")])
            .expect_code(0);
        sign(&mac, &binary);
        let setup = Setup { mac, chat_db };
        setup.pair(&service(0).await);
        setup
    }

    fn pair(&self, server: &str) {
        let creds = whatsnap_mac::link::pair::Credentials {
            server: server.to_owned(),
            ws_url: server.replace("http", "ws") + "v1/device/ws",
            device_id: "dev".into(),
            device_token: "secret-token".into(),
            account_id: "acc".into(),
            account_name: "Mike".into(),
            account_tag: "whatsnap-account-Mike".into(),
        };
        whatsnap_mac::link::pair::save(&self.mac.home().join("credentials.json"), &creds)
            .expect("save");
    }

    async fn doctor(&self) -> (Run, serde_json::Value) {
        let mut cmd = tokio::process::Command::from(self.mac.cmd(&["doctor", "--json"]));
        cmd.arg("--osascript").arg(self.mac.bin.join("osascript"));
        let run = Run::from(cmd.output().await.expect("doctor runs"));
        let json = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
        (run, json)
    }

    /// The JSON with what varies between runs replaced by fixed words.
    fn normalized(&self, json: &serde_json::Value) -> String {
        let mut json = json.clone();
        if let Some(checks) = json["checks"].as_array_mut() {
            for check in checks {
                let id = check["id"].as_str().unwrap_or_default().to_owned();
                if check["outcome"] == "ok" && (id == "disk" || id == "messages") {
                    check["detail"] = "(varies)".into();
                }
            }
        }
        let text = serde_json::to_string_pretty(&json).expect("json") + "\n";
        let mut text = text
            .replace(self.mac.dir.path().to_str().expect("utf-8"), "/TMP")
            .replace(EXE, "<whatsnap-mac>")
            .replace(&format!("gui/{}", Mac::uid()), "gui/UID");
        // The service's port.
        while let Some(at) = text.find("127.0.0.1:") {
            let rest = &text[at + 10..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            text = format!("{}127.0.0.1:PORT{}", &text[..at], &rest[digits..]).replacen(
                "127.0.0.1:PORT",
                "LOCALHOST",
                1,
            );
        }
        text
    }
}

fn sign(mac: &Mac, binary: &Path) {
    let out = std::process::Command::new(mac.bin.join("codesign"))
        .args(["--force", "--sign", "-", "--identifier", "com.whatsnap.mac"])
        .arg(binary)
        .env("WHATSNAP_STANDIN_STATE", &mac.state)
        .output()
        .expect("codesign");
    assert!(out.status.success());
}

fn outcome<'a>(json: &'a serde_json::Value, id: &str) -> &'a str {
    json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c["outcome"].as_str())
        .unwrap_or_else(|| panic!("no check {id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_mac_passes_every_check_and_the_token_is_proven_live() {
    let setup = Setup::green().await;
    let (run, json) = setup.doctor().await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(json["ok"], true);
    for check in json["checks"].as_array().expect("checks") {
        assert_eq!(check["outcome"], "ok", "{check}");
    }
    // No daemon runs: the token was shown to the service by doctor itself.
    assert!(!run.stdout.contains("secret-token"), "{}", run.stdout);
    snapshot("doctor_green.json", &setup.normalized(&json));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_read_from_the_keychain_when_the_pairing_put_it_there() {
    let setup = Setup::green().await;
    let path = setup.mac.home().join("credentials.json");
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    let token = file["device_token"].take();
    assert_eq!(token, "secret-token");
    file.as_object_mut().expect("object").remove("device_token");
    file["token_store"] = "keychain".into();
    std::fs::write(&path, file.to_string()).expect("write");
    setup
        .mac
        .knob("keychain", "whatsnap-mac\tdev\tsecret-token\n");
    let (run, json) = setup.doctor().await;
    assert_eq!(outcome(&json, "token"), "ok", "{}", run.stdout);
    let reads = setup.mac.calls_of("security");
    assert!(
        reads
            .iter()
            .any(|c| c[..2] == ["find-generic-password", "-s"]),
        "{reads:?}"
    );
    // The token was read from security's output, never passed to it.
    assert!(
        reads.iter().flatten().all(|a| a != "secret-token"),
        "{reads:?}"
    );

    // The item gone (deleted in Keychain Access): the token check says so.
    setup.mac.knob("keychain", "");
    let (_, json) = setup.doctor().await;
    assert_eq!(outcome(&json, "token"), "fail");
    let token = json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["id"] == "token")
        .expect("token check");
    assert!(
        token["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Keychain has no WhatSnap token")),
        "{token}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_failure_is_named_with_its_fix() {
    type Break = fn(&Setup) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>;
    let cases: Vec<(&str, &str, &str, Break)> = vec![
        ("fda_refused", "full_disk_access", "fail", |s| {
            Box::pin(async move {
                // SQLite cannot open it although it exists: what macOS's
                // refusal looks like to the reader.
                std::fs::remove_file(&s.chat_db).expect("rm");
                std::fs::create_dir(&s.chat_db).expect("dir in its place");
            })
        }),
        ("chat_db_missing", "full_disk_access", "fail", |s| {
            Box::pin(async move {
                std::fs::remove_dir_all(s.chat_db.parent().expect("dir")).expect("rm");
            })
        }),
        ("no_messages", "messages", "fail", |s| {
            Box::pin(async move {
                std::fs::remove_dir_all(s.chat_db.parent().expect("dir")).expect("rm");
                std::fs::create_dir_all(s.chat_db.parent().expect("dir")).expect("mkdir");
                Simulator::create(&s.chat_db).expect("empty chat.db");
            })
        }),
        ("automation_denied", "automation", "fail", |s| {
            Box::pin(async move { s.mac.knob("automation", "denied") })
        }),
        ("agent_not_installed", "launch_agent", "fail", |s| {
            Box::pin(async move {
                s.mac.run(&["uninstall"]).expect_code(0);
            })
        }),
        ("agent_not_running", "launch_agent", "fail", |s| {
            Box::pin(async move { s.mac.knob("service-state", "not running") })
        }),
        ("binary_unsigned", "binary", "fail", |s| {
            Box::pin(async move {
                std::fs::remove_file(s.mac.state.join("codesign.db")).expect("forget signature");
            })
        }),
        ("binary_modified", "binary", "fail", |s| {
            Box::pin(async move {
                std::fs::write(s.mac.stable_binary(), "#!/bin/sh\nexit 1\n").expect("replace");
            })
        }),
        ("not_paired", "paired", "fail", |s| {
            Box::pin(async move {
                std::fs::remove_file(s.mac.home().join("credentials.json")).expect("unpair");
            })
        }),
        ("service_unreachable", "service", "fail", |s| {
            Box::pin(async move { s.pair(&dead_service().await) })
        }),
        ("clock_skew", "clock", "fail", |s| {
            Box::pin(async move { s.pair(&service(-3600).await) })
        }),
        ("token_rejected", "token", "fail", |s| {
            Box::pin(async move { s.pair(&service_accepting(0, "another-token").await) })
        }),
    ];
    for (name, id, expected, breaker) in cases {
        let setup = Setup::green().await;
        breaker(&setup).await;
        let (run, json) = setup.doctor().await;
        assert_eq!(outcome(&json, id), expected, "{name}: {}", run.stdout);
        assert_eq!(run.code, 1, "{name}: a failed check exits 1");
        assert_eq!(json["ok"], false);
        snapshot(&format!("doctor_{name}.json"), &setup.normalized(&json));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_text_form_is_one_line_per_check_with_the_fix() {
    let setup = Setup::green().await;
    setup.mac.knob("automation", "denied");
    let mut cmd = tokio::process::Command::from(setup.mac.cmd(&["doctor"]));
    cmd.arg("--osascript").arg(setup.mac.bin.join("osascript"));
    let run = Run::from(cmd.output().await.expect("runs")).expect_code(1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 10, "{}", run.stdout);
    let automation = lines
        .iter()
        .find(|l| l.contains("automation"))
        .expect("automation line");
    assert!(automation.starts_with("[FAIL]"), "{automation}");
    assert!(
        automation.contains("Privacy & Security > Automation > Messages"),
        "{automation}"
    );
    // The grant belongs to the binary launchd starts, so that is the one named.
    assert!(
        automation.contains(setup.mac.stable_binary().to_str().expect("utf-8")),
        "{automation}"
    );
}
