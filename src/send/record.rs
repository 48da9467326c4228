//! The plain data of the send state machine that the store persists: who
//! asked for a send, how far it got, the attempt about to be dispatched, and
//! the counts pacing and `status` read.
//!
//! They live here, with the sender, because the store module exports only
//! what the link needs; `crate::store` reads and writes them.

use serde::{Deserialize, Serialize};

/// How long after dispatch a not-from-me copy of our text counts as an echo.
pub const ECHO_WINDOW_MS: i64 = 15_000;

/// Who asked for a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendSource {
    /// A `cmd.send` from the service: its result goes into the outbox.
    Service,
    /// `whatsnap-mac send`: its result is printed, never sent to the service.
    Cli,
}

impl SendSource {
    /// The value stored in `sends.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            SendSource::Service => "service",
            SendSource::Cli => "cli",
        }
    }
}

/// How far a send got, stored as JSON so a restart resumes exactly there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendProgress {
    /// Index of the part in flight (0 = the first of text, files...).
    pub part: usize,
    /// The service the attempt in flight goes through (`iMessage`/`SMS`),
    /// `None` when addressed by chat GUID and the chat decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// How the attempt in flight addresses Messages (`chat` or `handle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// GUIDs of every row the finished parts and attempts produced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guids: Vec<String>,
    /// The service that carried the finished parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    /// An SMS fallback was started for the part in flight.
    #[serde(default)]
    pub fell_back: bool,
    /// SMS fallbacks started for this send so far (never reset), so the
    /// reader may tie the fallback's row to the send as well.
    #[serde(default)]
    pub fallbacks: u32,
}

/// One attempt about to be handed to Messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt<'a> {
    /// chat.db `MAX(ROWID)` just before.
    pub max_rowid_before: i64,
    /// The chat it goes to, when known.
    pub target_chat: Option<&'a str>,
    /// The one-to-one handle it goes to, when it goes to a person.
    pub target_handle: Option<&'a str>,
    /// It starts a conversation with a handle that had none.
    pub new_handle: bool,
    /// Part, service and GUIDs so far.
    pub progress: &'a SendProgress,
}

/// What [`Store::accept_dispatching`](crate::store::Store::accept_dispatching)
/// did with a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// Accepted and its first attempt begun, in one commit: dispatch it now.
    Began,
    /// The seq was refused (a duplicate or a gap); answer as told. Nothing
    /// was written.
    Refused(crate::store::Accepted),
    /// It cannot begin at once (another send is ahead, or the id is known):
    /// nothing was written; accept it the ordinary way.
    Wait,
}

/// How many sends wait, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    /// Waiting for their turn (or for the hourly limits).
    pub queued: u64,
    /// Handed to Messages, confirmation pending.
    pub dispatching: u64,
}

/// Dispatches in a time window, for pacing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchCounts {
    /// Sends dispatched in the window.
    pub sends: u32,
    /// Of those, sends that started a conversation with a new handle.
    pub new_handles: u32,
    /// Unix ms of the oldest send in the window.
    pub oldest_ms: Option<i64>,
    /// Unix ms of the oldest new-handle send in the window.
    pub oldest_new_handle_ms: Option<i64>,
}
