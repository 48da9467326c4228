//! Fetching the files of a `cmd.send` from the service (protocol §7.9, §12):
//! the service hosts the CRM's media behind short-lived signed links, and the
//! daemon downloads each with its device token straight into Messages'
//! staging folder, checking the size and the SHA-256 it was promised.
//!
//! Every file of a send is fetched and checked before any part of it is
//! dispatched (protocol §10, "Leaving `queued`"), so a file that fails its
//! check makes the whole send `rejected` with nothing sent, and a download
//! that breaks off makes it `failed`: either way nothing reached Messages and
//! the service may retry. A file that fails is deleted at once: Messages must
//! never be handed bytes the CRM did not send.

use std::path::{Path, PathBuf};

use ring::digest;
use tokio::io::AsyncWriteExt;

/// The largest file fetched unless the settings say otherwise (§7.9).
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;

/// How to fetch the service's attachment links.
#[derive(Clone)]
pub struct Downloads {
    client: reqwest::Client,
    /// The current device token: rotation replaces it while the daemon runs.
    token: tokio::sync::watch::Receiver<String>,
    /// Files larger than this are refused.
    pub max_bytes: u64,
}

impl std::fmt::Debug for Downloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads")
            .field("token", &"<redacted>")
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// Why a file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The file is not the one the command describes (size or checksum) or
    /// is too large: sending it would be wrong, so the send is `rejected`.
    #[error("{0}")]
    Refused(String),
    /// The download itself failed (network, an expired link, the disk):
    /// nothing was sent, the send is `failed` and may be retried.
    #[error("{0}")]
    Failed(String),
}

/// What the command promises about a file.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// Size in bytes; 0 when the command does not say.
    pub size: u64,
    /// Hex SHA-256 (protocol §6.16: required).
    pub sha256: &'a str,
}

impl Downloads {
    /// Downloads with `client`, sending `device_token` as the bearer token.
    pub fn new(client: reqwest::Client, device_token: String) -> Downloads {
        let (_, token) = tokio::sync::watch::channel(device_token);
        Downloads::following(client, token)
    }

    /// Downloads with `client`, sending whatever token `token` holds at the
    /// time of each download (it follows token rotation).
    pub fn following(
        client: reqwest::Client,
        token: tokio::sync::watch::Receiver<String>,
    ) -> Downloads {
        Downloads {
            client,
            token,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// Fetches `url` into `target`, refusing more than `max_bytes`, a size
    /// other than `expected.size` (when non-zero) and content whose SHA-256 is
    /// not `expected.sha256`. On any error `target` is removed.
    pub async fn fetch(
        &self,
        url: &str,
        target: &Path,
        expected: Expected<'_>,
    ) -> Result<u64, DownloadError> {
        let want = parse_sha256(expected.sha256).ok_or_else(|| {
            DownloadError::Refused(format!(
                "the command gives {:?} as the SHA-256 of {}, not 64 hex digits; \
                 the service must send the file's hex SHA-256",
                expected.sha256,
                redact(url)
            ))
        })?;
        if expected.size > self.max_bytes {
            return Err(DownloadError::Refused(format!(
                "the file is {} bytes, over the {} byte limit (max_attachment_bytes)",
                expected.size, self.max_bytes
            )));
        }
        let fetched = self.fetch_checked(url, target, expected.size, &want).await;
        if fetched.is_err() {
            // A partial or wrong file must not stay where Messages reads.
            match tokio::fs::remove_file(target).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot remove {}: {e}", target.display()),
            }
        }
        fetched
    }

    async fn fetch_checked(
        &self,
        url: &str,
        target: &Path,
        expected_size: u64,
        want: &[u8; 32],
    ) -> Result<u64, DownloadError> {
        let failed = DownloadError::Failed;
        // Copied out first: the watch guard must not live across the await.
        let token = self.token.borrow().clone();
        let response = self
            .client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| failed(format!("cannot download {}: {e}", redact(url))))?;
        let status = response.status();
        if !status.is_success() {
            return Err(failed(format!(
                "the service answered {status} for {}; the link may have expired (15 min), \
                 resend from the CRM",
                redact(url)
            )));
        }
        let mut file = tokio::fs::File::create(target)
            .await
            .map_err(|e| failed(format!("cannot create {}: {e}", target.display())))?;
        let mut response = response;
        let mut written: u64 = 0;
        let mut hash = digest::Context::new(&digest::SHA256);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(format!("download of {} broke off: {e}", redact(url))))?
        {
            written += chunk.len() as u64;
            if written > self.max_bytes {
                return Err(DownloadError::Refused(format!(
                    "{} is larger than the {} byte limit (max_attachment_bytes)",
                    redact(url),
                    self.max_bytes
                )));
            }
            hash.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| failed(format!("cannot write {}: {e}", target.display())))?;
        }
        file.flush()
            .await
            .map_err(|e| failed(format!("cannot write {}: {e}", target.display())))?;
        if expected_size != 0 && written != expected_size {
            return Err(DownloadError::Refused(format!(
                "{} gave {written} bytes, not the {expected_size} the command announced; \
                 the file was deleted and nothing was sent",
                redact(url)
            )));
        }
        let got = hash.finish();
        if got.as_ref() != want.as_slice() {
            return Err(DownloadError::Refused(format!(
                "{} gave a file whose SHA-256 is {}, not the {} the command announced; \
                 the file was deleted and nothing was sent",
                redact(url),
                hex(got.as_ref()),
                hex(want)
            )));
        }
        Ok(written)
    }
}

/// 64 hex digits (either case) as 32 bytes.
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digit = |b: u8| char::from(b).to_digit(16);
        let (h, l) = (digit(pair[0])?, digit(pair[1])?);
        out[i] = u8::try_from(h * 16 + l).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex SHA-256 of `bytes`, as a `cmd.send` carries it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// A signed link without its query (the signature), for messages and logs.
fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// A file name from the service made safe to put in a folder: no path
/// separators or NUL, never `.`/`..`/empty. Everything else (quotes, spaces,
/// any script) is kept byte for byte: it only ever travels as an argument.
pub fn safe_name(name: &str) -> PathBuf {
    let cleaned: String = name
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => PathBuf::from("attachment"),
        _ => PathBuf::from(cleaned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_service_cannot_leave_the_staging_folder() {
        assert_eq!(
            safe_name("../../etc/passwd"),
            PathBuf::from(".._.._etc_passwd")
        );
        assert_eq!(safe_name(".."), PathBuf::from("attachment"));
        assert_eq!(safe_name(""), PathBuf::from("attachment"));
        assert_eq!(
            safe_name("it's \"x\" & $(y).png"),
            PathBuf::from("it's \"x\" & $(y).png")
        );
    }

    #[test]
    fn checksums_are_read_as_the_command_gives_them() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_hex(b""), empty);
        assert_eq!(
            parse_sha256(&empty.to_uppercase()).map(|b| hex(&b)),
            Some(empty.to_owned())
        );
        assert_eq!(parse_sha256(""), None);
        assert_eq!(parse_sha256(&empty[1..]), None);
        assert_eq!(parse_sha256(&format!("{}g", &empty[1..])), None);
    }

    #[test]
    fn signatures_stay_out_of_messages() {
        assert_eq!(redact("https://svc/att/1?sig=secret"), "https://svc/att/1");
    }
}
