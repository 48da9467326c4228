//! The websocket link to the account service.
//!
//! One outbound connection, authenticated by the device token in the
//! `Authorization` header. Each session starts with `hello`/`welcome`, in
//! which both sides say how far they got; then the daemon resends every event
//! the service has not acked and streams new ones as the reader appends them,
//! while commands from the service are recorded in the store before they are
//! acked. A lost connection is retried forever with full-jitter backoff; only
//! the terminal close codes (token revoked, device replaced, protocol too old)
//! stop the retries, and they become a visible state with the action to take.

pub mod keychain;
pub mod netchange;
pub mod pair;
pub mod rotate;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use whatsnap_proto::close::{self, CloseAction, CloseReason};
use whatsnap_proto::frame::{
    self, Ack, Body, DecodeError, Frame, Hello, HelloCommands, HelloEvents, Pong, SettingsData,
    Status, Stream,
};

use crate::reader::ReaderHealth;
use crate::store::{Accepted, Store};
use pair::Credentials;

/// Acked outbox rows are deleted once this many have piled up (or when
/// nothing is in flight).
const OUTBOX_DELETE_EVERY: u64 = 1000;

/// Events in flight without an ack, at most.
pub const EVENTS_WINDOW: usize = 1000;

/// The link's state, for `status` and the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Dialling.
    Connecting,
    /// `welcome` received.
    Connected {
        /// The account's tag.
        account_tag: String,
    },
    /// Waiting before the next attempt.
    Retrying {
        /// Why the last attempt ended.
        reason: String,
        /// Delay before the next.
        retry_in: Duration,
    },
    /// Stopped for good: the user must act.
    Stopped {
        /// What happened and what to do.
        reason: String,
    },
}

/// Everything a session needs.
#[derive(Debug, Clone)]
pub struct Link {
    /// Where and as whom to connect.
    pub creds: Credentials,
    /// The daemon's store.
    pub store: Store,
    /// Woken when the reader or the sender appended events.
    pub outbox: Arc<Notify>,
    /// Woken when a send was queued.
    pub send_wake: Arc<Notify>,
    /// Where `cmd.send` commands are accepted: through the send worker, so
    /// one that can leave at once is accepted and begun in one commit
    /// (`None`: straight into the store's queue).
    pub admission: Option<crate::send::Admission>,
    /// The link's state.
    pub state: watch::Sender<LinkState>,
    /// The reader's health, reported in `status` frames.
    pub reader_health: watch::Receiver<ReaderHealth>,
    /// When the daemon started.
    pub started: Instant,
    /// Ceiling of the reconnect delay ([`MAX_BACKOFF`] outside tests).
    pub backoff_cap: Duration,
    /// The account's settings in force, published after they are stored.
    pub settings: watch::Sender<SettingsData>,
}

/// How the link dials: the token to present, newest first after a rotation
/// ([`rotate`] publishes it only once it is stored), and the HTTPS client
/// whose roots (platform plus `--ca-file`) check the service's certificate.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The current device token.
    pub token: watch::Receiver<String>,
    /// The client the websocket upgrade goes through.
    pub client: reqwest::Client,
}

impl Dial {
    /// The credentials' own token, for ever, and the platform's roots.
    pub fn fixed(creds: &Credentials) -> Result<Dial, tls::TlsError> {
        // Nobody rotates: the sender goes at once, the value stays.
        let (_, token) = watch::channel(creds.device_token.clone());
        Ok(Dial {
            token,
            client: tls::http_client(None, None)?,
        })
    }
}

/// How a session ended.
enum SessionEnd {
    /// Shut down on request.
    Shutdown,
    /// Retry after backoff (`stable` if the session lived long after welcome).
    Retry { reason: String, stable: bool },
    /// Retry no sooner than this.
    RetryAfter { reason: String, delay: Duration },
    /// Do not retry.
    Terminal { reason: String },
}

/// Whole-link failures inside a session.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Ws(#[from] tungstenite::Error),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Protocol(String),
}

/// The longest reconnect delay of the protocol (§11).
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Full-jitter backoff: random in `[250 ms, min(60 s, 1 s · 2^attempt)]`.
pub fn backoff_delay(attempt: u32) -> Duration {
    backoff_delay_capped(attempt, MAX_BACKOFF)
}

/// [`backoff_delay`] with another ceiling than 60 s (the chaos harness uses
/// a short one so that 30 service restarts do not take half an hour).
pub fn backoff_delay_capped(attempt: u32, cap: Duration) -> Duration {
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    let cap_ms = cap_ms.min(1000u64.saturating_mul(1 << attempt.min(16)));
    Duration::from_millis(fastrand::u64(250..=cap_ms.max(250)))
}

impl Link {
    /// Runs sessions until shutdown or a terminal close, with the
    /// credentials' token and the platform's roots.
    pub async fn run(self, shutdown: CancellationToken) {
        match Dial::fixed(&self.creds) {
            Ok(dial) => self.run_with(dial, shutdown).await,
            Err(e) => {
                let reason = e.to_string();
                tracing::error!("{reason}");
                self.state.send_replace(LinkState::Stopped { reason });
            }
        }
    }

    /// Runs sessions until shutdown or a terminal close; each connection
    /// presents the token `dial` holds at that moment.
    pub async fn run_with(self, dial: Dial, shutdown: CancellationToken) {
        let mut attempt: u32 = 0;
        loop {
            self.state.send_replace(LinkState::Connecting);
            let end = self.session(&dial, &shutdown).await;
            let delay = match end {
                SessionEnd::Shutdown => return,
                SessionEnd::Terminal { reason } => {
                    tracing::error!("{reason}");
                    self.state.send_replace(LinkState::Stopped { reason });
                    return;
                }
                SessionEnd::Retry { reason, stable } => {
                    if stable {
                        attempt = 0;
                    }
                    let delay = backoff_delay_capped(attempt, self.backoff_cap);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        "link lost: {reason}"
                    );
                    self.state.send_replace(LinkState::Retrying {
                        reason,
                        retry_in: delay,
                    });
                    delay
                }
                SessionEnd::RetryAfter { reason, delay } => {
                    tracing::warn!(delay_ms = delay.as_millis() as u64, "link closed: {reason}");
                    self.state.send_replace(LinkState::Retrying {
                        reason,
                        retry_in: delay,
                    });
                    delay
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(&self, dial: &Dial, shutdown: &CancellationToken) -> SessionEnd {
        let connect = self.connect(dial);
        let ws = tokio::select! {
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
            r = tokio::time::timeout(Duration::from_secs(20), connect) => r,
        };
        let ws = match ws {
            Err(_) => {
                return SessionEnd::Retry {
                    reason: "connecting timed out after 20 s".into(),
                    stable: false,
                };
            }
            Ok(Err(end)) => return end,
            Ok(Ok(ws)) => ws,
        };
        let (mut ws, route) = ws;
        match self.speak(&mut ws, route, shutdown).await {
            Ok(end) => end,
            Err(e) => {
                let _ = ws.close(None).await;
                SessionEnd::Retry {
                    reason: e.to_string(),
                    stable: false,
                }
            }
        }
    }

    /// The websocket upgrade (protocol §2), through the HTTPS client so the
    /// certificate check is the one `pair` passed. The token travels in the
    /// `Authorization` header only.
    async fn connect(
        &self,
        dial: &Dial,
    ) -> Result<
        (
            tokio_tungstenite::WebSocketStream<reqwest::Upgraded>,
            Option<netchange::Route>,
        ),
        SessionEnd,
    > {
        let url = match pair::check_server_url(&self.creds.ws_url) {
            Ok(mut url) => {
                let scheme = if url.scheme() == "wss" || url.scheme() == "https" {
                    "https"
                } else {
                    "http"
                };
                // Both pairs of schemes are "special": switching is allowed.
                let _ = url.set_scheme(scheme);
                url
            }
            Err(e) => {
                return Err(SessionEnd::Terminal {
                    reason: format!(
                        "the service URL in the credentials is unusable ({e}); run `whatsnap-mac pair` again"
                    ),
                });
            }
        };
        let token = dial.token.borrow().clone();
        let key = tungstenite::handshake::client::generate_key();
        let request = dial
            .client
            .get(url)
            .version(reqwest::Version::HTTP_11)
            .header(reqwest::header::CONNECTION, "Upgrade")
            .header(reqwest::header::UPGRADE, "websocket")
            .header(reqwest::header::SEC_WEBSOCKET_VERSION, "13")
            .header(reqwest::header::SEC_WEBSOCKET_KEY, &key)
            .header(
                reqwest::header::SEC_WEBSOCKET_PROTOCOL,
                whatsnap_proto::SUBPROTOCOL,
            )
            .header(
                reqwest::header::USER_AGENT,
                format!(
                    "whatsnap-mac/{} (macOS {})",
                    env!("CARGO_PKG_VERSION"),
                    pair::macos_version()
                ),
            )
            .bearer_auth(token);
        let response = request.send().await.map_err(|e| SessionEnd::Retry {
            reason: format!(
                "cannot connect to {}: {}",
                self.creds.ws_url,
                tls::error_chain(&e.without_url())
            ),
            stable: false,
        })?;
        let status = response.status().as_u16();
        if status != 101 {
            let wait = retry_after(response.headers());
            let body = response.text().await.unwrap_or_default();
            let detail = serde_json::from_str::<whatsnap_proto::api::ApiError>(&body)
                .map(|e| e.error.message)
                .unwrap_or_else(|_| format!("HTTP {status}"));
            return Err(match status {
                401 | 403 => SessionEnd::Terminal {
                    reason: format!(
                        "the service rejected this device ({detail}); run `whatsnap-mac pair` with a new code"
                    ),
                },
                429 | 503 => SessionEnd::RetryAfter {
                    reason: format!("service busy ({detail})"),
                    // A `Retry-After: 0` must not become a busy loop.
                    delay: wait
                        .unwrap_or(Duration::from_secs(5))
                        .max(Duration::from_millis(250)),
                },
                _ => SessionEnd::Retry {
                    reason: format!("upgrade refused: {detail}"),
                    stable: false,
                },
            });
        }
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accepted = response
            .headers()
            .get(reqwest::header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == accept.as_bytes());
        if !accepted {
            return Err(SessionEnd::Retry {
                reason: "the service answered the upgrade without a valid Sec-WebSocket-Accept (a proxy in the way?)".into(),
                stable: false,
            });
        }
        // The local address this connection leaves from, to notice a
        // change of network later (see `netchange`).
        let route = response.remote_addr().and_then(|peer| {
            netchange::local_ip_towards(peer)
                .ok()
                .map(|local| netchange::Route { peer, local })
        });
        let upgraded = response.upgrade().await.map_err(|e| SessionEnd::Retry {
            reason: format!(
                "the websocket upgrade failed: {}",
                tls::error_chain(&e.without_url())
            ),
            stable: false,
        })?;
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(whatsnap_proto::DEFAULT_MAX_FRAME_BYTES))
            .max_frame_size(Some(whatsnap_proto::DEFAULT_MAX_FRAME_BYTES));
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            upgraded,
            Role::Client,
            Some(config),
        )
        .await;
        Ok((ws, route))
    }

    async fn speak<S>(
        &self,
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
        route: Option<netchange::Route>,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, SessionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let store = self.store.clone();
        let ((events_epoch, last_seq), (commands_epoch, acked_upto), settings_version) =
            crate::blocking(move || -> Result<_, crate::store::StoreError> {
                Ok((
                    store.events_position()?,
                    store.commands_position()?,
                    store.settings()?.version,
                ))
            })
            .await?;
        let hello = Frame::new(
            Body::Hello(Hello {
                device_id: self.creds.device_id.clone(),
                daemon_version: env!("CARGO_PKG_VERSION").into(),
                macos_version: pair::macos_version(),
                protocols: vec![whatsnap_proto::PROTOCOL_VERSION],
                events: HelloEvents {
                    epoch: events_epoch.clone(),
                    last_seq,
                },
                commands: HelloCommands {
                    epoch: commands_epoch,
                    acked_upto,
                },
                settings_version,
                capabilities: Vec::new(),
                health: Some(self.status().await),
            }),
            now_ms(),
        );
        let hello_id = hello.id.clone();
        ws.send(Message::text(hello.to_json())).await?;

        // Wait for welcome.
        let welcome = loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                r = tokio::time::timeout(Duration::from_secs(10), ws.next()) => r,
            };
            let msg = match next {
                Err(_) => {
                    return Err(SessionError::Protocol(
                        "the service sent no welcome within 10 s".into(),
                    ));
                }
                Ok(None) => return Err(SessionError::Protocol("connection closed".into())),
                Ok(Some(msg)) => msg?,
            };
            match msg {
                Message::Text(text) => match frame::decode(text.as_str()) {
                    Ok(Frame {
                        body: Body::Welcome(w),
                        reply_to,
                        ..
                    }) if reply_to.as_deref() == Some(hello_id.as_str()) => break w,
                    Ok(other) => {
                        tracing::warn!("ignoring {} before welcome", other.body.type_name());
                    }
                    Err(e) => tracing::warn!("bad frame before welcome: {e}"),
                },
                Message::Close(frame) => return Ok(closed(frame)),
                _ => {}
            }
        };
        let welcomed_at = Instant::now();
        tracing::info!(account = %welcome.account_tag, session = %welcome.session_id, "link up");
        {
            let store = self.store.clone();
            let same_epoch = welcome.events.epoch == events_epoch;
            let acked = welcome.events.acked_upto;
            let cmd_epoch = welcome.commands.epoch.clone();
            crate::blocking(move || -> Result<(), crate::store::StoreError> {
                if same_epoch {
                    store.ack_events(acked)?;
                }
                store.adopt_commands_epoch(&cmd_epoch)
            })
            .await?;
        }
        if let Some(settings) = welcome.settings.clone() {
            self.apply_settings(None, settings).await?;
        }
        self.state.send_replace(LinkState::Connected {
            account_tag: welcome.account_tag.clone(),
        });

        let heartbeat = Duration::from_millis(welcome.heartbeat_ms.clamp(1000, 60_000));
        let idle_timeout = Duration::from_millis(welcome.idle_timeout_ms.clamp(5000, 300_000));
        let window = (welcome.events_window as usize).clamp(1, EVENTS_WINDOW);
        let mut sent_upto = if welcome.events.epoch == events_epoch {
            welcome.events.acked_upto
        } else {
            0
        };
        let mut acked_upto = sent_upto;
        // Outbox rows up to here are deleted (welcome's acked_upto was, above).
        let mut deleted_upto = acked_upto;
        let mut last_ack_at = Instant::now();
        let mut last_rx = Instant::now();
        let mut ping = tokio::time::interval(heartbeat);
        ping.reset();
        // Wake from sleep: the monotonic clock stands still while the Mac
        // sleeps, the wall clock does not. A jump between them means the
        // socket may be dead without either side having noticed.
        let mut wake_check = tokio::time::interval(WAKE_CHECK_EVERY);
        wake_check.reset();
        let mut clocks = ClockPair::now();
        let mut probe_deadline: Option<Instant> = None;
        let mut route = route;
        let mut route_gone = false;
        let mut status_every = tokio::time::interval(Duration::from_secs(60));
        status_every.reset();
        let mut health = self.reader_health.clone();
        let mut last_reported_error = health.borrow_and_update().error.clone();
        let mut health_open = true;
        let mut session = Session {
            link: self,
            events_epoch: events_epoch.clone(),
            unacked_cmds: 0,
            cmd_ack_due: None,
            commands_window: welcome.commands_window.max(1),
        };
        // Resend everything the service has not acked.
        session
            .flush(ws, &mut sent_upto, acked_upto, window)
            .await?;

        loop {
            let stable = welcomed_at.elapsed() > Duration::from_secs(60);
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = ws.close(Some(CloseFrame {
                        code: CloseCode::Away,
                        reason: "daemon shutting down".into(),
                    })).await;
                    return Ok(SessionEnd::Shutdown);
                }
                () = self.outbox.notified() => {
                    session.flush(ws, &mut sent_upto, acked_upto, window).await?;
                }
                () = tokio::time::sleep_until(last_rx + idle_timeout) => {
                    return Ok(SessionEnd::Retry {
                        reason: format!("no frames from the service for {} s", idle_timeout.as_secs()),
                        stable,
                    });
                }
                () = sleep_until_opt(probe_deadline) => {
                    return Ok(SessionEnd::Retry {
                        reason: "no answer from the service within 5 s after waking from sleep".into(),
                        stable,
                    });
                }
                _ = wake_check.tick() => {
                    let (next, jump) = clocks.advance();
                    clocks = next;
                    if jump > WAKE_JUMP && probe_deadline.is_none() {
                        tracing::info!(slept_s = jump.as_secs(), "woke from sleep; probing the link");
                        probe_deadline = Some(Instant::now() + WAKE_PROBE_TIMEOUT);
                        ws.send(Message::Ping(Vec::new().into())).await?;
                    } else if probe_deadline.is_none() {
                        // Another network under the same socket: it may be
                        // dead without either side knowing; ask now rather
                        // than after 45 s of silence.
                        // One probe per change: the new address becomes
                        // the one compared against.
                        let moved = match route.as_mut().map(|r| (r.check(), r)) {
                            Some((netchange::RouteCheck::Changed { now }, r)) => {
                                tracing::info!(%now, "the network changed; probing the link");
                                r.local = now;
                                route_gone = false;
                                true
                            }
                            Some((netchange::RouteCheck::Gone(e), _)) => {
                                if !route_gone {
                                    tracing::info!("no route to the service ({e}); probing the link");
                                }
                                !std::mem::replace(&mut route_gone, true)
                            }
                            Some((netchange::RouteCheck::Same, _)) => {
                                route_gone = false;
                                false
                            }
                            None => false,
                        };
                        if moved {
                            probe_deadline = Some(Instant::now() + WAKE_PROBE_TIMEOUT);
                            ws.send(Message::Ping(Vec::new().into())).await?;
                        }
                    }
                }
                _ = ping.tick() => {
                    // Nothing acked for 30 s while events are in flight: resend.
                    if sent_upto > acked_upto && last_ack_at.elapsed() > Duration::from_secs(30) {
                        sent_upto = acked_upto;
                        last_ack_at = Instant::now();
                        session.flush(ws, &mut sent_upto, acked_upto, window).await?;
                    }
                    tracing::debug!(quiet_ms = last_rx.elapsed().as_millis() as u64, "ping");
                    ws.send(Message::Ping(Vec::new().into())).await?;
                }
                () = sleep_until_opt(session.cmd_ack_due) => {
                    session.ack_commands(ws, None).await?;
                }
                _ = status_every.tick() => {
                    session.send_status(ws, None).await?;
                }
                r = health.changed(), if health_open => {
                    // The reader is gone (shutting down): stop watching, or
                    // this branch would be ready forever and spin.
                    health_open = r.is_ok();
                    let error = health.borrow_and_update().error.clone();
                    if r.is_ok() && error != last_reported_error {
                        last_reported_error = error;
                        session.send_status(ws, None).await?;
                    }
                }
                msg = ws.next() => {
                    let Some(msg) = msg else {
                        return Ok(SessionEnd::Retry { reason: "connection closed".into(), stable });
                    };
                    let msg = msg?;
                    last_rx = Instant::now();
                    probe_deadline = None;
                    match msg {
                        Message::Text(text) => {
                            if let Some(ack) = session.on_text(ws, text.as_str()).await? {
                                if ack.upto > acked_upto {
                                    acked_upto = ack.upto;
                                    last_ack_at = Instant::now();
                                }
                                if let Some(from) = ack.resend_from {
                                    sent_upto = from.saturating_sub(1).max(acked_upto);
                                }
                                session.flush(ws, &mut sent_upto, acked_upto, window).await?;
                                // Acked rows are deleted in bulk: each delete is a
                                // synced commit, and one per ack of 50 events capped
                                // a catch-up at ~5,000 events/s. A crash before the
                                // delete only resends what the service dedupes.
                                if acked_upto > deleted_upto
                                    && (acked_upto - deleted_upto >= OUTBOX_DELETE_EVERY
                                        || sent_upto <= acked_upto)
                                {
                                    let store = self.store.clone();
                                    let upto = acked_upto;
                                    crate::blocking(move || store.ack_events(upto)).await?;
                                    deleted_upto = upto;
                                }
                            }
                        }
                        Message::Close(frame) => return Ok(closed(frame)),
                        Message::Binary(_) => {
                            session.send_error(ws, None, frame::error_code::BAD_ENVELOPE, "binary frames are not part of the protocol").await?;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Applies a settings version (from a `settings` command with `seq`, or
    /// from `welcome`): stored with its `settings.applied` answer in one
    /// transaction, then published to the tasks that follow them.
    async fn apply_settings(
        &self,
        seq: Option<u64>,
        settings: SettingsData,
    ) -> Result<Accepted, SessionError> {
        // Keys the sender refuses are reported per key; the rest apply.
        let errors: serde_json::Map<String, serde_json::Value> =
            crate::send::SendSettings::default()
                .apply(&settings.values)
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
        let store = self.store.clone();
        let data = settings.clone();
        let outcome = crate::blocking(move || store.accept_settings(seq, &data, errors)).await?;
        if outcome == Accepted::Queued {
            tracing::info!(version = settings.version, "settings applied");
            self.settings.send_replace(settings);
            self.outbox.notify_one();
        }
        Ok(outcome)
    }

    async fn status(&self) -> Status {
        let store = self.store.clone();
        let (depth, pending) = crate::blocking(move || {
            (
                store.outbox_depth().unwrap_or(0),
                store.pending_sends().unwrap_or(0),
            )
        })
        .await;
        let health = self.reader_health.borrow().clone();
        let mut status = Status::with_health(match &health.error {
            None => frame::Health::Ok,
            Some(_) => frame::Health::Blocked,
        });
        status.detail = health.error.clone();
        status.chatdb_readable = Some(health.error.is_none());
        status.last_row_seen_ms = health.last_row_ms;
        status.outbox_depth = Some(depth);
        status.pending_sends = Some(pending);
        status.uptime_s = Some(self.started.elapsed().as_secs());
        status.daemon_version = Some(env!("CARGO_PKG_VERSION").into());
        status
    }
}

struct Session<'a> {
    link: &'a Link,
    events_epoch: String,
    /// Commands processed since the last commands ack (§4.3 coalescing).
    unacked_cmds: u64,
    /// When the pending commands ack is due (250 ms after the first).
    cmd_ack_due: Option<Instant>,
    /// The service's commands window: a full window is acked at once.
    commands_window: u64,
}

/// Commands are acked after this many, or [`CMD_ACK_DELAY`] after the first.
const CMD_ACK_EVERY: u64 = 50;
/// See [`CMD_ACK_EVERY`].
const CMD_ACK_DELAY: Duration = Duration::from_millis(250);

impl Session<'_> {
    /// Sends unacked events after `sent_upto`, keeping at most `window` in flight.
    async fn flush<S>(
        &mut self,
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
        sent_upto: &mut u64,
        acked_upto: u64,
        window: usize,
    ) -> Result<(), SessionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        loop {
            let in_flight = sent_upto.saturating_sub(acked_upto) as usize;
            if in_flight >= window {
                return Ok(());
            }
            let store = self.link.store.clone();
            let after = *sent_upto;
            let room = window - in_flight;
            let batch =
                crate::blocking(move || store.outbox_frames_after(after, room, now_ms())).await?;
            if batch.is_empty() {
                return Ok(());
            }
            for (seq, text) in batch {
                ws.feed(Message::text(text)).await?;
                *sent_upto = seq;
            }
            ws.flush().await?;
        }
    }

    async fn send<S>(
        &mut self,
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
        frame: Frame,
    ) -> Result<(), SessionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        ws.send(Message::text(frame.to_json())).await?;
        Ok(())
    }

    async fn send_error<S>(
        &mut self,
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
        reply_to: Option<&str>,
        code: &str,
        message: &str,
    ) -> Result<(), SessionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let body = Body::Error(frame::ErrorData {
            reply_to: reply_to.map(str::to_owned),
            code: code.to_owned(),
            message: message.to_owned(),
        });
        self.send(ws, Frame::new(body, now_ms())).await
    }

    async fn send_status<S>(
        &mut self,
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
        reply_to: Option<&str>,
    ) -> Result<(), SessionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut frame = Frame::new(Body::Status(self.link.status().await), now_ms());
        frame.reply_to = reply_to.map(str::to_owned);
        self.send(ws, frame).await
    }

    async fn ack_commands<S>(
        &mut self,
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
        resend_from: Option<u64>,
    ) -> Result<(), SessionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.unacked_cmds = 0;
        self.cmd_ack_due = None;
        let store = self.link.store.clone();
        let (epoch, upto) = crate::blocking(move || store.commands_position()).await?;
        let ack = Body::Ack(Ack {
            stream: Stream::Commands,
            epoch,
            upto,
            resend_from,
        });
        self.send(ws, Frame::new(ack, now_ms())).await
    }

    /// Handles one text frame; returns an events ack when it was one.
    async fn on_text<S>(
        &mut self,
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
        text: &str,
    ) -> Result<Option<Ack>, SessionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let frame = match frame::decode(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("refusing a frame from the service: {e}");
                self.send(ws, Frame::new(e.to_error_body(), now_ms()))
                    .await?;
                // An unknown or unreadable durable frame still moves the
                // stream on: resending it would fail the same way (§7).
                match e {
                    DecodeError::UnknownType { seq: Some(seq), .. } => {
                        self.accept(ws, seq, None).await?;
                    }
                    DecodeError::BadData {
                        ty, seq: Some(seq), ..
                    } if Body::stream_of(&ty) == Some(Stream::Commands) => {
                        self.accept(ws, seq, None).await?;
                    }
                    _ => {}
                }
                return Ok(None);
            }
        };
        if let Some(stream) = frame.body.stream() {
            let Some(seq) = frame.seq.filter(|_| stream == Stream::Commands) else {
                self.send_error(
                    ws,
                    Some(&frame.id),
                    frame::error_code::BAD_SEQ,
                    "a command must carry a seq, and only commands travel this way",
                )
                .await?;
                return Ok(None);
            };
            if let Body::Settings(settings) = &frame.body {
                let outcome = self
                    .link
                    .apply_settings(Some(seq), settings.clone())
                    .await?;
                match outcome {
                    Accepted::Gap { committed } => {
                        self.ack_commands(ws, Some(committed + 1)).await?;
                    }
                    Accepted::Queued | Accepted::Duplicate => self.processed_command(ws).await?,
                }
                return Ok(None);
            }
            let cmd = match &frame.body {
                Body::CmdSend(cmd) => Some(cmd.clone()),
                other => {
                    tracing::info!("{} is not acted on yet; acking it", other.type_name());
                    None
                }
            };
            self.accept(ws, seq, cmd).await?;
            return Ok(None);
        }
        match frame.body {
            Body::Ack(ack) if ack.stream == Stream::Events => {
                if ack.epoch != self.events_epoch {
                    tracing::warn!("ack for another event epoch ignored");
                    return Ok(None);
                }
                // The outbox rows are deleted by the caller, in bulk.
                Ok(Some(ack))
            }
            Body::StatusRequest(_) => {
                self.send_status(ws, Some(&frame.id)).await?;
                Ok(None)
            }
            Body::Ping(ping) => {
                let pong = Body::Pong(Pong {
                    nonce: ping.nonce,
                    clock_ms: now_ms(),
                });
                self.send(ws, Frame::new(pong, now_ms()).replying_to(&frame.id))
                    .await?;
                Ok(None)
            }
            Body::Error(err) => {
                tracing::warn!(code = %err.code, "the service refused a frame: {}", err.message);
                Ok(None)
            }
            other => {
                tracing::debug!("ignoring {}", other.type_name());
                Ok(None)
            }
        }
    }

    async fn accept<S>(
        &mut self,
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
        seq: u64,
        cmd: Option<whatsnap_proto::frame::CmdSend>,
    ) -> Result<(), SessionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let outcome = match &self.link.admission {
            // Answers only once the command is durable, so the ack below
            // still follows the commit.
            Some(admission) => admission.accept(seq, cmd).await?,
            None => {
                let store = self.link.store.clone();
                crate::blocking(move || store.accept_command(seq, cmd.as_ref())).await?
            }
        };
        match outcome {
            Accepted::Queued => {
                self.link.send_wake.notify_one();
                self.processed_command(ws).await
            }
            Accepted::Duplicate => {
                // A replay of a finished send re-queued its result.
                self.link.outbox.notify_one();
                self.processed_command(ws).await
            }
            Accepted::Gap { committed } => self.ack_commands(ws, Some(committed + 1)).await,
        }
    }

    /// Coalesces command acks (§4.3): at once when the service's window is
    /// full or after 50, else 250 ms after the first unacked one.
    async fn processed_command<S>(
        &mut self,
        ws: &mut tokio_tungstenite::WebSocketStream<S>,
    ) -> Result<(), SessionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.unacked_cmds += 1;
        if self.unacked_cmds >= CMD_ACK_EVERY.min(self.commands_window) {
            return self.ack_commands(ws, None).await;
        }
        self.cmd_ack_due
            .get_or_insert_with(|| Instant::now() + CMD_ACK_DELAY);
        Ok(())
    }
}

/// How often the two clocks are compared.
const WAKE_CHECK_EVERY: Duration = Duration::from_secs(2);
/// Wall time beyond monotonic time that counts as a sleep.
const WAKE_JUMP: Duration = Duration::from_secs(10);
/// After a wake, the service must answer within this (protocol §11).
const WAKE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A reading of the monotonic and the wall clock, to detect sleep.
#[derive(Debug, Clone, Copy)]
struct ClockPair {
    mono: Instant,
    wall_ms: i64,
}

impl ClockPair {
    fn now() -> ClockPair {
        ClockPair {
            mono: Instant::now(),
            wall_ms: now_ms(),
        }
    }

    /// A new reading, and how much more the wall clock advanced than the
    /// monotonic one since `self` (zero if it advanced less).
    fn advance(self) -> (ClockPair, Duration) {
        let next = ClockPair::now();
        (next, self.jump_to(next))
    }

    fn jump_to(self, next: ClockPair) -> Duration {
        let mono_ms =
            i64::try_from(next.mono.duration_since(self.mono).as_millis()).unwrap_or(i64::MAX);
        let wall_ms = next.wall_ms.saturating_sub(self.wall_ms);
        Duration::from_millis(u64::try_from(wall_ms.saturating_sub(mono_ms)).unwrap_or(0))
    }
}

/// Sleeps until `deadline`, or forever when there is none (a disabled timer).
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn closed(frame: Option<CloseFrame>) -> SessionEnd {
    let Some(frame) = frame else {
        return SessionEnd::Retry {
            reason: "the service closed the connection".into(),
            stable: false,
        };
    };
    let code = u16::from(frame.code);
    let reason = CloseReason::parse(&frame.reason)
        .map(|r| r.message)
        .unwrap_or_else(|| frame.reason.to_string());
    match close::action_for(code) {
        CloseAction::NeedsPairing => SessionEnd::Terminal {
            reason: format!(
                "the service revoked this device ({code}: {reason}); run `whatsnap-mac pair` with a new code"
            ),
        },
        CloseAction::Replaced => SessionEnd::Terminal {
            reason: format!(
                "another connection of this device replaced this one ({code}: {reason}); is a second whatsnap-mac running?"
            ),
        },
        CloseAction::NeedsUpdate => SessionEnd::Terminal {
            reason: format!(
                "the service needs a newer whatsnap-mac ({code}: {reason}); update and restart"
            ),
        },
        CloseAction::Reconnect => {
            if code == close::RATE_LIMITED {
                let wait = CloseReason::parse(&frame.reason)
                    .and_then(|r| r.retry_after_ms)
                    .unwrap_or(5000);
                return SessionEnd::RetryAfter {
                    reason: format!("rate limited ({reason})"),
                    delay: Duration::from_millis(wait),
                };
            }
            if code == close::SERVICE_RESTART {
                return SessionEnd::RetryAfter {
                    reason: "the service is restarting".into(),
                    delay: Duration::from_millis(fastrand::u64(250..=5000)),
                };
            }
            SessionEnd::Retry {
                reason: format!("closed by the service ({code}: {reason})"),
                stable: false,
            }
        }
    }
}

/// `Retry-After` in seconds (the only form the service sends).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_jump_beyond_the_monotonic_one_is_a_wake() {
        let before = ClockPair {
            mono: Instant::now(),
            wall_ms: 1_000_000,
        };
        // 2 s of monotonic time, 2 s of wall time: awake.
        let awake = ClockPair {
            mono: before.mono + Duration::from_secs(2),
            wall_ms: 1_002_000,
        };
        assert_eq!(before.jump_to(awake), Duration::ZERO);
        // 2 s of monotonic time, an hour of wall time: slept.
        let woke = ClockPair {
            mono: before.mono + Duration::from_secs(2),
            wall_ms: 1_000_000 + 3_602_000,
        };
        assert!(before.jump_to(woke) > WAKE_JUMP);
        // The wall clock set back (NTP): not a wake.
        let set_back = ClockPair {
            mono: before.mono + Duration::from_secs(2),
            wall_ms: 900_000,
        };
        assert_eq!(before.jump_to(set_back), Duration::ZERO);
    }

    #[test]
    fn backoff_stays_within_its_bounds() {
        for attempt in 0..40 {
            let d = backoff_delay(attempt);
            assert!(d >= Duration::from_millis(250), "{d:?}");
            assert!(d <= Duration::from_secs(60), "{d:?}");
        }
    }

    #[test]
    fn terminal_close_codes_stop_the_link() {
        let frame = |code: u16| {
            Some(CloseFrame {
                code: CloseCode::from(code),
                reason: CloseReason::new(code, "x").to_reason_text().into(),
            })
        };
        assert!(matches!(closed(frame(4401)), SessionEnd::Terminal { .. }));
        assert!(matches!(closed(frame(4409)), SessionEnd::Terminal { .. }));
        assert!(matches!(closed(frame(4426)), SessionEnd::Terminal { .. }));
        assert!(matches!(closed(frame(1012)), SessionEnd::RetryAfter { .. }));
        assert!(matches!(closed(frame(1006)), SessionEnd::Retry { .. }));
    }
}
