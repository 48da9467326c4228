//! The daemon's send worker on service commands (`cmd.send`), in process with
//! its real parts: the daemon's store, the real runner spawning the fake
//! `osascript` process, and a WAL chat.db. These pin down what the service
//! sees: one `send.result` per command, a replayed command answered from the
//! store, hourly limits that queue instead of dropping, deadlines, a restart
//! that only correlates, and echo detection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use whatsnap_mac::chatdb::SharedChatDb;
use whatsnap_mac::send::download::{Downloads, sha256_hex};
use whatsnap_mac::send::runner::Runner;
use whatsnap_mac::send::{
    Admission, MacosProbe, SendSettings, SendWorker, Sender, scripts::MacosVersion,
};
use whatsnap_mac::sim::Simulator;
use whatsnap_mac::sim::fake_osascript::{self, CONTROL_ENV, Control, LOG_ENV};
use whatsnap_mac::sim::sends::SendSim;
use whatsnap_mac::store::{Accepted, SendPhase, Store};
use whatsnap_proto::frame::{
    Body, CmdSend, OutboundAttachment, SendResult, SendState, SendTo, ServicePref,
};

const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");
const ANN: &str = "+15551234567";

struct Daemon {
    dir: tempfile::TempDir,
    chat_db: PathBuf,
    store: Store,
    wake: Arc<Notify>,
    outbox: Arc<Notify>,
    settings: watch::Sender<SendSettings>,
    shutdown: CancellationToken,
    seq: u64,
}

impl Daemon {
    fn new(settings: SendSettings) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let messages = dir.path().join("Messages");
        std::fs::create_dir(&messages).expect("Messages");
        let chat_db = messages.join("chat.db");
        Simulator::create(&chat_db).expect("chat.db");
        let store = Store::open(&dir.path().join("state.db")).expect("store");
        store.adopt_commands_epoch("E1").expect("epoch");
        let (settings, _) = watch::channel(settings);
        Daemon {
            dir,
            chat_db,
            store,
            wake: Arc::new(Notify::new()),
            outbox: Arc::new(Notify::new()),
            settings,
            shutdown: CancellationToken::new(),
            seq: 0,
        }
    }

    fn control(&self, c: &Control) {
        c.write(&self.dir.path().join("control.json"))
            .expect("control");
    }

    /// Starts a sender on this store (as a daemon start would).
    fn start(&self) -> tokio::task::JoinHandle<Option<SendResult>> {
        self.start_with(None)
    }

    fn start_with(
        &self,
        downloads: Option<Downloads>,
    ) -> tokio::task::JoinHandle<Option<SendResult>> {
        tokio::spawn(self.worker(downloads).run(self.shutdown.clone()))
    }

    /// Starts a sender and returns the handle the link accepts commands
    /// through.
    fn start_admitting(&self) -> Admission {
        let worker = self.worker(None);
        let admission = worker.admission();
        tokio::spawn(worker.run(self.shutdown.clone()));
        admission
    }

    fn worker(&self, downloads: Option<Downloads>) -> SendWorker {
        // The fake reads its control and log files from the environment; a
        // second wrapper sets them, so tests never touch the process env.
        let osascript =
            fake_osascript::write_wrapper(self.dir.path(), Path::new(EXE), &self.chat_db)
                .expect("wrapper");
        let wrapper = self.dir.path().join("osascript-env");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexport {CONTROL_ENV}='{}' {LOG_ENV}='{}'\nexec '{}' \"$@\"\n",
                self.dir.path().join("control.json").display(),
                self.dir.path().join("osascript.jsonl").display(),
                osascript.display()
            ),
        )
        .expect("env wrapper");
        make_executable(&wrapper);
        let (_ticks, db_changed) = watch::channel(0u64);
        let worker = Sender {
            store: self.store.clone(),
            chat_db: SharedChatDb::new(self.chat_db.clone()),
            runner: Runner::new(wrapper, Duration::from_secs(30)),
            wake: self.wake.clone(),
            db_changed,
            outbox: self.outbox.clone(),
        }
        .with_settings(self.settings.subscribe())
        .with_probe(MacosProbe::Fixed(
            MacosVersion::parse("15.3").expect("version"),
        ));
        match downloads {
            Some(d) => worker.with_downloads(d),
            None => worker,
        }
    }

    /// Delivers a `cmd.send` as the link does: accepted into the store, then
    /// the worker woken.
    fn command(&mut self, cmd: &CmdSend) {
        self.seq += 1;
        self.store
            .accept_command(self.seq, Some(cmd))
            .expect("accept");
        self.wake.notify_one();
    }

    /// Waits (on the outbox notification, never by sleeping) for the result.
    async fn result(&self, id: &str) -> SendResult {
        let wait = async {
            loop {
                let notified = self.outbox.notified();
                let record = self.store.send_record(id).expect("read");
                if let Some(result) = record.and_then(|r| r.result) {
                    return result;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("a result in time")
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("osascript.jsonl"))
            .map_or(0, |t| t.lines().count())
    }

    /// Every file under the staging folder.
    fn staged_files(&self) -> Vec<PathBuf> {
        let root = self
            .chat_db
            .parent()
            .expect("dir")
            .join("Attachments/whatsnap");
        if root.exists() {
            walk(&root)
        } else {
            Vec::new()
        }
    }

    fn send_results_in_outbox(&self) -> Vec<SendResult> {
        self.store
            .outbox_after(0, 100)
            .expect("outbox")
            .into_iter()
            .filter_map(|e| match e.body {
                Body::SendResult(r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn cmd(id: &str, to: &str, text: &str) -> CmdSend {
    CmdSend {
        client_msg_id: id.into(),
        to: Some(SendTo { handle: to.into() }),
        chat_guid: None,
        text: text.into(),
        attachments: vec![],
        service_pref: ServicePref::Auto,
        reply_to_guid: None,
        expires_at_ms: None,
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_cmd_send_is_answered_from_the_store_and_never_dispatched_again() {
    let mut d = Daemon::new(SendSettings::default());
    d.control(&Control::default());
    let _worker = d.start();
    d.command(&cmd("ghl:1", ANN, "Thanks for your order"));
    let first = d.result("ghl:1").await;
    assert_eq!(first.state, SendState::Sent);
    assert_eq!(d.send_results_in_outbox(), vec![first.clone()]);
    // The service acked it, lost its state, and sends the command again
    // under a new epoch.
    d.store.ack_events(u64::MAX / 2).expect("ack");
    d.store.adopt_commands_epoch("E2").expect("epoch");
    d.seq = 0;
    d.command(&cmd("ghl:1", ANN, "Thanks for your order"));
    assert_eq!(
        d.send_results_in_outbox(),
        vec![first],
        "the stored result again"
    );
    assert_eq!(d.calls(), 1, "dispatched once");
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_limit_queues_sends_rather_than_dropping_them() {
    let mut d = Daemon::new(SendSettings {
        max_sends_per_hour: 1,
        ..SendSettings::default()
    });
    d.control(&Control::default());
    let _worker = d.start();
    d.command(&cmd("a", ANN, "first"));
    d.command(&cmd("b", ANN, "second"));
    assert_eq!(d.result("a").await.state, SendState::Sent);
    // b waits in the queue, visible to `status`.
    let depth = d.store.queue_depth().expect("depth");
    assert_eq!((depth.queued, depth.dispatching), (1, 0));
    let b = d.store.send_record("b").expect("read").expect("kept");
    assert_eq!(b.phase, SendPhase::Queued);
    // The account's owner raises the limit: b leaves at once.
    d.settings.send_modify(|s| s.max_sends_per_hour = 10);
    assert_eq!(d.result("b").await.state, SendState::Sent);
    assert_eq!(d.calls(), 2);
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_waiting_for_the_limit_expires_at_its_deadline_without_dispatch() {
    let mut d = Daemon::new(SendSettings {
        max_sends_per_hour: 1,
        ..SendSettings::default()
    });
    d.control(&Control::default());
    let _worker = d.start();
    d.command(&cmd("a", ANN, "first"));
    let mut late = cmd("b", ANN, "too late");
    late.expires_at_ms = Some(now_ms() + 300);
    d.command(&late);
    assert_eq!(d.result("a").await.state, SendState::Sent);
    let b = d.result("b").await;
    assert_eq!(b.state, SendState::Expired);
    assert_eq!(d.calls(), 1);
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_messages_cannot_carry_are_rejected_before_any_osascript() {
    let mut d = Daemon::new(SendSettings::default());
    d.control(&Control::default());
    let _worker = d.start();
    d.command(&cmd("nul", ANN, "a\0b"));
    d.command(&cmd("big", ANN, &"x".repeat(64 * 1024 + 1)));
    let mut past = cmd("past", ANN, "x");
    past.expires_at_ms = Some(now_ms() - 1);
    d.command(&past);
    assert_eq!(d.result("nul").await.state, SendState::Rejected);
    assert_eq!(d.result("big").await.state, SendState::Rejected);
    assert_eq!(d.result("past").await.state, SendState::Expired);
    assert_eq!(d.calls(), 0);
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_dispatching_send_is_only_correlated() {
    let mut d = Daemon::new(SendSettings {
        restart_confirm_window: Duration::from_millis(300),
        ..SendSettings::default()
    });
    d.control(&Control::default());
    // Two sends a crashed daemon left in `dispatching`: one whose row
    // Messages wrote, one it never got.
    let chat = SendSim::open(&d.chat_db)
        .expect("sim")
        .create_direct_chat("iMessage;-;+15551234567", ANN, "iMessage")
        .expect("chat");
    let before = 0;
    for (id, text) in [("went", "made it"), ("lost", "never made it")] {
        d.command(&cmd(id, ANN, text));
        d.store
            .mark_dispatching(id, before, Some(&chat))
            .expect("dispatching");
    }
    let row = SendSim::open(&d.chat_db)
        .expect("sim")
        .send_to_chat(
            &chat,
            whatsnap_mac::sim::sends::SimBody::Text("made it"),
            None,
            whatsnap_mac::sim::sends::SimOutcome::SENT,
        )
        .expect("row");
    let _worker = d.start();
    let went = d.result("went").await;
    assert_eq!((went.state, went.guids), (SendState::Sent, vec![row.guid]));
    let lost = d.result("lost").await;
    assert_eq!(lost.state, SendState::Unknown);
    assert!(
        lost.error.expect("why").message.contains("restarted"),
        "says why"
    );
    assert_eq!(d.calls(), 0, "nothing dispatched again");
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_copy_of_our_text_right_after_the_send_is_a_suspected_echo() {
    let mut d = Daemon::new(SendSettings::default());
    d.control(&Control::default());
    let _worker = d.start();
    d.command(&cmd("e", ANN, "See you at 5"));
    let sent = d.result("e").await;
    assert_eq!(sent.state, SendState::Sent);
    let chat = "iMessage;-;+15551234567";
    let echo = SendSim::open(&d.chat_db)
        .expect("sim")
        .receive_in(chat, ANN, "See you at 5")
        .expect("echo row");
    assert!(echo.rowid > 0);
    let flagged = d
        .store
        .suspected_echo(chat, Some(ANN), "See you at 5", now_ms())
        .expect("query");
    assert_eq!(flagged.as_deref(), Some("e"));
    let reply = d
        .store
        .suspected_echo(chat, Some(ANN), "ok!", now_ms())
        .expect("query");
    assert_eq!(reply, None, "a real reply is not an echo");
    d.shutdown.cancel();
}

/// Serves `body` once per connection on loopback, as the service's signed
/// attachment link; returns its URL and the Authorization headers it saw.
async fn attachment_server(
    body: &'static [u8],
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&req).to_string();
            let auth = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("authorization: ")
                        .or(l.strip_prefix("Authorization: "))
                })
                .unwrap_or_default()
                .to_owned();
            let _ = tx.send(auth);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await.expect("head");
            sock.write_all(body).await.expect("body");
        }
    });
    (format!("http://{addr}/v1/device/attachments/a1?sig=x"), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_service_hosts_is_fetched_with_the_device_token_then_sent() {
    let mut d = Daemon::new(SendSettings {
        file_gap: Duration::ZERO,
        ..SendSettings::default()
    });
    d.control(&Control::default());
    let (url, mut auth) = attachment_server(b"GIF89a").await;
    let _worker = d.start_with(Some(Downloads::new(client(), "wsd_token".into())));
    let mut c = cmd("ghl:photo", ANN, "Here is the photo");
    c.attachments = vec![OutboundAttachment {
        url,
        name: "../photo \"1\".gif".into(),
        mime: Some("image/gif".into()),
        size: 6,
        sha256: sha256_hex(b"GIF89a"),
    }];
    d.command(&c);
    let result = d.result("ghl:photo").await;
    assert_eq!(result.state, SendState::Sent, "{result:?}");
    assert_eq!(result.guids.len(), 2, "the text and the file");
    assert_eq!(auth.recv().await.as_deref(), Some("Bearer wsd_token"));
    let staged: Vec<_> = walk(
        &d.chat_db
            .parent()
            .expect("dir")
            .join("Attachments/whatsnap"),
    );
    assert_eq!(staged.len(), 1);
    assert_eq!(
        staged[0].file_name().and_then(|n| n.to_str()),
        Some(".._photo \"1\".gif"),
        "a name from the service cannot leave the staging folder"
    );
    assert_eq!(std::fs::read(&staged[0]).expect("read"), b"GIF89a");
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_of_the_wrong_size_is_rejected_before_messages_is_asked() {
    let mut d = Daemon::new(SendSettings::default());
    d.control(&Control::default());
    let (url, _auth) = attachment_server(b"short").await;
    let _worker = d.start_with(Some(Downloads::new(client(), "t".into())));
    let mut c = cmd("ghl:bad", ANN, "");
    c.attachments = vec![OutboundAttachment {
        url,
        name: "x.pdf".into(),
        mime: None,
        size: 999,
        sha256: sha256_hex(b"short"),
    }];
    d.command(&c);
    let result = d.result("ghl:bad").await;
    assert_eq!(result.state, SendState::Rejected, "{result:?}");
    assert_eq!(result.error.expect("why").code, "bad_attachment");
    assert_eq!(d.calls(), 0);
    assert_eq!(
        d.staged_files(),
        Vec::<PathBuf>::new(),
        "the short file is gone"
    );
    d.shutdown.cancel();
}

/// Regression: a downloaded file was checked for its size only, so a file
/// whose bytes were not the CRM's (a swapped or corrupted object behind the
/// link) went out to the customer, after the text of the same send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloaded_file_whose_sha256_does_not_match_is_rejected_and_deleted_and_nothing_is_sent()
{
    let mut d = Daemon::new(SendSettings {
        file_gap: Duration::ZERO,
        ..SendSettings::default()
    });
    d.control(&Control::default());
    // The right size, the wrong bytes.
    let (url, mut auth) = attachment_server(b"EVIL89").await;
    let _worker = d.start_with(Some(Downloads::new(client(), "wsd_token".into())));
    let mut c = cmd("ghl:swapped", ANN, "Here is your contract");
    c.attachments = vec![OutboundAttachment {
        url,
        name: "contract.pdf".into(),
        mime: Some("application/pdf".into()),
        size: 6,
        sha256: sha256_hex(b"GIF89a"),
    }];
    d.command(&c);
    let result = d.result("ghl:swapped").await;
    assert_eq!(result.state, SendState::Rejected, "{result:?}");
    assert!(result.guids.is_empty(), "{result:?}");
    let error = result.error.expect("why");
    assert_eq!(error.code, "bad_attachment");
    assert!(
        error.message.contains("SHA-256")
            && error.message.contains(&sha256_hex(b"GIF89a"))
            && error.message.contains(&sha256_hex(b"EVIL89")),
        "says what was expected and what came: {}",
        error.message
    );
    assert!(!error.message.contains("sig="), "no signature in messages");
    assert_eq!(auth.recv().await.as_deref(), Some("Bearer wsd_token"));
    assert_eq!(
        d.calls(),
        0,
        "neither the text nor the file reached Messages"
    );
    assert_eq!(
        SendSim::open(&d.chat_db)
            .expect("sim")
            .from_me_rows()
            .expect("rows"),
        Vec::<(String, String)>::new()
    );
    assert_eq!(
        d.staged_files(),
        Vec::<PathBuf>::new(),
        "the wrong file is deleted"
    );
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_service_hosts_without_a_valid_sha256_is_rejected_unfetched() {
    let mut d = Daemon::new(SendSettings::default());
    d.control(&Control::default());
    let (url, mut auth) = attachment_server(b"GIF89a").await;
    let _worker = d.start_with(Some(Downloads::new(client(), "t".into())));
    let mut c = cmd("ghl:nosum", ANN, "");
    c.attachments = vec![OutboundAttachment {
        url,
        name: "x.gif".into(),
        mime: None,
        size: 6,
        sha256: String::new(),
    }];
    d.command(&c);
    let result = d.result("ghl:nosum").await;
    assert_eq!(result.state, SendState::Rejected, "{result:?}");
    assert_eq!(result.error.expect("why").code, "bad_attachment");
    assert!(auth.try_recv().is_err(), "not even downloaded");
    assert_eq!(d.calls(), 0);
    d.shutdown.cancel();
}

/// A client as the daemon's (main installs ring as rustls' provider).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The link's way in: a command reaching an idle worker is accepted and
/// begun in one commit, so by the time the link may ack it the send is
/// already `dispatching` (never a durable `queued` in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_an_idle_worker_is_dispatching_as_soon_as_it_may_be_acked() {
    let d = Daemon::new(SendSettings::default());
    d.control(&Control::default());
    let admission = d.start_admitting();
    admission.until_idle().await;
    let accepted = admission
        .accept(1, Some(cmd("ghl:now", ANN, "On my way")))
        .await
        .expect("accept");
    assert_eq!(accepted, Accepted::Queued);
    let phase = d
        .store
        .send_record("ghl:now")
        .expect("read")
        .expect("kept")
        .phase;
    assert_ne!(
        phase,
        SendPhase::Queued,
        "acceptance and dispatching are one commit"
    );
    assert_eq!(d.result("ghl:now").await.state, SendState::Sent);
    assert_eq!(d.calls(), 1);
    assert_eq!(d.send_results_in_outbox().len(), 1);
    // The service sends it again (its ack was lost): answered from the
    // store, never dispatched again.
    admission.until_idle().await;
    d.store.ack_events(u64::MAX / 2).expect("ack");
    d.store.adopt_commands_epoch("E2").expect("epoch");
    let again = admission
        .accept(7, Some(cmd("ghl:now", ANN, "On my way")))
        .await
        .expect("accept");
    assert_eq!(again, Accepted::Duplicate);
    assert_eq!(
        d.send_results_in_outbox().len(),
        1,
        "the stored result again"
    );
    assert_eq!(d.calls(), 1);
    // A seq already processed is a duplicate, written nowhere.
    admission.until_idle().await;
    let old = admission
        .accept(7, Some(cmd("ghl:other", ANN, "x")))
        .await
        .expect("accept");
    assert_eq!(old, Accepted::Duplicate);
    assert!(d.store.send_record("ghl:other").expect("read").is_none());
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_arriving_while_a_send_is_in_flight_is_queued_behind_it() {
    let d = Daemon::new(SendSettings::default());
    // A slow Messages keeps the first send in flight.
    d.control(&Control {
        hang: true,
        ..Control::default()
    });
    let admission = d.start_admitting();
    admission.until_idle().await;
    admission
        .accept(1, Some(cmd("first", ANN, "one")))
        .await
        .expect("accept");
    let second = admission
        .accept(2, Some(cmd("second", ANN, "two")))
        .await
        .expect("accept");
    assert_eq!(
        second,
        Accepted::Queued,
        "accepted without waiting for the first"
    );
    let phase = d
        .store
        .send_record("second")
        .expect("read")
        .expect("kept")
        .phase;
    assert_eq!(phase, SendPhase::Queued, "it waits its turn");
    d.control(&Control::default());
    assert_eq!(d.result("first").await.state, SendState::Sent);
    assert_eq!(d.result("second").await.state, SendState::Sent);
    let order: Vec<String> = std::fs::read_to_string(d.dir.path().join("osascript.jsonl"))
        .expect("log")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["args"][0].as_str().expect("text").to_owned()
        })
        .collect();
    assert_eq!(order, vec!["one", "two"], "in order, once each");
    d.shutdown.cancel();
}
