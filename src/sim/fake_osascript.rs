//! A stand-in for `/usr/bin/osascript` that "sends" by writing chat.db.
//!
//! It takes the real command line the daemon uses, `osascript - <args>...` with
//! the script on stdin, recognises only whatsnap's own constant scripts, and
//! then does what Messages would: writes the from-me row through the
//! [`Simulator`], or fails the way osascript does, with exit status 1 and
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
//! - `-2740` a script that is not one of whatsnap's (the fake refuses to guess);
//! - `-600` the simulated Messages cannot be reached (chat.db missing or not a
//!   chat.db), as osascript says when Messages is not running;
//! - `-2700` anything else.
//!
//! `WHATSNAP_SIM_OSASCRIPT_LOG`, when set, names a file that gets one JSON
//! line per recognised call, `{"script": "<name>", "args": [...]}`, written
//! before acting, so tests can check that arguments arrived byte for byte.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::send::scripts::{self, Script};
use crate::sim::writer::{SimError, SimTarget, Simulator};

/// Environment variable naming the call log (see the module docs).
pub const LOG_ENV: &str = "WHATSNAP_SIM_OSASCRIPT_LOG";

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
    let (arguments, target) = match known.name {
        // Automation granted, Messages answers its name.
        n if n == scripts::PROBE_MESSAGES.name => return Ok(()),
        n if n == scripts::SEND_TO_CHAT.name => ("text, chat guid", Target::Chat),
        n if n == scripts::SEND_TO_HANDLE.name => ("text, handle", Target::Handle),
        // A script added to scripts::ALL without teaching the fake about it.
        other => {
            return Err(execution_error(
                &format!("fake osascript: no simulation for script {other}"),
                -2700,
            ));
        }
    };
    let [text, address] = script_args else {
        return Err(execution_error(
            &format!(
                "fake osascript: {} takes 2 arguments ({arguments}), got {}.",
                known.name,
                script_args.len()
            ),
            -1700,
        ));
    };
    let mut sim = Simulator::open(chat_db).map_err(|e| unreachable_messages(&e))?;
    let sim_target = match target {
        Target::Chat => SimTarget::Chat(address.clone()),
        Target::Handle => SimTarget::Handle(address.clone()),
    };
    match sim.send_from_me(&sim_target, text) {
        Ok(_) => Ok(()),
        Err(SimError::NoSuchChat { guid }) => Err(execution_error(
            &format!("Messages got an error: Can’t get chat id \"{guid}\"."),
            -1728,
        )),
        Err(SimError::BadHandle { handle }) => Err(execution_error(
            &format!("Messages got an error: Can’t get participant id \"{handle}\"."),
            -1728,
        )),
        Err(other) => Err(execution_error(&format!("fake osascript: {other}"), -2700)),
    }
}

#[derive(Clone, Copy)]
enum Target {
    Chat,
    Handle,
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
