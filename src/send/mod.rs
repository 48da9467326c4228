//! Sending through Messages.app: the send state machine.
//!
//! A `cmd.send` arrives already recorded as `queued` in the store (a manual
//! `whatsnap-mac send` records its own). The worker takes sends one at a time,
//! in order: it expires sends past their deadline, waits while the hourly
//! limits that protect the Apple ID are used up, picks the target (an existing
//! chat by its exact GUID, else the person through the iMessage or SMS
//! account), snapshots chat.db's `MAX(ROWID)`, commits `dispatching`, runs the
//! constant script, and then confirms the send by the from-me row Messages
//! writes. Exit status 0 is not proof; only the row is.
//!
//! A send is made of parts (the text, then each file, staged first under
//! `~/Library/Messages/Attachments/whatsnap/<uuid>/`), and a part may have a
//! second attempt: through the person's participant when Messages does not
//! know the chat GUID (-1728, nothing was sent), or through SMS after a
//! definite iMessage failure when the SMS setting allows. Every attempt is
//! committed before it runs, with the snapshot it is confirmed against, so a
//! daemon killed at any instant restarts by correlating that attempt only. A
//! send that cannot be confirmed is `unknown` and is never dispatched again.
//!
//! A `cmd.send` reaching an idle worker through the link's [`Admission`] is
//! accepted and begun in one commit when it can leave at once (text only,
//! nothing ahead of it, within every limit): one fsync before osascript
//! instead of two, with the same guarantees ([`Store::accept_dispatching`]
//! says why). Anything else is queued and taken by the loop as before.
//!
//! Files the service hosts are all downloaded and checked (size, SHA-256)
//! before the first part is dispatched ([`download`]): a file that fails its
//! check makes the send `rejected` with nothing sent.
//!
//! Test only: `WHATSNAP_SEND_CRASH_AT=<step>[:N]` ([`CRASH_AT_ENV`]) makes the
//! process SIGKILL itself at a step of the state machine ([`CrashPoint`]), so
//! tests can kill the daemon and `whatsnap-mac send` exactly there. It is
//! read once when the worker is built and must never be set in production.

pub mod confirm;
pub mod download;
pub mod record;
pub mod runner;
pub mod scripts;
pub mod settings;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use whatsnap_proto::frame::{CmdSend, ErrorInfo, SendResult, SendState, ServicePref};

use crate::chatdb::SharedChatDb;
use crate::store::{Accepted, SendPhase, SendRecord, Store, StoreError};
use confirm::{ConfirmDb, Scope, SentRow};
use record::{Admitted, Attempt, DispatchCounts, SendProgress, SendSource};
use runner::{RunOutcome, Runner};
use scripts::{Dialect, MacosVersion, Payload, Service};
pub use settings::{MacosProbe, SendSettings, SmsMode};

/// How long to look for the from-me row after Messages accepted a send.
pub const CONFIRM_WINDOW: Duration = Duration::from_secs(10);

/// How long a send found in `dispatching` after a restart may still be
/// confirmed, counted from its dispatch.
pub const RESTART_CONFIRM_WINDOW: Duration = Duration::from_secs(60);

/// The longest text a send may carry (protocol §7.9).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The pacing window.
const HOUR_MS: i64 = 3_600_000;

/// Names a step at which the process kills itself with SIGKILL, so tests can
/// crash the sender at every step of the state machine: [`CrashPoint::name`],
/// optionally `:N` for the N-th time the step is reached (default 1). Never
/// set outside tests.
pub const CRASH_AT_ENV: &str = "WHATSNAP_SEND_CRASH_AT";

/// The send worker as the daemon builds it (see [`Sender::with_settings`]).
#[derive(Debug, Clone)]
pub struct Sender {
    /// The daemon's store.
    pub store: Store,
    /// chat.db (its path is what the sender uses).
    pub chat_db: SharedChatDb,
    /// osascript.
    pub runner: Runner,
    /// Woken when a send is queued.
    pub wake: Arc<Notify>,
    /// Ticks whenever chat.db may have changed.
    pub db_changed: watch::Receiver<u64>,
    /// Woken when a `send.result` is in the outbox.
    pub outbox: Arc<Notify>,
}

impl Sender {
    /// The worker, following `settings` as they change.
    pub fn with_settings(self, settings: watch::Receiver<SendSettings>) -> SendWorker {
        SendWorker {
            confirm: ConfirmDb::new(self.chat_db.path().to_path_buf()),
            store: self.store,
            runner: self.runner,
            wake: self.wake,
            db_changed: self.db_changed,
            outbox: self.outbox,
            settings,
            source: SendSource::Service,
            only: None,
            probe: MacosProbe::default(),
            version: None,
            crash_at: CrashPoint::from_env(),
            crash_seen: 0,
            clock: Clock::new(),
            timings: None,
            downloads: None,
            pause_home: None,
            last_prune: None,
            offers: Offers::default(),
        }
    }

    /// Works with the default settings until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let runner_timeout = self.runner.timeout();
        let (_keep, rx) = watch::channel(SendSettings {
            osascript_timeout: runner_timeout,
            ..SendSettings::default()
        });
        self.with_settings(rx).run(shutdown).await;
    }
}

/// A step of the state machine, for crash tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// A queued send was taken, or a command handed over by the link is
    /// about to be accepted and begun at once; nothing committed for it yet.
    Taken,
    /// `dispatching` committed; osascript not started.
    Dispatching,
    /// osascript returned; the row not looked for yet.
    Dispatched,
    /// The outcome is known; not stored yet.
    Judged,
    /// The result is stored (and queued for the service).
    Finished,
}

impl CrashPoint {
    /// Every step, in order.
    pub const ALL: [CrashPoint; 5] = [
        CrashPoint::Taken,
        CrashPoint::Dispatching,
        CrashPoint::Dispatched,
        CrashPoint::Judged,
        CrashPoint::Finished,
    ];

    /// The value of [`CRASH_AT_ENV`] for this step.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::Taken => "taken",
            CrashPoint::Dispatching => "dispatching",
            CrashPoint::Dispatched => "dispatched",
            CrashPoint::Judged => "judged",
            CrashPoint::Finished => "finished",
        }
    }

    fn from_env() -> Option<(CrashPoint, u32)> {
        let v = std::env::var(CRASH_AT_ENV).ok()?;
        let (name, nth) = match v.split_once(':') {
            Some((name, n)) => (name.to_owned(), n.parse().ok()?),
            None => (v, 1),
        };
        let point = CrashPoint::ALL.into_iter().find(|p| p.name() == name)?;
        Some((point, nth))
    }
}

/// Wall-clock milliseconds that follow tokio's clock, so pacing and deadlines
/// can be tested on a paused clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall0: i64,
    t0: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            wall0: jiff::Timestamp::now().as_millisecond(),
            t0: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        self.wall0 + i64::try_from(self.t0.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// When one send passed the points the benchmark measures.
#[derive(Debug, Clone)]
pub struct SendTiming {
    /// The send.
    pub client_msg_id: String,
    /// Just before osascript was spawned (first attempt).
    pub spawned: Instant,
    /// osascript exited (last attempt).
    pub exited: Instant,
    /// The result was committed to the store (and the outbox).
    pub finished: Instant,
}

/// The send worker.
#[derive(Debug)]
pub struct SendWorker {
    store: Store,
    confirm: ConfirmDb,
    runner: Runner,
    wake: Arc<Notify>,
    db_changed: watch::Receiver<u64>,
    outbox: Arc<Notify>,
    settings: watch::Receiver<SendSettings>,
    source: SendSource,
    only: Option<String>,
    probe: MacosProbe,
    version: Option<Option<MacosVersion>>,
    crash_at: Option<(CrashPoint, u32)>,
    crash_seen: u32,
    clock: Clock,
    timings: Option<mpsc::UnboundedSender<SendTiming>>,
    downloads: Option<download::Downloads>,
    /// The state folder whose `sending-paused` marker holds new sends
    /// (`whatsnap-mac status --pause`).
    pause_home: Option<std::path::PathBuf>,
    /// When staged copies were last pruned.
    last_prune: Option<Instant>,
    /// Where the link hands commands to this worker while it is idle.
    offers: Offers,
}

/// How a send reaches Messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// An existing chat by GUID; `direct` names the person of a one-to-one chat.
    Chat {
        guid: String,
        direct: Option<String>,
    },
    /// A person with no chat yet.
    Handle { handle: String },
}

impl Route {
    fn direct_handle(&self) -> Option<&str> {
        match self {
            Route::Chat { direct, .. } => direct.as_deref(),
            Route::Handle { handle } => Some(handle),
        }
    }
}

/// One osascript call to make.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Via {
    Chat(String),
    Handle(String, Service),
}

impl Via {
    fn encode(&self) -> (String, Option<String>) {
        match self {
            Via::Chat(_) => ("chat".into(), None),
            Via::Handle(_, s) => ("handle".into(), Some(s.as_str().into())),
        }
    }
}

/// One part of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A local file (manual sends, `file://`).
    File(PathBuf),
    /// A file the service hosts, fetched and checked before the send's first
    /// dispatch (then [`Part::Staged`]); fetched at its own dispatch only when
    /// a restarted daemon resumes a send past its first part.
    Remote {
        url: String,
        name: PathBuf,
        size: u64,
        sha256: String,
    },
    /// A file already downloaded and checked into the staging folder.
    Staged(PathBuf),
}

impl Part {
    fn payload(&self) -> Payload {
        match self {
            Part::Text(_) => Payload::Text,
            Part::File(_) | Part::Remote { .. } | Part::Staged(_) => Payload::File,
        }
    }
}

/// How one attempt ended.
#[derive(Debug)]
enum AttemptEnd {
    Sent {
        guids: Vec<String>,
        service: Option<String>,
    },
    /// Definitely not sent: a script error before dispatch or the row's
    /// `error` set. May be retried another way.
    Failed {
        guids: Vec<String>,
        service: Option<String>,
        code: String,
        message: String,
        /// Messages does not know the chat GUID or the person (-1728):
        /// nothing was sent.
        no_such_chat: bool,
        /// The failure is iMessage's own (the row's `error`, an unknown
        /// participant), so SMS may carry it; not so for e.g. -1743.
        service_failure: bool,
    },
    /// May have been sent: never retried.
    Unknown { guids: Vec<String>, message: String },
}

impl SendWorker {
    /// A worker for the manual `whatsnap-mac send` of `client_msg_id` only.
    #[must_use]
    pub fn for_cli(mut self, client_msg_id: &str) -> SendWorker {
        self.source = SendSource::Cli;
        self.only = Some(client_msg_id.to_owned());
        self
    }

    /// Takes the macOS version from `probe` instead of the environment.
    #[must_use]
    pub fn with_probe(mut self, probe: MacosProbe) -> SendWorker {
        self.probe = probe;
        self
    }

    /// Fetches the service's attachment links with the device token.
    #[must_use]
    pub fn with_downloads(mut self, downloads: download::Downloads) -> SendWorker {
        self.downloads = Some(downloads);
        self
    }

    /// Holds new sends while the user has paused sending (a marker file in
    /// the state folder `home`); sends already dispatched still finish.
    #[must_use]
    pub fn with_pause_marker(mut self, home: std::path::PathBuf) -> SendWorker {
        self.pause_home = Some(home);
        self
    }

    /// The handle the link accepts `cmd.send` commands through, so that a
    /// send that can leave at once is accepted and begun in one commit.
    pub fn admission(&self) -> Admission {
        Admission {
            store: self.store.clone(),
            wake: self.wake.clone(),
            offers: self.offers.clone(),
        }
    }

    /// Reports when each send passed the measured points (benchmark).
    #[must_use]
    pub fn with_timings(mut self, tx: mpsc::UnboundedSender<SendTiming>) -> SendWorker {
        self.timings = Some(tx);
        self
    }

    fn crash(&mut self, at: CrashPoint) {
        let Some((point, nth)) = self.crash_at else {
            return;
        };
        if point != at {
            return;
        }
        self.crash_seen += 1;
        if self.crash_seen != nth {
            return;
        }
        tracing::error!("{CRASH_AT_ENV}={}: killing this process", at.name());
        // A real SIGKILL: no destructor, flush or rollback runs, exactly as
        // when launchd or the user kills the daemon.
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(std::process::id().to_string())
            .status();
        std::process::abort();
    }

    /// Works until `shutdown`: first finishes sends left in `dispatching` by a
    /// previous run (only correlating them), then takes queued sends in order.
    /// A CLI worker returns after its one send; the result is also stored.
    pub async fn run(mut self, shutdown: CancellationToken) -> Option<SendResult> {
        loop {
            if self.only.is_none()
                && self
                    .last_prune
                    .is_none_or(|at| at.elapsed() > Duration::from_secs(3600))
            {
                self.last_prune = Some(Instant::now());
                let chat_db = self.confirm.path().to_path_buf();
                let pruned = crate::blocking(move || {
                    prune_staged(&chat_db, STAGED_FILE_LIFETIME, std::time::SystemTime::now())
                })
                .await;
                match pruned {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("removed {n} staged attachment copies older than 24 h"),
                    Err(e) => tracing::warn!("cannot prune staged attachment copies: {e}"),
                }
            }
            let settings = self.settings.borrow().clone();
            let now = self.clock.now_ms();
            if let Err(e) = self.expire_overdue(now).await {
                tracing::error!("cannot expire overdue sends: {e}");
            }
            let next = {
                let store = self.store.clone();
                let only = self.only.clone();
                let source = self.source;
                crate::blocking(move || store.next_pending_send(source, only.as_deref())).await
            };
            let send = match next {
                Ok(Some(send))
                    if send.phase == SendPhase::Queued
                        && self
                            .pause_home
                            .as_deref()
                            .is_some_and(crate::control::sending_paused) =>
                {
                    // Paused: look again when woken or every few seconds,
                    // the marker is a file the control socket writes.
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = self.wake.notified() => continue,
                        () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
                Ok(Some(send)) => send,
                Ok(None) => {
                    if let Some(only) = &self.only {
                        // Finished (now or before): report what is stored.
                        let store = self.store.clone();
                        let id = only.clone();
                        return crate::blocking(move || store.send_record(&id))
                            .await
                            .ok()
                            .flatten()
                            .and_then(|r| r.result);
                    }
                    // Idle: offer to take the next command straight from
                    // the link (see [`Admission`]); withdrawn when woken
                    // otherwise, under the same lock the link takes it with.
                    let (offer, admitted) = oneshot::channel();
                    *lock_slot(&self.offers.slot) = Some(offer);
                    self.offers.made.notify_waiters();
                    let admit = tokio::select! {
                        () = shutdown.cancelled() => None,
                        () = self.wake.notified() => None,
                        admit = admitted => admit.ok(),
                    };
                    lock_slot(&self.offers.slot).take();
                    if shutdown.is_cancelled() {
                        return None;
                    }
                    if let Some(admit) = admit
                        && let Some(done) = self.admit(admit, &settings).await
                    {
                        self.conclude(done).await;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!("cannot read pending sends: {e}");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    }
                }
            };
            let result = tokio::select! {
                () = shutdown.cancelled() => return None,
                r = self.process(send, &settings) => r,
            };
            let Some(done) = result else {
                // Held back by the hourly limits; waited, now look again.
                continue;
            };
            let result = self.conclude(done).await;
            if self.only.is_some() {
                return Some(result);
            }
        }
    }

    /// Stores a send's end (and queues its `send.result`).
    async fn conclude(
        &mut self,
        (result, timing): (SendResult, Option<(Instant, Instant)>),
    ) -> SendResult {
        self.crash(CrashPoint::Judged);
        tracing::info!(
            client_msg_id = %result.client_msg_id,
            state = ?result.state,
            guids = ?result.guids,
            service = ?result.service,
            "send finished"
        );
        let store = self.store.clone();
        let stored = result.clone();
        match crate::blocking(move || store.finish_send(&stored)).await {
            Ok(()) => {
                self.outbox.notify_one();
                self.crash(CrashPoint::Finished);
                if let (Some(tx), Some((spawned, exited))) = (&self.timings, timing) {
                    let _ = tx.send(SendTiming {
                        client_msg_id: result.client_msg_id.clone(),
                        spawned,
                        exited,
                        finished: Instant::now(),
                    });
                }
            }
            Err(e) => tracing::error!("cannot record a send result: {e}"),
        }
        result
    }

    /// A command handed over by the link while the worker was idle: when it
    /// can leave at once (text only, nothing ahead of it, within every
    /// limit), accepts it and begins its first attempt in one commit
    /// ([`Store::accept_dispatching`], which says why that is safe), answers
    /// the link, and sends it; otherwise accepts it the ordinary way (queued)
    /// and lets the loop take it. Returns the end of a send it ran.
    async fn admit(
        &mut self,
        admit: Admit,
        settings: &SendSettings,
    ) -> Option<(SendResult, Option<(Instant, Instant)>)> {
        let Admit { seq, cmd, reply } = admit;
        let plan = self.plan_at_once(&cmd, settings).await;
        let began = match &plan {
            Some(plan) => {
                // Nothing is durable yet: a crash here loses the command
                // unacked, and the service sends it again.
                self.crash(CrashPoint::Taken);
                let store = self.store.clone();
                let c = cmd.clone();
                let (route, progress, before) =
                    (plan.route.clone(), plan.progress.clone(), plan.before);
                let now = self.clock.now_ms();
                crate::blocking(move || {
                    let (chat, handle) = route_columns(&route);
                    store.accept_dispatching(
                        seq,
                        &c,
                        &Attempt {
                            max_rowid_before: before,
                            target_chat: chat.as_deref(),
                            target_handle: handle.as_deref(),
                            new_handle: matches!(route, Route::Handle { .. }),
                            progress: &progress,
                        },
                        now,
                    )
                })
                .await
            }
            None => Ok(Admitted::Wait),
        };
        let dispatch_now = matches!(began, Ok(Admitted::Began));
        let answer = match began {
            Ok(Admitted::Began) => Ok(crate::store::Accepted::Queued),
            Ok(Admitted::Refused(refusal)) => Ok(refusal),
            Ok(Admitted::Wait) => {
                let store = self.store.clone();
                let c = cmd.clone();
                crate::blocking(move || store.accept_command(seq, Some(&c))).await
            }
            Err(e) => Err(e),
        };
        // The link acks on this answer: only ever after the commit above.
        let _ = reply.send(answer);
        let plan = plan.filter(|_| dispatch_now)?;
        tracing::debug!(client_msg_id = %cmd.client_msg_id, "accepted and dispatching at once (one commit)");
        let parts = vec![Part::Text(cmd.text.clone())];
        Some(
            self.run_parts(
                &cmd,
                &plan.route,
                plan.dialect,
                &parts,
                plan.mode,
                plan.progress,
                None,
                Some((plan.via, plan.before)),
                settings,
            )
            .await,
        )
    }

    /// Everything the worker would check and pick before `dispatching`, for
    /// a command that may leave at once; `None` when it may not (files to
    /// fetch or copy, a refusal to report, a limit, a pause, a deadline):
    /// then the ordinary path handles it.
    async fn plan_at_once(&mut self, cmd: &CmdSend, settings: &SendSettings) -> Option<AtOnce> {
        if !cmd.attachments.is_empty()
            || check_command(cmd).is_some()
            || cmd
                .expires_at_ms
                .is_some_and(|at| at <= self.clock.now_ms())
            || self
                .pause_home
                .as_deref()
                .is_some_and(crate::control::sending_paused)
        {
            return None;
        }
        let route = self.route(cmd).await.ok()?;
        let new_handle = matches!(route, Route::Handle { .. });
        if self.pacing_wait(settings, new_handle).await.is_some() {
            return None;
        }
        let (dialect, _tahoe) = self.dialect().await?;
        let mode = sms_mode(cmd, settings);
        let via = first_via(&route, mode);
        let (via_name, service) = via.encode();
        let progress = SendProgress {
            via: Some(via_name),
            service,
            ..SendProgress::default()
        };
        // The snapshot the attempt is confirmed against, taken before the
        // commit that precedes the spawn, as on the ordinary path.
        let before = self.confirm.max_rowid().await.ok()?;
        Some(AtOnce {
            route,
            dialect,
            mode,
            via,
            progress,
            before,
        })
    }

    async fn expire_overdue(&self, now: i64) -> Result<(), crate::store::StoreError> {
        let store = self.store.clone();
        let source = self.source;
        let overdue = crate::blocking(move || store.overdue_sends(source, now)).await?;
        for cmd in overdue {
            if self.only.as_deref().is_some_and(|o| o != cmd.client_msg_id) {
                continue;
            }
            let result = finished(
                &cmd,
                SendState::Expired,
                Some((
                    "expired",
                    "the send waited past its deadline (expires_at_ms) and was not dispatched",
                )),
            );
            let store = self.store.clone();
            crate::blocking(move || store.finish_send(&result)).await?;
            self.outbox.notify_one();
        }
        Ok(())
    }

    async fn dialect(&mut self) -> Option<(Dialect, bool)> {
        if self.version.is_none() {
            let probed = match self.probe.probe().await {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(
                        "cannot tell the macOS version ({e}); using the scripts for macOS 13 and later"
                    );
                    None
                }
            };
            self.version = Some(probed);
        }
        match self.version.flatten() {
            Some(v) => v.dialect().map(|d| (d, v.is_tahoe_or_later())),
            None => Some((Dialect::Ventura, false)),
        }
    }

    /// Runs one send to its end. `None` when it must wait for the hourly
    /// limits (the wait has been done; the caller looks again).
    async fn process(
        &mut self,
        send: SendRecord,
        settings: &SendSettings,
    ) -> Option<(SendResult, Option<(Instant, Instant)>)> {
        let cmd = send.cmd.clone();
        if send.phase == SendPhase::Queued {
            self.crash(CrashPoint::Taken);
            if let Some(reject) = check_command(&cmd) {
                return Some((reject, None));
            }
        }
        let route = match self.route(&cmd).await {
            Ok(route) => route,
            // A send already handed to Messages may have gone out: whatever
            // stops us from looking, its answer is unknown, never failed.
            Err(result) if send.phase == SendPhase::Dispatching => {
                let why = result.error.map(|e| e.message).unwrap_or_default();
                return Some((
                    unknown(
                        &cmd,
                        &format!(
                            "this send was in flight when the daemon stopped, and chat.db cannot be checked now ({why}); check the phone before retrying"
                        ),
                    ),
                    None,
                ));
            }
            Err(result) => return Some((result, None)),
        };
        if send.phase == SendPhase::Queued {
            let new_handle = matches!(route, Route::Handle { .. });
            if let Some(wait) = self.pacing_wait(settings, new_handle).await {
                self.wait_for_pacing(&cmd, wait).await;
                return None;
            }
        }
        let Some((dialect, _tahoe)) = self.dialect().await else {
            let v = self
                .version
                .flatten()
                .map(|v| v.to_string())
                .unwrap_or_default();
            return Some((
                finished(
                    &cmd,
                    SendState::Rejected,
                    Some((
                        "unsupported_macos",
                        &format!(
                            "macOS {v} cannot send to a person through AppleScript; whatsnap-mac needs macOS 11 Big Sur or later"
                        ),
                    )),
                ),
                None,
            ));
        };
        let mut parts = match self.parts(&cmd) {
            Ok(parts) => parts,
            Err(message) => {
                return Some((
                    finished(
                        &cmd,
                        SendState::Rejected,
                        Some(("bad_attachment", &message)),
                    ),
                    None,
                ));
            }
        };
        if send.phase == SendPhase::Queued
            && let Err(refused) = self.prefetch(&cmd, &mut parts).await
        {
            return Some((refused, None));
        }
        let mode = sms_mode(&cmd, settings);
        let progress = send.progress.clone();
        // A send left in `dispatching` by a previous run: correlate the
        // attempt in flight, never dispatch it again.
        let resumed = if send.phase == SendPhase::Dispatching {
            let elapsed = self.clock.now_ms() - send.dispatched_ms.unwrap_or(0);
            let left = settings
                .restart_confirm_window
                .saturating_sub(Duration::from_millis(u64::try_from(elapsed).unwrap_or(0)));
            let part = parts.get(progress.part).cloned();
            let scope = scope_of(&route, progress.via.as_deref(), progress.service.as_deref());
            let end = match part {
                Some(part) => {
                    self.confirm_part(
                        &part,
                        &scope,
                        send.max_rowid_before.unwrap_or(0),
                        left,
                        true,
                    )
                    .await
                }
                None => AttemptEnd::Sent {
                    guids: Vec::new(),
                    service: None,
                },
            };
            Some(match end {
                AttemptEnd::Unknown { guids, .. } => AttemptEnd::Unknown {
                    guids,
                    message: "the daemon restarted while this send was in flight and Messages shows no matching row; check the phone before retrying".into(),
                },
                other => other,
            })
        } else {
            None
        };
        Some(
            self.run_parts(
                &cmd, &route, dialect, &parts, mode, progress, resumed, None, settings,
            )
            .await,
        )
    }

    /// Sends `parts` in order from `progress.part`, each confirmed before the
    /// next. `resumed` is the end of an attempt a previous run left in
    /// flight (correlated, never dispatched again); `begun` an attempt
    /// already committed as `dispatching` with its snapshot, to be
    /// dispatched now (see [`SendWorker::admit`]).
    #[allow(clippy::too_many_arguments)]
    async fn run_parts(
        &mut self,
        cmd: &CmdSend,
        route: &Route,
        dialect: Dialect,
        parts: &[Part],
        mode: SmsMode,
        mut progress: SendProgress,
        mut resumed: Option<AttemptEnd>,
        mut begun: Option<(Via, i64)>,
        settings: &SendSettings,
    ) -> (SendResult, Option<(Instant, Instant)>) {
        let mut timing: Option<(Instant, Instant)> = None;
        while progress.part < parts.len() {
            let part = parts[progress.part].clone();
            let payload = part.payload();
            // The first attempt of this part, unless resuming one.
            let mut first_begun = begun.take();
            let mut via = match (&resumed, progress.via.as_deref()) {
                _ if let Some((via, _)) = &first_begun => via.clone(),
                (Some(_), Some("handle")) => Via::Handle(
                    route.direct_handle().unwrap_or_default().to_owned(),
                    progress
                        .service
                        .as_deref()
                        .and_then(Service::parse)
                        .unwrap_or(Service::IMessage),
                ),
                (Some(_), _) => match route {
                    Route::Chat { guid, .. } => Via::Chat(guid.clone()),
                    Route::Handle { handle } => Via::Handle(handle.clone(), Service::IMessage),
                },
                (None, _) => first_via(route, mode),
            };
            let mut tried_participant = matches!(via, Via::Handle(..));
            let end = loop {
                let end = match resumed.take() {
                    Some(end) => end,
                    None => {
                        let (end, times) = self
                            .attempt(
                                cmd,
                                route,
                                &part,
                                payload,
                                &via,
                                dialect,
                                &mut progress,
                                first_begun.take().map(|(_, before)| before),
                                settings,
                            )
                            .await;
                        if let Some((s, e)) = times {
                            timing = Some((timing.map_or(s, |t| t.0), e));
                        }
                        end
                    }
                };
                // A second attempt only where the first definitely sent nothing.
                let AttemptEnd::Failed {
                    guids,
                    service,
                    no_such_chat,
                    service_failure,
                    ..
                } = &end
                else {
                    break end;
                };
                let Some(handle) = route.direct_handle() else {
                    break end;
                };
                if *no_such_chat && !tried_participant && matches!(via, Via::Chat(_)) {
                    // The chat is in chat.db but not in Messages' live list
                    // (-1728): nothing was sent; reach the person instead.
                    tried_participant = true;
                    let service = if mode == SmsMode::SmsOnly {
                        Service::Sms
                    } else {
                        Service::IMessage
                    };
                    tracing::info!(client_msg_id = %cmd.client_msg_id, "Messages does not know the chat; sending to the person");
                    via = Via::Handle(handle.to_owned(), service);
                    continue;
                }
                let failed_service = service.clone().or_else(|| match &via {
                    Via::Handle(_, s) => Some(s.as_str().to_owned()),
                    Via::Chat(_) => None,
                });
                if mode == SmsMode::SmsFallback
                    && *service_failure
                    && !progress.fell_back
                    && failed_service.as_deref() != Some(Service::Sms.as_str())
                {
                    tracing::info!(client_msg_id = %cmd.client_msg_id, "iMessage failed for certain; falling back to SMS");
                    progress.fell_back = true;
                    progress.fallbacks += 1;
                    progress.guids.extend(guids.iter().cloned());
                    via = Via::Handle(handle.to_owned(), Service::Sms);
                    continue;
                }
                break end;
            };
            match end {
                AttemptEnd::Sent { guids, service } => {
                    progress.guids.extend(guids);
                    if service.is_some() {
                        progress.carrier = service;
                    }
                    progress.part += 1;
                    progress.fell_back = false;
                    progress.via = None;
                    progress.service = None;
                    if progress.part < parts.len() {
                        let store = self.store.clone();
                        let id = cmd.client_msg_id.clone();
                        let p = progress.clone();
                        if let Err(e) =
                            crate::blocking(move || store.record_progress(&id, &p)).await
                        {
                            tracing::error!("cannot record send progress: {e}");
                        }
                        if parts[progress.part].payload() == Payload::File {
                            tokio::time::sleep(settings.file_gap).await;
                        }
                    }
                }
                AttemptEnd::Failed {
                    guids,
                    service,
                    code,
                    message,
                    ..
                } => {
                    progress.guids.extend(guids);
                    let mut r = finished(cmd, SendState::Failed, Some((&code, &message)));
                    r.guids = progress.guids;
                    r.service = service.or(progress.carrier);
                    return (r, timing);
                }
                AttemptEnd::Unknown { guids, message } => {
                    progress.guids.extend(guids);
                    let mut r = unknown(cmd, &message);
                    r.guids = progress.guids;
                    r.service = progress.carrier;
                    return (r, timing);
                }
            }
        }
        (
            SendResult {
                client_msg_id: cmd.client_msg_id.clone(),
                state: SendState::Sent,
                guids: progress.guids,
                service: progress.carrier,
                error: None,
            },
            timing,
        )
    }

    /// Dispatches one attempt and confirms it.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &mut self,
        cmd: &CmdSend,
        route: &Route,
        part: &Part,
        payload: Payload,
        via: &Via,
        dialect: Dialect,
        progress: &mut SendProgress,
        begun: Option<i64>,
        settings: &SendSettings,
    ) -> (AttemptEnd, Option<(Instant, Instant)>) {
        let data = match part {
            Part::Text(t) => t.clone(),
            Part::File(source) => match stage(self.confirm.path(), source).await {
                Ok(staged) => staged.to_string_lossy().into_owned(),
                Err(message) => return (staging_failed(message), None),
            },
            Part::Staged(path) => path.to_string_lossy().into_owned(),
            Part::Remote { .. } => match self.fetch_remote(part).await {
                Ok(staged) => staged.to_string_lossy().into_owned(),
                // A later file of a resumed send: earlier parts may have gone
                // out, so this is `failed` (with their GUIDs), not `rejected`.
                Err(e) => {
                    return (
                        AttemptEnd::Failed {
                            guids: Vec::new(),
                            service: None,
                            code: "bad_attachment".into(),
                            message: e.to_string(),
                            no_such_chat: false,
                            service_failure: false,
                        },
                        None,
                    );
                }
            },
        };
        let (script, target) = match via {
            Via::Chat(guid) => (scripts::to_chat(payload), guid.clone()),
            Via::Handle(handle, service) => (
                scripts::to_handle(*service, payload, dialect),
                handle.clone(),
            ),
        };
        let (via_name, service) = via.encode();
        progress.via = Some(via_name.clone());
        progress.service = service.clone();
        let scope = scope_of(route, Some(&via_name), service.as_deref());
        let before = match begun {
            // Already committed as `dispatching`, with its snapshot.
            Some(before) => before,
            None => match self.begin(cmd, route, progress).await {
                Ok(before) => before,
                Err(end) => return (end, None),
            },
        };
        self.crash(CrashPoint::Dispatching);
        tracing::info!(client_msg_id = %cmd.client_msg_id, script = script.name, "dispatching to Messages");
        let spawned = Instant::now();
        let outcome = self
            .runner
            .run_within(script, &[&data, &target], settings.osascript_timeout)
            .await;
        let exited = Instant::now();
        self.crash(CrashPoint::Dispatched);
        let window = match payload {
            Payload::Text => settings.confirm_window,
            Payload::File => settings.file_confirm_window,
        };
        let end = match outcome {
            RunOutcome::Accepted => {
                let matched = Part::File(PathBuf::from(&data));
                let part = if payload == Payload::File {
                    &matched
                } else {
                    part
                };
                self.confirm_part(part, &scope, before, window, false).await
            }
            RunOutcome::MayHaveCompleted(why) => {
                tracing::warn!("send may have completed: {why}");
                let matched = Part::File(PathBuf::from(&data));
                let part = if payload == Payload::File {
                    &matched
                } else {
                    part
                };
                match self.confirm_part(part, &scope, before, window, true).await {
                    AttemptEnd::Unknown { guids, .. } => AttemptEnd::Unknown {
                        guids,
                        message: format!(
                            "{why}; the message may have been sent: check the phone before retrying"
                        ),
                    },
                    other => other,
                }
            }
            RunOutcome::NotStarted(err) => {
                let message = err.explain(self.runner.program());
                if err.is_automation_denied() {
                    tracing::error!("{message}");
                }
                AttemptEnd::Failed {
                    guids: Vec::new(),
                    service: None,
                    code: err.code_name(),
                    message,
                    no_such_chat: err.is_no_such_target(),
                    service_failure: err.is_no_such_target(),
                }
            }
        };
        (end, Some((spawned, exited)))
    }

    /// Snapshots chat.db's `MAX(ROWID)` and commits the attempt as
    /// `dispatching` with it, before anything reaches Messages. Returns the
    /// snapshot, or how the attempt ends when it must not run.
    async fn begin(
        &self,
        cmd: &CmdSend,
        route: &Route,
        progress: &SendProgress,
    ) -> Result<i64, AttemptEnd> {
        let not_begun = |code: &str, message: String| AttemptEnd::Failed {
            guids: Vec::new(),
            service: None,
            code: code.into(),
            message,
            no_such_chat: false,
            service_failure: false,
        };
        let before = self
            .confirm
            .max_rowid()
            .await
            .map_err(|e| not_begun("chatdb", e.to_string()))?;
        let store = self.store.clone();
        let id = cmd.client_msg_id.clone();
        let (chat, handle) = route_columns(route);
        let new_handle = matches!(route, Route::Handle { .. });
        let p = progress.clone();
        let now = self.clock.now_ms();
        let began = crate::blocking(move || {
            store.begin_attempt(
                &id,
                &Attempt {
                    max_rowid_before: before,
                    target_chat: chat.as_deref(),
                    target_handle: handle.as_deref(),
                    new_handle,
                    progress: &p,
                },
                now,
            )
        })
        .await;
        match began {
            Ok(true) => Ok(before),
            Ok(false) => Err(AttemptEnd::Unknown {
                guids: Vec::new(),
                message: "another worker holds or finished this send; it was not dispatched again"
                    .into(),
            }),
            Err(e) => Err(not_begun("store", e.to_string())),
        }
    }

    /// Waits up to `window` for the from-me row(s) of `part` after ROWID
    /// `before`, re-checking whenever chat.db changes. `uncertain` is set
    /// when osascript did not say it accepted (timeout, restart): then a
    /// ghost row is no proof of failure on its own.
    async fn confirm_part(
        &mut self,
        part: &Part,
        scope: &Scope,
        before: i64,
        window: Duration,
        uncertain: bool,
    ) -> AttemptEnd {
        let deadline = Instant::now() + window;
        let mut pending: Vec<String> = Vec::new();
        loop {
            match self.confirm.from_me_after(before, scope).await {
                Ok(rows) => {
                    let mine: Vec<&SentRow> = rows
                        .iter()
                        .filter(|r| r.chat_guid.is_some() && part_matches(part, r))
                        .collect();
                    if let Some(end) = judge(&mine) {
                        return end;
                    }
                    pending = mine.iter().map(|r| r.guid.clone()).collect();
                    if mine.is_empty()
                        && !uncertain
                        && let Some(ghost) = rows.iter().find(|r| r.is_ghost())
                    {
                        return AttemptEnd::Failed {
                            guids: vec![ghost.guid.clone()],
                            service: ghost.service.clone(),
                            code: "ghost_row".into(),
                            message: "Messages accepted the send but wrote an empty row joined to no chat (the macOS 26 group-send bug); nothing was sent".into(),
                            no_such_chat: false,
                            service_failure: false,
                        };
                    }
                }
                Err(e) => tracing::warn!("cannot check chat.db for the sent row: {e}"),
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return AttemptEnd::Unknown {
                        guids: pending,
                        message: "Messages accepted the send but wrote no finished matching row in time; check the phone before retrying".into(),
                    };
                }
                _ = self.db_changed.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Picks how the send reaches Messages. An existing chat is always
    /// addressed by its exact GUID; a person without a chat by handle.
    async fn route(&self, cmd: &CmdSend) -> Result<Route, SendResult> {
        if let Some(guid) = &cmd.chat_guid {
            let info =
                self.confirm.chat(guid).await.map_err(|e| {
                    finished(cmd, SendState::Failed, Some(("chatdb", &e.to_string())))
                })?;
            return Ok(Route::Chat {
                guid: guid.clone(),
                direct: info
                    .and_then(|i| i.direct_handle)
                    .or_else(|| cmd.to.as_ref().map(|t| t.handle.clone())),
            });
        }
        let Some(to) = &cmd.to else {
            return Err(finished(
                cmd,
                SendState::Rejected,
                Some((
                    "bad_target",
                    "the command names neither a chat nor a handle",
                )),
            ));
        };
        let chat = self
            .confirm
            .direct_chat(&to.handle)
            .await
            .map_err(|e| finished(cmd, SendState::Failed, Some(("chatdb", &e.to_string()))))?;
        Ok(match chat {
            Some(guid) => Route::Chat {
                guid,
                direct: Some(to.handle.clone()),
            },
            None => Route::Handle {
                handle: to.handle.clone(),
            },
        })
    }

    fn parts(&self, cmd: &CmdSend) -> Result<Vec<Part>, String> {
        let mut parts = Vec::new();
        if !cmd.text.is_empty() {
            parts.push(Part::Text(cmd.text.clone()));
        }
        for a in &cmd.attachments {
            if a.url.starts_with("https://") || a.url.starts_with("http://") {
                parts.push(Part::Remote {
                    url: a.url.clone(),
                    name: download::safe_name(&a.name),
                    size: a.size,
                    sha256: a.sha256.clone(),
                });
            } else {
                parts.push(Part::File(attachment_source(&a.url)?));
            }
        }
        Ok(parts)
    }

    /// Downloads a [`Part::Remote`] into the staging folder, checked.
    async fn fetch_remote(&self, part: &Part) -> Result<PathBuf, download::DownloadError> {
        let Part::Remote {
            url,
            name,
            size,
            sha256,
        } = part
        else {
            return Err(download::DownloadError::Failed(
                "not a file hosted by the service".into(),
            ));
        };
        let Some(downloads) = &self.downloads else {
            return Err(download::DownloadError::Failed(
                "this sender cannot fetch files from the service (no device token); pair the Mac \
                 again with `whatsnap-mac pair`"
                    .into(),
            ));
        };
        let expected = download::Expected {
            size: *size,
            sha256,
        };
        stage_remote(self.confirm.path(), downloads, url, name, expected).await
    }

    /// Fetches and checks every file the service hosts before the first part
    /// is dispatched (protocol §10: a file failing its size or checksum check
    /// makes the send `rejected`, before `dispatching`), so a bad file never
    /// leaves a send half sent.
    async fn prefetch(&self, cmd: &CmdSend, parts: &mut [Part]) -> Result<(), SendResult> {
        for part in parts.iter_mut() {
            if !matches!(part, Part::Remote { .. }) {
                continue;
            }
            match self.fetch_remote(part).await {
                Ok(staged) => *part = Part::Staged(staged),
                Err(e) => {
                    let state = match e {
                        download::DownloadError::Refused(_) => SendState::Rejected,
                        download::DownloadError::Failed(_) => SendState::Failed,
                    };
                    tracing::warn!(client_msg_id = %cmd.client_msg_id, "{e}");
                    return Err(finished(
                        cmd,
                        state,
                        Some(("bad_attachment", &e.to_string())),
                    ));
                }
            }
        }
        Ok(())
    }

    /// How long the next send must wait for the hourly limits, if at all.
    async fn pacing_wait(&self, settings: &SendSettings, new_handle: bool) -> Option<Duration> {
        let now = self.clock.now_ms();
        let store = self.store.clone();
        let counts = crate::blocking(move || store.dispatch_counts(now - HOUR_MS))
            .await
            .map_err(|e| tracing::error!("cannot count recent sends: {e}"))
            .ok()?;
        pacing_wait(&counts, settings, new_handle, now)
    }

    async fn wait_for_pacing(&mut self, cmd: &CmdSend, wait: Duration) {
        tracing::info!(
            client_msg_id = %cmd.client_msg_id,
            wait_s = wait.as_secs(),
            "hourly send limit reached; the send waits in the queue"
        );
        // Wake early for a deadline, so an overdue send expires on time.
        let until_deadline = cmd.expires_at_ms.map(|at| {
            Duration::from_millis(u64::try_from(at - self.clock.now_ms() + 1).unwrap_or(0))
        });
        // And at least every 30 s, so other queued sends past their
        // deadline are expired on time too.
        let wait = until_deadline
            .map_or(wait, |d| d.min(wait))
            .min(Duration::from_secs(30));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = self.settings.changed() => {}
        }
    }
}

/// The `target_chat` and `target_handle` columns of an attempt on `route`.
fn route_columns(route: &Route) -> (Option<String>, Option<String>) {
    let chat = match route {
        Route::Chat { guid, .. } => Some(guid.clone()),
        Route::Handle { .. } => None,
    };
    (chat, route.direct_handle().map(str::to_owned))
}

/// The SMS rule for `cmd`: its own preference, else the account's setting.
fn sms_mode(cmd: &CmdSend, settings: &SendSettings) -> SmsMode {
    match cmd.service_pref {
        ServicePref::Auto => settings.sms,
        ServicePref::Imessage => SmsMode::ImessageOnly,
        ServicePref::Sms => SmsMode::SmsOnly,
    }
}

/// A send that may leave as soon as it is accepted.
#[derive(Debug)]
struct AtOnce {
    route: Route,
    dialect: Dialect,
    mode: SmsMode,
    via: Via,
    progress: SendProgress,
    before: i64,
}

/// A `cmd.send` handed from the link to an idle worker.
#[derive(Debug)]
struct Admit {
    seq: u64,
    cmd: CmdSend,
    reply: oneshot::Sender<Result<Accepted, StoreError>>,
}

/// Where an idle worker waits for a command, taken under this lock by
/// exactly one of the link (to hand a command over) and the worker (to
/// withdraw the offer when it has other work).
type Slot = Arc<std::sync::Mutex<Option<oneshot::Sender<Admit>>>>;

fn lock_slot(slot: &Slot) -> std::sync::MutexGuard<'_, Option<oneshot::Sender<Admit>>> {
    // The guarded value is a plain channel end: usable after a panic.
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Worker side of [`Admission`]: the offer, and a signal for each new one.
#[derive(Debug, Clone, Default)]
struct Offers {
    slot: Slot,
    made: Arc<Notify>,
}

/// How the link hands over a durable `cmd.send` (protocol §4.2): it calls
/// [`Admission::accept`] instead of [`Store::accept_command`] and acks on
/// the answer as before. When the send worker is idle, the worker itself
/// accepts the command and, if the send can leave at once, commits its
/// acceptance and `dispatching` together (one fsync instead of two before
/// osascript; see [`Store::accept_dispatching`] for why that is safe), then
/// answers; otherwise the command is accepted into the queue as before.
#[derive(Debug, Clone)]
pub struct Admission {
    store: Store,
    wake: Arc<Notify>,
    offers: Offers,
}

impl Admission {
    /// Records durable command `seq` (`cmd` is `None` for commands the
    /// daemon does not act on) and says how to answer it. Returns only once
    /// the command is durable (or refused), so the caller may ack it.
    pub async fn accept(&self, seq: u64, cmd: Option<CmdSend>) -> Result<Accepted, StoreError> {
        if let Some(cmd) = &cmd {
            let offer = lock_slot(&self.offers.slot).take();
            if let Some(offer) = offer {
                let (reply, answer) = oneshot::channel();
                let handed = offer.send(Admit {
                    seq,
                    cmd: cmd.clone(),
                    reply,
                });
                if handed.is_ok()
                    && let Ok(answer) = answer.await
                {
                    return answer;
                }
                // The worker stopped before answering: it wrote nothing it
                // did not answer for, so the ordinary path decides (a
                // command it did commit is a duplicate there).
            }
        }
        let store = self.store.clone();
        let accepted = crate::blocking(move || store.accept_command(seq, cmd.as_ref())).await?;
        if accepted == Accepted::Queued {
            self.wake.notify_one();
        }
        Ok(accepted)
    }

    /// Waits until the worker is idle and would take the next command
    /// itself (for benchmarks and tests that measure that path).
    pub async fn until_idle(&self) {
        loop {
            let made = self.offers.made.notified();
            tokio::pin!(made);
            made.as_mut().enable();
            if lock_slot(&self.offers.slot).is_some() {
                return;
            }
            made.await;
        }
    }
}

/// How long a send must wait so that neither hourly limit is exceeded.
fn pacing_wait(
    counts: &DispatchCounts,
    settings: &SendSettings,
    new_handle: bool,
    now_ms: i64,
) -> Option<Duration> {
    let free_at = |oldest: Option<i64>| {
        let at = oldest.unwrap_or(now_ms) + HOUR_MS;
        Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0).max(1))
    };
    let mut wait = None;
    if counts.sends >= settings.max_sends_per_hour {
        wait = Some(free_at(counts.oldest_ms));
    }
    if new_handle && counts.new_handles >= settings.max_new_handles_per_hour {
        let w = free_at(counts.oldest_new_handle_ms);
        wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
    }
    wait
}

/// Refusals that need no look at Messages.
fn check_command(cmd: &CmdSend) -> Option<SendResult> {
    if cmd.text.is_empty() && cmd.attachments.is_empty() {
        return Some(finished(
            cmd,
            SendState::Rejected,
            Some(("empty", "there is no text and no file to send")),
        ));
    }
    if cmd.text.len() > MAX_TEXT_BYTES {
        return Some(finished(
            cmd,
            SendState::Rejected,
            Some((
                "too_large",
                &format!(
                    "the text is {} bytes; at most {MAX_TEXT_BYTES} can be sent at once",
                    cmd.text.len()
                ),
            )),
        ));
    }
    if cmd.text.contains('\0') {
        // AppleScript strings and argv cannot carry NUL; refusing is better
        // than sending a cut text.
        return Some(finished(
            cmd,
            SendState::Rejected,
            Some((
                "nul_in_text",
                "the text contains a NUL character, which Messages cannot send; remove it",
            )),
        ));
    }
    None
}

/// The first attempt's way for `route` under `mode`.
fn first_via(route: &Route, mode: SmsMode) -> Via {
    match (route, mode) {
        (
            Route::Chat {
                direct: Some(h), ..
            },
            SmsMode::SmsOnly,
        ) => Via::Handle(h.clone(), Service::Sms),
        (Route::Chat { guid, .. }, _) => Via::Chat(guid.clone()),
        (Route::Handle { handle }, SmsMode::SmsOnly) => Via::Handle(handle.clone(), Service::Sms),
        (Route::Handle { handle }, _) => Via::Handle(handle.clone(), Service::IMessage),
    }
}

/// Where the rows of an attempt may appear: the chat named, and any
/// one-to-one chat with the person (an SMS send lands in the SMS chat).
fn scope_of(route: &Route, _via: Option<&str>, _service: Option<&str>) -> Scope {
    Scope {
        chat_guid: match route {
            Route::Chat { guid, .. } => Some(guid.clone()),
            Route::Handle { .. } => None,
        },
        direct_handle: route.direct_handle().map(str::to_owned),
    }
}

fn part_matches(part: &Part, row: &SentRow) -> bool {
    match part {
        Part::Text(t) => row.text.as_deref() == Some(t.as_str()),
        Part::Remote { name, .. } => row
            .transfer_names
            .iter()
            .any(|t| std::ffi::OsStr::new(t) == name.as_os_str()),
        Part::File(path) | Part::Staged(path) => path.file_name().is_some_and(|n| {
            row.transfer_names
                .iter()
                .any(|t| t.as_str() == n.to_string_lossy())
        }),
    }
}

/// The end the matching rows add up to, or `None` to keep waiting.
fn judge(rows: &[&SentRow]) -> Option<AttemptEnd> {
    if rows.is_empty() {
        return None;
    }
    let guids: Vec<String> = rows.iter().map(|r| r.guid.clone()).collect();
    if let Some(failed) = rows.iter().find(|r| r.error != 0) {
        return Some(AttemptEnd::Failed {
            guids,
            service: failed.service.clone(),
            code: format!("messages_error_{}", failed.error),
            message: format!(
                "Messages reported error {} for this send ({})",
                failed.error,
                describe_messages_error(failed.error)
            ),
            no_such_chat: false,
            service_failure: true,
        });
    }
    if rows.iter().all(|r| r.is_sent) {
        return Some(AttemptEnd::Sent {
            guids,
            service: rows[0].service.clone(),
        });
    }
    None
}

fn describe_messages_error(code: i64) -> &'static str {
    match code {
        22 => "not registered with iMessage or not delivered",
        25 => {
            "the attachment could not be uploaded; Messages can only send files inside ~/Library/Messages"
        }
        _ => "see the red exclamation mark in Messages",
    }
}

/// The local file an attachment URL names. The service's HTTPS links are
/// downloaded by the link before a send reaches here (see `docs/`); the
/// sender itself only reads `file://` URLs and plain absolute paths.
fn attachment_source(url: &str) -> Result<PathBuf, String> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    let path = PathBuf::from(percent_decode(path));
    if !path.is_absolute() {
        return Err(format!(
            "cannot send {url:?}: only local files (file:// URLs or absolute paths) can be handed to Messages"
        ));
    }
    Ok(path)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes a path into a `file://` URL (`attachment_source` reads it back).
pub fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// Copies `source` to `<Messages folder>/Attachments/whatsnap/<uuid>/<name>`,
/// the only kind of place sandboxed Messages can send from (macos.md §1.5).
/// The Messages folder is the one holding chat.db. The copy is kept: Messages
/// reads it after osascript returns.
async fn stage(chat_db: &Path, source: &Path) -> Result<PathBuf, String> {
    let messages = chat_db.parent().unwrap_or_else(|| Path::new("."));
    let name = source
        .file_name()
        .ok_or_else(|| format!("{} names no file", source.display()))?
        .to_owned();
    let dir = staging_dir(chat_db);
    let target = dir.join(&name);
    let src = source.to_path_buf();
    let dst = target.clone();
    crate::blocking(move || {
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&src, &dst).map(|_| ())
    })
    .await
    .map_err(|e| {
        format!(
            "cannot copy {} into {} for Messages: {e}; check that the file exists and the Messages folder is writable",
            source.display(),
            messages.join("Attachments/whatsnap").display()
        )
    })?;
    Ok(target)
}

/// Downloads a service-hosted file straight into the staging folder,
/// checked against its size and SHA-256. A file that fails leaves nothing
/// behind, not even its folder.
async fn stage_remote(
    chat_db: &Path,
    downloads: &download::Downloads,
    url: &str,
    name: &Path,
    expected: download::Expected<'_>,
) -> Result<PathBuf, download::DownloadError> {
    let dir = staging_dir(chat_db);
    let target = dir.join(name);
    let d = dir.clone();
    crate::blocking(move || std::fs::create_dir_all(&d))
        .await
        .map_err(|e| {
            download::DownloadError::Failed(format!(
                "cannot create {}: {e}; check that the Messages folder is writable",
                dir.display()
            ))
        })?;
    match downloads.fetch(url, &target, expected).await {
        Ok(_) => Ok(target),
        Err(e) => {
            // Only our own empty <uuid> folder; never fails the send.
            let _ = tokio::fs::remove_dir(&dir).await;
            Err(e)
        }
    }
}

fn staging_failed(message: String) -> AttemptEnd {
    AttemptEnd::Failed {
        guids: Vec::new(),
        service: None,
        code: "attachment_staging".into(),
        message,
        no_such_chat: false,
        service_failure: false,
    }
}

/// How long a staged copy is kept: Messages reads the file after osascript
/// returns, possibly much later for a large upload (protocol §7.9).
pub const STAGED_FILE_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Removes staged copies (`<Messages folder>/Attachments/whatsnap/<uuid>/`)
/// last changed more than `keep` before `now`. Returns how many folders went.
/// Only our own `whatsnap` folder is ever touched.
pub fn prune_staged(
    chat_db: &Path,
    keep: Duration,
    now: std::time::SystemTime,
) -> std::io::Result<usize> {
    let root = chat_db
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("Attachments")
        .join("whatsnap");
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > keep);
        if meta.is_dir() && old {
            std::fs::remove_dir_all(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// `<Messages folder>/Attachments/whatsnap/<uuid>`: the Messages folder is
/// the one holding chat.db.
fn staging_dir(chat_db: &Path) -> PathBuf {
    chat_db
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("Attachments")
        .join("whatsnap")
        .join(uuid::Uuid::new_v4().to_string())
}

fn finished(cmd: &CmdSend, state: SendState, error: Option<(&str, &str)>) -> SendResult {
    SendResult {
        client_msg_id: cmd.client_msg_id.clone(),
        state,
        guids: Vec::new(),
        service: None,
        error: error.map(|(code, message)| ErrorInfo {
            code: code.to_owned(),
            message: message.to_owned(),
        }),
    }
}

fn unknown(cmd: &CmdSend, message: &str) -> SendResult {
    finished(cmd, SendState::Unknown, Some(("unconfirmed", message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hourly_limits_hold_a_send_until_the_oldest_leaves_the_window() {
        let settings = SendSettings {
            max_sends_per_hour: 3,
            max_new_handles_per_hour: 1,
            ..SendSettings::default()
        };
        let now = 10 * HOUR_MS;
        let counts = DispatchCounts {
            sends: 2,
            new_handles: 1,
            oldest_ms: Some(now - HOUR_MS + 60_000),
            oldest_new_handle_ms: Some(now - 600_000),
        };
        assert_eq!(pacing_wait(&counts, &settings, false, now), None);
        assert_eq!(
            pacing_wait(&counts, &settings, true, now),
            Some(Duration::from_millis(
                600_000 + u64::try_from(HOUR_MS - 1_200_000).expect("fits")
            )),
            "a new handle waits for the oldest new-handle send to age out"
        );
        let full = DispatchCounts { sends: 3, ..counts };
        assert_eq!(
            pacing_wait(&full, &settings, false, now),
            Some(Duration::from_millis(60_000))
        );
    }

    #[test]
    fn file_urls_round_trip_hostile_names() {
        let p = Path::new("/tmp/a b/\"quote\" & $(x) 'q' ü%.png");
        assert_eq!(attachment_source(&file_url(p)).expect("path"), p);
        assert!(attachment_source("https://svc.example/att/1").is_err());
    }

    #[test]
    fn texts_messages_cannot_carry_are_refused_before_dispatch() {
        let cmd = |text: &str| CmdSend {
            client_msg_id: "x".into(),
            to: None,
            chat_guid: Some("any;-;+15551234567".into()),
            text: text.into(),
            attachments: vec![],
            service_pref: ServicePref::Auto,
            reply_to_guid: None,
            expires_at_ms: None,
        };
        let state = |text: &str| check_command(&cmd(text)).map(|r| r.state);
        assert_eq!(state(""), Some(SendState::Rejected));
        assert_eq!(state("a\0b"), Some(SendState::Rejected));
        assert_eq!(
            state(&"x".repeat(MAX_TEXT_BYTES + 1)),
            Some(SendState::Rejected)
        );
        assert_eq!(
            state(&"😀".repeat(MAX_TEXT_BYTES / 4)),
            None,
            "64 KiB of emoji is fine"
        );
    }
}
