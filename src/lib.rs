//! whatsnap-mac: the SMS/iMessage account of WhatSnap, on your own Mac.
//!
//! Layout, one module per outside boundary:
//! - [`chatdb`]: the Messages database, read-only; the typedstream body reader.
//! - [`watch`]: wake-ups when chat.db changes.
//! - [`reader`]: new rows → durable events, atomically with the cursor.
//! - [`store`]: the daemon's own SQLite (cursor, outbox, sends).
//! - [`link`]: the websocket to the account service, and pairing.
//! - [`send`]: Messages.app through `osascript`, and send confirmation.
//! - [`daemon`]: the tasks of `whatsnap-mac run` and their shutdown.
//! - [`demo`]: the whole system on one machine.
//! - [`sim`]: the Messages simulator and the fake `osascript`.
//! - [`config`], [`apple_time`]: paths and Apple dates.

pub mod apple_time;
pub mod chatdb;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod launchd;
pub mod link;
pub mod logfile;
pub mod reader;
pub mod send;
pub mod sim;
pub mod status;
pub mod store;
pub mod watch;

/// Runs blocking work (SQLite, file I/O) on tokio's blocking pool, keeping
/// the async threads free. A panic inside is re-raised here.
pub async fn blocking<R, F>(f: F) -> R
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Resolves on SIGTERM (what launchd sends) or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
