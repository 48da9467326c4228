//! Read-only access to the Messages database (`~/Library/Messages/chat.db`).

pub mod typedstream;
