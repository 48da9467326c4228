//! `status` as the user sees it: each format in each state compared with a
//! stored snapshot (`tests/mac_snapshots/`, rewritten with
//! `WHATSNAP_BLESS=1 cargo test --test mac_status`), and the real binary
//! talking to a live control socket, or finding no daemon.

mod mac_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mac_support::{EXE, Mac};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use whatsnap_mac::control::{self, DaemonStatus, LinkView};
use whatsnap_mac::daemon::{DaemonHandle, Reload};
use whatsnap_mac::link::LinkState;
use whatsnap_mac::reader::ReaderHealth;
use whatsnap_mac::status::{Account, MenuFlavor, Queue, Status};
use whatsnap_mac::store::Store;
use whatsnap_proto::frame::SettingsData;

const NOW: i64 = 1_764_000_000_000;
const MIN: i64 = 60_000;

fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mac_snapshots")
        .join(name);
    if std::env::var_os("WHATSNAP_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, actual).expect("bless");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("no snapshot {}; run with WHATSNAP_BLESS=1", path.display()));
    assert_eq!(actual, expected, "snapshot {name} differs");
}

fn daemon(link: LinkView) -> DaemonStatus {
    DaemonStatus {
        pid: 4242,
        version: "0.1.0".into(),
        started_ms: NOW - 125 * MIN,
        link,
        reader_error: None,
        last_row_ms: Some(NOW - 5 * MIN),
        sending_paused: false,
    }
}

fn mike() -> Account {
    Account {
        name: "Mike".into(),
        tag: "whatsnap-account-Mike".into(),
        server: "https://whatsnap.example.com/".into(),
    }
}

fn queue() -> Queue {
    Queue {
        events_unacked: 0,
        sends_pending: 1,
        last_send_ms: Some(NOW - 2 * MIN),
        last_send_error: None,
    }
}

fn states() -> Vec<(&'static str, Status)> {
    let connected = Status {
        daemon: Some(daemon(LinkView::from(&LinkState::Connected {
            account_tag: "whatsnap-account-Mike".into(),
        }))),
        account: Some(mike()),
        queue: Some(queue()),
        agent_installed: true,
        credentials_error: None,
    };
    let mut degraded = connected.clone();
    degraded.daemon = Some(DaemonStatus {
        reader_error: Some("macOS denied access to /Users/you/Library/Messages/chat.db: grant Full Disk Access to /Users/you/bin/whatsnap-mac in System Settings > Privacy & Security > Full Disk Access, then restart whatsnap-mac".into()),
        ..daemon(LinkView::from(&LinkState::Retrying {
            reason: "connection refused".into(),
            retry_in: Duration::from_secs(8),
        }))
    });
    let mut paused = connected.clone();
    if let Some(d) = paused.daemon.as_mut() {
        d.sending_paused = true;
    }
    let mut denied = connected.clone();
    denied.queue = Some(Queue {
        last_send_error: Some("automation_denied".into()),
        ..queue()
    });
    let stopped = Status {
        daemon: Some(daemon(LinkView::from(&LinkState::Stopped {
            reason: "this Mac's token was revoked: run `whatsnap-mac pair` again".into(),
        }))),
        ..connected.clone()
    };
    let down = Status {
        daemon: None,
        ..connected.clone()
    };
    let fresh = Status {
        daemon: None,
        account: None,
        queue: None,
        agent_installed: false,
        credentials_error: None,
    };
    vec![
        ("connected", connected),
        ("degraded", degraded),
        ("paused", paused),
        ("automation_denied", denied),
        ("stopped", stopped),
        ("down", down),
        ("fresh", fresh),
    ]
}

#[test]
fn every_format_in_every_state_matches_its_snapshot() {
    let exe = Path::new("/Users/you/Library/Application Support/whatsnap/bin/whatsnap-mac");
    for (name, status) in states() {
        snapshot(&format!("{name}.txt"), &status.render_text(NOW));
        let json = serde_json::to_string_pretty(&status.render_json()).expect("json") + "\n";
        snapshot(&format!("{name}.json"), &json);
        snapshot(
            &format!("{name}.swiftbar"),
            &status.render_menu(MenuFlavor::Swiftbar, NOW, exe),
        );
        snapshot(
            &format!("{name}.xbar"),
            &status.render_menu(MenuFlavor::Xbar, NOW, exe),
        );
    }
}

#[test]
fn exit_codes_say_connected_degraded_down() {
    let codes: Vec<(&str, u8)> = states()
        .into_iter()
        .map(|(name, s)| (name, s.overall().exit_code()))
        .collect();
    assert_eq!(
        codes,
        [
            ("connected", 0),
            ("degraded", 1),
            ("paused", 1),
            ("automation_denied", 1),
            ("stopped", 3),
            ("down", 3),
            ("fresh", 3)
        ]
    );
}

#[test]
fn menu_lines_never_break_out_of_their_item() {
    let (_, mut status) = states().remove(1);
    if let Some(d) = status.daemon.as_mut() {
        d.link.reason = Some("evil | bash=/bin/rm\nsecond line".into());
    }
    let menu = status.render_menu(MenuFlavor::Swiftbar, NOW, Path::new("/x"));
    assert!(!menu.contains("| bash=/bin/rm"), "{menu}");
    assert!(!menu.contains("\nsecond line"), "{menu}");
}

/// A control server with a hand-driven link state, as the daemon runs it.
struct Live {
    shutdown: CancellationToken,
    link: watch::Sender<LinkState>,
    _reader: watch::Sender<ReaderHealth>,
    /// What the reader and sender would be woken by.
    wakes: watch::Receiver<u64>,
    /// The settings the sender would follow.
    settings: watch::Receiver<SettingsData>,
    store: Store,
    server: tokio::task::JoinHandle<()>,
}

/// A handle over real channels and a real store in `home`.
fn handle(
    home: &Path,
) -> (
    DaemonHandle,
    watch::Receiver<u64>,
    watch::Receiver<SettingsData>,
    Store,
) {
    let (_link, link_rx) = watch::channel(LinkState::Connecting);
    let (_reader, reader_rx) = watch::channel(ReaderHealth::default());
    let (rescan, wakes) = watch::channel(0u64);
    let store = Store::open(&home.join("state.db")).expect("store");
    let (settings_tx, settings) = watch::channel(store.settings().expect("settings"));
    let handle = DaemonHandle {
        link: link_rx,
        reader: reader_rx,
        rescan,
        reload: Reload::new(store.clone(), settings_tx, Arc::new(Notify::new())),
    };
    (handle, wakes, settings, store)
}

async fn live(home: &Path) -> Live {
    std::fs::create_dir_all(home).expect("home");
    let (link, link_rx) = watch::channel(LinkState::Connecting);
    let (reader, reader_rx) = watch::channel(ReaderHealth {
        error: None,
        last_row_ms: Some(NOW),
    });
    let (mut handle, wakes, settings, store) = handle(home);
    handle.link = link_rx;
    handle.reader = reader_rx;
    let shutdown = CancellationToken::new();
    let socket = control::socket_path(home);
    let server = tokio::spawn(control::serve(socket.clone(), handle, shutdown.clone()));
    // serve binds before its first await point that could yield to us only
    // after the socket exists; wait for the file rather than for time.
    while !socket.exists() {
        tokio::task::yield_now().await;
    }
    Live {
        shutdown,
        link,
        _reader: reader,
        wakes,
        settings,
        store,
        server,
    }
}

async fn status(mac: &Mac, home: &Path, args: &[&str]) -> mac_support::Run {
    let mut all = vec!["--home", home.to_str().expect("utf-8"), "status"];
    all.extend_from_slice(args);
    let out = tokio::process::Command::new(EXE)
        .args(&all)
        .env_clear()
        .env("HOME", &mac.user)
        .env("PATH", mac.path_var())
        .output()
        .await
        .expect("status runs");
    mac_support::Run::from(out)
}

fn home_of(mac: &Mac) -> PathBuf {
    // Short: macOS socket paths are limited to 104 bytes.
    mac.dir.path().join("h")
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reads_the_live_daemon_and_its_exit_code_follows_the_link() {
    let mac = Mac::new();
    let home = home_of(&mac);
    let live = live(&home).await;

    let mode = std::fs::metadata(control::socket_path(&home)).expect("socket");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600, "only the user");

    let run = status(&mac, &home, &["--json"]).await.expect_code(1);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(json["state"], "degraded");
    assert_eq!(json["daemon"]["link"]["state"], "connecting");
    assert_eq!(json["daemon"]["pid"], std::process::id());

    // Paired and linked: connected.
    let creds = whatsnap_mac::link::pair::Credentials {
        server: "https://whatsnap.example.com/".into(),
        ws_url: "wss://whatsnap.example.com/v1/device/ws".into(),
        device_id: "dev".into(),
        device_token: "secret-token".into(),
        account_id: "acc".into(),
        account_name: "Mike".into(),
        account_tag: "whatsnap-account-Mike".into(),
    };
    whatsnap_mac::link::pair::save(&home.join("credentials.json"), &creds).expect("save");
    live.link.send_replace(LinkState::Connected {
        account_tag: "whatsnap-account-Mike".into(),
    });
    let run = status(&mac, &home, &[]).await.expect_code(0);
    assert!(
        run.stdout.starts_with("whatsnap-mac: connected\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Mike (whatsnap-account-Mike)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("secret-token"));

    // Pause and resume through the socket.
    let run = status(&mac, &home, &["--pause"]).await.expect_code(0);
    assert!(run.stdout.contains("paused"), "{}", run.stdout);
    assert!(control::sending_paused(&home));
    let run = status(&mac, &home, &["--format", "swiftbar"])
        .await
        .expect_code(0);
    assert!(run.stdout.starts_with("◐ WS"), "{}", run.stdout);
    assert!(run.stdout.contains("Resume sending"), "{}", run.stdout);
    status(&mac, &home, &["--resume"]).await.expect_code(0);
    assert!(!control::sending_paused(&home));

    // Rescan wakes the reader and the sender as a chat.db change would.
    let mut wakes = live.wakes.clone();
    wakes.borrow_and_update();
    let run = status(&mac, &home, &["--rescan"]).await.expect_code(0);
    assert!(run.stdout.contains("reading chat.db now"), "{}", run.stdout);
    assert!(wakes.has_changed().expect("open"), "the reader was woken");

    // Reload hands the stored settings (as the service last pushed them)
    // back to the sender.
    let pushed = SettingsData {
        version: 7,
        values: serde_json::json!({"max_sends_per_hour": 12})
            .as_object()
            .expect("object")
            .clone(),
    };
    live.store
        .accept_settings(None, &pushed, serde_json::Map::new())
        .expect("stored");
    let run = status(&mac, &home, &["--reload"]).await.expect_code(0);
    assert!(
        run.stdout.contains("settings version 7 applied"),
        "{}",
        run.stdout
    );
    assert_eq!(*live.settings.borrow(), pushed, "the sender follows them");

    live.shutdown.cancel();
    live.server.await.expect("server stops");
    assert!(!control::socket_path(&home).exists(), "socket removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_daemon_status_says_so_and_how_to_start_it() {
    let mac = Mac::new();
    let home = home_of(&mac);
    let run = status(&mac, &home, &[]).await.expect_code(3);
    assert!(
        run.stdout.starts_with("whatsnap-mac: down\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("whatsnap-mac install"),
        "{}",
        run.stdout
    );
    assert!(!home.exists(), "status creates nothing");
    // A stale socket file left by a crash still means "not running".
    std::fs::create_dir_all(&home).expect("home");
    std::os::unix::net::UnixListener::bind(control::socket_path(&home)).expect("bind");
    let run = status(&mac, &home, &["--format", "xbar"])
        .await
        .expect_code(0);
    assert!(
        run.stdout.starts_with("○ WS | color=#cf222e\n---\n"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_does_not_steal_the_socket() {
    let mac = Mac::new();
    let home = home_of(&mac);
    let first = live(&home).await;
    let second = home.join("second");
    std::fs::create_dir_all(&second).expect("second home");
    let (handle, ..) = handle(&second);
    // Returns at once: the socket is taken.
    control::serve(
        control::socket_path(&home),
        handle,
        CancellationToken::new(),
    )
    .await;
    let answer = tokio::task::spawn_blocking({
        let socket = control::socket_path(&home);
        move || control::request(&socket, control::Request::Status)
    })
    .await
    .expect("join")
    .expect("the first still answers");
    assert_eq!(answer.status.expect("status").pid, std::process::id());
    first.shutdown.cancel();
    first.server.await.expect("stops");
}
