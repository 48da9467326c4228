//! What the service remembers, and the rules that change it.
//!
//! Every function here is synchronous and takes a `rusqlite::Connection`; the
//! async layers (`http`, [`crate::session`]) run them through
//! [`crate::db::Db::call`]. Each public operation is one transaction, so a
//! crash leaves either all of its effect or none. In particular an event's
//! effect and the stream's new `committed` value are written together
//! ([`apply_event`]), and a command is stored with its sequence number before
//! anyone may push it ([`queue_message`]). Errors meant for API callers are
//! [`ServiceError::Refused`] with an HTTP status and a message saying what to
//! do. The in-memory side (who is connected) lives in `hub`.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::{Map, Value};
use whatsnap_proto::ACCOUNT_TAG_PREFIX;
use whatsnap_proto::api::{
    AccountKind, AccountState, AccountView, ContactView, CreateAccountResponse, DeviceInfo,
    DisconnectReason, MessageView, OutboundState, PairingCode, SendMessageRequest,
};
use whatsnap_proto::frame::{
    Body, ChatKind, CmdSend, EventMessage, Frame, Health, SendResult, SendState, SendTo,
    ServicePref, SettingsData, Status,
};

use crate::RelayEvent;
use crate::db::DbError;
use crate::secret::{self, RandomError};

/// How long a pairing code works.
pub const PAIRING_CODE_TTL_MS: i64 = 10 * 60 * 1000;

/// Wrong pairing attempts after which the live codes stop working.
pub const MAX_CODE_TRIES: i64 = 5;

/// How long a queued send may wait for its device (`queue_ttl`).
pub const SEND_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// Largest outbound text (protocol §7.9).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// An operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request cannot be done as asked; the message says why and what to do.
    #[error("{message}")]
    Refused {
        /// HTTP status to answer with.
        status: u16,
        /// Machine-readable code.
        code: &'static str,
        /// For people.
        message: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// No randomness for a token or code.
    #[error(transparent)]
    Random(#[from] RandomError),
}

impl From<rusqlite::Error> for ServiceError {
    fn from(e: rusqlite::Error) -> Self {
        ServiceError::Db(DbError::Sqlite(e))
    }
}

impl ServiceError {
    fn refused(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Refused {
            status,
            code,
            message: message.into(),
        }
    }
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

// ---------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------

/// An account with its latest device, as stored.
#[derive(Debug, Clone)]
pub struct AccountRecord {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Tag (stored at creation, never recomputed).
    pub tag: String,
    /// Settings, with their version.
    pub settings: SettingsData,
    /// The most recently paired device, if any.
    pub device: Option<DeviceRecord>,
}

/// A paired device, as stored.
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    /// Id.
    pub id: String,
    /// Paired at.
    pub created_ms: i64,
    /// Revoked by an admin (account removed).
    pub revoked_ms: Option<i64>,
    /// Replaced by a newer pairing.
    pub replaced_ms: Option<i64>,
    /// Last frame seen (written at session end and on status frames).
    pub last_seen_ms: Option<i64>,
    /// When its last session ended.
    pub disconnected_ms: Option<i64>,
    /// Its daemon speaks no protocol version we know.
    pub needs_update: bool,
    /// Its latest health report.
    pub last_status: Option<Status>,
}

impl DeviceRecord {
    /// Neither revoked nor replaced: the one that routes the account's sends.
    pub fn is_current(&self) -> bool {
        self.revoked_ms.is_none() && self.replaced_ms.is_none()
    }
}

/// The tag an account named `name` gets, before collision suffixes:
/// `whatsnap-account-` + the name with spaces as `-` and only
/// `[A-Za-z0-9_-]` kept. `None` when nothing usable is left.
pub fn tag_for_name(name: &str) -> Option<String> {
    let cleaned: String = name
        .trim()
        .chars()
        .map(|c| if c == ' ' { '-' } else { c })
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    cleaned
        .chars()
        .any(|c| c.is_ascii_alphanumeric())
        .then(|| format!("{ACCOUNT_TAG_PREFIX}{cleaned}"))
}

fn settings_from_row(version: i64, json: &str) -> SettingsData {
    let values = serde_json::from_str::<Map<String, Value>>(json).unwrap_or_default();
    SettingsData {
        version: u64::try_from(version).unwrap_or(0),
        values,
    }
}

const ACCOUNT_COLS: &str = "id, name, tag, settings_version, settings_json";

fn account_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AccountRecord> {
    let version: i64 = row.get(3)?;
    let json: String = row.get(4)?;
    Ok(AccountRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        tag: row.get(2)?,
        settings: settings_from_row(version, &json),
        device: None,
    })
}

fn latest_device(conn: &Connection, account_id: &str) -> Result<Option<DeviceRecord>> {
    let device = conn
        .query_row(
            "SELECT id, created_ms, revoked_ms, replaced_ms, last_seen_ms, disconnected_ms,
                    needs_update, last_status_json
             FROM devices WHERE account_id = ?1 ORDER BY created_ms DESC, rowid DESC LIMIT 1",
            [account_id],
            |row| {
                let status: Option<String> = row.get(7)?;
                Ok(DeviceRecord {
                    id: row.get(0)?,
                    created_ms: row.get(1)?,
                    revoked_ms: row.get(2)?,
                    replaced_ms: row.get(3)?,
                    last_seen_ms: row.get(4)?,
                    disconnected_ms: row.get(5)?,
                    needs_update: row.get::<_, i64>(6)? != 0,
                    last_status: status.and_then(|s| serde_json::from_str(&s).ok()),
                })
            },
        )
        .optional()?;
    Ok(device)
}

fn with_device(conn: &Connection, mut account: AccountRecord) -> Result<AccountRecord> {
    account.device = latest_device(conn, &account.id)?;
    Ok(account)
}

/// The account with this id.
pub fn account_by_id(conn: &Connection, id: &str) -> Result<Option<AccountRecord>> {
    let account = conn
        .query_row(
            &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?1"),
            [id],
            account_from_row,
        )
        .optional()?;
    account.map(|a| with_device(conn, a)).transpose()
}

/// The account named by `key`: its id, its tag, or its exact name.
pub fn resolve_account(conn: &Connection, key: &str) -> Result<AccountRecord> {
    if let Some(a) = account_by_id(conn, key)? {
        return Ok(a);
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT {ACCOUNT_COLS} FROM accounts WHERE tag = ?1 OR name = ?1 ORDER BY created_ms"
    ))?;
    let found = stmt
        .query_map([key], account_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // A tag is unique; prefer it over a name that several accounts share.
    if let Some(a) = found.iter().find(|a| a.tag == key) {
        return with_device(conn, a.clone());
    }
    match found.len() {
        0 => Err(ServiceError::refused(
            404,
            "unknown_account",
            format!(
                "no account {key:?}; list accounts with `whatsnap-relay account list` and use a name, tag or id"
            ),
        )),
        1 => with_device(conn, found.into_iter().next().ok_or_else(unreachable_err)?),
        _ => Err(ServiceError::refused(
            409,
            "ambiguous_account",
            format!(
                "several accounts are named {key:?}; use one of their tags instead: {}",
                found
                    .iter()
                    .map(|a| a.tag.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn unreachable_err() -> ServiceError {
    ServiceError::refused(500, "internal", "internal error; please report it")
}

/// All accounts, oldest first.
pub fn list_accounts(conn: &Connection) -> Result<Vec<AccountRecord>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {ACCOUNT_COLS} FROM accounts ORDER BY created_ms, rowid"
    ))?;
    let accounts = stmt
        .query_map([], account_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    accounts.into_iter().map(|a| with_device(conn, a)).collect()
}

/// How the admin API shows an account. `live_since` is when the device's
/// current session completed `welcome`, if it is open (from the hub).
pub fn account_view(account: &AccountRecord, live_since: Option<i64>) -> AccountView {
    let (status, reason, since_ms, warning) = match (&account.device, live_since) {
        (None, _) => (
            AccountState::Disconnected,
            Some(DisconnectReason::NeverPaired),
            None,
            None,
        ),
        (Some(d), _) if d.revoked_ms.is_some() => (
            AccountState::Disconnected,
            Some(DisconnectReason::Revoked),
            d.revoked_ms,
            None,
        ),
        (Some(d), _) if d.replaced_ms.is_some() => (
            AccountState::Disconnected,
            Some(DisconnectReason::Replaced),
            d.replaced_ms,
            None,
        ),
        (Some(d), Some(since)) => {
            let warning = d.last_status.as_ref().and_then(|s| match s.health {
                Health::Ok => None,
                Health::Degraded | Health::Blocked => Some(s.detail.clone().unwrap_or_else(|| {
                    "the Mac reports a problem; run `whatsnap-mac doctor` on it".into()
                })),
            });
            (AccountState::Active, None, Some(since), warning)
        }
        (Some(d), None) if d.needs_update => (
            AccountState::Disconnected,
            Some(DisconnectReason::NeedsUpdate),
            d.disconnected_ms,
            None,
        ),
        (Some(d), None) => (
            AccountState::Disconnected,
            Some(DisconnectReason::Offline),
            Some(d.disconnected_ms.unwrap_or(d.created_ms)),
            None,
        ),
    };
    AccountView {
        id: account.id.clone(),
        name: account.name.clone(),
        tag: account.tag.clone(),
        kind: AccountKind::Imessage,
        status,
        reason,
        since_ms,
        last_seen_ms: account.device.as_ref().and_then(|d| d.last_seen_ms),
        warning,
        device_id: account.device.as_ref().map(|d| d.id.clone()),
        settings: account.settings.clone(),
    }
}

/// Creates an account with a unique tag and its first pairing code.
pub fn create_account(
    conn: &mut Connection,
    name: &str,
    now: i64,
) -> Result<(AccountRecord, PairingCode)> {
    let name = name.trim();
    let Some(base) = tag_for_name(name) else {
        return Err(ServiceError::refused(
            400,
            "bad_name",
            format!(
                "account name {name:?} has no letters or digits to make a tag from; use a name like \"Mike\" or \"Front Desk\""
            ),
        ));
    };
    let tx = conn.transaction()?;
    let mut tag = base.clone();
    let mut n = 2;
    // Tags are compared without case: CRMs often fold tag case.
    while tx
        .query_row(
            "SELECT 1 FROM accounts WHERE tag = ?1 COLLATE NOCASE",
            [&tag],
            |_| Ok(()),
        )
        .optional()?
        .is_some()
    {
        tag = format!("{base}-{n}");
        n += 1;
    }
    let id = new_id();
    tx.execute(
        "INSERT INTO accounts (id, name, tag, kind, settings_version, settings_json, created_ms)
         VALUES (?1, ?2, ?3, 'imessage', 0, '{}', ?4)",
        params![id, name, tag, now],
    )?;
    let code = insert_pairing_code(&tx, &id, now)?;
    tx.commit()?;
    let account = AccountRecord {
        id,
        name: name.to_owned(),
        tag,
        settings: SettingsData {
            version: 0,
            values: Map::new(),
        },
        device: None,
    };
    Ok((account, code))
}

/// The answer of `POST /v1/accounts`.
pub fn create_account_response(
    account: &AccountRecord,
    code: PairingCode,
) -> CreateAccountResponse {
    CreateAccountResponse {
        account: account_view(account, None),
        pairing: code,
    }
}

fn insert_pairing_code(tx: &Transaction<'_>, account_id: &str, now: i64) -> Result<PairingCode> {
    let code = secret::new_pairing_code()?;
    let expires_ms = now + PAIRING_CODE_TTL_MS;
    tx.execute(
        "INSERT INTO pairing_codes (code_hash, account_id, expires_ms) VALUES (?1, ?2, ?3)",
        params![secret::sha256_hex(&code), account_id, expires_ms],
    )?;
    Ok(PairingCode {
        code: secret::display_code(&code),
        expires_at_ms: expires_ms,
    })
}

/// A new pairing code for the account named by `key`.
pub fn new_pairing_code(conn: &mut Connection, key: &str, now: i64) -> Result<PairingCode> {
    let tx = conn.transaction()?;
    let account = resolve_account(&tx, key)?;
    let code = insert_pairing_code(&tx, &account.id, now)?;
    tx.commit()?;
    Ok(code)
}

/// Removes an account and revokes its devices. Returns the account and the
/// devices whose open sessions must be closed (4401). Contacts keep their tags.
pub fn remove_account(
    conn: &mut Connection,
    key: &str,
    now: i64,
) -> Result<(AccountRecord, Vec<String>)> {
    let tx = conn.transaction()?;
    let account = resolve_account(&tx, key)?;
    let devices = {
        let mut stmt =
            tx.prepare("SELECT id FROM devices WHERE account_id = ?1 AND revoked_ms IS NULL")?;
        stmt.query_map([&account.id], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.execute(
        "UPDATE devices SET revoked_ms = ?2 WHERE account_id = ?1 AND revoked_ms IS NULL",
        params![account.id, now],
    )?;
    tx.execute(
        "DELETE FROM pairing_codes WHERE account_id = ?1",
        [&account.id],
    )?;
    tx.execute("DELETE FROM accounts WHERE id = ?1", [&account.id])?;
    tx.commit()?;
    Ok((account, devices))
}

/// Merges `values` into the account's settings (a `null` value removes the
/// key), bumps the version, and queues a durable `settings` command for its
/// current device. Returns the account and that device, to push at once.
pub fn update_settings(
    conn: &mut Connection,
    key: &str,
    values: Map<String, Value>,
    now: i64,
) -> Result<(AccountRecord, Option<String>)> {
    let tx = conn.transaction()?;
    let mut account = resolve_account(&tx, key)?;
    if values.is_empty() {
        return Ok((account, None));
    }
    for (k, v) in values {
        if v.is_null() {
            account.settings.values.remove(&k);
        } else {
            account.settings.values.insert(k, v);
        }
    }
    account.settings.version += 1;
    let json = Value::Object(account.settings.values.clone()).to_string();
    tx.execute(
        "UPDATE accounts SET settings_version = ?2, settings_json = ?3 WHERE id = ?1",
        params![
            account.id,
            i64::try_from(account.settings.version).unwrap_or(i64::MAX),
            json
        ],
    )?;
    let device = account
        .device
        .as_ref()
        .filter(|d| d.is_current())
        .map(|d| d.id.clone());
    if let Some(device_id) = &device {
        enqueue_command(
            &tx,
            device_id,
            None,
            Body::Settings(account.settings.clone()),
            now,
        )?;
    }
    tx.commit()?;
    Ok((account, device))
}

// ---------------------------------------------------------------------------
// Pairing and devices
// ---------------------------------------------------------------------------

/// The result of a successful pairing.
#[derive(Debug)]
pub struct Paired {
    /// The new device.
    pub device_id: String,
    /// Its bearer token (only ever returned here).
    pub device_token: String,
    /// Its account.
    pub account: AccountRecord,
    /// Devices this pairing replaced (close their sessions 4409).
    pub replaced: Vec<String>,
    /// Devices that now have commands to push (the new one, if any moved).
    pub has_commands: bool,
}

fn invalid_code() -> ServiceError {
    ServiceError::refused(
        401,
        "invalid_code",
        "this pairing code is wrong, expired (codes last 10 minutes) or already used; ask the admin for a new one (`whatsnap-relay account pair-code <account>`)",
    )
}

/// Consumes a pairing code and creates the device. Pairing again for the same
/// account replaces the old device: its token stops working and its unacked
/// commands (and sends queued before any device existed) move to the new one.
pub fn pair(conn: &mut Connection, code: &str, device: &DeviceInfo, now: i64) -> Result<Paired> {
    let code = secret::normalise_code(code);
    let tx = conn.transaction()?;
    let hash = secret::sha256_hex(&code);
    let row: Option<(String, i64, Option<i64>, i64)> = tx
        .query_row(
            "SELECT account_id, expires_ms, used_ms, failed_tries FROM pairing_codes
             WHERE code_hash = ?1",
            [&hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((account_id, expires_ms, used_ms, failed_tries)) = row else {
        // A wrong code cannot be told apart from a near miss of a live one
        // (codes are stored hashed), so it counts against every live code:
        // after MAX_CODE_TRIES wrong tries they stop working and the admin
        // issues a new one. With the per-address limit this makes guessing
        // 40 bits hopeless.
        tx.execute(
            "UPDATE pairing_codes SET failed_tries = failed_tries + 1
             WHERE used_ms IS NULL AND expires_ms > ?1",
            [now],
        )?;
        tx.commit()?;
        return Err(invalid_code());
    };
    if used_ms.is_some() || expires_ms <= now || failed_tries >= MAX_CODE_TRIES {
        return Err(invalid_code());
    }
    tx.execute(
        "UPDATE pairing_codes SET used_ms = ?2 WHERE code_hash = ?1",
        params![hash, now],
    )?;
    let Some(account) = account_by_id(&tx, &account_id)? else {
        return Err(invalid_code());
    };
    let replaced = {
        let mut stmt = tx.prepare(
            "SELECT id FROM devices WHERE account_id = ?1 AND revoked_ms IS NULL AND replaced_ms IS NULL",
        )?;
        stmt.query_map([&account_id], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.execute(
        "UPDATE devices SET replaced_ms = ?2
         WHERE account_id = ?1 AND revoked_ms IS NULL AND replaced_ms IS NULL",
        params![account_id, now],
    )?;
    let device_id = new_id();
    let token = secret::new_device_token()?;
    tx.execute(
        "INSERT INTO devices (id, account_id, token_hash, name, model, macos_version,
                              daemon_version, created_ms, commands_epoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            device_id,
            account_id,
            secret::sha256_hex(&token),
            device.name,
            device.model,
            device.macos_version,
            device.daemon_version,
            now,
            secret::new_epoch()?
        ],
    )?;
    let moved = move_pending_sends(&tx, &account_id, &replaced, &device_id, now)?;
    tx.commit()?;
    let account = AccountRecord {
        device: None,
        ..account
    };
    Ok(Paired {
        device_id,
        device_token: token,
        account,
        replaced,
        has_commands: moved > 0,
    })
}

/// Re-queues on `device_id` every send of this account that no device has
/// taken yet: unacked `cmd.send`s of the replaced devices and messages queued
/// while the account had no device. Acked commands stay with their old device
/// (its Mac may have dispatched them; sending again could double a message).
fn move_pending_sends(
    tx: &Transaction<'_>,
    account_id: &str,
    old_devices: &[String],
    device_id: &str,
    now: i64,
) -> Result<usize> {
    let mut pending: Vec<(String, Option<String>)> = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT m.id, m.device_id FROM messages m
             WHERE m.account_id = ?1 AND m.direction = 'outbound' AND m.state = 'queued'
             ORDER BY m.created_ms, m.rowid",
        )?;
        let rows = stmt.query_map([account_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        for row in rows {
            pending.push(row?);
        }
    }
    let mut moved = 0;
    for (message_id, old_device) in pending {
        let frame_json: Option<String> = match &old_device {
            None => None,
            Some(old) if old_devices.contains(old) => {
                let unacked: Option<String> = tx
                    .query_row(
                        "SELECT c.frame_json FROM commands c JOIN messages m
                           ON m.client_msg_id = c.client_msg_id AND m.device_id = c.device_id
                         WHERE m.id = ?1 AND c.acked = 0",
                        [&message_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                match unacked {
                    Some(json) => Some(json),
                    None => continue,
                }
            }
            Some(_) => continue,
        };
        let body = match frame_json {
            Some(json) => match whatsnap_proto::frame::decode(&json) {
                Ok(frame) => frame.body,
                Err(e) => {
                    tracing::warn!(error = %e, message_id, "stored command unreadable; not moved");
                    continue;
                }
            },
            None => Body::CmdSend(cmd_send_for(tx, &message_id, now)?),
        };
        let client_msg_id = match &body {
            Body::CmdSend(c) => Some(c.client_msg_id.clone()),
            _ => None,
        };
        if let (Some(old), Some(id)) = (&old_device, &client_msg_id) {
            // The old device will never see it; keep the command table honest.
            tx.execute(
                "DELETE FROM commands WHERE device_id = ?1 AND client_msg_id = ?2 AND acked = 0",
                params![old, id],
            )?;
        }
        enqueue_command(tx, device_id, client_msg_id.as_deref(), body, now)?;
        tx.execute(
            "UPDATE messages SET device_id = ?2 WHERE id = ?1",
            params![message_id, device_id],
        )?;
        moved += 1;
    }
    Ok(moved)
}

/// Revokes a device at its own request (`whatsnap-mac unpair`). Its account
/// stays, Disconnected with the reason `revoked`, until it is paired again.
pub fn unpair_device(conn: &mut Connection, device_id: &str, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE devices SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
        params![device_id, now],
    )?;
    Ok(())
}

/// A device found by its token.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    /// Id.
    pub id: String,
    /// Its account.
    pub account_id: String,
    /// Revoked (account removed).
    pub revoked: bool,
    /// Replaced by a newer pairing.
    pub replaced: bool,
}

impl DeviceAuth {
    /// From a row of `id, account_id, revoked_ms, replaced_ms` of `devices`.
    pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceAuth> {
        Ok(DeviceAuth {
            id: r.get(0)?,
            account_id: r.get(1)?,
            revoked: r.get::<_, Option<i64>>(2)?.is_some(),
            replaced: r.get::<_, Option<i64>>(3)?.is_some(),
        })
    }
}

/// The device whose token hashes to `token_hash`.
pub fn device_by_token(conn: &Connection, token_hash: &str) -> Result<Option<DeviceAuth>> {
    let device = conn
        .query_row(
            "SELECT id, account_id, revoked_ms, replaced_ms FROM devices WHERE token_hash = ?1",
            [token_hash],
            DeviceAuth::from_row,
        )
        .optional()?;
    Ok(device)
}

/// Where a session starts from, decided at `hello`.
#[derive(Debug, Clone)]
pub struct SessionStart {
    /// The device's account.
    pub account: AccountRecord,
    /// The daemon's event epoch (adopted if new).
    pub events_epoch: String,
    /// Highest event seq committed in that epoch.
    pub events_committed: u64,
    /// No committed value in that epoch yet: the first event sets the start.
    pub events_unanchored: bool,
    /// Our command epoch for this device.
    pub commands_epoch: String,
    /// Highest command seq assigned.
    pub commands_last_seq: u64,
    /// Every command ≤ this is acked: where pushing starts.
    pub commands_acked_upto: u64,
}

/// Opens a session for a device after its `hello`: adopts a new event epoch
/// (committed restarts at 0; natural keys still dedupe), marks the commands
/// the daemon says it processed as acked, and stores its health.
pub fn begin_session(
    conn: &mut Connection,
    device_id: &str,
    hello: &whatsnap_proto::frame::Hello,
    now: i64,
) -> Result<SessionStart> {
    let tx = conn.transaction()?;
    type StreamsRow = (String, String, i64, String, Option<i64>, Option<i64>, i64);
    let row: Option<StreamsRow> = tx
        .query_row(
            "SELECT account_id, events_epoch, events_committed, commands_epoch, revoked_ms, replaced_ms,
                    events_unanchored
             FROM devices WHERE id = ?1",
            [device_id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .optional()?;
    let Some((account_id, mut epoch, committed, commands_epoch, revoked, replaced, unanchored)) =
        row
    else {
        return Err(ServiceError::refused(
            401,
            "unknown_device",
            "device not found; run `whatsnap-mac pair`",
        ));
    };
    if revoked.is_some() || replaced.is_some() {
        return Err(ServiceError::refused(
            401,
            "revoked",
            "this device was removed or replaced; run `whatsnap-mac pair`",
        ));
    }
    let Some(account) = account_by_id(&tx, &account_id)? else {
        return Err(ServiceError::refused(
            401,
            "revoked",
            "the account was removed; run `whatsnap-mac pair`",
        ));
    };
    let mut committed = u64::try_from(committed).unwrap_or(0);
    // A new epoch, or a daemon whose storage went back in time (restored from
    // a backup): forget `committed`, and let the first event set the start
    // (protocol 5.1 and 4.2 rule 1). Natural keys absorb any replays.
    let mut unanchored = unanchored != 0;
    if hello.events.epoch != epoch || committed > hello.events.last_seq {
        epoch.clone_from(&hello.events.epoch);
        committed = 0;
        unanchored = true;
    }
    let mut commands_epoch = commands_epoch;
    if hello.commands.epoch == commands_epoch {
        if hello.commands.acked_upto < contiguous_acked(&tx, device_id)? {
            // The daemon forgot commands it acked (deleted here): they cannot
            // be replayed, so a new command epoch makes it take the next one
            // as its start (protocol 5.1).
            commands_epoch = secret::new_epoch()?;
            tx.execute(
                "UPDATE devices SET commands_epoch = ?2 WHERE id = ?1",
                params![device_id, commands_epoch],
            )?;
        } else if hello.commands.acked_upto > 0 {
            tx.execute(
                "UPDATE commands SET acked = 1 WHERE device_id = ?1 AND seq <= ?2 AND acked = 0",
                params![device_id, to_i64(hello.commands.acked_upto)],
            )?;
        }
    }
    // A daemon that lost its command store (other epoch) has processed nothing
    // of ours: every unacked command is resent.
    let status_json = hello
        .health
        .as_ref()
        .and_then(|h| serde_json::to_string(h).ok());
    tx.execute(
        "UPDATE devices SET events_epoch = ?2, events_committed = ?3, last_seen_ms = ?4,
                needs_update = 0, daemon_version = ?5, macos_version = ?6,
                last_status_json = COALESCE(?7, last_status_json), events_unanchored = ?8
         WHERE id = ?1",
        params![
            device_id,
            epoch,
            to_i64(committed),
            now,
            hello.daemon_version,
            hello.macos_version,
            status_json,
            i64::from(unanchored)
        ],
    )?;
    let last_seq = last_command_seq(&tx, device_id)?;
    let acked_upto = contiguous_acked(&tx, device_id)?;
    tx.commit()?;
    let account = with_device(conn, account)?;
    Ok(SessionStart {
        account,
        events_epoch: epoch,
        events_committed: committed,
        events_unanchored: unanchored,
        commands_epoch,
        commands_last_seq: last_seq,
        commands_acked_upto: acked_upto,
    })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn last_command_seq(conn: &Connection, device_id: &str) -> Result<u64> {
    let seq: i64 = conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM commands WHERE device_id = ?1",
        [device_id],
        |r| r.get(0),
    )?;
    Ok(to_u64(seq))
}

/// The highest seq such that every command up to it is acked.
pub fn contiguous_acked(conn: &Connection, device_id: &str) -> Result<u64> {
    let lowest_unacked: Option<i64> = conn.query_row(
        "SELECT MIN(seq) FROM commands WHERE device_id = ?1 AND acked = 0",
        [device_id],
        |r| r.get(0),
    )?;
    match lowest_unacked {
        Some(seq) => Ok(to_u64(seq - 1)),
        None => last_command_seq(conn, device_id),
    }
}

/// Records that the daemon's `hello` spoke no protocol we know.
pub fn mark_needs_update(conn: &Connection, device_id: &str, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE devices SET needs_update = 1, disconnected_ms = ?2, last_seen_ms = ?2 WHERE id = ?1",
        params![device_id, now],
    )?;
    Ok(())
}

/// Records the end of a device's session.
pub fn end_session(conn: &Connection, device_id: &str, last_seen_ms: i64, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE devices SET disconnected_ms = ?2, last_seen_ms = MAX(COALESCE(last_seen_ms, 0), ?3)
         WHERE id = ?1",
        params![device_id, now, last_seen_ms],
    )?;
    Ok(())
}

/// Keeps the device's latest health report.
pub fn store_status(conn: &Connection, device_id: &str, status: &Status, now: i64) -> Result<()> {
    let json = serde_json::to_string(status)
        .map_err(|e| ServiceError::refused(500, "internal", format!("cannot store status: {e}")))?;
    conn.execute(
        "UPDATE devices SET last_status_json = ?2, last_seen_ms = ?3 WHERE id = ?1",
        params![device_id, json, now],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// Stores a durable command for `device_id` with the next seq. Returns the seq.
pub fn enqueue_command(
    tx: &Connection,
    device_id: &str,
    client_msg_id: Option<&str>,
    body: Body,
    now: i64,
) -> Result<u64> {
    let seq = last_command_seq(tx, device_id)? + 1;
    let frame = Frame::new(body, now).with_seq(seq);
    tx.execute(
        "INSERT INTO commands (device_id, seq, client_msg_id, frame_json, acked, created_ms)
         VALUES (?1, ?2, ?3, ?4, 0, ?5)",
        params![device_id, to_i64(seq), client_msg_id, frame.to_json(), now],
    )?;
    Ok(seq)
}

/// Most `cmd.send` frames in flight at once (protocol 4.5): Messages sends
/// one at a time anyway, and a short queue on the Mac keeps expiry honest.
pub const MAX_SENDS_IN_FLIGHT: usize = 3;

/// Unacked commands with `after < seq <= upto`, in order, as frame JSON,
/// stopping before a `cmd.send` that would put more than
/// [`MAX_SENDS_IN_FLIGHT`] sends in flight (unacked, seq `<= after` counts).
pub fn commands_to_send(
    conn: &Connection,
    device_id: &str,
    after: u64,
    upto: u64,
) -> Result<Vec<(u64, String)>> {
    let in_flight: i64 = conn.query_row(
        "SELECT COUNT(*) FROM commands
         WHERE device_id = ?1 AND acked = 0 AND seq <= ?2 AND client_msg_id IS NOT NULL",
        params![device_id, to_i64(after)],
        |r| r.get(0),
    )?;
    let mut sends = usize::try_from(in_flight).unwrap_or(usize::MAX);
    let mut stmt = conn.prepare(
        "SELECT seq, frame_json, client_msg_id IS NOT NULL FROM commands
         WHERE device_id = ?1 AND acked = 0 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
    )?;
    let rows = stmt
        .query_map(params![device_id, to_i64(after), to_i64(upto)], |r| {
            Ok((to_u64(r.get(0)?), r.get(1)?, r.get::<_, bool>(2)?))
        })?
        .collect::<rusqlite::Result<Vec<(u64, String, bool)>>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (seq, json, is_send) in rows {
        if is_send {
            if sends >= MAX_SENDS_IN_FLIGHT {
                break;
            }
            sends += 1;
        }
        out.push((seq, json));
    }
    Ok(out)
}

/// Marks every command ≤ `upto` acked.
pub fn ack_commands(conn: &Connection, device_id: &str, upto: u64) -> Result<()> {
    conn.execute(
        "UPDATE commands SET acked = 1 WHERE device_id = ?1 AND seq <= ?2 AND acked = 0",
        params![device_id, to_i64(upto)],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Events from the device
// ---------------------------------------------------------------------------

/// Applies durable event `seq` of `epoch` and commits `seq` as the stream's
/// new high-water mark, in one transaction. Returns what to broadcast.
/// Refuses (without effect) if `seq` is not exactly committed + 1 in the
/// stored epoch, so a racing second session cannot double an effect.
pub fn apply_event(
    conn: &mut Connection,
    device_id: &str,
    epoch: &str,
    seq: u64,
    body: Option<&Body>,
    now: i64,
) -> Result<Vec<RelayEvent>> {
    apply_events(conn, device_id, epoch, &[(seq, body.cloned())], now)
}

/// [`apply_event`] for a run of consecutive events (`seq`s ascending by
/// one), in one transaction: a burst from a catching-up Mac costs one commit
/// instead of one per event. All or nothing.
pub fn apply_events(
    conn: &mut Connection,
    device_id: &str,
    epoch: &str,
    run: &[(u64, Option<Body>)],
    now: i64,
) -> Result<Vec<RelayEvent>> {
    let Some(&(first, _)) = run.first() else {
        return Ok(Vec::new());
    };
    let tx = conn.transaction()?;
    let stored: Option<(String, String, i64, i64)> = tx
        .prepare_cached(
            "SELECT account_id, events_epoch, events_committed, events_unanchored
             FROM devices WHERE id = ?1",
        )?
        .query_row([device_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((account_id, stored_epoch, committed, unanchored)) = stored else {
        return Err(ServiceError::refused(
            401,
            "unknown_device",
            "device not found",
        ));
    };
    let in_order = unanchored != 0 || to_u64(committed) + 1 == first;
    let consecutive = run.windows(2).all(|w| w[1].0 == w[0].0 + 1);
    if stored_epoch != epoch || !in_order || !consecutive {
        return Err(ServiceError::refused(
            409,
            "stale_session",
            "the event stream moved on in another session",
        ));
    }
    let mut batch = Batch::default();
    for (seq, body) in run {
        apply_one(
            &tx,
            &mut batch,
            device_id,
            &account_id,
            *seq,
            body.as_ref(),
            now,
        )?;
    }
    let last = run.last().map_or(first, |(s, _)| *s);
    tx.prepare_cached(
        "UPDATE devices SET events_committed = ?2, last_seen_ms = ?3, events_unanchored = 0
         WHERE id = ?1",
    )?
    .execute(params![device_id, to_i64(last), now])?;
    tx.commit()?;
    Ok(batch.events)
}

/// What one [`apply_events`] transaction already looked up, so a burst of
/// events from the same account and contacts costs one query for each, not
/// one per event. Valid only inside that transaction: nothing else writes
/// while it is open.
#[derive(Default)]
struct Batch {
    /// The device's account tag (`Some(None)`: looked up, the account is gone).
    account_tag: Option<Option<String>>,
    /// Contacts seen to carry an account tag: first touch is decided for them.
    owned: std::collections::HashSet<String>,
    /// What to broadcast once the transaction commits.
    events: Vec<RelayEvent>,
}

fn apply_one(
    tx: &Transaction<'_>,
    batch: &mut Batch,
    device_id: &str,
    account_id: &str,
    seq: u64,
    body: Option<&Body>,
    now: i64,
) -> Result<()> {
    match body {
        Some(Body::EventMessage(m)) => apply_message(tx, batch, device_id, account_id, m, now)?,
        Some(Body::SendResult(r)) => apply_send_result(tx, account_id, r, &mut batch.events)?,
        Some(Body::SettingsApplied(a)) => {
            if !a.errors.is_empty() {
                let refused = serde_json::Value::Object(a.errors.clone()).to_string();
                tracing::warn!(
                    device_id,
                    version = a.version,
                    refused,
                    "the Mac refused some settings"
                );
            }
            batch.events.push(RelayEvent::SettingsApplied {
                account_id: account_id.to_owned(),
                version: a.version,
                errors: a.errors.clone(),
            });
        }
        Some(other) => {
            tracing::info!(
                device_id,
                seq,
                ty = other.type_name(),
                "event committed without effect (not handled yet)"
            );
        }
        None => {}
    }
    Ok(())
}

fn account_tag(tx: &Transaction<'_>, account_id: &str) -> Result<Option<String>> {
    Ok(tx
        .prepare_cached("SELECT tag FROM accounts WHERE id = ?1")?
        .query_row([account_id], |r| r.get(0))
        .optional()?)
}

fn contact_by_handle(conn: &Connection, handle: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT id FROM contacts WHERE handle = ?1")?
        .query_row([handle], |r| r.get(0))
        .optional()?)
}

fn prefix_len() -> i64 {
    i64::try_from(ACCOUNT_TAG_PREFIX.len()).unwrap_or(0)
}

fn account_tags_of(conn: &Connection, contact_id: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT tag FROM contact_tags WHERE contact_id = ?1 AND substr(tag, 1, ?2) = ?3
         ORDER BY created_ms DESC, rowid DESC",
    )?;
    let tags = stmt
        .query_map(params![contact_id, prefix_len(), ACCOUNT_TAG_PREFIX], |r| {
            r.get(0)
        })?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(tags)
}

/// Whether the contact already carries an account tag. The prefix is
/// matched here rather than in SQL: a bound parameter inside `substr(…) = ?`
/// made SQLite (built with STAT4) recompile the statement on every step,
/// which was a quarter of the time of applying an event.
fn has_account_tag(conn: &Connection, contact_id: &str) -> Result<bool> {
    let mut stmt = conn.prepare_cached("SELECT tag FROM contact_tags WHERE contact_id = ?1")?;
    let mut rows = stmt.query([contact_id])?;
    while let Some(row) = rows.next()? {
        let tag = row.get_ref(0)?.as_str().unwrap_or_default();
        if tag.starts_with(ACCOUNT_TAG_PREFIX) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn apply_message(
    tx: &Transaction<'_>,
    batch: &mut Batch,
    device_id: &str,
    account_id: &str,
    m: &EventMessage,
    now: i64,
) -> Result<()> {
    if m.from_me {
        if let Some(origin) = &m.origin {
            // The echo of our own cmd.send: attach the row, create nothing.
            attach_guids(tx, &origin.client_msg_id, std::slice::from_ref(&m.guid))?;
            return Ok(());
        }
        // Typed on the phone or Mac: keep it in the contact's history if we know them.
        let Some(to) = m.recipients.first() else {
            return Ok(());
        };
        let Some(contact_id) = contact_by_handle(tx, &to.handle)? else {
            return Ok(());
        };
        tx.prepare_cached("INSERT INTO messages (id, account_id, contact_id, direction, text, device_id, event_key,
                                   guid, chat_guid, state, guids_json, created_ms)
             VALUES (?1, ?2, ?3, 'outbound', ?4, ?5, ?6, ?7, ?8, 'sent', ?9, ?10)
             ON CONFLICT DO NOTHING")?.execute(
            params![
                new_id(),
                account_id,
                contact_id,
                m.text,
                device_id,
                m.event_key,
                m.guid,
                direct_chat_guid(m),
                serde_json::to_string(&[&m.guid]).unwrap_or_else(|_| "[]".into()),
                now
            ],
        )?;
        return Ok(());
    }
    let Some(sender) = &m.sender else {
        tracing::warn!(
            guid = m.guid,
            "inbound message without sender; stored nothing"
        );
        return Ok(());
    };
    let (contact_id, created) = match contact_by_handle(tx, &sender.handle)? {
        Some(id) => (id, false),
        None => {
            let id = new_id();
            tx.prepare_cached("INSERT INTO contacts (id, handle, created_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![id, sender.handle, now])?;
            (id, true)
        }
    };
    // First touch: the first account that hears from a contact owns it; never replace.
    let mut tagged = None;
    if !batch.owned.contains(&contact_id) {
        if has_account_tag(tx, &contact_id)? {
            batch.owned.insert(contact_id.clone());
        } else {
            if batch.account_tag.is_none() {
                batch.account_tag = Some(account_tag(tx, account_id)?);
            }
            if let Some(Some(tag)) = &batch.account_tag {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO contact_tags (contact_id, tag, source, created_ms)
                     VALUES (?1, ?2, 'auto', ?3)",
                )?
                .execute(params![contact_id, tag, now])?;
                batch.owned.insert(contact_id.clone());
                tagged = Some(tag.clone());
            }
        }
    }
    if created {
        batch.events.push(RelayEvent::ContactCreated {
            contact_id: contact_id.clone(),
            handle: sender.handle.clone(),
            tag: tagged,
        });
    }
    let inserted = tx.prepare_cached("INSERT INTO messages (id, account_id, contact_id, direction, text, device_id, event_key,
                               guid, chat_guid, created_ms, guids_json)
         VALUES (?1, ?2, ?3, 'inbound', ?4, ?5, ?6, ?7, ?8, ?9, json_array(?7))
         ON CONFLICT DO NOTHING")?.execute(
        params![
            new_id(),
            account_id,
            contact_id,
            m.text,
            device_id,
            m.event_key,
            m.guid,
            direct_chat_guid(m),
            now
        ],
    )?;
    if inserted > 0 {
        batch.events.push(RelayEvent::MessageReceived {
            account_id: account_id.to_owned(),
            contact_id,
            guid: m.guid.clone(),
            text: m.text.clone(),
        });
    }
    Ok(())
}

/// Only a one-to-one chat's GUID may address a later send to the same person.
fn direct_chat_guid(m: &EventMessage) -> Option<&str> {
    (m.chat_kind == ChatKind::Direct).then_some(m.chat_guid.as_str())
}

/// Adds GUIDs to an outbound message; returns its account if it exists.
fn attach_guids(tx: &Connection, client_msg_id: &str, guids: &[String]) -> Result<Option<String>> {
    let row: Option<(String, String)> = tx
        .prepare_cached("SELECT account_id, guids_json FROM messages WHERE client_msg_id = ?1")?
        .query_row([client_msg_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((account_id, json)) = row else {
        tracing::warn!(client_msg_id, "echo or result for an unknown send; ignored");
        return Ok(None);
    };
    let mut all: Vec<String> = serde_json::from_str(&json).unwrap_or_default();
    for g in guids {
        if !all.contains(g) {
            all.push(g.clone());
        }
    }
    tx.prepare_cached(
        "UPDATE messages SET guids_json = ?2, guid = COALESCE(guid, ?3) WHERE client_msg_id = ?1",
    )?
    .execute(params![
        client_msg_id,
        serde_json::to_string(&all).unwrap_or_else(|_| "[]".into()),
        all.first()
    ])?;
    Ok(Some(account_id))
}

fn send_state_name(s: SendState) -> &'static str {
    match s {
        SendState::Sent => "sent",
        SendState::Failed => "failed",
        SendState::Unknown => "unknown",
        SendState::Expired => "expired",
        SendState::Rejected => "rejected",
    }
}

fn apply_send_result(
    tx: &Transaction<'_>,
    device_account: &str,
    r: &SendResult,
    events: &mut Vec<RelayEvent>,
) -> Result<()> {
    let Some(account_id) = attach_guids(tx, &r.client_msg_id, &r.guids)? else {
        return Ok(());
    };
    let error = r
        .error
        .as_ref()
        .map(|e| format!("{}: {}", e.code, e.message));
    tx.prepare_cached("UPDATE messages SET state = ?2, error = ?3 WHERE client_msg_id = ?1")?
        .execute(params![r.client_msg_id, send_state_name(r.state), error])?;
    if account_id != device_account {
        tracing::warn!(
            client_msg_id = r.client_msg_id,
            "send result from another account's device"
        );
    }
    events.push(RelayEvent::SendResult {
        account_id,
        client_msg_id: r.client_msg_id.clone(),
        state: r.state,
        guids: r.guids.clone(),
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// Contacts
// ---------------------------------------------------------------------------

fn contact_view(conn: &Connection, id: &str) -> Result<ContactView> {
    let (handle, created_ms): (String, i64) = conn.query_row(
        "SELECT handle, created_ms FROM contacts WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut stmt = conn
        .prepare("SELECT tag FROM contact_tags WHERE contact_id = ?1 ORDER BY created_ms, rowid")?;
    let tags = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(ContactView {
        id: id.to_owned(),
        handle,
        tags,
        created_ms,
    })
}

/// All contacts, oldest first.
pub fn list_contacts(conn: &Connection) -> Result<Vec<ContactView>> {
    let mut stmt = conn.prepare("SELECT id FROM contacts ORDER BY created_ms, rowid")?;
    let ids = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    ids.iter().map(|id| contact_view(conn, id)).collect()
}

/// The contact named by id or handle.
pub fn resolve_contact(conn: &Connection, key: &str) -> Result<String> {
    let id: Option<String> = conn
        .query_row(
            "SELECT id FROM contacts WHERE id = ?1 OR handle = ?1 OR handle = lower(?1)",
            [key],
            |r| r.get(0),
        )
        .optional()?;
    id.ok_or_else(|| {
        ServiceError::refused(
            404,
            "unknown_contact",
            format!(
                "no contact {key:?}; contacts appear when they first message an account (list them with `whatsnap-relay contact list`)"
            ),
        )
    })
}

/// Moves a contact to the account with `tag`: replaces its
/// `whatsnap-account-` tag and records the change as manual.
pub fn set_contact_tag(
    conn: &mut Connection,
    key: &str,
    tag: &str,
    now: i64,
) -> Result<ContactView> {
    let tx = conn.transaction()?;
    let contact_id = resolve_contact(&tx, key)?;
    let exists = tx
        .query_row("SELECT 1 FROM accounts WHERE tag = ?1", [tag], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists {
        let tags = {
            let mut stmt = tx.prepare("SELECT tag FROM accounts ORDER BY created_ms")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?
        };
        return Err(ServiceError::refused(
            400,
            "unknown_tag",
            if tags.is_empty() {
                format!(
                    "no account has the tag {tag:?}; create one with `whatsnap-relay account add --name NAME`"
                )
            } else {
                format!(
                    "no account has the tag {tag:?}; existing account tags: {}",
                    tags.join(", ")
                )
            },
        ));
    }
    tx.execute(
        "DELETE FROM contact_tags WHERE contact_id = ?1 AND substr(tag, 1, ?2) = ?3",
        params![contact_id, prefix_len(), ACCOUNT_TAG_PREFIX],
    )?;
    tx.execute(
        "INSERT INTO contact_tags (contact_id, tag, source, created_ms) VALUES (?1, ?2, 'manual', ?3)",
        params![contact_id, tag, now],
    )?;
    let view = contact_view(&tx, &contact_id)?;
    tx.commit()?;
    Ok(view)
}

// ---------------------------------------------------------------------------
// Outbound messages
// ---------------------------------------------------------------------------

const MESSAGE_COLS: &str = "id, direction, account_id, contact_id, text, client_msg_id, state, guids_json, error, created_ms";

fn message_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MessageView> {
    let state: Option<String> = r.get(6)?;
    let guids: String = r.get(7)?;
    Ok(MessageView {
        id: r.get(0)?,
        direction: r.get(1)?,
        account_id: r.get(2)?,
        contact_id: r.get(3)?,
        text: r.get(4)?,
        client_msg_id: r.get(5)?,
        state: state.as_deref().and_then(parse_state),
        guids: serde_json::from_str(&guids).unwrap_or_default(),
        error: r.get(8)?,
        created_ms: r.get(9)?,
    })
}

fn parse_state(s: &str) -> Option<OutboundState> {
    Some(match s {
        "queued" => OutboundState::Queued,
        "sent" => OutboundState::Sent,
        "failed" => OutboundState::Failed,
        "unknown" => OutboundState::Unknown,
        "expired" => OutboundState::Expired,
        "rejected" => OutboundState::Rejected,
        _ => return None,
    })
}

/// Messages, oldest first, optionally of one contact (id or handle).
pub fn list_messages(conn: &Connection, contact: Option<&str>) -> Result<Vec<MessageView>> {
    let contact_id = contact.map(|c| resolve_contact(conn, c)).transpose()?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {MESSAGE_COLS} FROM messages WHERE ?1 IS NULL OR contact_id = ?1
         ORDER BY created_ms, rowid"
    ))?;
    let rows = stmt
        .query_map([contact_id], message_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn message_by_client_id(conn: &Connection, client_msg_id: &str) -> Result<Option<MessageView>> {
    Ok(conn
        .query_row(
            &format!("SELECT {MESSAGE_COLS} FROM messages WHERE client_msg_id = ?1"),
            [client_msg_id],
            message_from_row,
        )
        .optional()?)
}

/// The `cmd.send` for a stored outbound message.
fn cmd_send_for(conn: &Connection, message_id: &str, now: i64) -> Result<CmdSend> {
    let (client_msg_id, text, contact_id, account_id): (String, String, String, String) = conn
        .query_row(
            "SELECT client_msg_id, text, contact_id, account_id FROM messages WHERE id = ?1",
            [message_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let handle: String = conn.query_row(
        "SELECT handle FROM contacts WHERE id = ?1",
        [&contact_id],
        |r| r.get(0),
    )?;
    // Reuse the one-to-one chat this contact last wrote from on this account:
    // it pins the service (iMessage/SMS) Messages already uses with them.
    let chat_guid: Option<String> = conn
        .query_row(
            "SELECT chat_guid FROM messages
             WHERE contact_id = ?1 AND account_id = ?2 AND direction = 'inbound' AND chat_guid IS NOT NULL
             ORDER BY created_ms DESC, rowid DESC LIMIT 1",
            params![contact_id, account_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(CmdSend {
        client_msg_id,
        to: Some(SendTo { handle }),
        chat_guid,
        text,
        attachments: Vec::new(),
        service_pref: ServicePref::Auto,
        reply_to_guid: None,
        expires_at_ms: Some(now + SEND_TTL_MS),
    })
}

/// A message queued by [`queue_message`].
#[derive(Debug)]
pub struct Queued {
    /// The message.
    pub view: MessageView,
    /// False when `client_msg_id` was already known (nothing new was queued).
    pub created: bool,
    /// The device to push to now, if the account has one.
    pub device_id: Option<String>,
}

/// Stores an outbound message and its durable `cmd.send` (for the current
/// device of the account the contact's tag names) in one transaction.
pub fn queue_message(conn: &mut Connection, req: &SendMessageRequest, now: i64) -> Result<Queued> {
    if req.text.len() > MAX_TEXT_BYTES {
        return Err(ServiceError::refused(
            400,
            "text_too_long",
            format!(
                "the text is {} bytes; the limit is 64 KiB, split it",
                req.text.len()
            ),
        ));
    }
    let tx = conn.transaction()?;
    if let Some(id) = &req.client_msg_id
        && let Some(view) = message_by_client_id(&tx, id)?
    {
        return Ok(Queued {
            view,
            created: false,
            device_id: None,
        });
    }
    let contact_id = resolve_contact(&tx, &req.contact)?;
    let tags = account_tags_of(&tx, &contact_id)?;
    if tags.is_empty() {
        return Err(ServiceError::refused(
            409,
            "no_account_tag",
            "contact has no whatsnap-account tag; tag it with `whatsnap-relay contact tag <contact> <tag>`",
        ));
    }
    let mut account = None;
    for tag in &tags {
        let found = tx
            .query_row(
                &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE tag = ?1"),
                [tag],
                account_from_row,
            )
            .optional()?;
        if found.is_some() {
            account = found;
            break;
        }
    }
    let Some(account) = account else {
        return Err(ServiceError::refused(
            409,
            "unknown_account_tag",
            format!(
                "the contact's tag {} names no account (removed?); tag it with `whatsnap-relay contact tag <contact> <tag>`",
                tags.join(", ")
            ),
        ));
    };
    let account = with_device(&tx, account)?;
    let device_id = account
        .device
        .as_ref()
        .filter(|d| d.is_current())
        .map(|d| d.id.clone());
    let client_msg_id = req.client_msg_id.clone().unwrap_or_else(new_id);
    let message_id = new_id();
    tx.execute(
        "INSERT INTO messages (id, account_id, contact_id, direction, text, device_id,
                               client_msg_id, state, created_ms)
         VALUES (?1, ?2, ?3, 'outbound', ?4, ?5, ?6, 'queued', ?7)",
        params![
            message_id,
            account.id,
            contact_id,
            req.text,
            device_id,
            client_msg_id,
            now
        ],
    )?;
    if let Some(device_id) = &device_id {
        let cmd = cmd_send_for(&tx, &message_id, now)?;
        enqueue_command(
            &tx,
            device_id,
            Some(&client_msg_id),
            Body::CmdSend(cmd),
            now,
        )?;
    }
    let view = message_by_client_id(&tx, &client_msg_id)?.ok_or_else(unreachable_err)?;
    tx.commit()?;
    Ok(Queued {
        view,
        created: true,
        device_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceInfo {
        DeviceInfo {
            name: "Mac".into(),
            model: "Mac14,2".into(),
            macos_version: "15.5".into(),
            daemon_version: "0.1.0".into(),
            hw_id_hash: None,
        }
    }

    #[test]
    fn five_wrong_tries_lock_the_live_code_even_for_the_right_guess() {
        let mut conn = Connection::open_in_memory().expect("db");
        crate::db::migrate_for_tests(&mut conn);
        let (_, code) = create_account(&mut conn, "Mike", 1000).expect("account");
        for _ in 0..MAX_CODE_TRIES {
            assert!(pair(&mut conn, "ZZZZ-ZZZZ", &device(), 2000).is_err());
        }
        let err = pair(&mut conn, &code.code, &device(), 3000).expect_err("locked");
        assert!(matches!(
            err,
            ServiceError::Refused {
                code: "invalid_code",
                ..
            }
        ));
        // A new code from the admin works.
        let fresh = new_pairing_code(&mut conn, "Mike", 4000).expect("new code");
        pair(&mut conn, &fresh.code, &device(), 5000).expect("pairs");
    }

    fn inbound(guid: &str, handle: &str) -> Body {
        Body::EventMessage(EventMessage {
            event_key: whatsnap_proto::message_event_key(guid),
            guid: guid.to_owned(),
            rowid: 1,
            chat_guid: format!("iMessage;-;{handle}"),
            chat_kind: ChatKind::Direct,
            group_name: None,
            participants: vec![],
            service: "iMessage".into(),
            from_me: false,
            sender: Some(whatsnap_proto::frame::Handle {
                handle: handle.to_owned(),
                kind: whatsnap_proto::frame::HandleKind::Phone,
            }),
            recipients: vec![],
            text: format!("text of {guid}"),
            subject: None,
            reply_to_guid: None,
            thread_originator_guid: None,
            date_ms: 1_732_500_000_000,
            attachments: vec![],
            origin: None,
            backfill: false,
            backfill_request_id: None,
            suspected_echo: false,
            truncated: false,
        })
    }

    fn tags(conn: &Connection, handle: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(
                "SELECT t.tag FROM contact_tags t JOIN contacts c ON c.id = t.contact_id
                 WHERE c.handle = ?1 ORDER BY t.tag",
            )
            .expect("query");
        stmt.query_map([handle], |r| r.get(0))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("tags")
    }

    /// One run touching the same contacts several times: what the batch
    /// remembers must not change the outcome of applying them one by one.
    #[test]
    fn a_run_of_events_creates_and_tags_each_contact_once() {
        let mut conn = Connection::open_in_memory().expect("db");
        crate::db::migrate_for_tests(&mut conn);
        let (_, code) = create_account(&mut conn, "Mike", 1000).expect("account");
        let paired = pair(&mut conn, &code.code, &device(), 2000).expect("pairs");
        conn.execute(
            "UPDATE devices SET events_epoch = 'E', events_unanchored = 1 WHERE id = ?1",
            [&paired.device_id],
        )
        .expect("epoch");
        // A contact the service already knows, with a tag of its own but
        // none naming an account: the first account to hear from it owns it.
        conn.execute_batch(
            "INSERT INTO contacts (id, handle, created_ms) VALUES ('known', '+15550000002', 1);
             INSERT INTO contact_tags (contact_id, tag, source, created_ms)
             VALUES ('known', 'vip', 'manual', 1);",
        )
        .expect("known contact");
        let run: Vec<(u64, Option<Body>)> = [
            ("G1", "+15550000001"),
            ("G2", "+15550000001"),
            ("G3", "+15550000002"),
            ("G4", "+15550000001"),
        ]
        .iter()
        .zip(5..)
        .map(|((guid, handle), seq)| (seq, Some(inbound(guid, handle))))
        .collect();
        let events = apply_events(&mut conn, &paired.device_id, "E", &run, 3000).expect("applies");

        let created: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                RelayEvent::ContactCreated { handle, tag, .. } => {
                    Some((handle.as_str(), tag.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            created,
            vec![("+15550000001", Some("whatsnap-account-Mike".to_owned()))]
        );
        let received = events
            .iter()
            .filter(|e| matches!(e, RelayEvent::MessageReceived { .. }))
            .count();
        assert_eq!(received, 4);
        assert_eq!(tags(&conn, "+15550000001"), vec!["whatsnap-account-Mike"]);
        assert_eq!(
            tags(&conn, "+15550000002"),
            vec!["vip", "whatsnap-account-Mike"]
        );
        let committed: i64 = conn
            .query_row(
                "SELECT events_committed FROM devices WHERE id = ?1",
                [&paired.device_id],
                |r| r.get(0),
            )
            .expect("committed");
        assert_eq!(committed, 8, "the run's last seq, in the same transaction");

        // The run again (a resend after a lost ack) is refused whole.
        let again = apply_events(&mut conn, &paired.device_id, "E", &run, 4000);
        assert!(matches!(
            again,
            Err(ServiceError::Refused {
                code: "stale_session",
                ..
            })
        ));
    }

    #[test]
    fn tags_keep_only_safe_characters() {
        assert_eq!(
            tag_for_name("Mike").as_deref(),
            Some("whatsnap-account-Mike")
        );
        assert_eq!(
            tag_for_name(" Front Desk ").as_deref(),
            Some("whatsnap-account-Front-Desk")
        );
        assert_eq!(
            tag_for_name("Zoë's phone!").as_deref(),
            Some("whatsnap-account-Zos-phone")
        );
        assert_eq!(tag_for_name("   "), None);
        assert_eq!(tag_for_name("!!!"), None);
        assert_eq!(tag_for_name("- -"), None);
    }
}
