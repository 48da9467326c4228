//! Where the daemon keeps its state and finds the outside programs it drives.
//!
//! Everything the daemon writes lives under one folder, the *home*
//! (`--home` / `WHATSNAP_HOME`, default `~/Library/Application Support/whatsnap`),
//! so tests and the demo can move all of it at once. The Messages database and
//! the `osascript` program are paths too, so a stand-in can take their place on
//! a machine without Messages.

use std::path::{Path, PathBuf};

/// The real osascript on every Mac.
pub const DEFAULT_OSASCRIPT: &str = "/usr/bin/osascript";

/// Paths of one daemon instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The state folder.
    pub home: PathBuf,
    /// The Messages database to read.
    pub chat_db: PathBuf,
    /// The program that runs AppleScript.
    pub osascript: PathBuf,
}

impl Paths {
    /// Paths from the command line, filling defaults for what was not given.
    pub fn resolve(
        home: Option<PathBuf>,
        chat_db: Option<PathBuf>,
        osascript: Option<PathBuf>,
    ) -> Paths {
        Paths {
            home: home.unwrap_or_else(default_home),
            chat_db: chat_db.unwrap_or_else(default_chat_db),
            osascript: osascript.unwrap_or_else(|| PathBuf::from(DEFAULT_OSASCRIPT)),
        }
    }

    /// The daemon's own SQLite file: cursor, outbox, sends.
    pub fn state_db(&self) -> PathBuf {
        self.home.join("state.db")
    }

    /// The pairing (service, device id, account; the device token itself
    /// only when the token store is the file); mode 0600.
    pub fn credentials(&self) -> PathBuf {
        self.home.join("credentials.json")
    }

    /// The copy of `pair --ca-file`: the self-hosted service's CA, trusted
    /// beside the system's roots by every later connection.
    pub fn service_ca(&self) -> PathBuf {
        self.home.join("service-ca.pem")
    }
}

/// `~/Library/Application Support/whatsnap` on a Mac (the platform data dir
/// elsewhere).
pub fn default_home() -> PathBuf {
    directories::ProjectDirs::from("", "", "whatsnap")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| home_dir().join(".whatsnap"))
}

/// `~/Library/Messages/chat.db`.
pub fn default_chat_db() -> PathBuf {
    home_dir().join("Library/Messages/chat.db")
}

fn home_dir() -> PathBuf {
    directories::BaseDirs::new()
        .map(|d| d.home_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Creates the home folder, private to the user (0700).
pub fn ensure_home(home: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(home)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
