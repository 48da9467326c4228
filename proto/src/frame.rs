//! Every websocket frame of protocol v1: the envelope and each `type`'s data.
//!
//! A frame on the wire is one JSON text:
//! `{"v":1,"type":"event.message","id":"…","seq":1042,"ts":1732500000123,"data":{…}}`.
//! [`Frame`] is the envelope with a typed [`Body`]; [`decode`] turns text into
//! a frame in two steps (envelope first, then `data` by `type`) so that a bad
//! frame still yields its `id` and `seq` for the error answer and the ack.
//!
//! Serialization is canonical: optional fields are omitted when absent, lists
//! when empty and flags when false. The examples in `docs/protocol.md` are
//! written in that form and tests check both directions.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::PROTOCOL_VERSION;

/// One frame: envelope fields plus the typed body.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Unique per frame; used in logs and in `reply_to`.
    pub id: String,
    /// Present on durable frames only: gap-free per stream and epoch.
    pub seq: Option<u64>,
    /// The `id` of the frame this one answers.
    pub reply_to: Option<String>,
    /// Sender clock, Unix milliseconds (informational).
    pub ts: i64,
    /// The `type` and `data`.
    pub body: Body,
}

/// The two durable streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Daemon → service: chat.db events and send results.
    Events,
    /// Service → daemon: sends and other commands.
    Commands,
}

macro_rules! bodies {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty) = $name:literal, $stream:expr; )*) => {
        /// The `type` of a frame together with its `data`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Body {
            $( $(#[$doc])* $variant($ty), )*
        }

        /// Every frame type name of protocol v1.
        pub const FRAME_TYPES: &[&str] = &[$($name),*];

        impl Body {
            /// The wire name, e.g. `event.message`.
            pub fn type_name(&self) -> &'static str {
                match self { $( Body::$variant(_) => $name, )* }
            }

            /// The durable stream this type travels on; `None` if ephemeral.
            pub fn stream(&self) -> Option<Stream> {
                match self { $( Body::$variant(_) => $stream, )* }
            }

            fn data_value(&self) -> Result<Value, serde_json::Error> {
                match self { $( Body::$variant(d) => serde_json::to_value(d), )* }
            }

            /// The durable stream of the type named `ty`; `None` if ephemeral
            /// or unknown. For frames whose `data` did not decode.
            pub fn stream_of(ty: &str) -> Option<Stream> {
                match ty { $( $name => $stream, )* _ => None }
            }

            /// Writes the `data` object as JSON text, straight from the
            /// typed struct (no intermediate [`Value`]).
            fn write_data(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
                match self { $( Body::$variant(d) => serde_json::to_writer(out, d), )* }
            }

            /// The body of type `ty` from its `data` JSON text, as stored by
            /// a sender's outbox. `Ok(None)` for a type this version does
            /// not know.
            pub fn from_data_json(ty: &str, data: &str) -> Result<Option<Body>, serde_json::Error> {
                match ty {
                    $( $name => serde_json::from_str::<$ty>(data).map(|d| Some(Body::$variant(d))), )*
                    _ => Ok(None),
                }
            }

            /// Reads the `data` value of an envelope whose `type` was already
            /// seen, typed, from the parser. `Ok(None)` for an unknown type
            /// (the value is then skipped).
            fn next_data<'de, A: serde::de::MapAccess<'de>>(
                ty: &str,
                map: &mut A,
            ) -> Result<Option<Body>, A::Error> {
                match ty {
                    $( $name => map.next_value::<$ty>().map(|d| Some(Body::$variant(d))), )*
                    _ => map.next_value::<serde::de::IgnoredAny>().map(|_| None),
                }
            }

            /// `Ok(None)` for a type this version does not know.
            fn from_parts(ty: &str, data: Value) -> Result<Option<Body>, serde_json::Error> {
                match ty {
                    $( $name => data_as::<$ty>(data).map(|d| Some(Body::$variant(d))), )*
                    _ => Ok(None),
                }
            }
        }
    };
}

const EVENTS: Option<Stream> = Some(Stream::Events);
const COMMANDS: Option<Stream> = Some(Stream::Commands);
const EPHEMERAL: Option<Stream> = None;

bodies! {
    /// Daemon's first frame.
    Hello(Hello) = "hello", EPHEMERAL;
    /// Service's answer to `hello`.
    Welcome(Welcome) = "welcome", EPHEMERAL;
    /// Cumulative acknowledgement of a durable stream.
    Ack(Ack) = "ack", EPHEMERAL;
    /// Daemon health report.
    Status(Status) = "status", EPHEMERAL;
    /// Service asks for a `status` now.
    StatusRequest(Empty) = "status.request", EPHEMERAL;
    /// Someone is typing in a chat.
    Typing(Typing) = "typing", EPHEMERAL;
    /// Application-level ping (service → daemon).
    Ping(Ping) = "ping", EPHEMERAL;
    /// Answer to `ping`.
    Pong(Pong) = "pong", EPHEMERAL;
    /// A frame could not be accepted.
    Error(ErrorData) = "error", EPHEMERAL;
    /// A new chat.db row.
    EventMessage(EventMessage) = "event.message", EVENTS;
    /// A change to a message already announced.
    EventMessageUpdate(EventMessageUpdate) = "event.message_update", EVENTS;
    /// A tapback added or removed.
    EventReaction(EventReaction) = "event.reaction", EVENTS;
    /// A group chat changed: renamed, a member added, removed or gone, its photo.
    EventGroup(EventGroup) = "event.group", EVENTS;
    /// The outcome of a `cmd.send`.
    SendResult(SendResult) = "send.result", EVENTS;
    /// End of a backfill page.
    BackfillDone(BackfillDone) = "backfill.done", EVENTS;
    /// The daemon applied a settings version.
    SettingsApplied(SettingsApplied) = "settings.applied", EVENTS;
    /// Send a text (and files) through Messages.
    CmdSend(CmdSend) = "cmd.send", COMMANDS;
    /// Mark a chat read.
    CmdMarkRead(CmdMarkRead) = "cmd.mark_read", COMMANDS;
    /// Re-read history.
    CmdBackfill(CmdBackfill) = "cmd.backfill", COMMANDS;
    /// A new settings version for this device.
    Settings(SettingsData) = "settings", COMMANDS;
}

fn data_as<T: DeserializeOwned>(data: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(data)
}

/// Why a text could not be read as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all.
    #[error("frame is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an envelope (missing or mistyped `v`, `type`, `id`, `ts`).
    #[error("frame is not a protocol envelope: {detail}")]
    NotEnvelope {
        /// What is wrong.
        detail: String,
        /// The frame's `id`, when it could be read.
        id: Option<String>,
    },
    /// An envelope of a major version we do not speak.
    #[error("frame has protocol version {v}; this build speaks version 1")]
    UnsupportedVersion {
        /// The version found.
        v: u64,
        /// The frame's `id`.
        id: String,
    },
    /// A `type` this version does not know.
    #[error("unknown frame type {ty:?}")]
    UnknownType {
        /// The type found.
        ty: String,
        /// The frame's `id`.
        id: String,
        /// The frame's `seq`: a durable unknown frame is still acked.
        seq: Option<u64>,
    },
    /// A known `type` whose `data` does not fit it.
    #[error("{ty} frame has invalid data: {detail}")]
    BadData {
        /// The type.
        ty: String,
        /// The frame's `id`.
        id: String,
        /// The frame's `seq`.
        seq: Option<u64>,
        /// What is wrong.
        detail: String,
    },
}

impl DecodeError {
    /// The `code` of the `error` frame that answers this.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => error_code::BAD_JSON,
            DecodeError::NotEnvelope { .. } => error_code::BAD_ENVELOPE,
            DecodeError::UnsupportedVersion { .. } => error_code::UNSUPPORTED_VERSION,
            DecodeError::UnknownType { .. } => error_code::UNKNOWN_TYPE,
            DecodeError::BadData { .. } => error_code::BAD_DATA,
        }
    }

    /// The id of the offending frame, when it could be read.
    pub fn frame_id(&self) -> Option<&str> {
        match self {
            DecodeError::NotJson(_) => None,
            DecodeError::NotEnvelope { id, .. } => id.as_deref(),
            DecodeError::UnsupportedVersion { id, .. }
            | DecodeError::UnknownType { id, .. }
            | DecodeError::BadData { id, .. } => Some(id),
        }
    }

    /// The `error` frame body that answers this.
    pub fn to_error_body(&self) -> Body {
        Body::Error(ErrorData {
            reply_to: self.frame_id().map(str::to_owned),
            code: self.code().to_owned(),
            message: self.to_string(),
        })
    }
}

/// `code` values of `error` frames.
pub mod error_code {
    /// The text was not JSON.
    pub const BAD_JSON: &str = "bad_json";
    /// JSON, but not an envelope.
    pub const BAD_ENVELOPE: &str = "bad_envelope";
    /// Wrong major version.
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    /// Unknown `type`.
    pub const UNKNOWN_TYPE: &str = "unknown_type";
    /// Known `type`, invalid `data`.
    pub const BAD_DATA: &str = "bad_data";
    /// A frame other than `hello` before `welcome`.
    pub const BEFORE_WELCOME: &str = "before_welcome";
    /// A durable frame whose `seq` skipped ahead.
    pub const SEQ_GAP: &str = "seq_gap";
    /// A durable type sent without `seq`, or an ephemeral one with it.
    pub const BAD_SEQ: &str = "bad_seq";
}

#[derive(Deserialize)]
struct RawEnvelope {
    v: Value,
    #[serde(rename = "type")]
    ty: Value,
    id: Value,
    #[serde(default)]
    seq: Option<Value>,
    #[serde(default)]
    reply_to: Option<Value>,
    ts: Value,
    #[serde(default)]
    data: Option<Value>,
}

/// Reads one frame from its JSON text.
pub fn decode(text: &str) -> Result<Frame, DecodeError> {
    // Valid frames take the one-pass path; anything it does not accept is
    // read again by the general path, which says precisely what is wrong.
    if let Ok(Fast(Some(frame))) = serde_json::from_str::<Fast>(text) {
        return Ok(frame);
    }
    decode_general(text)
}

/// The result of the one-pass decoder: `None` when the frame is not a valid
/// frame of a known type (the general path then explains why).
struct Fast(Option<Frame>);

impl<'de> Deserialize<'de> for Fast {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fast, D::Error> {
        d.deserialize_map(FastVisitor)
    }
}

struct FastVisitor;

/// An envelope key, read without allocating.
enum Key {
    V,
    Type,
    Id,
    Ts,
    Seq,
    ReplyTo,
    Data,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    "v" => Key::V,
                    "type" => Key::Type,
                    "id" => Key::Id,
                    "ts" => Key::Ts,
                    "seq" => Key::Seq,
                    "reply_to" => Key::ReplyTo,
                    "data" => Key::Data,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> serde::de::Visitor<'de> for FastVisitor {
    type Value = Fast;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a frame envelope")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Fast, A::Error> {
        let (mut v, mut ty, mut id, mut ts) = (None, None::<String>, None::<String>, None);
        let (mut seq, mut reply_to) = (None::<Option<u64>>, None::<Option<String>>);
        // `data` parsed typed when `type` came first (as this crate writes
        // it), else kept as a value until the end.
        let mut body = None::<Body>;
        let mut raw_data = None::<Value>;
        let mut valid = true;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::V => v = map.next_value::<Value>()?.as_u64(),
                Key::Type => {
                    // A second `type` could contradict typed `data`.
                    valid &= ty.is_none();
                    ty = map.next_value::<Option<String>>()?;
                }
                Key::Id => id = map.next_value::<Option<String>>()?,
                Key::Ts => ts = map.next_value::<Value>()?.as_i64(),
                Key::Seq => {
                    seq = Some(match map.next_value::<Value>()? {
                        Value::Null => None,
                        n => n.as_u64().filter(|s| *s > 0).or_else(|| {
                            valid = false;
                            None
                        }),
                    });
                }
                Key::ReplyTo => reply_to = Some(map.next_value::<Option<String>>()?),
                Key::Data => match ty.as_deref() {
                    Some(t) if body.is_none() && raw_data.is_none() => {
                        match Body::next_data(t, &mut map)? {
                            Some(b) => body = Some(b),
                            None => valid = false,
                        }
                    }
                    _ => {
                        body = None;
                        raw_data = Some(map.next_value::<Value>()?);
                    }
                },
                Key::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let (Some(ty), Some(id), Some(ts), Some(1)) = (ty, id, ts, v) else {
            return Ok(Fast(None));
        };
        if !valid || id.is_empty() {
            return Ok(Fast(None));
        }
        let body = match (body, raw_data) {
            (Some(b), None) => b,
            (None, raw) => {
                let data = match raw {
                    None | Some(Value::Null) => Value::Object(Map::new()),
                    Some(d) => d,
                };
                match Body::from_parts(&ty, data) {
                    Ok(Some(b)) => b,
                    _ => return Ok(Fast(None)),
                }
            }
            (Some(_), Some(_)) => return Ok(Fast(None)),
        };
        Ok(Fast(Some(Frame {
            id,
            seq: seq.flatten(),
            reply_to: reply_to.flatten(),
            ts,
            body,
        })))
    }
}

fn decode_general(text: &str) -> Result<Frame, DecodeError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let id_hint = value.get("id").and_then(Value::as_str).map(str::to_owned);
    let bad_envelope = |detail: String| DecodeError::NotEnvelope {
        detail,
        id: id_hint.clone(),
    };
    let raw: RawEnvelope =
        serde_json::from_value(value).map_err(|e| bad_envelope(e.to_string()))?;
    let id = match raw.id {
        Value::String(s) if !s.is_empty() => s,
        _ => return Err(bad_envelope("`id` must be a non-empty string".into())),
    };
    let v = raw
        .v
        .as_u64()
        .ok_or_else(|| bad_envelope("`v` must be a positive integer".into()))?;
    if v != u64::from(PROTOCOL_VERSION) {
        return Err(DecodeError::UnsupportedVersion { v, id });
    }
    let ty = match raw.ty {
        Value::String(s) => s,
        _ => return Err(bad_envelope("`type` must be a string".into())),
    };
    let ts = raw
        .ts
        .as_i64()
        .ok_or_else(|| bad_envelope("`ts` must be an integer (Unix ms)".into()))?;
    let seq = match raw.seq {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|s| *s > 0)
                .ok_or_else(|| bad_envelope("`seq` must be a positive integer".into()))?,
        ),
    };
    let reply_to = match raw.reply_to {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad_envelope("`reply_to` must be a string".into())),
    };
    let data = match raw.data {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(d) => d,
    };
    let body = match Body::from_parts(&ty, data) {
        Ok(Some(body)) => body,
        Ok(None) => return Err(DecodeError::UnknownType { ty, id, seq }),
        Err(e) => {
            return Err(DecodeError::BadData {
                ty,
                id,
                seq,
                detail: e.to_string(),
            });
        }
    };
    Ok(Frame {
        id,
        seq,
        reply_to,
        ts,
        body,
    })
}

impl Frame {
    /// A frame with a fresh id, stamped now by the caller's clock.
    pub fn new(body: Body, ts: i64) -> Frame {
        Frame {
            id: crate::new_frame_id(),
            seq: None,
            reply_to: None,
            ts,
            body,
        }
    }

    /// The same frame answering `id`.
    #[must_use]
    pub fn replying_to(mut self, id: &str) -> Frame {
        self.reply_to = Some(id.to_owned());
        self
    }

    /// The same frame with a durable sequence number.
    #[must_use]
    pub fn with_seq(mut self, seq: u64) -> Frame {
        self.seq = Some(seq);
        self
    }

    /// The frame as a JSON value, in canonical form.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("v".into(), Value::from(PROTOCOL_VERSION));
        map.insert("type".into(), Value::from(self.body.type_name()));
        map.insert("id".into(), Value::from(self.id.clone()));
        if let Some(seq) = self.seq {
            map.insert("seq".into(), Value::from(seq));
        }
        if let Some(reply_to) = &self.reply_to {
            map.insert("reply_to".into(), Value::from(reply_to.clone()));
        }
        map.insert("ts".into(), Value::from(self.ts));
        // Serializing plain structs of strings, numbers and maps cannot fail.
        let data = self
            .body
            .data_value()
            .unwrap_or_else(|_| Value::Object(Map::new()));
        map.insert("data".into(), data);
        Value::Object(map)
    }

    /// The frame as JSON text, ready to send: the same object as
    /// [`Frame::to_value`], written in one pass with `type` before `data` so
    /// that [`decode`] reads it in one pass too.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"v\":");
        out.extend_from_slice(PROTOCOL_VERSION.to_string().as_bytes());
        out.extend_from_slice(b",\"type\":");
        push_json_str(&mut out, self.body.type_name());
        out.extend_from_slice(b",\"id\":");
        push_json_str(&mut out, &self.id);
        if let Some(seq) = self.seq {
            out.extend_from_slice(b",\"seq\":");
            out.extend_from_slice(seq.to_string().as_bytes());
        }
        if let Some(reply_to) = &self.reply_to {
            out.extend_from_slice(b",\"reply_to\":");
            push_json_str(&mut out, reply_to);
        }
        out.extend_from_slice(b",\"ts\":");
        out.extend_from_slice(self.ts.to_string().as_bytes());
        out.extend_from_slice(b",\"data\":");
        let mark = out.len();
        if self.body.write_data(&mut out).is_err() {
            // Serializing plain structs of strings, numbers and maps cannot
            // fail; should it, the frame still goes out, as `to_value` would.
            out.truncate(mark);
            out.extend_from_slice(b"{}");
        }
        out.push(b'}');
        // serde_json writes UTF-8 only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// The text of durable frame `seq` whose `data` is already JSON text (as
    /// an outbox stores it), without parsing and re-serializing the data.
    /// `data` must be one JSON object written by this crate's types; the
    /// receiver reads it back with [`decode`] (or [`Body::from_data_json`]).
    pub fn durable_json(ty: &str, id: &str, seq: u64, ts: i64, data: &str) -> String {
        let mut out = Vec::with_capacity(64 + ty.len() + id.len() + data.len());
        out.extend_from_slice(b"{\"v\":");
        out.extend_from_slice(PROTOCOL_VERSION.to_string().as_bytes());
        out.extend_from_slice(b",\"type\":");
        push_json_str(&mut out, ty);
        out.extend_from_slice(b",\"id\":");
        push_json_str(&mut out, id);
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(seq.to_string().as_bytes());
        out.extend_from_slice(b",\"ts\":");
        out.extend_from_slice(ts.to_string().as_bytes());
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data.as_bytes());
        out.push(b'}');
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

/// `hello`: the daemon introduces itself and where its streams stand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Given by the service at pairing.
    pub device_id: String,
    /// `whatsnap-mac` version.
    pub daemon_version: String,
    /// e.g. `15.5`; `unknown` when it cannot be read.
    pub macos_version: String,
    /// Major versions the daemon speaks.
    pub protocols: Vec<u32>,
    /// The daemon's event outbox.
    pub events: HelloEvents,
    /// What the daemon has durably processed of the command stream.
    pub commands: HelloCommands,
    /// Version of the settings the daemon has applied (0: none).
    #[serde(default)]
    pub settings_version: u64,
    /// Optional features the daemon supports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Health at connect time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Status>,
}

/// The daemon's side of the event stream in `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloEvents {
    /// Random id created with the daemon's outbox.
    pub epoch: String,
    /// Highest seq ever assigned (0: none yet).
    pub last_seq: u64,
}

/// The daemon's side of the command stream in `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloCommands {
    /// The command epoch the daemon last saw; empty before the first welcome.
    #[serde(default)]
    pub epoch: String,
    /// Highest command seq durably processed (0: none).
    pub acked_upto: u64,
}

/// `welcome`: the service accepts the session and says where its streams stand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// Id of this session, for logs.
    pub session_id: String,
    /// The account this device belongs to.
    pub account_id: String,
    /// Its display name.
    pub account_name: String,
    /// Its tag, e.g. `whatsnap-account-Mike`.
    pub account_tag: String,
    /// How much of the daemon's event stream the service has committed.
    pub events: WelcomeEvents,
    /// The service's command stream.
    pub commands: WelcomeCommands,
    /// Daemon ping interval.
    pub heartbeat_ms: u64,
    /// Silence after which the daemon treats the link as dead.
    pub idle_timeout_ms: u64,
    /// Largest frame the service accepts.
    pub max_frame_bytes: u64,
    /// Most unacked events the daemon may have in flight.
    pub events_window: u64,
    /// Most unacked commands the service will have in flight.
    pub commands_window: u64,
    /// Service clock, Unix ms (for skew).
    pub server_time: i64,
    /// Full settings, when the service's version is newer than the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<SettingsData>,
}

/// The service's view of the event stream in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeEvents {
    /// The epoch the service has committed against (the daemon's, echoed).
    pub epoch: String,
    /// Highest event seq committed in that epoch (0 if the epoch is new).
    pub acked_upto: u64,
}

/// The service's command stream in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeCommands {
    /// Random id created with the service's command store for this device.
    pub epoch: String,
    /// Highest command seq assigned (0: none).
    pub last_seq: u64,
}

/// `ack`: everything up to `upto` in this stream and epoch is durably processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Which stream.
    pub stream: Stream,
    /// Its epoch.
    pub epoch: String,
    /// Cumulative: all seqs ≤ this are done.
    pub upto: u64,
    /// Set after a gap: resend from this seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_from: Option<u64>,
}

/// Data of frames that carry none (`status.request`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `error`: a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorData {
    /// The refused frame's id, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Machine-readable reason, see [`error_code`].
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

/// `ping` (service → daemon, application level).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in `pong`.
    pub nonce: String,
}

/// `pong`: answer to `ping`, with the daemon's clock for RTT and skew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping's nonce.
    pub nonce: String,
    /// Daemon clock, Unix ms.
    pub clock_ms: i64,
}

/// `typing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    /// The chat.
    pub chat_guid: String,
    /// Who is typing.
    pub handle: String,
    /// Started or stopped.
    pub typing: bool,
}

/// Overall health of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Everything works.
    Ok,
    /// Working, with a problem the user should fix (see `detail`).
    Degraded,
    /// Cannot read or send at all.
    Blocked,
}

/// `status`: the daemon's health report (every 60 s and on change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Overall.
    pub health: Health,
    /// What is wrong and how to fix it, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Messages.app running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_app: Option<bool>,
    /// Signed in to iMessage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imessage_signed_in: Option<bool>,
    /// The Mac's own Messages addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
    /// Full Disk Access to chat.db.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fda_granted: Option<bool>,
    /// Automation permission for Messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automation_granted: Option<bool>,
    /// Accessibility permission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessibility_granted: Option<bool>,
    /// chat.db opens and reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chatdb_readable: Option<bool>,
    /// Last time chat.db changed, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_chatdb_change_ms: Option<i64>,
    /// Date of the newest row read, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_row_seen_ms: Option<i64>,
    /// Events not yet acked by the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_depth: Option<u64>,
    /// Sends queued or in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_sends: Option<u64>,
    /// Seconds since the daemon started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    /// `whatsnap-mac` version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_version: Option<String>,
    /// `awake` or `waking`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<String>,
}

impl Status {
    /// A status with only the health set.
    pub fn with_health(health: Health) -> Status {
        Status {
            health,
            detail: None,
            messages_app: None,
            imessage_signed_in: None,
            accounts: Vec::new(),
            fda_granted: None,
            automation_granted: None,
            accessibility_granted: None,
            chatdb_readable: None,
            last_chatdb_change_ms: None,
            last_row_seen_ms: None,
            outbox_depth: None,
            pending_sends: None,
            uptime_s: None,
            daemon_version: None,
            power: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Events (daemon → service, durable)
// ---------------------------------------------------------------------------

/// Whether a chat is one-to-one or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// One-to-one (`;-;`, style 45).
    Direct,
    /// Group (`;+;`, style 43).
    Group,
}

/// What kind of address a handle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandleKind {
    /// E.164 phone number, `+15551234567`.
    Phone,
    /// Lower-case email address.
    Email,
    /// Anything else (short codes, business ids), kept as Messages wrote it.
    Other,
}

/// A person's address, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Handle {
    /// E.164 phone, lower-case email, or the raw id.
    pub handle: String,
    /// Which of those.
    pub kind: HandleKind,
}

/// State of an attachment's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentState {
    /// Uploaded to the service.
    Uploaded,
    /// Not yet on disk (Messages still downloading).
    Pending,
    /// Over the size cap.
    TooLarge,
    /// Gone from disk.
    Missing,
}

/// An attachment of a message, as announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The attachment's GUID in chat.db.
    pub att_id: String,
    /// Original file name.
    pub name: String,
    /// MIME type, when Messages knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of the file, hex, when uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where the file stands.
    pub state: AttachmentState,
}

/// Which `cmd.send` produced a from-me row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The command's idempotency key.
    pub client_msg_id: String,
}

/// `event.message`: a new row in chat.db.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    /// `msg:<guid>`.
    pub event_key: String,
    /// The message GUID.
    pub guid: String,
    /// Its ROWID in chat.db (informational).
    pub rowid: i64,
    /// The exact `chat.guid`.
    pub chat_guid: String,
    /// Direct or group.
    pub chat_kind: ChatKind,
    /// Group name, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,
    /// Other members of the chat (not the Mac's user).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<Handle>,
    /// `iMessage`, `SMS`, `RCS`.
    pub service: String,
    /// Written by the Mac's user (here or on another device).
    #[serde(default, skip_serializing_if = "is_false")]
    pub from_me: bool,
    /// Who sent it (absent on from-me rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Handle>,
    /// For from-me rows: who it went to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<Handle>,
    /// The text; empty for attachment-only messages.
    #[serde(default)]
    pub text: String,
    /// Subject line, rarely set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The message this one replies to inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_guid: Option<String>,
    /// The first message of the thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_originator_guid: Option<String>,
    /// Message time, Unix ms.
    pub date_ms: i64,
    /// Files, in body order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Set when this row is the result of a `cmd.send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Old history (iCloud backfill or `cmd.backfill`), not a live message.
    #[serde(default, skip_serializing_if = "is_false")]
    pub backfill: bool,
    /// The `cmd.backfill` this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill_request_id: Option<String>,
    /// Probably a copy of our own send that macOS wrote as incoming.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspected_echo: bool,
    /// The text was cut to 64 KiB.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

/// What changed in an `event.message_update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateKind {
    /// Delivered to the recipient.
    Delivered,
    /// Read.
    Read,
    /// Audio played.
    Played,
    /// Text edited.
    Edited,
    /// Unsent.
    Unsent,
    /// Failed to send (`error` set).
    Failed,
    /// Carried by another service (e.g. SMS fallback).
    ServiceChanged,
    /// An attachment finished downloading.
    AttachmentReady,
    /// Deleted from the Mac.
    Deleted,
}

/// `event.message_update`: a change to a message already announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMessageUpdate {
    /// `<kind>:<guid>[:<revision>]`.
    pub event_key: String,
    /// The message.
    pub guid: String,
    /// What changed.
    pub kind: UpdateKind,
    /// When, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<i64>,
    /// New text, for edits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Messages' error number, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// New service, for `service_changed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// `event.reaction`: a tapback added or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventReaction {
    /// `react:<reaction guid>`.
    pub event_key: String,
    /// The message reacted to.
    pub target_guid: String,
    /// `love`, `like`, `dislike`, `laugh`, `emphasize`, `question`, `emoji`, `sticker`.
    pub kind: String,
    /// The emoji of an emoji tapback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// The tapback was taken back.
    #[serde(default, skip_serializing_if = "is_false")]
    pub removed: bool,
    /// Who reacted (absent when from me).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Handle>,
}

/// `event.group`: a change to a group chat, from a Messages system row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventGroup {
    /// `group:<guid>`.
    pub event_key: String,
    /// The system row's GUID.
    pub guid: String,
    /// The group's exact `chat.guid`.
    pub chat_guid: String,
    /// What happened.
    pub action: GroupAction,
    /// Who did it; absent when it was the Mac's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Handle>,
    /// The member added or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Handle>,
    /// The new name, for `renamed` (`""`: the name was removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When it happened.
    pub date_ms: i64,
    /// Old history, not a live change.
    #[serde(default, skip_serializing_if = "is_false")]
    pub backfill: bool,
}

/// What changed in a group chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupAction {
    /// The group got a new name (or lost it).
    Renamed,
    /// `member` was added by `actor`.
    MemberAdded,
    /// `member` was removed by `actor`.
    MemberRemoved,
    /// `actor` left the group.
    MemberLeft,
    /// The group photo was set or changed.
    PhotoChanged,
    /// The group photo was removed.
    PhotoRemoved,
}

/// Final state of a `cmd.send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendState {
    /// Messages wrote the from-me row(s).
    Sent,
    /// Definitely not sent.
    Failed,
    /// Dispatched but not confirmed: may have been sent. Never retried.
    Unknown,
    /// Its deadline passed before dispatch.
    Expired,
    /// Refused before dispatch (bad target, too large, not allowed).
    Rejected,
}

/// `{code, message}` of a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Machine-readable.
    pub code: String,
    /// For people.
    pub message: String,
}

/// `send.result`: the outcome of a `cmd.send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResult {
    /// The command's idempotency key.
    pub client_msg_id: String,
    /// Outcome.
    pub state: SendState,
    /// GUIDs of every row the send produced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guids: Vec<String>,
    /// The service that carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Why, when not `sent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// `backfill.done`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillDone {
    /// The request.
    pub request_id: String,
    /// Messages sent for this page.
    pub count: u64,
    /// No more pages.
    pub complete: bool,
    /// Cursor of the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `settings.applied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsApplied {
    /// The version now in force.
    pub version: u64,
    /// Per-key problems.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub errors: Map<String, Value>,
}

// ---------------------------------------------------------------------------
// Commands (service → daemon, durable)
// ---------------------------------------------------------------------------

/// A send's addressee when no chat GUID is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendTo {
    /// E.164 phone or email.
    pub handle: String,
}

/// Which service to send through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServicePref {
    /// The account's setting decides.
    #[default]
    Auto,
    /// iMessage only.
    Imessage,
    /// SMS only.
    Sms,
}

fn is_auto(p: &ServicePref) -> bool {
    *p == ServicePref::Auto
}

/// A file to send, hosted by the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundAttachment {
    /// Short-lived HTTPS link on the service.
    pub url: String,
    /// File name to show.
    pub name: String,
    /// MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// `cmd.send`: send a text (and files) through Messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmdSend {
    /// Idempotency key (`ghl:<id>` or a ULID).
    pub client_msg_id: String,
    /// The addressee, when no chat GUID is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<SendTo>,
    /// The exact chat to send to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_guid: Option<String>,
    /// The text (may be empty when only files are sent).
    #[serde(default)]
    pub text: String,
    /// Files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<OutboundAttachment>,
    /// Service preference.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub service_pref: ServicePref,
    /// Inline reply target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to_guid: Option<String>,
    /// Do not dispatch after this (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

/// `cmd.mark_read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmdMarkRead {
    /// The chat.
    pub chat_guid: String,
    /// Up to which message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to_guid: Option<String>,
}

/// `cmd.backfill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmdBackfill {
    /// Echoed in the answers.
    pub request_id: String,
    /// From, Unix ms.
    pub since_ms: i64,
    /// Until, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    /// Only this chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_guid: Option<String>,
    /// Page size (≤ 500).
    pub limit: u32,
    /// Page cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `settings`: a versioned, complete settings object for this device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsData {
    /// Monotonic version.
    pub version: u64,
    /// All daemon-side keys (unknown keys are kept, not rejected).
    #[serde(default)]
    pub values: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Result<Frame, DecodeError> {
        decode(text)
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let f = frame(
            r#"{"v":1,"type":"ping","id":"a","ts":1,"future":true,"data":{"nonce":"n","extra":[1]}}"#,
        )
        .expect("decodes");
        assert_eq!(f.body, Body::Ping(Ping { nonce: "n".into() }));
    }

    #[test]
    fn unknown_type_keeps_id_and_seq_for_the_answer() {
        let err = frame(r#"{"v":1,"type":"event.hologram","id":"f1","seq":7,"ts":1,"data":{}}"#)
            .expect_err("unknown");
        assert_eq!(
            err,
            DecodeError::UnknownType {
                ty: "event.hologram".into(),
                id: "f1".into(),
                seq: Some(7)
            }
        );
        match err.to_error_body() {
            Body::Error(e) => {
                assert_eq!(e.code, "unknown_type");
                assert_eq!(e.reply_to.as_deref(), Some("f1"));
            }
            other => panic!("expected error body, got {other:?}"),
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases = [
            ("", "bad_json"),
            ("not json", "bad_json"),
            ("[1,2]", "bad_envelope"),
            (r#"{"v":1}"#, "bad_envelope"),
            (r#"{"v":"1","type":"ping","id":"a","ts":1}"#, "bad_envelope"),
            (r#"{"v":1,"type":7,"id":"a","ts":1}"#, "bad_envelope"),
            (r#"{"v":1,"type":"ping","id":"","ts":1}"#, "bad_envelope"),
            (
                r#"{"v":1,"type":"ping","id":"a","ts":1,"seq":0}"#,
                "bad_envelope",
            ),
            (
                r#"{"v":1,"type":"ping","id":"a","ts":1,"seq":-3}"#,
                "bad_envelope",
            ),
            (
                r#"{"v":2,"type":"ping","id":"a","ts":1}"#,
                "unsupported_version",
            ),
            (
                r#"{"v":1,"type":"ping","id":"a","ts":1,"data":{}}"#,
                "bad_data",
            ),
            (
                r#"{"v":1,"type":"cmd.send","id":"a","seq":1,"ts":1,"data":{"text":5}}"#,
                "bad_data",
            ),
        ];
        for (text, code) in cases {
            let err = frame(text).expect_err(text);
            assert_eq!(err.code(), code, "{text}: {err}");
        }
    }

    #[test]
    fn missing_data_reads_as_empty_object() {
        let f = frame(r#"{"v":1,"type":"status.request","id":"a","ts":1}"#).expect("decodes");
        assert_eq!(f.body, Body::StatusRequest(Empty {}));
    }

    #[test]
    fn durable_types_name_their_stream() {
        let send = Body::CmdSend(CmdSend {
            client_msg_id: "c".into(),
            to: None,
            chat_guid: Some("iMessage;-;+15551234567".into()),
            text: "hi".into(),
            attachments: vec![],
            service_pref: ServicePref::Auto,
            reply_to_guid: None,
            expires_at_ms: None,
        });
        assert_eq!(send.stream(), Some(Stream::Commands));
        assert_eq!(Body::StatusRequest(Empty {}).stream(), None);
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let f = Frame::new(
            Body::Ack(Ack {
                stream: Stream::Events,
                epoch: "e".into(),
                upto: 4,
                resend_from: None,
            }),
            99,
        )
        .replying_to("x");
        assert_eq!(decode(&f.to_json()).expect("decodes"), f);
    }

    fn settings_applied(errors: &[(&str, &str)]) -> Body {
        Body::SettingsApplied(SettingsApplied {
            version: 3,
            errors: errors
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect(),
        })
    }

    /// The one-pass reader is only a shortcut: whatever the key order,
    /// spelling or validity, it must end where the general reader does.
    #[test]
    fn one_pass_and_general_decoding_agree() {
        let texts = [
            r#"{"v":1,"type":"ping","id":"a","ts":1,"data":{"nonce":"n"}}"#,
            r#"{"data":{"nonce":"n"},"id":"a","ts":1,"type":"ping","v":1}"#,
            r#"{"v":1,"type":"ping","id":"a","ts":1,"seq":null,"reply_to":null,"data":{"nonce":"n"}}"#,
            r#"{"v":1,"type":"ping","id":"a","ts":1,"data":{"nonce":"n"}}"#,
            r#"{"v":1,"type":"status.request","id":"a","ts":1,"data":null}"#,
            r#"{"v":1,"type":"settings.applied","id":"a","seq":9,"ts":1,"data":{"version":3,"errors":{"k":"why \"quoted\""}}}"#,
            r#"{"v":1,"type":"ping","id":"a","ts":1,"data":{"nonce":"n"},"data":{"nonce":"m"}}"#,
            r#"{"v":1,"type":"ping","id":"a","ts":1,"type":"pong","data":{"nonce":"n"}}"#,
            r#"{"v":1,"type":"event.hologram","id":"f1","seq":7,"ts":1,"data":{}}"#,
            r#"{"v":1,"type":"ping","id":"a","ts":1.5,"data":{"nonce":"n"}}"#,
            r#"{"v":1,"type":"ping","id":"a","ts":1,"data":{"nonce":"n"}} trailing"#,
            r#"{"v":1,"type":"ping","id":"a","ts":1,"seq":0,"data":{"nonce":"n"}}"#,
        ];
        for text in texts {
            assert_eq!(decode(text), decode_general(text), "{text}");
        }
    }

    /// `to_json` writes by hand what `to_value` builds: the same object.
    #[test]
    fn written_frames_are_the_canonical_value() {
        let frames = [
            Frame::new(
                settings_applied(&[("k", "a \"quoted\" \\ line\nbreak ✓")]),
                -5,
            )
            .with_seq(12)
            .replying_to("r\"1"),
            Frame::new(settings_applied(&[]), 0),
            Frame::new(Body::StatusRequest(Empty {}), 1),
        ];
        for f in frames {
            let text = f.to_json();
            let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
            assert_eq!(parsed, f.to_value(), "{text}");
            assert_eq!(decode(&text).expect("decodes"), f);
        }
    }

    #[test]
    fn a_stored_data_text_makes_the_same_frame() {
        let body = settings_applied(&[("k", "v")]);
        let f = Frame::new(body.clone(), 7).with_seq(3);
        let data = serde_json::to_string(&f.to_value()["data"]).expect("data");
        let text = Frame::durable_json(body.type_name(), &f.id, 3, 7, &data);
        assert_eq!(decode(&text).expect("decodes"), f);
        assert_eq!(
            Body::from_data_json(body.type_name(), &data).expect("parses"),
            Some(body)
        );
        assert_eq!(
            Body::from_data_json("event.hologram", "{}").expect("ok"),
            None
        );
    }
}
