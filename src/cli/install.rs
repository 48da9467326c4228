//! `whatsnap-mac install`: writes the LaunchAgent and loads it in the user's
//! GUI domain, so the bridge starts at login and again after a crash.
//!
//! Running it again rewrites the plist and reloads the agent, which is how an
//! upgrade takes effect; state in the state folder is never touched.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::{self, Paths};
use crate::launchd::{self, AgentSpec, Launchctl};
use crate::logfile;

/// `install` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The binary launchd starts (default: this one). macOS attaches Full Disk
    /// Access and Automation to this path, so keep it stable.
    #[arg(long, value_name = "PATH")]
    pub program: Option<PathBuf>,
    /// Write the plist but do not load it.
    #[arg(long)]
    pub no_load: bool,
}

/// Runs `install`.
pub fn run(args: &Args, paths: &Paths) -> anyhow::Result<u8> {
    let program = match &args.program {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this program's own path")?,
    };
    // A relative or symlinked path would change under launchd (and TCC keys
    // on the resolved path): resolve it once, here.
    let program = program.canonicalize().with_context(|| {
        format!(
            "{} does not exist; pass --program with the installed binary",
            program.display()
        )
    })?;
    config::ensure_home(&paths.home)
        .with_context(|| format!("cannot create the state folder {}", paths.home.display()))?;
    let log_file = logfile::log_file(&paths.home);
    if let Some(dir) = log_file.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the log folder {}", dir.display()))?;
    }
    let spec = AgentSpec::new(program.clone(), paths, log_file.clone());
    let plist_path = launchd::plist_path(&logfile::user_home());
    launchd::write_plist(&plist_path, &launchd::plist_xml(&spec)?)?;
    println!("Wrote {}", plist_path.display());
    if program
        .components()
        .any(|c| c.as_os_str() == "target" || c.as_os_str() == "debug")
    {
        println!(
            "note: {} looks like a build folder; permissions follow the binary's path, \
             so install a copy at a stable place (./install.sh does) and run `install` from there",
            program.display()
        );
    }
    if args.no_load {
        println!("Not loaded (--no-load). Load it with: whatsnap-mac install");
        return Ok(0);
    }
    let launchctl = Launchctl::from_env()?;
    // An upgrade: unload the old agent so the new plist and binary are used.
    let was_loaded = launchctl.bootout()?;
    launchctl.bootstrap(&plist_path)?;
    println!(
        "{} the bridge in {} ({}); it starts at login and restarts after a crash.",
        if was_loaded { "Reloaded" } else { "Loaded" },
        launchctl.domain(),
        launchd::LABEL
    );
    println!("Logs: {}", log_file.display());
    println!();
    println!(
        "Grant these to {} (permissions follow this exact file):",
        program.display()
    );
    println!(
        "  1. Full Disk Access: System Settings > Privacy & Security > Full Disk Access, add it"
    );
    println!("     (press Cmd-Shift-G in the file picker to type the path).");
    println!("  2. Automation > Messages: allow it when macOS asks at the first send,");
    println!("     or check now with: whatsnap-mac doctor");
    if !paths.credentials().exists() {
        println!("Then pair once: whatsnap-mac pair --server https://YOUR-SERVICE CODE");
    }
    println!("Check it any time: whatsnap-mac status");
    Ok(0)
}
