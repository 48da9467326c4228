//! The daemon's link through a loopback TCP proxy that can blackhole,
//! half-open, delay and cut the connection, on tokio's paused clock: a dead
//! peer is noticed within 45 s, the reconnect delays follow the protocol's
//! full-jitter schedule (250 ms up to 60 s, reset after a stable session),
//! and a 24 h outage loses nothing (protocol §4 and §11).
//!
//! Everything is real except time: the service (`whatsnap_relay::start`),
//! the daemon's `Link` and store, and TCP on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use whatsnap_mac::link::pair::{self, Credentials};
use whatsnap_mac::link::{Link, LinkState, MAX_BACKOFF};
use whatsnap_mac::reader::ReaderHealth;
use whatsnap_mac::store::Store;
use whatsnap_proto::frame::{Body, ChatKind, EventMessage, Handle, HandleKind};
use whatsnap_relay::client::AdminClient;
use whatsnap_relay::{RelayConfig, RelayEvent};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Pass everything.
    Forward,
    /// Read and drop both directions; the sockets stay open (a dead NAT).
    Blackhole,
    /// Daemon → service passes, service → daemon is dropped.
    HalfOpen,
    /// Pass everything, each chunk after this delay.
    Delay(Duration),
    /// Close every connection and refuse new ones (the network is down).
    Down,
}

struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *mode_rx.borrow() == Mode::Down {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, mode_rx.clone(), true));
                tokio::spawn(pipe(sr, cw, mode_rx.clone(), false));
            }
        });
        Proxy { addr, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// Copies one direction, obeying the mode for every chunk.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    upstream: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            r = mode.changed() => {
                if r.is_err() || *mode.borrow() == Mode::Down {
                    return;
                }
                continue;
            }
        };
        let current = *mode.borrow();
        match current {
            Mode::Down => return,
            Mode::Blackhole => continue,
            Mode::HalfOpen if !upstream => continue,
            Mode::Delay(d) => tokio::time::sleep(d).await,
            Mode::Forward | Mode::HalfOpen => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    proxy: Proxy,
    store: Store,
    outbox: Arc<Notify>,
    state: watch::Receiver<LinkState>,
    events: broadcast::Receiver<RelayEvent>,
    shutdown: CancellationToken,
    next_rowid: i64,
}

impl Rig {
    /// Service up, Mike paired, link running through the proxy and welcomed.
    async fn start() -> Rig {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into()))
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let relay = whatsnap_relay::start(
            RelayConfig {
                db_path: dir.path().join("relay.db"),
                listen: ([127, 0, 0, 1], 0).into(),
                admin_token: "admin".into(),
                public_url: None,
            },
            shutdown.clone(),
        )
        .await
        .expect("relay");
        let events = relay.subscribe();
        let admin = AdminClient::new(&relay.base_url(), Some("admin".into()));
        let created = admin.create_account("Mike").await.expect("account");
        let mut creds: Credentials = pair::pair(
            &reqwest::Client::new(),
            &relay.base_url(),
            &created.pairing.code,
            pair::device_info(),
        )
        .await
        .expect("pair");
        let proxy = Proxy::start(relay.addr()).await;
        creds.ws_url = format!("ws://{}/v1/device/ws", proxy.addr);
        let store = Store::open(&dir.path().join("state.db")).expect("store");
        let outbox = Arc::new(Notify::new());
        let (state_tx, state) = watch::channel(LinkState::Connecting);
        // Dropped at once: the link must cope with a reader that is gone.
        let (_, health) = watch::channel(ReaderHealth::default());
        let link = Link {
            creds,
            store: store.clone(),
            outbox: outbox.clone(),
            send_wake: Arc::new(Notify::new()),
            admission: None,
            state: state_tx,
            reader_health: health,
            started: Instant::now(),
            backoff_cap: MAX_BACKOFF,
            settings: watch::channel(whatsnap_proto::frame::SettingsData {
                version: 0,
                values: serde_json::Map::new(),
            })
            .0,
        };
        tokio::spawn(link.run(shutdown.clone()));
        // Keep the service alive as long as the rig.
        tokio::spawn(async move {
            relay.wait().await;
        });
        let mut rig = Rig {
            _dir: dir,
            proxy,
            store,
            outbox,
            state,
            events,
            shutdown,
            next_rowid: 1,
        };
        rig.until("the link is up", |s| {
            matches!(s, LinkState::Connected { .. })
        })
        .await;
        rig
    }

    async fn until(&mut self, what: &str, want: impl Fn(&LinkState) -> bool) -> LinkState {
        let found = tokio::time::timeout(Duration::from_secs(3 * 24 * 3600), async {
            loop {
                let s = self.state.borrow_and_update().clone();
                if want(&s) {
                    return s;
                }
                self.state.changed().await.expect("link alive");
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("gave up waiting for {what}"))
    }

    /// Appends `n` inbound texts to the outbox, as the reader would.
    async fn append(&mut self, n: usize) -> Vec<String> {
        let mut guids = Vec::new();
        let mut events = Vec::new();
        for _ in 0..n {
            let guid = format!("GUID-{}", self.next_rowid);
            events.push((
                whatsnap_proto::message_event_key(&guid),
                Body::EventMessage(inbound(&guid, self.next_rowid)),
            ));
            guids.push(guid);
            self.next_rowid += 1;
        }
        let store = self.store.clone();
        let cursor = self.next_rowid - 1;
        tokio::task::spawn_blocking(move || store.append_events(cursor, events))
            .await
            .expect("task")
            .expect("append");
        self.outbox.notify_one();
        guids
    }

    /// Waits until the service received every one of `guids`.
    async fn received(&mut self, guids: &[String]) {
        let mut missing: std::collections::HashSet<&str> =
            guids.iter().map(String::as_str).collect();
        let events = &mut self.events;
        tokio::time::timeout(Duration::from_secs(3600), async {
            while !missing.is_empty() {
                match events.recv().await {
                    Ok(RelayEvent::MessageReceived { guid, .. }) => {
                        missing.remove(guid.as_str());
                    }
                    Ok(_) => {}
                    Err(e) => panic!("event bus: {e}"),
                }
            }
        })
        .await
        .expect("every text reaches the service");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn inbound(guid: &str, rowid: i64) -> EventMessage {
    EventMessage {
        event_key: whatsnap_proto::message_event_key(guid),
        guid: guid.to_owned(),
        rowid,
        chat_guid: "iMessage;-;+15551234567".into(),
        chat_kind: ChatKind::Direct,
        group_name: None,
        participants: vec![],
        service: "iMessage".into(),
        from_me: false,
        sender: Some(Handle {
            handle: "+15551234567".into(),
            kind: HandleKind::Phone,
        }),
        recipients: vec![],
        text: format!("text {rowid}"),
        subject: None,
        reply_to_guid: None,
        thread_originator_guid: None,
        date_ms: 1_764_000_000_000,
        attachments: vec![],
        origin: None,
        backfill: false,
        backfill_request_id: None,
        suspected_echo: false,
        truncated: false,
    }
}

fn is_retrying(s: &LinkState) -> bool {
    matches!(s, LinkState::Retrying { .. })
}

#[tokio::test(start_paused = true)]
async fn a_blackholed_connection_is_noticed_within_45_seconds() {
    let mut rig = Rig::start().await;
    let guids = rig.append(3).await;
    rig.received(&guids).await;
    rig.proxy.set(Mode::Blackhole);
    let cut = Instant::now();
    rig.until("the link to notice", is_retrying).await;
    let noticed = cut.elapsed();
    assert!(noticed <= Duration::from_secs(45), "{noticed:?}");
    // It does not tear down a healthy link early either: pings keep it up.
    assert!(noticed >= Duration::from_secs(25), "{noticed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_half_open_connection_is_noticed_within_45_seconds() {
    let mut rig = Rig::start().await;
    rig.proxy.set(Mode::HalfOpen);
    let cut = Instant::now();
    rig.until("the link to notice", is_retrying).await;
    assert!(
        cut.elapsed() <= Duration::from_secs(45),
        "{:?}",
        cut.elapsed()
    );
    // Events written while it was half-open arrive after it heals.
    let guids = rig.append(5).await;
    rig.proxy.set(Mode::Forward);
    rig.received(&guids).await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_but_alive_connection_is_kept() {
    let mut rig = Rig::start().await;
    rig.proxy.set(Mode::Delay(Duration::from_secs(2)));
    let guids = rig.append(20).await;
    rig.received(&guids).await;
    // A slow link over two heartbeats: never dropped (every pong is 4 s late).
    let mut state = rig.state.clone();
    let dropped = tokio::time::timeout(Duration::from_secs(55), async {
        loop {
            state.changed().await.expect("alive");
            if is_retrying(&state.borrow()) {
                return;
            }
        }
    })
    .await;
    assert!(dropped.is_err(), "a slow link was taken for a dead one");
}

#[tokio::test(start_paused = true)]
async fn a_24_hour_outage_loses_nothing_and_the_backoff_follows_the_schedule() {
    let mut rig = Rig::start().await;
    let before = rig.append(10).await;
    rig.received(&before).await;

    // Keep the link up a minute past welcome: the next outage starts at attempt 0.
    tokio::time::sleep(Duration::from_secs(61)).await;
    rig.proxy.set(Mode::Down);
    let outage = Instant::now();
    let mut delays = Vec::new();
    let mut written = Vec::new();
    let mut next_write = outage;
    while outage.elapsed() < Duration::from_secs(24 * 3600) {
        if Instant::now() >= next_write {
            written.extend(rig.append(7).await);
            next_write += Duration::from_secs(3600);
        }
        let s = rig.until("a retry", is_retrying).await;
        if let LinkState::Retrying { retry_in, .. } = s {
            delays.push(retry_in);
        }
        rig.until("the next attempt", |s| !is_retrying(s)).await;
    }
    assert!(
        delays.len() > 1000,
        "kept trying: {} attempts",
        delays.len()
    );
    for (attempt, d) in delays.iter().enumerate() {
        let cap = MAX_BACKOFF.min(Duration::from_secs(1 << attempt.min(10)));
        assert!(
            *d >= Duration::from_millis(250) && *d <= cap,
            "attempt {attempt}: {d:?} outside [250 ms, {cap:?}]"
        );
    }
    // Full jitter: the capped delays spread over the whole range.
    let late = &delays[20..];
    assert!(late.iter().any(|d| *d < Duration::from_secs(15)));
    assert!(late.iter().any(|d| *d > Duration::from_secs(45)));

    rig.proxy.set(Mode::Forward);
    rig.until("the link is back", |s| {
        matches!(s, LinkState::Connected { .. })
    })
    .await;
    assert_eq!(written.len(), 24 * 7);
    rig.received(&written).await;
    // The service acks within 250 ms (coalescing); the outbox then empties.
    let mut depth = u64::MAX;
    for _ in 0..20 {
        depth = rig.store.outbox_depth().expect("depth");
        if depth == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(depth, 0, "everything acked");
}
