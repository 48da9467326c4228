//! Websocket close codes of protocol v1 and the JSON reason that goes with them.
//!
//! The service closes a session with one of these codes and a short JSON
//! reason (`{code, message, retry_after_ms?}`); the daemon decides from the
//! code alone whether to reconnect, wait, or stop and tell the user.

use serde::{Deserialize, Serialize};

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// The peer is going away (shutdown).
pub const GOING_AWAY: u16 = 1001;
/// A frame was larger than `max_frame_bytes`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The service is restarting; reconnect after a short random wait.
pub const SERVICE_RESTART: u16 = 1012;
/// `hello` missing, late (10 s) or malformed.
pub const MALFORMED_HELLO: u16 = 4400;
/// Device token invalid or revoked: terminal until `whatsnap-mac pair`.
pub const UNAUTHORIZED: u16 = 4401;
/// Device disabled by an admin: terminal.
pub const FORBIDDEN: u16 = 4403;
/// A newer connection of the same device replaced this one: terminal.
pub const REPLACED: u16 = 4409;
/// No protocol version in common: the daemon must be updated.
pub const UNSUPPORTED_VERSION: u16 = 4426;
/// Rate limited: wait `retry_after_ms` before reconnecting.
pub const RATE_LIMITED: u16 = 4429;

/// What the daemon should do after a close with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Reconnect with the usual backoff.
    Reconnect,
    /// Stop reconnecting: pairing is needed again (4401, 4403).
    NeedsPairing,
    /// Stop: another process of this device took over (4409).
    Replaced,
    /// Stop: the daemon must be updated (4426).
    NeedsUpdate,
}

/// The action a close code calls for.
pub fn action_for(code: u16) -> CloseAction {
    match code {
        UNAUTHORIZED | FORBIDDEN => CloseAction::NeedsPairing,
        REPLACED => CloseAction::Replaced,
        UNSUPPORTED_VERSION => CloseAction::NeedsUpdate,
        _ => CloseAction::Reconnect,
    }
}

/// The JSON text of a close frame's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseReason {
    /// The same number as the close code.
    pub code: u16,
    /// Short human text (a close reason is at most 123 bytes).
    pub message: String,
    /// For 4429: how long to wait before reconnecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl CloseReason {
    /// A reason with no retry hint.
    pub fn new(code: u16, message: &str) -> Self {
        CloseReason {
            code,
            message: message.to_owned(),
            retry_after_ms: None,
        }
    }

    /// The JSON text, cut to fit the 123-byte limit of a close reason.
    pub fn to_reason_text(&self) -> String {
        let mut reason = self.clone();
        loop {
            let text = serde_json::to_string(&reason).unwrap_or_default();
            if text.len() <= 123 || reason.message.is_empty() {
                return text;
            }
            let mut cut = reason.message.len().saturating_sub(text.len() - 123);
            while !reason.message.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.message.truncate(cut);
        }
    }

    /// Parses a close reason; `None` if it is not our JSON.
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_codes_stop_reconnecting() {
        assert_eq!(action_for(UNAUTHORIZED), CloseAction::NeedsPairing);
        assert_eq!(action_for(FORBIDDEN), CloseAction::NeedsPairing);
        assert_eq!(action_for(REPLACED), CloseAction::Replaced);
        assert_eq!(action_for(UNSUPPORTED_VERSION), CloseAction::NeedsUpdate);
        assert_eq!(action_for(SERVICE_RESTART), CloseAction::Reconnect);
        assert_eq!(action_for(RATE_LIMITED), CloseAction::Reconnect);
    }

    #[test]
    fn long_reasons_fit_in_a_close_frame() {
        let reason = CloseReason::new(UNAUTHORIZED, &"é".repeat(200));
        let text = reason.to_reason_text();
        assert!(text.len() <= 123, "{} bytes", text.len());
        let parsed = CloseReason::parse(&text).expect("still JSON");
        assert_eq!(parsed.code, UNAUTHORIZED);
    }
}
