//! Any bytes into the body decoder and the summary plist reader: they must
//! return a value or an error, never panic, loop or overflow the stack. The
//! bulk read's text-only decoder must also say exactly what the full one
//! says, text or error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = whatsnap_mac::chatdb::typedstream::decode_body(data) {
        // The text is valid UTF-8 by construction; touching it keeps the
        // optimiser from dropping the call.
        assert!(body.text.len() <= data.len() * 3 + 3);
    }
    let full = whatsnap_mac::chatdb::typedstream::decode_text(data);
    let fast = whatsnap_mac::chatdb::typedstream::decode_text_unchecked(data)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    assert_eq!(full.is_ok(), fast.is_ok(), "{full:?} / {fast:?}");
    if let (Ok(full), Ok(fast)) = (full, fast) {
        assert_eq!(full, fast);
    }
    let _ = whatsnap_mac::chatdb::typedstream::message_text(Some(data), None);
    let _ = whatsnap_mac::chatdb::summary::parse(data);
});
