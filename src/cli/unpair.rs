//! `whatsnap-mac unpair`: revoke this Mac at the service and forget its token.
//!
//! The service is told first (`DELETE /v1/device`), so a token that leaked
//! stops working even if this Mac is never seen again; only then are the
//! local credentials deleted. `--local-only` forgets without asking the
//! service, for a service that no longer exists (the admin can still remove
//! the account there).

use std::time::Duration;

use anyhow::Context;

use crate::config::Paths;
use crate::link::pair;

/// `unpair` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Forget the credentials without telling the service.
    #[arg(long)]
    pub local_only: bool,
}

/// Runs `unpair`: exit 0 when this Mac is unpaired (or was not paired),
/// 1 when the service could not be told (nothing was forgotten then).
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    let path = paths.credentials();
    let creds = match pair::load(&path) {
        Ok(c) => c,
        Err(pair::PairError::NotPaired) => {
            println!("This Mac is not paired; nothing to do.");
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    if !args.local_only {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTPS client")?;
        let told = super::runtime()?.block_on(pair::unpair(&client, &creds));
        if let Err(e) = told {
            eprintln!(
                "whatsnap-mac: {e}\nThe credentials are kept. Retry when the service is reachable, or run `whatsnap-mac unpair --local-only` to forget them anyway."
            );
            return Ok(1);
        }
    }
    pair::forget(&path)?;
    println!(
        "Unpaired from {} (account {}). Stop the bridge with `whatsnap-mac uninstall` or pair again with `whatsnap-mac pair`.",
        creds.server, creds.account_tag
    );
    Ok(0)
}
