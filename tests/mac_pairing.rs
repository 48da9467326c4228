//! Pairing as a Mac user meets it, against the real service on loopback:
//! the token in the login Keychain (a stand-in `security` that records its
//! argv and stdin and keeps items in a file) and never on a command line, in
//! `status`, `doctor` or an error; the permission checks before the code is
//! spent; the 429 that says when to try again; an old `credentials.json`
//! moving its token into the Keychain; a self-hosted service behind TLS with
//! its own CA (`--ca-file`, certificates made with the `openssl` CLI); and
//! token rotation, new token stored before the old one is dropped.

mod mac_support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mac_support::{Mac, Run};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use whatsnap_mac::link::keychain::Keychain;
use whatsnap_mac::link::pair::{self, CredentialStore, Credentials, PairError, TokenStore};
use whatsnap_mac::link::rotate::{self, Rotator};
use whatsnap_mac::link::tls;
use whatsnap_mac::sim::Simulator;
use whatsnap_proto::api::AccountState;
use whatsnap_relay::client::AdminClient;
use whatsnap_relay::{RelayConfig, RelayEvent, RelayHandle};

/// A `security` that understands `-i` (commands on stdin, as the bridge
/// stores tokens) besides the argv form, records argv in calls.log and stdin
/// in stdin.log, and keeps `service<TAB>account<TAB>secret` lines in
/// `keychain`. A `keychain-locked` file makes every command fail the way a
/// locked keychain without a GUI does. Its state folder is
/// `$WHATSNAP_STANDIN_STATE`, or `standin-state` beside its own folder.
const SECURITY: &str = r#"#!/bin/sh
set -u
state="${WHATSNAP_STANDIN_STATE:-$(dirname "$0")/../standin-state}"
mkdir -p "$state"
{ printf 'security'; for a in "$@"; do printf '\t%s' "$a"; done; printf '\n'; } >>"$state/calls.log"
kc="$state/keychain"
touch "$kc"
one() {
  if [ -f "$state/keychain-locked" ]; then
    echo "security: SecKeychainItemCopyContent: User interaction is not allowed." >&2
    return 36
  fi
  verb="${1:-}"; [ $# -gt 0 ] && shift
  service=""; account=""; secret=""; print_secret=0
  while [ $# -gt 0 ]; do
    case "$1" in
      -s) service="$2"; shift 2 ;;
      -a) account="$2"; shift 2 ;;
      -w) if [ "$verb" = "add-generic-password" ]; then secret="$2"; shift 2; else print_secret=1; shift; fi ;;
      -U|-A) shift ;;
      -T|-l|-j) shift 2 ;;
      *) echo "security: unknown option $1" >&2; return 2 ;;
    esac
  done
  found=$(awk -F '\t' -v s="$service" -v a="$account" '$1 == s && $2 == a' "$kc")
  case "$verb" in
    find-generic-password)
      if [ -z "$found" ]; then
        echo "security: SecKeychainSearchCopyNext: The specified item could not be found in the keychain." >&2
        return 44
      fi
      [ "$print_secret" -eq 1 ] && printf '%s\n' "$found" | cut -f 3
      ;;
    add-generic-password)
      awk -F '\t' -v s="$service" -v a="$account" '!($1 == s && $2 == a)' "$kc" >"$kc.tmp" && mv "$kc.tmp" "$kc"
      printf '%s\t%s\t%s\n' "$service" "$account" "$secret" >>"$kc"
      ;;
    delete-generic-password)
      if [ -z "$found" ]; then
        echo "security: SecKeychainSearchCopyNext: The specified item could not be found in the keychain." >&2
        return 44
      fi
      awk -F '\t' -v s="$service" -v a="$account" '!($1 == s && $2 == a)' "$kc" >"$kc.tmp" && mv "$kc.tmp" "$kc"
      ;;
    *) echo "security: unknown command $verb" >&2; return 2 ;;
  esac
}
if [ "${1:-}" = "-i" ]; then
  # Like security -i: each line a command, failures on stderr, exit 0.
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$state/stdin.log"
    eval "set -- $line"
    one "$@" || true
  done
  exit 0
fi
one "$@"
"#;

/// Guard against a hang; nothing waits this long when things work.
const PATIENCE: Duration = Duration::from_secs(20);

struct Service {
    handle: RelayHandle,
    admin: AdminClient,
    _dir: tempfile::TempDir,
    _shutdown: tokio_util::sync::DropGuard,
}

impl Service {
    async fn start(public_url: Option<String>) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let handle = whatsnap_relay::start(
            RelayConfig {
                db_path: dir.path().join("relay.db"),
                listen: "127.0.0.1:0".parse().expect("addr"),
                admin_token: "admin".into(),
                public_url,
            },
            shutdown.clone(),
        )
        .await
        .expect("relay");
        let admin = AdminClient::new(&handle.base_url(), Some("admin".into()));
        Service {
            handle,
            admin,
            _dir: dir,
            _shutdown: shutdown.drop_guard(),
        }
    }

    async fn code(&self) -> String {
        self.admin
            .create_account("Mike")
            .await
            .expect("account")
            .pairing
            .code
    }

    /// `GET /v1/device` with `token`: its HTTP status.
    async fn token_status(&self, token: &str) -> u16 {
        let client = AdminClient::new(&self.handle.base_url(), Some(token.to_owned()));
        match client.device().await {
            Ok(_) => 200,
            Err(e) => e.status().unwrap_or(0),
        }
    }
}

/// A pretend Mac with Messages (one message), Automation granted, the
/// Keychain stand-in, and the Keychain chosen as the token store.
fn mac() -> (Mac, PathBuf) {
    let mac = Mac::new();
    let security = mac.bin.join("security");
    std::fs::write(&security, SECURITY).expect("stand-in");
    mac_support::set_mode(&security, 0o755);
    let chat_db = mac.user.join("Library/Messages/chat.db");
    std::fs::create_dir_all(chat_db.parent().expect("parent")).expect("mkdir");
    let mut sim = Simulator::create(&chat_db).expect("chat.db");
    sim.receive("+15551234567", "hello").expect("a message");
    (mac, chat_db)
}

fn cmd(mac: &Mac, chat_db: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = mac.cmd(args);
    cmd.arg("--chat-db")
        .arg(chat_db)
        .arg("--osascript")
        .arg(mac.bin.join("osascript"))
        .env("WHATSNAP_TOKEN_STORE", "keychain");
    cmd
}

fn run(mac: &Mac, chat_db: &Path, args: &[&str]) -> Run {
    Run::from(cmd(mac, chat_db, args).output().expect("runs"))
}

/// Runs a blocking command without stalling the test's runtime.
async fn run_async(mac: &Mac, chat_db: &Path, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::from(cmd(mac, chat_db, args));
    Run::from(cmd.output().await.expect("runs"))
}

fn keychain_items(mac: &Mac) -> Vec<Vec<String>> {
    std::fs::read_to_string(mac.state.join("keychain"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn file_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn pairing_keeps_the_token_in_the_keychain_and_never_on_a_command_line() {
    let service = Service::start(None).await;
    let code = service.code().await;
    let (mac, chat_db) = mac();
    let base = service.handle.base_url();
    let paired = run_async(
        &mac,
        &chat_db,
        &["pair", "--server", &base, "--code", &code],
    )
    .await
    .expect_code(0);
    assert!(paired.stdout.contains("Paired with"), "{paired:?}");

    let creds_path = mac.home().join("credentials.json");
    let file = file_json(&creds_path);
    assert_eq!(file["token_store"], "keychain");
    assert!(file.get("device_token").is_none(), "{file}");
    let device_id = file["device_id"].as_str().expect("device id").to_owned();
    let items = keychain_items(&mac);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        items[0][..2],
        ["whatsnap-mac".to_owned(), device_id.clone()]
    );
    let token = items[0][2].clone();
    assert!(token.starts_with("wsd_"), "{token}");
    assert_eq!(service.token_status(&token).await, 200);

    // It went to security on stdin, never as an argument `ps` would show.
    let stdin = std::fs::read_to_string(mac.state.join("stdin.log")).expect("stdin.log");
    assert!(stdin.contains(&token));
    let calls = mac.calls_of("security");
    assert!(calls.iter().any(|c| c == &["-i"]), "{calls:?}");
    assert!(
        calls.iter().flatten().all(|a| !a.contains(&token)),
        "{calls:?}"
    );

    // status and doctor read it or show the pairing, never the token.
    let status = run(&mac, &chat_db, &["status"]);
    let status_json = run(&mac, &chat_db, &["status", "--json"]);
    let doctor = run_async(&mac, &chat_db, &["doctor", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&doctor.stdout).expect("doctor json");
    let token_check = json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["id"] == "token")
        .expect("token check")
        .clone();
    assert_eq!(token_check["outcome"], "ok", "{token_check}");
    for out in [&paired, &status, &status_json, &doctor] {
        assert!(
            !out.stdout.contains(&token) && !out.stderr.contains(&token),
            "{out:?}"
        );
    }
    assert!(
        mac.calls_of("security")
            .iter()
            .flatten()
            .all(|a| !a.contains(&token))
    );

    // unpair revokes at the service, then forgets the item and the file.
    let unpaired = run_async(&mac, &chat_db, &["unpair"]).await.expect_code(0);
    assert!(!unpaired.stdout.contains(&token));
    assert!(keychain_items(&mac).is_empty());
    assert!(!creds_path.exists());
    assert_eq!(service.token_status(&token).await, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_permission_stops_pairing_before_the_code_is_spent() {
    let service = Service::start(None).await;
    let code = service.code().await;
    let (mac, chat_db) = mac();
    let base = service.handle.base_url();
    let args = ["pair", "--server", base.as_str(), "--code", code.as_str()];

    mac.knob("automation", "denied");
    let denied = run_async(&mac, &chat_db, &args).await.expect_code(1);
    assert!(
        denied
            .stderr
            .contains("Privacy & Security > Automation > Messages"),
        "{denied:?}"
    );
    assert!(denied.stderr.contains("--force"), "{denied:?}");
    assert!(!mac.home().join("credentials.json").exists());

    std::fs::remove_file(mac.state.join("automation")).expect("grant");
    let elsewhere = chat_db.with_file_name("moved.db");
    std::fs::rename(&chat_db, &elsewhere).expect("hide chat.db");
    let no_fda = run_async(&mac, &chat_db, &args).await.expect_code(1);
    assert!(no_fda.stderr.contains("full_disk_access"), "{no_fda:?}");
    assert!(no_fda.stderr.contains("Full Disk Access"), "{no_fda:?}");

    // The code was never sent: it still pairs, here with --force.
    let mut forced = args.to_vec();
    forced.push("--force");
    let paired = run_async(&mac, &chat_db, &forced).await.expect_code(0);
    assert!(paired.stderr.contains("pairing anyway"), "{paired:?}");
    assert!(mac.home().join("credentials.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_wrong_codes_say_when_to_try_again() {
    let service = Service::start(None).await;
    let base = service.handle.base_url();
    let client = tls::http_client(None, None).expect("client");
    for i in 0..10u32 {
        let guess = format!("ZZZZ-{:04}", 2222 + i);
        let err = pair::pair(&client, &base, &guess, pair::device_info())
            .await
            .expect_err("wrong");
        assert!(
            matches!(err, PairError::Refused { status: 401, .. }),
            "{err}"
        );
    }
    let (mac, chat_db) = mac();
    let run = run_async(&mac, &chat_db, &["pair", "--server", &base, "ZZZZ-9999"])
        .await
        .expect_code(1);
    assert!(
        run.stderr
            .contains("try `whatsnap-mac pair` again in 10 min"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_credentials_file_moves_its_token_into_the_keychain() {
    let (mac, _) = mac();
    std::fs::create_dir_all(mac.home()).expect("home");
    let path = mac.home().join("credentials.json");
    let old = serde_json::json!({
        "server": "http://127.0.0.1:9/",
        "ws_url": "ws://127.0.0.1:9/v1/device/ws",
        "device_id": "dev1",
        "device_token": "wsd_old-file-token",
        "account_id": "acc",
        "account_name": "Mike",
        "account_tag": "whatsnap-account-Mike",
    });
    std::fs::write(&path, old.to_string()).expect("old file");
    let store = CredentialStore {
        store: TokenStore::Keychain,
        keychain: Keychain::new(mac.bin.join("security")),
    };

    // A locked keychain: the file's token still works, nothing is lost.
    mac.knob("keychain-locked", "");
    let (creds, _) = store.load(&path).expect("loads from the file");
    assert_eq!(creds.device_token, "wsd_old-file-token");
    assert_eq!(file_json(&path)["device_token"], "wsd_old-file-token");

    // Unlocked: moved, and the file no longer holds it.
    std::fs::remove_file(mac.state.join("keychain-locked")).expect("unlock");
    let (creds, paired) = store.load(&path).expect("loads");
    assert_eq!(creds.device_token, "wsd_old-file-token");
    assert_eq!(paired.token_store, TokenStore::Keychain);
    let file = file_json(&path);
    assert!(file.get("device_token").is_none(), "{file}");
    assert_eq!(file["token_store"], "keychain");
    assert_eq!(
        keychain_items(&mac),
        vec![vec![
            "whatsnap-mac".to_owned(),
            "dev1".into(),
            "wsd_old-file-token".into()
        ]]
    );
    // And later loads read the Keychain, even where the file store is the
    // default: the file says where the token is.
    let file_default = CredentialStore {
        store: TokenStore::File,
        ..store.clone()
    };
    assert_eq!(
        file_default.load(&path).expect("load").0.device_token,
        "wsd_old-file-token"
    );

    // Locked again: the error says how to unlock, and shows no token.
    mac.knob("keychain-locked", "");
    let err = store.load(&path).expect_err("locked");
    let text = err.to_string();
    assert!(text.contains("unlock-keychain"), "{text}");
    assert!(!text.contains("wsd_old-file-token"), "{text}");
    let calls = mac.calls_of("security");
    assert!(
        calls
            .iter()
            .flatten()
            .all(|a| !a.contains("wsd_old-file-token")),
        "{calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_token_is_rotated_stored_first_and_the_old_one_still_works() {
    let service = Service::start(None).await;
    let code = service.code().await;
    let (mac, _) = mac();
    std::fs::create_dir_all(mac.home()).expect("home");
    let path = mac.home().join("credentials.json");
    let client = tls::http_client(None, None).expect("client");
    let creds: Credentials = pair::pair(
        &client,
        &service.handle.base_url(),
        &code,
        pair::device_info(),
    )
    .await
    .expect("pair");
    let store = CredentialStore {
        store: TokenStore::Keychain,
        keychain: Keychain::new(mac.bin.join("security")),
    };
    store.save(&path, &creds, None).expect("save");
    let (token_tx, mut token_rx) = watch::channel(creds.device_token.clone());
    let rotator = Rotator {
        path: path.clone(),
        store: store.clone(),
        client: client.clone(),
        token: token_tx,
    };
    let now = jiff::Timestamp::now().as_millisecond();
    let day = 24 * 3600 * 1000;

    // 29 days old: nothing happens.
    assert!(!rotator.check(now + 29 * day).await.expect("check"));
    assert!(!token_rx.has_changed().expect("open"));

    // 30 days old: a new token, stored, then handed to the link.
    assert!(rotator.check(now + 30 * day).await.expect("check"));
    let new = token_rx.borrow_and_update().clone();
    assert_ne!(new, creds.device_token);
    assert_eq!(store.load(&path).expect("load").0.device_token, new);
    assert_eq!(
        pair::load_paired(&path).expect("paired").token_issued_ms,
        Some(now + 30 * day)
    );
    // The old token works for its 24 h, the new one too.
    assert_eq!(service.token_status(&creds.device_token).await, 200);
    assert_eq!(service.token_status(&new).await, 200);

    // A crash after the service answered but before the store: the answer
    // is lost, the stored (previous) token still rotates.
    let stored = store.load(&path).expect("load").0;
    let lost = rotate::request_new_token(&client, &stored)
        .await
        .expect("rotated, answer lost");
    assert!(rotator.check(now + 61 * day).await.expect("check again"));
    let kept = token_rx.borrow_and_update().clone();
    assert_ne!(kept, lost.device_token);
    assert_eq!(service.token_status(&kept).await, 200);
    // No token ever went to security as an argument.
    for t in [&creds.device_token, &new, &kept] {
        assert!(mac.calls_of("security").iter().flatten().all(|a| a != t));
    }
}

// ---------------------------------------------------------------------------
// TLS with a private CA
// ---------------------------------------------------------------------------

/// A CA and a certificate for localhost/127.0.0.1 signed by it, made with the
/// `openssl` command line tool.
struct Certs {
    ca: PathBuf,
    leaf: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line tool runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) -> Certs {
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    #[rustfmt::skip]
    openssl(dir, &[
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=WhatSnap Test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    #[rustfmt::skip]
    openssl(dir, &[
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost",
    ]);
    #[rustfmt::skip]
    openssl(dir, &[
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext",
    ]);
    Certs {
        ca: dir.join("ca.pem"),
        leaf: dir.join("leaf.pem"),
        key: dir.join("leaf.key"),
    }
}

/// Terminates TLS on `listener` and passes the bytes to `backend`, one
/// thread per direction per connection (the service itself speaks plain
/// HTTP, as it would behind a reverse proxy).
fn tls_proxy(listener: std::net::TcpListener, certs: &Certs, backend: std::net::SocketAddr) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.leaf)
        .expect("leaf")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&certs.key).expect("key");
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config"),
    );
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let config = config.clone();
            std::thread::spawn(move || pipe(client, config, backend));
        }
    });
}

fn pipe(
    client: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    backend: std::net::SocketAddr,
) {
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let Ok(upstream) = std::net::TcpStream::connect(backend) else {
        return;
    };
    // Reads give up after a moment so the other direction can write.
    let _ = client.set_read_timeout(Some(Duration::from_millis(5)));
    let tls = Arc::new(Mutex::new(rustls::StreamOwned::new(conn, client)));
    let (mut up_read, mut up_write) = (
        upstream.try_clone().expect("clone"),
        upstream.try_clone().expect("clone"),
    );
    let down = tls.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match up_read.read(&mut buf) {
                Ok(0) | Err(_) => 0,
                Ok(n) => n,
            };
            let mut tls = down
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if n == 0 {
                tls.conn.send_close_notify();
                let _ = tls.flush();
                let _ = tls.sock.shutdown(std::net::Shutdown::Both);
                return;
            }
            if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = {
            let mut tls = tls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tls.read(&mut buf)
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                if up_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = upstream.shutdown(std::net::Shutdown::Both);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_hosted_service_with_its_own_ca_is_trusted_through_ca_file() {
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(certs_dir.path());
    let front = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let https = format!(
        "https://localhost:{}",
        front.local_addr().expect("addr").port()
    );
    let service = Service::start(Some(https.clone())).await;
    tls_proxy(front, &certs, service.handle.addr());
    let mut events = service.handle.subscribe();
    let code = service.code().await;
    let (mac, chat_db) = mac();
    let ca = certs.ca.to_str().expect("utf-8");

    // Without the CA the certificate is refused, with the fix named, and the
    // code is not spent.
    let untrusted = run_async(
        &mac,
        &chat_db,
        &["pair", "--server", &https, "--code", &code],
    )
    .await;
    assert_ne!(untrusted.code, 0);
    assert!(untrusted.stderr.contains("--ca-file"), "{untrusted:?}");

    let paired = run_async(
        &mac,
        &chat_db,
        &["pair", "--server", &https, "--code", &code, "--ca-file", ca],
    )
    .await
    .expect_code(0);
    assert!(paired.stdout.contains("Paired with"), "{paired:?}");
    let kept = mac.home().join("service-ca.pem");
    assert_eq!(
        std::fs::read(&kept).expect("CA kept"),
        std::fs::read(&certs.ca).expect("CA")
    );
    let file = file_json(&mac.home().join("credentials.json"));
    assert_eq!(file["ca_file"], kept.to_str().expect("utf-8"));
    assert!(
        file["ws_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("wss://localhost:")),
        "{file}"
    );

    // doctor uses the kept CA: service over TLS, token proven live.
    let doctor = run_async(&mac, &chat_db, &["doctor", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&doctor.stdout).expect("json");
    for id in ["service", "token", "clock"] {
        let check = json["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["id"] == id)
            .expect("check")
            .clone();
        assert_eq!(check["outcome"], "ok", "{check}");
        if id == "service" {
            assert!(
                check["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("over TLS"))
            );
        }
    }

    // The daemon's websocket goes through wss:// with the same CA.
    let mut daemon = tokio::process::Command::from(cmd(&mac, &chat_db, &["run"]))
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("daemon");
    let active = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Ok(RelayEvent::AccountStatus {
                    status: AccountState::Active,
                    ..
                }) => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await;
    let _ = daemon.start_kill();
    let out = daemon.wait_with_output().await.expect("daemon output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(active.is_ok(), "the daemon never connected over wss: {log}");
    let token = keychain_items(&mac)[0][2].clone();
    assert!(!log.contains(&token), "the daemon logged its token");

    // unpair finds the service through the kept CA too.
    run_async(&mac, &chat_db, &["unpair"]).await.expect_code(0);
}

/// A service that answers every websocket upgrade `503` with
/// `Retry-After: 0` (so the link dials again at once) and reports the
/// `Authorization` header each attempt carried.
async fn busy_service() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request).into_owned();
            let auth = text
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.trim().to_owned())
                })
                .unwrap_or_default();
            let _ = tx.send(auth);
            let body = r#"{"error":{"code":"busy","message":"busy"}}"#;
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (format!("ws://{addr}/v1/device/ws"), rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_link_presents_the_newest_token_at_each_connection() {
    use whatsnap_mac::link::{Dial, Link, LinkState, MAX_BACKOFF};
    let (ws_url, mut seen) = busy_service().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = whatsnap_mac::store::Store::open(&dir.path().join("state.db")).expect("store");
    let creds = Credentials {
        server: ws_url
            .replace("ws://", "http://")
            .replace("/v1/device/ws", ""),
        ws_url,
        device_id: "dev".into(),
        device_token: "wsd_first".into(),
        account_id: "acc".into(),
        account_name: "Mike".into(),
        account_tag: "whatsnap-account-Mike".into(),
    };
    let (token_tx, token_rx) = watch::channel(creds.device_token.clone());
    let link = Link {
        creds,
        store,
        outbox: Arc::new(tokio::sync::Notify::new()),
        send_wake: Arc::new(tokio::sync::Notify::new()),
        admission: None,
        state: watch::channel(LinkState::Connecting).0,
        reader_health: watch::channel(whatsnap_mac::reader::ReaderHealth::default()).1,
        started: tokio::time::Instant::now(),
        backoff_cap: MAX_BACKOFF,
        settings: watch::channel(whatsnap_proto::frame::SettingsData {
            version: 0,
            values: serde_json::Map::new(),
        })
        .0,
    };
    let shutdown = CancellationToken::new();
    let dial = Dial {
        token: token_rx,
        client: tls::http_client(None, None).expect("client"),
    };
    tokio::spawn(link.run_with(dial, shutdown.clone()));
    assert_eq!(next(&mut seen).await, "Bearer wsd_first");
    // A rotation stored the new token and published it: the next dial
    // carries it, and no dial after that carries the old one.
    token_tx.send_replace("wsd_second".into());
    let mut auth = next(&mut seen).await;
    if auth == "Bearer wsd_first" {
        // That dial had started before the new token was published.
        auth = next(&mut seen).await;
    }
    assert_eq!(auth, "Bearer wsd_second");
    assert_eq!(next(&mut seen).await, "Bearer wsd_second");
    shutdown.cancel();
}

async fn next(seen: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .expect("the link dials")
        .expect("service up")
}
