//! Placeholder for commands that are designed but not built yet.

/// Fails with a clear "not built yet" message.
pub fn not_yet(command: &str) -> anyhow::Result<u8> {
    anyhow::bail!("`whatsnap-mac {command}` is not built yet; see README.md for what works today")
}
