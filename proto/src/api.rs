//! HTTP bodies of the account service: pairing, and the admin API the relay
//! CLI, the demo and (later) the web UI use.
//!
//! Every error answer has the same shape, [`ApiError`], whose `message` tells
//! the caller what to do.

use serde::{Deserialize, Serialize};

use crate::frame::SettingsData;

/// `POST /v1/pair` request: a one-time code and what the device says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRequest {
    /// The code shown by the service, `XXXX-XXXX` (case and dash optional).
    pub code: String,
    /// The device.
    pub device: DeviceInfo,
}

/// What a daemon tells the service about its Mac.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Computer name.
    pub name: String,
    /// Hardware model, e.g. `Mac14,2`.
    #[serde(default)]
    pub model: String,
    /// e.g. `15.5`.
    #[serde(default)]
    pub macos_version: String,
    /// `whatsnap-mac` version.
    #[serde(default)]
    pub daemon_version: String,
    /// SHA-256 of the hardware UUID (never the UUID itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hw_id_hash: Option<String>,
}

/// `POST /v1/pair` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairResponse {
    /// The new device.
    pub device_id: String,
    /// Its account.
    pub account_id: String,
    /// The account's display name.
    pub account_name: String,
    /// The account's tag.
    pub account_tag: String,
    /// Where to connect.
    pub ws_url: String,
    /// The bearer token, `wsd_…`; shown once, stored hashed by the service.
    pub device_token: String,
    /// Current settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<SettingsData>,
}

/// `GET /v1/device` answer (device token): who the service takes this device
/// for, and its clock, so `whatsnap-mac doctor` can prove the token with a
/// live request and measure clock skew without the running daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The device the token belongs to.
    pub device_id: String,
    /// Its account.
    pub account_id: String,
    /// The account's display name.
    pub account_name: String,
    /// The account's tag.
    pub account_tag: String,
    /// The service's clock when it answered, Unix ms.
    pub now_ms: i64,
}

/// `POST /v1/device/token/rotate` answer: the device's new token. The token
/// the request carried keeps working until `previous_valid_until_ms` (24 h),
/// so a daemon that crashes before storing the new one can still connect
/// and rotate again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateTokenResponse {
    /// The new bearer token, `wsd_…`; shown once, stored hashed.
    pub device_token: String,
    /// When the previous token stops working, Unix ms.
    pub previous_valid_until_ms: i64,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// The error.
    pub error: ApiErrorBody,
}

/// `{code, message}` of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// Machine-readable, e.g. `invalid_code`.
    pub code: String,
    /// What happened and what to do.
    pub message: String,
}

impl ApiError {
    /// An error body.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ApiError {
            error: ApiErrorBody {
                code: code.to_owned(),
                message: message.into(),
            },
        }
    }
}

/// Kinds of accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// SMS/iMessage through a paired Mac.
    Imessage,
    /// Twilio number (later).
    Twilio,
    /// WhatsApp (later).
    Whatsapp,
}

/// `POST /v1/accounts` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateAccountRequest {
    /// Display name; the tag is made from it.
    pub name: String,
}

/// `POST /v1/accounts` answer: the account and its first pairing code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateAccountResponse {
    /// The account.
    pub account: AccountView,
    /// The pairing code for its Mac.
    pub pairing: PairingCode,
}

/// A one-time pairing code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingCode {
    /// `XXXX-XXXX`.
    pub code: String,
    /// Unix ms after which it no longer works.
    pub expires_at_ms: i64,
}

/// Whether an account works now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountState {
    /// Connected and healthy (maybe with a warning badge).
    Active,
    /// Not connected; see the reason.
    Disconnected,
}

/// Why an account is Disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// No device was ever paired.
    NeverPaired,
    /// The device was connected before and is not now.
    Offline,
    /// The device's token was revoked.
    Revoked,
    /// A newer device replaced it.
    Replaced,
    /// The daemon is too old.
    NeedsUpdate,
}

/// An account as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountView {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Tag, e.g. `whatsnap-account-Mike`.
    pub tag: String,
    /// Kind.
    pub kind: AccountKind,
    /// Active or Disconnected.
    pub status: AccountState,
    /// Why Disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DisconnectReason>,
    /// Disconnected since, or connected since, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// Last frame from the device, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<i64>,
    /// The device's last health report, when degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The paired device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Current settings.
    pub settings: SettingsData,
}

/// A CRM contact as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    /// Id.
    pub id: String,
    /// E.164 phone or lower-case email.
    pub handle: String,
    /// All tags, including the `whatsnap-account-` one.
    pub tags: Vec<String>,
    /// Created, Unix ms.
    pub created_ms: i64,
}

/// `PUT /v1/contacts/{id}/account-tag` request: move a contact to another account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetContactTagRequest {
    /// The new account tag (replaces any other `whatsnap-account-` tag).
    pub tag: String,
}

/// `POST /v1/messages` request: send a text to a contact through its account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessageRequest {
    /// Contact id or handle.
    pub contact: String,
    /// The text.
    pub text: String,
    /// Idempotency key; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

/// Where an outbound message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundState {
    /// Waiting for the device.
    Queued,
    /// Sent by the device.
    Sent,
    /// Failed.
    Failed,
    /// Dispatched, unconfirmed: check the phone before retrying.
    Unknown,
    /// Expired in the queue.
    Expired,
    /// Refused by the device.
    Rejected,
}

/// A message as the admin API shows it (both directions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// Id in the service.
    pub id: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The account it went through.
    pub account_id: String,
    /// The contact.
    pub contact_id: String,
    /// The text.
    pub text: String,
    /// For outbound: idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// For outbound: where it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<OutboundState>,
    /// iMessage GUIDs of the rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guids: Vec<String>,
    /// Error text, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Created, Unix ms.
    pub created_ms: i64,
}
