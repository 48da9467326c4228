//! Session timers. The hello timeout runs on tokio's paused clock (the only
//! timer pending, so time jumps straight to it). Tests with several timers in
//! play shorten them with `Timing` and run in real time instead: with real
//! sockets, the paused clock can also jump while a frame is still in flight,
//! which would make them flaky.

mod common;

use std::time::Duration;

use common::{FakeDaemon, start_relay, start_relay_with};
use whatsnap_proto::api::{AccountState, DisconnectReason};
use whatsnap_relay::{RelayEvent, Timing};

#[tokio::test(start_paused = true)]
async fn a_device_that_never_says_hello_is_closed_4400_after_10_s() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.patience = Duration::from_secs(600);
    let started = tokio::time::Instant::now();
    let (code, reason) = daemon.close_code().await;
    assert_eq!(code, 4400, "{reason}");
    assert!(reason.contains("hello"), "{reason}");
    assert!(started.elapsed() >= Duration::from_secs(10));
}

#[tokio::test]
async fn a_silent_device_is_closed_and_shown_offline() {
    let mut relay = start_relay_with(Timing {
        idle_timeout: Duration::from_millis(300),
        ..Timing::default()
    })
    .await;
    let (account_id, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;
    let started = std::time::Instant::now();
    let (code, reason) = daemon.close_code().await;
    assert_eq!(code, 1001, "{reason}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let event = relay
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
    assert_eq!(
        event,
        RelayEvent::AccountStatus {
            account_id,
            status: AccountState::Disconnected,
            reason: Some(DisconnectReason::Offline)
        }
    );
}

#[tokio::test]
async fn an_unacked_command_is_pushed_again_on_a_live_link() {
    let relay = start_relay_with(Timing {
        command_resend_after: Duration::from_millis(300),
        ..Timing::default()
    })
    .await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;
    daemon
        .send_event(common::inbound("IN-1", "+15551234567", "hi"))
        .await;
    daemon.events_ack().await;
    relay
        .client
        .send_message("+15551234567", "are you there?", None)
        .await
        .expect("queued");
    let first = daemon.frame().await;
    let pushed = std::time::Instant::now();
    let again = daemon.frame().await;
    assert_eq!(again.seq, Some(1));
    assert_eq!(again.body, first.body);
    assert!(
        pushed.elapsed() >= Duration::from_millis(250),
        "{:?}",
        pushed.elapsed()
    );
}
