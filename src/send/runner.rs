//! Runs one of our constant scripts through `osascript -`.
//!
//! The script goes to osascript's stdin and the message data only as process
//! arguments, with no shell in between, so no text can ever become code. The
//! outcome is classified by what it means for a retry: a failure before
//! dispatch may be retried, a timeout may have sent and must not be.

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

    /// What to tell the user.
    pub fn explain(&self, osascript: &Path) -> String {
        if self.is_automation_denied() {
            let binary = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "whatsnap-mac".into());
            return format!(
                "macOS denied control of Messages: allow {binary} under System Settings > Privacy & Security > Automation > Messages ({})",
                self.message
            );
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

    /// Runs `script` with `args` as its `argv`.
    pub async fn run(&self, script: Script, args: &[&str]) -> RunOutcome {
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
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => RunOutcome::MayHaveCompleted(format!(
                "{} did not finish within {} s",
                self.program.display(),
                self.timeout.as_secs()
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
                RunOutcome::NotStarted(ScriptError {
                    code: error_number(&stderr),
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
