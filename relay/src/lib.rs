//! `whatsnap-relay`: the WhatSnap account service.
//!
//! It owns accounts and their tags, pairing of Mac daemons, the one websocket
//! session each paired device keeps open, contacts (created on first message
//! and tagged with the account that heard from them first), and routing of
//! outgoing messages by a contact's `whatsnap-account-` tag. Every wire frame
//! and HTTP body comes from `whatsnap-proto`; this crate adds storage
//! ([`db`], [`store`]), the HTTP API (`http`), the device sessions
//! ([`session`], and `hub`, the registry of open sessions) and an admin client ([`client`]) that the CLI, the
//! demo and the tests share. CRM connectors come later and plug in behind the
//! same store and event bus.
//!
//! [`start`] binds, migrates and spawns the server; the returned
//! [`RelayHandle`] exposes an event bus ([`RelayEvent`]) so callers can await
//! what happened instead of polling.

pub mod client;
pub mod db;
mod http;
mod hub;
pub mod secret;
pub mod session;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use whatsnap_proto::api::{AccountState, DisconnectReason};
use whatsnap_proto::frame::SendState;

/// How to run the service.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The SQLite file (created if missing).
    pub db_path: PathBuf,
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Bearer token of the admin API.
    pub admin_token: String,
    /// Base URL devices use to reach this service (`https://svc.example.com`),
    /// used to build `ws_url` in pairing answers. Default: `http://<bound addr>`.
    pub public_url: Option<String>,
}

/// The session timers of protocol §7.7–7.8. [`Timing::default`] is the
/// protocol's values; tests and the demo may shorten them through
/// [`start_with_timing`] to exercise timeouts in real time without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Time the daemon has to send `hello` after the upgrade (10 s).
    pub hello_timeout: Duration,
    /// A session that sent nothing (not even a websocket ping) this long is closed (60 s).
    pub idle_timeout: Duration,
    /// Unacked commands are pushed again after this long without an ack (30 s).
    pub command_resend_after: Duration,
    /// Events are acked at most this long after the first unacked one (250 ms).
    pub ack_delay: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            command_resend_after: Duration::from_secs(30),
            ack_delay: Duration::from_millis(250),
        }
    }
}

/// Something that happened in the service, for the demo, tests and (later)
/// the CRM connectors. Sent after the change is committed.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayEvent {
    /// An account became Active or Disconnected.
    AccountStatus {
        /// The account.
        account_id: String,
        /// Its new state.
        status: AccountState,
        /// Why Disconnected.
        reason: Option<DisconnectReason>,
    },
    /// A contact was created (first message from a handle).
    ContactCreated {
        /// The contact.
        contact_id: String,
        /// Its handle.
        handle: String,
        /// The account tag it got, if any.
        tag: Option<String>,
    },
    /// An inbound message was stored.
    MessageReceived {
        /// The account that received it.
        account_id: String,
        /// The sender.
        contact_id: String,
        /// The iMessage GUID.
        guid: String,
        /// The text.
        text: String,
    },
    /// An outbound message was queued as a durable command.
    CommandQueued {
        /// The account it goes through.
        account_id: String,
        /// Its idempotency key.
        client_msg_id: String,
    },
    /// The device applied a settings version (`settings.applied`).
    SettingsApplied {
        /// The account.
        account_id: String,
        /// The version now in force on the Mac.
        version: u64,
        /// Keys it refused, with why.
        errors: serde_json::Map<String, serde_json::Value>,
    },
    /// The device reported the outcome of a send.
    SendResult {
        /// The account.
        account_id: String,
        /// The send's idempotency key.
        client_msg_id: String,
        /// Outcome.
        state: SendState,
        /// GUIDs of the rows it produced.
        guids: Vec<String>,
    },
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The listen address is taken or not allowed.
    #[error(
        "cannot listen on {addr}: {source}; pick another address with --listen or stop the program using it"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Db(#[from] db::DbError),
}

/// Shared state of a running service; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: db::Db,
    pub(crate) hub: hub::Hub,
    pub(crate) events: broadcast::Sender<RelayEvent>,
    /// SHA-256 of the admin token; the token itself is not kept.
    pub(crate) admin_token_hash: [u8; 32],
    pub(crate) public_url: String,
    pub(crate) shutdown: CancellationToken,
    /// Device sessions, so shutdown can wait for their 1012 close.
    pub(crate) sessions: TaskTracker,
    pub(crate) timing: Timing,
    /// Wrong pairing attempts per client address (protocol §13 rate limit).
    pub(crate) pair_failures: http::PairLimiter,
}

impl AppState {
    /// Sends an event; nobody listening is fine.
    pub(crate) fn emit(&self, event: RelayEvent) {
        let _ = self.inner.events.send(event);
    }
}

/// A running service.
pub struct RelayHandle {
    addr: SocketAddr,
    events: broadcast::Sender<RelayEvent>,
    server: tokio::task::JoinHandle<()>,
    sessions: TaskTracker,
}

impl RelayHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for clients on this machine.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A receiver of everything that happens from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RelayEvent> {
        self.events.subscribe()
    }

    /// Waits until the service has shut down (its token cancelled) and every
    /// device session has been closed.
    pub async fn wait(self) {
        if let Err(e) = self.server.await {
            tracing::error!(error = %e, "server task failed");
        }
        self.sessions.close();
        self.sessions.wait().await;
    }
}

/// Opens (and migrates) the database, binds, and spawns the server. The
/// service runs until `shutdown` is cancelled.
pub async fn start(
    config: RelayConfig,
    shutdown: CancellationToken,
) -> Result<RelayHandle, RelayError> {
    start_with_timing(config, Timing::default(), shutdown).await
}

/// [`start`] with other session timers.
pub async fn start_with_timing(
    config: RelayConfig,
    timing: Timing,
    shutdown: CancellationToken,
) -> Result<RelayHandle, RelayError> {
    let db = db::Db::open(&config.db_path).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RelayError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RelayError::Bind {
        addr: config.listen,
        source,
    })?;
    let public_url = config.public_url.map_or_else(
        || format!("http://{addr}"),
        |u| u.trim_end_matches('/').to_owned(),
    );
    let (events, _) = broadcast::channel(1024);
    let sessions = TaskTracker::new();
    let state = AppState {
        inner: Arc::new(Inner {
            db,
            hub: hub::Hub::default(),
            events: events.clone(),
            admin_token_hash: secret::sha256(config.admin_token.as_bytes()),
            public_url,
            shutdown: shutdown.clone(),
            sessions: sessions.clone(),
            timing,
            pair_failures: http::PairLimiter::default(),
        }),
    };
    let app = http::router(state);
    let server = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    tracing::info!(%addr, "whatsnap-relay listening");
    Ok(RelayHandle {
        addr,
        events,
        server,
        sessions,
    })
}

/// Now, Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
