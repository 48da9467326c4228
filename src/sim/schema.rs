//! The chat.db schemas the simulator creates: one per macOS release from 11
//! Big Sur to 26 Tahoe, each freshly made.
//!
//! The DDL lives in `fixtures/schema/macos*.sql` (written by us from the
//! schema facts and the column history, not copied from a dump) and is
//! embedded here so the binary can create a database anywhere. The tests check
//! them column for column against the public dumps in the shared reference
//! folder when that folder is present, so a typo in a type or default cannot
//! slip in.

/// DDL and initial rows of a fresh macOS 15 Sequoia chat.db.
pub const SEQUOIA_SQL: &str = include_str!("../../fixtures/schema/macos15-sequoia.sql");

/// `_SqliteDatabaseProperties._ClientVersion` of the Sequoia schema.
pub const SEQUOIA_CLIENT_VERSION: &str = "18020";

/// A macOS release whose chat.db schema the simulator can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Release {
    /// macOS 11 Big Sur.
    BigSur,
    /// macOS 12 Monterey.
    Monterey,
    /// macOS 13.0 Ventura (edits and unsends appear).
    Ventura,
    /// macOS 14 Sonoma.
    Sonoma,
    /// macOS 15 Sequoia (emoji tapbacks, RCS).
    Sequoia,
    /// macOS 26 Tahoe (`any;` chat GUIDs).
    Tahoe,
}

impl Release {
    /// Every release, oldest first.
    pub const ALL: [Release; 6] = [
        Release::BigSur,
        Release::Monterey,
        Release::Ventura,
        Release::Sonoma,
        Release::Sequoia,
        Release::Tahoe,
    ];

    /// The DDL and initial rows of a fresh database of this release.
    pub fn sql(self) -> &'static str {
        match self {
            Release::BigSur => include_str!("../../fixtures/schema/macos11-bigsur.sql"),
            Release::Monterey => include_str!("../../fixtures/schema/macos12-monterey.sql"),
            Release::Ventura => include_str!("../../fixtures/schema/macos13-ventura.sql"),
            Release::Sonoma => include_str!("../../fixtures/schema/macos14-sonoma.sql"),
            Release::Sequoia => SEQUOIA_SQL,
            Release::Tahoe => include_str!("../../fixtures/schema/macos26-tahoe.sql"),
        }
    }

    /// The fixture's file stem, e.g. `macos15-sequoia`.
    pub fn name(self) -> &'static str {
        match self {
            Release::BigSur => "macos11-bigsur",
            Release::Monterey => "macos12-monterey",
            Release::Ventura => "macos13-ventura",
            Release::Sonoma => "macos14-sonoma",
            Release::Sequoia => "macos15-sequoia",
            Release::Tahoe => "macos26-tahoe",
        }
    }

    /// The prefix Messages puts on new chat GUIDs: the service up to
    /// Sequoia, `any` from Tahoe on (reference section 15).
    pub fn chat_guid_prefix(self, service: &str) -> String {
        match self {
            Release::Tahoe => "any".to_owned(),
            _ => service.to_owned(),
        }
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Release {
    type Err = String;

    /// Accepts `11`, `bigsur`, `macos11-bigsur`, `big-sur`, ... case-insensitively.
    fn from_str(s: &str) -> Result<Release, String> {
        let lower = s.to_ascii_lowercase().replace(['-', '_', ' '], "");
        for release in Release::ALL {
            let name = release.name().replace('-', "");
            let (number, word) = name.trim_start_matches("macos").split_at(2);
            if lower == name
                || lower == number
                || lower == word
                || lower == format!("macos{number}")
            {
                return Ok(release);
            }
        }
        Err(format!(
            "unknown macOS release {s:?}; use one of 11, 12, 13, 14, 15, 26 (or bigsur, monterey, ventura, sonoma, sequoia, tahoe)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use rusqlite::Connection;

    use super::*;

    const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/chatdb-schemas");

    /// One `PRAGMA table_info` row: name, declared type, NOT NULL, default, pk.
    type Column = (String, String, bool, Option<String>, i64);

    fn ours() -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory db");
        conn.execute_batch(SEQUOIA_SQL).expect("our DDL runs");
        conn
    }

    /// A real dump from the shared folder, or `None` (with a note) when the
    /// folder is not there, e.g. on a fresh clone outside the workspace.
    fn shared_dump(name: &str) -> Option<String> {
        let path = Path::new(SHARED).join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(err) => {
                println!("skipped: cannot read {} ({err})", path.display());
                None
            }
        }
    }

    /// Loads a `sqlite3 .schema` dump, skipping SQLite's own tables, which
    /// cannot be created by hand.
    fn load_dump(text: &str) -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory db");
        conn.execute_batch(&crate::sim::strip_internal_tables(text))
            .expect("dump loads");
        conn
    }

    fn objects(conn: &Connection, kind: &str) -> BTreeSet<String> {
        let mut stmt = conn
            .prepare(
                "SELECT name FROM sqlite_master \
                 WHERE type = ?1 AND name NOT LIKE 'sqlite_%'",
            )
            .expect("prepare");
        stmt.query_map([kind], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    fn columns(conn: &Connection, table: &str) -> Vec<Column> {
        let mut stmt = conn
            .prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)")
            .expect("prepare");
        stmt.query_map([table], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    /// Every index of a table (including the automatic ones behind UNIQUE and
    /// PRIMARY KEY) as (unique, partial, columns), keyed by name for named
    /// indexes and by column list for automatic ones, whose names are
    /// numbered by position and so not comparable.
    fn indexes(conn: &Connection, table: &str) -> BTreeMap<String, (bool, bool, Vec<String>)> {
        let mut list = conn
            .prepare("SELECT name, \"unique\", partial FROM pragma_index_list(?1)")
            .expect("prepare");
        let rows: Vec<(String, bool, bool)> = list
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let mut out = BTreeMap::new();
        for (name, unique, partial) in rows {
            let mut info = conn
                .prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                .expect("prepare");
            let cols: Vec<String> = info
                .query_map([&name], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows");
            let key = if name.starts_with("sqlite_autoindex_") {
                format!("auto({})", cols.join(","))
            } else {
                name
            };
            out.insert(key, (unique, partial, cols));
        }
        out
    }

    #[test]
    fn tables_and_columns_match_a_freshly_created_sequoia_database() {
        let Some(dump) = shared_dump("macos15-sequoia-fresh-tables.sql") else {
            return;
        };
        let real = load_dump(&dump);
        let ours = ours();
        assert_eq!(objects(&ours, "table"), objects(&real, "table"));
        for table in objects(&real, "table") {
            assert_eq!(
                columns(&ours, &table),
                columns(&real, &table),
                "columns of {table} (name, type, not null, default, pk) in order"
            );
            let auto = |m: BTreeMap<String, (bool, bool, Vec<String>)>| {
                m.into_iter()
                    .filter(|(k, _)| k.starts_with("auto("))
                    .collect::<BTreeMap<_, _>>()
            };
            assert_eq!(
                auto(indexes(&ours, &table)),
                auto(indexes(&real, &table)),
                "UNIQUE / PRIMARY KEY constraints of {table}"
            );
        }
    }

    #[test]
    fn the_five_tables_a_reader_uses_have_the_fresh_column_order() {
        // Spelled out separately so a failure names the table a watcher reads.
        let Some(dump) = shared_dump("macos15-sequoia-fresh-tables.sql") else {
            return;
        };
        let real = load_dump(&dump);
        let ours = ours();
        for table in [
            "message",
            "chat",
            "handle",
            "attachment",
            "chat_message_join",
        ] {
            let names = |c: &Connection| -> Vec<String> {
                columns(c, table).into_iter().map(|col| col.0).collect()
            };
            assert!(!names(&ours).is_empty(), "{table} exists");
            assert_eq!(names(&ours), names(&real), "column order of {table}");
        }
    }

    #[test]
    fn indexes_are_apples_sequoia_indexes() {
        let Some(dump) = shared_dump("macos15-sequoia.sql") else {
            return;
        };
        let real = load_dump(&dump);
        let ours = ours();
        assert_eq!(objects(&ours, "index"), objects(&real, "index"));
        for table in objects(&ours, "table") {
            let named = |m: BTreeMap<String, (bool, bool, Vec<String>)>| {
                m.into_iter()
                    .filter(|(k, _)| !k.starts_with("auto("))
                    .collect::<BTreeMap<_, _>>()
            };
            assert_eq!(
                named(indexes(&ours, &table)),
                named(indexes(&real, &table)),
                "indexes on {table} (unique, partial, columns)"
            );
        }
    }

    #[test]
    fn triggers_are_the_insert_and_update_ones_of_sequoia() {
        let expected: BTreeSet<String> = [
            "after_insert_on_chat_message_join",
            "after_insert_on_message_attachment_join",
            "update_message_date_after_update_on_message",
            "update_last_failed_message_date",
        ]
        .map(String::from)
        .into();
        assert_eq!(objects(&ours(), "trigger"), expected);
        if let Some(dump) = shared_dump("macos15-sequoia.sql") {
            let real = objects(&load_dump(&dump), "trigger");
            assert!(expected.is_subset(&real), "names as on a Mac");
        }
    }

    #[test]
    fn database_identity_is_sequoia() {
        let conn = ours();
        let version: String = conn
            .query_row(
                "SELECT value FROM _SqliteDatabaseProperties WHERE key = '_ClientVersion'",
                [],
                |r| r.get(0),
            )
            .expect("_ClientVersion row");
        assert_eq!(version, SEQUOIA_CLIENT_VERSION);
    }

    #[test]
    fn joining_a_message_to_a_chat_rewrites_its_cache_roomnames() {
        let conn = ours();
        conn.execute_batch(
            "INSERT INTO chat (guid, style, room_name) VALUES ('iMessage;+;chat1', 43, 'chat1');
             INSERT INTO chat (guid, style) VALUES ('iMessage;-;+15550100', 45);
             INSERT INTO message (guid, date) VALUES ('G1', 5), ('G2', 6);
             INSERT INTO chat_message_join VALUES (1, 1, 5), (2, 2, 6);",
        )
        .expect("rows");
        let rooms: Vec<Option<String>> = conn
            .prepare("SELECT cache_roomnames FROM message ORDER BY ROWID")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(rooms, vec![Some("chat1".to_owned()), None]);
    }

    #[test]
    fn updating_a_message_date_moves_the_join_date_and_errors_are_remembered() {
        let conn = ours();
        conn.execute_batch(
            "INSERT INTO chat (guid, style) VALUES ('iMessage;-;+15550100', 45);
             INSERT INTO message (guid, date) VALUES ('G1', 5);
             INSERT INTO chat_message_join VALUES (1, 1, 5);
             INSERT INTO attachment (guid, original_guid) VALUES ('A1', 'A1');
             INSERT INTO message_attachment_join VALUES (1, 1);
             UPDATE message SET date = 7 WHERE ROWID = 1;
             UPDATE message SET error = 4 WHERE ROWID = 1;",
        )
        .expect("rows");
        let join_date: i64 = conn
            .query_row("SELECT message_date FROM chat_message_join", [], |r| {
                r.get(0)
            })
            .expect("join");
        assert_eq!(join_date, 7);
        let has_attachments: i64 = conn
            .query_row("SELECT cache_has_attachments FROM message", [], |r| {
                r.get(0)
            })
            .expect("message");
        assert_eq!(has_attachments, 1);
        let failed: i64 = conn
            .query_row(
                "SELECT value FROM kvtable WHERE key = 'lastFailedMessageRowID'",
                [],
                |r| r.get(0),
            )
            .expect("kvtable row");
        assert_eq!(failed, 1);
    }
}
