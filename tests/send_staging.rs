//! Staged copies of sent files are kept long enough for Messages to read
//! them, then removed, and nothing outside our own folder is touched.

use std::time::{Duration, SystemTime};

use whatsnap_mac::send::{STAGED_FILE_LIFETIME, prune_staged};

#[test]
fn staged_copies_older_than_a_day_are_removed_and_fresh_ones_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chat_db = dir.path().join("chat.db");
    let staged = dir.path().join("Attachments/whatsnap");
    let old = staged.join("old-uuid");
    let fresh = staged.join("fresh-uuid");
    let theirs = dir.path().join("Attachments/ab/01/someone-elses");
    for d in [&old, &fresh, &theirs] {
        std::fs::create_dir_all(d).expect("mkdir");
        std::fs::write(d.join("photo.jpg"), b"jpeg").expect("file");
    }
    let now = SystemTime::now();
    // Pretend "now" is two days later for the old folder by looking from
    // the future, then check the fresh one survives a look from today.
    let later = now + STAGED_FILE_LIFETIME + Duration::from_secs(3600);
    std::fs::File::open(&fresh)
        .expect("open dir")
        .set_modified(later)
        .expect("touch");
    assert_eq!(
        prune_staged(&chat_db, STAGED_FILE_LIFETIME, later).expect("prune"),
        1
    );
    assert!(!old.exists(), "a copy older than a day is removed");
    assert!(fresh.join("photo.jpg").exists(), "a recent copy is kept");
    assert!(
        theirs.join("photo.jpg").exists(),
        "Messages' own files are never touched"
    );
}

#[test]
fn no_staging_folder_is_not_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let removed = prune_staged(
        &dir.path().join("chat.db"),
        STAGED_FILE_LIFETIME,
        SystemTime::now(),
    )
    .expect("prune");
    assert_eq!(removed, 0);
}
