//! `whatsnap-mac unpair`: revoke this Mac at the service and forget its token.
//!
//! The service is told first (`DELETE /v1/device`), so a token that leaked
//! stops working even if this Mac is never seen again; only then are the
//! local credentials deleted (the Keychain item, then `credentials.json`).
//! `--local-only` forgets without asking the service, for a service that no
//! longer exists (the admin can still remove the account there).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Paths;
use crate::link::{pair, tls};

/// `unpair` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Forget the credentials without telling the service.
    #[arg(long)]
    pub local_only: bool,
    /// PEM file with the service's CA (default: the one given to `pair`).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
}

/// Runs `unpair`: exit 0 when this Mac is unpaired (or was not paired),
/// 1 when the service could not be told (nothing was forgotten then).
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    let path = paths.credentials();
    let store = pair::CredentialStore::from_env()?;
    let paired = match pair::load_paired(&path) {
        Ok(p) => p,
        Err(pair::PairError::NotPaired) => {
            println!("This Mac is not paired; nothing to do.");
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    if !args.local_only {
        let told = store
            .load(&path)
            .map_err(anyhow::Error::from)
            .and_then(|(creds, _)| {
                let ca_file = args.ca_file.clone().or(paired.ca_file.clone());
                let client = tls::http_client(ca_file.as_deref(), Some(Duration::from_secs(30)))?;
                Ok(super::runtime()?.block_on(pair::unpair(&client, &creds))?)
            });
        if let Err(e) = told {
            eprintln!(
                "whatsnap-mac: {e:#}\nThe credentials are kept. Retry when the service is reachable, or run `whatsnap-mac unpair --local-only` to forget them anyway."
            );
            return Ok(1);
        }
    }
    store.forget(&path)?;
    let _ = std::fs::remove_file(paths.service_ca());
    println!(
        "Unpaired from {} (account {}). Stop the bridge with `whatsnap-mac uninstall` or pair again with `whatsnap-mac pair`.",
        paired.server, paired.account_tag
    );
    Ok(0)
}
