//! The daemon's log files: where they are, keeping them small, reading them.
//!
//! launchd writes the daemon's output to one file (`StandardErrorPath`) and
//! never rotates it. The daemon keeps it under a size limit itself, by
//! copy-and-truncate: the current content moves to `whatsnap-mac.log.1` (older
//! ones shift to `.2`, … and the oldest is dropped) and the live file is
//! truncated in place. Truncating instead of renaming matters because launchd,
//! not the daemon, holds the file open: a renamed file would keep receiving
//! the output. launchd opens it for appending, so writes continue at the new
//! end. A few lines written between the copy and the truncation can be lost;
//! that is the accepted price of not owning the descriptor.
//!
//! Logs live in `~/Library/Logs/whatsnap/` (where Console.app looks) unless the
//! state folder was moved with `--home`, in which case they move with it to
//! `<home>/logs`, so a second instance never mixes its logs with the first.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The live log file's name.
pub const LOG_NAME: &str = "whatsnap-mac.log";

/// Rotate once the live file is larger than this.
pub const MAX_BYTES: u64 = 5 * 1024 * 1024;

/// Rotated files kept (`.1` … `.KEEP`).
pub const KEEP: usize = 3;

/// The log folder for a state folder: `~/Library/Logs/whatsnap` for the
/// default state folder, `<home>/logs` for any other.
pub fn log_dir(home: &Path) -> PathBuf {
    let user = user_home();
    // The Mac default is spelled out too, so the layout is the Mac's wherever
    // the platform default differs (Linux CI).
    if home == crate::config::default_home()
        || home == user.join("Library/Application Support/whatsnap")
    {
        user.join("Library/Logs/whatsnap")
    } else {
        home.join("logs")
    }
}

/// The live log file for a state folder.
pub fn log_file(home: &Path) -> PathBuf {
    log_dir(home).join(LOG_NAME)
}

/// The user's home folder (`$HOME`).
pub fn user_home() -> PathBuf {
    directories::BaseDirs::new()
        .map(|d| d.home_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `path.N`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `path` if it is larger than `max_bytes`, keeping `keep` old files.
/// Returns whether it rotated. A missing file is not an error.
pub fn rotate_if_larger(path: &Path, max_bytes: u64, keep: usize) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes || keep == 0 {
        return Ok(false);
    }
    // Shift .N-1 → .N, dropping the oldest.
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    std::fs::copy(path, rotated(path, 1))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// The last `n` lines of the log, reading the newest rotated file too when the
/// live one has fewer lines.
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut lines = read_lines(path)?;
    if lines.len() < n {
        let mut older = read_lines(&rotated(path, 1))?;
        older.append(&mut lines);
        lines = older;
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

fn read_lines(path: &Path) -> std::io::Result<Vec<String>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Follows a log file: remembers how far it read and hands out what was
/// appended since, starting over when the file was truncated by a rotation.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Follower {
    /// Follows `path` from its current end.
    pub fn from_end(path: &Path) -> Follower {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Follower {
            path: path.to_path_buf(),
            offset,
            partial: String::new(),
        }
    }

    /// Complete lines appended since the last call.
    pub fn poll(&mut self) -> std::io::Result<Vec<String>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            // Rotated: the file was truncated; read it from the start.
            self.offset = 0;
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut lines = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            lines.push(line.trim_end_matches(['\n', '\r']).to_owned());
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_log_is_rotated_and_the_oldest_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(LOG_NAME);
        for round in 1..=4 {
            std::fs::write(&log, format!("round {round}\n").repeat(10)).expect("write");
            assert!(rotate_if_larger(&log, 20, 2).expect("rotate"));
            assert_eq!(std::fs::metadata(&log).expect("live").len(), 0);
        }
        let newest = std::fs::read_to_string(rotated(&log, 1)).expect(".1");
        let older = std::fs::read_to_string(rotated(&log, 2)).expect(".2");
        assert!(newest.starts_with("round 4"));
        assert!(older.starts_with("round 3"));
        assert!(!rotated(&log, 3).exists(), "only two kept");
        std::fs::write(&log, "small\n").expect("write");
        assert!(!rotate_if_larger(&log, 20, 2).expect("no rotate"));
    }

    #[test]
    fn follow_sees_appends_and_survives_rotation() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(LOG_NAME);
        std::fs::write(&log, "old line\n").expect("write");
        let mut follower = Follower::from_end(&log);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        write!(f, "one\ntw").expect("append");
        assert_eq!(follower.poll().expect("poll"), ["one"]);
        writeln!(f, "o").expect("append");
        assert_eq!(follower.poll().expect("poll"), ["two"]);
        assert!(rotate_if_larger(&log, 1, 1).expect("rotate"));
        writeln!(f, "after").expect("append");
        assert_eq!(follower.poll().expect("poll"), ["after"]);
        assert_eq!(
            tail(&log, 3).expect("tail"),
            ["one", "two", "after"],
            "tail reaches into the rotated file"
        );
    }
}
