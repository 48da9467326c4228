//! `whatsnap-mac uninstall`: stops the bridge and removes its LaunchAgent.
//! State (pairing, queues) stays unless `--purge` is given, so a reinstall
//! carries on where it stopped.

use anyhow::Context;

use crate::config::Paths;
use crate::launchd::{self, Launchctl};
use crate::logfile;

/// `uninstall` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also delete the state folder (pairing, queues) and the logs.
    #[arg(long)]
    pub purge: bool,
}

/// Runs `uninstall`.
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    let launchctl = Launchctl::from_env()?;
    let was_loaded = launchctl.bootout()?;
    let plist = launchd::plist_path(&logfile::user_home());
    let had_plist = match std::fs::remove_file(&plist) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", plist.display())),
    };
    match (was_loaded, had_plist) {
        (false, false) => println!("The bridge was not installed; nothing to remove."),
        _ => println!("Stopped the bridge and removed {}", plist.display()),
    }
    if args.purge {
        let logs = logfile::log_dir(&paths.home);
        for dir in [&paths.home, &logs] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => println!("Deleted {}", dir.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot delete {}", dir.display()));
                }
            }
        }
    } else if paths.home.exists() {
        println!(
            "Kept the state in {} (pairing, queues); `uninstall --purge` deletes it.",
            paths.home.display()
        );
    }
    Ok(0)
}
