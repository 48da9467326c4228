//! The HTTP face of the service: admin API, pairing, health, and the device
//! websocket's upgrade (authentication happens here, the session itself in
//! [`crate::session`]).
//!
//! Every error answer is an [`ApiError`] JSON body whose message says what to
//! do; that includes bad JSON, unknown routes and auth failures, so the CLI
//! can always print something useful. Admin routes need
//! `Authorization: Bearer <admin token>`: missing → 401, wrong → 403.

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Map, Value};
use whatsnap_proto::api::{
    AccountView, ApiError, ContactView, CreateAccountRequest, CreateAccountResponse, DeviceView,
    MessageView, PairRequest, PairResponse, PairingCode, RotateTokenResponse, SendMessageRequest,
    SetContactTagRequest,
};
use whatsnap_proto::close;

use crate::store::{self, ServiceError};
use crate::{AppState, RelayEvent, now_ms, secret, session};

/// Hard cap handed to the websocket library; frames between the protocol's
/// 1 MiB and this are read and refused by the session with close 1009, so
/// the daemon learns why instead of seeing a dropped connection.
const WS_HARD_CAP_BYTES: usize = 4 * whatsnap_proto::DEFAULT_MAX_FRAME_BYTES;

/// Wrong pairing codes one client address may try per window.
pub(crate) const PAIR_FAILURES_PER_WINDOW: u32 = 10;
/// The window of [`PAIR_FAILURES_PER_WINDOW`].
pub(crate) const PAIR_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// Counts wrong pairing codes per client address, so a brute-force loop is
/// answered `429` long before it could find a code (protocol §13).
#[derive(Default)]
pub(crate) struct PairLimiter {
    failures: std::sync::Mutex<HashMap<IpAddr, (std::time::Instant, u32)>>,
}

impl PairLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (std::time::Instant, u32)>> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Some(wait)` while `ip` has used up its wrong tries.
    fn blocked(&self, ip: IpAddr) -> Option<std::time::Duration> {
        let now = std::time::Instant::now();
        let mut map = self.lock();
        map.retain(|_, (start, _)| now.duration_since(*start) < PAIR_WINDOW);
        let (start, count) = map.get(&ip)?;
        (*count >= PAIR_FAILURES_PER_WINDOW)
            .then(|| PAIR_WINDOW.saturating_sub(now.duration_since(*start)))
    }

    fn failed(&self, ip: IpAddr) {
        let now = std::time::Instant::now();
        let mut map = self.lock();
        let entry = map.entry(ip).or_insert((now, 0));
        entry.1 += 1;
    }
}

/// An error answer: status plus [`ApiError`] body.
#[derive(Debug)]
pub(crate) struct ApiFailure {
    status: StatusCode,
    body: ApiError,
}

impl ApiFailure {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiFailure {
            status,
            body: ApiError::new(code, message),
        }
    }
}

impl From<ServiceError> for ApiFailure {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Refused {
                status,
                code,
                message,
            } => ApiFailure::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                code,
                message,
            ),
            other => {
                tracing::error!(error = %other, "request failed");
                ApiFailure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("the service failed: {other}; see the service log and retry"),
                )
            }
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiFailure>;

fn body<T>(input: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    input.map(|Json(t)| t).map_err(|e| {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the request body is not what this endpoint takes: {e}"),
        )
    })
}

/// The routes of the service.
pub(crate) fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/v1/accounts", post(create_account).get(list_accounts))
        .route("/v1/accounts/{id}", delete(remove_account))
        .route("/v1/accounts/{id}/pairing-code", post(new_pairing_code))
        .route("/v1/accounts/{id}/settings", patch(update_settings))
        .route("/v1/contacts", get(list_contacts))
        .route("/v1/contacts/{id}/account-tag", put(set_contact_tag))
        .route("/v1/messages", post(send_message).get(list_messages))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/pair", post(pair))
        .route("/v1/device/ws", get(device_ws))
        .route("/v1/device", delete(unpair).get(device_view))
        .route("/v1/device/token/rotate", post(rotate_token))
        .merge(admin)
        .fallback(|| async {
            ApiFailure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; check the --server URL and the whatsnap-relay version",
            )
        })
        .with_state(state)
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    const HOW: &str = "pass the admin token with --admin-token or WHATSNAP_ADMIN_TOKEN (`whatsnap-relay serve` stores it in <data-dir>/admin-token)";
    let Some(token) = bearer(req.headers()) else {
        return ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            format!("this endpoint needs the admin token; {HOW}"),
        )
        .into_response();
    };
    let hash = secret::sha256(token.as_bytes());
    if !secret::constant_time_eq(&hash, &state.inner.admin_token_hash) {
        return ApiFailure::new(
            StatusCode::FORBIDDEN,
            "wrong_token",
            format!("the admin token is wrong; {HOW}"),
        )
        .into_response();
    }
    next.run(req).await
}

fn view(state: &AppState, account: &store::AccountRecord) -> AccountView {
    let live = account
        .device
        .as_ref()
        .and_then(|d| state.inner.hub.live_since(&d.id));
    store::account_view(account, live)
}

async fn create_account(
    State(state): State<AppState>,
    req: Result<Json<CreateAccountRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreateAccountResponse>)> {
    let req = body(req)?;
    let now = now_ms();
    let (account, code) = state
        .inner
        .db
        .call(move |c| store::create_account(c, &req.name, now))
        .await?;
    tracing::info!(account = account.id, tag = account.tag, "account created");
    Ok((
        StatusCode::CREATED,
        Json(store::create_account_response(&account, code)),
    ))
}

async fn list_accounts(State(state): State<AppState>) -> ApiResult<Json<Vec<AccountView>>> {
    let accounts = state.inner.db.call(|c| store::list_accounts(c)).await?;
    Ok(Json(accounts.iter().map(|a| view(&state, a)).collect()))
}

async fn remove_account(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<AccountView>> {
    let now = now_ms();
    let (account, devices) = state
        .inner
        .db
        .call(move |c| store::remove_account(c, &key, now))
        .await?;
    for device in &devices {
        state.inner.hub.close(
            device,
            close::UNAUTHORIZED,
            "this device's account was removed; pair again with `whatsnap-mac pair`",
        );
    }
    tracing::info!(account = account.id, "account removed");
    Ok(Json(view(&state, &account)))
}

async fn new_pairing_code(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<PairingCode>> {
    let now = now_ms();
    let code = state
        .inner
        .db
        .call(move |c| store::new_pairing_code(c, &key, now))
        .await?;
    Ok(Json(code))
}

async fn update_settings(
    State(state): State<AppState>,
    Path(key): Path<String>,
    req: Result<Json<Map<String, Value>>, JsonRejection>,
) -> ApiResult<Json<AccountView>> {
    let values = body(req)?;
    let now = now_ms();
    let (account, device) = state
        .inner
        .db
        .call(move |c| store::update_settings(c, &key, values, now))
        .await?;
    if let Some(device) = device {
        state.inner.hub.pump(&device);
    }
    Ok(Json(view(&state, &account)))
}

async fn pair(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Result<Json<PairRequest>, JsonRejection>,
) -> Result<Json<PairResponse>, Response> {
    let ip = peer.ip();
    if let Some(wait) = state.inner.pair_failures.blocked(ip) {
        let secs = wait.as_secs().max(1);
        let failure = ApiFailure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many wrong pairing codes from this address; wait {secs} s, then try the code the admin gave you"
            ),
        );
        return Err(([(header::RETRY_AFTER, secs.to_string())], failure).into_response());
    }
    let req = body(req).map_err(IntoResponse::into_response)?;
    let now = now_ms();
    let paired = match state
        .inner
        .db
        .call(move |c| store::pair(c, &req.code, &req.device, now))
        .await
    {
        Ok(p) => p,
        Err(e) => {
            if matches!(
                e,
                ServiceError::Refused {
                    code: "invalid_code",
                    ..
                }
            ) {
                state.inner.pair_failures.failed(ip);
            }
            return Err(ApiFailure::from(e).into_response());
        }
    };
    for old in &paired.replaced {
        state.inner.hub.close(
            old,
            close::REPLACED,
            "this account was paired with another device; run `whatsnap-mac pair` to take it back",
        );
    }
    let base = &state.inner.public_url;
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.clone()
    };
    tracing::info!(
        account = paired.account.id,
        device = paired.device_id,
        "device paired"
    );
    Ok(Json(PairResponse {
        device_id: paired.device_id,
        account_id: paired.account.id,
        account_name: paired.account.name,
        account_tag: paired.account.tag,
        ws_url: format!("{ws_base}/v1/device/ws"),
        device_token: paired.device_token,
        settings: Some(paired.account.settings),
    }))
}

async fn list_contacts(State(state): State<AppState>) -> ApiResult<Json<Vec<ContactView>>> {
    Ok(Json(
        state.inner.db.call(|c| store::list_contacts(c)).await?,
    ))
}

async fn set_contact_tag(
    State(state): State<AppState>,
    Path(key): Path<String>,
    req: Result<Json<SetContactTagRequest>, JsonRejection>,
) -> ApiResult<Json<ContactView>> {
    let req = body(req)?;
    let now = now_ms();
    let contact = state
        .inner
        .db
        .call(move |c| store::set_contact_tag(c, &key, &req.tag, now))
        .await?;
    Ok(Json(contact))
}

async fn send_message(
    State(state): State<AppState>,
    req: Result<Json<SendMessageRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<MessageView>)> {
    let req = body(req)?;
    let now = now_ms();
    let queued = state
        .inner
        .db
        .call(move |c| store::queue_message(c, &req, now))
        .await?;
    if !queued.created {
        return Ok((StatusCode::OK, Json(queued.view)));
    }
    if let (Some(device), Some(id)) = (&queued.device_id, &queued.view.client_msg_id) {
        state.emit(RelayEvent::CommandQueued {
            account_id: queued.view.account_id.clone(),
            client_msg_id: id.clone(),
        });
        state.inner.hub.pump(device);
    }
    Ok((StatusCode::ACCEPTED, Json(queued.view)))
}

#[derive(Deserialize)]
struct MessagesQuery {
    contact: Option<String>,
}

async fn list_messages(
    State(state): State<AppState>,
    Query(q): Query<MessagesQuery>,
) -> ApiResult<Json<Vec<MessageView>>> {
    let messages = state
        .inner
        .db
        .call(move |c| store::list_messages(c, q.contact.as_deref()))
        .await?;
    Ok(Json(messages))
}

/// `DELETE /v1/device`: the device revokes itself (`whatsnap-mac unpair`);
/// its open socket, if any, is closed with 4401.
async fn unpair(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let device = match device_auth(&state, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let device_id = device.id.clone();
    let now = now_ms();
    if let Err(e) = state
        .inner
        .db
        .call(move |c| store::unpair_device(c, &device_id, now))
        .await
    {
        return ApiFailure::from(e).into_response();
    }
    state.inner.hub.close(
        &device.id,
        close::UNAUTHORIZED,
        "this Mac was unpaired; pair again with `whatsnap-mac pair`",
    );
    tracing::info!(device = device.id, "device unpaired itself");
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /v1/device`: who the service takes the token's device for, and the
/// service's clock. `whatsnap-mac doctor` calls it to prove the stored token
/// with a live request and to measure clock skew.
async fn device_view(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let device = match device_auth(&state, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let account_id = device.account_id.clone();
    let account = match state
        .inner
        .db
        .call(move |c| store::account_by_id(c, &account_id))
        .await
    {
        Ok(Some(a)) => a,
        Ok(None) => {
            return ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "revoked",
                "this device's account was removed; run `whatsnap-mac pair` with a new code",
            )
            .into_response();
        }
        Err(e) => return ApiFailure::from(e).into_response(),
    };
    Json(DeviceView {
        device_id: device.id,
        account_id: account.id,
        account_name: account.name,
        account_tag: account.tag,
        now_ms: now_ms(),
    })
    .into_response()
}

/// `POST /v1/device/token/rotate`: a new token for the device. The one the
/// request carried (and the one it replaces, if the daemon rotates again
/// with an older token after a crash) keeps working for 24 h.
async fn rotate_token(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let device = match device_auth(&state, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let device_id = device.id.clone();
    let now = now_ms();
    match state
        .inner
        .db
        .call(move |c| rotate_device_token(c, &device_id, now))
        .await
    {
        Ok(rotated) => {
            tracing::info!(device = device.id, "device token rotated");
            Json(rotated).into_response()
        }
        Err(e) => ApiFailure::from(e).into_response(),
    }
}

/// Gives `device_id` a new token; its current one becomes a previous token,
/// valid [`secret::PREVIOUS_TOKEN_VALID_MS`] more. Previous tokens already
/// past their time are dropped on the way.
fn rotate_device_token(
    conn: &mut Connection,
    device_id: &str,
    now: i64,
) -> Result<RotateTokenResponse, ServiceError> {
    let tx = conn.transaction()?;
    let current: String = tx.query_row(
        "SELECT token_hash FROM devices WHERE id = ?1",
        [device_id],
        |r| r.get(0),
    )?;
    let token = secret::new_device_token()?;
    let valid_until = now + secret::PREVIOUS_TOKEN_VALID_MS;
    tx.execute(
        "DELETE FROM previous_device_tokens WHERE valid_until_ms <= ?1",
        [now],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO previous_device_tokens (token_hash, device_id, valid_until_ms)
         VALUES (?1, ?2, ?3)",
        params![current, device_id, valid_until],
    )?;
    tx.execute(
        "UPDATE devices SET token_hash = ?2 WHERE id = ?1",
        params![device_id, secret::sha256_hex(&token)],
    )?;
    tx.commit()?;
    Ok(RotateTokenResponse {
        device_token: token,
        previous_valid_until_ms: valid_until,
    })
}

/// The device whose token hashes to `token_hash`: its current token, or a
/// previous one still inside its 24 h after a rotation.
fn device_by_any_token(
    conn: &Connection,
    token_hash: &str,
    now: i64,
) -> Result<Option<store::DeviceAuth>, ServiceError> {
    if let Some(device) = store::device_by_token(conn, token_hash)? {
        return Ok(Some(device));
    }
    let device = conn
        .query_row(
            "SELECT d.id, d.account_id, d.revoked_ms, d.replaced_ms
             FROM previous_device_tokens p JOIN devices d ON d.id = p.device_id
             WHERE p.token_hash = ?1 AND p.valid_until_ms > ?2",
            params![token_hash, now],
            store::DeviceAuth::from_row,
        )
        .optional()?;
    Ok(device)
}

/// The current device whose token the request carries, or the answer that
/// refuses it (401 in every case: missing, malformed, unknown, revoked).
async fn device_auth(state: &AppState, headers: &HeaderMap) -> Result<store::DeviceAuth, Response> {
    let Some(token) = bearer(headers) else {
        return Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "connect with `Authorization: Bearer <device token>`; get a token with `whatsnap-mac pair`",
        )
        .into_response());
    };
    let hash = secret::sha256_hex(token);
    let now = now_ms();
    let device = match state
        .inner
        .db
        .call(move |c| device_by_any_token(c, &hash, now))
        .await
    {
        Ok(d) => d,
        Err(e) => return Err(ApiFailure::from(e).into_response()),
    };
    match device {
        None => Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "this device token is not known to the service; run `whatsnap-mac pair` with a new code",
        )
        .into_response()),
        Some(d) if d.revoked => Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "revoked",
            "this device was unpaired or removed by an admin; run `whatsnap-mac pair` with a new code",
        )
        .into_response()),
        Some(d) if d.replaced => Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "replaced",
            "this account was paired with another device since; run `whatsnap-mac pair` with a new code to take it back",
        )
        .into_response()),
        Some(d) => Ok(d),
    }
}

async fn device_ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let device = match device_auth(&state, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let tracker = state.inner.sessions.clone();
    ws.protocols([whatsnap_proto::SUBPROTOCOL])
        .max_message_size(WS_HARD_CAP_BYTES)
        .max_frame_size(WS_HARD_CAP_BYTES)
        .on_upgrade(move |socket| tracker.track_future(session::run(state, device, socket)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use whatsnap_proto::api::DeviceInfo;

    fn paired_device(conn: &mut Connection) -> (String, String) {
        let (_, code) = store::create_account(conn, "Mike", 0).expect("account");
        let device = DeviceInfo {
            name: "Mac".into(),
            model: String::new(),
            macos_version: String::new(),
            daemon_version: String::new(),
            hw_id_hash: None,
        };
        let paired = store::pair(conn, &code.code, &device, 1).expect("pair");
        (paired.device_id, paired.device_token)
    }

    fn who(conn: &Connection, token: &str, now: i64) -> Option<String> {
        device_by_any_token(conn, &secret::sha256_hex(token), now)
            .expect("query")
            .map(|d| d.id)
    }

    #[test]
    fn a_rotated_token_keeps_working_24_hours_then_stops() {
        let mut conn = Connection::open_in_memory().expect("db");
        crate::db::migrate_for_tests(&mut conn);
        let (device, old) = paired_device(&mut conn);
        let t0 = 1_000_000;
        let rotated = rotate_device_token(&mut conn, &device, t0).expect("rotate");
        assert_ne!(rotated.device_token, old);
        assert_eq!(
            rotated.previous_valid_until_ms,
            t0 + secret::PREVIOUS_TOKEN_VALID_MS
        );
        // Both work during the overlap …
        let last_minute = t0 + secret::PREVIOUS_TOKEN_VALID_MS - 60_000;
        assert_eq!(who(&conn, &old, last_minute), Some(device.clone()));
        assert_eq!(
            who(&conn, &rotated.device_token, last_minute),
            Some(device.clone())
        );
        // … then only the new one.
        let after = t0 + secret::PREVIOUS_TOKEN_VALID_MS;
        assert_eq!(who(&conn, &old, after), None);
        assert_eq!(who(&conn, &rotated.device_token, after), Some(device));
    }

    #[test]
    fn rotating_again_after_a_lost_answer_leaves_every_token_usable_for_a_day() {
        let mut conn = Connection::open_in_memory().expect("db");
        crate::db::migrate_for_tests(&mut conn);
        let (device, old) = paired_device(&mut conn);
        // The daemon crashed before storing `lost`; an hour later it
        // rotates again with its old token.
        let lost = rotate_device_token(&mut conn, &device, 0).expect("rotate");
        let hour = 3_600_000;
        let kept = rotate_device_token(&mut conn, &device, hour).expect("rotate again");
        for token in [&old, &lost.device_token, &kept.device_token] {
            assert_eq!(who(&conn, token, 2 * hour), Some(device.clone()));
        }
        // The old token's day is not extended by the second rotation.
        let day = secret::PREVIOUS_TOKEN_VALID_MS;
        assert_eq!(who(&conn, &old, day), None);
        assert_eq!(who(&conn, &lost.device_token, day), Some(device.clone()));
        assert_eq!(who(&conn, &lost.device_token, day + hour), None);
        assert_eq!(who(&conn, &kept.device_token, day + hour), Some(device));
    }
}
