//! The device websocket: handshake, the event stream's ordering rules, bad
//! frames, and the account status an admin sees.

mod common;

use common::{FakeDaemon, inbound, start_relay};
use whatsnap_proto::api::{AccountState, DisconnectReason};
use whatsnap_proto::frame::{Body, Frame, Health, Status};
use whatsnap_relay::RelayEvent;

#[tokio::test]
async fn welcome_makes_the_account_active_and_close_makes_it_offline() {
    let mut relay = start_relay().await;
    let (account_id, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    let welcome = daemon.handshake(&paired.device_id).await;
    assert_eq!(welcome.account_tag, "whatsnap-account-Mike");
    assert_eq!(welcome.account_name, "Mike");
    assert_eq!(welcome.events.epoch, "epoch-a");
    assert_eq!(welcome.events.acked_upto, 0);
    assert_eq!(welcome.commands.last_seq, 0);
    assert_eq!(welcome.heartbeat_ms, 20_000);
    assert_eq!(welcome.max_frame_bytes, 1_048_576);
    assert_eq!(welcome.commands_window, 10);

    relay
        .wait_for("Active", |e| {
            matches!(
                e,
                RelayEvent::AccountStatus {
                    status: AccountState::Active,
                    ..
                }
            )
        })
        .await;
    let list = relay.client.list_accounts().await.expect("list");
    assert_eq!(list[0].status, AccountState::Active);
    assert!(list[0].since_ms.is_some());

    // A degraded health report shows as a warning on the still-Active account.
    let mut status = Status::with_health(Health::Degraded);
    status.detail = Some("Messages is not running".into());
    daemon.send(&Frame::new(Body::Status(status), 1)).await;
    // A status frame has no answer; the ack of the event after it proves it was processed.
    daemon
        .send(&Frame::new(inbound("G0", "+15550000000", "x"), 1).with_seq(1))
        .await;
    daemon.events_ack().await;
    let list = relay.client.list_accounts().await.expect("list");
    assert_eq!(list[0].warning.as_deref(), Some("Messages is not running"));

    daemon.ws.close(None).await.expect("close");
    let event = relay
        .wait_for("Disconnected", |e| {
            matches!(
                e,
                RelayEvent::AccountStatus {
                    status: AccountState::Disconnected,
                    ..
                }
            )
        })
        .await;
    assert_eq!(
        event,
        RelayEvent::AccountStatus {
            account_id,
            status: AccountState::Disconnected,
            reason: Some(DisconnectReason::Offline),
        }
    );
    let list = relay.client.list_accounts().await.expect("list");
    assert_eq!(list[0].reason, Some(DisconnectReason::Offline));
    assert!(list[0].since_ms.is_some());
}

#[tokio::test]
async fn a_first_message_creates_a_tagged_contact_exactly_once() {
    let mut relay = start_relay().await;
    let (account_id, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;

    let seq = daemon
        .send_event(inbound("GUID-1", "+15551234567", "Hi Mike"))
        .await;
    let created = relay
        .wait_for("contact", |e| {
            matches!(e, RelayEvent::ContactCreated { .. })
        })
        .await;
    let RelayEvent::ContactCreated {
        contact_id,
        handle,
        tag,
    } = created
    else {
        unreachable!("matched above")
    };
    assert_eq!(handle, "+15551234567");
    assert_eq!(tag.as_deref(), Some("whatsnap-account-Mike"));
    let received = relay
        .wait_for("message", |e| {
            matches!(e, RelayEvent::MessageReceived { .. })
        })
        .await;
    assert_eq!(
        received,
        RelayEvent::MessageReceived {
            account_id,
            contact_id: contact_id.clone(),
            guid: "GUID-1".into(),
            text: "Hi Mike".into(),
        }
    );
    let ack = daemon.events_ack().await;
    assert_eq!(
        (ack.epoch.as_str(), ack.upto, ack.resend_from),
        ("epoch-a", seq, None)
    );

    // The same frame again (same seq): acked, no effect.
    daemon
        .send(&Frame::new(inbound("GUID-1", "+15551234567", "Hi Mike"), 1).with_seq(seq))
        .await;
    assert_eq!(daemon.events_ack().await.upto, 1);

    // The daemon lost its outbox: new epoch, same message again from seq 1.
    drop(daemon);
    relay
        .wait_for("offline", |e| {
            matches!(
                e,
                RelayEvent::AccountStatus {
                    status: AccountState::Disconnected,
                    ..
                }
            )
        })
        .await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.events_epoch = "epoch-b".into();
    let welcome = daemon.handshake(&paired.device_id).await;
    assert_eq!(
        (welcome.events.epoch.as_str(), welcome.events.acked_upto),
        ("epoch-b", 0)
    );
    daemon
        .send_event(inbound("GUID-1", "+15551234567", "Hi Mike"))
        .await;
    let ack = daemon.events_ack().await;
    assert_eq!((ack.epoch.as_str(), ack.upto), ("epoch-b", 1));

    let contacts = relay.client.list_contacts().await.expect("contacts");
    assert_eq!(contacts.len(), 1, "{contacts:?}");
    assert_eq!(contacts[0].id, contact_id);
    assert_eq!(contacts[0].tags, vec!["whatsnap-account-Mike".to_owned()]);
    let messages = relay
        .client
        .list_messages(Some("+15551234567"))
        .await
        .expect("messages");
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].direction, "inbound");
    assert_eq!(messages[0].text, "Hi Mike");
}

#[tokio::test]
async fn a_contact_keeps_the_tag_of_the_first_account_that_heard_from_it() {
    let mut relay = start_relay().await;
    let (_, mike) = relay.paired_account("Mike").await;
    let (_, anna) = relay.paired_account("Anna").await;
    let mut mike_mac = FakeDaemon::connect(&relay, &mike.device_token).await;
    mike_mac.handshake(&mike.device_id).await;
    let mut anna_mac = FakeDaemon::connect(&relay, &anna.device_token).await;
    anna_mac.handshake(&anna.device_id).await;

    mike_mac
        .send_event(inbound("G1", "+15551234567", "to Mike"))
        .await;
    mike_mac.events_ack().await;
    anna_mac
        .send_event(inbound("G2", "+15551234567", "to Anna"))
        .await;
    anna_mac.events_ack().await;
    relay
        .wait_for(
            "second message",
            |e| matches!(e, RelayEvent::MessageReceived { guid, .. } if guid == "G2"),
        )
        .await;

    let contacts = relay.client.list_contacts().await.expect("contacts");
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].tags, vec!["whatsnap-account-Mike".to_owned()]);
}

#[tokio::test]
async fn a_gap_asks_for_a_resend_and_changes_nothing() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;
    daemon
        .send(&Frame::new(inbound("G1", "+15551234567", "first"), 1).with_seq(1))
        .await;
    assert_eq!(daemon.events_ack().await.upto, 1);

    daemon
        .send(&Frame::new(inbound("G3", "+15551234567", "skipped ahead"), 1).with_seq(3))
        .await;
    let ack = daemon.events_ack().await;
    assert_eq!((ack.upto, ack.resend_from), (1, Some(2)));
    let messages = relay.client.list_messages(None).await.expect("messages");
    assert_eq!(messages.len(), 1, "the frame after the gap changed nothing");
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_stream_goes_on() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;

    // Not JSON: an error frame, connection stays open.
    daemon.send_text("this is not json").await;
    match daemon.frame().await.body {
        Body::Error(e) => assert_eq!(e.code, "bad_json"),
        other => panic!("expected error, got {other:?}"),
    }

    // A durable type from a newer daemon: error frame, and seq 1 still counts.
    daemon
        .send_text(r#"{"v":1,"type":"event.hologram","id":"h1","seq":1,"ts":1,"data":{}}"#)
        .await;
    match daemon.frame().await.body {
        Body::Error(e) => {
            assert_eq!(e.code, "unknown_type");
            assert_eq!(e.reply_to.as_deref(), Some("h1"));
        }
        other => panic!("expected error, got {other:?}"),
    }
    assert_eq!(daemon.events_ack().await.upto, 1);

    // A durable frame without seq.
    daemon
        .send(&Frame::new(inbound("G9", "+15551234567", "no seq"), 1))
        .await;
    match daemon.frame().await.body {
        Body::Error(e) => assert_eq!(e.code, "bad_seq"),
        other => panic!("expected error, got {other:?}"),
    }

    // The connection is still open and the stream continues at seq 2.
    daemon
        .send(&Frame::new(inbound("G2", "+15551234567", "after"), 1).with_seq(2))
        .await;
    assert_eq!(daemon.events_ack().await.upto, 2);
    let messages = relay.client.list_messages(None).await.expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].text, "after");
}

#[tokio::test]
async fn a_frame_before_hello_is_refused_4400() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon
        .send(&Frame::new(inbound("G1", "+15551234567", "too early"), 1).with_seq(1))
        .await;
    match daemon.frame().await.body {
        Body::Error(e) => assert_eq!(e.code, "before_welcome"),
        other => panic!("expected error, got {other:?}"),
    }
    assert_eq!(daemon.close_code().await.0, 4400);
}

#[tokio::test]
async fn an_old_protocol_gets_4426_and_needs_update() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    let mut hello = daemon.hello(&paired.device_id, "", 0);
    hello.protocols = vec![2];
    daemon.send(&Frame::new(Body::Hello(hello), 1)).await;
    assert_eq!(daemon.close_code().await.0, 4426);
    let list = relay.client.list_accounts().await.expect("list");
    assert_eq!(list[0].reason, Some(DisconnectReason::NeedsUpdate));
}

#[tokio::test]
async fn a_second_connection_of_the_same_device_wins() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut first = FakeDaemon::connect(&relay, &paired.device_token).await;
    first.handshake(&paired.device_id).await;
    let mut second = FakeDaemon::connect(&relay, &paired.device_token).await;
    assert_eq!(first.close_code().await.0, 4409);
    second.handshake(&paired.device_id).await;
    let list = relay.client.list_accounts().await.expect("list");
    assert_eq!(list[0].status, AccountState::Active);
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1012() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;
    relay.shutdown.cancel();
    assert_eq!(daemon.close_code().await.0, 1012);
    tokio::time::timeout(common::PATIENCE, relay.handle.wait())
        .await
        .expect("service stops");
}

#[tokio::test]
async fn a_frame_over_1_mib_is_closed_1009() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;
    let huge = "x".repeat(1024 * 1024 + 1);
    daemon
        .send(&Frame::new(inbound("BIG", "+15551234567", &huge), 1).with_seq(1))
        .await;
    assert_eq!(daemon.close_code().await.0, 1009);
}

#[tokio::test]
async fn new_settings_reach_the_mac_live_and_in_welcome() {
    let mut relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;

    let mut values = serde_json::Map::new();
    values.insert("mark_read_on_send".into(), serde_json::Value::Bool(true));
    let view = relay
        .client
        .update_settings("Mike", &values)
        .await
        .expect("settings");
    assert_eq!(view.settings.version, 1);
    let frame = daemon.frame().await;
    assert_eq!(frame.seq, Some(1));
    match frame.body {
        Body::Settings(s) => {
            assert_eq!(s.version, 1);
            assert_eq!(
                s.values.get("mark_read_on_send"),
                Some(&serde_json::Value::Bool(true))
            );
        }
        other => panic!("expected settings, got {other:?}"),
    }

    // A daemon that has not applied version 1 gets the settings in welcome.
    drop(daemon);
    relay
        .wait_for("offline", |e| {
            matches!(
                e,
                RelayEvent::AccountStatus {
                    status: AccountState::Disconnected,
                    ..
                }
            )
        })
        .await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    let welcome = daemon.handshake(&paired.device_id).await;
    assert_eq!(welcome.settings.map(|s| s.version), Some(1));
}
