//! A stand-in for `/usr/bin/osascript` that "sends" by writing chat.db.
//!
//! It takes the real command line the daemon uses, `osascript - <args>...` with
//! the script on stdin, recognises only whatsnap's own constant scripts, and
//! then does what Messages would: writes the from-me row as Messages does
//! ([`super::sends::SendSim`]), or fails the way osascript does, with exit status 1 and
//! `<start>:<end>: execution error: <message> (<number>)` on stderr. Nothing
//! is printed on stdout on success, as with the real scripts.
//!
//! Error numbers, so the daemon's classification is exercised:
//! - `-1728` the chat guid (or participant) does not exist, with Messages'
//!   own wording and its typographic apostrophe;
//! - `-1700` wrong number of arguments. Real osascript would say -1728 for
//!   too few (`Can’t get item 2 of {…}`) and ignore extras; the fake is
//!   stricter so a daemon bug surfaces, and uses a number that cannot be
//!   mistaken for "no such chat";
//! - `-1719` the SMS account is missing (no iPhone forwards texts);
//! - `-2741` a script in the macOS 13+ dialect run on a simulated 11 or 12;
//! - `-2740` a script that is not one of whatsnap's (the fake refuses to guess);
//! - `-600` the simulated Messages cannot be reached (chat.db missing or not a
//!   chat.db), as osascript says when Messages is not running;
//! - `-2700` anything else.
//!
//! `WHATSNAP_SIM_OSASCRIPT_LOG`, when set, names a file that gets one JSON
//! line per recognised call, `{"script": "<name>", "args": [...]}`, written
//! before acting, so tests can check that arguments arrived byte for byte.
//!
//! `WHATSNAP_SIM_OSASCRIPT_CONTROL`, when set, names a JSON file ([`Control`])
//! read on every call, so a test can make Messages slow, hang, refuse
//! Automation, run an older or newer macOS, not know a number on iMessage,
//! have no SMS account, write Tahoe's ghost rows, or accept without writing.
//! Files sent from outside the Messages folder (the one holding chat.db) are
//! accepted and then fail with error 25, as Messages' sandbox makes them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sends::{SendSim, SimBody, SimOutcome};
use crate::send::scripts::{self, Script};
use crate::sim::SimError;

/// Environment variable naming the call log (see the module docs).
pub const LOG_ENV: &str = "WHATSNAP_SIM_OSASCRIPT_LOG";

/// Environment variable naming the control file (see [`Control`]).
pub const CONTROL_ENV: &str = "WHATSNAP_SIM_OSASCRIPT_CONTROL";

/// How the simulated Messages behaves; every field is optional in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Control {
    /// Wait this long before acting (a slow Messages that still succeeds).
    pub delay_ms: u64,
    /// Do not answer until this is cleared again (or until killed: the
    /// daemon's timeout must fire). See [`hanging_marker`].
    pub hang: bool,
    /// Write the row, then do not answer until this is cleared.
    pub hang_after_row: bool,
    /// Fail every call with this AppleScript error number before acting
    /// (-1743 Automation denied, -1700, -1712 ...).
    pub fail_code: Option<i64>,
    /// Accept (exit 0) but write nothing: a send lost inside Messages.
    pub no_row: bool,
    /// Write the row as still going out (`is_sent` 0, never finished).
    pub pending: bool,
    /// The simulated macOS version (`15.3` when absent); 26 and later write
    /// Tahoe's `any;-;` GUIDs for new chats.
    pub macos: Option<String>,
    /// Handles not registered with iMessage: iMessage sends to them write a
    /// failed row (error 22), as "Not Delivered".
    pub not_imessage: Vec<String>,
    /// No SMS account (no iPhone forwarding texts): SMS scripts fail -1719.
    pub no_sms: bool,
    /// Tahoe's group bug: a send to a group chat writes an empty from-me row
    /// joined to no chat and exits 0.
    pub ghost_groups: bool,
    /// Chat GUIDs in chat.db that Messages' live list lacks: -1728.
    pub unknown_chats: Vec<String>,
}

/// The file that exists while a fake run with the control file `control`
/// hangs at `stage` (`before_row` or `after_row`); it holds the fake's pid.
pub fn hanging_marker(control: &Path, stage: &str) -> PathBuf {
    let mut marker = control.as_os_str().to_owned();
    marker.push(format!(".hanging-{stage}"));
    PathBuf::from(marker)
}

impl Control {
    /// Writes the control file a fake osascript run with [`CONTROL_ENV`] reads.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    fn load() -> Result<Control, String> {
        let Some(path) = std::env::var_os(CONTROL_ENV) else {
            return Ok(Control::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Control::default()),
            Err(e) => {
                return Err(execution_error(
                    &format!("fake osascript: cannot read {CONTROL_ENV} file: {e}"),
                    -2700,
                ));
            }
        };
        serde_json::from_str(&text).map_err(|e| {
            execution_error(
                &format!("fake osascript: the {CONTROL_ENV} file is not a valid control: {e}"),
                -2700,
            )
        })
    }

    fn macos_major(&self) -> u32 {
        self.macos
            .as_deref()
            .and_then(scripts::MacosVersion::parse)
            .map_or(15, |v| v.major)
    }
}

/// osascript's own usage line, printed for a command line we do not take.
const USAGE: &str = "usage: osascript [-l language] [-e script] [-i] [-s {ehso}] \
                     [programfile] [argument ...]";

/// Runs one fake osascript call. `args` are the process arguments after the
/// program name (`["-", text, target]`), `script` is everything read from
/// stdin. Returns the exit status.
pub fn run(chat_db: &Path, args: &[String], script: &str, stderr: &mut dyn Write) -> i32 {
    match run_inner(chat_db, args, script) {
        Ok(()) => 0,
        Err(message) => {
            // If stderr itself is gone there is nobody left to tell; the exit
            // status still says it failed.
            let _ = writeln!(stderr, "{message}");
            1
        }
    }
}

fn run_inner(chat_db: &Path, args: &[String], script: &str) -> Result<(), String> {
    let Some((first, script_args)) = args.split_first() else {
        return Err(usage());
    };
    if first != "-" {
        return Err(usage());
    }
    let Some(known) = scripts::identify(script) else {
        return Err(
            "execution error: fake osascript: this script is not one of whatsnap's (-2740)"
                .to_owned(),
        );
    };
    if let Some(log) = std::env::var_os(LOG_ENV) {
        append_log(Path::new(&log), known, script_args)?;
    }
    let control = Control::load()?;
    if control.delay_ms > 0 {
        std::thread::sleep(Duration::from_millis(control.delay_ms));
    }
    if control.hang {
        hang("before_row", |c| c.hang);
    }
    if let Some(code) = control.fail_code {
        return Err(canned_error(code));
    }
    if known.name == scripts::PROBE_MESSAGES.name {
        // Automation granted, Messages answers its name.
        return Ok(());
    }
    let Some(shape) = Shape::of(known) else {
        // A script added to scripts::ALL without teaching the fake about it.
        return Err(execution_error(
            &format!("fake osascript: no simulation for script {}", known.name),
            -2700,
        ));
    };
    let [data, address] = script_args else {
        return Err(execution_error(
            &format!(
                "fake osascript: {} takes 2 arguments ({}, {}), got {}.",
                known.name,
                if shape.file { "path" } else { "text" },
                if shape.to_chat { "chat guid" } else { "handle" },
                script_args.len()
            ),
            -1700,
        ));
    };
    let major = control.macos_major();
    if shape.ventura_dialect && major < 13 {
        return Err(format!(
            "0:0: syntax error: Expected class name but found identifier. (-2741) \
             [fake osascript: {} uses the macOS 13 dictionary; this Messages is macOS {major}]",
            known.name
        ));
    }
    let mut sim = SendSim::open(chat_db).map_err(|e| unreachable_messages(&e))?;
    let messages_dir = chat_db.parent().unwrap_or_else(|| Path::new("."));
    let file_path = PathBuf::from(data);
    let body = if shape.file {
        if !file_path.is_absolute() || !file_path.is_file() {
            return Err(execution_error(
                &format!("Messages got an error: File {data} wasn’t found."),
                -43,
            ));
        }
        SimBody::File(&file_path)
    } else {
        SimBody::Text(data)
    };
    // Messages' sandbox: a file outside its folder is accepted, then fails.
    let sandboxed = shape.file && !file_path.starts_with(messages_dir);
    let outcome = |service: &str, handle: Option<&str>| {
        if sandboxed {
            SimOutcome::failed(25)
        } else if service == "iMessage"
            && handle.is_some_and(|h| control.not_imessage.iter().any(|n| n == h))
        {
            SimOutcome::failed(22)
        } else if control.pending {
            SimOutcome::PENDING
        } else {
            SimOutcome::SENT
        }
    };
    if control.no_row {
        return Ok(());
    }
    let written = if shape.to_chat {
        if control.unknown_chats.iter().any(|c| c == address) {
            return Err(no_such_chat(address));
        }
        let Some((service, direct)) = sim.chat(address).map_err(|e| fake_error(&e))? else {
            return Err(no_such_chat(address));
        };
        if control.ghost_groups && !direct {
            sim.ghost("+10000000000").map_err(|e| fake_error(&e))?;
            return Ok(());
        }
        let handle = sim.direct_handle(address).map_err(|e| fake_error(&e))?;
        let outcome = outcome(&service, handle.as_deref());
        sim.send_to_chat(address, body, None, outcome)
    } else {
        if shape.sms && control.no_sms {
            return Err(execution_error(
                "Messages got an error: Can’t get account 1 whose service type = SMS. Invalid index.",
                -1719,
            ));
        }
        if !valid_handle(address) {
            return Err(execution_error(
                &format!("Messages got an error: Can’t get participant id \"{address}\"."),
                -1728,
            ));
        }
        let service = if shape.sms { "SMS" } else { "iMessage" };
        sim.send_to_handle(
            address,
            service,
            major >= 26,
            body,
            outcome(service, Some(address)),
        )
    };
    written.map_err(|e| fake_error(&e))?;
    if control.hang_after_row {
        hang("after_row", |c| c.hang_after_row);
    }
    Ok(())
}

/// What a send script does, read from its name.
struct Shape {
    to_chat: bool,
    file: bool,
    sms: bool,
    ventura_dialect: bool,
}

impl Shape {
    fn of(script: Script) -> Option<Shape> {
        let name = script.name;
        if !name.starts_with("send_") {
            return None;
        }
        Some(Shape {
            to_chat: name.ends_with("_to_chat"),
            file: name.contains("file"),
            sms: name.contains("sms"),
            ventura_dialect: !name.ends_with("_to_chat") && !name.ends_with("_bigsur"),
        })
    }
}

/// Hangs at `stage` (`before_row`, `after_row`) while `still` holds for the
/// control file, as a Messages that does not answer. Meanwhile
/// `<control file>.hanging-<stage>` holds this process's id, so a test can
/// wait for the fake to be exactly there (a file appearing, never a sleep)
/// and then kill the daemon; clearing the flag (or removing the file) lets
/// the fake go on, as a Messages that finally answers. Left set, it hangs
/// until killed (the daemon's timeout).
fn hang(stage: &str, still: fn(&Control) -> bool) {
    let marker =
        std::env::var_os(CONTROL_ENV).map(|control| hanging_marker(Path::new(&control), stage));
    if let Some(marker) = &marker {
        // Written whole, then renamed: a test never reads half a pid.
        let mut partial = marker.clone().into_os_string();
        partial.push(".partial");
        let written = std::fs::write(&partial, std::process::id().to_string())
            .and_then(|()| std::fs::rename(&partial, marker));
        if let Err(e) = written {
            eprintln!("fake osascript: cannot write {}: {e}", marker.display());
        }
    }
    loop {
        // This is the simulated Messages taking its time, not a test
        // waiting: the fake looks at its control file a few times a second.
        std::thread::sleep(Duration::from_millis(20));
        if let Ok(control) = Control::load()
            && !still(&control)
        {
            break;
        }
    }
    if let Some(marker) = &marker {
        let _ = std::fs::remove_file(marker);
    }
}

/// The stderr real osascript prints for the numbers tests ask for.
fn canned_error(code: i64) -> String {
    let text = match code {
        -1743 => "Not authorized to send Apple events to Messages.".to_owned(),
        -1700 => "Messages got an error: Can’t make any into type constant.".to_owned(),
        -1712 => "Messages got an error: AppleEvent timed out.".to_owned(),
        -609 => "Messages got an error: Connection is invalid.".to_owned(),
        -600 => "Messages got an error: Application isn’t running.".to_owned(),
        other => format!("fake osascript: failing as told with {other}."),
    };
    format!("0:0: execution error: {text} ({code})")
}

fn no_such_chat(guid: &str) -> String {
    execution_error(
        &format!("Messages got an error: Can’t get chat id \"{guid}\"."),
        -1728,
    )
}

fn fake_error(err: &SimError) -> String {
    match err {
        SimError::NoSuchChat { guid } => no_such_chat(guid),
        other => execution_error(&format!("fake osascript: {other}"), -2700),
    }
}

/// `+` and 1-15 digits, or an email address: what Messages takes.
fn valid_handle(handle: &str) -> bool {
    let phone = handle
        .strip_prefix('+')
        .is_some_and(|d| (1..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()));
    let email = handle.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !handle.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    phone || email
}

/// osascript's error line. The character range is 0:0 because the fake has
/// no compiled script to point into; callers classify by the number.
fn execution_error(message: &str, number: i32) -> String {
    format!("0:0: execution error: {message} ({number})")
}

fn unreachable_messages(err: &SimError) -> String {
    execution_error(
        &format!("fake osascript: Messages is not available: {err}"),
        -600,
    )
}

fn usage() -> String {
    format!(
        "{USAGE}\nfake osascript: only `osascript - <argument>...` with the script on stdin \
         is simulated, as whatsnap-mac runs it"
    )
}

fn append_log(path: &Path, script: Script, args: &[String]) -> Result<(), String> {
    let mut line = serde_json::json!({ "script": script.name, "args": args }).to_string();
    line.push('\n');
    // One write of the whole line, in append mode, so concurrent calls do not
    // interleave within a line.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| {
            execution_error(
                &format!(
                    "fake osascript: cannot append to {LOG_ENV} file {}: {e}; point it at a \
                     writable file",
                    path.display()
                ),
                -2700,
            )
        })
}

/// Writes `dir/osascript`, an executable `sh` script that runs this fake with
/// `exe` (the whatsnap-mac binary) against `chat_db`, so a daemon given
/// `--osascript <that path>` drives it exactly like `/usr/bin/osascript`.
pub fn write_wrapper(dir: &Path, exe: &Path, chat_db: &Path) -> std::io::Result<PathBuf> {
    // The daemon may run with another working directory.
    let exe = std::path::absolute(exe)?;
    let chat_db = std::path::absolute(chat_db)?;
    let script = format!(
        "#!/bin/sh\n\
         # Written by whatsnap-mac: stands in for /usr/bin/osascript and writes the\n\
         # simulated Messages database instead of talking to Messages.app.\n\
         exec {} sim osascript --chat-db {} -- \"$@\"\n",
        sh_quote(&exe)?,
        sh_quote(&chat_db)?
    );
    let path = dir.join("osascript");
    // Write aside and rename, so a daemon running the old wrapper never sees
    // a half-written file.
    let tmp = dir.join(".osascript.tmp");
    std::fs::write(&tmp, script)?;
    set_executable(&tmp)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(unix)]
fn set_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> std::io::Result<()> {
    // No mode bits to set; the wrapper is only meaningful where `sh` runs it.
    Ok(())
}

/// `path` as one `sh` word: single quotes, with each `'` written as `'\''`.
fn sh_quote(path: &Path) -> std::io::Result<String> {
    let text = path.to_str().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is not valid UTF-8; move it to a path made of plain characters",
                path.display()
            ),
        )
    })?;
    Ok(format!("'{}'", text.replace('\'', r"'\''")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Simulator;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn call(chat_db: &Path, argv: &[&str], script: &str) -> (i32, String) {
        let mut err = Vec::new();
        let code = run(chat_db, &args(argv), script, &mut err);
        (code, String::from_utf8(err).expect("utf-8 stderr"))
    }

    fn new_db() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("chat.db");
        Simulator::create(&path).expect("create");
        (dir, path)
    }

    fn message_count(path: &Path) -> i64 {
        // Read-only, so closing it cannot checkpoint the simulator's WAL.
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open")
            .query_row("SELECT count(*) FROM message", [], |r| r.get(0))
            .expect("count")
    }

    #[test]
    fn a_send_to_an_existing_chat_succeeds_silently() {
        let (_dir, db) = new_db();
        let chat = Simulator::open(&db)
            .expect("open")
            .receive("+15551234567", "hi")
            .expect("receive")
            .chat_guid;
        let (code, err) = call(&db, &["-", "hello", &chat], scripts::SEND_TO_CHAT.source);
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(message_count(&db), 2);
    }

    #[test]
    fn a_missing_chat_fails_like_messages() {
        let (_dir, db) = new_db();
        let (code, err) = call(
            &db,
            &["-", "hello", "iMessage;-;+15550000000"],
            scripts::SEND_TO_CHAT.source,
        );
        assert_eq!(code, 1);
        assert_eq!(
            err,
            "0:0: execution error: Messages got an error: Can’t get chat id \
             \"iMessage;-;+15550000000\". (-1728)\n"
        );
        assert_eq!(message_count(&db), 0);
    }

    #[test]
    fn a_send_to_a_handle_starts_a_chat() {
        let (_dir, db) = new_db();
        let (code, err) = call(
            &db,
            &["-", "hello", "new@example.com"],
            scripts::SEND_TO_HANDLE.source,
        );
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(message_count(&db), 1);
    }

    #[test]
    fn an_unknown_script_is_refused() {
        let (_dir, db) = new_db();
        let (code, err) = call(&db, &["-", "x", "y"], "do shell script \"true\"");
        assert_eq!(code, 1);
        assert_eq!(
            err,
            "execution error: fake osascript: this script is not one of whatsnap's (-2740)\n"
        );
        assert_eq!(message_count(&db), 0);
    }

    #[test]
    fn a_command_line_without_the_stdin_dash_gets_the_usage() {
        let (_dir, db) = new_db();
        for argv in [&[][..], &["-e", "x"][..], &["script.scpt", "a"][..]] {
            let (code, err) = call(&db, argv, scripts::SEND_TO_CHAT.source);
            assert_eq!(code, 1, "{argv:?}");
            assert!(err.starts_with("usage: osascript"), "{err}");
        }
    }

    #[test]
    fn the_wrong_number_of_arguments_is_an_error() {
        let (_dir, db) = new_db();
        for argv in [&["-", "only text"][..], &["-", "a", "b", "c"][..]] {
            let (code, err) = call(&db, argv, scripts::SEND_TO_CHAT.source);
            assert_eq!(code, 1);
            assert!(err.ends_with("(-1700)\n"), "{err}");
        }
        assert_eq!(message_count(&db), 0);
    }

    #[test]
    fn a_missing_database_reads_as_messages_not_running() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (code, err) = call(
            &dir.path().join("none.db"),
            &["-", "x", "+15550000000"],
            scripts::SEND_TO_HANDLE.source,
        );
        assert_eq!(code, 1);
        assert!(err.ends_with("(-600)\n"), "{err}");
    }

    #[test]
    fn sh_quoting_survives_single_quotes() {
        let quoted = sh_quote(Path::new("/tmp/it's here")).expect("utf-8");
        assert_eq!(quoted, r"'/tmp/it'\''s here'");
    }

    #[test]
    fn the_wrapper_is_an_executable_sh_script() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write_wrapper(
            dir.path(),
            Path::new("/opt/whatsnap mac/bin"),
            Path::new("/data/o'brien/chat.db"),
        )
        .expect("write");
        assert_eq!(path, dir.path().join("osascript"));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("#!/bin/sh\n"));
        assert!(text.contains(
            "exec '/opt/whatsnap mac/bin' sim osascript --chat-db '/data/o'\\''brien/chat.db' -- \"$@\"\n"
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
        }
    }
}
