//! Runs one of our constant scripts through `osascript -`.
//!
//! The script goes to osascript's stdin and the message data only as process
//! arguments, with no shell in between, so no text can ever become code. The
//! outcome is classified by what it means for a retry, from the trailing
//! `(-NNNN)` AppleScript error number (the English text is localised): a
//! script error before dispatch is `not_started` and may be retried; a
//! timeout, a killed osascript, or Messages dying or timing out mid-event is
//! `may_have_completed` and must never be retried.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::scripts::Script;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Exit 0: Messages accepted the command (not proof of sending).
    Accepted,
    /// The script failed before Messages took the message.
    NotStarted(ScriptError),
    /// Timed out or was killed: the message may have gone out.
    MayHaveCompleted(String),
}

/// AppleScript error numbers that mean Messages may have been in the middle
/// of the send: -1712 (the Apple event timed out inside Messages) and -609
/// (the connection to Messages broke mid-event).
pub const MAY_HAVE_COMPLETED_CODES: &[i64] = &[-1712, -609];

/// macOS refused to let this program control Messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "macOS denied control of Messages (-1743): open System Settings > Privacy & Security > \
     Automation, find {binary} and turn on Messages under it, then retry (osascript said: {detail})"
)]
pub struct AutomationDenied {
    /// The program that needs the grant.
    pub binary: String,
    /// osascript's own words.
    pub detail: String,
}

/// A script error, classified by its AppleScript error number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// The trailing `(-NNNN)` number, when present.
    pub code: Option<i64>,
    /// stderr as osascript printed it.
    pub message: String,
}

impl ScriptError {
    /// Automation (Apple events to Messages) is denied.
    pub fn is_automation_denied(&self) -> bool {
        self.code == Some(-1743)
    }

    /// A short machine-readable name for `send.result` errors.
    pub fn code_name(&self) -> String {
        match self.code {
            Some(-1743) => "automation_denied".into(),
            Some(-1728) => "no_such_chat".into(),
            Some(n) => format!("applescript_{}", n.unsigned_abs()),
            None => "osascript_failed".into(),
        }
    }

    /// Messages does not know the chat GUID or the participant (-1728).
    pub fn is_no_such_target(&self) -> bool {
        self.code == Some(-1728)
    }

    /// The Automation error, when this is one.
    pub fn automation_denied(&self) -> Option<AutomationDenied> {
        self.is_automation_denied().then(|| AutomationDenied {
            binary: std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "whatsnap-mac".into()),
            detail: self.message.clone(),
        })
    }

    /// What to tell the user.
    pub fn explain(&self, osascript: &Path) -> String {
        if let Some(denied) = self.automation_denied() {
            return denied.to_string();
        }
        format!("{} failed: {}", osascript.display(), self.message)
    }
}

/// Finds the AppleScript error number at the end of osascript's stderr, e.g.
/// `0:42: execution error: Messages got an error: … (-1728)`. The text is
/// localised; the number is not.
pub fn error_number(stderr: &str) -> Option<i64> {
    let line = stderr.trim_end();
    let close = line.rfind(')')?;
    let open = line[..close].rfind('(')?;
    line[open + 1..close].trim().parse().ok()
}

/// Runs scripts through one osascript program.
#[derive(Debug, Clone)]
pub struct Runner {
    program: PathBuf,
    timeout: Duration,
}

impl Runner {
    /// A runner for `program` (normally `/usr/bin/osascript`).
    pub fn new(program: PathBuf, timeout: Duration) -> Runner {
        Runner { program, timeout }
    }

    /// The program run.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The time limit of one call unless the caller gives another.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `script` with `args` as its `argv`, within the default time limit.
    pub async fn run(&self, script: Script, args: &[&str]) -> RunOutcome {
        self.run_within(script, args, self.timeout).await
    }

    /// Runs `script` with `args` as its `argv`; after `timeout` osascript is
    /// killed and the outcome is `may_have_completed`.
    pub async fn run_within(&self, script: Script, args: &[&str], timeout: Duration) -> RunOutcome {
        let mut child = match Command::new(&self.program)
            .arg("-")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                return RunOutcome::NotStarted(ScriptError {
                    code: None,
                    message: format!("cannot start {}: {e}", self.program.display()),
                });
            }
        };
        // Dropping stdin after the write closes it: osascript reads to EOF.
        if let Some(mut stdin) = child.stdin.take()
            && let Err(e) = stdin.write_all(script.source.as_bytes()).await
        {
            return RunOutcome::NotStarted(ScriptError {
                code: None,
                message: format!("cannot write the script to osascript: {e}"),
            });
        }
        // kill_on_drop: when the timeout drops the wait, osascript is killed.
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => RunOutcome::MayHaveCompleted(format!(
                "{} did not finish within {:.1} s and was killed",
                self.program.display(),
                timeout.as_secs_f64()
            )),
            Ok(Err(e)) => RunOutcome::MayHaveCompleted(format!("waiting for osascript: {e}")),
            Ok(Ok(output)) => {
                if output.status.success() {
                    return RunOutcome::Accepted;
                }
                let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
                if output.status.code().is_none() {
                    // Killed by a signal: it may have been mid-send.
                    return RunOutcome::MayHaveCompleted(format!(
                        "osascript was killed ({stderr})"
                    ));
                }
                let code = error_number(&stderr);
                if code.is_some_and(|c| MAY_HAVE_COMPLETED_CODES.contains(&c)) {
                    return RunOutcome::MayHaveCompleted(format!(
                        "Messages did not answer in time or went away mid-send ({stderr})"
                    ));
                }
                RunOutcome::NotStarted(ScriptError {
                    code,
                    message: stderr,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_numbers_are_read_from_the_end_not_the_text() {
        assert_eq!(
            error_number(
                "0:42: execution error: Messages got an error: Can’t get chat id \"x (1)\". (-1728)\n"
            ),
            Some(-1728)
        );
        assert_eq!(
            error_number(
                "execution error: Not authorized to send Apple events to Messages. (-1743)"
            ),
            Some(-1743)
        );
        assert_eq!(
            error_number("osascript: can't open default scripting component"),
            None
        );
    }
}
