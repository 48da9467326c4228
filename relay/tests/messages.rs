//! Outgoing messages: routing by the contact's tag, the durable command
//! stream to the daemon, send results, and sends that wait for a device.

mod common;

use common::{FakeDaemon, TestRelay, inbound, start_relay};
use whatsnap_proto::api::{AccountState, OutboundState, PairResponse};
use whatsnap_proto::frame::{
    Ack, Body, ChatKind, CmdSend, EventMessage, Frame, Handle, HandleKind, Origin, SendResult,
    SendState, Stream,
};
use whatsnap_relay::RelayEvent;

const BOB: &str = "+15551234567";

struct Mike {
    paired: PairResponse,
    daemon: FakeDaemon,
    bob: String,
    /// The command epoch from `welcome`, for the daemon's acks.
    commands_epoch: String,
}

/// Mike's Mac connected, and Bob has written to Mike (so Bob is tagged Mike).
async fn mike_with_bob(relay: &mut TestRelay) -> Mike {
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(relay, &paired.device_token).await;
    let commands_epoch = daemon.handshake(&paired.device_id).await.commands.epoch;
    daemon.send_event(inbound("IN-1", BOB, "hello?")).await;
    daemon.events_ack().await;
    let contacts = relay.client.list_contacts().await.expect("contacts");
    let bob = contacts[0].id.clone();
    Mike {
        paired,
        daemon,
        bob,
        commands_epoch,
    }
}

fn expect_cmd_send(frame: &Frame) -> &CmdSend {
    match &frame.body {
        Body::CmdSend(c) => c,
        other => panic!("expected cmd.send, got {other:?}"),
    }
}

fn commands_ack(epoch: &str, upto: u64) -> Frame {
    Frame::new(
        Body::Ack(Ack {
            stream: Stream::Commands,
            epoch: epoch.to_owned(),
            upto,
            resend_from: None,
        }),
        1,
    )
}

#[tokio::test]
async fn a_send_reaches_the_mac_and_its_result_comes_back() {
    let mut relay = start_relay().await;
    let Mike {
        mut daemon,
        bob,
        commands_epoch,
        ..
    } = mike_with_bob(&mut relay).await;

    let queued = relay
        .client
        .send_message(BOB, "See you at 5", None)
        .await
        .expect("queued");
    assert_eq!(queued.state, Some(OutboundState::Queued));
    assert_eq!(queued.contact_id, bob);
    assert_eq!(queued.direction, "outbound");
    let client_msg_id = queued.client_msg_id.clone().expect("client_msg_id");

    let frame = daemon.frame().await;
    assert_eq!(frame.seq, Some(1));
    let cmd = expect_cmd_send(&frame);
    assert_eq!(cmd.text, "See you at 5");
    assert_eq!(cmd.client_msg_id, client_msg_id);
    assert_eq!(cmd.to.as_ref().map(|t| t.handle.as_str()), Some(BOB));
    assert_eq!(cmd.chat_guid.as_deref(), Some("iMessage;-;+15551234567"));
    assert!(cmd.expires_at_ms.is_some());

    daemon.send(&commands_ack(&commands_epoch, 1)).await;
    daemon
        .send_event(Body::SendResult(SendResult {
            client_msg_id: client_msg_id.clone(),
            state: SendState::Sent,
            guids: vec!["OUT-1".into()],
            service: Some("iMessage".into()),
            error: None,
        }))
        .await;
    let result = relay
        .wait_for("send result", |e| {
            matches!(e, RelayEvent::SendResult { .. })
        })
        .await;
    let RelayEvent::SendResult { state, guids, .. } = result else {
        unreachable!("matched above")
    };
    assert_eq!((state, guids), (SendState::Sent, vec!["OUT-1".to_owned()]));
    daemon.events_ack().await;

    // The chat.db echo of our own send attaches to it; no second message.
    daemon
        .send_event(Body::EventMessage(EventMessage {
            from_me: true,
            sender: None,
            recipients: vec![Handle {
                handle: BOB.into(),
                kind: HandleKind::Phone,
            }],
            origin: Some(Origin {
                client_msg_id: client_msg_id.clone(),
            }),
            ..event_message("OUT-1", "See you at 5")
        }))
        .await;
    daemon.events_ack().await;

    let messages = relay
        .client
        .list_messages(Some(BOB))
        .await
        .expect("messages");
    assert_eq!(messages.len(), 2, "{messages:?}");
    let sent = &messages[1];
    assert_eq!(sent.client_msg_id.as_deref(), Some(client_msg_id.as_str()));
    assert_eq!(sent.state, Some(OutboundState::Sent));
    assert_eq!(sent.guids, vec!["OUT-1".to_owned()]);
}

fn event_message(guid: &str, text: &str) -> EventMessage {
    match inbound(guid, BOB, text) {
        Body::EventMessage(m) => EventMessage {
            chat_kind: ChatKind::Direct,
            ..m
        },
        _ => unreachable!("inbound builds an event.message"),
    }
}

#[tokio::test]
async fn a_repeated_client_msg_id_queues_nothing_new() {
    let mut relay = start_relay().await;
    let mut daemon = mike_with_bob(&mut relay).await.daemon;
    let first = relay
        .client
        .send_message(BOB, "once", Some("crm:42"))
        .await
        .expect("queued");
    let again = relay
        .client
        .send_message(BOB, "once", Some("crm:42"))
        .await
        .expect("same answer");
    assert_eq!(first.id, again.id);
    assert_eq!(
        expect_cmd_send(&daemon.frame().await).client_msg_id,
        "crm:42"
    );
    // Nothing else was pushed: the next frame is the ack of this event.
    daemon.send_event(inbound("IN-2", BOB, "ok")).await;
    daemon.events_ack().await;
    let outbound = relay
        .client
        .list_messages(Some(BOB))
        .await
        .expect("messages")
        .into_iter()
        .filter(|m| m.direction == "outbound")
        .count();
    assert_eq!(outbound, 1);
}

#[tokio::test]
async fn a_send_made_while_offline_is_delivered_on_reconnect() {
    let mut relay = start_relay().await;
    let Mike { paired, daemon, .. } = mike_with_bob(&mut relay).await;
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

    let queued = relay
        .client
        .send_message(BOB, "while you were away", None)
        .await
        .expect("queued while offline");
    assert_eq!(queued.state, Some(OutboundState::Queued));

    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.next_seq = 2;
    let welcome = daemon.handshake(&paired.device_id).await;
    assert_eq!(welcome.commands.last_seq, 1);
    let frame = daemon.frame().await;
    assert_eq!(frame.seq, Some(1));
    assert_eq!(expect_cmd_send(&frame).text, "while you were away");

    // Not acked before the link drops: pushed again on the next connect.
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
    daemon.next_seq = 2;
    let epoch = daemon.handshake(&paired.device_id).await.commands.epoch;
    let frame = daemon.frame().await;
    assert_eq!(frame.seq, Some(1));
    daemon.send(&commands_ack(&epoch, 1)).await;

    // Acked: the next connect pushes nothing (the next frame is an event ack).
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
    daemon.next_seq = 2;
    let hello = daemon.hello(&paired.device_id, &epoch, 1);
    daemon.handshake_with(hello).await;
    daemon.send_event(inbound("IN-2", BOB, "thanks")).await;
    assert_eq!(daemon.events_ack().await.upto, 2);
}

#[tokio::test]
async fn retagging_a_contact_routes_the_next_send_to_the_other_account() {
    let mut relay = start_relay().await;
    let mut mike_mac = mike_with_bob(&mut relay).await.daemon;
    let (anna_id, anna) = relay.paired_account("Anna").await;
    let mut anna_mac = FakeDaemon::connect(&relay, &anna.device_token).await;
    anna_mac.handshake(&anna.device_id).await;

    let err = relay
        .client
        .set_contact_tag(BOB, "whatsnap-account-Nobody")
        .await
        .expect_err("unknown tag");
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("whatsnap-account-Anna"), "{err}");

    let contact = relay
        .client
        .set_contact_tag(BOB, "whatsnap-account-Anna")
        .await
        .expect("retag");
    assert_eq!(contact.tags, vec!["whatsnap-account-Anna".to_owned()]);

    let queued = relay
        .client
        .send_message(BOB, "from Anna now", None)
        .await
        .expect("queued");
    assert_eq!(queued.account_id, anna_id);
    let frame = anna_mac.frame().await;
    assert_eq!(frame.seq, Some(1));
    let cmd = expect_cmd_send(&frame);
    assert_eq!(cmd.text, "from Anna now");
    // Bob never wrote to Anna's Mac: address by handle, not Mike's chat.
    assert_eq!(cmd.chat_guid, None);

    // Mike's Mac got nothing: its next frame is the ack of its own event.
    mike_mac
        .send_event(inbound("IN-9", "+15559999999", "hi"))
        .await;
    mike_mac.events_ack().await;
}

#[tokio::test]
async fn sends_for_an_unpaired_account_wait_for_its_first_device() {
    let mut relay = start_relay().await;
    let _mike = mike_with_bob(&mut relay).await;
    let anna = relay.client.create_account("Anna").await.expect("create");
    relay
        .client
        .set_contact_tag(BOB, &anna.account.tag)
        .await
        .expect("retag");
    let queued = relay
        .client
        .send_message(BOB, "waiting for Anna's Mac", None)
        .await
        .expect("queued without a device");
    assert_eq!(queued.state, Some(OutboundState::Queued));

    let paired = relay
        .anonymous()
        .pair(&anna.pairing.code, common::device_info())
        .await
        .expect("pair");
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;
    let frame = daemon.frame().await;
    assert_eq!(frame.seq, Some(1));
    assert_eq!(expect_cmd_send(&frame).text, "waiting for Anna's Mac");
}

#[tokio::test]
async fn at_most_three_sends_and_ten_commands_are_in_flight() {
    let mut relay = start_relay().await;
    let Mike {
        mut daemon,
        commands_epoch,
        ..
    } = mike_with_bob(&mut relay).await;
    for i in 1..=4 {
        relay
            .client
            .send_message(BOB, &format!("message {i}"), None)
            .await
            .expect("queued");
    }
    for seq in 1..=3 {
        assert_eq!(daemon.frame().await.seq, Some(seq));
    }
    // Three sends in flight: the 4th waits (the next frame is this event's ack).
    daemon.send_event(inbound("IN-3", BOB, "busy")).await;
    daemon.events_ack().await;
    daemon.send(&commands_ack(&commands_epoch, 1)).await;
    let frame = daemon.frame().await;
    assert_eq!(frame.seq, Some(4));
    assert_eq!(expect_cmd_send(&frame).text, "message 4");
    daemon.send(&commands_ack(&commands_epoch, 4)).await;

    // Other commands fill the window of ten.
    for i in 1..=12 {
        let mut values = serde_json::Map::new();
        values.insert("log_level".into(), serde_json::json!(format!("v{i}")));
        relay
            .client
            .update_settings("Mike", &values)
            .await
            .expect("settings");
    }
    for seq in 5..=14 {
        assert_eq!(daemon.frame().await.seq, Some(seq));
    }
    daemon.send_event(inbound("IN-4", BOB, "busy")).await;
    daemon.events_ack().await;
    daemon.send(&commands_ack(&commands_epoch, 14)).await;
    for seq in 15..=16 {
        assert_eq!(daemon.frame().await.seq, Some(seq));
    }
}

#[tokio::test]
async fn unknown_contacts_and_removed_accounts_are_explained() {
    let mut relay = start_relay().await;
    let _mike = mike_with_bob(&mut relay).await;
    let err = relay
        .client
        .send_message("+15550001111", "hi", None)
        .await
        .expect_err("unknown contact");
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("contact list"), "{err}");

    relay.client.remove_account("Mike").await.expect("remove");
    let err = relay
        .client
        .send_message(BOB, "hi", None)
        .await
        .expect_err("tag names no account");
    assert_eq!(err.status(), Some(409));
    assert!(err.to_string().contains("contact tag"), "{err}");
}
