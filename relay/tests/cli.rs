//! The `whatsnap-relay` binary as an admin uses it: `serve` in one process,
//! `account` commands in others, reading the admin token `serve` stored.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_whatsnap-relay");

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` on a free port and reads its URL from stderr.
fn serve(data_dir: &Path) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("WHATSNAP_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start whatsnap-relay serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("serve prints its address before exiting")
            .expect("read stderr");
        if let Some(url) = line.strip_prefix("whatsnap-relay: listening on ") {
            break url.trim().to_owned();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server { child, url }
}

fn cli(server: &str, data_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--server", server, "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_remove("WHATSNAP_ADMIN_TOKEN")
        .env_remove("WHATSNAP_RELAY_URL")
        .output()
        .expect("run whatsnap-relay")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_admin_adds_lists_and_removes_accounts_from_the_command_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path());

    let token = std::fs::read_to_string(dir.path().join("admin-token")).expect("token stored");
    assert!(token.trim().starts_with("wsa_"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("admin-token"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "admin token readable by its owner only"
        );
    }

    let add = cli(
        &server.url,
        dir.path(),
        &["account", "add", "--name", "Mike"],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let out = stdout(&add);
    assert!(out.contains("whatsnap-account-Mike"), "{out}");
    let code_line = out
        .lines()
        .find(|l| l.starts_with("pair code "))
        .expect("pair code line");
    let code = code_line["pair code ".len()..]
        .split_whitespace()
        .next()
        .expect("code");
    assert_eq!(code.len(), 9, "{code}");
    assert_eq!(&code[4..5], "-");

    let list = cli(&server.url, dir.path(), &["account", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        stdout(&list).contains("Disconnected (never_paired)"),
        "{}",
        stdout(&list)
    );

    let json = cli(&server.url, dir.path(), &["account", "list", "--json"]);
    let accounts: Vec<whatsnap_proto::api::AccountView> =
        serde_json::from_slice(&json.stdout).expect("JSON list");
    assert_eq!(accounts[0].tag, "whatsnap-account-Mike");

    // Refused by the service: exit 1 with the service's advice.
    let missing = cli(&server.url, dir.path(), &["account", "remove", "Nobody"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("whatsnap-relay account list"),
        "{}",
        stderr(&missing)
    );

    let removed = cli(&server.url, dir.path(), &["account", "remove", "Mike"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
}

#[test]
fn an_unreachable_service_exits_2_and_says_what_to_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Reserve a port, then free it: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = Command::new(BIN)
        .args([
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--admin-token",
            "x",
        ])
        .args(["account", "list"])
        .env("WHATSNAP_RELAY_DATA_DIR", dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with("whatsnap-relay: "), "{err}");
    assert!(err.contains("whatsnap-relay serve"), "{err}");
}
