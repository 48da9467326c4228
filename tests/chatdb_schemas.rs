//! Our release fixtures against the public dumps, and the reader against a
//! database made from each dump.
//!
//! The dumps live outside the project (`../shared/chatdb-schemas`); when that
//! folder is absent (a fresh clone) each test prints a note and passes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use whatsnap_mac::chatdb::ChatDb;
use whatsnap_mac::sim::kinds::{SimAttachment, SimChat, SimRow, TAPBACK_LOVE};
use whatsnap_mac::sim::{Release, Simulator};
use whatsnap_proto::frame::{Body, ChatKind};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/chatdb-schemas");

/// Each dump and the fixture of its release (the macOS 27 beta has none).
const DUMPS: &[(&str, Option<Release>)] = &[
    ("macos12-monterey.sql", Some(Release::Monterey)),
    ("macos13-ventura.sql", Some(Release::Ventura)),
    ("macos14-sonoma.sql", Some(Release::Sonoma)),
    ("macos15-sequoia-fresh-tables.sql", Some(Release::Sequoia)),
    ("macos15-sequoia.sql", None),
    ("macos26-tahoe.sql", Some(Release::Tahoe)),
    ("macos27-beta.sql", None),
];

fn dump(name: &str) -> Option<String> {
    let path = Path::new(SHARED).join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(err) => {
            println!("skipped: cannot read {} ({err})", path.display());
            None
        }
    }
}

/// A schema in memory, SQLite's own tables skipped as the simulator does.
fn load(sql: &str) -> Connection {
    let conn = Connection::open_in_memory().expect("memory");
    conn.execute_batch(&whatsnap_mac::sim::strip_internal_tables(sql))
        .expect("schema loads");
    conn
}

fn tables(conn: &Connection) -> BTreeSet<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn columns(conn: &Connection, table: &str) -> BTreeSet<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info(?1)")
        .expect("prepare");
    stmt.query_map([table], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn each_release_fixture_has_the_columns_of_its_dump() {
    for (name, release) in DUMPS {
        let (Some(release), Some(text)) = (release, dump(name)) else {
            continue;
        };
        let real = load(&text);
        let ours = load(release.sql());
        for table in tables(&real) {
            assert!(
                tables(&ours).contains(&table),
                "{release}: table {table} missing"
            );
            assert_eq!(
                columns(&ours, &table),
                columns(&real, &table),
                "{release} vs {name}: columns of {table}"
            );
        }
        if tables(&real).len() > 10 {
            assert_eq!(tables(&ours), tables(&real), "{release}: full table list");
        }
    }
}

#[test]
fn big_sur_is_monterey_without_the_monterey_additions() {
    let Some(text) = dump("macos12-monterey.sql") else {
        return;
    };
    let monterey = load(&text);
    let big_sur = load(Release::BigSur.sql());
    let added: &[(&str, &[&str])] = &[
        (
            "message",
            &[
                "syndication_ranges",
                "synced_syndication_ranges",
                "was_delivered_quietly",
                "did_notify_recipient",
            ],
        ),
        ("chat", &["syndication_date", "syndication_type"]),
        ("attachment", &["is_commsafety_sensitive"]),
    ];
    for (table, cols) in added {
        let mut expected = columns(&monterey, table);
        for c in *cols {
            assert!(expected.remove(*c), "{c} is in Monterey's {table}");
        }
        assert_eq!(columns(&big_sur, table), expected, "Big Sur {table}");
    }
    assert_eq!(tables(&big_sur), tables(&monterey));
}

/// A database from a dump, with the tables a partial dump lacks taken from
/// our nearest fixture (the Sonoma, Tahoe and 27 dumps only list some).
fn db_from_dump(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("chat.db");
    let real = load(text);
    let fixture = load(Release::Tahoe.sql());
    let mut sql = text.to_owned();
    for table in tables(&fixture).difference(&tables(&real)) {
        let create: String = fixture
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .expect("fixture table");
        sql.push_str(&format!(";\n{create};\n"));
    }
    drop(Simulator::create_with_sql(&path, &sql).expect("db from dump"));
    path
}

#[test]
fn the_reader_works_unchanged_on_a_database_made_from_each_dump() {
    for (name, _) in DUMPS {
        let Some(text) = dump(name) else {
            continue;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let path = db_from_dump(dir.path(), &text);
        let mut sim = Simulator::open(&path).expect("simulator opens");
        let ann = "+15551230001";
        let hello = sim
            .write(&SimRow::incoming(ann, "hello from a dump"))
            .expect("write");
        let group = SimChat::group("chat99", Some("Crew"), &[ann, "bo@example.com"]);
        let mut pic = SimRow::from_me(group, "pic");
        pic.attachments = vec![SimAttachment {
            name: "a.png".into(),
            mime: Some("image/png".into()),
            uti: None,
            content: vec![1, 2, 3],
            downloaded: true,
        }];
        let pic = sim.write(&pic).expect("group with file");
        let love = sim
            .react(
                &SimChat::direct(ann),
                Some(ann),
                &hello.guid,
                TAPBACK_LOVE,
                None,
            )
            .expect("tapback");

        let db = ChatDb::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rows = db
            .read_after(0, 100)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(rows.len(), 3, "{name}");
        let events: Vec<Body> = rows.iter().filter_map(|r| r.to_body(None)).collect();
        match &events[..] {
            [
                Body::EventMessage(a),
                Body::EventMessage(b),
                Body::EventReaction(c),
            ] => {
                assert_eq!(a.text, "hello from a dump", "{name}");
                assert_eq!(a.guid, hello.guid);
                assert_eq!(b.chat_kind, ChatKind::Group, "{name}");
                assert_eq!(b.group_name.as_deref(), Some("Crew"));
                assert_eq!(b.attachments.len(), 1, "{name}");
                assert_eq!(b.guid, pic.guid);
                assert_eq!(
                    (c.target_guid.as_str(), c.kind.as_str()),
                    (hello.guid.as_str(), "love")
                );
                assert_eq!(c.event_key, format!("react:{}", love.guid));
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}
