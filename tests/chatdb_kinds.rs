//! Every kind of row, on every release fixture, read back as the event the
//! bridge sends: a real WAL chat.db written by the simulator, read by the
//! daemon's read-only reader.

use std::path::Path;

use whatsnap_mac::chatdb::{ChatDb, MessageRow, RowKind, bulk};
use whatsnap_mac::sim::kinds::{SimAttachment, SimChat, SimRow, TAPBACK_EMOJI, TAPBACK_LOVE};
use whatsnap_mac::sim::{Release, Simulator};
use whatsnap_proto::frame::{AttachmentState, Body, ChatKind, GroupAction, HandleKind};

fn new_db(release: Release) -> (tempfile::TempDir, std::path::PathBuf, Simulator) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    let sim = Simulator::create_release(&path, release).expect("create");
    (dir, path, sim)
}

fn read_all(path: &Path) -> Vec<MessageRow> {
    let db = ChatDb::open(path).expect("reader opens");
    db.read_after(0, 10_000).expect("rows")
}

fn row<'a>(rows: &'a [MessageRow], guid: &str) -> &'a MessageRow {
    rows.iter().find(|r| r.guid == guid).expect("row read back")
}

fn message(row: &MessageRow) -> whatsnap_proto::frame::EventMessage {
    match row.to_body(None) {
        Some(Body::EventMessage(m)) => m,
        other => panic!("expected event.message, got {other:?}"),
    }
}

#[test]
fn every_kind_of_row_on_every_release_becomes_the_right_event() {
    for release in Release::ALL {
        every_kind_on(release);
    }
}

fn every_kind_on(release: Release) {
    let (_dir, path, mut sim) = new_db(release);
    let ann = "+15551230001";
    let direct = SimChat::direct(ann);

    // A plain incoming message, 200 bytes of multibyte text.
    let long = "日本語のメッセージ".repeat(8);
    let plain = sim.write(&SimRow::incoming(ann, &long)).expect("plain");
    // From me in a group with a name, an email member written in capitals.
    let group = SimChat::group(
        "chat123456789",
        Some("Open house crew"),
        &[ann, "Jo@Example.org"],
    );
    let mine = sim
        .write(&SimRow::from_me(group.clone(), "see you"))
        .expect("group");
    // An incoming group message from the email member.
    let mut theirs = SimRow::incoming("Jo@Example.org", "hello all");
    theirs.chat = group.clone();
    let theirs = sim.write(&theirs).expect("group incoming");
    // An inline reply.
    let mut reply = SimRow::incoming(ann, "replying");
    reply.reply_to = Some(plain.guid.clone());
    let reply = sim.write(&reply).expect("reply");
    // Attachments in body order, one still downloading, MIME from the UTI.
    let mut pics = SimRow::incoming(ann, "two pics");
    pics.attachments = vec![
        SimAttachment {
            name: "IMG_0001.HEIC".into(),
            mime: Some("image/heic".into()),
            uti: Some("public.heic".into()),
            content: vec![7; 1234],
            downloaded: true,
        },
        SimAttachment {
            name: "doc.pdf".into(),
            mime: None,
            uti: Some("com.adobe.pdf".into()),
            content: vec![1; 10],
            downloaded: false,
        },
    ];
    let pics = sim.write(&pics).expect("attachments");
    // An audio message.
    let mut audio = SimRow::incoming(ann, "");
    audio.audio = true;
    audio.attachments = vec![SimAttachment {
        name: "Audio Message.caf".into(),
        mime: None,
        uti: Some("com.apple.coreaudio-format".into()),
        content: vec![0; 64],
        downloaded: true,
    }];
    let audio = sim.write(&audio).expect("audio");
    // An app balloon.
    let mut balloon = SimRow::incoming(ann, "");
    balloon.balloon_bundle_id = Some("com.apple.messages.URLBalloonProvider".into());
    let balloon = sim.write(&balloon).expect("balloon");
    // A pre-High-Sierra row: date in seconds, text only in `text`.
    let mut old = SimRow::incoming(ann, "from 2016");
    old.date = Some(500_000_000);
    old.text_column = true;
    let old = sim.write(&old).expect("seconds");
    // SMS chat.
    let sms = SimChat::Direct {
        handle: "+15550009999".into(),
        service: "SMS".into(),
    };
    let mut sms_row = SimRow::incoming("+15550009999", "sms here");
    sms_row.chat = sms.clone();
    let sms_row = sim.write(&sms_row).expect("sms");
    // Tapbacks: love, and an emoji one where the release has the column.
    let love = sim
        .react(&direct, Some(ann), &plain.guid, TAPBACK_LOVE, None)
        .expect("love");
    let emoji = sim
        .react(&direct, None, &plain.guid, TAPBACK_EMOJI, Some("🎉"))
        .expect("emoji");
    let removed = sim.remove_reaction(&direct, &love).expect("removal");
    // Group events.
    let renamed = sim
        .group_event(&group, Some(ann), 2, 0, None, Some("New name"))
        .expect("rename");
    let added = sim
        .group_event(&group, None, 1, 0, Some("+15550004444"), None)
        .expect("added");
    let left = sim
        .group_event(&group, Some(ann), 3, 0, None, None)
        .expect("left");
    // Messages' record of a member's new number: "added" naming its sender.
    let renumbered = sim
        .group_event(&group, Some(ann), 1, 0, Some(ann), None)
        .expect("renumbered");

    let rows = read_all(&path);
    let tag = release.name();

    let m = message(row(&rows, &plain.guid));
    assert_eq!(m.text, long, "{tag}: 128+ byte multibyte body intact");
    assert_eq!(m.chat_kind, ChatKind::Direct);
    assert_eq!(m.sender.as_ref().map(|h| h.handle.as_str()), Some(ann));
    assert_eq!(m.service, "iMessage");
    let prefix = if release == Release::Tahoe {
        "any"
    } else {
        "iMessage"
    };
    assert_eq!(m.chat_guid, format!("{prefix};-;{ann}"), "{tag}");

    let g = message(row(&rows, &mine.guid));
    assert_eq!(g.chat_kind, ChatKind::Group, "{tag}");
    assert!(g.from_me && g.sender.is_none());
    // The name is the chat's current one: read after the rename below.
    assert_eq!(g.group_name.as_deref(), Some("New name"));
    let members: Vec<&str> = g.participants.iter().map(|p| p.handle.as_str()).collect();
    assert!(
        members.contains(&ann) && members.contains(&"jo@example.org"),
        "{tag}: {members:?}"
    );
    assert_eq!(g.recipients.len(), 3, "two members and the one added below");
    let t = message(row(&rows, &theirs.guid));
    let sender = t.sender.expect("sender");
    assert_eq!(
        (sender.handle.as_str(), sender.kind),
        ("jo@example.org", HandleKind::Email)
    );

    let r = message(row(&rows, &reply.guid));
    assert_eq!(
        r.thread_originator_guid.as_deref(),
        Some(plain.guid.as_str()),
        "{tag}"
    );
    assert_eq!(r.reply_to_guid.as_deref(), Some(plain.guid.as_str()));

    let p = message(row(&rows, &pics.guid));
    assert_eq!(p.text, "two pics", "{tag}: placeholders stripped");
    let names: Vec<&str> = p.attachments.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["IMG_0001.HEIC", "doc.pdf"], "{tag}: body order");
    assert_eq!(p.attachments[0].mime.as_deref(), Some("image/heic"));
    assert_eq!(p.attachments[0].size, Some(1234));
    assert_eq!(p.attachments[0].state, AttachmentState::Uploaded);
    assert_eq!(
        p.attachments[1].mime.as_deref(),
        Some("application/pdf"),
        "from the UTI"
    );
    assert_eq!(p.attachments[1].state, AttachmentState::Pending);
    let on_disk = row(&rows, &pics.guid).attachments[0]
        .path
        .clone()
        .expect("path");
    assert!(on_disk.is_file(), "{}", on_disk.display());

    let a = message(row(&rows, &audio.guid));
    assert_eq!(a.attachments[0].mime.as_deref(), Some("audio/x-caf"));
    assert!(row(&rows, &audio.guid).is_audio);
    assert_eq!(a.text, "");

    let b = row(&rows, &balloon.guid);
    assert_eq!(
        b.balloon_bundle_id.as_deref(),
        Some("com.apple.messages.URLBalloonProvider")
    );
    assert_eq!(message(b).text, "", "U+FFFD balloon placeholder stripped");

    let o = message(row(&rows, &old.guid));
    assert_eq!(o.text, "from 2016");
    let when = jiff::Timestamp::from_millisecond(o.date_ms).expect("date");
    assert_eq!(
        when.to_string(),
        "2016-11-05T00:53:20Z",
        "{tag}: seconds are seconds"
    );

    let s = message(row(&rows, &sms_row.guid));
    assert_eq!(s.service, "SMS");
    let sms_prefix = if release == Release::Tahoe {
        "any"
    } else {
        "SMS"
    };
    assert!(
        s.chat_guid.starts_with(&format!("{sms_prefix};-;")),
        "{tag}: {}",
        s.chat_guid
    );

    assert!(
        rows.iter().all(|r| r.guid != love.guid),
        "removed tapback row is gone"
    );
    let e = match row(&rows, &emoji.guid).to_body(None) {
        Some(Body::EventReaction(e)) => e,
        other => panic!("{tag}: {other:?}"),
    };
    assert_eq!(e.target_guid, plain.guid);
    assert_eq!(e.kind, "emoji");
    assert!(e.sender.is_none(), "from me");
    let has_emoji_column = release >= Release::Sequoia;
    assert_eq!(e.emoji.is_some(), has_emoji_column, "{tag}");
    let x = match row(&rows, &removed.guid).to_body(None) {
        Some(Body::EventReaction(e)) => e,
        other => panic!("{tag}: {other:?}"),
    };
    assert_eq!((x.kind.as_str(), x.removed), ("love", true));
    assert_eq!(x.sender.map(|s| s.handle).as_deref(), Some(ann));

    let rn = row(&rows, &renamed.guid);
    assert_eq!(rn.kind(), RowKind::GroupEvent);
    assert_eq!(rn.group_title.as_deref(), Some("New name"));
    let group_event = |guid: &str| match row(&rows, guid).to_body(None) {
        Some(Body::EventGroup(e)) => e,
        other => panic!("{tag}: {other:?}"),
    };
    let g = group_event(&renamed.guid);
    assert_eq!(g.action, GroupAction::Renamed, "{tag}");
    assert_eq!(g.name.as_deref(), Some("New name"));
    assert_eq!(g.actor.map(|a| a.handle).as_deref(), Some(ann));
    assert_eq!(g.event_key, format!("group:{}", renamed.guid));
    assert!(g.chat_guid.contains(";+;"), "{tag}: {}", g.chat_guid);
    let ad = row(&rows, &added.guid);
    assert_eq!(ad.other_handle.as_deref(), Some("+15550004444"));
    let g = group_event(&added.guid);
    assert_eq!(g.action, GroupAction::MemberAdded, "{tag}");
    assert_eq!(g.member.map(|m| m.handle).as_deref(), Some("+15550004444"));
    assert!(g.actor.is_none(), "{tag}: added by the Mac's user");
    let g = group_event(&left.guid);
    assert_eq!(g.action, GroupAction::MemberLeft, "{tag}");
    assert_eq!(g.actor.map(|a| a.handle).as_deref(), Some(ann));
    assert!(
        row(&rows, &renumbered.guid).to_body(None).is_none(),
        "{tag}: a new phone number is not a new member"
    );
    // The rename reached the chat: later rows carry the new name.
    let later = sim
        .write(&SimRow::from_me(group, "after"))
        .expect("after rename");
    let rows = read_all(&path);
    assert_eq!(
        message(row(&rows, &later.guid)).group_name.as_deref(),
        Some("New name")
    );
    bulk_read_matches_row_by_row(&path, &rows);
}

/// `messages` (the parallel bulk read, lean SELECT, chats looked up once)
/// prints exactly what the reader's row-by-row path gives, on every chunk
/// size and worker count; and the merged read (`read_after`) gives the same
/// rows as the joined single-row query (`rows_by_id`).
fn bulk_read_matches_row_by_row(path: &Path, rows: &[MessageRow]) {
    let db = ChatDb::open(path).expect("reader opens");
    let ids: Vec<i64> = rows.iter().map(|r| r.rowid).collect();
    assert_eq!(db.rows_by_id(&ids).expect("rows by id"), rows);
    let mut expected = Vec::new();
    for r in rows {
        if let Some(body) = r.to_body(None) {
            whatsnap_mac::cli::messages::write_line(&mut expected, &body).expect("json");
        }
    }
    assert!(!expected.is_empty());
    for (workers, chunk) in [(1, 4096), (2, 1), (2, 3), (3, 7)] {
        let mut got = Vec::new();
        let progress = bulk::read_json_in_chunks(path, 0, workers, chunk, |lines, _| {
            got.extend_from_slice(lines);
            Ok(())
        })
        .expect("bulk read");
        assert_eq!(progress.rows, rows.len() as u64);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
            "{workers} workers, chunks of {chunk} ROWIDs"
        );
    }
}

#[test]
fn a_utf16_body_with_a_bom_and_a_broken_body_with_text_fall_back_cleanly() {
    let (_dir, path, mut sim) = new_db(Release::Sequoia);
    let msg = sim.receive("+15551230002", "placeholder").expect("receive");
    drop(sim);
    let conn = rusqlite::Connection::open(&path).expect("rw");
    let mut utf16 = vec![0xFF, 0xFE];
    for unit in "héllo".encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    conn.execute(
        "UPDATE message SET attributedBody = ?1 WHERE guid = ?2",
        rusqlite::params![utf16, msg.guid],
    )
    .expect("utf16 body");
    let rows = read_all(&path);
    assert_eq!(message(row(&rows, &msg.guid)).text, "héllo");
    conn.execute(
        "UPDATE message SET attributedBody = x'040B', text = 'fallback' WHERE guid = ?1",
        [&msg.guid],
    )
    .expect("broken body");
    let rows = read_all(&path);
    assert_eq!(message(row(&rows, &msg.guid)).text, "fallback");
}
