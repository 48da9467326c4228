//! Wake-ups for the chat.db reader: file events on the Messages folder and on
//! `chat.db` / `chat.db-wal` themselves, plus a safety poll.
//!
//! Events are only hints. FSEvents batches and merges them, a watch bound to a
//! file dies with its inode when Messages replaces `chat.db-wal`
//! (bluebubbles-server#843, openclaw/imsg#126), and any watcher can drop
//! events, so every hint merely makes the reader re-query, and a timer does
//! the same every few seconds whatever the watcher says. The folder watch
//! survives WAL re-creation; the file watches are re-armed whenever the
//! folder reports one of the files created, removed or renamed. Ticks go
//! through a `watch` channel, which coalesces a burst into one wake-up.
//!
//! A file event comes too early to be the last word: SQLite writes a
//! transaction's WAL frames (the events) and only then syncs the file and
//! publishes the commit in the shared-memory index, which no watcher sees.
//! A reader woken by the last write can look before the commit is visible
//! and then hear nothing more until the safety poll, seconds later. So each
//! file event is followed by a few settle ticks ([`SETTLE`], ~130 ms in
//! all, restarted by every new event); each costs the reader one cheap
//! `data_version` probe. An idle folder gets none.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Default safety poll.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Delays of the ticks that follow a file event, each after the previous
/// one: every millisecond while a commit is most likely becoming visible
/// (a sync takes ~0.1–5 ms), then backing off.
pub const SETTLE: [Duration; 10] = {
    const MS: Duration = Duration::from_millis(1);
    [
        MS,
        MS,
        MS,
        MS,
        Duration::from_millis(2),
        Duration::from_millis(4),
        Duration::from_millis(8),
        Duration::from_millis(16),
        Duration::from_millis(32),
        Duration::from_millis(64),
    ]
};

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
    // File events wake the reader at once (on notify's thread) and start or
    // restart the settle ticks.
    let (settle_tx, settle_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let event_settle = settle_tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(name.as_str()))
        });
        if relevant {
            event_ticks.send_modify(|t| *t = t.wrapping_add(1));
            let _ = event_settle.send(());
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
    // File watches on chat.db and its WAL, owned by a task that re-arms them.
    let (rearm_tx, mut rearm_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let file_ticks = ticks.clone();
    let files: Vec<std::path::PathBuf> = ["", "-wal"]
        .iter()
        .map(|suffix| {
            let mut p = chat_db.as_os_str().to_owned();
            p.push(suffix);
            std::path::PathBuf::from(p)
        })
        .collect();
    let rearm_names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(std::ffi::OsStr::to_owned))
        .collect();
    let rearm_dir_tx = rearm_tx.clone();
    let dir_watcher_rearm =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && matches!(
                    event.kind,
                    notify::EventKind::Create(_)
                        | notify::EventKind::Remove(_)
                        | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                )
                && event.paths.iter().any(|p| {
                    p.file_name()
                        .is_some_and(|n| rearm_names.iter().any(|r| r == n))
                })
            {
                let _ = rearm_dir_tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    let file_shutdown = shutdown.clone();
    tokio::spawn(async move {
        // Kept alive by this task; dropped (and stopped) at shutdown.
        let _dir_watcher_rearm = dir_watcher_rearm.ok();
        let arm = || -> Option<notify::RecommendedWatcher> {
            let t = file_ticks.clone();
            let settle = settle_tx.clone();
            let mut w = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    t.send_modify(|n| *n = n.wrapping_add(1));
                    let _ = settle.send(());
                }
            })
            .ok()?;
            for f in &files {
                // A file that does not exist yet is armed when it appears.
                let _ = w.watch(f, RecursiveMode::NonRecursive);
            }
            Some(w)
        };
        let mut file_watcher = arm();
        loop {
            tokio::select! {
                () = file_shutdown.cancelled() => return,
                got = rearm_rx.recv() => {
                    if got.is_none() { return }
                    // Bound to the old inodes: drop and watch the new files.
                    drop(file_watcher.take());
                    file_watcher = arm();
                    file_ticks.send_modify(|t| *t = t.wrapping_add(1));
                }
            }
        }
    });
    drop(rearm_tx);
    tokio::spawn(settle(settle_rx, ticks.clone(), shutdown.clone()));
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

/// Sends the [`SETTLE`] ticks after each file event, starting over when
/// another event arrives before they are done.
async fn settle(
    mut events: tokio::sync::mpsc::UnboundedReceiver<()>,
    ticks: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = events.recv() => if got.is_none() { return },
        }
        let mut step = 0;
        while step < SETTLE.len() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = events.recv() => {
                    if got.is_none() { return }
                    // A burst: drain it and start over from its last event.
                    while events.try_recv().is_ok() {}
                    step = 0;
                }
                () = tokio::time::sleep(SETTLE[step]) => {
                    ticks.send_modify(|t| *t = t.wrapping_add(1));
                    step += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit becomes visible after its last file event; the reader must
    /// hear about it within a millisecond or two, not at the next poll.
    #[tokio::test(start_paused = true)]
    async fn a_file_event_is_followed_by_settle_ticks_then_silence() {
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ticks, ticks_rx) = watch::channel(0u64);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(settle(rx, ticks, shutdown.clone()));
        events.send(()).expect("send");
        tokio::time::sleep(Duration::from_micros(1500)).await;
        assert_eq!(*ticks_rx.borrow(), 1, "one tick a millisecond after");
        let all: Duration = SETTLE.iter().sum();
        tokio::time::sleep(all + POLL_INTERVAL).await;
        assert_eq!(*ticks_rx.borrow(), SETTLE.len() as u64, "then silence");
        // A new event starts the ticks over.
        events.send(()).expect("send");
        tokio::time::sleep(all + POLL_INTERVAL).await;
        assert_eq!(*ticks_rx.borrow(), 2 * SETTLE.len() as u64);
        shutdown.cancel();
        task.await.expect("settle task");
    }
}
