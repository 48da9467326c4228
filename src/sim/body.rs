//! Writes `attributedBody` blobs the way Messages does.
//!
//! STUB: being written by a helper. The signature below is the contract.

/// The typedstream bytes Messages stores for a plain text message.
pub fn attributed_body(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}
