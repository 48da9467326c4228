//! Secrets: pairing codes, device tokens, random epochs, and their hashes.
//!
//! The service stores only SHA-256 hashes of pairing codes and tokens, so a
//! copied database file cannot be used to impersonate a device. Randomness
//! comes from `ring`'s system generator; nothing here does I/O otherwise.

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

/// The 31 symbols of a pairing code: no 0/O, 1/I/L, so codes read aloud or
/// typed from a screen are not misread.
pub const CODE_ALPHABET: &[u8; 31] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// Characters in a pairing code (about 40 bits).
pub const CODE_LEN: usize = 8;

/// Prefix of device tokens, so a leaked one is recognisable.
pub const DEVICE_TOKEN_PREFIX: &str = "wsd_";

/// How long a device's previous token keeps working after a rotation
/// (`POST /v1/device/token/rotate`): long enough for a daemon that crashed
/// between the service's answer and storing the new token to come back.
pub const PREVIOUS_TOKEN_VALID_MS: i64 = 24 * 60 * 60 * 1000;

/// The randomness source failed; the OS is in trouble.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed; check the OS entropy source and retry")]
pub struct RandomError;

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-256 as lower-case hex (how hashes are stored).
pub fn sha256_hex(text: &str) -> String {
    use std::fmt::Write as _;
    sha256(text.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Compares two byte strings without an early exit, so timing does not tell
/// how many leading bytes of a guessed token were right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| RandomError)?;
    Ok(buf)
}

/// A fresh device token: `wsd_` + base64url(32 random bytes).
pub fn new_device_token() -> Result<String, RandomError> {
    let bytes = random_bytes::<32>()?;
    Ok(format!(
        "{DEVICE_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A fresh admin token: `wsa_` + base64url(32 random bytes).
pub fn new_admin_token() -> Result<String, RandomError> {
    let bytes = random_bytes::<32>()?;
    Ok(format!(
        "wsa_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A random stream epoch (hex of 16 bytes).
pub fn new_epoch() -> Result<String, RandomError> {
    let bytes = random_bytes::<16>()?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fresh pairing code, normalised (8 symbols, no dash).
pub fn new_pairing_code() -> Result<String, RandomError> {
    let mut code = String::with_capacity(CODE_LEN);
    // Rejection sampling keeps every symbol equally likely: 248 = 8 * 31.
    while code.len() < CODE_LEN {
        for b in random_bytes::<16>()? {
            if b < 248 && code.len() < CODE_LEN {
                code.push(char::from(CODE_ALPHABET[usize::from(b % 31)]));
            }
        }
    }
    Ok(code)
}

/// How a code is shown: `XXXX-XXXX`.
pub fn display_code(normalised: &str) -> String {
    if normalised.len() == CODE_LEN && normalised.is_ascii() {
        format!("{}-{}", &normalised[..4], &normalised[4..])
    } else {
        normalised.to_owned()
    }
}

/// What a user typed, as stored: upper-case, dashes and spaces removed.
pub fn normalise_code(input: &str) -> String {
    input
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .flat_map(char::to_uppercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_use_only_the_unambiguous_alphabet() {
        for _ in 0..200 {
            let code = new_pairing_code().expect("random");
            assert_eq!(code.len(), CODE_LEN);
            assert!(code.bytes().all(|b| CODE_ALPHABET.contains(&b)), "{code}");
        }
    }

    #[test]
    fn typed_codes_are_normalised() {
        assert_eq!(normalise_code("abcd-efgh"), "ABCDEFGH");
        assert_eq!(normalise_code(" abCD efGH "), "ABCDEFGH");
        assert_eq!(display_code("ABCDEFGH"), "ABCD-EFGH");
    }

    #[test]
    fn device_tokens_are_prefixed_and_long() {
        let t = new_device_token().expect("random");
        assert!(t.starts_with("wsd_"));
        assert_eq!(t.len(), 4 + 43);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
