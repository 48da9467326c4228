//! The send side of the simulated Messages: the rows a Mac writes for sends
//! beyond a plain iMessage text, so every outcome the sender must handle can
//! be produced for real in a WAL chat.db.
//!
//! - a send through a chosen service (iMessage or SMS) to a person, creating
//!   their one-to-one chat the way the release does (`iMessage;-;`/`SMS;-;`
//!   before Tahoe, one `any;-;` chat on Tahoe);
//! - files: a row whose body is the object replacement character, with an
//!   `attachment` row (transfer name, path, size) joined to it;
//! - rows that failed (`error` set, not sent), at once or later, as when a
//!   number is not registered with iMessage or an upload fails;
//! - Tahoe's ghost: an empty from-me row joined to no chat;
//! - group and one-to-one chats with any GUID, and incoming rows in them
//!   (echoes).
//!
//! It keeps its own connection, configured like the [`Simulator`]'s: new rows
//! stay in the WAL, as while Messages runs.
//!
//! [`Simulator`]: crate::sim::Simulator

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::apple_time::now_apple_nanos;
use crate::sim::body::attributed_body;
use crate::sim::{DEFAULT_ACCOUNT_GUID, DEFAULT_OWN_ADDRESS, SimError, SimMessage};

/// What Messages writes as the body of a message that is only a file.
pub const ATTACHMENT_BODY: &str = "\u{FFFC}";

/// `chat.style` of a group and of a one-to-one chat.
const STYLE_GROUP: i64 = 43;
const STYLE_DIRECT: i64 = 45;

/// What a simulated send carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimBody<'a> {
    /// A text.
    Text(&'a str),
    /// A file at this path.
    File(&'a Path),
}

/// How a simulated send ends in chat.db.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimOutcome {
    /// `is_sent`.
    pub is_sent: bool,
    /// `error` (0 = none; 22 not delivered / not on iMessage; 25 upload failed).
    pub error: i64,
}

impl SimOutcome {
    /// Sent and finished.
    pub const SENT: SimOutcome = SimOutcome {
        is_sent: true,
        error: 0,
    };

    /// Still going out (never finished).
    pub const PENDING: SimOutcome = SimOutcome {
        is_sent: false,
        error: 0,
    };

    /// Failed with Messages' error `code`.
    pub fn failed(code: i64) -> SimOutcome {
        SimOutcome {
            is_sent: false,
            error: code,
        }
    }
}

/// Writes the send-side rows of chat.db.
#[derive(Debug)]
pub struct SendSim {
    conn: Connection,
    path: PathBuf,
}

impl SendSim {
    /// Opens an existing simulated chat.db (made by `Simulator::create`).
    pub fn open(path: &Path) -> Result<SendSim, SimError> {
        let conn = super::writer::open_existing(path)?;
        Ok(SendSim {
            conn,
            path: path.to_owned(),
        })
    }

    fn write_err(&self, source: rusqlite::Error) -> SimError {
        SimError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn begin(&mut self) -> Result<Transaction<'_>, SimError> {
        let path = self.path.clone();
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| SimError::Write { path, source })
    }

    /// The service of chat `guid` and whether it is one-to-one, if it exists.
    pub fn chat(&self, guid: &str) -> Result<Option<(String, bool)>, SimError> {
        self.conn
            .query_row(
                "SELECT IFNULL(service_name, 'iMessage'), style FROM chat WHERE guid = ?1",
                [guid],
                |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)? == Some(STYLE_DIRECT))),
            )
            .optional()
            .map_err(|e| self.write_err(e))
    }

    /// The person of the one-to-one chat `guid`.
    pub fn direct_handle(&self, guid: &str) -> Result<Option<String>, SimError> {
        self.conn
            .query_row(
                "SELECT chat_identifier FROM chat WHERE guid = ?1 AND style = ?2",
                rusqlite::params![guid, STYLE_DIRECT],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.write_err(e))
    }

    /// Makes a one-to-one chat with exactly this GUID (e.g. Tahoe's
    /// `any;-;+1555…`, or an `SMS;-;` chat). Returns the GUID.
    pub fn create_direct_chat(
        &mut self,
        guid: &str,
        handle: &str,
        service: &str,
    ) -> Result<String, SimError> {
        let tx = self.begin()?;
        let handle_id = find_or_create_handle(&tx, handle, service)?;
        let chat = find_or_create_chat(&tx, guid, handle, service, STYLE_DIRECT, None)?;
        join_member(&tx, chat, handle_id)?;
        tx.commit().map_err(|e| self.write_err(e))?;
        Ok(guid.to_owned())
    }

    /// Makes a group chat with this GUID, members and name.
    pub fn create_group(
        &mut self,
        guid: &str,
        members: &[&str],
        name: &str,
        service: &str,
    ) -> Result<String, SimError> {
        let tx = self.begin()?;
        let identifier = guid.rsplit(';').next().unwrap_or(guid).to_owned();
        let chat = find_or_create_chat(&tx, guid, &identifier, service, STYLE_GROUP, Some(name))?;
        for m in members {
            let h = find_or_create_handle(&tx, m, service)?;
            join_member(&tx, chat, h)?;
        }
        tx.commit().map_err(|e| self.write_err(e))?;
        Ok(guid.to_owned())
    }

    /// A from-me row in the existing chat `guid`, carried by `service` (the
    /// chat's own when `None`). -1728 ([`SimError::NoSuchChat`]) when missing.
    pub fn send_to_chat(
        &mut self,
        guid: &str,
        body: SimBody<'_>,
        service: Option<&str>,
        outcome: SimOutcome,
    ) -> Result<SimMessage, SimError> {
        let Some((chat_service, direct)) = self.chat(guid)? else {
            return Err(SimError::NoSuchChat {
                guid: guid.to_owned(),
            });
        };
        let service = service.unwrap_or(&chat_service).to_owned();
        let tx = self.begin()?;
        let chat: i64 = tx
            .query_row("SELECT ROWID FROM chat WHERE guid = ?1", [guid], |r| {
                r.get(0)
            })
            .map_err(|e| write_err(&tx, e))?;
        let handle_id = if direct {
            tx.query_row(
                "SELECT handle_id FROM chat_handle_join WHERE chat_id = ?1 ORDER BY ROWID LIMIT 1",
                [chat],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| write_err(&tx, e))?
            .unwrap_or(0)
        } else {
            0
        };
        let written = insert_from_me(&tx, Some(chat), handle_id, &service, body, outcome)?;
        tx.commit().map_err(|e| self.write_err(e))?;
        Ok(SimMessage {
            rowid: written.0,
            guid: written.1,
            chat_guid: guid.to_owned(),
        })
    }

    /// A from-me row to a person through `service`, in their one-to-one chat
    /// for that service (made if missing): `<service>;-;<handle>`, or on
    /// Tahoe (`tahoe`) the one `any;-;<handle>` chat for every service.
    pub fn send_to_handle(
        &mut self,
        handle: &str,
        service: &str,
        tahoe: bool,
        body: SimBody<'_>,
        outcome: SimOutcome,
    ) -> Result<SimMessage, SimError> {
        let guid = if tahoe {
            format!("any;-;{handle}")
        } else {
            format!("{service};-;{handle}")
        };
        let tx = self.begin()?;
        let handle_id = find_or_create_handle(&tx, handle, service)?;
        let chat = find_or_create_chat(&tx, &guid, handle, service, STYLE_DIRECT, None)?;
        join_member(&tx, chat, handle_id)?;
        let written = insert_from_me(&tx, Some(chat), handle_id, service, body, outcome)?;
        tx.commit().map_err(|e| self.write_err(e))?;
        Ok(SimMessage {
            rowid: written.0,
            guid: written.1,
            chat_guid: guid,
        })
    }

    /// Tahoe's ghost: an empty from-me row routed to an SMS handle and joined
    /// to no chat (openclaw/imsg#90). Returns its GUID.
    pub fn ghost(&mut self, handle: &str) -> Result<String, SimError> {
        let tx = self.begin()?;
        let handle_id = find_or_create_handle(&tx, handle, "SMS")?;
        let guid = new_guid();
        tx.execute(
            "INSERT INTO message (guid, text, handle_id, attributedBody, version, service, \
               account, account_guid, date, is_finished, is_from_me, is_sent, \
               destination_caller_id, part_count) \
             VALUES (?1, NULL, ?2, NULL, 10, 'SMS', ?3, ?4, ?5, 1, 1, 1, ?6, 0)",
            rusqlite::params![
                guid,
                handle_id,
                format!("E:{DEFAULT_OWN_ADDRESS}"),
                DEFAULT_ACCOUNT_GUID,
                now_apple_nanos(),
                DEFAULT_OWN_ADDRESS,
            ],
        )
        .map_err(|e| write_err(&tx, e))?;
        tx.commit().map_err(|e| self.write_err(e))?;
        Ok(guid)
    }

    /// An incoming row from `from` in the existing chat `guid` (an echo of
    /// our own text, or a reply in a group).
    pub fn receive_in(
        &mut self,
        guid: &str,
        from: &str,
        text: &str,
    ) -> Result<SimMessage, SimError> {
        let Some((service, _)) = self.chat(guid)? else {
            return Err(SimError::NoSuchChat {
                guid: guid.to_owned(),
            });
        };
        let tx = self.begin()?;
        let chat: i64 = tx
            .query_row("SELECT ROWID FROM chat WHERE guid = ?1", [guid], |r| {
                r.get(0)
            })
            .map_err(|e| write_err(&tx, e))?;
        let handle_id = find_or_create_handle(&tx, from, &service)?;
        let guid_new = new_guid();
        let date = now_apple_nanos();
        tx.execute(
            "INSERT INTO message (guid, text, handle_id, attributedBody, version, service, \
               account, account_guid, date, is_delivered, is_finished, is_from_me, is_sent, \
               destination_caller_id, part_count) \
             VALUES (?1, NULL, ?2, ?3, 10, ?4, ?5, ?6, ?7, 1, 1, 0, 0, ?8, 1)",
            rusqlite::params![
                guid_new,
                handle_id,
                attributed_body(text),
                service,
                format!("E:{DEFAULT_OWN_ADDRESS}"),
                DEFAULT_ACCOUNT_GUID,
                date,
                DEFAULT_OWN_ADDRESS,
            ],
        )
        .map_err(|e| write_err(&tx, e))?;
        let rowid = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (?1, ?2, ?3)",
            [chat, rowid, date],
        )
        .map_err(|e| write_err(&tx, e))?;
        tx.commit().map_err(|e| self.write_err(e))?;
        Ok(SimMessage {
            rowid,
            guid: guid_new,
            chat_guid: guid.to_owned(),
        })
    }

    /// Every from-me row, oldest first, as (GUID, text as Messages shows
    /// it): what a test counts to prove a send went out at most once.
    pub fn from_me_rows(&self) -> Result<Vec<(String, String)>, SimError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT guid, text, attributedBody FROM message WHERE is_from_me = 1
                 ORDER BY ROWID",
            )
            .map_err(|e| self.write_err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                ))
            })
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(|e| self.write_err(e))?;
        Ok(rows
            .into_iter()
            .map(|(guid, text, body)| {
                // An undecodable body counts as a row with no text: it is
                // still a row that went out.
                let text =
                    crate::chatdb::typedstream::message_text(body.as_deref(), text.as_deref())
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                (guid, text)
            })
            .collect())
    }

    /// Messages reports a send failed after the fact: `error` set, `is_sent`
    /// cleared (the red exclamation mark on a bubble that went out).
    pub fn fail_later(&mut self, guid: &str, error: i64) -> Result<(), SimError> {
        let n = self
            .conn
            .execute(
                "UPDATE message SET error = ?2, is_sent = 0, is_delivered = 0 WHERE guid = ?1",
                rusqlite::params![guid, error],
            )
            .map_err(|e| self.write_err(e))?;
        if n == 0 {
            return Err(SimError::NoSuchMessage {
                guid: guid.to_owned(),
            });
        }
        Ok(())
    }
}

fn write_err(tx: &Transaction<'_>, source: rusqlite::Error) -> SimError {
    SimError::Write {
        path: tx.path().map(PathBuf::from).unwrap_or_default(),
        source,
    }
}

fn find_or_create_handle(tx: &Transaction<'_>, id: &str, service: &str) -> Result<i64, SimError> {
    let found: Option<i64> = tx
        .query_row(
            "SELECT ROWID FROM handle WHERE id = ?1 AND service = ?2",
            [id, service],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| write_err(tx, e))?;
    if let Some(rowid) = found {
        return Ok(rowid);
    }
    let country = id.starts_with('+').then_some("us");
    tx.execute(
        "INSERT INTO handle (id, country, service, uncanonicalized_id, person_centric_id) \
         VALUES (?1, ?2, ?3, NULL, NULL)",
        rusqlite::params![id, country, service],
    )
    .map_err(|e| write_err(tx, e))?;
    Ok(tx.last_insert_rowid())
}

fn find_or_create_chat(
    tx: &Transaction<'_>,
    guid: &str,
    identifier: &str,
    service: &str,
    style: i64,
    name: Option<&str>,
) -> Result<i64, SimError> {
    let found: Option<i64> = tx
        .query_row("SELECT ROWID FROM chat WHERE guid = ?1", [guid], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| write_err(tx, e))?;
    if let Some(rowid) = found {
        return Ok(rowid);
    }
    tx.execute(
        "INSERT INTO chat (guid, style, state, account_id, chat_identifier, service_name, \
           room_name, account_login, is_archived, last_addressed_handle, display_name, group_id, \
           is_filtered, successful_query) \
         VALUES (?1, ?2, 3, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10, 0, 1)",
        rusqlite::params![
            guid,
            style,
            DEFAULT_ACCOUNT_GUID,
            identifier,
            service,
            (style == STYLE_GROUP).then_some(identifier),
            format!("E:{DEFAULT_OWN_ADDRESS}"),
            DEFAULT_OWN_ADDRESS,
            name.unwrap_or(""),
            new_guid(),
        ],
    )
    .map_err(|e| write_err(tx, e))?;
    Ok(tx.last_insert_rowid())
}

fn join_member(tx: &Transaction<'_>, chat: i64, handle: i64) -> Result<(), SimError> {
    tx.execute(
        "INSERT OR IGNORE INTO chat_handle_join (chat_id, handle_id) VALUES (?1, ?2)",
        [chat, handle],
    )
    .map_err(|e| write_err(tx, e))?;
    Ok(())
}

fn insert_from_me(
    tx: &Transaction<'_>,
    chat: Option<i64>,
    handle_id: i64,
    service: &str,
    body: SimBody<'_>,
    outcome: SimOutcome,
) -> Result<(i64, String), SimError> {
    let guid = new_guid();
    let date = now_apple_nanos();
    let text = match body {
        SimBody::Text(t) => t,
        SimBody::File(_) => ATTACHMENT_BODY,
    };
    tx.execute(
        "INSERT INTO message (guid, text, handle_id, attributedBody, version, service, account, \
           account_guid, date, date_read, date_delivered, is_delivered, is_finished, is_from_me, \
           is_read, is_sent, error, date_played, destination_caller_id, part_count) \
         VALUES (?1, NULL, ?2, ?3, 10, ?4, ?5, ?6, ?7, 0, 0, 0, 1, 1, 0, ?8, ?9, 0, ?10, 1)",
        rusqlite::params![
            guid,
            handle_id,
            attributed_body(text),
            service,
            format!("E:{DEFAULT_OWN_ADDRESS}"),
            DEFAULT_ACCOUNT_GUID,
            date,
            i64::from(outcome.is_sent),
            outcome.error,
            DEFAULT_OWN_ADDRESS,
        ],
    )
    .map_err(|e| write_err(tx, e))?;
    let rowid = tx.last_insert_rowid();
    if let SimBody::File(path) = body {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let att = new_guid();
        tx.execute(
            "INSERT INTO attachment (guid, created_date, start_date, filename, uti, mime_type, \
               transfer_state, is_outgoing, transfer_name, total_bytes, original_guid) \
             VALUES (?1, ?2, ?2, ?3, NULL, NULL, ?4, 1, ?5, ?6, ?1)",
            rusqlite::params![
                att,
                date / 1_000_000_000,
                path.to_string_lossy(),
                if outcome.error == 0 { 5 } else { 6 },
                name,
                i64::try_from(size).unwrap_or(i64::MAX),
            ],
        )
        .map_err(|e| write_err(tx, e))?;
        let att_row = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?1, ?2)",
            [rowid, att_row],
        )
        .map_err(|e| write_err(tx, e))?;
    }
    if let Some(chat) = chat {
        tx.execute(
            "INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (?1, ?2, ?3)",
            [chat, rowid, date],
        )
        .map_err(|e| write_err(tx, e))?;
    }
    Ok((rowid, guid))
}

fn new_guid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string().to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::confirm::{ConfirmDb, Scope};
    use crate::sim::Simulator;

    #[tokio::test]
    async fn rows_of_every_send_shape_read_back_as_the_sender_sees_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        Simulator::create(&path).expect("create");
        let mut sim = SendSim::open(&path).expect("open");
        let file = dir.path().join("photo \"1\".jpg");
        std::fs::write(&file, b"jpeg").expect("file");
        let sms = sim
            .send_to_handle(
                "+15550001111",
                "SMS",
                false,
                SimBody::Text("hi"),
                SimOutcome::SENT,
            )
            .expect("sms");
        assert_eq!(sms.chat_guid, "SMS;-;+15550001111");
        let tahoe = sim
            .send_to_handle(
                "+15550002222",
                "iMessage",
                true,
                SimBody::File(&file),
                SimOutcome::SENT,
            )
            .expect("file");
        assert_eq!(tahoe.chat_guid, "any;-;+15550002222");
        let ghost = sim.ghost("+15550003333").expect("ghost");
        let db = ConfirmDb::new(path.clone());
        let rows = db
            .from_me_after(
                0,
                &Scope {
                    chat_guid: None,
                    direct_handle: Some("+15550002222".into()),
                },
            )
            .await
            .expect("rows");
        let file_row = rows
            .iter()
            .find(|r| r.guid == tahoe.guid)
            .expect("file row");
        assert_eq!(file_row.transfer_names, vec!["photo \"1\".jpg".to_string()]);
        assert_eq!(file_row.text.as_deref(), Some(ATTACHMENT_BODY));
        let ghost_row = rows.iter().find(|r| r.guid == ghost).expect("ghost row");
        assert!(ghost_row.is_ghost());
        assert!(
            !rows.iter().any(|r| r.guid == sms.guid),
            "another person's chat"
        );
        sim.fail_later(&tahoe.guid, 25).expect("fail");
        let rows = db
            .from_me_after(tahoe.rowid - 1, &Scope::default())
            .await
            .expect("rows");
        assert!(rows.iter().all(|r| r.guid != tahoe.guid), "not in scope");
    }
}
