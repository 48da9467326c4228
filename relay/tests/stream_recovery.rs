//! Streams that recover from lost or restored storage on either side, and
//! durable frames that cannot be read: none of them may stall a stream or
//! double an effect (protocol 4.2, 5.1 and 7).

mod common;

use common::{FakeDaemon, inbound, start_relay};
use whatsnap_proto::frame::{Ack, Body, Frame, Stream};

const BOB: &str = "+15551234567";

async fn inbound_texts(relay: &common::TestRelay) -> Vec<String> {
    let mut texts: Vec<String> = relay
        .client
        .list_messages(None)
        .await
        .expect("messages")
        .into_iter()
        .filter(|m| m.direction == "inbound")
        .map(|m| m.text)
        .collect();
    texts.sort();
    texts
}

/// Regression: after the daemon's outbox was recreated mid-stream, the
/// service insisted on seq 1 while the daemon resent from 46, and nothing
/// ever went through again.
#[tokio::test]
async fn a_new_event_epoch_starts_at_its_first_event_whatever_its_seq() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;
    daemon.send_event(inbound("G1", BOB, "one")).await;
    assert_eq!(daemon.events_ack().await.upto, 1);
    drop(daemon);

    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.events_epoch = "epoch-b".into();
    daemon.next_seq = 46;
    let welcome = daemon.handshake(&paired.device_id).await;
    assert_eq!(welcome.events.epoch, "epoch-b");
    assert_eq!(welcome.events.acked_upto, 0);
    // G1 again (a replay across epochs) and a new one.
    daemon.send_event(inbound("G1", BOB, "one")).await;
    daemon.send_event(inbound("G2", BOB, "two")).await;
    let ack = daemon.events_ack().await;
    assert_eq!((ack.epoch.as_str(), ack.upto), ("epoch-b", 47));
    assert_eq!(inbound_texts(&relay).await, vec!["one", "two"]);
}

#[tokio::test]
async fn a_daemon_restored_from_a_backup_is_followed_from_its_next_event() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;
    for i in 1..=5 {
        daemon
            .send_event(inbound(&format!("G{i}"), BOB, &format!("m{i}")))
            .await;
    }
    assert_eq!(daemon.events_ack().await.upto, 5);
    drop(daemon);

    // Same epoch, but its storage went back to seq 2: its next events reuse
    // seqs 3.. and must not be taken for duplicates.
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.next_seq = 3;
    let welcome = daemon.handshake(&paired.device_id).await;
    assert_eq!(welcome.events.acked_upto, 0);
    daemon.send_event(inbound("G6", BOB, "m6")).await;
    assert_eq!(daemon.events_ack().await.upto, 3);
    assert_eq!(
        inbound_texts(&relay).await,
        vec!["m1", "m2", "m3", "m4", "m5", "m6"]
    );
}

/// Regression: a durable event whose `data` did not fit was answered with an
/// error but never acked, so the daemon resent it forever.
#[tokio::test]
async fn an_event_with_invalid_data_is_acked_and_answered_with_bad_data() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;
    daemon
        .send_text(r#"{"v":1,"type":"event.message","id":"bad1","seq":1,"ts":1,"data":{"guid":5}}"#)
        .await;
    match daemon.frame().await.body {
        Body::Error(e) => {
            assert_eq!(e.code, "bad_data");
            assert_eq!(e.reply_to.as_deref(), Some("bad1"));
        }
        other => panic!("expected error, got {other:?}"),
    }
    assert_eq!(daemon.events_ack().await.upto, 1);
    daemon.next_seq = 2;
    daemon.send_event(inbound("G2", BOB, "after")).await;
    assert_eq!(daemon.events_ack().await.upto, 2);
    assert_eq!(inbound_texts(&relay).await, vec!["after"]);
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
async fn a_daemon_that_forgot_acked_commands_gets_a_new_command_epoch() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    let epoch = daemon.handshake(&paired.device_id).await.commands.epoch;
    daemon.send_event(inbound("G1", BOB, "hi")).await;
    daemon.events_ack().await;
    for i in 1..=2 {
        relay
            .client
            .send_message(BOB, &format!("reply {i}"), None)
            .await
            .expect("queued");
        assert_eq!(daemon.frame().await.seq, Some(i));
    }
    daemon.send(&commands_ack(&epoch, 2)).await;
    // The ack is processed before the next event's ack comes back.
    daemon.send_event(inbound("G2", BOB, "hi again")).await;
    daemon.events_ack().await;
    drop(daemon);

    relay
        .client
        .send_message(BOB, "reply 3", None)
        .await
        .expect("queued");
    // Same epoch, but it says it processed nothing: commands 1–2 are gone on
    // this side, so a new epoch tells it to start at 3.
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.next_seq = 3;
    let hello = daemon.hello(&paired.device_id, &epoch, 0);
    let welcome = daemon.handshake_with(hello).await;
    assert_ne!(welcome.commands.epoch, epoch);
    let frame = daemon.frame().await;
    assert_eq!(frame.seq, Some(3));
    match frame.body {
        Body::CmdSend(c) => assert_eq!(c.text, "reply 3"),
        other => panic!("expected cmd.send, got {other:?}"),
    }
}

#[tokio::test]
async fn a_burst_is_applied_in_order_and_a_gap_inside_it_asks_for_a_resend() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;
    // 1..=3, a replay of 2, then 5 and 6 (4 is missing), all without waiting.
    for (seq, guid) in [
        (1, "B1"),
        (2, "B2"),
        (3, "B3"),
        (2, "B2"),
        (5, "B5"),
        (6, "B6"),
    ] {
        daemon
            .send(&Frame::new(inbound(guid, BOB, guid), 1).with_seq(seq))
            .await;
    }
    let mut resend = None;
    while resend.is_none() {
        let ack = daemon.events_ack().await;
        assert!(ack.upto <= 3, "{ack:?}");
        resend = ack.resend_from;
    }
    assert_eq!(resend, Some(4));
    daemon
        .send(&Frame::new(inbound("B4", BOB, "B4"), 1).with_seq(4))
        .await;
    daemon
        .send(&Frame::new(inbound("B5", BOB, "B5"), 1).with_seq(5))
        .await;
    loop {
        if daemon.events_ack().await.upto == 5 {
            break;
        }
    }
    assert_eq!(
        inbound_texts(&relay).await,
        vec!["B1", "B2", "B3", "B4", "B5"]
    );
}
