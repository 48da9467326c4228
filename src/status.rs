//! What `whatsnap-mac status` knows and how it says it: to a person, as
//! JSON, and as a SwiftBar or xbar menu-bar plugin.
//!
//! The picture is put together from three sources so it is useful even when
//! the daemon is down: the running daemon over its control socket (link state,
//! uptime, reader health), the pairing credentials (account, service), and the
//! daemon's state database read-only (queue depths, last send). Rendering is a
//! pure function of that picture and "now", so every format and state has a
//! fixed expected output in the tests.
//!
//! Overall state and exit code: `connected` (0) the link is up and nothing
//! needs the user; `degraded` (1) the daemon runs but is not connected, or a
//! permission, pairing or pause needs attention; `down` (3) the daemon is not
//! running or has stopped for good. Menu-bar formats always exit 0, because
//! SwiftBar and xbar show an error glyph for any other status.

use std::path::Path;

use serde::Serialize;

use crate::control::DaemonStatus;

/// Overall state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overall {
    /// Linked and nothing needs the user.
    Connected,
    /// Running, but something needs attention.
    Degraded,
    /// Not running.
    Down,
}

impl Overall {
    /// The documented exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Overall::Connected => 0,
            Overall::Degraded => 1,
            Overall::Down => 3,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Overall::Connected => "connected",
            Overall::Degraded => "degraded",
            Overall::Down => "down",
        }
    }
}

/// The paired account, from the credentials file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    /// Its name.
    pub name: String,
    /// Its tag.
    pub tag: String,
    /// The service's URL.
    pub server: String,
}

/// Queue depths and the last send, from the state database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Queue {
    /// Events not yet acked by the service.
    pub events_unacked: u64,
    /// Sends not finished.
    pub sends_pending: u64,
    /// When the last send finished, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_send_ms: Option<i64>,
    /// Its error code when it failed (e.g. `automation_denied`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_send_error: Option<String>,
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The running daemon, if one answered.
    pub daemon: Option<DaemonStatus>,
    /// The paired account, if paired.
    pub account: Option<Account>,
    /// Queues, if the state database exists.
    pub queue: Option<Queue>,
    /// Whether the LaunchAgent plist is installed.
    pub agent_installed: bool,
    /// Why the credentials could not be read, other than "not paired".
    pub credentials_error: Option<String>,
}

impl Status {
    /// Things the user must fix, each with the fix.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(e) = &self.credentials_error {
            problems.push(e.clone());
        } else if self.account.is_none() {
            problems.push(
                "not paired: run `whatsnap-mac pair --server URL CODE` with the code from your WhatSnap admin".into(),
            );
        }
        if let Some(d) = &self.daemon {
            if let Some(e) = &d.reader_error {
                problems.push(e.clone());
            }
            if d.sending_paused {
                problems.push("sending is paused: run `whatsnap-mac status --resume`".into());
            }
            if d.link.state == "stopped" {
                problems.push(
                    d.link
                        .reason
                        .clone()
                        .unwrap_or_else(|| "the link stopped".into()),
                );
            }
        }
        if let Some(q) = &self.queue
            && q.last_send_error.as_deref() == Some("automation_denied")
        {
            problems.push(
                "macOS denied control of Messages at the last send: allow whatsnap-mac under System Settings > Privacy & Security > Automation > Messages, then `whatsnap-mac restart`".into(),
            );
        }
        problems
    }

    /// The overall state.
    pub fn overall(&self) -> Overall {
        match &self.daemon {
            None => Overall::Down,
            Some(d) if d.link.state == "stopped" => Overall::Down,
            Some(d) if d.link.state == "connected" && self.problems().is_empty() => {
                Overall::Connected
            }
            Some(_) => Overall::Degraded,
        }
    }

    /// What to do about a daemon that is not running.
    fn start_hint(&self) -> &'static str {
        if self.agent_installed {
            "start it with `whatsnap-mac restart`; `whatsnap-mac logs` shows why it stopped"
        } else {
            "start it with `whatsnap-mac install` (or run `whatsnap-mac run` in a terminal)"
        }
    }

    fn link_line(&self, now_ms: i64) -> String {
        let Some(d) = &self.daemon else {
            return format!("not running: {}", self.start_hint());
        };
        let reason = d.link.reason.as_deref().unwrap_or("no reason given");
        match d.link.state.as_str() {
            "connected" => match (&self.account, &d.link.account_tag) {
                (Some(a), _) => format!("connected to {}", a.server),
                (None, Some(tag)) => format!("connected as {tag}"),
                (None, None) => "connected".into(),
            },
            "connecting" => "connecting".into(),
            "retrying" => match d.link.retry_in_secs {
                Some(s) => format!(
                    "retrying in {}: {reason}",
                    duration(s.saturating_mul(1000) as i64)
                ),
                None => format!("retrying: {reason}"),
            },
            "stopped" => format!("stopped: {reason}"),
            other => format!("{other} ({})", ago(d.started_ms, now_ms)),
        }
    }

    /// For a person.
    pub fn render_text(&self, now_ms: i64) -> String {
        let mut out = format!("whatsnap-mac: {}\n", self.overall().word());
        let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<10} {v}\n"));
        line("Link:", self.link_line(now_ms));
        if let Some(a) = &self.account {
            line("Account:", format!("{} ({})", a.name, a.tag));
            line("Service:", a.server.clone());
        }
        if let Some(d) = &self.daemon {
            line(
                "Daemon:",
                format!(
                    "pid {}, up {}, version {}",
                    d.pid,
                    duration(now_ms - d.started_ms),
                    d.version
                ),
            );
            line(
                "Last read:",
                d.last_row_ms
                    .map(|t| format!("newest message {}", ago(t, now_ms)))
                    .unwrap_or_else(|| "no message read yet".into()),
            );
        }
        if let Some(q) = &self.queue {
            line(
                "Last send:",
                match (q.last_send_ms, &q.last_send_error) {
                    (None, _) => "none yet".into(),
                    (Some(t), None) => ago(t, now_ms),
                    (Some(t), Some(e)) => format!("{} (failed: {e})", ago(t, now_ms)),
                },
            );
            line(
                "Queue:",
                format!(
                    "{} events unacked, {} sends pending",
                    q.events_unacked, q.sends_pending
                ),
            );
        }
        let problems = self.problems();
        if problems.is_empty() {
            line("Problems:", "none".into());
        } else {
            for p in problems {
                line("Problem:", p);
            }
        }
        out
    }

    /// For programs: a stable JSON object.
    pub fn render_json(&self) -> serde_json::Value {
        serde_json::json!({
            "state": self.overall(),
            "running": self.daemon.is_some(),
            "agent_installed": self.agent_installed,
            "daemon": self.daemon,
            "account": self.account,
            "queue": self.queue,
            "problems": self.problems(),
            "hint": if self.daemon.is_none() { Some(self.start_hint()) } else { None },
        })
    }

    /// A SwiftBar or xbar plugin's output: a title with a state glyph and
    /// colour, `---`, the details, `---`, and actions that run this binary.
    pub fn render_menu(&self, flavor: MenuFlavor, now_ms: i64, exe: &Path) -> String {
        let overall = self.overall();
        let (glyph, color, symbol) = match overall {
            Overall::Connected => ("●", "#2ea043", "checkmark.circle.fill"),
            Overall::Degraded => ("◐", "#d29922", "exclamationmark.triangle.fill"),
            Overall::Down => ("○", "#cf222e", "xmark.octagon.fill"),
        };
        let mut out = String::new();
        match flavor {
            MenuFlavor::Swiftbar => out.push_str(&format!(
                "{glyph} WS | color={color} sfimage={symbol} tooltip=\"whatsnap-mac: {}\"\n",
                overall.word()
            )),
            MenuFlavor::Xbar => out.push_str(&format!("{glyph} WS | color={color}\n")),
        }
        out.push_str("---\n");
        out.push_str(&format!(
            "{} | color={color}\n",
            menu_text(&capitalized(&self.link_line(now_ms)))
        ));
        if let Some(a) = &self.account {
            out.push_str(&format!(
                "{}\n",
                menu_text(&format!("Account {} ({})", a.name, a.tag))
            ));
            out.push_str(&format!(
                "{}\n",
                menu_text(&format!("Service {}", a.server))
            ));
        }
        if let Some(q) = &self.queue {
            out.push_str(&format!(
                "Queue: {} unacked, {} sends pending\n",
                q.events_unacked, q.sends_pending
            ));
        }
        if let Some(d) = &self.daemon {
            if let Some(t) = d.last_row_ms {
                out.push_str(&format!("Newest message {}\n", ago(t, now_ms)));
            }
            out.push_str(&format!(
                "Up {} (pid {})\n",
                duration(now_ms - d.started_ms),
                d.pid
            ));
        }
        for p in self.problems() {
            out.push_str(&format!(
                "{} | color=#d29922\n",
                menu_text(&format!("⚠ {p}"))
            ));
        }
        out.push_str("---\n");
        let action = |title: &str, args: &[&str], terminal: bool| {
            let key = match flavor {
                MenuFlavor::Swiftbar => "bash",
                MenuFlavor::Xbar => "shell",
            };
            let mut item = format!("{title} | {key}=\"{}\"", exe.display());
            for (i, a) in args.iter().enumerate() {
                item.push_str(&format!(" param{}={a}", i + 1));
            }
            item.push_str(&format!(" terminal={terminal} refresh=true\n"));
            item
        };
        out.push_str(&action("Restart", &["restart"], false));
        if self.daemon.as_ref().is_some_and(|d| d.sending_paused) {
            out.push_str(&action("Resume sending", &["status", "--resume"], false));
        } else if self.daemon.is_some() {
            out.push_str(&action("Pause sending", &["status", "--pause"], false));
        }
        out.push_str(&action("Doctor…", &["doctor"], true));
        out.push_str(&action("Logs…", &["logs", "--follow"], true));
        out.push_str(&action("Pair…", &["pair", "--help"], true));
        out
    }
}

/// Which menu-bar app reads the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MenuFlavor {
    /// SwiftBar (`bash=`, SF Symbols).
    Swiftbar,
    /// xbar (`shell=`).
    Xbar,
}

/// A menu line's text: a `|` would start the parameters and a newline would
/// start another item, so neither may pass through.
fn menu_text(s: &str) -> String {
    s.replace('|', "¦").replace(['\n', '\r'], " ")
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `3h 5m`, `42s`.
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `5m ago`.
pub fn ago(t_ms: i64, now_ms: i64) -> String {
    format!("{} ago", duration(now_ms - t_ms))
}

/// Reads queue depths and the last send from the daemon's state database,
/// read-only; `None` when there is no database yet.
pub fn read_queue(state_db: &Path) -> Result<Option<Queue>, rusqlite::Error> {
    use rusqlite::{OpenFlags, OptionalExtension};
    if !state_db.exists() {
        return Ok(None);
    }
    let conn = rusqlite::Connection::open_with_flags(
        state_db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let count = |sql: &str| -> Result<u64, rusqlite::Error> {
        match conn.query_row(sql, [], |r| r.get::<_, i64>(0)) {
            Ok(n) => Ok(n.max(0) as u64),
            // A database from before a table existed: nothing queued there.
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => Ok(0),
            Err(e) => Err(e),
        }
    };
    let events_unacked = count("SELECT COUNT(*) FROM outbox")?;
    let sends_pending = count("SELECT COUNT(*) FROM sends WHERE phase != 'done'")?;
    let last: Option<(i64, Option<String>)> = conn
        .query_row(
            "SELECT updated_ms, result FROM sends WHERE phase = 'done' ORDER BY updated_ms DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .or_else(|e| match e {
            rusqlite::Error::SqliteFailure(_, Some(m)) if m.contains("no such table") => Ok(None),
            e => Err(e),
        })?;
    let (last_send_ms, last_send_error) = match last {
        Some((at, result)) => {
            let error = result
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
                .and_then(|v| v.pointer("/error/code")?.as_str().map(str::to_owned));
            (Some(at), error)
        }
        None => (None, None),
    };
    Ok(Some(Queue {
        events_unacked,
        sends_pending,
        last_send_ms,
        last_send_error,
    }))
}
