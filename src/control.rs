//! The running daemon's local control socket.
//!
//! `whatsnap-mac status` and friends talk to the daemon over a Unix socket
//! in the state folder (`control.sock`, mode 0600 inside the 0700 state
//! folder), and the daemon also checks that each peer runs as the same user,
//! so nothing else on the Mac can reach it.
//!
//! Protocol: one JSON object per line each way, one answer per request, any
//! number of requests per connection.
//!
//! ```text
//! → {"cmd":"status"}
//! ← {"ok":true,"status":{"pid":4242,"version":"0.1.0",...}}
//! → {"cmd":"pause"}            (also "resume", "rescan", "reload")
//! ← {"ok":true,"message":"sending paused"}
//! ← {"ok":false,"error":"..."} (unknown command, or it failed)
//! ```
//!
//! Pausing is a marker file (`sending-paused`) in the state folder, so it
//! survives a restart and the sender can check it without a channel.
//!
//! The server also keeps launchd's log file (named by `WHATSNAP_LOG_FILE`)
//! under its size limit, being the daemon's one piece of local upkeep.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::daemon::DaemonHandle;
use crate::link::LinkState;

/// The socket's file name in the state folder.
pub const SOCKET_NAME: &str = "control.sock";

/// The marker file whose presence pauses sending.
pub const PAUSED_NAME: &str = "sending-paused";

/// Longest request line accepted; requests are tiny.
const MAX_LINE: usize = 4096;

/// How long a client waits for the daemon.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the log file's size is checked.
const LOG_CHECK: Duration = Duration::from_secs(60);

/// macOS limits a socket path to 104 bytes (`sun_path`).
const MAX_SOCKET_PATH: usize = 103;

/// The control socket of a state folder.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_NAME)
}

/// Whether sending is paused for a state folder.
pub fn sending_paused(home: &Path) -> bool {
    home.join(PAUSED_NAME).exists()
}

/// A request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The daemon's live state.
    Status,
    /// Stop handing sends to Messages (they stay queued).
    Pause,
    /// Hand queued sends to Messages again.
    Resume,
    /// Read chat.db again now.
    Rescan,
    /// Read the settings again.
    Reload,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was done.
    pub ok: bool,
    /// The state, for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonStatus>,
    /// What was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    fn done(message: &str) -> Response {
        Response {
            ok: true,
            status: None,
            message: Some(message.to_owned()),
            error: None,
        }
    }

    fn refused(error: String) -> Response {
        Response {
            ok: false,
            status: None,
            message: None,
            error: Some(error),
        }
    }
}

/// What the running daemon knows about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Its process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// When it started, Unix ms.
    pub started_ms: i64,
    /// The link to the service.
    pub link: LinkView,
    /// Why chat.db cannot be read, if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_error: Option<String>,
    /// Date of the newest Messages row read, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_row_ms: Option<i64>,
    /// Whether sending is paused.
    pub sending_paused: bool,
}

/// The link's state, flattened for JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    /// `connected`, `connecting`, `retrying` or `stopped`.
    pub state: String,
    /// Why it is not connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The account's tag, once connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_tag: Option<String>,
    /// Seconds until the next attempt, when retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_secs: Option<u64>,
}

impl From<&LinkState> for LinkView {
    fn from(state: &LinkState) -> LinkView {
        let view = |state: &str| LinkView {
            state: state.to_owned(),
            reason: None,
            account_tag: None,
            retry_in_secs: None,
        };
        match state {
            LinkState::Connecting => view("connecting"),
            LinkState::Connected { account_tag } => LinkView {
                account_tag: Some(account_tag.clone()),
                ..view("connected")
            },
            LinkState::Retrying { reason, retry_in } => LinkView {
                reason: Some(reason.clone()),
                retry_in_secs: Some(retry_in.as_secs()),
                ..view("retrying")
            },
            LinkState::Stopped { reason } => LinkView {
                reason: Some(reason.clone()),
                ..view("stopped")
            },
        }
    }
}

/// Why the control socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No daemon answers at the socket.
    #[error("the bridge is not running (no answer at {path})")]
    NotRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The socket path is longer than macOS allows.
    #[error(
        "the control socket path {path} is longer than macOS allows (104 bytes); use a shorter --home"
    )]
    PathTooLong {
        /// The socket.
        path: PathBuf,
    },
    /// Another daemon already answers at the socket.
    #[error(
        "another whatsnap-mac is already running with the state folder {home}; stop it first (`whatsnap-mac uninstall` or Ctrl-C)"
    )]
    AlreadyRunning {
        /// The state folder.
        home: PathBuf,
    },
    /// Reading, writing or binding failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered something that is not a response.
    #[error("the bridge answered something unexpected on {path}: {detail}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// Sends one request to the daemon at `socket` and waits for its answer
/// (blocking, at most [`CLIENT_TIMEOUT`] per step).
pub fn request(socket: &Path, req: Request) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning {
                path: socket.to_path_buf(),
            });
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_string(&req).map_err(|e| io(e.into()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .take(1 << 20)
        .read_line(&mut answer)
        .map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol {
        path: socket.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Binds the socket: refuses when another daemon answers there, replaces a
/// stale file left by a crash, and makes the socket 0600.
fn bind(socket: &Path) -> Result<UnixListener, ControlError> {
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ControlError::PathTooLong {
            path: socket.to_path_buf(),
        });
    }
    let io = |source| ControlError::Io {
        path: socket.to_path_buf(),
        source,
    };
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(ControlError::AlreadyRunning {
                home: socket.parent().unwrap_or(socket).to_path_buf(),
            });
        }
        std::fs::remove_file(socket).map_err(io)?;
    }
    // Bind beside, restrict, then rename into place: the socket appears at
    // its path already 0600, so nobody (nor a test waiting for the file)
    // ever sees it open to others.
    let staging = socket.with_extension("n"); // shorter than .sock: fits the path limit
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&staging, socket).map_err(io)?;
    Ok(listener)
}

/// Serves the control socket at `socket` until `shutdown`, then removes it.
/// Failures are logged, never fatal: the bridge works without its socket.
pub async fn serve(socket: PathBuf, handle: DaemonHandle, shutdown: CancellationToken) {
    let listener = match bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}; `whatsnap-mac status` will not reach this daemon");
            return;
        }
    };
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&socket).map(|m| m.uid()).ok()
    };
    let home = socket.parent().map(Path::to_path_buf).unwrap_or_default();
    let server = Server {
        handle,
        home,
        pid: std::process::id(),
        started_ms: jiff::Timestamp::now().as_millisecond(),
    };
    let log_file = std::env::var_os(crate::launchd::LOG_FILE_ENV).map(PathBuf::from);
    let mut log_check = tokio::time::interval(LOG_CHECK);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = log_check.tick() => {
                if let Some(log) = log_file.clone() {
                    let rotated = crate::blocking(move || {
                        crate::logfile::rotate_if_larger(&log, crate::logfile::MAX_BYTES, crate::logfile::KEEP)
                    }).await;
                    if let Err(e) = rotated {
                        tracing::warn!("cannot rotate the log file: {e}");
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let peer = stream.peer_cred().map(|c| c.uid()).ok();
                    if owner.is_none() || peer != owner {
                        tracing::warn!(?peer, "control socket: refused a peer of another user");
                        continue;
                    }
                    connections.spawn(server.clone().connection(stream, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    // Do not spin if accept keeps failing (e.g. out of fds).
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }
    connections.close();
    connections.wait().await;
    let _ = std::fs::remove_file(&socket);
}

#[derive(Debug, Clone)]
struct Server {
    handle: DaemonHandle,
    home: PathBuf,
    pid: u32,
    started_ms: i64,
}

impl Server {
    async fn connection(self, stream: UnixStream, shutdown: CancellationToken) {
        let (read, mut write) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(read.take(MAX_LINE as u64 * 64)).lines();
        loop {
            let line = tokio::select! {
                () = shutdown.cancelled() => return,
                line = lines.next_line() => line,
            };
            let line = match line {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => return,
            };
            let response = if line.len() > MAX_LINE {
                Response::refused("request too long".into())
            } else {
                match serde_json::from_str::<Request>(&line) {
                    Ok(req) => self.answer(req).await,
                    Err(e) => Response::refused(format!(
                        "not a request ({e}); send e.g. {{\"cmd\":\"status\"}}"
                    )),
                }
            };
            let Ok(mut out) = serde_json::to_string(&response) else {
                return;
            };
            out.push('\n');
            if write.write_all(out.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    async fn answer(&self, req: Request) -> Response {
        match req {
            Request::Status => Response {
                ok: true,
                status: Some(self.status()),
                message: None,
                error: None,
            },
            Request::Pause => {
                let marker = self.home.join(PAUSED_NAME);
                match crate::blocking(move || std::fs::write(marker, b"paused by the user\n")).await
                {
                    Ok(()) => Response::done("sending paused; texts stay queued until `resume`"),
                    Err(e) => Response::refused(format!("cannot pause: {e}")),
                }
            }
            Request::Resume => {
                let marker = self.home.join(PAUSED_NAME);
                match crate::blocking(move || std::fs::remove_file(marker)).await {
                    Ok(()) => Response::done("sending resumed"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Response::done("sending was not paused")
                    }
                    Err(e) => Response::refused(format!("cannot resume: {e}")),
                }
            }
            Request::Rescan => {
                // The same wake-up a file event gives: new rows, the recent
                // window's status changes and deletes are read, and a reader
                // stuck on a missing permission tries chat.db again.
                self.handle.rescan_wake();
                Response::done(
                    "reading chat.db now; `whatsnap-mac status` shows what the reader found",
                )
            }
            Request::Reload => match self.handle.reload.run().await {
                Ok(version) => Response::done(&format!(
                    "settings version {version} applied (the service pushes changes by itself; this re-applies the stored ones)"
                )),
                Err(e) => Response::refused(format!("cannot reload the settings: {e}")),
            },
        }
    }

    fn status(&self) -> DaemonStatus {
        let link = LinkView::from(&*self.handle.link.borrow());
        let reader = self.handle.reader.borrow().clone();
        DaemonStatus {
            pid: self.pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_ms: self.started_ms,
            link,
            reader_error: reader.error,
            last_row_ms: reader.last_row_ms,
            sending_paused: sending_paused(&self.home),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_small_json_object() {
        assert_eq!(
            serde_json::to_string(&Request::Status).expect("json"),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"pause"}"#).expect("parses"),
            Request::Pause
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
    }
}
