//! The constant AppleScript programs the daemon runs through `osascript -`.
//!
//! Every script is a file in `applescript/`, embedded at build time, and fed to
//! `osascript` on stdin. Message data only ever travels as process arguments to
//! the script's `on run argv` handler, so no text can be parsed as code.

/// A script we run, with the arguments it expects in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Script {
    /// Short stable name, used in logs and by the simulator.
    pub name: &'static str,
    /// The AppleScript source, exactly as shipped in `applescript/`.
    pub source: &'static str,
}

/// Text to an existing chat by its exact `chat.guid`. Arguments: text, chat guid.
pub const SEND_TO_CHAT: Script = Script {
    name: "send_to_chat",
    source: include_str!("../../applescript/send_to_chat.applescript"),
};

/// Text to a handle through the iMessage account. Arguments: text, handle.
pub const SEND_TO_HANDLE: Script = Script {
    name: "send_to_handle",
    source: include_str!("../../applescript/send_to_handle.applescript"),
};

/// A harmless Apple event to Messages, to test the Automation grant. No arguments.
pub const PROBE_MESSAGES: Script = Script {
    name: "probe_messages",
    source: include_str!("../../applescript/probe_messages.applescript"),
};

/// Every script the daemon may run; the simulator refuses anything else.
pub const ALL: &[Script] = &[SEND_TO_CHAT, SEND_TO_HANDLE, PROBE_MESSAGES];

/// The script whose source is exactly `source`, if it is one of ours.
pub fn identify(source: &str) -> Option<Script> {
    ALL.iter().copied().find(|s| s.source == source)
}
