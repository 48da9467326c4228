//! Change tracking end to end: the daemon's reader task against a real WAL
//! chat.db written by the simulator and the daemon's real store. Every
//! release fixture runs the same script of changes.

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use whatsnap_mac::chatdb::SharedChatDb;
use whatsnap_mac::reader::{Reader, ReaderHealth, Tracker};
use whatsnap_mac::sim::kinds::{SimAttachment, SimChat, SimRow, TAPBACK_LOVE};
use whatsnap_mac::sim::{Release, Simulator};
use whatsnap_mac::store::Store;
use whatsnap_proto::frame::{Body, UpdateKind};

struct Setup {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Store,
    reader: Reader,
    tracker: Tracker,
    seen: u64,
}

impl Setup {
    async fn new(release: Release) -> (Setup, Simulator) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("chat.db");
        let sim = Simulator::create_release(&path, release).expect("create");
        let store = Store::open(&dir.path().join("state.db")).expect("store");
        let (_ticks_tx, ticks) = watch::channel(0u64);
        let (health, _) = watch::channel(ReaderHealth::default());
        let reader = Reader {
            store: store.clone(),
            chat_db: SharedChatDb::new(path.clone()),
            ticks,
            outbox: Arc::new(Notify::new()),
            health,
        };
        let mut setup = Setup {
            _dir: dir,
            path,
            store,
            reader,
            tracker: Tracker::default(),
            seen: 0,
        };
        // First start: baseline, nothing announced.
        assert!(setup.events().await.is_empty());
        (setup, sim)
    }

    /// Scans once and returns the events appended since the last call.
    async fn events(&mut self) -> Vec<Body> {
        self.reader.scan(&mut self.tracker).await.expect("scan");
        let entries = self.store.outbox_after(self.seen, 10_000).expect("outbox");
        if let Some(last) = entries.last() {
            self.seen = last.seq;
        }
        entries.into_iter().map(|e| e.body).collect()
    }
}

fn updates(events: &[Body]) -> Vec<(UpdateKind, String)> {
    events
        .iter()
        .filter_map(|b| match b {
            Body::EventMessageUpdate(u) => Some((u.kind, u.event_key.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn status_changes_become_updates_once_on_every_release() {
    for release in Release::ALL {
        status_changes_on(release).await;
    }
}

async fn status_changes_on(release: Release) {
    let tag = release.name();
    let (mut s, mut sim) = Setup::new(release).await;
    let ann = "+15551230001";
    let sent = sim
        .write(&SimRow::from_me(SimChat::direct(ann), "hi"))
        .expect("send");
    let got = s.events().await;
    assert!(
        matches!(&got[..], [Body::EventMessage(m)] if m.guid == sent.guid),
        "{tag}: {got:?}"
    );

    sim.mark_delivered(&sent.guid).expect("deliver");
    sim.mark_read(&sent.guid).expect("read");
    let got = updates(&s.events().await);
    assert_eq!(
        got,
        vec![
            (UpdateKind::Delivered, format!("delivered:{}", sent.guid)),
            (UpdateKind::Read, format!("read:{}", sent.guid)),
        ],
        "{tag}"
    );
    assert!(s.events().await.is_empty(), "{tag}: nothing twice");

    let failed = sim
        .write(&SimRow::from_me(SimChat::direct(ann), "doomed"))
        .expect("send");
    s.events().await;
    sim.fail(&failed.guid, 22).expect("fail");
    let got = s.events().await;
    match &got[..] {
        [Body::EventMessageUpdate(u)] => {
            assert_eq!(
                (u.kind, u.error_code),
                (UpdateKind::Failed, Some(22)),
                "{tag}"
            );
        }
        other => panic!("{tag}: {other:?}"),
    }

    let mut voice = SimRow::incoming(ann, "");
    voice.audio = true;
    let voice = sim.write(&voice).expect("audio");
    s.events().await;
    sim.mark_played(&voice.guid).expect("played");
    assert_eq!(
        updates(&s.events().await),
        vec![(UpdateKind::Played, format!("played:{}", voice.guid))],
        "{tag}"
    );

    if release >= Release::Ventura {
        let note = sim
            .write(&SimRow::from_me(SimChat::direct(ann), "tpyo"))
            .expect("note");
        s.events().await;
        sim.edit(&note.guid, "tpyo", "typo").expect("edit");
        let got = s.events().await;
        match &got[..] {
            [Body::EventMessageUpdate(u)] => {
                assert_eq!(u.kind, UpdateKind::Edited, "{tag}");
                assert_eq!(u.text.as_deref(), Some("typo"));
                assert_eq!(u.event_key, format!("edited:{}:1", note.guid));
            }
            other => panic!("{tag}: {other:?}"),
        }
        sim.unsend(&note.guid).expect("unsend");
        assert_eq!(
            updates(&s.events().await),
            vec![(UpdateKind::Unsent, format!("unsent:{}", note.guid))],
            "{tag}"
        );
    }

    // A file still downloading, then ready.
    let mut pic = SimRow::incoming(ann, "");
    pic.attachments = vec![SimAttachment {
        name: "big.mov".into(),
        mime: Some("video/quicktime".into()),
        uti: None,
        content: vec![0; 10],
        downloaded: false,
    }];
    let pic = sim.write(&pic).expect("pic");
    s.events().await;
    sim.attachment_ready(&pic.guid).expect("ready");
    let got = updates(&s.events().await);
    assert_eq!(got.len(), 1, "{tag}: {got:?}");
    assert_eq!(got[0].0, UpdateKind::AttachmentReady);

    // Tapback add then remove: the removal is a reaction, the deleted
    // tapback row is not announced as a deleted message.
    let love = sim
        .react(
            &SimChat::direct(ann),
            Some(ann),
            &sent.guid,
            TAPBACK_LOVE,
            None,
        )
        .expect("love");
    let got = s.events().await;
    assert!(
        matches!(&got[..], [Body::EventReaction(r)] if !r.removed),
        "{tag}: {got:?}"
    );
    sim.remove_reaction(&SimChat::direct(ann), &love)
        .expect("remove");
    let got = s.events().await;
    assert!(
        matches!(&got[..], [Body::EventReaction(r)] if r.removed && r.kind == "love"),
        "{tag}: {got:?}"
    );

    // A hard delete.
    sim.delete_message(&sent.guid).expect("delete");
    assert_eq!(
        updates(&s.events().await),
        vec![(UpdateKind::Deleted, format!("deleted:{}", sent.guid))],
        "{tag}"
    );
}

#[tokio::test]
async fn a_rebuilt_database_with_renumbered_rowids_is_rebaselined_without_a_flood_or_a_gap() {
    let (mut s, mut sim) = Setup::new(Release::Sequoia).await;
    let ann = "+15551230003";
    // Leave gaps in ROWIDs (deleted tapbacks do that on a Mac).
    for i in 0..20 {
        let m = sim
            .write(&SimRow::incoming(ann, &format!("m{i}")))
            .expect("write");
        if i % 2 == 0 {
            sim.delete_message(&m.guid).expect("gap");
        }
    }
    assert_eq!(s.events().await.len(), 10 + 10);
    let mut sim = sim.rebuild().expect("rebuild");
    let fresh = sim.receive(ann, "after the rebuild").expect("new row");
    assert!(
        fresh.rowid <= 20,
        "renumbered below the old cursor: {}",
        fresh.rowid
    );
    let got = s.events().await;
    match &got[..] {
        [Body::EventMessage(m)] => assert_eq!(m.guid, fresh.guid),
        other => panic!(
            "expected only the new message, got {} events: {other:?}",
            other.len()
        ),
    }
    let _ = &s.path;
}

#[tokio::test]
async fn an_icloud_backfill_block_is_flagged_backfill_and_live_rows_are_not() {
    let (mut s, mut sim) = Setup::new(Release::Tahoe).await;
    let ann = "+15551230004";
    sim.receive(ann, "live one").expect("live");
    s.events().await;
    let day_ns = 86_400 * 1_000_000_000_i64;
    let now = whatsnap_mac::apple_time::now_apple_nanos();
    for i in 0..5 {
        let mut old = SimRow::incoming(ann, &format!("old {i}"));
        old.date = Some(now - 3 * day_ns + i);
        sim.write(&old).expect("backfill");
    }
    let live = sim.receive(ann, "live two").expect("live");
    let got = s.events().await;
    let flags: Vec<(bool, String)> = got
        .iter()
        .filter_map(|b| match b {
            Body::EventMessage(m) => Some((m.backfill, m.text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(flags.len(), 6);
    assert!(flags[..5].iter().all(|(b, _)| *b), "{flags:?}");
    assert_eq!(flags[5], (false, "live two".to_owned()));
    let _ = live;
}

#[tokio::test(start_paused = true)]
async fn a_row_whose_chat_join_comes_late_is_held_back_then_announced() {
    let (mut s, mut sim) = Setup::new(Release::Sequoia).await;
    let ann = "+15551230005";
    let mut orphan = SimRow::incoming(ann, "join comes later");
    orphan.join = false;
    let orphan = sim.write(&orphan).expect("orphan");
    let after = sim.receive(ann, "next").expect("next");
    assert!(
        s.events().await.is_empty(),
        "held back, and the cursor stops before it"
    );
    sim.join_later(&orphan, &SimChat::direct(ann))
        .expect("join");
    let got = s.events().await;
    let guids: Vec<&str> = got
        .iter()
        .filter_map(|b| match b {
            Body::EventMessage(m) => Some(m.guid.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(guids, [orphan.guid.as_str(), after.guid.as_str()]);

    // One that never joins is given up after the grace period.
    let mut lost = SimRow::incoming(ann, "never joined");
    lost.join = false;
    sim.write(&lost).expect("lost");
    let last = sim.receive(ann, "last").expect("last");
    assert!(s.events().await.is_empty());
    tokio::time::advance(whatsnap_mac::reader::JOIN_GRACE).await;
    let got = s.events().await;
    assert!(
        matches!(&got[..], [Body::EventMessage(m)] if m.guid == last.guid),
        "{got:?}"
    );
}

/// Regression: the `deleted_messages` position lived only in memory, so a
/// message deleted while the daemon was down was never reported; and deleting
/// the newest message lowered `MAX(ROWID)` below the cursor, which the reader
/// took for a rebuilt database, skipping the delete.
#[tokio::test]
async fn a_message_deleted_while_the_daemon_was_down_is_reported_after_restart() {
    let (mut s, mut sim) = Setup::new(Release::Sequoia).await;
    let ann = "+15550001111";
    let kept = sim.write(&SimRow::incoming(ann, "kept")).expect("incoming");
    let doomed = sim
        .write(&SimRow::incoming(ann, "doomed"))
        .expect("incoming");
    assert_eq!(s.events().await.len(), 2, "both announced");

    // The daemon stops; the user deletes a message; the daemon starts again
    // with a fresh reader state, as after a restart.
    sim.delete_message(&doomed.guid).expect("delete");
    s.tracker = Tracker::default();
    let got = updates(&s.events().await);
    assert_eq!(
        got,
        vec![(UpdateKind::Deleted, format!("deleted:{}", doomed.guid))],
        "kept: {}",
        kept.guid
    );
}

/// Under a stream of new messages the reader announces each one at once and
/// looks at status changes at most every `CHANGES_EVERY`; a receipt that
/// arrives meanwhile comes on the next wake-up, never lost.
#[tokio::test(start_paused = true)]
async fn receipts_during_a_stream_of_messages_follow_within_changes_every() {
    let (mut s, mut sim) = Setup::new(Release::Sequoia).await;
    let ann = "+15550002222";
    let mine = sim
        .write(&SimRow::from_me(SimChat::direct(ann), "first"))
        .expect("send");
    assert_eq!(s.events().await.len(), 1, "the first message");

    // A reply arrives just after ours was delivered.
    sim.mark_delivered(&mine.guid).expect("deliver");
    let reply = sim.receive(ann, "reply").expect("reply");
    let got = s.events().await;
    assert!(
        matches!(&got[..], [Body::EventMessage(m)] if m.guid == reply.guid),
        "the new message at once, the receipt deferred: {got:?}"
    );
    // The next wake-up, with nothing new, finishes the scan.
    assert_eq!(
        updates(&s.events().await),
        vec![(UpdateKind::Delivered, format!("delivered:{}", mine.guid))]
    );

    // Later in the stream: once CHANGES_EVERY has passed, a new message and a
    // receipt come in the same wake-up.
    sim.mark_read(&mine.guid).expect("read");
    let next = sim.receive(ann, "next").expect("next");
    tokio::time::advance(whatsnap_mac::reader::CHANGES_EVERY).await;
    let got = s.events().await;
    assert!(
        matches!(&got[0], Body::EventMessage(m) if m.guid == next.guid),
        "{got:?}"
    );
    assert_eq!(
        updates(&got),
        vec![(UpdateKind::Read, format!("read:{}", mine.guid))]
    );
    assert!(s.events().await.is_empty(), "nothing twice");
}
