//! Wake-ups for the chat.db reader: file events on the Messages folder plus a
//! safety poll.
//!
//! Events are only hints. FSEvents batches and merges them, inotify loses
//! watches when Messages replaces `chat.db-wal`, and either can drop events,
//! so every hint merely makes the reader re-query `ROWID > cursor`, and a timer
//! does the same every few seconds whatever the watcher says. Watching the
//! folder rather than the files keeps working across WAL re-creation.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Default safety poll.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Publishes a new tick on `ticks` whenever chat.db may have changed, until
/// `shutdown`. The watcher stops with the returned guard.
pub fn spawn(
    chat_db: &Path,
    poll: Duration,
    ticks: watch::Sender<u64>,
    shutdown: CancellationToken,
) -> Option<notify::RecommendedWatcher> {
    let name = chat_db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "chat.db".into());
    let dir = chat_db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf();
    let event_ticks = ticks.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(name.as_str()))
        });
        if relevant {
            event_ticks.send_modify(|t| *t = t.wrapping_add(1));
        }
    });
    let watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} ({e}); falling back to polling every {} s",
                    dir.display(),
                    poll.as_secs()
                );
                None
            }
        },
        Err(e) => {
            tracing::warn!("file watching unavailable ({e}); polling only");
            None
        }
    };
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(poll);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => ticks.send_modify(|t| *t = t.wrapping_add(1)),
            }
        }
    });
    watcher
}
