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
    /// The pairing code shown by the service (XXXX-XXXX).
    pub code: String,
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
    match pair::pair(&client, &args.server, &args.code, pair::device_info()).await {
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
