//! `whatsnap-mac demo`: the whole system on one machine (coming in this slice).

use std::path::Path;

/// Runs the demo.
pub async fn run(_exe: &Path, _once: bool) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not built yet")
}
