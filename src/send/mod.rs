//! Sending through Messages.app: the AppleScript runner and send confirmation.

pub mod scripts;
