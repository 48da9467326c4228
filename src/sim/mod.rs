//! Messages simulator: writes chat.db exactly as Messages does, and stands in
//! for `osascript`, so every path of the daemon runs on Linux.
//!
//! - [`schema`]: the chat.db schema of each release from 11 Big Sur to 26 Tahoe.
//! - [`kinds`]: every kind of row and later change, for the reader's tests.
//! - [`generate`]: large databases with a realistic mix, for benchmarks.
//! - [`Simulator`]: the rows Messages writes when a message arrives or a send
//!   succeeds, each event in one transaction, left in the WAL.
//! - [`fake_osascript`]: the `osascript - <args>` command line, answering
//!   whatsnap's constant scripts by writing chat.db, plus a wrapper script a
//!   daemon can be pointed at with `--osascript`.
//! - [`body`]: the typedstream `attributedBody` of a message.
//! - [`cli`]: the hidden `whatsnap-mac sim ...` commands.

pub mod bench;
pub mod body;
pub mod cli;
pub mod fake_osascript;
pub mod generate;
pub mod kinds;
pub mod schema;
pub mod sends;
mod writer;

pub use kinds::{SimAttachment, SimChat, SimRow};
pub use schema::Release;
pub use writer::{
    DEFAULT_ACCOUNT_GUID, DEFAULT_OWN_ADDRESS, SimError, SimMessage, SimTarget, Simulator,
    strip_internal_tables,
};
