//! Clean-room reader of the text inside `message.attributedBody`.
//!
//! STUB: being written by a helper. The signatures below are the contract.

use thiserror::Error;

/// Why a body could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TypedStreamError {
    /// Placeholder until the decoder lands.
    #[error("attributedBody is not a typedstream")]
    NotTypedStream,
}

/// The plain text of an `attributedBody` blob.
pub fn decode_text(blob: &[u8]) -> Result<String, TypedStreamError> {
    let _ = blob;
    Err(TypedStreamError::NotTypedStream)
}

/// The text of a message row: `attributedBody` first, `text` as fallback.
pub fn message_text(
    attributed_body: Option<&[u8]>,
    text: Option<&str>,
) -> Result<Option<String>, TypedStreamError> {
    let _ = attributed_body;
    Ok(text.map(str::to_owned))
}
