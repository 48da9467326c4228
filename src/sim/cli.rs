//! `whatsnap-mac sim ...`: the simulator from the command line, for tests, the
//! demo and by-hand experiments. Hidden from the main help.
//!
//! `sim osascript` is the one a daemon runs: it takes osascript's own command
//! line after `--`, so the wrapper from [`fake_osascript::write_wrapper`] can
//! pass `"$@"` through untouched.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;

use crate::sim::{Release, Simulator, fake_osascript};

/// Simulator commands (hidden from the main help).
#[derive(Debug, clap::Subcommand)]
pub enum SimCommand {
    /// Create a new chat.db (refuses to overwrite).
    Init {
        /// Where to create the database.
        #[arg(long, value_name = "PATH")]
        chat_db: PathBuf,
        /// Schema of this macOS release: 11, 12, 13, 14, 15, 26 (or its name).
        #[arg(long, value_name = "RELEASE", default_value = "15")]
        release: Release,
    },
    /// Append a large realistic mix of messages (creates the database if missing).
    Generate {
        /// The simulated chat.db.
        #[arg(long, value_name = "PATH")]
        chat_db: PathBuf,
        /// How many message rows to write.
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        messages: u64,
        /// Over how many chats (a tenth of them groups).
        #[arg(long, value_name = "N", default_value_t = 500)]
        chats: u64,
        /// Schema of a new database.
        #[arg(long, value_name = "RELEASE", default_value = "15")]
        release: Release,
    },
    /// Write an incoming iMessage, as if HANDLE had texted this Mac; prints its guid.
    Receive {
        /// The simulated chat.db.
        #[arg(long, value_name = "PATH")]
        chat_db: PathBuf,
        /// Sender: an E.164 phone number (+15551234567) or an email address.
        #[arg(long, value_name = "HANDLE")]
        from: String,
        /// The message text.
        #[arg(allow_hyphen_values = true)]
        text: String,
    },
    /// Benchmark: read a whole database into events vs a bare scan.
    BenchRead {
        /// The database (see `sim generate`).
        #[arg(long, value_name = "PATH")]
        chat_db: PathBuf,
    },
    /// Benchmark: typedstream body decoding throughput.
    BenchDecode {
        /// The database (see `sim generate`).
        #[arg(long, value_name = "PATH")]
        chat_db: PathBuf,
        /// Bodies to load.
        #[arg(long, default_value_t = 200_000)]
        bodies: usize,
        /// Passes over them.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// Benchmark: commit-to-event latency with the real watcher and reader.
    BenchWakeup {
        /// An empty folder to work in.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Messages to write.
        #[arg(long, default_value_t = 10_000)]
        messages: u32,
        /// Per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u32,
    },
    /// Mark a message delivered (a delivery receipt arrived).
    Deliver {
        /// The simulated chat.db.
        #[arg(long, value_name = "PATH")]
        chat_db: PathBuf,
        /// The message guid.
        guid: String,
    },
    /// Write an executable `osascript` wrapper into DIR that runs this fake; prints its path.
    Wrapper {
        /// Folder to write `osascript` into.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The simulated chat.db the wrapper writes.
        #[arg(long, value_name = "PATH")]
        chat_db: PathBuf,
    },
    /// Act as `/usr/bin/osascript`: `sim osascript --chat-db PATH -- - <args>...`,
    /// script on stdin.
    Osascript {
        /// The simulated chat.db.
        #[arg(long, value_name = "PATH")]
        chat_db: PathBuf,
        /// osascript's arguments: `-` (script from stdin) then the script's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

/// Runs a simulator command and returns the process exit code.
pub fn run(cmd: SimCommand) -> anyhow::Result<i32> {
    match cmd {
        SimCommand::Init { chat_db, release } => {
            Simulator::create_release(&chat_db, release)?;
            Ok(0)
        }
        SimCommand::Generate {
            chat_db,
            messages,
            chats,
            release,
        } => {
            let mut sim = if chat_db.exists() {
                Simulator::open(&chat_db)?
            } else {
                Simulator::create_release(&chat_db, release)?
            };
            let started = std::time::Instant::now();
            let made = sim.generate(messages, chats)?;
            eprintln!(
                "wrote {} messages over {} chats in {:.1} s",
                made.messages,
                made.chats,
                started.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        SimCommand::Receive {
            chat_db,
            from,
            text,
        } => {
            let message = Simulator::open(&chat_db)?.receive(&from, &text)?;
            println!("{}", message.guid);
            Ok(0)
        }
        SimCommand::BenchRead { chat_db } => crate::sim::bench::read(&chat_db).map(|()| 0),
        SimCommand::BenchDecode {
            chat_db,
            bodies,
            rounds,
        } => crate::sim::bench::decode(&chat_db, bodies, rounds).map(|()| 0),
        SimCommand::BenchWakeup {
            dir,
            messages,
            rate,
        } => crate::sim::bench::wakeup(&dir, messages, rate).map(|()| 0),
        SimCommand::Deliver { chat_db, guid } => {
            Simulator::open(&chat_db)?.mark_delivered(&guid)?;
            Ok(0)
        }
        SimCommand::Wrapper { dir, chat_db } => {
            let exe = std::env::current_exe()
                .context("cannot find this program's own path to put in the wrapper")?;
            let path = fake_osascript::write_wrapper(&dir, &exe, &chat_db).with_context(|| {
                format!("cannot write the osascript wrapper into {}", dir.display())
            })?;
            println!("{}", path.display());
            Ok(0)
        }
        SimCommand::Osascript { chat_db, args } => {
            let mut script = Vec::new();
            std::io::stdin()
                .read_to_end(&mut script)
                .context("cannot read the script from stdin")?;
            // A script that is not UTF-8 cannot be one of ours; lossy
            // conversion keeps it unrecognised and lets the fake refuse it.
            let script = String::from_utf8_lossy(&script);
            Ok(fake_osascript::run(
                &chat_db,
                &args,
                &script,
                &mut std::io::stderr().lock(),
            ))
        }
    }
}
