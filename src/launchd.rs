//! The LaunchAgent that keeps the bridge running, and the `launchctl` calls
//! that load, unload, restart and inspect it.
//!
//! macOS ties Full Disk Access and Automation grants to the binary launchd
//! starts, so the plist names the real `whatsnap-mac` binary as
//! `ProgramArguments[0]` (never a shell wrapper) and the agent lives in the
//! user's GUI domain `gui/<uid>`, where Messages.app and the permission prompts
//! live. `launchctl` is run as a process whose path is configurable
//! (`WHATSNAP_LAUNCHCTL`), so every call here runs on Linux against a
//! stand-in and against the real program on a Mac.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::config::Paths;

/// The agent's label, and the plist's file name without `.plist`.
pub const LABEL: &str = "com.whatsnap.mac";

/// The real `launchctl` on every Mac.
pub const DEFAULT_LAUNCHCTL: &str = "/bin/launchctl";

/// Environment variable naming another `launchctl` (a stand-in in tests).
pub const LAUNCHCTL_ENV: &str = "WHATSNAP_LAUNCHCTL";

/// Environment variable the agent passes to the daemon so it knows the log file
/// launchd writes its output to (and keeps it under its size limit).
pub const LOG_FILE_ENV: &str = "WHATSNAP_LOG_FILE";

/// Seconds launchd waits before starting the daemon again after an exit; also
/// the shortest run it counts as healthy. 10 s is launchd's default; we say it
/// so a crash loop is visibly paced.
pub const THROTTLE_SECS: u64 = 10;

/// The PATH the daemon runs with: launchd jobs get a minimal environment, and
/// the daemon only needs the system tools (`osascript`, `sw_vers`).
pub const AGENT_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// What goes into the LaunchAgent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// The binary launchd starts (its path is what the permissions follow).
    pub program: PathBuf,
    /// The state folder, passed as `WHATSNAP_HOME` so state moves together.
    pub home: PathBuf,
    /// The file launchd sends the daemon's output to.
    pub log_file: PathBuf,
    /// A Messages database other than the default, if one was given.
    pub chat_db: Option<PathBuf>,
    /// An osascript other than the default, if one was given.
    pub osascript: Option<PathBuf>,
}

impl AgentSpec {
    /// The spec for `program` with the state and logs of `paths`. Paths that
    /// are the defaults are left out, so the agent follows the defaults.
    pub fn new(program: PathBuf, paths: &Paths, log_file: PathBuf) -> AgentSpec {
        let chat_db =
            (paths.chat_db != crate::config::default_chat_db()).then(|| paths.chat_db.clone());
        let osascript = (paths.osascript != Path::new(crate::config::DEFAULT_OSASCRIPT))
            .then(|| paths.osascript.clone());
        AgentSpec {
            program,
            home: paths.home.clone(),
            log_file,
            chat_db,
            osascript,
        }
    }
}

/// `KeepAlive` as a dictionary: restart after a crash or a failing exit, but
/// not after a clean exit (the daemon exits 0 only when the user must act,
/// e.g. the token was revoked, and restarting would just loop).
#[derive(Debug, Serialize)]
struct KeepAlive {
    #[serde(rename = "SuccessfulExit")]
    successful_exit: bool,
    #[serde(rename = "Crashed")]
    crashed: bool,
}

/// The plist, in the key order launchd.plist(5) documents them.
#[derive(Debug, Serialize)]
struct Plist<'a> {
    #[serde(rename = "Label")]
    label: &'a str,
    #[serde(rename = "ProgramArguments")]
    program_arguments: Vec<String>,
    #[serde(rename = "RunAtLoad")]
    run_at_load: bool,
    #[serde(rename = "KeepAlive")]
    keep_alive: KeepAlive,
    #[serde(rename = "ThrottleInterval")]
    throttle_interval: u64,
    // Standard: `Background` throttles CPU and I/O, which would delay texts;
    // `Interactive` is meant for apps with a UI.
    #[serde(rename = "ProcessType")]
    process_type: &'a str,
    #[serde(rename = "StandardOutPath")]
    stdout: String,
    #[serde(rename = "StandardErrorPath")]
    stderr: String,
    #[serde(rename = "EnvironmentVariables")]
    environment: BTreeMap<&'a str, String>,
}

/// The LaunchAgent plist for `spec`, as XML.
pub fn plist_xml(spec: &AgentSpec) -> Result<String, LaunchdError> {
    let mut environment = BTreeMap::new();
    environment.insert("PATH", AGENT_PATH.to_owned());
    environment.insert("WHATSNAP_HOME", spec.home.display().to_string());
    environment.insert(LOG_FILE_ENV, spec.log_file.display().to_string());
    if let Some(chat_db) = &spec.chat_db {
        environment.insert("WHATSNAP_CHAT_DB", chat_db.display().to_string());
    }
    if let Some(osascript) = &spec.osascript {
        environment.insert("WHATSNAP_OSASCRIPT", osascript.display().to_string());
    }
    let log = spec.log_file.display().to_string();
    let plist = Plist {
        label: LABEL,
        program_arguments: vec![spec.program.display().to_string(), "run".to_owned()],
        run_at_load: true,
        keep_alive: KeepAlive {
            successful_exit: false,
            crashed: true,
        },
        throttle_interval: THROTTLE_SECS,
        process_type: "Standard",
        stdout: log.clone(),
        stderr: log,
        environment,
    };
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, &plist).map_err(|e| LaunchdError::Plist(e.to_string()))?;
    out.push(b'\n');
    String::from_utf8(out).map_err(|e| LaunchdError::Plist(e.to_string()))
}

/// `~/Library/LaunchAgents/com.whatsnap.mac.plist`.
pub fn plist_path(user_home: &Path) -> PathBuf {
    user_home
        .join("Library/LaunchAgents")
        .join(format!("{LABEL}.plist"))
}

/// Writes `xml` to `path` beside-and-rename, so launchd never reads half a
/// file. Creates `~/Library/LaunchAgents` if needed.
pub fn write_plist(path: &Path, xml: &str) -> Result<(), LaunchdError> {
    let io = |e: std::io::Error| LaunchdError::Write {
        path: path.to_path_buf(),
        source: e,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("plist.tmp");
    std::fs::write(&tmp, xml).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// What went wrong with the agent.
#[derive(Debug, thiserror::Error)]
pub enum LaunchdError {
    /// The plist could not be produced.
    #[error("cannot write the LaunchAgent plist: {0}")]
    Plist(String),
    /// The plist could not be written.
    #[error("cannot write {path}: {source} (check that ~/Library/LaunchAgents is writable)")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `launchctl` could not be run at all.
    #[error(
        "cannot run {program}: {source} (is this a Mac? set WHATSNAP_LAUNCHCTL to use another launchctl)"
    )]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The user id could not be found.
    #[error("cannot find your user id (`id -u` failed: {0})")]
    Uid(String),
    /// `bootstrap` kept failing with error 5 after unloading and retrying.
    #[error(
        "launchctl could not load the agent: {stderr} (error 5 usually means an older copy is still loaded or shutting down; \
         run `whatsnap-mac uninstall`, wait a few seconds and run `whatsnap-mac install` again; if it persists, log out and back in)"
    )]
    BootstrapIo {
        /// launchctl's message.
        stderr: String,
    },
    /// The agent is not loaded.
    #[error("the bridge's LaunchAgent is not loaded: run `whatsnap-mac install`")]
    NotLoaded,
    /// Any other launchctl failure.
    #[error("`launchctl {verb}` failed with exit status {code}: {stderr}")]
    Failed {
        /// The subcommand.
        verb: String,
        /// Its exit status.
        code: i32,
        /// What it printed.
        stderr: String,
    },
}

/// Exit status launchctl uses for "no such service" (`Could not find
/// specified service`, errno 113 ESRCH-like on Darwin) and 3 (`No such
/// process`), both of which mean "not loaded".
fn is_not_loaded(code: i32) -> bool {
    code == 113 || code == 3
}

/// How launchctl answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The agent's state as `launchctl print` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `state = running` etc.
    pub state: String,
    /// The daemon's pid when running.
    pub pid: Option<u32>,
    /// `last exit code = …`, as printed.
    pub last_exit: Option<String>,
    /// `program = …` (or the first of `arguments`).
    pub program: Option<String>,
}

impl ServiceInfo {
    /// Whether launchd says the process is running.
    pub fn running(&self) -> bool {
        self.state == "running"
    }

    /// Parses `launchctl print` output. Its format is not stable, so only a
    /// few `key = value` lines of the first level are read.
    pub fn parse(text: &str) -> ServiceInfo {
        let mut info = ServiceInfo::default();
        for line in text.lines() {
            // First-level keys are indented by exactly one tab.
            let Some(rest) = line.strip_prefix('\t') else {
                continue;
            };
            if rest.starts_with('\t') {
                continue;
            }
            let Some((key, value)) = rest.split_once(" = ") else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "state" => info.state = value.to_owned(),
                "pid" => info.pid = value.parse().ok(),
                "last exit code" => info.last_exit = Some(value.to_owned()),
                "program" => info.program = Some(value.to_owned()),
                _ => {}
            }
        }
        info
    }
}

/// `launchctl`, in the current user's GUI domain.
#[derive(Debug, Clone)]
pub struct Launchctl {
    program: PathBuf,
    uid: u32,
}

impl Launchctl {
    /// The launchctl named by `WHATSNAP_LAUNCHCTL`, or the real one, for the
    /// current user.
    pub fn from_env() -> Result<Launchctl, LaunchdError> {
        let program = std::env::var_os(LAUNCHCTL_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LAUNCHCTL));
        Ok(Launchctl {
            program,
            uid: current_uid()?,
        })
    }

    /// A launchctl at `program` acting for `uid`.
    pub fn new(program: PathBuf, uid: u32) -> Launchctl {
        Launchctl { program, uid }
    }

    /// `gui/<uid>`.
    pub fn domain(&self) -> String {
        format!("gui/{}", self.uid)
    }

    /// `gui/<uid>/com.whatsnap.mac`.
    pub fn service(&self) -> String {
        format!("gui/{}/{LABEL}", self.uid)
    }

    fn call(&self, args: &[&str]) -> Result<Answer, LaunchdError> {
        let out = Command::new(&self.program)
            .args(args)
            .output()
            .map_err(|source| LaunchdError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        Ok(Answer {
            // A signal death is a failure like any other.
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    fn failed(verb: &str, answer: Answer) -> LaunchdError {
        let stderr = if answer.stderr.is_empty() {
            answer.stdout
        } else {
            answer.stderr
        };
        LaunchdError::Failed {
            verb: verb.to_owned(),
            code: answer.code,
            stderr,
        }
    }

    /// The agent's state, or `None` when it is not loaded.
    pub fn print(&self) -> Result<Option<ServiceInfo>, LaunchdError> {
        let answer = self.call(&["print", &self.service()])?;
        match answer.code {
            0 => Ok(Some(ServiceInfo::parse(&answer.stdout))),
            c if is_not_loaded(c) => Ok(None),
            _ => Err(Self::failed("print", answer)),
        }
    }

    /// Loads (and, with `RunAtLoad`, starts) the agent at `plist`. Error 5
    /// usually means a previous copy is still loaded or draining: unload it
    /// and try once more before giving up with a clear message.
    pub fn bootstrap(&self, plist: &Path) -> Result<(), LaunchdError> {
        let plist = plist.display().to_string();
        let first = self.call(&["bootstrap", &self.domain(), &plist])?;
        match first.code {
            0 => return Ok(()),
            5 => {}
            _ => return Err(Self::failed("bootstrap", first)),
        }
        tracing::info!(
            "bootstrap said {:?}; unloading and retrying once",
            first.stderr
        );
        self.bootout()?;
        let second = self.call(&["bootstrap", &self.domain(), &plist])?;
        match second.code {
            0 => Ok(()),
            5 => Err(LaunchdError::BootstrapIo {
                stderr: second.stderr,
            }),
            _ => Err(Self::failed("bootstrap", second)),
        }
    }

    /// Unloads (and stops) the agent. Returns whether it was loaded.
    pub fn bootout(&self) -> Result<bool, LaunchdError> {
        let answer = self.call(&["bootout", &self.service()])?;
        match answer.code {
            0 => Ok(true),
            c if is_not_loaded(c) => Ok(false),
            _ => Err(Self::failed("bootout", answer)),
        }
    }

    /// Kills the running daemon and starts it again (`kickstart -k`).
    pub fn kickstart(&self) -> Result<(), LaunchdError> {
        let answer = self.call(&["kickstart", "-k", &self.service()])?;
        match answer.code {
            0 => Ok(()),
            c if is_not_loaded(c) => Err(LaunchdError::NotLoaded),
            _ => Err(Self::failed("kickstart", answer)),
        }
    }
}

/// The current user's id, from `id -u` (no unsafe `getuid` call needed).
pub fn current_uid() -> Result<u32, LaunchdError> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| LaunchdError::Uid(e.to_string()))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| LaunchdError::Uid(format!("{e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AgentSpec {
        AgentSpec {
            program: PathBuf::from("/Users/you/bin/whatsnap-mac"),
            home: PathBuf::from("/Users/you/Library/Application Support/whatsnap"),
            log_file: PathBuf::from("/Users/you/Library/Logs/whatsnap/whatsnap-mac.log"),
            chat_db: None,
            osascript: None,
        }
    }

    #[test]
    fn the_binary_itself_runs_with_no_shell_in_between() {
        let xml = plist_xml(&spec()).expect("plist");
        let value: plist::Value = plist::from_bytes(xml.as_bytes()).expect("parses back");
        let dict = value.as_dictionary().expect("dict");
        let args = dict
            .get("ProgramArguments")
            .and_then(|v| v.as_array())
            .expect("ProgramArguments");
        let args: Vec<&str> = args.iter().filter_map(|v| v.as_string()).collect();
        assert_eq!(args, ["/Users/you/bin/whatsnap-mac", "run"]);
        assert_eq!(dict.get("Label").and_then(|v| v.as_string()), Some(LABEL));
        let env = dict
            .get("EnvironmentVariables")
            .and_then(|v| v.as_dictionary())
            .expect("env");
        assert_eq!(
            env.get("WHATSNAP_HOME").and_then(|v| v.as_string()),
            Some("/Users/you/Library/Application Support/whatsnap")
        );
        assert!(
            env.get("WHATSNAP_CHAT_DB").is_none(),
            "defaults stay implicit"
        );
    }

    #[test]
    fn print_output_yields_state_and_pid() {
        let text = "gui/501/com.whatsnap.mac = {\n\tactive count = 1\n\tstate = running\n\tprogram = /x/whatsnap-mac\n\tpid = 4242\n\tlast exit code = (never exited)\n\tendpoints = {\n\t\tstate = nested\n\t}\n}\n";
        let info = ServiceInfo::parse(text);
        assert!(info.running());
        assert_eq!(info.pid, Some(4242));
        assert_eq!(info.last_exit.as_deref(), Some("(never exited)"));
        assert_eq!(info.program.as_deref(), Some("/x/whatsnap-mac"));
    }
}
