//! Fetching the files of a `cmd.send` from the service (protocol §7.9): the
//! service hosts the CRM's media behind short-lived signed links, and the
//! daemon downloads each with its device token straight into Messages'
//! staging folder, checking the size it was promised.
//!
//! A download that fails happens before anything reaches Messages, so the
//! send fails definitely and the service may retry it.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

/// The largest file fetched unless the settings say otherwise (§7.9).
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;

/// How to fetch the service's attachment links.
#[derive(Clone)]
pub struct Downloads {
    client: reqwest::Client,
    token: String,
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

impl Downloads {
    /// Downloads with `client`, sending `device_token` as the bearer token.
    pub fn new(client: reqwest::Client, device_token: String) -> Downloads {
        Downloads {
            client,
            token: device_token,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// Fetches `url` into `target`, refusing more than `max_bytes` and a
    /// size other than `expected` (when non-zero).
    pub async fn fetch(&self, url: &str, target: &Path, expected: u64) -> Result<u64, String> {
        if expected > self.max_bytes {
            return Err(format!(
                "the file is {expected} bytes, over the {} byte limit (max_attachment_bytes)",
                self.max_bytes
            ));
        }
        let response = self
            .client
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("cannot download {}: {e}", redact(url)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "the service answered {status} for {}; the link may have expired (15 min), \
                 resend from the CRM",
                redact(url)
            ));
        }
        let mut file = tokio::fs::File::create(target)
            .await
            .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        let mut response = response;
        let mut written: u64 = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("download of {} broke off: {e}", redact(url)))?
        {
            written += chunk.len() as u64;
            if written > self.max_bytes {
                return Err(format!(
                    "{} is larger than the {} byte limit",
                    redact(url),
                    self.max_bytes
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        if expected != 0 && written != expected {
            return Err(format!(
                "{} gave {written} bytes, not the {expected} the command announced",
                redact(url)
            ));
        }
        Ok(written)
    }
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
    fn signatures_stay_out_of_messages() {
        assert_eq!(redact("https://svc/att/1?sig=secret"), "https://svc/att/1");
    }
}
