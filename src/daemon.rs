//! `whatsnap-mac run`: the daemon launchd starts.
//!
//! It owns four tasks under one cancellation token: the watcher (wake-ups),
//! the reader (chat.db → outbox), the link (outbox ⇄ service) and the sender
//! (commands → Messages.app). They share the store and talk through `Notify`
//! and `watch` channels only, so each can be reasoned about alone. SIGTERM or
//! Ctrl-C cancels the token; the daemon waits a bounded time for the tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chatdb::SharedChatDb;
use crate::config::{self, Paths};
use crate::link::pair::{self, Credentials};
use crate::link::rotate::Rotator;
use crate::link::{Dial, Link, LinkState, tls};
use crate::reader::{Reader, ReaderHealth, Tracker};
use crate::send::runner::Runner;
use crate::send::{SendSettings, Sender};
use crate::store::Store;
use whatsnap_proto::frame::SettingsData;

/// Tunables of a daemon instance.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Where things are.
    pub paths: Paths,
    /// Safety poll of chat.db.
    pub poll: Duration,
    /// Time limit of one osascript run.
    pub osascript_timeout: Duration,
    /// Ceiling of the reconnect delay (60 s; shorter only in test harnesses).
    pub backoff_cap: Duration,
}

/// A running daemon's observable state, and the levers the control socket
/// pulls.
#[derive(Debug, Clone)]
pub struct DaemonHandle {
    /// The link's state.
    pub link: watch::Receiver<LinkState>,
    /// The reader's health.
    pub reader: watch::Receiver<ReaderHealth>,
    /// The wake-up channel the reader and the sender listen on; bumping it
    /// is what a file event does (`status --rescan`, nicknamed `rescan_wake`).
    pub rescan: watch::Sender<u64>,
    /// Puts the stored settings back into the running tasks (`status --reload`).
    pub reload: Reload,
}

/// Re-applies the account's stored settings to the running tasks.
///
/// The service pushes every settings change as a durable frame, so the store
/// always holds the newest version the daemon accepted; reloading hands that
/// version to the sender again and wakes it, which also makes it look at the
/// pause marker again.
#[derive(Debug, Clone)]
pub struct Reload {
    store: Store,
    settings: watch::Sender<SettingsData>,
    send_wake: Arc<Notify>,
}

impl Reload {
    /// A reload lever over `store` feeding `settings`.
    pub fn new(
        store: Store,
        settings: watch::Sender<SettingsData>,
        send_wake: Arc<Notify>,
    ) -> Reload {
        Reload {
            store,
            settings,
            send_wake,
        }
    }

    /// Reads the stored settings and hands them to the tasks; returns the
    /// version now in force.
    pub async fn run(&self) -> Result<u64, crate::store::StoreError> {
        let store = self.store.clone();
        let stored = crate::blocking(move || store.settings()).await?;
        let version = stored.version;
        self.settings.send_replace(stored);
        self.send_wake.notify_one();
        Ok(version)
    }
}

impl DaemonHandle {
    /// Wakes the reader and the sender as a change to chat.db would.
    pub fn rescan_wake(&self) {
        self.rescan.send_modify(|t| *t = t.wrapping_add(1));
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Not paired.
    #[error(transparent)]
    Pair(#[from] pair::PairError),
    /// The pairing's CA file is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The state folder or database is unusable.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The state folder cannot be created.
    #[error("cannot create the state folder {path}: {source}")]
    Home {
        /// The folder.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Starts the daemon's tasks; they stop when `shutdown` is cancelled, and
/// `tracker` is closed and can be waited on.
pub fn start(
    options: &DaemonOptions,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<DaemonHandle, DaemonError> {
    let paths = &options.paths;
    config::ensure_home(&paths.home).map_err(|source| DaemonError::Home {
        path: paths.home.display().to_string(),
        source,
    })?;
    // The token from its store (a pre-Keychain file moves there now), and
    // one HTTPS client with the pairing's CA for everything the daemon asks
    // the service: the websocket, file downloads, token rotation.
    let credential_store = pair::CredentialStore::from_env()?;
    let (creds, paired): (Credentials, _) = credential_store.load(&paths.credentials())?;
    let client = tls::http_client(paired.ca_file.as_deref(), None)?;
    let (token_tx, token_rx) = watch::channel(creds.device_token.clone());
    let store = Store::open(&paths.state_db())?;
    let first_start = store.chatdb_cursor()?.is_none();
    let outbox = Arc::new(Notify::new());
    let send_wake = Arc::new(Notify::new());
    let (ticks_tx, ticks_rx) = watch::channel(0u64);
    let (health_tx, health_rx) = watch::channel(ReaderHealth::default());
    let (link_tx, link_rx) = watch::channel(LinkState::Connecting);
    // The account's settings (protocol §7.11) as last stored; the sender
    // follows the keys it knows.
    let stored_settings = store.settings()?;
    let (settings_tx, mut settings_rx) = watch::channel(stored_settings);
    let base_send = SendSettings {
        osascript_timeout: options.osascript_timeout,
        ..SendSettings::default()
    };
    let send_settings = move |values: &serde_json::Map<String, serde_json::Value>| {
        let mut s = base_send.clone();
        // Refused keys were reported in settings.applied; the rest apply.
        let _ = s.apply(values);
        s
    };
    let (send_settings_tx, send_settings_rx) =
        watch::channel(send_settings(&settings_rx.borrow_and_update().values));

    let rescan = ticks_tx.clone();
    let reload = Reload::new(store.clone(), settings_tx.clone(), send_wake.clone());
    let watcher = crate::watch::spawn(&paths.chat_db, options.poll, ticks_tx, shutdown.clone());
    let reader = Reader {
        store: store.clone(),
        chat_db: SharedChatDb::new(paths.chat_db.clone()),
        ticks: ticks_rx.clone(),
        outbox: outbox.clone(),
        health: health_tx,
    };
    let sender = Sender {
        store: store.clone(),
        chat_db: SharedChatDb::new(paths.chat_db.clone()),
        runner: Runner::new(paths.osascript.clone(), options.osascript_timeout),
        wake: send_wake.clone(),
        db_changed: ticks_rx,
        outbox: outbox.clone(),
    };
    let downloads = crate::send::download::Downloads::following(client.clone(), token_rx.clone());
    let sender = sender
        .with_settings(send_settings_rx)
        .with_downloads(downloads)
        .with_pause_marker(paths.home.clone());
    let link = Link {
        admission: Some(sender.admission()),
        creds,
        store,
        outbox,
        send_wake,
        state: link_tx,
        reader_health: health_rx.clone(),
        started: Instant::now(),
        backoff_cap: options.backoff_cap,
        settings: settings_tx,
    };
    let token = shutdown.clone();
    // On the very first start the reader sets its cursor at chat.db's
    // newest row (history is not replayed). The link waits for that before
    // it connects, so an account shown Active already relays every message
    // that arrives from then on.
    let (baselined_tx, baselined_rx) = tokio::sync::oneshot::channel::<()>();
    tracker.spawn(async move {
        // The watcher lives as long as the reader.
        let _watcher = watcher;
        if first_start {
            // A failure (no Full Disk Access yet) is reported and retried by
            // `run`, which baselines once chat.db can be read.
            let _ = reader.scan(&mut Tracker::default()).await;
        }
        drop(baselined_tx);
        reader.run(token).await;
    });
    tracker.spawn(sender.run(shutdown.clone()));
    let token = shutdown.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                r = settings_rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let values = settings_rx.borrow_and_update().values.clone();
                    send_settings_tx.send_replace(send_settings(&values));
                }
            }
        }
    });
    let link = link.run_with(
        Dial {
            token: token_rx,
            client: client.clone(),
        },
        shutdown.clone(),
    );
    tracker.spawn(async move {
        // Bounded: a chat.db that hangs must not keep the account offline.
        let _ = tokio::time::timeout(Duration::from_secs(10), baselined_rx).await;
        link.await;
    });
    // Tokens older than 30 days are rotated (checked now, then daily); the
    // link takes the new one at its next connection.
    tracker.spawn(
        Rotator {
            path: paths.credentials(),
            store: credential_store,
            client: client.clone(),
            token: token_tx,
        }
        .run(shutdown.clone()),
    );
    tracker.spawn(crate::control::serve(
        crate::control::socket_path(&paths.home),
        DaemonHandle {
            link: link_rx.clone(),
            reader: health_rx.clone(),
            rescan: rescan.clone(),
            reload: reload.clone(),
        },
        shutdown.clone(),
    ));
    tracker.close();
    Ok(DaemonHandle {
        link: link_rx,
        reader: health_rx,
        rescan,
        reload,
    })
}

/// Runs the daemon until SIGTERM/Ctrl-C.
pub async fn run(options: DaemonOptions) -> Result<(), DaemonError> {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut handle = start(&options, &shutdown, &tracker)?;
    tracing::info!(
        chat_db = %options.paths.chat_db.display(),
        home = %options.paths.home.display(),
        "whatsnap-mac {} running",
        env!("CARGO_PKG_VERSION")
    );
    let stopped = async {
        loop {
            if let LinkState::Stopped { .. } = &*handle.link.borrow_and_update() {
                return;
            }
            if handle.link.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = crate::shutdown_signal() => tracing::info!("shutting down"),
        () = stopped => {}
    }
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop within 10 s");
    }
    Ok(())
}
