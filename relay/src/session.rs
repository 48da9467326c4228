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
//! ([`crate::store::apply_event`]) before they are acked. Commands are read
//! from the database, never from memory, so a push can never run ahead of
//! what is stored.

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
/// Most unacked events the daemon may have in flight.
pub const EVENTS_WINDOW: u64 = 200;
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
        unacked_frames: 0,
        ack_deadline: None,
        commands_epoch: String::new(),
        cmd_acked: 0,
        cmd_sent: 0,
        cmd_progress: now,
    };
    tracing::info!(device = device.id, session = session_no, "device connected");
    session.run().await;
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
                msg = self.socket.recv() => {
                    let Some(msg) = msg else { return };
                    self.last_rx = Instant::now();
                    match msg {
                        Ok(Message::Text(text)) => {
                            if !self.on_text(text.as_str()).await {
                                return;
                            }
                        }
                        Ok(Message::Binary(bytes)) => {
                            if bytes.len() > DEFAULT_MAX_FRAME_BYTES {
                                self.close(close::MESSAGE_TOO_BIG, "frame larger than 1 MiB").await;
                                return;
                            }
                            let ok = self
                                .send_error(None, error_code::BAD_JSON, "frames must be JSON text, not binary")
                                .await;
                            if !ok {
                                return;
                            }
                        }
                        Ok(Message::Ping(_) | Message::Pong(_)) => {}
                        Ok(Message::Close(_)) => return,
                        Err(e) => {
                            let text = e.to_string();
                            tracing::info!(device = self.device_id, error = %text, "websocket read failed");
                            if text.contains("Space limit") {
                                self.close(close::MESSAGE_TOO_BIG, "frame larger than 1 MiB").await;
                            }
                            return;
                        }
                    }
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
            (Some(Stream::Events), Some(seq)) => return self.on_event(&frame, seq).await,
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
                return self.on_durable(*seq, None).await;
            }
            DecodeError::BadData {
                ty, seq: Some(seq), ..
            } if Body::stream_of(ty) == Some(Stream::Events) => {
                return self.on_durable(*seq, None).await;
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

    /// An event, and every further event already waiting on the socket
    /// (up to [`EVENTS_WINDOW`]): a catching-up Mac's burst is applied in one
    /// transaction instead of one round trip to the database per event.
    /// Anything else found while draining is handled after the batch, in
    /// order.
    async fn on_event(&mut self, frame: &Frame, seq: u64) -> bool {
        let mut batch = vec![(seq, frame.body.clone())];
        let mut after = None;
        while batch.len() < usize::try_from(EVENTS_WINDOW).unwrap_or(200) {
            let Some(next) = self.socket.recv().now_or_never() else {
                break;
            };
            if let Some(Ok(Message::Text(text))) = &next
                && text.len() <= DEFAULT_MAX_FRAME_BYTES
                && let Ok(f) = frame::decode(text.as_str())
                && f.body.stream() == Some(Stream::Events)
                && let Some(s) = f.seq
            {
                batch.push((s, f.body));
                continue;
            }
            after = Some(next);
            break;
        }
        if !self.on_durable_batch(batch).await {
            return false;
        }
        match after {
            None => true,
            Some(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => false,
            Some(Some(Ok(Message::Text(text)))) => Box::pin(self.on_text(text.as_str())).await,
            Some(Some(Ok(Message::Binary(bytes)))) => {
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
            Some(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => true,
        }
    }

    /// The ordering rule for a run of events: duplicates are acked, the
    /// in-order run is applied in one transaction, a gap asks for a resend
    /// (frames after it are dropped; they come again).
    async fn on_durable_batch(&mut self, batch: Vec<(u64, Body)>) -> bool {
        if batch.len() == 1 {
            let (seq, body) = &batch[0];
            return self.on_durable(*seq, Some(body)).await;
        }
        if self.unanchored
            && let Some((first, _)) = batch.first()
        {
            self.committed = first.saturating_sub(1);
        }
        let mut next = self.committed + 1;
        let mut duplicates = 0;
        let mut run = Vec::new();
        let mut gap = false;
        for (seq, body) in batch {
            if seq < next && run.is_empty() {
                duplicates += 1;
            } else if seq == next {
                run.push((seq, Some(body)));
                next += 1;
            } else {
                gap = true;
                break;
            }
        }
        for _ in 0..duplicates {
            if !self.note_ack().await {
                return false;
            }
        }
        if let Some(&(last, _)) = run.last() {
            let device_id = self.device_id.clone();
            let epoch = self.events_epoch.clone();
            let count = run.len();
            let now = now_ms();
            let result = self
                .state
                .inner
                .db
                .call(move |c| store::apply_events(c, &device_id, &epoch, &run, now))
                .await;
            match result {
                Ok(events) => {
                    self.committed = last;
                    self.unanchored = false;
                    for event in events {
                        self.state.emit(event);
                    }
                    for _ in 0..count {
                        if !self.note_ack().await {
                            return false;
                        }
                    }
                }
                Err(ServiceError::Refused {
                    code: "stale_session",
                    ..
                }) => {
                    self.close(close::REPLACED, "another session of this device took over")
                        .await;
                    return false;
                }
                Err(e) => {
                    tracing::error!(error = %e, device = self.device_id, "cannot apply events");
                    self.close(
                        close::SERVICE_RESTART,
                        "service storage failed; retry later",
                    )
                    .await;
                    return false;
                }
            }
        }
        if gap {
            tracing::warn!(
                device = self.device_id,
                committed = self.committed,
                "event gap; asking for a resend"
            );
            return self.send_ack(Some(self.committed + 1)).await;
        }
        true
    }

    /// The ordering rule of §7.7: apply only committed + 1, ack duplicates,
    /// ask for a resend after a gap.
    async fn on_durable(&mut self, seq: u64, body: Option<&Body>) -> bool {
        if self.unanchored {
            // Rule 1 of 4.2: the first frame of an unfamiliar epoch is the start.
            self.committed = seq.saturating_sub(1);
        }
        if seq <= self.committed {
            return self.note_ack().await;
        }
        if seq > self.committed + 1 {
            tracing::warn!(
                device = self.device_id,
                seq,
                committed = self.committed,
                "event gap; asking for a resend"
            );
            return self.send_ack(Some(self.committed + 1)).await;
        }
        let device_id = self.device_id.clone();
        let epoch = self.events_epoch.clone();
        let body = body.cloned();
        let now = now_ms();
        let result = self
            .state
            .inner
            .db
            .call(move |c| store::apply_event(c, &device_id, &epoch, seq, body.as_ref(), now))
            .await;
        match result {
            Ok(events) => {
                self.committed = seq;
                self.unanchored = false;
                for event in events {
                    self.state.emit(event);
                }
                self.note_ack().await
            }
            Err(ServiceError::Refused {
                code: "stale_session",
                ..
            }) => {
                self.close(close::REPLACED, "another session of this device took over")
                    .await;
                false
            }
            Err(e) => {
                tracing::error!(error = %e, device = self.device_id, seq, "cannot apply event");
                // Not acked: the daemon resends it on the next connection.
                self.close(
                    close::SERVICE_RESTART,
                    "service storage failed; retry later",
                )
                .await;
                false
            }
        }
    }

    async fn note_ack(&mut self) -> bool {
        self.unacked_frames += 1;
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
