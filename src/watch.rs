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
//! `data_version` probe. An idle folder gets none. The first ticks come a
//! quarter of a millisecond apart, finer than tokio's 1 ms timer wheel
//! (where a 1 ms sleep takes 1–2 ms), so they are timed by a small thread
//! of their own.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Default safety poll.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Delays of the ticks that follow a file event, each after the previous
/// one: every quarter millisecond while a commit is most likely becoming
/// visible (a sync takes ~0.1–5 ms), then backing off.
pub const SETTLE: [Duration; 13] = {
    const QUARTER: Duration = Duration::from_micros(250);
    const HALF: Duration = Duration::from_micros(500);
    [
        QUARTER,
        QUARTER,
        QUARTER,
        QUARTER,
        HALF,
        HALF,
        Duration::from_millis(1),
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
    let (settle_tx, settle_rx) = std::sync::mpsc::channel::<()>();
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
    let settle_ticks = ticks.clone();
    let settle_shutdown = shutdown.clone();
    // It ends when the watchers (the senders) are dropped, at shutdown.
    if let Err(e) = std::thread::Builder::new()
        .name("whatsnap-settle".into())
        .spawn(move || settle(&settle_rx, &settle_ticks, &settle_shutdown))
    {
        tracing::warn!("no settle ticks ({e}); a commit may wait for the safety poll");
    }
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

/// When the settle ticks are due: a pure schedule, so its timing is tested
/// without a clock.
#[derive(Debug, Default)]
struct Schedule {
    /// The next [`SETTLE`] step; `None` when idle.
    step: Option<usize>,
}

impl Schedule {
    /// A file event (or a burst of them): start over.
    fn event(&mut self) {
        self.step = Some(0);
    }

    /// How long to wait for another event before ticking; `None`: until
    /// the next event, however long.
    fn wait(&self) -> Option<Duration> {
        self.step.map(|s| SETTLE[s])
    }

    /// The wait ran out with no event: tick, and move to the next step.
    fn elapsed(&mut self) {
        self.step = self.step.map(|s| s + 1).filter(|&s| s < SETTLE.len());
    }
}

/// Sends the [`SETTLE`] ticks after each file event, starting over when
/// another event arrives before they are done, until every sender is gone
/// or `shutdown`.
fn settle(events: &mpsc::Receiver<()>, ticks: &watch::Sender<u64>, shutdown: &CancellationToken) {
    let mut schedule = Schedule::default();
    while !shutdown.is_cancelled() {
        let got = match schedule.wait() {
            None => events
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(wait) => events.recv_timeout(wait),
        };
        match got {
            Ok(()) => {
                // A burst: drain it and start over from its last event.
                while events.try_recv().is_ok() {}
                schedule.event();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                ticks.send_modify(|t| *t = t.wrapping_add(1));
                schedule.elapsed();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit becomes visible after its last file event; the reader must
    /// hear about it within a fraction of a millisecond, not at the next
    /// poll, and an idle folder must cost nothing.
    #[test]
    fn a_file_event_is_followed_by_settle_ticks_then_silence() {
        let mut s = Schedule::default();
        assert_eq!(s.wait(), None, "idle: no tick until an event");
        s.event();
        assert_eq!(s.wait(), Some(Duration::from_micros(250)));
        let mut waited = Vec::new();
        while let Some(w) = s.wait() {
            waited.push(w);
            s.elapsed();
        }
        assert_eq!(waited, SETTLE, "one tick per step, in order");
        assert_eq!(s.wait(), None, "then silence");
        let total: Duration = waited.iter().sum();
        assert!(total < Duration::from_millis(200), "settled in {total:?}");
        // A new event in the middle starts over.
        s.event();
        s.elapsed();
        s.elapsed();
        s.event();
        assert_eq!(s.wait(), Some(SETTLE[0]));
    }

    /// The thread ticks once per step after an event, and ends when the
    /// watchers (its senders) are dropped.
    #[test]
    fn the_settle_thread_ticks_every_step_then_ends_with_its_senders() {
        let (events, rx) = mpsc::channel();
        let (ticks, mut ticks_rx) = watch::channel(0u64);
        let shutdown = CancellationToken::new();
        let thread = std::thread::spawn(move || settle(&rx, &ticks, &shutdown));
        events.send(()).expect("send");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            while *ticks_rx.borrow_and_update() < SETTLE.len() as u64 {
                ticks_rx.changed().await.expect("ticks");
            }
        });
        drop(events);
        thread.join().expect("settle thread");
        assert_eq!(
            *ticks_rx.borrow(),
            SETTLE.len() as u64,
            "no tick after the last step"
        );
    }
}
