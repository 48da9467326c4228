//! A pretend Mac for tests: a temporary user HOME, and the stand-in
//! `launchctl`, `codesign`, `security` and `osascript` from `tests/stand-ins/`
//! copied in and made executable. Commands run the real `whatsnap-mac` binary
//! with HOME and the stand-ins' paths set, nothing from the outer environment.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const EXE: &str = env!("CARGO_BIN_EXE_whatsnap-mac");
pub const LABEL: &str = "com.whatsnap.mac";

pub struct Mac {
    pub dir: tempfile::TempDir,
    /// The user's HOME.
    pub user: PathBuf,
    /// The stand-ins' state folder (calls.log and knobs).
    pub state: PathBuf,
    /// Where the stand-in programs are.
    pub bin: PathBuf,
}

impl Mac {
    pub fn new() -> Mac {
        let dir = tempfile::tempdir().expect("tempdir");
        let user = dir.path().join("Users/you");
        let state = dir.path().join("standin-state");
        let bin = dir.path().join("standin-bin");
        for d in [&user, &state, &bin] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stand-ins");
        for name in ["launchctl", "codesign", "security", "osascript"] {
            let to = bin.join(name);
            std::fs::copy(source.join(name), &to).expect("copy stand-in");
            set_mode(&to, 0o755);
        }
        Mac {
            dir,
            user,
            state,
            bin,
        }
    }

    /// The Mac's default state folder.
    pub fn home(&self) -> PathBuf {
        self.user.join("Library/Application Support/whatsnap")
    }

    pub fn plist(&self) -> PathBuf {
        self.user
            .join(format!("Library/LaunchAgents/{LABEL}.plist"))
    }

    pub fn log_dir(&self) -> PathBuf {
        self.user.join("Library/Logs/whatsnap")
    }

    /// The installed binary's stable path.
    pub fn stable_binary(&self) -> PathBuf {
        self.home().join("bin/whatsnap-mac")
    }

    /// `whatsnap-mac <args>` against this Mac (the default state folder).
    /// osascript stays the default unless a test passes `--osascript`, as the
    /// agent's environment names only what differs from the defaults.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(EXE);
        cmd.args(["--home"])
            .arg(self.home())
            .args(args)
            .env_clear()
            .env("PATH", self.path_var())
            .env("HOME", &self.user)
            .env("WHATSNAP_LAUNCHCTL", self.bin.join("launchctl"))
            .env("WHATSNAP_CODESIGN", self.bin.join("codesign"))
            .env("WHATSNAP_SECURITY", self.bin.join("security"))
            .env("WHATSNAP_STANDIN_STATE", &self.state);
        cmd
    }

    /// PATH with the stand-ins first, then the system's.
    pub fn path_var(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        )
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().expect("whatsnap-mac runs"))
    }

    /// Every stand-in call so far, each as its argv.
    pub fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.state.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }

    /// Calls of one stand-in, without the program name.
    pub fn calls_of(&self, program: &str) -> Vec<Vec<String>> {
        self.calls()
            .into_iter()
            .filter(|c| c[0] == program)
            .map(|c| c[1..].to_vec())
            .collect()
    }

    pub fn loaded(&self) -> bool {
        self.state.join(format!("loaded.{LABEL}")).exists()
    }

    /// Writes a knob file for the stand-ins.
    pub fn knob(&self, name: &str, value: &str) {
        std::fs::write(self.state.join(name), value).expect("knob");
    }

    /// A small executable standing for the installed binary (install only
    /// needs its path).
    pub fn fake_installed_binary(&self) -> PathBuf {
        let path = self.stable_binary();
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").expect("write");
        set_mode(&path, 0o755);
        path
    }

    pub fn uid() -> String {
        let out = Command::new("id").arg("-u").output().expect("id -u");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with everything printed unless the exit status is `code`.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit status\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}
