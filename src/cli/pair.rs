//! `whatsnap-mac pair`: trade a one-time code for this Mac's device token.

use std::time::Duration;

use anyhow::Context;

use crate::config::{self, Paths};
use crate::link::pair;

/// `pair` options.
#[derive(Debug, clap::Args)]
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

/// Pairs; exit 1 when the service refuses the code.
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    super::runtime()?.block_on(pair_async(args, paths))
}

async fn pair_async(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    config::ensure_home(&paths.home)
        .with_context(|| format!("cannot create the state folder {}", paths.home.display()))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTPS client")?;
    let code = code(args)?;
    match pair::pair(&client, &args.server, &code, pair::device_info()).await {
        Ok(creds) => {
            pair::save(&paths.credentials(), &creds)?;
            println!(
                "Paired with {} as account {} (tag {}).",
                creds.server, creds.account_name, creds.account_tag
            );
            println!("Start the bridge with `whatsnap-mac run`.");
            Ok(0)
        }
        Err(e @ pair::PairError::Refused { .. }) => {
            eprintln!("whatsnap-mac: {e}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}
