//! Pairing with the account service, and the credentials it yields.
//!
//! `whatsnap-mac pair` trades a one-time code for a device token over HTTPS
//! (`POST /v1/pair`). The token is a secret: it is stored in a file readable
//! only by the user (0600) in the state folder for now, and it never appears in
//! a URL, a log line or an error message.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use whatsnap_proto::api::{ApiError, DeviceInfo, PairRequest, PairResponse};

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
                detail: e.without_url().to_string(),
            })?;
    let status = response.status();
    if !status.is_success() {
        let message = match response.json::<ApiError>().await {
            Ok(api) => api.error.message,
            Err(_) => format!("HTTP {status}"),
        };
        return Err(PairError::Refused {
            status: status.as_u16(),
            message,
        });
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

/// Revokes this device at the service (`DELETE /v1/device`). A token the
/// service no longer knows (401) counts as done: the device is gone either way.
pub async fn unpair(client: &reqwest::Client, creds: &Credentials) -> Result<(), PairError> {
    let base = check_server_url(&creds.server)?;
    let url = format!("{}/v1/device", base.as_str().trim_end_matches('/'));
    let response = client
        .delete(&url)
        .bearer_auth(&creds.device_token)
        .send()
        .await
        .map_err(|e| PairError::Unreachable {
            server: creds.server.clone(),
            detail: e.without_url().to_string(),
        })?;
    let status = response.status();
    if status.is_success() || status.as_u16() == 401 {
        return Ok(());
    }
    let message = match response.json::<ApiError>().await {
        Ok(api) => api.error.message,
        Err(_) => format!("HTTP {status}"),
    };
    Err(PairError::Refused {
        status: status.as_u16(),
        message,
    })
}

/// Deletes the stored credentials; absent is fine.
pub fn forget(path: &Path) -> Result<(), PairError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PairError::Storage {
            path: path.display().to_string(),
            detail: e.to_string(),
        }),
    }
}

/// Writes credentials to `path`, readable by the user only. The file is
/// written beside and renamed over, so a crash never leaves half a token.
pub fn save(path: &Path, creds: &Credentials) -> Result<(), PairError> {
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
    let json = serde_json::to_vec_pretty(creds).map_err(|e| storage(e.into()))?;
    file.write_all(&json).map_err(storage)?;
    file.sync_all().map_err(storage)?;
    std::fs::rename(&tmp, path).map_err(storage)?;
    Ok(())
}

/// Reads credentials from `path`.
pub fn load(path: &Path) -> Result<Credentials, PairError> {
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
