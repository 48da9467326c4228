//! The sender's settings: time limits, the SMS policy and the hourly limits
//! that protect the Apple ID, and where the macOS version comes from.
//!
//! They arrive as keys of the account's `settings` object (protocol §7.11);
//! [`SendSettings::apply`] takes that object and reports per-key problems for
//! `settings.applied`, keeping the previous value of a key it refuses.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::scripts::MacosVersion;

/// When SMS may carry a send to a person.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SmsMode {
    /// Never: an iMessage failure is the result.
    ImessageOnly,
    /// Only after a definite iMessage failure (not registered, `error` set,
    /// a script error before dispatch); never after an `unknown`.
    #[default]
    SmsFallback,
    /// Always SMS (group chats still go to their chat).
    SmsOnly,
}

impl SmsMode {
    /// Parses the setting's value.
    pub fn parse(s: &str) -> Option<SmsMode> {
        match s {
            "imessage_only" => Some(SmsMode::ImessageOnly),
            "sms_fallback" => Some(SmsMode::SmsFallback),
            "sms_only" => Some(SmsMode::SmsOnly),
            _ => None,
        }
    }
}

/// Everything the sender can be tuned with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSettings {
    /// Time limit of one osascript call (`osascript_timeout_s`, 30 s).
    pub osascript_timeout: Duration,
    /// How long the from-me row of a text is waited for (10 s, §7.7).
    pub confirm_window: Duration,
    /// How long the row of a file is waited for (uploads take longer).
    pub file_confirm_window: Duration,
    /// After a restart, how long since dispatch a send may still be
    /// confirmed (60 s, §7.7).
    pub restart_confirm_window: Duration,
    /// `sms_mode`: `imessage_only`, `sms_fallback` (default), `sms_only`.
    pub sms: SmsMode,
    /// `max_sends_per_hour` (default 100). Over it, sends wait.
    pub max_sends_per_hour: u32,
    /// `max_new_handles_per_hour`: sends that start a conversation with a
    /// person never messaged from this Mac (default 20). Apple flags bulk
    /// sending to new numbers (macos.md §8: ~200/h to mostly new numbers got
    /// an account blocked).
    pub max_new_handles_per_hour: u32,
    /// Pause between the files of one send (Messages drops a file sent right
    /// after another; anchors wait 0.5-1 s).
    pub file_gap: Duration,
}

impl Default for SendSettings {
    fn default() -> Self {
        SendSettings {
            osascript_timeout: Duration::from_secs(30),
            confirm_window: Duration::from_secs(10),
            file_confirm_window: Duration::from_secs(60),
            restart_confirm_window: Duration::from_secs(60),
            sms: SmsMode::default(),
            max_sends_per_hour: 100,
            max_new_handles_per_hour: 20,
            file_gap: Duration::from_millis(500),
        }
    }
}

impl SendSettings {
    /// Takes the sender's keys from a `settings` object; other keys are left
    /// alone. Returns `(key, problem)` for every value refused.
    pub fn apply(&mut self, settings: &Map<String, Value>) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut count = |key: &str, min: u64, max: u64| -> Option<u64> {
            let value = settings.get(key)?;
            match value.as_u64() {
                Some(n) if (min..=max).contains(&n) => Some(n),
                _ => {
                    errors.push((
                        key.to_owned(),
                        format!("must be a whole number from {min} to {max}, got {value}"),
                    ));
                    None
                }
            }
        };
        if let Some(s) = count("osascript_timeout_s", 1, 600) {
            self.osascript_timeout = Duration::from_secs(s);
        }
        if let Some(n) = count("max_sends_per_hour", 1, 10_000) {
            self.max_sends_per_hour = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = count("max_new_handles_per_hour", 0, 10_000) {
            self.max_new_handles_per_hour = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(value) = settings.get("sms_mode") {
            match value.as_str().and_then(SmsMode::parse) {
                Some(mode) => self.sms = mode,
                None => errors.push((
                    "sms_mode".into(),
                    format!("must be imessage_only, sms_fallback or sms_only, got {value}"),
                )),
            }
        }
        errors
    }
}

/// Where the macOS version comes from. Scripts differ between releases, so
/// the sender asks once and picks its variants from the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MacosProbe {
    /// Run this program (normally `/usr/bin/sw_vers`) with `-productVersion`.
    Program(PathBuf),
    /// A known version (tests, or an override).
    Fixed(MacosVersion),
}

/// Overrides the probed macOS version, e.g. `WHATSNAP_MACOS_VERSION=12.7`.
pub const MACOS_VERSION_ENV: &str = "WHATSNAP_MACOS_VERSION";

/// Names another `sw_vers` program.
pub const SW_VERS_ENV: &str = "WHATSNAP_SW_VERS";

impl Default for MacosProbe {
    /// From the environment: [`MACOS_VERSION_ENV`], else the program in
    /// [`SW_VERS_ENV`], else `/usr/bin/sw_vers`.
    fn default() -> Self {
        if let Some(v) = std::env::var(MACOS_VERSION_ENV)
            .ok()
            .as_deref()
            .and_then(MacosVersion::parse)
        {
            return MacosProbe::Fixed(v);
        }
        MacosProbe::Program(
            std::env::var_os(SW_VERS_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/bin/sw_vers")),
        )
    }
}

impl MacosProbe {
    /// The version, or why it could not be found.
    pub async fn probe(&self) -> Result<MacosVersion, String> {
        match self {
            MacosProbe::Fixed(v) => Ok(*v),
            MacosProbe::Program(program) => {
                let out = tokio::process::Command::new(program)
                    .arg("-productVersion")
                    .kill_on_drop(true)
                    .output();
                let out = tokio::time::timeout(Duration::from_secs(5), out)
                    .await
                    .map_err(|_| format!("{} did not answer within 5 s", program.display()))?
                    .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
                let text = String::from_utf8_lossy(&out.stdout);
                MacosVersion::parse(&text).ok_or_else(|| {
                    format!(
                        "{} printed {:?}, not a macOS version",
                        program.display(),
                        text.trim()
                    )
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_keys_are_applied_and_bad_values_refused_per_key() {
        let mut s = SendSettings::default();
        let obj = serde_json::json!({
            "sms_mode": "sms_only",
            "max_sends_per_hour": 30,
            "max_new_handles_per_hour": -1,
            "osascript_timeout_s": 45,
            "log_level": "debug"
        });
        let errors = s.apply(obj.as_object().expect("object"));
        assert_eq!(s.sms, SmsMode::SmsOnly);
        assert_eq!(s.max_sends_per_hour, 30);
        assert_eq!(s.osascript_timeout, Duration::from_secs(45));
        assert_eq!(s.max_new_handles_per_hour, 20, "refused: kept");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "max_new_handles_per_hour");
        let errors = s.apply(
            serde_json::json!({"sms_mode": "carrier_pigeon"})
                .as_object()
                .expect("object"),
        );
        assert!(errors[0].1.contains("imessage_only"), "{errors:?}");
    }

    #[tokio::test]
    async fn a_missing_sw_vers_is_a_clear_error() {
        let probe = MacosProbe::Program(PathBuf::from("/nonexistent/sw_vers"));
        let err = probe.probe().await.expect_err("no such program");
        assert!(err.contains("/nonexistent/sw_vers"), "{err}");
    }
}
