//! One device's websocket session: handshake, the two durable streams,
//! liveness, and closing with the right code (protocol §7.4–7.8).
//!
//! A session is one task owning its socket. It waits for `hello` (10 s),
//! answers `welcome`, then loops over: frames from the daemon, control
//! messages from the `hub` (push new commands, close), the event
//! ack timer (ack after 50 frames or 250 ms), the command resend timer (30 s
//! without an ack), the idle timer (60 s without any frame) and shutdown
//! (close 1012). Events are applied only in sequence: the effect and the
//! stream's new high-water mark commit in one transaction
//! ([`crate::store::apply_events`]) before they are acked. While one run of
//! events is being applied on the blocking pool, the session keeps reading
//! the socket and queues the events that follow; they go to the database
//! together as soon as it is free, so a catching-up Mac's stream never waits
//! on a round trip. Commands are read from the database, never from memory,
//! so a push can never run ahead of what is stored.

use std::future::Future;
use std::pin::Pin;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::FutureExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use whatsnap_proto::close::{self, CloseReason};
use whatsnap_proto::frame::{
    self, Ack, Body, ErrorData, Frame, Hello, Stream, Welcome, WelcomeCommands, WelcomeEvents,
    error_code,
};
use whatsnap_proto::{DEFAULT_MAX_FRAME_BYTES, DecodeError, PROTOCOL_VERSION};

use crate::hub::Ctl;
use crate::store::{self, DeviceAuth, ServiceError};
use crate::{AppState, RelayEvent, now_ms};

/// Events are acked after this many frames, or `Timing::ack_delay` after
/// the first unacked one, whichever comes first.
pub const ACK_EVERY_FRAMES: usize = 50;
/// Most unacked commands in flight.
pub const COMMANDS_WINDOW: u64 = 10;
/// Most unacked events the daemon may have in flight. Large enough that a
/// backlog streams while earlier runs are applied and acked (§4.5).
pub const EVENTS_WINDOW: u64 = 1000;
/// Most frame text (bytes) of events held in memory, queued or being
/// applied: the daemon's limit in flight (§4.5). Beyond it the socket is not
/// read until a run commits, so memory stays bounded whatever the peer does.
pub const EVENTS_WINDOW_BYTES: usize = 2 * 1024 * 1024;
/// Most events applied in one transaction. Bounds the time the database is
/// held and the burst of bus events one commit emits (the bus keeps 1024).
pub const APPLY_BATCH_MAX: usize = 250;

/// The outcome of applying a run of events: what to broadcast.
type ApplyResult = Result<Vec<RelayEvent>, ServiceError>;

/// A run of events being applied on the blocking pool.
struct Applying {
    /// The database work; it commits even if this session ends first.
    done: Pin<Box<dyn Future<Output = ApplyResult> + Send>>,
    /// The run's last seq: `committed` once it is done.
    last: u64,
    /// How many events it holds.
    count: usize,
    /// Their frame text, in bytes.
    bytes: usize,
}
/// The daemon's ping interval, announced in `welcome`.
pub const HEARTBEAT_MS: u64 = 20_000;
/// After this much silence the daemon treats the link as dead.
pub const DAEMON_IDLE_TIMEOUT_MS: u64 = 45_000;

struct Session {
    state: AppState,
    device_id: String,
    account_id: String,
    session: u64,
    socket: WebSocket,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    last_rx: Instant,
    hello_deadline: Instant,
    /// Set once `welcome` went out; everything below is valid from then on.
    welcomed: bool,
    /// The hello carried no protocol we speak (affects the reported status).
    needs_update: bool,
    events_epoch: String,
    committed: u64,
    /// No committed value in this epoch yet: the next event is the start.
    unanchored: bool,
    /// The run being applied, if any.
    applying: Option<Applying>,
    /// Events that arrived in order behind `applying`, to apply next, with
    /// the size of their frame text.
    queued: Vec<(u64, Option<Body>, usize)>,
    /// Frame text of the events queued or being applied, in bytes.
    held_bytes: usize,
    unacked_frames: usize,
    ack_deadline: Option<Instant>,
    commands_epoch: String,
    /// Every command ≤ this is acked by the daemon.
    cmd_acked: u64,
    /// Highest command seq pushed in this session.
    cmd_sent: u64,
    /// Last push or ack on the command stream, for the 30 s resend.
    cmd_progress: Instant,
}

/// Runs a device's session until it closes, then records the disconnect.
pub(crate) async fn run(state: AppState, device: DeviceAuth, socket: WebSocket) {
    let (tx, rx) = mpsc::unbounded_channel();
    let session_no = state.inner.hub.register(&device.id, tx);
    let now = Instant::now();
    let mut session = Session {
        state: state.clone(),
        device_id: device.id.clone(),
        account_id: device.account_id.clone(),
        session: session_no,
        socket,
        ctl: rx,
        last_rx: now,
        hello_deadline: now + state.inner.timing.hello_timeout,
        welcomed: false,
        needs_update: false,
        events_epoch: String::new(),
        committed: 0,
        unanchored: false,
        applying: None,
        queued: Vec::new(),
        held_bytes: 0,
        unacked_frames: 0,
        ack_deadline: None,
        commands_epoch: String::new(),
        cmd_acked: 0,
        cmd_sent: 0,
        cmd_progress: now,
    };
    tracing::info!(device = device.id, session = session_no, "device connected");
    session.run().await;
    session.finish_applying().await;
    let Session {
        welcomed,
        needs_update,
        ..
    } = session;
    let current = state.inner.hub.unregister(&device.id, session_no);
    tracing::info!(
        device = device.id,
        session = session_no,
        "device disconnected"
    );
    if !current || !(welcomed || needs_update) {
        return;
    }
    let device_id = device.id.clone();
    let account_id = device.account_id.clone();
    let now = now_ms();
    let result = state
        .inner
        .db
        .call(move |c| {
            if welcomed {
                store::end_session(c, &device_id, now, now)?;
            }
            store::account_by_id(c, &account_id)
        })
        .await;
    let (status, reason) = match result {
        Ok(Some(account)) => {
            let live = account
                .device
                .as_ref()
                .and_then(|d| state.inner.hub.live_since(&d.id));
            let view = store::account_view(&account, live);
            (view.status, view.reason)
        }
        Ok(None) => (
            whatsnap_proto::api::AccountState::Disconnected,
            Some(whatsnap_proto::api::DisconnectReason::Revoked),
        ),
        Err(e) => {
            tracing::error!(error = %e, device = device.id, "could not record the disconnect");
            return;
        }
    };
    state.emit(RelayEvent::AccountStatus {
        account_id: device.account_id,
        status,
        reason,
    });
}

/// Waits for the run being applied, or forever when there is none.
async fn applied(applying: &mut Option<Applying>) -> ApplyResult {
    match applying {
        Some(a) => a.done.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever when there is none (a disabled timer).
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// Runs until the socket closes (either side) or must be closed.
    async fn run(&mut self) {
        let shutdown = self.state.inner.shutdown.clone();
        loop {
            let resend_at = (self.welcomed && self.cmd_sent > self.cmd_acked)
                .then_some(self.cmd_progress + self.state.inner.timing.command_resend_after);
            let hello_at = (!self.welcomed).then_some(self.hello_deadline);
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.close(close::SERVICE_RESTART, "the service is restarting; reconnect shortly").await;
                    return;
                }
                ctl = self.ctl.recv() => match ctl {
                    Some(Ctl::Close { code, reason }) => {
                        self.close_with_text(code, reason).await;
                        return;
                    }
                    Some(Ctl::Pump) => {
                        if !self.pump().await {
                            return;
                        }
                    }
                    // The hub dropped us (cannot happen while registered); end quietly.
                    None => return,
                },
                result = applied(&mut self.applying) => {
                    if !self.on_applied(result).await {
                        return;
                    }
                }
                // A daemon that overruns its window is not read from until the
                // queue drains: memory stays bounded, TCP pushes back.
                msg = self.socket.recv(), if self.has_room() => {
                    let Some(msg) = msg else { return };
                    if !self.on_message(msg).await {
                        return;
                    }
                    // Frames already waiting are read now rather than one
                    // trip round this loop each: a backlog arrives in bursts.
                    // Bounded, so the timers and the database get their turn.
                    for _ in 0..APPLY_BATCH_MAX {
                        if !self.has_room() {
                            break;
                        }
                        let Some(next) = self.socket.recv().now_or_never() else {
                            break;
                        };
                        let Some(msg) = next else { return };
                        if !self.on_message(msg).await {
                            return;
                        }
                    }
                    self.start_applying();
                }
                () = sleep_until_opt(hello_at) => {
                    self.close(close::MALFORMED_HELLO, "no hello within 10 s of connecting").await;
                    return;
                }
                () = tokio::time::sleep_until(self.last_rx + self.state.inner.timing.idle_timeout) => {
                    self.close(close::GOING_AWAY, "nothing received for 60 s; reconnect").await;
                    return;
                }
                () = sleep_until_opt(self.ack_deadline) => {
                    if !self.send_ack(None).await {
                        return;
                    }
                }
                () = sleep_until_opt(resend_at) => {
                    tracing::info!(device = self.device_id, from = self.cmd_acked + 1, "no command ack for 30 s; resending");
                    self.cmd_sent = self.cmd_acked;
                    if !self.pump().await {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one websocket message; false when the session must end.
    async fn on_message(&mut self, msg: Result<Message, axum::Error>) -> bool {
        self.last_rx = Instant::now();
        match msg {
            Ok(Message::Text(text)) => self.on_text(text.as_str()).await,
            Ok(Message::Binary(bytes)) => {
                if bytes.len() > DEFAULT_MAX_FRAME_BYTES {
                    self.close(close::MESSAGE_TOO_BIG, "frame larger than 1 MiB")
                        .await;
                    return false;
                }
                self.send_error(
                    None,
                    error_code::BAD_JSON,
                    "frames must be JSON text, not binary",
                )
                .await
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => true,
            Ok(Message::Close(_)) => false,
            Err(e) => {
                let text = e.to_string();
                tracing::info!(device = self.device_id, error = %text, "websocket read failed");
                if text.contains("Space limit") {
                    self.close(close::MESSAGE_TOO_BIG, "frame larger than 1 MiB")
                        .await;
                }
                false
            }
        }
    }

    /// Handles one text frame; false when the session must end.
    async fn on_text(&mut self, text: &str) -> bool {
        if text.len() > DEFAULT_MAX_FRAME_BYTES {
            self.close(close::MESSAGE_TOO_BIG, "frame larger than 1 MiB")
                .await;
            return false;
        }
        let frame = match frame::decode(text) {
            Ok(frame) => frame,
            Err(e) => return self.on_bad_frame(&e).await,
        };
        if !self.welcomed {
            return match frame.body {
                Body::Hello(hello) => self.on_hello(&frame.id, hello).await,
                other => {
                    let message = format!(
                        "{} before welcome: the first frame must be hello",
                        other.type_name()
                    );
                    self.send_error(Some(&frame.id), error_code::BEFORE_WELCOME, &message)
                        .await;
                    self.close(close::MALFORMED_HELLO, "the first frame must be hello")
                        .await;
                    false
                }
            };
        }
        let durable = frame.body.stream();
        match (durable, frame.seq) {
            (Some(Stream::Events), Some(seq)) => {
                return self.on_event(seq, Some(frame.body), text.len()).await;
            }
            (Some(Stream::Events), None) => {
                let message = format!("{} is durable and needs a seq", frame.body.type_name());
                return self
                    .send_error(Some(&frame.id), error_code::BAD_SEQ, &message)
                    .await;
            }
            (Some(Stream::Commands), _) => {
                let message = format!(
                    "{} is a service-to-device command; a device cannot send it",
                    frame.body.type_name()
                );
                return self
                    .send_error(Some(&frame.id), error_code::BAD_DATA, &message)
                    .await;
            }
            (None, Some(_)) => {
                let message = format!(
                    "{} is ephemeral and must not carry a seq",
                    frame.body.type_name()
                );
                return self
                    .send_error(Some(&frame.id), error_code::BAD_SEQ, &message)
                    .await;
            }
            (None, None) => {}
        }
        match frame.body {
            Body::Ack(ack) => self.on_ack(&ack).await,
            Body::Status(status) => {
                let device_id = self.device_id.clone();
                let now = now_ms();
                if let Err(e) = self
                    .state
                    .inner
                    .db
                    .call(move |c| store::store_status(c, &device_id, &status, now))
                    .await
                {
                    tracing::warn!(error = %e, device = self.device_id, "could not store status");
                }
                true
            }
            Body::Hello(_) => {
                self.send_error(
                    Some(&frame.id),
                    error_code::BAD_DATA,
                    "hello was already answered with welcome",
                )
                .await
            }
            Body::Error(ErrorData { code, message, .. }) => {
                tracing::warn!(
                    device = self.device_id,
                    code,
                    message,
                    "device reported an error"
                );
                true
            }
            // Typing, pong and service-side types: nothing to do yet.
            other => {
                tracing::debug!(
                    device = self.device_id,
                    ty = other.type_name(),
                    "frame ignored"
                );
                true
            }
        }
    }

    /// Answers a frame that did not decode. An unknown durable type still
    /// advances the stream, so a newer daemon never stalls an older service.
    async fn on_bad_frame(&mut self, e: &DecodeError) -> bool {
        tracing::info!(device = self.device_id, error = %e, "bad frame");
        let Body::Error(data) = e.to_error_body() else {
            return true;
        };
        if !self
            .send_error(data.reply_to.as_deref(), &data.code, &data.message)
            .await
        {
            return false;
        }
        if !self.welcomed {
            self.close(
                close::MALFORMED_HELLO,
                "the first frame must be a valid hello",
            )
            .await;
            return false;
        }
        // A durable frame whose data does not fit is acked too: resending it
        // would fail the same way and stall the stream (§7).
        match e {
            DecodeError::UnknownType { seq: Some(seq), .. } => {
                return self.on_event(*seq, None, 0).await;
            }
            DecodeError::BadData {
                ty, seq: Some(seq), ..
            } if Body::stream_of(ty) == Some(Stream::Events) => {
                return self.on_event(*seq, None, 0).await;
            }
            _ => {}
        }
        true
    }

    async fn on_hello(&mut self, frame_id: &str, hello: Hello) -> bool {
        if !hello.protocols.contains(&PROTOCOL_VERSION) {
            let device_id = self.device_id.clone();
            let now = now_ms();
            if let Err(e) = self
                .state
                .inner
                .db
                .call(move |c| store::mark_needs_update(c, &device_id, now))
                .await
            {
                tracing::warn!(error = %e, "could not record needs_update");
            }
            self.needs_update = true;
            self.close(
                close::UNSUPPORTED_VERSION,
                "this service speaks protocol 1; update whatsnap-mac",
            )
            .await;
            return false;
        }
        if hello.device_id != self.device_id {
            self.close(
                close::MALFORMED_HELLO,
                "hello.device_id is not the device of this token; run `whatsnap-mac pair`",
            )
            .await;
            return false;
        }
        let device_id = self.device_id.clone();
        let now = now_ms();
        let daemon_settings = hello.settings_version;
        let start = match self
            .state
            .inner
            .db
            .call(move |c| store::begin_session(c, &device_id, &hello, now))
            .await
        {
            Ok(start) => start,
            Err(ServiceError::Refused { message, .. }) => {
                self.close(close::UNAUTHORIZED, &message).await;
                return false;
            }
            Err(e) => {
                tracing::error!(error = %e, device = self.device_id, "cannot start session");
                self.close(
                    close::SERVICE_RESTART,
                    "service storage failed; retry later",
                )
                .await;
                return false;
            }
        };
        self.events_epoch.clone_from(&start.events_epoch);
        self.committed = start.events_committed;
        self.unanchored = start.events_unanchored;
        self.commands_epoch.clone_from(&start.commands_epoch);
        self.cmd_acked = start.commands_acked_upto;
        self.cmd_sent = start.commands_acked_upto;
        self.cmd_progress = Instant::now();
        let settings = (start.account.settings.version > daemon_settings)
            .then(|| start.account.settings.clone());
        let welcome = Welcome {
            session_id: format!("{}-{}", self.device_id, self.session),
            account_id: start.account.id.clone(),
            account_name: start.account.name.clone(),
            account_tag: start.account.tag.clone(),
            events: WelcomeEvents {
                epoch: start.events_epoch.clone(),
                acked_upto: start.events_committed,
            },
            commands: WelcomeCommands {
                epoch: start.commands_epoch.clone(),
                last_seq: start.commands_last_seq,
            },
            heartbeat_ms: HEARTBEAT_MS,
            idle_timeout_ms: DAEMON_IDLE_TIMEOUT_MS,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u64,
            events_window: EVENTS_WINDOW,
            commands_window: COMMANDS_WINDOW,
            server_time: now_ms(),
            settings,
        };
        // Active from here: marked before the welcome goes out, so anyone the
        // daemon tells "connected" already sees the account Active.
        self.welcomed = true;
        if self
            .state
            .inner
            .hub
            .welcomed(&self.device_id, self.session, now_ms())
        {
            self.state.emit(RelayEvent::AccountStatus {
                account_id: self.account_id.clone(),
                status: whatsnap_proto::api::AccountState::Active,
                reason: None,
            });
        }
        let frame = Frame::new(Body::Welcome(welcome), now_ms()).replying_to(frame_id);
        if !self.send_text(frame.to_json()).await {
            return false;
        }
        tracing::info!(
            device = self.device_id,
            account = self.account_id,
            "session welcomed"
        );
        self.pump().await
    }

    /// Durable event `seq` (`body` is `None` for one this version cannot
    /// read: it still advances the stream). The ordering rule of §4.2 is
    /// applied against everything already received, applied or not:
    /// duplicates are acked, the next one is queued and applied as soon as
    /// the database is free, a gap asks for a resend.
    async fn on_event(&mut self, seq: u64, body: Option<Body>, bytes: usize) -> bool {
        let in_flight = self.applying.as_ref().map_or(0, |a| a.count);
        if self.unanchored && in_flight == 0 && self.queued.is_empty() {
            // Rule 1 of 4.2: the first frame of an unfamiliar epoch is the start.
            self.committed = seq.saturating_sub(1);
        }
        let next = self.committed + (in_flight + self.queued.len()) as u64 + 1;
        if seq < next {
            return self.note_acks(1).await;
        }
        if seq > next {
            // Only a bug gets here. What is queued is in order and stays;
            // the daemon is asked for everything from the first missing one.
            tracing::warn!(
                device = self.device_id,
                seq,
                expected = next,
                committed = self.committed,
                "event gap; asking for a resend"
            );
            return self.send_ack(Some(next)).await;
        }
        // Applied once the frames already waiting are read too (see `run`).
        self.queued.push((seq, body, bytes));
        self.held_bytes += bytes;
        true
    }

    /// Whether the socket may be read: the queue is within the window, in
    /// frames and in bytes.
    fn has_room(&self) -> bool {
        self.queued.len() < EVENTS_WINDOW as usize && self.held_bytes < EVENTS_WINDOW_BYTES
    }

    /// Forgets the queued events (they come again after a resend).
    fn drop_queued(&mut self) {
        let bytes: usize = self.queued.drain(..).map(|(_, _, b)| b).sum();
        self.held_bytes -= bytes;
    }

    /// Sends the queued events to the database, up to [`APPLY_BATCH_MAX`],
    /// unless a run is already being applied.
    fn start_applying(&mut self) {
        if self.applying.is_some() || self.queued.is_empty() {
            return;
        }
        let take = self.queued.len().min(APPLY_BATCH_MAX);
        let mut bytes = 0;
        let run: Vec<_> = self
            .queued
            .drain(..take)
            .map(|(seq, body, b)| {
                bytes += b;
                (seq, body)
            })
            .collect();
        let last = run.last().map_or(self.committed, |(s, _)| *s);
        let device_id = self.device_id.clone();
        let epoch = self.events_epoch.clone();
        let now = now_ms();
        let db = self.state.inner.db.clone();
        let done = Box::pin(async move {
            db.call(move |c| store::apply_events(c, &device_id, &epoch, &run, now))
                .await
        });
        self.applying = Some(Applying {
            done,
            last,
            count: take,
            bytes,
        });
    }

    /// A run was applied (or failed): move `committed`, broadcast, ack, and
    /// start on what queued up meanwhile.
    async fn on_applied(&mut self, result: ApplyResult) -> bool {
        let Some(Applying {
            last, count, bytes, ..
        }) = self.applying.take()
        else {
            return true;
        };
        self.held_bytes -= bytes;
        match result {
            Ok(events) => {
                self.committed = last;
                self.unanchored = false;
                for event in events {
                    self.state.emit(event);
                }
                self.start_applying();
                self.note_acks(count).await
            }
            Err(ServiceError::Refused {
                code: "stale_session",
                ..
            }) => {
                self.drop_queued();
                self.close(close::REPLACED, "another session of this device took over")
                    .await;
                false
            }
            Err(e) => {
                // Not acked: the daemon resends it on the next connection.
                self.drop_queued();
                tracing::error!(error = %e, device = self.device_id, "cannot apply events");
                self.close(
                    close::SERVICE_RESTART,
                    "service storage failed; retry later",
                )
                .await;
                false
            }
        }
    }

    /// At the end of the session: waits for the run being applied, which
    /// commits anyway, so that its events are still broadcast. Nothing is
    /// sent; the daemon learns the new mark from the next `welcome`.
    async fn finish_applying(&mut self) {
        if let Some(mut applying) = self.applying.take()
            && let Ok(events) = applying.done.as_mut().await
        {
            for event in events {
                self.state.emit(event);
            }
        }
    }

    /// Counts `n` frames done (applied, or duplicates) towards the next
    /// ack: one cumulative ack once [`ACK_EVERY_FRAMES`] are waiting,
    /// however many a run held, else the 250 ms timer (§4.3).
    async fn note_acks(&mut self, n: usize) -> bool {
        self.unacked_frames += n;
        if self.unacked_frames >= ACK_EVERY_FRAMES {
            return self.send_ack(None).await;
        }
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(Instant::now() + self.state.inner.timing.ack_delay);
        }
        true
    }

    async fn send_ack(&mut self, resend_from: Option<u64>) -> bool {
        self.unacked_frames = 0;
        self.ack_deadline = None;
        let ack = Ack {
            stream: Stream::Events,
            epoch: self.events_epoch.clone(),
            upto: self.committed,
            resend_from,
        };
        self.send_text(Frame::new(Body::Ack(ack), now_ms()).to_json())
            .await
    }

    async fn on_ack(&mut self, ack: &Ack) -> bool {
        match ack.stream {
            Stream::Commands if ack.epoch == self.commands_epoch => {}
            Stream::Commands => {
                tracing::warn!(
                    device = self.device_id,
                    epoch = ack.epoch,
                    "command ack for another epoch; ignored"
                );
                return true;
            }
            Stream::Events => return true,
        }
        if ack.upto > self.cmd_acked {
            let device_id = self.device_id.clone();
            let upto = ack.upto;
            if let Err(e) = self
                .state
                .inner
                .db
                .call(move |c| store::ack_commands(c, &device_id, upto))
                .await
            {
                tracing::error!(error = %e, "cannot record command ack");
                return true;
            }
            self.cmd_acked = ack.upto;
            self.cmd_sent = self.cmd_sent.max(self.cmd_acked);
        }
        self.cmd_progress = Instant::now();
        if let Some(from) = ack.resend_from {
            // The daemon saw a gap: push again from there.
            self.cmd_sent = self.cmd_acked.max(from.saturating_sub(1));
        }
        self.pump().await
    }

    /// Pushes stored, unacked commands past what was sent, up to the window.
    async fn pump(&mut self) -> bool {
        if !self.welcomed {
            return true;
        }
        let upto = self.cmd_acked + COMMANDS_WINDOW;
        if self.cmd_sent >= upto {
            return true;
        }
        let device_id = self.device_id.clone();
        let after = self.cmd_sent;
        let rows = match self
            .state
            .inner
            .db
            .call(move |c| store::commands_to_send(c, &device_id, after, upto))
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot read commands");
                return true;
            }
        };
        if rows.is_empty() {
            return true;
        }
        for (seq, json) in rows {
            if !self.send_text(json).await {
                return false;
            }
            self.cmd_sent = seq;
        }
        self.cmd_progress = Instant::now();
        true
    }

    async fn send_error(&mut self, reply_to: Option<&str>, code: &str, message: &str) -> bool {
        let body = Body::Error(ErrorData {
            reply_to: reply_to.map(str::to_owned),
            code: code.to_owned(),
            message: message.to_owned(),
        });
        self.send_text(Frame::new(body, now_ms()).to_json()).await
    }

    async fn send_text(&mut self, text: String) -> bool {
        match self.socket.send(Message::Text(text.into())).await {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(device = self.device_id, error = %e, "websocket write failed");
                false
            }
        }
    }

    async fn close(&mut self, code: u16, message: &str) {
        let reason = CloseReason::new(code, message).to_reason_text();
        self.close_with_text(code, reason).await;
    }

    async fn close_with_text(&mut self, code: u16, reason: String) {
        tracing::info!(device = self.device_id, code, reason, "closing session");
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }
}
