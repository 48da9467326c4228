//! `whatsnap-mac doctor`: checks everything the bridge needs and prints one
//! line per check, each problem with its fix; `--json` for programs.
//!
//! Exit codes: 0 nothing failed (warnings allowed), 1 at least one check failed.

use crate::config::Paths;
use crate::doctor::{self, Env, Outcome};

/// `doctor` options.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes: 0 nothing failed, 1 a check failed.")]
pub struct Args {
    /// Print JSON: {"ok": bool, "checks": [{"id", "outcome", "detail", "fix"}]}.
    #[arg(long)]
    pub json: bool,
    /// PEM file with the service's CA (default: the one given to `pair`).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<std::path::PathBuf>,
}

/// Runs `doctor`.
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    let mut env = Env::from_env(paths.clone());
    env.ca_file = args.ca_file.clone();
    let checks = super::runtime()?.block_on(doctor::run_all(&env));
    let ok = !checks.iter().any(|c| c.outcome == Outcome::Fail);
    if args.json {
        let json = serde_json::json!({ "ok": ok, "checks": checks });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for check in &checks {
            println!("{}", check.line());
        }
        if ok {
            println!("All checks passed.");
        }
    }
    Ok(if ok { 0 } else { 1 })
}
