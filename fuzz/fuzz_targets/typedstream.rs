//! Any bytes into the body decoder and the summary plist reader: they must
//! return a value or an error, never panic, loop or overflow the stack.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = whatsnap_mac::chatdb::typedstream::decode_body(data) {
        // The text is valid UTF-8 by construction; touching it keeps the
        // optimiser from dropping the call.
        assert!(body.text.len() <= data.len() * 3 + 3);
    }
    let _ = whatsnap_mac::chatdb::typedstream::message_text(Some(data), None);
    let _ = whatsnap_mac::chatdb::summary::parse(data);
});
