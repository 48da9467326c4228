//! `whatsnap-mac pair`: trade a one-time code for this Mac's device token.
//!
//! Before the service is called, the two permissions the bridge cannot work
//! without are checked — Full Disk Access (chat.db opens and reads) and
//! Automation (a harmless Apple event to Messages) — and pairing stops with
//! what is missing and how to grant it (exit 1). The code is not used up
//! then, so the user grants the permission and runs `pair` again with the
//! same code; `--force` pairs anyway. A "not asked yet" Automation or a
//! Messages that is not running is only a warning.
//!
//! The token goes to the login Keychain (or the 0600 file, see
//! `WHATSNAP_TOKEN_STORE`); `--ca-file` is copied into the state folder and
//! used by every later connection, the daemon's included.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::config::{self, Paths};
use crate::doctor::{self, Outcome};
use crate::link::{pair, tls};

/// `pair` options.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 paired, 1 a permission is missing or the service refused (the code is kept when a permission is missing), 2 usage or environment error."
)]
pub struct Args {
    /// The account service, e.g. https://whatsnap.example.com.
    #[arg(long, env = "WHATSNAP_SERVER")]
    pub server: String,
    /// The pairing code shown by the service (XXXX-XXXX); asked for when not given.
    #[arg(value_name = "CODE")]
    pub code_arg: Option<String>,
    /// The pairing code, as an option.
    #[arg(long, conflicts_with = "code_arg")]
    pub code: Option<String>,
    /// PEM file with the CA certificate(s) of a self-hosted service, trusted
    /// in addition to the system's roots (kept for the bridge's connections).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Pair even when Full Disk Access or Automation is missing.
    #[arg(long)]
    pub force: bool,
}

/// The code from the command line, or typed at a prompt.
fn code(args: &Args) -> anyhow::Result<String> {
    if let Some(code) = args.code.as_ref().or(args.code_arg.as_ref()) {
        return Ok(code.clone());
    }
    eprint!("Pairing code from your WhatSnap admin (XXXX-XXXX): ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the pairing code from the terminal")?;
    let line = line.trim().to_owned();
    anyhow::ensure!(
        !line.is_empty(),
        "no pairing code given; pass it with --code XXXX-XXXX or type it at the prompt"
    );
    Ok(line)
}

/// Pairs; exit 1 when a permission is missing or the service refuses.
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    super::runtime()?.block_on(pair_async(args, paths))
}

async fn pair_async(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    config::ensure_home(&paths.home)
        .with_context(|| format!("cannot create the state folder {}", paths.home.display()))?;
    // Settings and the URL first: nothing to grant for a typo.
    let store = pair::CredentialStore::from_env()?;
    pair::check_server_url(&args.server)?;
    let client = tls::http_client(args.ca_file.as_deref(), Some(Duration::from_secs(30)))?;
    if !preflight(paths, args.force).await {
        return Ok(1);
    }
    let code = code(args)?;
    match pair::pair(&client, &args.server, &code, pair::device_info()).await {
        Ok(creds) => {
            let ca_file = match &args.ca_file {
                Some(from) => {
                    let kept = paths.service_ca();
                    // Copying a file onto itself would empty it.
                    let same =
                        std::fs::canonicalize(from).ok() == std::fs::canonicalize(&kept).ok();
                    if !same {
                        std::fs::copy(from, &kept).with_context(|| {
                            format!("cannot copy {} to {}", from.display(), kept.display())
                        })?;
                    }
                    Some(kept)
                }
                None => {
                    // A CA file from an earlier pairing is not this one's.
                    let _ = std::fs::remove_file(paths.service_ca());
                    None
                }
            };
            let path = paths.credentials();
            let saved = {
                let creds = creds.clone();
                crate::blocking(move || store.save(&path, &creds, ca_file.as_deref())).await
            };
            saved.context(
                "paired, but the token could not be stored; fix that and run `whatsnap-mac pair` with a new code",
            )?;
            println!(
                "Paired with {} as account {} (tag {}).",
                creds.server, creds.account_name, creds.account_tag
            );
            println!("Start the bridge with `whatsnap-mac run` (or `whatsnap-mac restart`).");
            Ok(0)
        }
        Err(e @ (pair::PairError::Refused { .. } | pair::PairError::RateLimited { .. })) => {
            eprintln!("whatsnap-mac: {e}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}

/// Full Disk Access and Automation; prints what is wrong. False when
/// pairing should stop (a failed check, without `--force`).
async fn preflight(paths: &Paths, force: bool) -> bool {
    let env = doctor::Env::from_env(paths.clone());
    let checks = doctor::pair_preflight(&env).await;
    let failed = checks.iter().any(|c| c.outcome == Outcome::Fail);
    for check in checks.iter().filter(|c| c.outcome != Outcome::Ok) {
        eprintln!("{}", check.line());
    }
    if failed && !force {
        eprintln!(
            "whatsnap-mac: not pairing yet: the bridge could not read or send with the permissions above missing. Grant them, then run `whatsnap-mac pair` again (your code stays valid for its 10 minutes), or pass --force to pair now and fix them later."
        );
        return false;
    }
    if failed {
        eprintln!(
            "whatsnap-mac: pairing anyway (--force); `whatsnap-mac doctor` shows what is left."
        );
    }
    true
}
