//! The whole loop with real parts: the account service (whatsnap-relay) on
//! loopback, a chat.db in WAL mode written by the simulator, and the daemon as
//! a real process driven by the fake `osascript`.

mod daemon_support;

use std::path::Path;

use daemon_support::{EXE, System, kill_hard};
use tokio::process::Command;
use whatsnap_mac::chatdb::ChatDb;
use whatsnap_mac::link::pair;
use whatsnap_proto::api::{AccountState, OutboundState};
use whatsnap_proto::frame::SendState;
use whatsnap_relay::RelayEvent;

const CUSTOMER: &str = "+15551234567";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_text_becomes_a_tagged_contact_and_a_reply_leaves_through_messages() {
    let mut sys = System::new().await;
    let daemon = sys.start_daemon().await;

    sys.sim
        .receive(CUSTOMER, "Hi Mike, is the flat still free?")
        .expect("incoming");
    let created = sys
        .wait_for("the contact", |e| {
            matches!(e, RelayEvent::ContactCreated { .. })
        })
        .await;
    let RelayEvent::ContactCreated {
        contact_id,
        handle,
        tag,
    } = created
    else {
        unreachable!()
    };
    assert_eq!(handle, CUSTOMER);
    assert_eq!(tag.as_deref(), Some("whatsnap-account-Mike"));
    let contacts = sys.admin.list_contacts().await.expect("contacts");
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].tags, vec!["whatsnap-account-Mike".to_string()]);

    // Hostile text must reach osascript byte for byte, as an argument.
    let reply =
        "He said \"hi\" \\ back\nslash & 👋🏽 \" & do shell script \"touch /tmp/pwned-e2e\" & \"";
    let queued = sys
        .admin
        .send_message(&contact_id, reply, None)
        .await
        .expect("queued");
    let result = sys
        .wait_for("the send result", |e| {
            matches!(e, RelayEvent::SendResult { .. })
        })
        .await;
    let RelayEvent::SendResult {
        client_msg_id,
        state,
        guids,
        ..
    } = result
    else {
        unreachable!()
    };
    assert_eq!(state, SendState::Sent);
    assert_eq!(
        queued.client_msg_id.as_deref(),
        Some(client_msg_id.as_str())
    );
    assert_eq!(guids.len(), 1, "{guids:?}");

    // The from-me row is in chat.db with that GUID and exactly that text.
    let db = ChatDb::open(&sys.chat_db).expect("open chat.db");
    let rows = db.read_after(0, 100).expect("rows");
    let sent = rows
        .iter()
        .find(|r| r.guid == guids[0])
        .expect("the sent row is in chat.db");
    assert!(sent.from_me);
    assert_eq!(sent.text.as_deref(), Some(reply));
    assert!(!Path::new("/tmp/pwned-e2e").exists());

    // osascript got one of our scripts and the text as one argument.
    let log = std::fs::read_to_string(sys.osascript_log()).expect("osascript log");
    let calls: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(calls.len(), 1, "exactly one dispatch: {log}");
    assert_eq!(calls[0]["script"], "send_to_chat");
    assert_eq!(calls[0]["args"][0], reply);
    assert_eq!(calls[0]["args"][1], format!("iMessage;-;{CUSTOMER}"));

    // The service shows the outbound message sent, and the echo of our own
    // row did not become a second message.
    let messages = sys.admin.list_messages(None).await.expect("messages");
    let outbound: Vec<_> = messages
        .iter()
        .filter(|m| m.direction == "outbound")
        .collect();
    let inbound: Vec<_> = messages
        .iter()
        .filter(|m| m.direction == "inbound")
        .collect();
    assert_eq!(outbound.len(), 1, "{messages:?}");
    assert_eq!(outbound[0].state, Some(OutboundState::Sent));
    assert_eq!(outbound[0].guids, guids);
    assert_eq!(inbound.len(), 1, "{messages:?}");

    kill_hard(daemon).await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_daemon_neither_loses_nor_repeats_inbound_messages() {
    let mut sys = System::new().await;
    let daemon = sys.start_daemon().await;
    sys.sim.receive(CUSTOMER, "one").expect("incoming");
    sys.wait_for(
        "message one",
        |e| matches!(e, RelayEvent::MessageReceived { text, .. } if text == "one"),
    )
    .await;

    // Killed with nothing in flight; two messages arrive while it is down.
    kill_hard(daemon).await;
    sys.wait_for("the account to go Disconnected", |e| {
        matches!(
            e,
            RelayEvent::AccountStatus {
                status: AccountState::Disconnected,
                ..
            }
        )
    })
    .await;
    sys.sim.receive(CUSTOMER, "two").expect("incoming");
    sys.sim.receive(CUSTOMER, "three").expect("incoming");

    // Killed at once after a message lands: whatever it read, committed or
    // sent at that instant must come out exactly once.
    let daemon = sys.start_daemon().await;
    sys.sim.receive(CUSTOMER, "four").expect("incoming");
    kill_hard(daemon).await;

    let daemon = sys.start_daemon().await;
    for text in ["two", "three", "four"] {
        sys.wait_for(
            &format!("message {text}"),
            |e| matches!(e, RelayEvent::MessageReceived { text: t, .. } if t == text),
        )
        .await;
    }
    let inbound: Vec<String> = sys
        .admin
        .list_messages(None)
        .await
        .expect("messages")
        .into_iter()
        .filter(|m| m.direction == "inbound")
        .map(|m| m.text)
        .collect();
    let mut sorted = inbound.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["four", "one", "three", "two"], "{inbound:?}");
    let contacts = sys.admin.list_contacts().await.expect("contacts");
    assert_eq!(contacts.len(), 1, "one contact, however often it wrote");

    kill_hard(daemon).await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pairing_code_is_refused_with_a_clear_error() {
    let sys = System::new().await;
    let base = sys.base_url();
    let home = sys.dir.path().join("other-home");
    let out = Command::new(EXE)
        .args(["pair", "--force", "--server", &base, "WRNG-CODE", "--home"])
        .arg(&home)
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "refused is exit 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused pairing"), "{stderr}");
    assert!(!home.join("credentials.json").exists());

    // And a daemon that was never paired says what to do instead of looping.
    let out = Command::new(EXE)
        .arg("run")
        .arg("--home")
        .arg(&home)
        .arg("--chat-db")
        .arg(&sys.chat_db)
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("whatsnap-mac pair"), "{stderr}");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpair_revokes_the_mac_at_the_service_and_forgets_its_token() {
    let mut sys = System::new().await;
    let daemon = sys.start_daemon().await;
    let base = sys.base_url();
    let token = pair::load(&sys.home.join("credentials.json"))
        .expect("paired")
        .device_token;
    let out = Command::new(EXE)
        .arg("unpair")
        .arg("--home")
        .arg(&sys.home)
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!sys.home.join("credentials.json").exists());
    // The running daemon's socket was closed 4401 and the account says why.
    let account = sys.account_id.clone();
    sys.wait_for("the account to go Disconnected", |e| {
        matches!(e, RelayEvent::AccountStatus { account_id, status: AccountState::Disconnected, .. } if *account_id == account)
    })
    .await;
    let accounts = sys.admin.list_accounts().await.expect("accounts");
    assert_eq!(
        accounts[0].reason,
        Some(whatsnap_proto::api::DisconnectReason::Revoked)
    );
    // The old token no longer opens anything.
    let resp = reqwest::Client::new()
        .delete(format!("{base}/v1/device"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 401);
    kill_hard(daemon).await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_settings_are_applied_by_the_mac_and_answered_once() {
    let mut sys = System::new().await;
    let daemon = sys.start_daemon().await;
    let mut values = serde_json::Map::new();
    values.insert("max_sends_per_hour".into(), 7.into());
    values.insert("sms_mode".into(), "carrier-pigeon".into());
    let view = sys
        .admin
        .update_settings(&sys.account_id, &values)
        .await
        .expect("settings");
    let version = view.settings.version;
    let applied = sys
        .wait_for("settings.applied", |e| {
            matches!(e, RelayEvent::SettingsApplied { .. })
        })
        .await;
    let RelayEvent::SettingsApplied {
        version: got,
        errors,
        ..
    } = applied
    else {
        unreachable!()
    };
    assert_eq!(got, version);
    // The bad value is refused by name; the good one is in force.
    assert_eq!(
        errors.keys().collect::<Vec<_>>(),
        vec!["sms_mode"],
        "{errors:?}"
    );

    // A restart does not apply (or answer) the same version again.
    kill_hard(daemon).await;
    let daemon = sys.start_daemon().await;
    sys.sim
        .receive(CUSTOMER, "after restart")
        .expect("incoming");
    sys.wait_for(
        "the next message",
        |e| matches!(e, RelayEvent::MessageReceived { text, .. } if text == "after restart"),
    )
    .await;
    assert!(
        !sys.unclaimed
            .iter()
            .any(|e| matches!(e, RelayEvent::SettingsApplied { .. })),
        "settings answered twice: {:?}",
        sys.unclaimed
    );
    kill_hard(daemon).await;
    sys.stop().await;
}
