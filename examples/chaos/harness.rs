//! The chaos harness: the whole system as real processes (the simulated
//! Messages database, the `whatsnap-mac run` daemon with the fake
//! `osascript`, and the `whatsnap-relay serve` service on loopback), loaded
//! with inbound texts and `POST /v1/messages` sends while both processes are
//! `kill -9`ed at seeded random instants and restarted.
//!
//! Afterwards it checks what a user would notice: every inbound GUID is in
//! the service exactly once; every send has exactly one from-me row in
//! chat.db and the state `sent`, or at most one row and the state `unknown`;
//! never two rows. The same code runs as a short test (`tests/chaos.rs`) and
//! as the long command (`cargo run --release --example chaos`). Everything is
//! driven by one seed, printed in every failure, so a failing run can be
//! replayed (timing still varies; the kill points and the load do not).

#![allow(dead_code)] // The test and the command each use part of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use whatsnap_mac::chatdb::ChatDb;
use whatsnap_mac::link::pair;
use whatsnap_mac::sim::{Simulator, fake_osascript};
use whatsnap_proto::api::OutboundState;
use whatsnap_relay::client::{AdminClient, ClientError};

const ADMIN_TOKEN: &str = "chaos-admin-token";
/// People who write to the Mac; sends go back to them.
const CONTACTS: usize = 20;

/// One chaos run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Drives the load and the kill points.
    pub seed: u64,
    /// Inbound texts written into chat.db.
    pub messages: usize,
    /// Sends posted to the service.
    pub sends: usize,
    /// Times the daemon is killed with SIGKILL.
    pub daemon_kills: usize,
    /// Times the service is killed with SIGKILL.
    pub relay_kills: usize,
    /// The `whatsnap-mac` binary.
    pub mac_exe: PathBuf,
    /// The `whatsnap-relay` binary.
    pub relay_exe: PathBuf,
    /// Scratch folder (chat.db, state, logs).
    pub dir: PathBuf,
    /// Pause after each operation of the load, so kills land while work is
    /// in flight rather than all before the daemon has read anything.
    pub pace: Duration,
    /// How long the system may take to settle after the load.
    pub settle: Duration,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Inbound texts, all found exactly once.
    pub inbound: usize,
    /// Sends that ended `sent` (one row each).
    pub sent: usize,
    /// Sends that ended `unknown` (at most one row each).
    pub unknown: usize,
    /// Sends in any other final state (no row).
    pub other: usize,
    /// Kills done.
    pub daemon_kills: usize,
    /// Kills done.
    pub relay_kills: usize,
    /// Time to write the load (with the kills).
    pub load: Duration,
    /// Time from the end of the load until everything had arrived.
    pub settle: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} inbound exactly once; sends {} sent, {} unknown, {} other; \
             {} daemon and {} service kills; load {:.1} s, settled {:.1} s later",
            self.seed,
            self.inbound,
            self.sent,
            self.unknown,
            self.other,
            self.daemon_kills,
            self.relay_kills,
            self.load.as_secs_f64(),
            self.settle.as_secs_f64()
        )
    }
}

struct Relay {
    exe: PathBuf,
    data_dir: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Relay {
    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts `whatsnap-relay serve` and waits for it to say it listens.
    async fn start(&mut self) -> anyhow::Result<()> {
        for _ in 0..50 {
            let mut child = Command::new(&self.exe)
                .arg("--admin-token")
                .arg(ADMIN_TOKEN)
                .arg("--data-dir")
                .arg(&self.data_dir)
                .arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .env("RUST_LOG", "debug")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", self.exe.display()))?;
            let stderr = child.stderr.take().context("relay stderr")?;
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let mut log = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .await
                .context("relay log")?;
            // Copies the log and reports the "listening" line; ends with the process.
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                let mut ready = Some(ready_tx);
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains("whatsnap-relay: listening on")
                        && let Some(tx) = ready.take()
                    {
                        let _ = tx.send(());
                    }
                    let _ = log.write_all(line.as_bytes()).await;
                    let _ = log.write_all(b"\n").await;
                }
            });
            match tokio::time::timeout(Duration::from_secs(30), ready_rx).await {
                Ok(Ok(())) => {
                    self.child = Some(child);
                    return Ok(());
                }
                // Exited before listening: most likely the port is still
                // held by the killed instance's sockets; try again shortly.
                Ok(Err(_)) => {
                    let _ = child.wait().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => bail!(
                    "whatsnap-relay did not listen within 30 s; see {}",
                    self.log.display()
                ),
            }
        }
        bail!("whatsnap-relay could not start; see {}", self.log.display())
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL: no chance to close sockets cleanly or finish a transaction.
            let _ = child.kill().await;
        }
    }
}

struct Daemon {
    exe: PathBuf,
    home: PathBuf,
    chat_db: PathBuf,
    osascript: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("daemon log")?;
        let child = Command::new(&self.exe)
            .arg("run")
            .arg("--home")
            .arg(&self.home)
            .arg("--chat-db")
            .arg(&self.chat_db)
            .arg("--osascript")
            .arg(&self.osascript)
            .arg("--poll-secs")
            .arg("1")
            // 30 service restarts within minutes would otherwise push the
            // reconnect delay to its 60 s ceiling; the schedule itself is
            // tested on its own.
            .arg("--backoff-cap-ms")
            .arg("1000")
            // Debug: the token check below covers everything it might log.
            .env("WHATSNAP_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        self.child = Some(child);
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Inbound(usize),
    Send(usize),
}

/// A free loopback port (the service must come back on the same one: the
/// daemon's credentials name it).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr()?.port())
}

fn handle(i: usize) -> String {
    format!("+1555{:07}", 1_000_000 + i)
}

fn send_id(seed: u64, n: usize) -> String {
    format!("chaos-{seed}-{n}")
}

fn send_text(seed: u64, n: usize) -> String {
    format!("reply {n} of chaos run {seed}")
}

/// Runs the load with the kills, waits for the system to settle, and checks
/// the outcome. `Err` carries every violation found, with the seed.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let seed = config.seed;
    let mut rng = fastrand::Rng::with_seed(seed);
    std::fs::create_dir_all(&config.dir).context("scratch folder")?;
    let messages_dir = config.dir.join("Messages");
    std::fs::create_dir_all(&messages_dir).context("Messages folder")?;
    let chat_db = messages_dir.join("chat.db");
    let mut sim = Simulator::create(&chat_db).context("simulated chat.db")?;
    let osascript = fake_osascript::write_wrapper(&config.dir, &config.mac_exe, &chat_db)
        .context("fake osascript")?;
    let home = config.dir.join("home");
    std::fs::create_dir_all(&home).context("home")?;

    let mut relay = Relay {
        exe: config.relay_exe.clone(),
        data_dir: config.dir.join("relay"),
        port: free_port()?,
        log: config.dir.join("relay.log"),
        child: None,
    };
    relay.start().await?;
    let admin = AdminClient::new(&relay.base_url(), Some(ADMIN_TOKEN.into()));
    let created = admin
        .create_account("Chaos")
        .await
        .context("create the account")?;
    // The sender's hourly limits protect a real Apple ID; the simulated one
    // takes thousands of sends an hour. They reach the daemon in `welcome`.
    let mut limits = serde_json::Map::new();
    limits.insert("max_sends_per_hour".into(), 10_000.into());
    limits.insert("max_new_handles_per_hour".into(), 10_000.into());
    admin
        .update_settings(&created.account.id, &limits)
        .await
        .context("raise the send limits")?;
    let creds = pair::pair(
        &reqwest::Client::new(),
        &relay.base_url(),
        &created.pairing.code,
        pair::device_info(),
    )
    .await
    .context("pair")?;
    pair::save(&home.join("credentials.json"), &creds).context("save the credentials")?;
    let device_token = creds.device_token.clone();
    let mut daemon = Daemon {
        exe: config.mac_exe.clone(),
        home,
        chat_db: chat_db.clone(),
        osascript,
        log: config.dir.join("daemon.log"),
        child: None,
    };
    daemon.start()?;
    warm_up(&admin, &mut sim).await?;

    // The load: every contact writes first, then texts and sends mixed.
    let mut ops: Vec<Op> = Vec::with_capacity(config.messages + config.sends);
    let first = CONTACTS.min(config.messages);
    let mut rest: Vec<Op> = (first..config.messages)
        .map(Op::Inbound)
        .chain((0..config.sends).map(Op::Send))
        .collect();
    rng.shuffle(&mut rest);
    ops.extend((0..first).map(Op::Inbound));
    ops.extend(rest);
    let mut kills: Vec<(usize, bool)> = Vec::new();
    for is_daemon in [true, false] {
        let count = if is_daemon {
            config.daemon_kills
        } else {
            config.relay_kills
        };
        for _ in 0..count {
            kills.push((rng.usize(0..ops.len().max(1)), is_daemon));
        }
    }
    kills.sort_unstable();
    let mut kills = kills.into_iter().peekable();

    let mut guids: Vec<String> = Vec::with_capacity(config.messages);
    let mut pending_sends: Vec<usize> = Vec::new();
    let mut submitted: Vec<bool> = vec![false; config.sends];
    let (mut daemon_kills, mut relay_kills) = (0, 0);
    let load_started = Instant::now();
    for (i, op) in ops.iter().enumerate() {
        while let Some(&(at, is_daemon)) = kills.peek() {
            if at > i {
                break;
            }
            kills.next();
            if is_daemon {
                daemon.kill().await;
                daemon_kills += 1;
                daemon.start()?;
            } else {
                relay.kill().await;
                relay_kills += 1;
                relay.start().await?;
            }
        }
        match *op {
            Op::Inbound(n) => {
                let from = if n < CONTACTS {
                    handle(n)
                } else {
                    handle(rng.usize(0..CONTACTS))
                };
                let message = sim
                    .receive(&from, &format!("text {n} of chaos run {seed}"))
                    .context("write an inbound text")?;
                guids.push(message.guid);
            }
            Op::Send(n) => pending_sends.push(n),
        }
        // Sends go out once their contact exists in the service; a refused
        // or unanswered POST is retried later with the same client_msg_id.
        if let Some(n) = pending_sends.first().copied()
            && try_send(&admin, seed, n).await
        {
            submitted[n] = true;
            pending_sends.remove(0);
        }
        if !config.pace.is_zero() {
            tokio::time::sleep(config.pace).await;
        }
    }
    let load = load_started.elapsed();

    // Settle: everything submitted, every text arrived, every send final.
    let settle_started = Instant::now();
    let deadline = settle_started + config.settle;
    let mut last_problem = String::new();
    let views = loop {
        while let Some(&n) = pending_sends.first() {
            if !try_send(&admin, seed, n).await {
                break;
            }
            submitted[n] = true;
            pending_sends.remove(0);
        }
        if Instant::now() > deadline {
            daemon.kill().await;
            relay.kill().await;
            bail!(
                "chaos seed {seed}: the system did not settle within {} s: {last_problem}; logs in {}",
                config.settle.as_secs(),
                config.dir.display()
            );
        }
        if pending_sends.is_empty() {
            match admin.list_messages(None).await {
                Ok(views) => match unsettled(&views, &guids, seed, config.sends) {
                    None => break views,
                    Some(problem) => last_problem = problem,
                },
                Err(e) => last_problem = e.to_string(),
            }
        } else {
            last_problem = format!("{} sends not accepted by the service", pending_sends.len());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let settle = settle_started.elapsed();
    daemon.kill().await;
    relay.kill().await;

    // Check.
    let mut violations = Vec::new();
    let mut inbound_count: HashMap<&str, usize> = HashMap::new();
    for v in views.iter().filter(|v| v.direction == "inbound") {
        for g in &v.guids {
            *inbound_count.entry(g.as_str()).or_default() += 1;
        }
    }
    for g in &guids {
        match inbound_count.get(g.as_str()).copied().unwrap_or(0) {
            1 => {}
            n => violations.push(format!("inbound {g} is in the service {n} times")),
        }
    }
    let db = ChatDb::open(&chat_db).context("open chat.db to check")?;
    let mut rows_by_text: HashMap<String, usize> = HashMap::new();
    let mut cursor = 0;
    loop {
        let rows = db.read_after(cursor, 10_000).context("read chat.db")?;
        let Some(last) = rows.last() else { break };
        cursor = last.rowid;
        for r in rows.iter().filter(|r| r.from_me) {
            *rows_by_text
                .entry(r.text.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    let by_id: HashMap<&str, &whatsnap_proto::api::MessageView> = views
        .iter()
        .filter_map(|v| v.client_msg_id.as_deref().map(|id| (id, v)))
        .collect();
    let (mut sent, mut unknown, mut other) = (0, 0, 0);
    for n in 0..config.sends {
        let id = send_id(seed, n);
        let rows = rows_by_text.get(&send_text(seed, n)).copied().unwrap_or(0);
        let state = by_id.get(id.as_str()).and_then(|v| v.state);
        match (state, rows) {
            (Some(OutboundState::Sent), 1) => sent += 1,
            (Some(OutboundState::Unknown), 0 | 1) => unknown += 1,
            (Some(OutboundState::Failed | OutboundState::Rejected | OutboundState::Expired), 0) => {
                other += 1;
            }
            (state, rows) => {
                violations.push(format!(
                    "send {id}: state {state:?} with {rows} chat.db rows"
                ));
            }
        }
    }
    let strays = views
        .iter()
        .filter(|v| v.direction == "outbound" && v.client_msg_id.is_none())
        .count();
    if strays > 0 {
        violations.push(format!(
            "{strays} outbound messages without client_msg_id (echoes of our own sends taken for new ones)"
        ));
    }
    // The device token is a secret: it must not be in any log of the run.
    for log in [&daemon.log, &relay.log] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(&device_token) {
            violations.push(format!("the device token appears in {}", log.display()));
        }
    }
    if !violations.is_empty() {
        let shown: Vec<&str> = violations.iter().take(20).map(String::as_str).collect();
        bail!(
            "chaos seed {seed}: {} violations (first {}):\n  {}\nlogs in {}",
            violations.len(),
            shown.len(),
            shown.join("\n  "),
            config.dir.display()
        );
    }
    Ok(Report {
        seed,
        inbound: guids.len(),
        sent,
        unknown,
        other,
        daemon_kills,
        relay_kills,
        load,
        settle,
    })
}

/// Waits until the daemon reads new texts: on its first start it takes the
/// end of chat.db as its starting point (it never announces old history), so
/// texts written before that are, rightly, never sent. A warm-up text is
/// written every half second until one reaches the service.
async fn warm_up(admin: &AdminClient, sim: &mut Simulator) -> anyhow::Result<()> {
    for attempt in 0..120 {
        sim.receive(&handle(CONTACTS), &format!("warm-up {attempt}"))
            .context("write a warm-up text")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(views) = admin.list_messages(None).await
            && views.iter().any(|v| v.direction == "inbound")
        {
            return Ok(());
        }
    }
    bail!("the daemon read nothing from chat.db within 60 s")
}

/// Posts send `n`; false if it must be tried again later.
async fn try_send(admin: &AdminClient, seed: u64, n: usize) -> bool {
    let to = handle(n % CONTACTS);
    match admin
        .send_message(&to, &send_text(seed, n), Some(&send_id(seed, n)))
        .await
    {
        Ok(_) => true,
        // Not there yet (the contact's first text is still on its way, or
        // the service is restarting): later.
        Err(ClientError::Api { .. } | ClientError::Connect { .. }) => false,
        Err(_) => false,
    }
}

/// Why the run has not settled yet, or `None` when it has.
fn unsettled(
    views: &[whatsnap_proto::api::MessageView],
    guids: &[String],
    seed: u64,
    sends: usize,
) -> Option<String> {
    let seen: std::collections::HashSet<&str> = views
        .iter()
        .filter(|v| v.direction == "inbound")
        .flat_map(|v| v.guids.iter().map(String::as_str))
        .collect();
    let missing = guids.iter().filter(|g| !seen.contains(g.as_str())).count();
    if missing > 0 {
        return Some(format!("{missing} inbound texts not in the service yet"));
    }
    let states: HashMap<&str, Option<OutboundState>> = views
        .iter()
        .filter_map(|v| v.client_msg_id.as_deref().map(|id| (id, v.state)))
        .collect();
    let open = (0..sends)
        .filter(|&n| {
            matches!(
                states.get(send_id(seed, n).as_str()),
                None | Some(None | Some(OutboundState::Queued))
            )
        })
        .count();
    (open > 0).then(|| format!("{open} sends not final yet"))
}

/// The binaries next to `whatsnap-mac` (`target/<profile>/`).
pub fn sibling(exe: &Path, name: &str) -> PathBuf {
    exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}
