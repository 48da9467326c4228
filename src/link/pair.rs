//! Pairing with the account service, and the credentials it yields.
//!
//! `whatsnap-mac pair` trades a one-time code for a device token over HTTPS
//! (`POST /v1/pair`). The token is a secret: it is kept in the login Keychain
//! on macOS ([`keychain`](super::keychain)) or in `credentials.json`, mode
//! 0600, elsewhere ([`TokenStore`]), and it never appears in a URL, a log line,
//! `status` or an error message. The rest of the pairing (service, device id,
//! account, `--ca-file`, when the token was issued) is not secret and always
//! lives in `credentials.json` in the state folder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use whatsnap_proto::api::{ApiError, DeviceInfo, DeviceView, PairRequest, PairResponse};

use super::keychain::{Keychain, KeychainError};

/// What pairing leaves behind.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The service's base URL, as given to `pair`.
    pub server: String,
    /// Where to connect the websocket.
    pub ws_url: String,
    /// This device's id.
    pub device_id: String,
    /// The bearer token (secret).
    pub device_token: String,
    /// The account.
    pub account_id: String,
    /// Its name.
    pub account_name: String,
    /// Its tag.
    pub account_tag: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("ws_url", &self.ws_url)
            .field("device_id", &self.device_id)
            .field("device_token", &"<redacted>")
            .field("account_tag", &self.account_tag)
            .finish()
    }
}

/// Why pairing or loading credentials failed.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// The URL is unusable.
    #[error("{0}")]
    BadUrl(String),
    /// The service refused the code.
    #[error("the service refused pairing: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The service's explanation.
        message: String,
    },
    /// The service could not be reached.
    #[error("cannot reach the service at {server}: {detail} (check the URL and your network)")]
    Unreachable {
        /// The URL.
        server: String,
        /// What failed.
        detail: String,
    },
    /// Not paired yet.
    #[error(
        "this Mac is not paired yet: run `whatsnap-mac pair --server URL CODE` with the code from your WhatSnap admin"
    )]
    NotPaired,
    /// The service limits pairing attempts from this address.
    #[error("{message}{}", retry_hint(*retry_after))]
    RateLimited {
        /// The service's explanation.
        message: String,
        /// Its `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The Keychain holding the token refused.
    #[error(transparent)]
    Keychain(#[from] KeychainError),
    /// A setting has a value that means nothing.
    #[error("{0}")]
    BadSetting(String),
    /// The credentials file is unreadable.
    #[error("cannot read or write the credentials at {path}: {detail}")]
    Storage {
        /// The file.
        path: String,
        /// What failed.
        detail: String,
    },
}

/// Checks a service URL: `https://` anywhere, plain `http://` only to this
/// machine (a token must never cross a network in clear text).
pub fn check_server_url(server: &str) -> Result<reqwest::Url, PairError> {
    let url = reqwest::Url::parse(server.trim_end_matches('/')).map_err(|e| {
        PairError::BadUrl(format!(
            "{server:?} is not a URL ({e}); pass the service address, e.g. https://whatsnap.example.com"
        ))
    })?;
    match url.scheme() {
        "https" | "wss" => Ok(url),
        "http" | "ws" if is_loopback(&url) => Ok(url),
        "http" | "ws" => Err(PairError::BadUrl(format!(
            "refusing plain {}:// to {}: the device token would cross the network unencrypted; use https://",
            url.scheme(),
            url.host_str().unwrap_or("?")
        ))),
        other => Err(PairError::BadUrl(format!(
            "unsupported URL scheme {other:?}; use https://"
        ))),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Normalises a code as typed: upper-case, spaces dropped.
pub fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

/// Exchanges `code` for credentials.
pub async fn pair(
    client: &reqwest::Client,
    server: &str,
    code: &str,
    device: DeviceInfo,
) -> Result<Credentials, PairError> {
    let base = check_server_url(server)?;
    let url = format!("{}/v1/pair", base.as_str().trim_end_matches('/'));
    let request = PairRequest {
        code: normalize_code(code),
        device,
    };
    let response =
        client
            .post(&url)
            .json(&request)
            .send()
            .await
            .map_err(|e| PairError::Unreachable {
                server: server.to_owned(),
                detail: super::tls::error_chain(&e.without_url()),
            })?;
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    let answer: PairResponse = response.json().await.map_err(|e| PairError::Unreachable {
        server: server.to_owned(),
        detail: format!("the answer is not a pairing response: {}", e.without_url()),
    })?;
    let ws_url = check_server_url(&answer.ws_url)?.to_string();
    Ok(Credentials {
        server: base.to_string(),
        ws_url,
        device_id: answer.device_id,
        device_token: answer.device_token,
        account_id: answer.account_id,
        account_name: answer.account_name,
        account_tag: answer.account_tag,
    })
}

/// Sends a request authenticated by this device's token to `path` of its
/// service; a transport failure becomes [`PairError::Unreachable`].
pub(super) async fn device_request(
    client: &reqwest::Client,
    creds: &Credentials,
    method: reqwest::Method,
    path: &str,
    timeout: Option<Duration>,
) -> Result<reqwest::Response, PairError> {
    let base = check_server_url(&creds.server)?;
    let url = format!("{}{path}", base.as_str().trim_end_matches('/'));
    let mut request = client
        .request(method, &url)
        .bearer_auth(&creds.device_token);
    if let Some(limit) = timeout {
        request = request.timeout(limit);
    }
    request.send().await.map_err(|e| PairError::Unreachable {
        server: creds.server.clone(),
        detail: super::tls::error_chain(&e.without_url()),
    })
}

/// The error for a service's non-success answer: its `ApiError` message,
/// and for a 429 when to try again.
pub(super) async fn refusal(response: reqwest::Response) -> PairError {
    let status = response.status();
    let retry_after = super::retry_after(response.headers());
    let message = match response.json::<ApiError>().await {
        Ok(api) => api.error.message,
        Err(_) => format!("HTTP {status}"),
    };
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return PairError::RateLimited {
            message,
            retry_after,
        };
    }
    PairError::Refused {
        status: status.as_u16(),
        message,
    }
}

/// "; try `whatsnap-mac pair` again in 9 min" for a 429's `Retry-After`.
fn retry_hint(wait: Option<Duration>) -> String {
    let Some(wait) = wait else {
        return "; wait a few minutes, then run `whatsnap-mac pair` again".into();
    };
    let secs = wait.as_secs().max(1);
    let human = if secs < 60 {
        format!("{secs} s")
    } else {
        format!("{} min", secs.div_ceil(60))
    };
    format!("; try `whatsnap-mac pair` again in {human}")
}

/// `GET /v1/device`: proves the token with a live request and gives the
/// service's clock.
pub async fn device_view(
    client: &reqwest::Client,
    creds: &Credentials,
) -> Result<DeviceView, PairError> {
    let response = device_request(client, creds, reqwest::Method::GET, "/v1/device", None).await?;
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    response.json().await.map_err(|e| PairError::Unreachable {
        server: creds.server.clone(),
        detail: format!(
            "the answer is not a device view ({}); is the service a whatsnap-relay of this version?",
            e.without_url()
        ),
    })
}

/// Revokes this device at the service (`DELETE /v1/device`). A token the
/// service no longer knows (401) counts as done: the device is gone either way.
pub async fn unpair(client: &reqwest::Client, creds: &Credentials) -> Result<(), PairError> {
    let response =
        device_request(client, creds, reqwest::Method::DELETE, "/v1/device", None).await?;
    let status = response.status();
    if status.is_success() || status.as_u16() == 401 {
        return Ok(());
    }
    Err(refusal(response).await)
}

/// Where the device token is kept. Chosen when a token is stored
/// (`WHATSNAP_TOKEN_STORE=keychain|file`; the login Keychain on macOS, the
/// 0600 file elsewhere) and recorded in `credentials.json`, so every later
/// reader looks in the right place whatever its own environment says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenStore {
    /// The login Keychain, through `security` ([`keychain`]).
    Keychain,
    /// `credentials.json` itself, mode 0600.
    File,
}

/// The setting naming the token store.
pub const TOKEN_STORE_ENV: &str = "WHATSNAP_TOKEN_STORE";

impl TokenStore {
    /// The platform's choice: the Keychain on macOS, the file elsewhere.
    pub fn platform_default() -> TokenStore {
        if cfg!(target_os = "macos") {
            TokenStore::Keychain
        } else {
            TokenStore::File
        }
    }

    /// `WHATSNAP_TOKEN_STORE`, else [`TokenStore::platform_default`].
    pub fn from_env() -> Result<TokenStore, PairError> {
        match std::env::var(TOKEN_STORE_ENV) {
            Err(_) => Ok(TokenStore::platform_default()),
            Ok(v) => TokenStore::parse(&v),
        }
    }

    /// `keychain`, `file`, or empty for the platform's choice.
    pub fn parse(value: &str) -> Result<TokenStore, PairError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" => Ok(TokenStore::platform_default()),
            "keychain" => Ok(TokenStore::Keychain),
            "file" => Ok(TokenStore::File),
            other => Err(PairError::BadSetting(format!(
                "{TOKEN_STORE_ENV}={other:?} is not a token store; use `keychain` or `file`"
            ))),
        }
    }
}

/// What `credentials.json` holds besides the token: enough for `status` and
/// `doctor`'s paired check, read without touching the Keychain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paired {
    /// The service's base URL.
    pub server: String,
    /// Where the websocket connects.
    pub ws_url: String,
    /// This device's id (the Keychain item's account).
    pub device_id: String,
    /// The account.
    pub account_id: String,
    /// Its name.
    pub account_name: String,
    /// Its tag.
    pub account_tag: String,
    /// Where the token is.
    pub token_store: TokenStore,
    /// When the token was issued (pairing or rotation), Unix ms; unknown
    /// for credentials written before rotation existed.
    pub token_issued_ms: Option<i64>,
    /// Extra trusted roots for a self-hosted service (`--ca-file`).
    pub ca_file: Option<PathBuf>,
}

/// `credentials.json` as written. `device_token` is there only with the
/// file store, or in a file written before the Keychain was used (no
/// `token_store` then).
#[derive(Serialize, Deserialize)]
struct OnDisk {
    server: String,
    ws_url: String,
    device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_token: Option<String>,
    account_id: String,
    account_name: String,
    account_tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_store: Option<TokenStore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_issued_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
}

impl OnDisk {
    fn paired(&self) -> Paired {
        Paired {
            server: self.server.clone(),
            ws_url: self.ws_url.clone(),
            device_id: self.device_id.clone(),
            account_id: self.account_id.clone(),
            account_name: self.account_name.clone(),
            account_tag: self.account_tag.clone(),
            token_store: self.token_store.unwrap_or(TokenStore::File),
            token_issued_ms: self.token_issued_ms,
            ca_file: self.ca_file.clone(),
        }
    }
}

/// Reads and writes the credentials: the file, and the token wherever its
/// store is. The free functions [`load`], [`save`] and [`forget`] use the
/// environment's settings; tests build one with a stand-in `security`.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    /// Where new tokens go (and old file tokens move to).
    pub store: TokenStore,
    /// The `security` program.
    pub keychain: Keychain,
}

impl CredentialStore {
    /// `WHATSNAP_TOKEN_STORE` and `WHATSNAP_SECURITY`.
    pub fn from_env() -> Result<CredentialStore, PairError> {
        Ok(CredentialStore {
            store: TokenStore::from_env()?,
            keychain: Keychain::from_env(),
        })
    }

    /// Stores `creds` with a token issued now and `ca_file`: the token goes
    /// to its store first, then the file that says where it is, so a crash
    /// between the two leaves the previous pairing readable or the new one
    /// complete, never a file pointing at a missing token.
    pub fn save(
        &self,
        path: &Path,
        creds: &Credentials,
        ca_file: Option<&Path>,
    ) -> Result<(), PairError> {
        let mut disk = OnDisk {
            server: creds.server.clone(),
            ws_url: creds.ws_url.clone(),
            device_id: creds.device_id.clone(),
            device_token: None,
            account_id: creds.account_id.clone(),
            account_name: creds.account_name.clone(),
            account_tag: creds.account_tag.clone(),
            token_store: Some(self.store),
            token_issued_ms: Some(jiff::Timestamp::now().as_millisecond()),
            ca_file: ca_file.map(Path::to_path_buf),
        };
        // The item of a device this pairing replaces, deleted once the new
        // pairing is written.
        let stale = read_file(path).ok().filter(|old| {
            old.token_store == Some(TokenStore::Keychain) && old.device_id != creds.device_id
        });
        match self.store {
            TokenStore::Keychain => self.keychain.set(&creds.device_id, &creds.device_token)?,
            TokenStore::File => disk.device_token = Some(creds.device_token.clone()),
        }
        write_file(path, &disk)?;
        if let Some(old) = stale
            && let Err(e) = self.keychain.delete(&old.device_id)
        {
            tracing::warn!("the previous pairing's Keychain item stays: {e}");
        }
        Ok(())
    }

    /// The credentials with their token. A file from before the Keychain
    /// (token inside, no `token_store`) is moved to the Keychain when that
    /// is the configured store: token stored first, then the file rewritten
    /// without it; if the Keychain refuses, the file's token is used and the
    /// move is tried again next time.
    pub fn load(&self, path: &Path) -> Result<(Credentials, Paired), PairError> {
        self.read(path, true)
    }

    /// [`CredentialStore::load`] without moving an old file's token: for
    /// `doctor`, whose checks only look.
    pub fn peek(&self, path: &Path) -> Result<(Credentials, Paired), PairError> {
        self.read(path, false)
    }

    fn read(&self, path: &Path, migrate: bool) -> Result<(Credentials, Paired), PairError> {
        let mut disk = read_file(path)?;
        let token = match (disk.token_store, disk.device_token.clone()) {
            (Some(TokenStore::Keychain), _) => self.keychain.get(&disk.device_id)?,
            (_, Some(token)) => {
                if migrate && disk.token_store.is_none() && self.store == TokenStore::Keychain {
                    match self.keychain.set(&disk.device_id, &token) {
                        Ok(()) => {
                            disk.token_store = Some(TokenStore::Keychain);
                            disk.device_token = None;
                            write_file(path, &disk)?;
                            tracing::info!(
                                "the device token moved from credentials.json to the login Keychain"
                            );
                        }
                        Err(e) => tracing::warn!(
                            "the device token stays in credentials.json for now: {e}"
                        ),
                    }
                }
                token
            }
            (_, None) => {
                return Err(PairError::Storage {
                    path: path.display().to_string(),
                    detail: "it holds no device token; run `whatsnap-mac pair` again".into(),
                });
            }
        };
        let creds = Credentials {
            server: disk.server.clone(),
            ws_url: disk.ws_url.clone(),
            device_id: disk.device_id.clone(),
            device_token: token,
            account_id: disk.account_id.clone(),
            account_name: disk.account_name.clone(),
            account_tag: disk.account_tag.clone(),
        };
        Ok((creds, disk.paired()))
    }

    /// Replaces the token after a rotation: the new token is stored first
    /// (in the store the file names), then the file records when it was
    /// issued. The old token is gone from this Mac only once the new one is
    /// safely stored; the service keeps accepting the old one for 24 h.
    pub fn replace_token(&self, path: &Path, token: &str, issued_ms: i64) -> Result<(), PairError> {
        let mut disk = read_file(path)?;
        match disk.token_store {
            Some(TokenStore::Keychain) => {
                self.keychain.set(&disk.device_id, token)?;
            }
            _ => {
                disk.token_store = Some(TokenStore::File);
                disk.device_token = Some(token.to_owned());
            }
        }
        disk.token_issued_ms = Some(issued_ms);
        write_file(path, &disk)
    }

    /// Deletes the token and the file; absent is fine. The Keychain item
    /// goes first, so a failure leaves the file that names it.
    pub fn forget(&self, path: &Path) -> Result<(), PairError> {
        match read_file(path) {
            Ok(disk) if disk.token_store == Some(TokenStore::Keychain) => {
                self.keychain.delete(&disk.device_id)?;
            }
            Ok(_) | Err(PairError::NotPaired) => {}
            // An unreadable file is deleted all the same.
            Err(e) => tracing::warn!("{e}"),
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PairError::Storage {
                path: path.display().to_string(),
                detail: e.to_string(),
            }),
        }
    }
}

/// Deletes the stored credentials (and the Keychain item); absent is fine.
pub fn forget(path: &Path) -> Result<(), PairError> {
    CredentialStore::from_env()?.forget(path)
}

/// Stores credentials with the token in the 0600 file, with no CA file:
/// for the demo, tests and harnesses, which must never write to the user's
/// Keychain. `whatsnap-mac pair` stores through
/// [`CredentialStore::from_env`] instead.
pub fn save(path: &Path, creds: &Credentials) -> Result<(), PairError> {
    CredentialStore {
        store: TokenStore::File,
        keychain: Keychain::from_env(),
    }
    .save(path, creds, None)
}

/// Reads credentials from `path`, with the token from its store.
pub fn load(path: &Path) -> Result<Credentials, PairError> {
    CredentialStore::from_env()?.load(path).map(|(c, _)| c)
}

/// Reads what `credentials.json` says without the token (no Keychain access,
/// so `status` can run every few seconds from the menu bar).
pub fn load_paired(path: &Path) -> Result<Paired, PairError> {
    read_file(path).map(|d| d.paired())
}

fn read_file(path: &Path) -> Result<OnDisk, PairError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PairError::NotPaired),
        Err(e) => {
            return Err(PairError::Storage {
                path: path.display().to_string(),
                detail: e.to_string(),
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| PairError::Storage {
        path: path.display().to_string(),
        detail: format!("not valid credentials ({e}); run `whatsnap-mac pair` again"),
    })
}

/// Writes `disk` to `path`, readable by the user only. The file is written
/// beside and renamed over, so a crash never leaves half a file.
fn write_file(path: &Path, disk: &OnDisk) -> Result<(), PairError> {
    let storage = |e: std::io::Error| PairError::Storage {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(storage)?;
    let json = serde_json::to_vec_pretty(disk).map_err(|e| storage(e.into()))?;
    file.write_all(&json).map_err(storage)?;
    file.sync_all().map_err(storage)?;
    std::fs::rename(&tmp, path).map_err(storage)?;
    Ok(())
}

/// What this Mac says of itself when pairing.
pub fn device_info() -> DeviceInfo {
    DeviceInfo {
        name: computer_name(),
        model: String::new(),
        macos_version: macos_version(),
        daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        hw_id_hash: None,
    }
}

/// The macOS version from `sw_vers`, or `unknown` off a Mac.
///
/// Asked once per process: the link sends it on every (re)connect, and an
/// OS update restarts the daemon anyway.
pub fn macos_version() -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION
        .get_or_init(|| {
            std::process::Command::new("sw_vers")
                .arg("-productVersion")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "unknown".into())
        })
        .clone()
}

fn computer_name() -> String {
    std::process::Command::new("scutil")
        .args(["--get", "ComputerName"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "Mac".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_for_this_machine() {
        assert!(check_server_url("http://127.0.0.1:8787").is_ok());
        assert!(check_server_url("http://localhost:8787/").is_ok());
        assert!(check_server_url("https://whatsnap.example.com").is_ok());
        let err = check_server_url("http://whatsnap.example.com").expect_err("refused");
        assert!(err.to_string().contains("use https://"), "{err}");
    }

    fn sample_creds() -> Credentials {
        Credentials {
            server: "https://s".into(),
            ws_url: "wss://s/v1/device/ws".into(),
            device_id: "d".into(),
            device_token: "wsd_secret".into(),
            account_id: "a".into(),
            account_name: "Mike".into(),
            account_tag: "whatsnap-account-Mike".into(),
        }
    }

    #[test]
    fn credentials_never_print_the_token() {
        let creds = sample_creds();
        assert!(!format!("{creds:?}").contains("wsd_secret"));
    }

    #[test]
    fn saved_credentials_are_private_and_load_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials.json");
        let creds = sample_creds();
        save(&path, &creds).expect("save");
        assert_eq!(load(&path).expect("load"), creds);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn codes_are_normalised_as_typed() {
        assert_eq!(normalize_code(" abcd-efgh "), "ABCD-EFGH");
    }
}
