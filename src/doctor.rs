//! `whatsnap-mac doctor`: every condition the bridge needs, checked one by
//! one, each failure naming its fix.
//!
//! Checks only look; none changes anything. macOS facts are probed the way
//! the daemon itself meets them: chat.db is opened with the daemon's own
//! reader (Full Disk Access shows as a refused open), Automation with a
//! harmless Apple event to Messages (-1743 means denied), the LaunchAgent and
//! the binary's signature through `launchctl` and `codesign` (paths
//! configurable, so stand-ins answer in tests). The service is asked for
//! `GET /healthz` over the paired URL (TLS checked with the pairing's CA
//! file), then `GET /v1/device` with the stored token: a live request that
//! proves the token without the running daemon and gives the service's
//! clock for the skew check. `pair` runs the two permission checks first
//! ([`pair_preflight`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::chatdb::{ChatDb, ChatDbError};
use crate::config::Paths;
use crate::launchd::{self, Launchctl};
use crate::link::keychain::KeychainError;
use crate::link::pair::{self, PairError, Paired};
use crate::link::tls;
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
    /// `--ca-file` given to `doctor`; else the one stored by `pair`.
    pub ca_file: Option<PathBuf>,
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
            ca_file: None,
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
    let stored = pair::load_paired(&env.paths.credentials());
    checks.push(paired(&stored));
    let (token, reach, clock) = match stored.as_ref().ok() {
        Some(p) => service_checks(env, p).await,
        None => {
            let skip = |id| {
                Check::bad(
                    id,
                    Outcome::Skip,
                    "not checked: not paired",
                    "fix paired first",
                )
            };
            (skip("token"), skip("service"), skip("clock"))
        }
    };
    checks.push(token);
    checks.push(reach);
    checks.push(clock);
    checks.push(disk(&env.paths.home));
    checks
}

/// The checks `pair` runs before it calls the service: Full Disk Access and
/// Automation, the two permissions without which a paired Mac can neither
/// read nor send.
pub async fn pair_preflight(env: &Env) -> Vec<Check> {
    let (fda, _) = chat_db_checks(env).await;
    let program = agent_program(&launchd::plist_path(&env.user_home));
    vec![fda, automation(env, program.as_deref()).await]
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

/// The program a LaunchAgent plist starts.
fn agent_program(plist: &Path) -> Option<PathBuf> {
    plist::Value::from_file(plist).ok().and_then(|v| {
        v.as_dictionary()?
            .get("ProgramArguments")?
            .as_array()?
            .first()?
            .as_string()
            .map(PathBuf::from)
    })
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
    let program = agent_program(&plist);
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

fn paired(stored: &Result<Paired, PairError>) -> Check {
    match stored {
        Ok(p) => Check::ok(
            "paired",
            format!(
                "account {} ({}) at {}",
                p.account_name, p.account_tag, p.server
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

/// The token, service and clock checks: `GET /healthz` over the paired URL
/// (TLS with the pairing's CA file), then `GET /v1/device` with the stored
/// token — a live request proving the service accepts it, which also gives
/// the service's clock in milliseconds. Nothing asks the running daemon.
async fn service_checks(env: &Env, stored: &Paired) -> (Check, Check, Check) {
    let ca_file = env.ca_file.clone().or_else(|| stored.ca_file.clone());
    let client = match tls::http_client(ca_file.as_deref(), Some(Duration::from_secs(10))) {
        Ok(c) => c,
        Err(e) => {
            return (
                Check::bad(
                    "token",
                    Outcome::Skip,
                    "not checked: no HTTPS",
                    "fix service first",
                ),
                Check::bad(
                    "service",
                    Outcome::Fail,
                    e.to_string(),
                    "pass a readable --ca-file, or pair again with `whatsnap-mac pair --ca-file PATH`",
                ),
                Check::bad("clock", Outcome::Skip, "not checked", "fix service first"),
            );
        }
    };
    let (reach, date) = healthz(&client, &stored.server).await;
    if reach.outcome == Outcome::Fail {
        let skip = |id| {
            Check::bad(
                id,
                Outcome::Skip,
                "not checked: service unreachable",
                "fix service first",
            )
        };
        return (skip("token"), reach, skip("clock"));
    }
    let (token, service_now) = token(env, &client).await;
    let clock = match service_now {
        Some((theirs_ms, ours_ms)) => clock_ms(theirs_ms, ours_ms),
        // No live answer: the Date header still tells the skew to a second.
        None => clock(date.as_deref(), jiff::Timestamp::now().as_millisecond()),
    };
    (token, reach, clock)
}

/// `GET /healthz`: the reachability check and the `Date` header.
async fn healthz(client: &reqwest::Client, server: &str) -> (Check, Option<String>) {
    let url = format!("{}/healthz", server.trim_end_matches('/'));
    let response = match client.get(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            return (
                Check::bad(
                    "service",
                    Outcome::Fail,
                    format!("cannot reach {url}: {}", tls::error_chain(&e.without_url())),
                    "check the Mac's network, and that the service address given to `pair` is right",
                ),
                None,
            );
        }
    };
    let tls = if url.starts_with("https://") {
        "over TLS"
    } else {
        "over plain HTTP on this machine"
    };
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let check = if response.status().is_success() {
        Check::ok("service", format!("{server} answers {tls}"))
    } else {
        Check::bad(
            "service",
            Outcome::Fail,
            format!("{url} answered HTTP {}", response.status()),
            "the service is up but unhealthy: tell your WhatSnap admin",
        )
    };
    (check, date)
}

/// The live token check: the stored token (from the Keychain or the file)
/// presented to `GET /v1/device`. Also the service's clock and ours at the
/// middle of the request, when it answered.
async fn token(env: &Env, client: &reqwest::Client) -> (Check, Option<(i64, i64)>) {
    let path = env.paths.credentials();
    let loaded = crate::blocking(move || {
        pair::CredentialStore::from_env().and_then(|store| store.peek(&path))
    })
    .await;
    let creds = match loaded {
        Ok((creds, _)) => creds,
        Err(PairError::Keychain(e)) => {
            let fix = match &e {
                KeychainError::Locked { .. } => {
                    "unlock the login Keychain (log in to the desktop, or `security unlock-keychain ~/Library/Keychains/login.keychain-db`)"
                }
                KeychainError::Denied { .. } => {
                    "run `whatsnap-mac doctor` again and answer Always Allow"
                }
                _ => "run `whatsnap-mac pair` again with a new code",
            };
            return (Check::bad("token", Outcome::Fail, e.to_string(), fix), None);
        }
        Err(e) => {
            return (
                Check::bad(
                    "token",
                    Outcome::Fail,
                    e.to_string(),
                    "run `whatsnap-mac pair` again",
                ),
                None,
            );
        }
    };
    let sent = jiff::Timestamp::now().as_millisecond();
    match pair::device_view(client, &creds).await {
        Ok(view) => {
            let received = jiff::Timestamp::now().as_millisecond();
            let check = if view.device_id == creds.device_id {
                Check::ok(
                    "token",
                    format!(
                        "the service accepts this Mac's token (account {})",
                        view.account_tag
                    ),
                )
            } else {
                Check::bad(
                    "token",
                    Outcome::Fail,
                    format!(
                        "the token belongs to device {}, not {}",
                        view.device_id, creds.device_id
                    ),
                    "run `whatsnap-mac pair` again with a new code",
                )
            };
            (check, Some((view.now_ms, sent + (received - sent) / 2)))
        }
        Err(PairError::Refused { status, message }) if status == 401 || status == 403 => (
            Check::bad(
                "token",
                Outcome::Fail,
                format!("the service rejects this Mac's token: {message}"),
                "run `whatsnap-mac pair` with a new code from your WhatSnap admin",
            ),
            None,
        ),
        Err(PairError::Refused { status: 404, .. }) => (
            Check::bad(
                "token",
                Outcome::Skip,
                "the service is too old to check a token (no GET /v1/device)",
                "update whatsnap-relay, or see `whatsnap-mac status` for the link",
            ),
            None,
        ),
        Err(e) => (
            Check::bad(
                "token",
                Outcome::Warn,
                format!("cannot check the token: {e}"),
                "run `whatsnap-mac doctor` again in a minute",
            ),
            None,
        ),
    }
}

/// The clock check from the service's clock in ms and ours at that moment.
pub fn clock_ms(theirs_ms: i64, ours_ms: i64) -> Check {
    skew_check((ours_ms - theirs_ms) / 1000)
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
    skew_check((now_ms - theirs.as_millisecond()) / 1000)
}

/// Fails when our clock is more than [`MAX_SKEW_SECS`] off the service's.
fn skew_check(skew: i64) -> Check {
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
