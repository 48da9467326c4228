//! The constant AppleScript programs the daemon runs through `osascript -`,
//! and the choice among them.
//!
//! Every script is a file in `applescript/`, embedded at build time, and fed to
//! `osascript` on stdin. Message data only ever travels as process arguments to
//! the script's `on run argv` handler, so no text can be parsed as code.
//!
//! Where macOS releases differ, the variant is picked from the probed macOS
//! version ([`Dialect`]), never from a chat GUID: Tahoe stores `any;-;` GUIDs,
//! and turning a GUID prefix into a `service type` constant fails there
//! (-1700). Which service carries a send to a person is our decision (the SMS
//! setting, a fallback), so each service has its own script rather than a
//! service name passed in as data.

/// A script we run, with the arguments it expects in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Script {
    /// Short stable name, used in logs and by the simulator.
    pub name: &'static str,
    /// The AppleScript source, exactly as shipped in `applescript/`.
    pub source: &'static str,
}

macro_rules! script {
    ($(#[$doc:meta])* $konst:ident, $name:literal) => {
        $(#[$doc])*
        pub const $konst: Script = Script {
            name: $name,
            source: include_str!(concat!("../../applescript/", $name, ".applescript")),
        };
    };
}

script!(
    /// Text to an existing chat by its exact `chat.guid`. Arguments: text, chat guid.
    SEND_TO_CHAT,
    "send_to_chat"
);
script!(
    /// A file to an existing chat. Arguments: absolute path, chat guid.
    SEND_FILE_TO_CHAT,
    "send_file_to_chat"
);
script!(
    /// Text to a handle through the iMessage account (macOS 13+). Arguments: text, handle.
    SEND_TO_HANDLE,
    "send_to_handle"
);
script!(
    /// A file to a handle through the iMessage account (macOS 13+). Arguments: path, handle.
    SEND_FILE_TO_HANDLE,
    "send_file_to_handle"
);
script!(
    /// Text to a handle through the SMS account (macOS 13+). Arguments: text, handle.
    SEND_SMS_TO_HANDLE,
    "send_sms_to_handle"
);
script!(
    /// A file to a handle through the SMS account (macOS 13+). Arguments: path, handle.
    SEND_SMS_FILE_TO_HANDLE,
    "send_sms_file_to_handle"
);
script!(
    /// Text to a handle through the iMessage service (macOS 11-12). Arguments: text, handle.
    SEND_TO_HANDLE_BIGSUR,
    "send_to_handle_bigsur"
);
script!(
    /// A file to a handle through the iMessage service (macOS 11-12). Arguments: path, handle.
    SEND_FILE_TO_HANDLE_BIGSUR,
    "send_file_to_handle_bigsur"
);
script!(
    /// Text to a handle through the SMS service (macOS 11-12). Arguments: text, handle.
    SEND_SMS_TO_HANDLE_BIGSUR,
    "send_sms_to_handle_bigsur"
);
script!(
    /// A file to a handle through the SMS service (macOS 11-12). Arguments: path, handle.
    SEND_SMS_FILE_TO_HANDLE_BIGSUR,
    "send_sms_file_to_handle_bigsur"
);
script!(
    /// A harmless Apple event to Messages, to test the Automation grant. No arguments.
    PROBE_MESSAGES,
    "probe_messages"
);

/// Every script the daemon may run; the simulator refuses anything else.
pub const ALL: &[Script] = &[
    SEND_TO_CHAT,
    SEND_FILE_TO_CHAT,
    SEND_TO_HANDLE,
    SEND_FILE_TO_HANDLE,
    SEND_SMS_TO_HANDLE,
    SEND_SMS_FILE_TO_HANDLE,
    SEND_TO_HANDLE_BIGSUR,
    SEND_FILE_TO_HANDLE_BIGSUR,
    SEND_SMS_TO_HANDLE_BIGSUR,
    SEND_SMS_FILE_TO_HANDLE_BIGSUR,
    PROBE_MESSAGES,
];

/// The script whose source is exactly `source`, if it is one of ours.
pub fn identify(source: &str) -> Option<Script> {
    ALL.iter().copied().find(|s| s.source == source)
}

/// What one osascript call sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// A text (argument 1 is the text).
    Text,
    /// A file (argument 1 is its absolute path inside `~/Library/Messages/`).
    File,
}

/// The service that carries a send to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// iMessage.
    IMessage,
    /// SMS, through a paired iPhone's Text Message Forwarding.
    Sms,
}

impl Service {
    /// As chat.db writes it in `message.service`.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::IMessage => "iMessage",
            Service::Sms => "SMS",
        }
    }

    /// Parses [`Service::as_str`].
    pub fn parse(s: &str) -> Option<Service> {
        match s {
            "iMessage" => Some(Service::IMessage),
            "SMS" => Some(Service::Sms),
            _ => None,
        }
    }
}

/// How a macOS release's Messages dictionary names the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// macOS 11 Big Sur and 12 Monterey: `service`, `participant`.
    BigSur,
    /// macOS 13 Ventura and later (Sonoma, Sequoia, Tahoe): `account`, `participant`.
    Ventura,
}

/// A macOS version as `sw_vers -productVersion` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MacosVersion {
    /// 11, 12, ..., 15, 26.
    pub major: u32,
    /// The minor release.
    pub minor: u32,
}

impl MacosVersion {
    /// Parses `15.3.1`, `26.0`, `10.15.7` (surrounding whitespace allowed).
    pub fn parse(text: &str) -> Option<MacosVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = match parts.next() {
            Some(m) => m.parse().ok()?,
            None => 0,
        };
        Some(MacosVersion { major, minor })
    }

    /// The dictionary this release speaks, or `None` before Big Sur, where
    /// AppleScript cannot address a participant at all.
    pub fn dialect(self) -> Option<Dialect> {
        match self.major {
            0..=10 => None,
            11 | 12 => Some(Dialect::BigSur),
            _ => Some(Dialect::Ventura),
        }
    }

    /// Tahoe (26) and later: `any;` chat GUIDs and the ghost-row bug.
    pub fn is_tahoe_or_later(self) -> bool {
        self.major >= 26
    }
}

impl std::fmt::Display for MacosVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The script that sends `payload` to an existing chat by its GUID.
pub fn to_chat(payload: Payload) -> Script {
    match payload {
        Payload::Text => SEND_TO_CHAT,
        Payload::File => SEND_FILE_TO_CHAT,
    }
}

/// The script that sends `payload` to a person through `service`.
pub fn to_handle(service: Service, payload: Payload, dialect: Dialect) -> Script {
    use {Dialect::*, Payload::*, Service::*};
    match (dialect, service, payload) {
        (Ventura, IMessage, Text) => SEND_TO_HANDLE,
        (Ventura, IMessage, File) => SEND_FILE_TO_HANDLE,
        (Ventura, Sms, Text) => SEND_SMS_TO_HANDLE,
        (Ventura, Sms, File) => SEND_SMS_FILE_TO_HANDLE,
        (BigSur, IMessage, Text) => SEND_TO_HANDLE_BIGSUR,
        (BigSur, IMessage, File) => SEND_FILE_TO_HANDLE_BIGSUR,
        (BigSur, Sms, Text) => SEND_SMS_TO_HANDLE_BIGSUR,
        (BigSur, Sms, File) => SEND_SMS_FILE_TO_HANDLE_BIGSUR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_takes_its_data_from_argv_and_never_builds_a_service_from_data() {
        for s in ALL {
            assert!(s.source.contains("on run argv"), "{}", s.name);
            assert!(!s.source.contains("do shell script"), "{}", s.name);
            // No script turns an argument into a service type.
            assert!(!s.source.contains("service type = (item"), "{}", s.name);
            assert!(!s.source.contains("run script"), "{}", s.name);
        }
        let mut names: Vec<_> = ALL.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "names are unique");
    }

    #[test]
    fn the_variant_follows_the_macos_version() {
        let v = |s: &str| MacosVersion::parse(s).expect("parses");
        assert_eq!(v("10.15.7").dialect(), None);
        assert_eq!(v("11.7.10").dialect(), Some(Dialect::BigSur));
        assert_eq!(v("12.0").dialect(), Some(Dialect::BigSur));
        assert_eq!(v("13.6").dialect(), Some(Dialect::Ventura));
        assert_eq!(v("15.3.1\n").dialect(), Some(Dialect::Ventura));
        assert_eq!(v("26").dialect(), Some(Dialect::Ventura));
        assert!(v("26.1").is_tahoe_or_later());
        assert!(!v("15.7").is_tahoe_or_later());
        assert_eq!(MacosVersion::parse("Version 15"), None);
        let script = to_handle(Service::Sms, Payload::Text, Dialect::BigSur);
        assert!(
            script
                .source
                .contains("1st service whose service type = SMS")
        );
        let script = to_handle(Service::IMessage, Payload::File, Dialect::Ventura);
        assert!(
            script
                .source
                .contains("1st account whose service type = iMessage")
        );
        assert!(script.source.contains("POSIX file filePath"));
    }
}
