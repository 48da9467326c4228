//! Wire types of the WhatSnap device protocol, version 1.
//!
//! Both ends of the link use this crate: the Mac daemon (`whatsnap-mac`) and the
//! account service (`whatsnap-relay`). It owns every websocket frame
//! ([`frame`]), the close codes and their reasons ([`close`]), and every HTTP
//! body of the pairing and admin APIs ([`api`]). It does no I/O.
//!
//! The normative description is `docs/protocol.md` at the top of the
//! repository; its JSON examples are parsed and round-tripped by this crate's
//! tests, so the two cannot drift apart.
//!
//! Decoding is tolerant in the ways the spec asks for: unknown fields are
//! ignored, and an unknown frame `type` is a [`frame::DecodeError`] that still
//! carries the frame's `id` and `seq`, so the receiver can answer it with an
//! `error` frame (and ack it if it was durable) instead of failing.

pub mod api;
pub mod close;
pub mod frame;

pub use frame::{Body, DecodeError, Frame, Stream};

/// Major protocol version carried in every envelope's `v`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Websocket subprotocol offered by the daemon and selected by the service.
pub const SUBPROTOCOL: &str = "whatsnap.v1";

/// Largest frame a peer accepts unless `welcome` says otherwise (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Prefix of every account tag: `whatsnap-account-Mike`.
pub const ACCOUNT_TAG_PREFIX: &str = "whatsnap-account-";

/// The idempotency key of a new chat.db row: `msg:<guid>`.
pub fn message_event_key(guid: &str) -> String {
    format!("msg:{guid}")
}

/// A fresh frame id: time-ordered (UUIDv7), so ids sort like ULIDs in logs.
pub fn new_frame_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
