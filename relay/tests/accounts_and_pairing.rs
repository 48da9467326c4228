//! Accounts, tags, admin auth and pairing, as an admin and a Mac see them.

mod common;

use common::{FakeDaemon, device_info, start_relay, try_connect};
use whatsnap_proto::api::{AccountState, DisconnectReason};
use whatsnap_relay::client::AdminClient;

#[tokio::test]
async fn accounts_get_unique_tags_and_start_never_paired() {
    let relay = start_relay().await;
    let first = relay
        .client
        .create_account("Mike")
        .await
        .expect("create Mike");
    assert_eq!(first.account.tag, "whatsnap-account-Mike");
    let code = &first.pairing.code;
    assert_eq!(code.len(), 9, "code shown as XXXX-XXXX: {code}");
    assert_eq!(&code[4..5], "-");
    assert!(
        code.chars()
            .filter(|c| *c != '-')
            .all(|c| "ABCDEFGHJKMNPQRSTUVWXYZ23456789".contains(c)),
        "{code}"
    );

    let second = relay
        .client
        .create_account("Mike")
        .await
        .expect("create 2nd Mike");
    assert_eq!(second.account.tag, "whatsnap-account-Mike-2");
    let desk = relay
        .client
        .create_account("Front Desk")
        .await
        .expect("create");
    assert_eq!(desk.account.tag, "whatsnap-account-Front-Desk");

    let list = relay.client.list_accounts().await.expect("list");
    assert_eq!(list.len(), 3);
    for a in &list {
        assert_eq!(a.status, AccountState::Disconnected);
        assert_eq!(a.reason, Some(DisconnectReason::NeverPaired));
    }
}

#[tokio::test]
async fn a_name_without_letters_is_refused_with_a_hint() {
    let relay = start_relay().await;
    let err = relay
        .client
        .create_account("!!!")
        .await
        .expect_err("refused");
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("Front Desk"), "{err}");
}

#[tokio::test]
async fn admin_endpoints_need_the_right_token() {
    let relay = start_relay().await;
    let base = relay.handle.base_url();

    let err = AdminClient::new(&base, None)
        .list_accounts()
        .await
        .expect_err("no token");
    assert_eq!(err.status(), Some(401));
    assert!(err.to_string().contains("WHATSNAP_ADMIN_TOKEN"), "{err}");

    let err = AdminClient::new(&base, Some("guess".into()))
        .list_accounts()
        .await
        .expect_err("wrong token");
    assert_eq!(err.status(), Some(403));
    assert!(err.to_string().contains("--admin-token"), "{err}");
}

#[tokio::test]
async fn a_pairing_code_works_once() {
    let relay = start_relay().await;
    let created = relay.client.create_account("Mike").await.expect("create");
    // Users may type the code in lower case, without the dash.
    let typed = created.pairing.code.replace('-', "").to_lowercase();
    let paired = relay
        .anonymous()
        .pair(&typed, device_info())
        .await
        .expect("pair");
    assert!(
        paired.device_token.starts_with("wsd_"),
        "{}",
        paired.device_token
    );
    assert_eq!(paired.account_tag, "whatsnap-account-Mike");
    assert_eq!(paired.account_id, created.account.id);
    assert_eq!(paired.ws_url, relay.ws_url());

    let again = relay
        .anonymous()
        .pair(&created.pairing.code, device_info())
        .await
        .expect_err("used code");
    assert_eq!(again.status(), Some(401));
    assert_eq!(again.api_code(), Some("invalid_code"));

    let wrong = relay
        .anonymous()
        .pair("ABCD-EFGH", device_info())
        .await
        .expect_err("wrong code");
    assert_eq!(wrong.status(), Some(401));
    assert!(
        wrong
            .to_string()
            .contains("whatsnap-relay account pair-code"),
        "tells what to do: {wrong}"
    );

    // Paired but not yet connected: Disconnected, offline.
    let list = relay.client.list_accounts().await.expect("list");
    assert_eq!(list[0].reason, Some(DisconnectReason::Offline));
    assert_eq!(
        list[0].device_id.as_deref(),
        Some(paired.device_id.as_str())
    );
}

#[tokio::test]
async fn the_websocket_needs_a_valid_device_token() {
    let relay = start_relay().await;
    let (status, body) = try_connect(&relay.ws_url(), None)
        .await
        .err()
        .expect("no token refused");
    assert_eq!(status, 401);
    assert!(body.error.message.contains("whatsnap-mac pair"), "{body:?}");

    let (status, body) = try_connect(&relay.ws_url(), Some("wsd_not-a-real-token"))
        .await
        .err()
        .expect("wrong token refused");
    assert_eq!(status, 401);
    assert_eq!(body.error.code, "invalid_token");
}

#[tokio::test]
async fn pairing_again_replaces_the_old_device() {
    let mut relay = start_relay().await;
    let (account_id, old) = relay.paired_account("Mike").await;
    let mut old_daemon = FakeDaemon::connect(&relay, &old.device_token).await;
    old_daemon.handshake(&old.device_id).await;

    let code = relay
        .client
        .new_pairing_code("Mike")
        .await
        .expect("new code by name");
    let new = relay
        .anonymous()
        .pair(&code.code, device_info())
        .await
        .expect("pair again");
    assert_ne!(new.device_id, old.device_id);

    let (close, reason) = old_daemon.close_code().await;
    assert_eq!(close, 4409, "old socket closed as replaced: {reason}");

    let (status, body) = try_connect(&relay.ws_url(), Some(&old.device_token))
        .await
        .err()
        .expect("old token refused");
    assert_eq!(status, 401);
    assert_eq!(body.error.code, "replaced");

    let mut new_daemon = FakeDaemon::connect(&relay, &new.device_token).await;
    let welcome = new_daemon.handshake(&new.device_id).await;
    assert_eq!(welcome.account_id, account_id);
    relay
        .wait_for("account active with the new device", |e| {
            matches!(
                e,
                whatsnap_relay::RelayEvent::AccountStatus {
                    status: AccountState::Active,
                    ..
                }
            )
        })
        .await;
}

#[tokio::test]
async fn removing_an_account_closes_its_socket_4401() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let mut daemon = FakeDaemon::connect(&relay, &paired.device_token).await;
    daemon.handshake(&paired.device_id).await;

    relay
        .client
        .remove_account("whatsnap-account-Mike")
        .await
        .expect("remove by tag");
    let (code, _) = daemon.close_code().await;
    assert_eq!(code, 4401);
    let (status, body) = try_connect(&relay.ws_url(), Some(&paired.device_token))
        .await
        .err()
        .expect("revoked token refused");
    assert_eq!(status, 401);
    assert_eq!(body.error.code, "revoked");
    assert!(relay.client.list_accounts().await.expect("list").is_empty());
}

#[tokio::test]
async fn a_device_sees_itself_and_the_service_clock() {
    let relay = start_relay().await;
    let (account_id, paired) = relay.paired_account("Mike").await;
    let device = AdminClient::new(&relay.handle.base_url(), Some(paired.device_token.clone()));
    let before = now_ms();
    let view = device.device().await.expect("GET /v1/device");
    assert_eq!(view.device_id, paired.device_id);
    assert_eq!(view.account_id, account_id);
    assert_eq!(view.account_name, "Mike");
    assert_eq!(view.account_tag, "whatsnap-account-Mike");
    assert!(
        (before..=now_ms()).contains(&view.now_ms),
        "{} not now",
        view.now_ms
    );
    // The admin token is no device token.
    let admin_as_device = relay.client.device().await.expect_err("admin refused");
    assert_eq!(admin_as_device.status(), Some(401));
}

#[tokio::test]
async fn a_rotated_token_is_new_and_the_old_one_still_connects() {
    let relay = start_relay().await;
    let (_, paired) = relay.paired_account("Mike").await;
    let old = AdminClient::new(&relay.handle.base_url(), Some(paired.device_token.clone()));
    let rotated = old.rotate_device_token().await.expect("rotate");
    assert!(rotated.device_token.starts_with("wsd_"));
    assert_ne!(rotated.device_token, paired.device_token);
    let day = 24 * 60 * 60 * 1000;
    let left = rotated.previous_valid_until_ms - now_ms();
    assert!((day - 60_000..=day).contains(&left), "{left} ms left");
    // Both tokens open a session during the overlap.
    for token in [&paired.device_token, &rotated.device_token] {
        let mut daemon = FakeDaemon::connect(&relay, token).await;
        daemon.handshake(&paired.device_id).await;
    }
    let new = AdminClient::new(&relay.handle.base_url(), Some(rotated.device_token.clone()));
    assert_eq!(
        new.device().await.expect("new token").device_id,
        paired.device_id
    );
    // Unpairing revokes every token of the device, the previous one too.
    let unpaired = reqwest::Client::new()
        .delete(format!("{}/v1/device", relay.handle.base_url()))
        .bearer_auth(&rotated.device_token)
        .send()
        .await
        .expect("unpair");
    assert_eq!(unpaired.status(), 204);
    for client in [&old, &new] {
        let err = client.device().await.expect_err("revoked");
        assert_eq!(err.api_code(), Some("revoked"));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
