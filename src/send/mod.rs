//! Sending through Messages.app: the send state machine.
//!
//! A `cmd.send` arrives already recorded as `queued` in the store. The sender
//! takes sends one at a time, in order: it checks the deadline, snapshots
//! chat.db's `MAX(ROWID)`, commits `dispatching`, runs the constant script,
//! and then confirms the send by finding the from-me row Messages writes. Exit
//! status 0 is not proof; only the row is. A send that cannot be confirmed is
//! reported `unknown` and never dispatched again, and a daemon that restarts
//! with a send in `dispatching` only looks for its row.

pub mod runner;
pub mod scripts;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use whatsnap_proto::frame::{CmdSend, ErrorInfo, SendResult, SendState};

use crate::chatdb::{MessageRow, SharedChatDb};
use crate::store::{SendPhase, SendRecord, Store};
use runner::{RunOutcome, Runner};

/// How long to look for the from-me row after Messages accepted a send.
pub const CONFIRM_WINDOW: Duration = Duration::from_secs(10);

/// How long a send found in `dispatching` after a restart may still be
/// confirmed, counted from its dispatch.
pub const RESTART_CONFIRM_WINDOW: Duration = Duration::from_secs(60);

/// The send worker.
#[derive(Debug, Clone)]
pub struct Sender {
    /// The daemon's store.
    pub store: Store,
    /// Its own chat.db connection.
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
    /// Works until `shutdown`: first finishes sends left in `dispatching` by a
    /// previous run, then takes queued sends in order.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let next = {
                let store = self.store.clone();
                crate::blocking(move || match store.next_send(SendPhase::Dispatching)? {
                    Some(s) => Ok(Some(s)),
                    None => store.next_send(SendPhase::Queued),
                })
                .await
            };
            let send = match next {
                Ok(Some(send)) => send,
                Ok(None) => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = self.wake.notified() => continue,
                    }
                }
                Err(e) => {
                    tracing::error!("cannot read pending sends: {e}");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    }
                }
            };
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.process(send) => r,
            };
            tracing::info!(
                client_msg_id = %result.client_msg_id,
                state = ?result.state,
                guids = ?result.guids,
                "send finished"
            );
            let store = self.store.clone();
            match crate::blocking(move || store.finish_send(&result)).await {
                Ok(()) => self.outbox.notify_one(),
                Err(e) => tracing::error!("cannot record a send result: {e}"),
            }
        }
    }

    async fn process(&mut self, send: SendRecord) -> SendResult {
        let cmd = send.cmd.clone();
        if send.phase == SendPhase::Dispatching {
            // Dispatched by a previous run: never again, only correlate.
            let elapsed_ms = now_ms() - send.dispatched_ms.unwrap_or(0);
            let left = RESTART_CONFIRM_WINDOW
                .saturating_sub(Duration::from_millis(elapsed_ms.max(0) as u64));
            let found = self
                .confirm(&cmd, send.max_rowid_before.unwrap_or(0), left)
                .await;
            return found.unwrap_or_else(|| {
                unknown(
                    &cmd,
                    "the daemon restarted while this send was in flight and Messages shows no matching row; check the phone before retrying",
                )
            });
        }
        if let Some(expires) = cmd.expires_at_ms
            && now_ms() > expires
        {
            return finished(
                &cmd,
                SendState::Expired,
                Some((
                    "expired",
                    "the send waited past its deadline and was not dispatched",
                )),
            );
        }
        if cmd.text.is_empty() {
            return finished(
                &cmd,
                SendState::Rejected,
                Some(("empty", "there is no text to send")),
            );
        }
        let (script, target, known_chat) = match self.target(&cmd).await {
            Ok(t) => t,
            Err(reason) => {
                return finished(&cmd, SendState::Rejected, Some(("bad_target", &reason)));
            }
        };
        let before = match self.chat_db.call(|db| db.max_rowid()).await {
            Ok(n) => n,
            Err(e) => {
                return finished(&cmd, SendState::Failed, Some(("chatdb", &e.to_string())));
            }
        };
        {
            let store = self.store.clone();
            let id = cmd.client_msg_id.clone();
            let chat = known_chat.clone();
            if let Err(e) =
                crate::blocking(move || store.mark_dispatching(&id, before, chat.as_deref())).await
            {
                return finished(&cmd, SendState::Failed, Some(("store", &e.to_string())));
            }
        }
        tracing::info!(client_msg_id = %cmd.client_msg_id, script = script.name, "dispatching to Messages");
        match self.runner.run(script, &[&cmd.text, &target]).await {
            RunOutcome::Accepted => self
                .confirm(&cmd, before, CONFIRM_WINDOW)
                .await
                .unwrap_or_else(|| {
                    unknown(
                        &cmd,
                        "Messages accepted the send but wrote no matching row in time; check the phone before retrying",
                    )
                }),
            RunOutcome::MayHaveCompleted(why) => {
                tracing::warn!("send may have completed: {why}");
                self.confirm(&cmd, before, CONFIRM_WINDOW)
                    .await
                    .unwrap_or_else(|| unknown(&cmd, &format!("{why}; check the phone before retrying")))
            }
            RunOutcome::NotStarted(err) => {
                let message = err.explain(self.runner.program());
                if err.is_automation_denied() {
                    tracing::error!("{message}");
                }
                finished(&cmd, SendState::Failed, Some((&err.code_name(), &message)))
            }
        }
    }

    /// Picks the script and its target argument. An existing chat is always
    /// addressed by its exact GUID; a handle without a chat goes through the
    /// iMessage account's participant.
    async fn target(
        &self,
        cmd: &CmdSend,
    ) -> Result<(scripts::Script, String, Option<String>), String> {
        if let Some(chat) = &cmd.chat_guid {
            return Ok((scripts::SEND_TO_CHAT, chat.clone(), Some(chat.clone())));
        }
        let Some(to) = &cmd.to else {
            return Err("the command names neither a chat nor a handle".into());
        };
        let handle = to.handle.clone();
        let chat = self
            .chat_db
            .call(move |db| db.direct_chat_for(&handle))
            .await
            .map_err(|e| e.to_string())?;
        Ok(match chat {
            Some(guid) => (scripts::SEND_TO_CHAT, guid.clone(), Some(guid)),
            None => (scripts::SEND_TO_HANDLE, to.handle.clone(), None),
        })
    }

    /// Waits up to `window` for the from-me row(s) of `cmd` after ROWID
    /// `before`, re-checking whenever chat.db changes.
    async fn confirm(
        &mut self,
        cmd: &CmdSend,
        before: i64,
        window: Duration,
    ) -> Option<SendResult> {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let chat = cmd.chat_guid.clone();
            let handle = cmd.to.as_ref().map(|t| t.handle.clone());
            let rows = self
                .chat_db
                .call(move |db| db.sent_rows_after(before, chat.as_deref(), handle.as_deref()))
                .await;
            match rows {
                Ok(rows) => {
                    let mine: Vec<&MessageRow> = rows
                        .iter()
                        .filter(|r| r.text.as_deref() == Some(cmd.text.as_str()))
                        .collect();
                    if let Some(result) = judge(cmd, &mine) {
                        return Some(result);
                    }
                }
                Err(e) => tracing::warn!("cannot check chat.db for the sent row: {e}"),
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return None,
                _ = self.db_changed.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}

/// The result the matching rows add up to, or `None` to keep waiting.
fn judge(cmd: &CmdSend, rows: &[&MessageRow]) -> Option<SendResult> {
    let first = rows.first()?;
    let guids = rows.iter().map(|r| r.guid.clone()).collect();
    if let Some(failed) = rows.iter().find(|r| r.error != 0) {
        return Some(SendResult {
            client_msg_id: cmd.client_msg_id.clone(),
            state: SendState::Failed,
            guids,
            service: failed.service.clone(),
            error: Some(ErrorInfo {
                code: format!("messages_error_{}", failed.error),
                message: format!("Messages reported error {} for this send", failed.error),
            }),
        });
    }
    Some(SendResult {
        client_msg_id: cmd.client_msg_id.clone(),
        state: SendState::Sent,
        guids,
        service: first.service.clone(),
        error: None,
    })
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

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
