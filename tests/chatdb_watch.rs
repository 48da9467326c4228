//! Wake-ups survive Messages replacing `chat.db-wal` (a new inode): the
//! regression behind bluebubbles-server#843 and openclaw/imsg#126, where a
//! watch bound to the old file went deaf for days.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Waits for a tick not yet seen; the safety poll is set to an hour, so
/// only a file event can produce it. Callers mark ticks seen *before* the
/// file operation, so an event delivered quickly is not lost.
async fn next_tick(rx: &mut watch::Receiver<u64>) -> bool {
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .is_ok()
}

#[tokio::test]
async fn writes_to_a_replaced_wal_still_wake_the_reader() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chat.db");
    let wal = dir.path().join("chat.db-wal");
    std::fs::write(&db, b"db").expect("db");
    std::fs::write(&wal, b"wal").expect("wal");
    let shutdown = CancellationToken::new();
    let (tx, mut rx) = watch::channel(0u64);
    let _guard = whatsnap_mac::watch::spawn(&db, Duration::from_secs(3600), tx, shutdown.clone());
    // The poll's first tick fires at once; take it before watching for events.
    rx.changed().await.expect("first poll tick");

    rx.borrow_and_update();
    std::fs::write(&wal, b"more").expect("write");
    assert!(
        next_tick(&mut rx).await,
        "a write to the WAL wakes the reader"
    );

    // Messages quits: the WAL goes and a new one (new inode) appears.
    rx.borrow_and_update();
    std::fs::remove_file(&wal).expect("remove");
    std::fs::write(dir.path().join("chat.db-wal.tmp"), b"new").expect("new file");
    std::fs::rename(dir.path().join("chat.db-wal.tmp"), &wal).expect("replace");
    assert!(
        next_tick(&mut rx).await,
        "the replacement itself wakes the reader"
    );
    // Let the re-arm run, then write to the new file only.
    tokio::task::yield_now().await;
    rx.borrow_and_update();
    std::fs::write(&wal, b"a write to the new inode").expect("write new");
    assert!(
        next_tick(&mut rx).await,
        "writes to the new WAL still wake the reader"
    );
    shutdown.cancel();
}
