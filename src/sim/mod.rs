//! Messages simulator: writes chat.db exactly as Messages does.
//!
//! STUB: being written by a helper.

pub mod body;
pub mod cli;
