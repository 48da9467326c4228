//! `whatsnap-mac doctor`: every condition the bridge needs, checked one by
//! one, each failure naming its fix.
//!
//! Checks only look; none changes anything. macOS facts are probed the way
//! the daemon itself meets them: chat.db is opened with the daemon's own
//! reader (Full Disk Access shows as a refused open), Automation with a
//! harmless Apple event to Messages (-1743 means denied), the LaunchAgent and
//! the binary's signature through `launchctl` and `codesign` (paths
//! configurable, so stand-ins answer in tests). The service is asked for
//! `GET /healthz` over the paired URL, which also shows TLS working and gives
//! the service's clock through the `Date` header.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::chatdb::{ChatDb, ChatDbError};
use crate::config::Paths;
use crate::launchd::{self, Launchctl};
use crate::link::pair::{self, Credentials, PairError};
use crate::send::runner::{RunOutcome, Runner};
use crate::send::scripts::PROBE_MESSAGES;

/// The identifier `install.sh` signs the binary with.
pub const SIGNING_IDENTIFIER: &str = "com.whatsnap.mac";

/// The real codesign.
pub const DEFAULT_CODESIGN: &str = "/usr/bin/codesign";

/// Environment variable naming another codesign (a stand-in in tests).
pub const CODESIGN_ENV: &str = "WHATSNAP_CODESIGN";

/// Clock difference with the service above which timestamps and tokens go
/// wrong.
pub const MAX_SKEW_SECS: i64 = 60;

/// Free space below which the state folder fails the check.
pub const MIN_FREE_BYTES: u64 = 100 * 1024 * 1024;

/// Messages older than this suggest Messages is signed out.
pub const STALE_DAYS: i64 = 30;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Broken: the bridge cannot work until fixed.
    Fail,
    /// Could not be checked (an earlier check failed, or nothing to check).
    Skip,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable id, e.g. `full_disk_access`.
    pub id: &'static str,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// What to do, when something is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(id: &'static str, detail: impl Into<String>) -> Check {
        Check {
            id,
            outcome: Outcome::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        id: &'static str,
        outcome: Outcome,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            id,
            outcome,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// One line for a person.
    pub fn line(&self) -> String {
        let mark = match self.outcome {
            Outcome::Ok => "ok  ",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        };
        match &self.fix {
            Some(fix) => format!("[{mark}] {:<17} {} — fix: {fix}", self.id, self.detail),
            None => format!("[{mark}] {:<17} {}", self.id, self.detail),
        }
    }
}

/// Where the outside programs and files are.
#[derive(Debug, Clone)]
pub struct Env {
    /// The daemon's paths.
    pub paths: Paths,
    /// The user's home folder (for the LaunchAgent).
    pub user_home: PathBuf,
    /// `codesign`.
    pub codesign: PathBuf,
    /// `launchctl`, if the user id could be found.
    pub launchctl: Option<Launchctl>,
    /// The binary being diagnosed when no LaunchAgent names one.
    pub this_exe: Option<PathBuf>,
    /// Now, Unix ms.
    pub now_ms: i64,
}

impl Env {
    /// The real environment, with `WHATSNAP_CODESIGN` / `WHATSNAP_LAUNCHCTL`.
    pub fn from_env(paths: Paths) -> Env {
        Env {
            paths,
            user_home: crate::logfile::user_home(),
            codesign: std::env::var_os(CODESIGN_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CODESIGN)),
            launchctl: Launchctl::from_env().ok(),
            this_exe: std::env::current_exe().ok(),
            now_ms: jiff::Timestamp::now().as_millisecond(),
        }
    }
}

/// Runs every check, in the order a user would fix them.
pub async fn run_all(env: &Env) -> Vec<Check> {
    let mut checks = Vec::new();
    let (fda, messages) = chat_db_checks(env).await;
    checks.push(fda);
    checks.push(messages);
    // Permissions belong to the binary launchd starts, so fixes name it.
    let (agent, program) = launch_agent(env);
    checks.push(automation(env, program.as_deref()).await);
    checks.push(agent);
    checks.push(binary(env, program.as_deref()));
    let creds = pair::load(&env.paths.credentials());
    checks.push(paired(&creds));
    let (reach, clock) = service(creds.as_ref().ok()).await;
    checks.push(token(env, creds.as_ref().ok()));
    checks.push(reach);
    checks.push(clock);
    checks.push(disk(&env.paths.home));
    checks
}

async fn chat_db_checks(env: &Env) -> (Check, Check) {
    let path = env.paths.chat_db.clone();
    let now_ms = env.now_ms;
    crate::blocking(move || {
        let skipped = || {
            Check::bad(
                "messages",
                Outcome::Skip,
                "not checked: chat.db cannot be read",
                "fix full_disk_access first",
            )
        };
        let db = match ChatDb::open(&path) {
            Ok(db) => db,
            Err(e) => return (fda_failure(&path, &e), skipped()),
        };
        let fda = Check::ok("full_disk_access", format!("{} opens and reads", path.display()));
        let newest = db
            .max_rowid()
            .and_then(|max| db.read_after(max - 1, 1))
            .map(|rows| rows.into_iter().next());
        let messages = match newest {
            Err(e) => Check::bad(
                "messages",
                Outcome::Fail,
                format!("reading the newest message failed: {e}"),
                "open Messages once, then run `whatsnap-mac doctor` again",
            ),
            Ok(None) => Check::bad(
                "messages",
                Outcome::Fail,
                "Messages has no messages on this Mac",
                "open Messages, sign in to iMessage (Messages > Settings > iMessage) and send or receive one text",
            ),
            Ok(Some(row)) => {
                let at = crate::apple_time::apple_to_unix_ms(row.date);
                let age_days = at.map(|t| (now_ms - t) / 86_400_000);
                let when = at
                    .map(|t| crate::status::ago(t, now_ms))
                    .unwrap_or_else(|| "at an unknown time".into());
                if age_days.is_some_and(|d| d > STALE_DAYS) {
                    Check::bad(
                        "messages",
                        Outcome::Warn,
                        format!("the newest message is from {when}"),
                        "check that Messages is signed in to iMessage (Messages > Settings > iMessage) and that texts arrive on this Mac",
                    )
                } else {
                    Check::ok("messages", format!("Messages is in use; newest message {when}"))
                }
            }
        };
        (fda, messages)
    })
    .await
}

/// The Full Disk Access check's failure for an open error.
pub fn fda_failure(path: &Path, e: &ChatDbError) -> Check {
    match e {
        ChatDbError::PermissionDenied { binary, .. } => Check::bad(
            "full_disk_access",
            Outcome::Fail,
            format!("macOS refused to open {}", path.display()),
            format!(
                "add {binary} under System Settings > Privacy & Security > Full Disk Access (toggle it off and on after an upgrade), then `whatsnap-mac restart`"
            ),
        ),
        ChatDbError::Missing { .. } => Check::bad(
            "full_disk_access",
            Outcome::Fail,
            format!("no Messages database at {}", path.display()),
            "open Messages and sign in to iMessage; if it is there, grant Full Disk Access (macOS hides the folder without it)",
        ),
        other => Check::bad(
            "full_disk_access",
            Outcome::Fail,
            other.to_string(),
            "check --chat-db points at ~/Library/Messages/chat.db",
        ),
    }
}

async fn automation(env: &Env, program: Option<&Path>) -> Check {
    let runner = Runner::new(env.paths.osascript.clone(), Duration::from_secs(20));
    let binary = program
        .or(env.this_exe.as_deref())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "whatsnap-mac".into());
    match runner.run(PROBE_MESSAGES, &[]).await {
        RunOutcome::Accepted => Check::ok("automation", "Messages answers Apple events"),
        RunOutcome::NotStarted(err) => match err.code {
            Some(-1743) => Check::bad(
                "automation",
                Outcome::Fail,
                "macOS denied control of Messages (-1743)",
                format!(
                    "allow {binary} under System Settings > Privacy & Security > Automation > Messages; if it is not listed, run `tccutil reset AppleEvents` and send once to get the prompt again"
                ),
            ),
            Some(-1744) => Check::bad(
                "automation",
                Outcome::Warn,
                "macOS has not asked yet whether the bridge may control Messages (-1744)",
                "answer Allow when macOS asks at the first send",
            ),
            Some(-600) => Check::bad(
                "automation",
                Outcome::Warn,
                "Messages is not running (-600)",
                "open Messages and keep it open (add it to Login Items)",
            ),
            _ => Check::bad(
                "automation",
                Outcome::Fail,
                format!("{} failed: {}", runner.program().display(), err.message),
                "open Messages and run `whatsnap-mac doctor` again; if osascript itself fails, restart the Mac",
            ),
        },
        RunOutcome::MayHaveCompleted(detail) => Check::bad(
            "automation",
            Outcome::Fail,
            format!("Messages did not answer: {detail}"),
            "look for a permission prompt on the Mac's screen and answer it, then run `whatsnap-mac doctor` again",
        ),
    }
}

/// The LaunchAgent check, and the program the agent starts.
fn launch_agent(env: &Env) -> (Check, Option<PathBuf>) {
    let plist = launchd::plist_path(&env.user_home);
    if !plist.exists() {
        return (
            Check::bad(
                "launch_agent",
                Outcome::Fail,
                format!("no LaunchAgent at {}", plist.display()),
                "run `whatsnap-mac install` (or ./install.sh)",
            ),
            None,
        );
    }
    let program = plist::Value::from_file(&plist).ok().and_then(|v| {
        v.as_dictionary()?
            .get("ProgramArguments")?
            .as_array()?
            .first()?
            .as_string()
            .map(PathBuf::from)
    });
    let Some(launchctl) = &env.launchctl else {
        return (
            Check::bad(
                "launch_agent",
                Outcome::Skip,
                "cannot find your user id",
                "run `id -u` to see why",
            ),
            program,
        );
    };
    let check = match launchctl.print() {
        Ok(Some(info)) if info.running() => Check::ok(
            "launch_agent",
            format!(
                "loaded in {} and running (pid {})",
                launchctl.domain(),
                info.pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
        ),
        Ok(Some(info)) => Check::bad(
            "launch_agent",
            Outcome::Fail,
            format!(
                "loaded but {} (last exit code {})",
                if info.state.is_empty() {
                    "not running"
                } else {
                    info.state.as_str()
                },
                info.last_exit.as_deref().unwrap_or("unknown")
            ),
            "see `whatsnap-mac logs` for why it stopped, fix that, then `whatsnap-mac restart`",
        ),
        Ok(None) => Check::bad(
            "launch_agent",
            Outcome::Fail,
            format!("{} exists but is not loaded", plist.display()),
            "run `whatsnap-mac install` to load it",
        ),
        Err(e) => Check::bad(
            "launch_agent",
            Outcome::Fail,
            e.to_string(),
            "run `whatsnap-mac install` again",
        ),
    };
    (check, program)
}

fn binary(env: &Env, program: Option<&Path>) -> Check {
    let Some(program) = program
        .map(Path::to_path_buf)
        .or_else(|| env.this_exe.clone())
    else {
        return Check::bad(
            "binary",
            Outcome::Skip,
            "cannot find the binary",
            "run `whatsnap-mac install`",
        );
    };
    if !program.exists() {
        return Check::bad(
            "binary",
            Outcome::Fail,
            format!(
                "the LaunchAgent starts {}, which does not exist",
                program.display()
            ),
            "run ./install.sh again (it puts the binary back and reloads the agent)",
        );
    }
    let unstable = program
        .components()
        .any(|c| matches!(c.as_os_str().to_str(), Some("target" | "Cellar")));
    let out = Command::new(&env.codesign)
        .args(["-dv"])
        .arg(&program)
        .output();
    let (signed, detail) = match out {
        Err(e) => {
            return Check::bad(
                "binary",
                Outcome::Skip,
                format!(
                    "{} cannot be run to check the signature: {e}",
                    env.codesign.display()
                ),
                "install the Xcode command line tools (`xcode-select --install`)",
            );
        }
        Ok(o) => {
            // codesign prints its details on stderr.
            let text = String::from_utf8_lossy(&o.stderr).into_owned();
            (o.status.success(), text)
        }
    };
    if !signed {
        return Check::bad(
            "binary",
            Outcome::Fail,
            format!(
                "{} is not validly signed: {}",
                program.display(),
                detail.trim()
            ),
            format!(
                "run ./install.sh again, or `codesign --force --sign - --identifier {SIGNING_IDENTIFIER} '{}'`; then grant the permissions again",
                program.display()
            ),
        );
    }
    let identifier = detail
        .lines()
        .find_map(|l| l.strip_prefix("Identifier="))
        .unwrap_or("unknown")
        .to_owned();
    if unstable {
        return Check::bad(
            "binary",
            Outcome::Warn,
            format!(
                "{} is signed ({identifier}) but lives in a build or versioned folder",
                program.display()
            ),
            "permissions follow the path: install with ./install.sh so it stays at one place",
        );
    }
    if identifier != SIGNING_IDENTIFIER {
        return Check::bad(
            "binary",
            Outcome::Warn,
            format!(
                "{} is signed as {identifier}, not {SIGNING_IDENTIFIER}",
                program.display()
            ),
            "run ./install.sh again so upgrades keep one identity and the permissions stay granted",
        );
    }
    Check::ok(
        "binary",
        format!("{} is signed as {identifier}", program.display()),
    )
}

fn paired(creds: &Result<Credentials, PairError>) -> Check {
    match creds {
        Ok(c) => Check::ok(
            "paired",
            format!(
                "account {} ({}) at {}",
                c.account_name, c.account_tag, c.server
            ),
        ),
        Err(PairError::NotPaired) => Check::bad(
            "paired",
            Outcome::Fail,
            "this Mac is not paired",
            "run `whatsnap-mac pair --server URL CODE` with the code from your WhatSnap admin",
        ),
        Err(e) => Check::bad(
            "paired",
            Outcome::Fail,
            e.to_string(),
            "run `whatsnap-mac pair` again",
        ),
    }
}

/// Whether the service accepts the token, as far as can be told without a
/// handshake of our own: the running daemon's link says so.
fn token(env: &Env, creds: Option<&Credentials>) -> Check {
    if creds.is_none() {
        return Check::bad(
            "token",
            Outcome::Skip,
            "not checked: not paired",
            "fix paired first",
        );
    }
    let socket = crate::control::socket_path(&env.paths.home);
    match crate::control::request(&socket, crate::control::Request::Status) {
        Ok(answer) => match answer.status.map(|s| s.link) {
            Some(link) if link.state == "connected" => Check::ok(
                "token",
                "the running bridge is connected: the service accepts its token",
            ),
            Some(link) if link.state == "stopped" => Check::bad(
                "token",
                Outcome::Fail,
                link.reason.unwrap_or_else(|| "the link stopped".into()),
                "run `whatsnap-mac pair` again with a new code",
            ),
            Some(link) => Check::bad(
                "token",
                Outcome::Warn,
                format!(
                    "the running bridge is {}{}",
                    link.state,
                    link.reason.map(|r| format!(": {r}")).unwrap_or_default()
                ),
                "wait a minute and check again; see `whatsnap-mac logs`",
            ),
            None => Check::bad(
                "token",
                Outcome::Skip,
                "the bridge gave no status",
                "update whatsnap-mac",
            ),
        },
        Err(_) => Check::bad(
            "token",
            Outcome::Skip,
            "not checked: the bridge is not running, and only its link proves the token",
            "start it (`whatsnap-mac restart`) and run `whatsnap-mac doctor` again",
        ),
    }
}

async fn service(creds: Option<&Credentials>) -> (Check, Check) {
    let Some(creds) = creds else {
        return (
            Check::bad(
                "service",
                Outcome::Skip,
                "not checked: not paired",
                "fix paired first",
            ),
            Check::bad(
                "clock",
                Outcome::Skip,
                "not checked: not paired",
                "fix paired first",
            ),
        );
    };
    let url = format!("{}/healthz", creds.server.trim_end_matches('/'));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return (
                Check::bad(
                    "service",
                    Outcome::Fail,
                    format!("cannot set up HTTPS: {e}"),
                    "reinstall whatsnap-mac",
                ),
                Check::bad("clock", Outcome::Skip, "not checked", "fix service first"),
            );
        }
    };
    let response = match client.get(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            return (
                Check::bad(
                    "service",
                    Outcome::Fail,
                    format!("cannot reach {url}: {}", error_chain(&e.without_url())),
                    "check the Mac's network, and that the service address given to `pair` is right",
                ),
                Check::bad(
                    "clock",
                    Outcome::Skip,
                    "not checked: service unreachable",
                    "fix service first",
                ),
            );
        }
    };
    let tls = if url.starts_with("https://") {
        "over TLS"
    } else {
        "over plain HTTP on this machine"
    };
    let reach = if response.status().is_success() {
        Check::ok("service", format!("{} answers {tls}", creds.server))
    } else {
        Check::bad(
            "service",
            Outcome::Fail,
            format!("{url} answered HTTP {}", response.status()),
            "the service is up but unhealthy: tell your WhatSnap admin",
        )
    };
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The header has whole seconds; compare with the time it arrived.
    (
        reach,
        clock(date.as_deref(), jiff::Timestamp::now().as_millisecond()),
    )
}

/// The clock check from the service's `Date` header.
pub fn clock(date: Option<&str>, now_ms: i64) -> Check {
    let Some(date) = date else {
        return Check::bad(
            "clock",
            Outcome::Skip,
            "the service sent no Date header",
            "nothing to do",
        );
    };
    let Ok(theirs) = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(date) else {
        return Check::bad(
            "clock",
            Outcome::Skip,
            format!("unreadable Date header {date:?}"),
            "nothing to do",
        );
    };
    let skew = (now_ms - theirs.as_millisecond()) / 1000;
    if skew.abs() > MAX_SKEW_SECS {
        Check::bad(
            "clock",
            Outcome::Fail,
            format!(
                "this Mac's clock is {} {} the service's",
                // The header has whole seconds: say whole minutes.
                crate::status::duration((skew.abs() + 30) / 60 * 60_000),
                if skew > 0 { "ahead of" } else { "behind" }
            ),
            "turn on System Settings > General > Date & Time > Set time and date automatically",
        )
    } else {
        Check::ok("clock", "within a minute of the service's")
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn disk(home: &Path) -> Check {
    // The folder may not exist yet: measure the nearest existing parent.
    let mut dir = home.to_path_buf();
    while !dir.exists() {
        if !dir.pop() {
            break;
        }
    }
    match free_bytes(&dir) {
        Some(free) => disk_check(home, free),
        None => Check::bad(
            "disk",
            Outcome::Skip,
            format!("cannot measure free space at {}", dir.display()),
            "run `df -h` to check by hand",
        ),
    }
}

/// The disk check for `free` bytes available to the state folder.
pub fn disk_check(home: &Path, free: u64) -> Check {
    let human = format!("{} MB free for {}", free / (1024 * 1024), home.display());
    if free < MIN_FREE_BYTES {
        Check::bad(
            "disk",
            Outcome::Fail,
            human,
            "free some disk space: the bridge needs room to queue messages",
        )
    } else {
        Check::ok("disk", human)
    }
}

/// Bytes available at `dir`, from `df -Pk` (POSIX output, 1K blocks).
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1)?;
    let available: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(available * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcc_refusal_names_full_disk_access_and_the_binary() {
        let e = ChatDbError::PermissionDenied {
            path: PathBuf::from("/Users/you/Library/Messages/chat.db"),
            binary: "/Users/you/bin/whatsnap-mac".into(),
        };
        let check = fda_failure(Path::new("/Users/you/Library/Messages/chat.db"), &e);
        assert_eq!(check.outcome, Outcome::Fail);
        let fix = check.fix.expect("fix");
        assert!(fix.contains("Full Disk Access"));
        assert!(fix.contains("/Users/you/bin/whatsnap-mac"));
    }

    #[test]
    fn clock_skew_beyond_a_minute_fails() {
        let now = jiff::Timestamp::from_second(1_764_000_000).expect("ts");
        let header = |offset: i64| {
            let t = jiff::Timestamp::from_second(now.as_second() + offset).expect("ts");
            jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&t)
                .expect("http date")
        };
        let ms = now.as_millisecond();
        assert_eq!(clock(Some(&header(20)), ms).outcome, Outcome::Ok);
        let late = clock(Some(&header(-3600)), ms);
        assert_eq!(late.outcome, Outcome::Fail);
        assert!(late.detail.contains("1h 0m ahead of"), "{}", late.detail);
        assert_eq!(clock(None, ms).outcome, Outcome::Skip);
    }

    #[test]
    fn little_free_space_fails() {
        assert_eq!(
            disk_check(Path::new("/x"), 10 * 1024 * 1024).outcome,
            Outcome::Fail
        );
        assert_eq!(
            disk_check(Path::new("/x"), 10 * 1024 * 1024 * 1024).outcome,
            Outcome::Ok
        );
        assert_eq!(disk(Path::new("/definitely/not/here")).outcome, Outcome::Ok);
    }
}
