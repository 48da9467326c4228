//! The service's SQLite file: opening it, its schema, and running work on it.
//!
//! One connection in WAL mode behind a `std::sync::Mutex`; every use goes
//! through [`Db::call`], which runs the closure on tokio's blocking pool so
//! SQLite never blocks an async worker and the lock is never held across an
//! `.await`. Migrations are hand-rolled on `PRAGMA user_version`: each entry of
//! `MIGRATIONS` runs once, in order, in its own transaction. What the tables
//! mean is the business of [`crate::store`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file could not be opened or created.
    #[error(
        "cannot open the database {path}: {source}; check that the folder exists and is writable, or pass another --db"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The file was written by a newer version of the service.
    #[error(
        "the database {path} has schema version {found}, newer than this build's {known}; run a newer whatsnap-relay"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task died (a panic in a closure) or the runtime is shutting down.
    #[error("database task failed: {0}")]
    Task(String),
}

/// Schema, one entry per version. Never edit an entry that has shipped: add one.
const MIGRATIONS: &[&str] = &[
    // 1: the walking skeleton.
    r"
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        tag TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        settings_version INTEGER NOT NULL DEFAULT 0,
        settings_json TEXT NOT NULL DEFAULT '{}',
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE pairing_codes (
        code_hash TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        used_ms INTEGER,
        failed_tries INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        model TEXT NOT NULL,
        macos_version TEXT NOT NULL,
        daemon_version TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER,
        replaced_ms INTEGER,
        events_epoch TEXT NOT NULL DEFAULT '',
        events_committed INTEGER NOT NULL DEFAULT 0,
        commands_epoch TEXT NOT NULL,
        last_seen_ms INTEGER,
        disconnected_ms INTEGER,
        needs_update INTEGER NOT NULL DEFAULT 0,
        last_status_json TEXT
    );
    CREATE INDEX devices_account ON devices(account_id);
    CREATE TABLE commands (
        device_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        client_msg_id TEXT,
        frame_json TEXT NOT NULL,
        acked INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (device_id, seq)
    );
    CREATE TABLE contacts (
        id TEXT PRIMARY KEY,
        handle TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE contact_tags (
        contact_id TEXT NOT NULL,
        tag TEXT NOT NULL,
        source TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        UNIQUE (contact_id, tag)
    );
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        direction TEXT NOT NULL,
        text TEXT NOT NULL,
        device_id TEXT,
        event_key TEXT,
        guid TEXT,
        chat_guid TEXT,
        client_msg_id TEXT UNIQUE,
        state TEXT,
        guids_json TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        created_ms INTEGER NOT NULL,
        UNIQUE (device_id, event_key)
    );
    CREATE INDEX messages_contact ON messages(contact_id, created_ms);
    ",
    // 2: the event stream may start anywhere after a new epoch (protocol 4.2
    // rule 1): 1 = no committed value yet, the first event sets it.
    r"
    ALTER TABLE devices ADD COLUMN events_unanchored INTEGER NOT NULL DEFAULT 0;
    ",
    // 3: token rotation (protocol 13): a device's previous token keeps
    // working until `valid_until_ms`, so a daemon that crashed before storing
    // its new token can still connect and rotate again.
    r"
    CREATE TABLE previous_device_tokens (
        token_hash TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        valid_until_ms INTEGER NOT NULL
    );
    CREATE INDEX previous_device_tokens_device ON previous_device_tokens(device_id);
    ",
];

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens or creates the file, switches to WAL, and migrates.
    pub async fn open(path: &Path) -> Result<Db, DbError> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .map_err(|e| DbError::Task(e.to_string()))??;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic in an earlier closure poisons the lock; the connection
            // itself is still usable (SQLite rolled back the transaction).
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| E::from(DbError::Task(e.to_string())))?
    }
}

fn open_blocking(path: &Path) -> Result<Connection, DbError> {
    let open_err = |source| DbError::Open {
        path: path.to_owned(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    // Applying an event dirties pages of several `messages` indexes, two in
    // random order: a cache that holds them saves a read per page, and a
    // checkpoint every 10,000 pages (40 MB of WAL, instead of 1,000) copies
    // a page rewritten by many commits once, with one pair of fsyncs. A
    // catch-up of 100,000 events went from ~12,000 to 17,000-20,000/s.
    // Durability is unchanged: each commit is in the WAL as before.
    conn.pragma_update(None, "cache_size", -32768)
        .map_err(open_err)?;
    conn.pragma_update(None, "wal_autocheckpoint", 10000)
        .map_err(open_err)?;
    // Applying an event runs a dozen statements; keep them all compiled.
    conn.set_prepared_statement_cache_capacity(64);
    migrate(&mut conn, path)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), DbError> {
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(DbError::TooNew {
            path: path.to_owned(),
            found,
            known,
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS.iter())
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "database migrated");
    }
    Ok(())
}

/// Migrates an in-memory connection, for unit tests of [`crate::store`].
#[cfg(test)]
pub(crate) fn migrate_for_tests(conn: &mut Connection) {
    migrate(conn, Path::new(":memory:")).expect("migrations apply");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opening_twice_keeps_the_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.db");
        let db = Db::open(&path).await.expect("first open");
        drop(db);
        let db = Db::open(&path).await.expect("second open");
        let version: i64 = db
            .call(|c| {
                c.pragma_query_value(None, "user_version", |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .expect("query");
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).expect("few"));
    }
}
