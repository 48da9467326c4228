//! The device token in the macOS login Keychain, through `security(1)`.
//!
//! One generic password per device: service `whatsnap-mac`, account = the
//! device id. Going through `/usr/bin/security` (path configurable with
//! `WHATSNAP_SECURITY`, so tests run a stand-in) rather than the Security
//! framework keeps the item's access list naming one stable Apple binary, so a
//! rebuilt or upgraded `whatsnap-mac` is not asked again for the token
//! (`../shared/reference/macos.md` §6; the trade-off is that any process of
//! this user that can run `security` can read it, as it could read a 0600
//! file).
//!
//! The token never goes on a command line, where `ps` would show it to every
//! user of the Mac: it is written with `security -i`, which reads its
//! commands from stdin, and read back with `find-generic-password -w`, which
//! prints it on stdout. `security -i` reports failures only on stderr, so a
//! write is confirmed by reading the item back. Messages from `security` are
//! scrubbed of the token before they reach an error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Keychain item's service name.
pub const SERVICE: &str = "whatsnap-mac";

/// The real `security`.
pub const DEFAULT_SECURITY: &str = "/usr/bin/security";

/// Environment variable naming another `security` (a stand-in in tests).
pub const SECURITY_ENV: &str = "WHATSNAP_SECURITY";

/// `security`'s exit status for "the specified item could not be found".
const NOT_FOUND_STATUS: i32 = 44;

/// What went wrong with the Keychain; every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeychainError {
    /// No token for this device in the Keychain.
    #[error(
        "the Keychain has no WhatSnap token for this Mac (item \"{SERVICE}\" / {account}); run `whatsnap-mac pair` again"
    )]
    NotFound {
        /// The device id.
        account: String,
    },
    /// The login keychain is locked and nobody can be asked to unlock it
    /// (an SSH session, or launchd before the user logged in).
    #[error(
        "the login Keychain is locked ({detail}); log in to the Mac's desktop, or run `security unlock-keychain ~/Library/Keychains/login.keychain-db`, then `whatsnap-mac restart`"
    )]
    Locked {
        /// What `security` said.
        detail: String,
    },
    /// The user answered Deny (or cancelled) when macOS asked.
    #[error(
        "access to the WhatSnap token in the Keychain was denied ({detail}); run the command again and answer Always Allow, or allow `security` on the item \"{SERVICE}\" in Keychain Access"
    )]
    Denied {
        /// What `security` said.
        detail: String,
    },
    /// `security` could not be started.
    #[error(
        "cannot run {program}: {source} (is this a Mac? set WHATSNAP_SECURITY to another `security`, or WHATSNAP_TOKEN_STORE=file to keep the token in a 0600 file)"
    )]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A value `security -i` could not carry safely.
    #[error(
        "the {what} contains characters the Keychain command cannot carry; run `whatsnap-mac pair` again (or WHATSNAP_TOKEN_STORE=file)"
    )]
    Unsafe {
        /// Which value.
        what: &'static str,
    },
    /// Anything else `security` reported.
    #[error(
        "the Keychain refused: {detail}; open Keychain Access > login to check the keychain, or set WHATSNAP_TOKEN_STORE=file"
    )]
    Other {
        /// What `security` said.
        detail: String,
    },
}

/// The `security` program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keychain {
    program: PathBuf,
}

impl Keychain {
    /// `security` at `program`.
    pub fn new(program: impl Into<PathBuf>) -> Keychain {
        Keychain {
            program: program.into(),
        }
    }

    /// `WHATSNAP_SECURITY`, else `/usr/bin/security`.
    pub fn from_env() -> Keychain {
        Keychain::new(
            std::env::var_os(SECURITY_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SECURITY)),
        )
    }

    /// The program's path.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The token of device `account`.
    pub fn get(&self, account: &str) -> Result<String, KeychainError> {
        let out = Command::new(&self.program)
            .args(["find-generic-password", "-s", SERVICE, "-a", account, "-w"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if out.status.code() == Some(NOT_FOUND_STATUS) {
            return Err(KeychainError::NotFound {
                account: account.to_owned(),
            });
        }
        let token = String::from_utf8_lossy(&out.stdout)
            .trim_end_matches(['\n', '\r'])
            .to_owned();
        if !out.status.success() {
            return Err(classify(&scrub(&out.stderr, &token), account));
        }
        if token.is_empty() {
            return Err(KeychainError::NotFound {
                account: account.to_owned(),
            });
        }
        Ok(token)
    }

    /// Stores (or replaces) the token of device `account`, then reads it back:
    /// `security -i` does not say in its exit status whether a command failed.
    pub fn set(&self, account: &str, token: &str) -> Result<(), KeychainError> {
        if !carriable(account) {
            return Err(KeychainError::Unsafe { what: "device id" });
        }
        if !carriable(token) {
            return Err(KeychainError::Unsafe {
                what: "device token",
            });
        }
        let mut child = Command::new(&self.program)
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        // Plain words only (checked above): nothing for `security -i` to
        // unquote. The label defaults to the service name.
        let line = format!("add-generic-password -U -s {SERVICE} -a {account} -w {token}\n");
        let written = child
            .stdin
            .take()
            .map(|mut stdin| stdin.write_all(line.as_bytes()))
            .unwrap_or(Ok(()));
        let out = child
            .wait_with_output()
            .map_err(|source| self.spawn_error(source))?;
        let said = scrub(&out.stderr, token);
        if let Err(e) = written {
            return Err(KeychainError::Other {
                detail: format!("writing to {} failed: {e}; {said}", self.program.display()),
            });
        }
        // The read-back decides; what `security` said explains a failure.
        match self.get(account) {
            Ok(stored) if stored == token => Ok(()),
            _ if !said.is_empty() => Err(classify(&said, account)),
            Ok(_) => Err(KeychainError::Other {
                detail: "the item read back differs from the token just stored".into(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Deletes the item of device `account`; absent is fine.
    pub fn delete(&self, account: &str) -> Result<(), KeychainError> {
        let out = Command::new(&self.program)
            .args(["delete-generic-password", "-s", SERVICE, "-a", account])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if out.status.success() || out.status.code() == Some(NOT_FOUND_STATUS) {
            return Ok(());
        }
        Err(classify(&scrub(&out.stderr, ""), account))
    }

    fn spawn_error(&self, source: std::io::Error) -> KeychainError {
        KeychainError::Spawn {
            program: self.program.clone(),
            source,
        }
    }
}

/// Whether `value` survives `security -i`'s word splitting unquoted.
fn carriable(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\'))
}

/// `security`'s stderr as text, with `secret` (when non-empty) blotted out.
fn scrub(stderr: &[u8], secret: &str) -> String {
    let text = String::from_utf8_lossy(stderr).trim().to_owned();
    if secret.is_empty() {
        text
    } else {
        text.replace(secret, "<token>")
    }
}

/// Sorts `security`'s complaint into what the user must do about it.
fn classify(said: &str, account: &str) -> KeychainError {
    let lower = said.to_ascii_lowercase();
    let detail = if said.is_empty() {
        "no explanation".to_owned()
    } else {
        said.to_owned()
    };
    if lower.contains("could not be found") || lower.contains("-25300") {
        KeychainError::NotFound {
            account: account.to_owned(),
        }
    } else if lower.contains("interaction is not allowed")
        || lower.contains("-25308")
        || lower.contains("locked")
    {
        KeychainError::Locked { detail }
    } else if lower.contains("canceled")
        || lower.contains("cancelled")
        || lower.contains("-128")
        || lower.contains("passphrase you entered is not correct")
        || lower.contains("-25293")
    {
        KeychainError::Denied { detail }
    } else {
        KeychainError::Other { detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_complaints_become_actions() {
        let locked = classify(
            "security: SecKeychainItemCopyContent: User interaction is not allowed.",
            "dev",
        );
        assert!(locked.to_string().contains("unlock-keychain"), "{locked}");
        let denied = classify(
            "security: SecKeychainSearchCopyNext: User canceled the operation.",
            "dev",
        );
        assert!(denied.to_string().contains("Always Allow"), "{denied}");
        let gone = classify(
            "security: SecKeychainSearchCopyNext: The specified item could not be found in the keychain.",
            "dev",
        );
        assert!(gone.to_string().contains("whatsnap-mac pair"), "{gone}");
    }

    #[test]
    fn only_plain_words_are_sent_to_security() {
        assert!(carriable("wsd_gCai3OcEoD53TlMrlWRibGxoGWGd09bQU9kyckNQjVU"));
        assert!(carriable("01KAV0AV000RE9QWA5H3X91H4E"));
        for bad in ["", "a b", "a\"b", "a\nb", "a'b", "a\\b"] {
            assert!(!carriable(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_token_is_blotted_out_of_what_security_says() {
        let said = scrub(b"security: bad argument wsd_secret\n", "wsd_secret");
        assert_eq!(said, "security: bad argument <token>");
    }
}
