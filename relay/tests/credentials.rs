//! Every door of the service, tried with a missing, malformed, wrong and
//! revoked credential; and a brute-force loop over pairing codes, which the
//! per-code and per-address limits stop (protocol §13–14).

mod common;

use common::{device_info, start_relay, try_connect};
use reqwest::{Method, StatusCode};

/// Admin routes (admin token) and device routes (device token), with a
/// syntactically valid body where one is needed, so only the credential can
/// be what is refused.
const ADMIN_ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/v1/accounts", r#"{"name":"Intruder"}"#),
    ("GET", "/v1/accounts", ""),
    ("DELETE", "/v1/accounts/{id}", ""),
    ("POST", "/v1/accounts/{id}/pairing-code", ""),
    (
        "PATCH",
        "/v1/accounts/{id}/settings",
        r#"{"log_level":"debug"}"#,
    ),
    ("GET", "/v1/contacts", ""),
    (
        "PUT",
        "/v1/contacts/{id}/account-tag",
        r#"{"tag":"whatsnap-account-Mike"}"#,
    ),
    (
        "POST",
        "/v1/messages",
        r#"{"contact":"+15551234567","text":"x"}"#,
    ),
    ("GET", "/v1/messages", ""),
];
const DEVICE_ROUTES: &[(&str, &str)] = &[
    ("DELETE", "/v1/device"),
    ("GET", "/v1/device"),
    ("POST", "/v1/device/token/rotate"),
];

#[derive(Debug, Clone, Copy)]
enum Cred {
    Missing,
    Malformed,
    Empty,
    Wrong,
    Revoked,
}

fn header_for(cred: Cred, revoked_device_token: &str) -> Option<String> {
    match cred {
        Cred::Missing => None,
        Cred::Malformed => Some("Basic YWRtaW46YWRtaW4=".into()),
        Cred::Empty => Some("Bearer ".into()),
        Cred::Wrong => Some("Bearer wsd_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
        Cred::Revoked => Some(format!("Bearer {revoked_device_token}")),
    }
}

const ALL: [Cred; 5] = [
    Cred::Missing,
    Cred::Malformed,
    Cred::Empty,
    Cred::Wrong,
    Cred::Revoked,
];

#[test]
fn the_route_list_covers_every_route_of_the_spec() {
    let spec = include_str!("../../docs/protocol.md");
    for line in spec.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let Some((route, _)) = rest.split_once('`') else {
            continue;
        };
        let Some((method, path)) = route.split_once(' ') else {
            continue;
        };
        if !matches!(method, "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
            continue;
        }
        let known = ADMIN_ROUTES
            .iter()
            .any(|(m, p, _)| *m == method && *p == path)
            || DEVICE_ROUTES
                .iter()
                .any(|(m, p)| *m == method && *p == path)
            || path == "/v1/pair"
            || path == "/v1/device/ws";
        assert!(known, "{method} {path} is in the spec but not tried here");
    }
}

#[tokio::test]
async fn every_route_refuses_a_missing_malformed_wrong_or_revoked_credential() {
    let relay = start_relay().await;
    let (account_id, paired) = relay.paired_account("Mike").await;
    // A second device for Mike that unpairs itself: its token is revoked.
    let code = relay
        .client
        .new_pairing_code(&account_id)
        .await
        .expect("code");
    let old = relay
        .anonymous()
        .pair(&code.code, device_info())
        .await
        .expect("pair again");
    let http = reqwest::Client::new();
    let base = relay.handle.base_url();
    let unpaired = http
        .delete(format!("{base}/v1/device"))
        .bearer_auth(&old.device_token)
        .send()
        .await
        .expect("unpair");
    assert_eq!(unpaired.status(), StatusCode::NO_CONTENT);
    let revoked = old.device_token.clone();
    let _ = paired;

    for (method, path, body) in ADMIN_ROUTES {
        let url = format!("{base}{}", path.replace("{id}", &account_id));
        for cred in ALL {
            let mut req =
                http.request(Method::from_bytes(method.as_bytes()).expect("method"), &url);
            if let Some(h) = header_for(cred, &revoked) {
                req = req.header("authorization", h);
            }
            if !body.is_empty() {
                req = req.header("content-type", "application/json").body(*body);
            }
            let resp = req.send().await.expect("answer");
            let want = match cred {
                Cred::Missing | Cred::Malformed | Cred::Empty => StatusCode::UNAUTHORIZED,
                Cred::Wrong | Cred::Revoked => StatusCode::FORBIDDEN,
            };
            let status = resp.status();
            let text = resp.text().await.expect("body");
            assert_eq!(status, want, "{method} {path} with {cred:?}: {text}");
            assert!(text.contains("admin token"), "says what to do: {text}");
        }
    }
    for (method, path) in DEVICE_ROUTES {
        for cred in ALL {
            let mut req = http.request(
                Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{base}{path}"),
            );
            if let Some(h) = header_for(cred, &revoked) {
                req = req.header("authorization", h);
            }
            let resp = req.send().await.expect("answer");
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {cred:?}"
            );
            let text = resp.text().await.expect("body");
            assert!(
                text.contains("whatsnap-mac pair"),
                "says what to do: {text}"
            );
        }
    }
    // The websocket endpoint.
    let ws = relay.ws_url();
    for cred in ALL {
        let result = match header_for(cred, &revoked) {
            None => try_connect(&ws, None).await,
            Some(h) => {
                let token = h.strip_prefix("Bearer ").map(str::trim);
                match token {
                    // try_connect always writes "Bearer <t>"; a non-bearer
                    // scheme is checked through a raw request below.
                    Some(t) if !t.is_empty() => try_connect(&ws, Some(t)).await,
                    _ => raw_ws_upgrade(&ws, &h).await,
                }
            }
        };
        match result {
            Ok(_) => panic!("the websocket accepted {cred:?}"),
            Err((status, e)) => {
                assert_eq!(status, 401, "{cred:?}: {e:?}");
            }
        }
    }
    // Nothing happened: still one account, no contacts, no messages.
    assert_eq!(relay.client.list_accounts().await.expect("list").len(), 1);
    assert!(
        relay
            .client
            .list_contacts()
            .await
            .expect("contacts")
            .is_empty()
    );
    assert!(
        relay
            .client
            .list_messages(None)
            .await
            .expect("messages")
            .is_empty()
    );
}

async fn raw_ws_upgrade(
    url: &str,
    authorization: &str,
) -> Result<common::FakeDaemon, (u16, whatsnap_proto::api::ApiError)> {
    let http_url = url.replacen("ws://", "http://", 1);
    let resp = reqwest::Client::new()
        .get(http_url)
        .header("authorization", authorization)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", whatsnap_proto::SUBPROTOCOL)
        .send()
        .await
        .expect("answer");
    let status = resp.status().as_u16();
    let body: whatsnap_proto::api::ApiError = resp.json().await.expect("ApiError body");
    Err((status, body))
}

#[tokio::test]
async fn a_brute_force_loop_over_pairing_codes_is_stopped() {
    let relay = start_relay().await;
    let created = relay.client.create_account("Mike").await.expect("account");
    let anonymous = relay.anonymous();
    let mut statuses = Vec::new();
    for i in 0..15u32 {
        let guess = format!("ZZZZ-{:04}", 2222 + i);
        let err = anonymous
            .pair(&guess, device_info())
            .await
            .expect_err("a guess never pairs");
        statuses.push(err.status().unwrap_or(0));
    }
    // Ten wrong codes from one address, then 429 with Retry-After.
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/pair", relay.handle.base_url()))
        .json(&serde_json::json!({"code": created.pairing.code, "device": {"name": "x"}}))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=600).contains(&retry), "{retry}");
}
