//! TLS to the service: one HTTPS client for `pair`, `unpair`, `doctor` and
//! the daemon's websocket.
//!
//! Certificates are checked by rustls against the platform's roots (the
//! macOS trust settings through reqwest's platform verifier) plus, for a
//! self-hosted service with its own CA, the certificates of `--ca-file`. The
//! websocket is opened through the same client (an HTTP/1.1 upgrade), so a
//! service that `pair` could reach is one the link can reach: there is only
//! one certificate check to get right.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is unreadable or holds no certificate.
    #[error(
        "cannot use the CA file {path}: {detail}; pass a PEM file holding the certificate of the CA that signed the service's certificate (-----BEGIN CERTIFICATE-----)"
    )]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The HTTPS client could not be set up.
    #[error("cannot set up HTTPS: {0}; reinstall whatsnap-mac")]
    Client(String),
}

/// The HTTPS client: platform roots plus those in `ca_file`; `timeout`
/// bounds whole requests (`None` for the websocket, which lives long).
pub fn http_client(
    ca_file: Option<&Path>,
    timeout: Option<Duration>,
) -> Result<reqwest::Client, TlsError> {
    // reqwest is built without a crypto provider; `main` installs ring, and
    // this makes library users (tests, the demo) safe too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .user_agent(format!("whatsnap-mac/{}", env!("CARGO_PKG_VERSION")));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    if let Some(path) = ca_file {
        builder = builder.tls_certs_merge(read_ca_file(path)?);
    }
    builder
        .build()
        .map_err(|e| TlsError::Client(error_chain(&e)))
}

/// The certificates of a PEM file.
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let bad = |detail: String| TlsError::CaFile {
        path: path.to_path_buf(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(error_chain(&e)))?;
    if certs.is_empty() {
        return Err(bad("it holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// An error and its causes on one line, with a hint when the cause is a
/// certificate the platform does not trust.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    let lower = out.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        out.push_str(
            " (a self-hosted service with its own CA needs `whatsnap-mac pair --ca-file PATH`)",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = http_client(Some(&path), None).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("BEGIN CERTIFICATE"), "{text}");
        let missing = http_client(Some(&dir.path().join("nope.pem")), None).expect_err("missing");
        assert!(missing.to_string().contains("nope.pem"), "{missing}");
    }
}
