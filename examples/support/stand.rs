//! The loopback stand the benchmarks start a real daemon against: an
//! in-process account service with one account, a state folder paired to
//! it, and an empty simulated chat.db. Shared by the examples through
//! `#[path]`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use whatsnap_mac::link::pair;
use whatsnap_mac::sim::Simulator;
use whatsnap_relay::RelayConfig;
use whatsnap_relay::client::AdminClient;

/// A running service and a paired, not yet started, Mac side.
pub struct Stand {
    /// The release `whatsnap-mac` binary beside this example.
    pub mac_exe: PathBuf,
    /// The service, in this process.
    pub relay: whatsnap_relay::RelayHandle,
    /// Its admin API.
    #[allow(
        dead_code,
        reason = "each example compiles this file; not all of them ask the service"
    )]
    pub admin: AdminClient,
    /// The daemon's state folder (credentials saved).
    pub home: PathBuf,
    /// The simulated Messages database.
    pub chat_db: PathBuf,
    /// Stops the service.
    pub shutdown: CancellationToken,
}

impl Stand {
    /// Starts the service in `dir` (its database is `dir/relay.db`), makes
    /// an account and pairs a state folder with it. The daemon will be
    /// `mac_exe`, or the `whatsnap-mac` built beside this example.
    pub async fn start(dir: &Path, mac_exe: Option<PathBuf>) -> anyhow::Result<Stand> {
        let mac_exe = match mac_exe {
            Some(exe) => exe,
            None => std::env::current_exe()
                .context("own path")?
                .parent()
                .and_then(Path::parent)
                .context("examples folder")?
                .join("whatsnap-mac"),
        };
        anyhow::ensure!(
            mac_exe.exists(),
            "{} is missing; build it first: cargo build --release -p whatsnap-mac",
            mac_exe.display()
        );
        let shutdown = CancellationToken::new();
        let relay = whatsnap_relay::start(
            RelayConfig {
                db_path: dir.join("relay.db"),
                listen: ([127, 0, 0, 1], 0).into(),
                admin_token: "bench".into(),
                public_url: None,
            },
            shutdown.clone(),
        )
        .await?;
        let admin = AdminClient::new(&relay.base_url(), Some("bench".into()));
        let created = admin.create_account("Bench").await?;
        let creds = pair::pair(
            &reqwest::Client::new(),
            &relay.base_url(),
            &created.pairing.code,
            pair::device_info(),
        )
        .await?;
        let home = dir.join("home");
        std::fs::create_dir_all(&home)?;
        pair::save(&home.join("credentials.json"), &creds)?;
        let messages = dir.join("Messages");
        std::fs::create_dir_all(&messages)?;
        let chat_db = messages.join("chat.db");
        Simulator::create(&chat_db)?;
        Ok(Stand {
            mac_exe,
            relay,
            admin,
            home,
            chat_db,
            shutdown,
        })
    }

    /// `whatsnap-mac run` on this stand (osascript is `/bin/false`: these
    /// benchmarks send nothing), killed when dropped.
    pub fn daemon(&self) -> anyhow::Result<tokio::process::Child> {
        tokio::process::Command::new(&self.mac_exe)
            .arg("run")
            .arg("--home")
            .arg(&self.home)
            .arg("--chat-db")
            .arg(&self.chat_db)
            .arg("--osascript")
            .arg("/bin/false")
            .env("WHATSNAP_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start the daemon")
    }

    /// Stops the service.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.relay.wait().await;
    }
}
