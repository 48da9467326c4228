//! Who is connected right now: one entry per device with an open session.
//!
//! The hub is the only in-memory state shared between HTTP handlers and
//! device sessions. It lets a handler wake a session after queuing a command
//! ([`Hub::pump`]), close a device's socket with a code ([`Hub::close`]), and
//! tell whether an account is Active ([`Hub::live_since`]). Newest wins: a
//! second session of the same device replaces the first, which is told to
//! close with 4409. Everything durable is in the database; after a restart
//! the hub is simply empty and every account reads Disconnected until its
//! device reconnects.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use whatsnap_proto::close::{self, CloseReason};

/// What a handler asks of a running session.
#[derive(Debug)]
pub(crate) enum Ctl {
    /// Close the socket with this code and JSON reason text.
    Close {
        /// The close code.
        code: u16,
        /// The reason text (`CloseReason::to_reason_text`).
        reason: String,
    },
    /// New commands are stored for this device: push what the window allows.
    Pump,
}

struct Live {
    session: u64,
    tx: mpsc::UnboundedSender<Ctl>,
    /// Set when the session completed `welcome`: the account is Active since then.
    welcomed_ms: Option<i64>,
}

/// The registry of open device sessions.
#[derive(Default)]
pub(crate) struct Hub {
    next_session: AtomicU64,
    live: Mutex<HashMap<String, Live>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        // Entries are plain data; a panic elsewhere cannot leave them half-written.
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a new session of `device_id` and tells the previous one, if
    /// any, to close with 4409. Returns the new session's number.
    pub(crate) fn register(&self, device_id: &str, tx: mpsc::UnboundedSender<Ctl>) -> u64 {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let old = self.lock().insert(
            device_id.to_owned(),
            Live {
                session,
                tx,
                welcomed_ms: None,
            },
        );
        if let Some(old) = old {
            let reason = CloseReason::new(
                close::REPLACED,
                "a newer connection of this device took over",
            );
            let _ = old.tx.send(Ctl::Close {
                code: close::REPLACED,
                reason: reason.to_reason_text(),
            });
        }
        session
    }

    /// Removes the session if it is still the device's current one; returns
    /// whether it was (only then does its end change the account's status).
    pub(crate) fn unregister(&self, device_id: &str, session: u64) -> bool {
        let mut live = self.lock();
        if live.get(device_id).is_some_and(|l| l.session == session) {
            live.remove(device_id);
            true
        } else {
            false
        }
    }

    /// Marks the session as past `welcome`.
    pub(crate) fn welcomed(&self, device_id: &str, session: u64, now: i64) -> bool {
        match self.lock().get_mut(device_id) {
            Some(l) if l.session == session => {
                l.welcomed_ms = Some(now);
                true
            }
            _ => false,
        }
    }

    /// When the device's open session completed `welcome`, if it has one.
    pub(crate) fn live_since(&self, device_id: &str) -> Option<i64> {
        self.lock().get(device_id).and_then(|l| l.welcomed_ms)
    }

    /// Wakes the device's session to push newly stored commands.
    pub(crate) fn pump(&self, device_id: &str) {
        if let Some(l) = self.lock().get(device_id) {
            let _ = l.tx.send(Ctl::Pump);
        }
    }

    /// Closes the device's open session, if any.
    pub(crate) fn close(&self, device_id: &str, code: u16, message: &str) {
        if let Some(l) = self.lock().get(device_id) {
            let _ = l.tx.send(Ctl::Close {
                code,
                reason: CloseReason::new(code, message).to_reason_text(),
            });
        }
    }
}
