//! Device token rotation (protocol §13): a token older than 30 days is
//! traded for a new one (`POST /v1/device/token/rotate`), checked when the
//! daemon starts and then daily.
//!
//! Order is what makes it safe: the service keeps the old token valid for
//! 24 h after answering; the daemon stores the new token (Keychain or file)
//! before the old one is dropped, and only then hands it to the link for its
//! next connection. A crash anywhere in between leaves a token that works:
//! the old one for a day, during which the next check (an hour after a
//! failure) rotates again.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use whatsnap_proto::api::RotateTokenResponse;

use super::pair::{self, CredentialStore, Credentials, PairError};

/// A token older than this is rotated.
pub const ROTATE_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often the token's age is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The next check after a failed one: well inside the old token's 24 h.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(3600);

/// Whether a token issued at `issued_ms` is due at `now_ms`. A token of
/// unknown age (credentials from before rotation existed) is due.
pub fn due(issued_ms: Option<i64>, now_ms: i64) -> bool {
    let limit = i64::try_from(ROTATE_AFTER.as_millis()).unwrap_or(i64::MAX);
    issued_ms.is_none_or(|issued| now_ms.saturating_sub(issued) >= limit)
}

/// Asks the service for a new token, presenting the current one.
pub async fn request_new_token(
    client: &reqwest::Client,
    creds: &Credentials,
) -> Result<RotateTokenResponse, PairError> {
    let response = pair::device_request(
        client,
        creds,
        reqwest::Method::POST,
        "/v1/device/token/rotate",
        Some(Duration::from_secs(30)),
    )
    .await?;
    if !response.status().is_success() {
        return Err(pair::refusal(response).await);
    }
    response.json().await.map_err(|e| PairError::Unreachable {
        server: creds.server.clone(),
        detail: format!("the answer is not a new token: {}", e.without_url()),
    })
}

/// Rotates the token of the credentials at `path` when it is due.
#[derive(Debug, Clone)]
pub struct Rotator {
    /// `credentials.json`.
    pub path: PathBuf,
    /// Where the token is kept.
    pub store: CredentialStore,
    /// The HTTPS client (with the pairing's `--ca-file`); requests here
    /// carry their own 30 s timeout.
    pub client: reqwest::Client,
    /// The link's current token; sent the new one once it is stored.
    pub token: watch::Sender<String>,
}

impl Rotator {
    /// One check at wall-clock time `now_ms`; `Ok(true)` when it rotated.
    pub async fn check(&self, now_ms: i64) -> Result<bool, PairError> {
        let (store, path) = (self.store.clone(), self.path.clone());
        let (creds, paired) = crate::blocking(move || store.load(&path)).await?;
        if !due(paired.token_issued_ms, now_ms) {
            return Ok(false);
        }
        let answer = request_new_token(&self.client, &creds).await?;
        let (store, path) = (self.store.clone(), self.path.clone());
        let token = answer.device_token.clone();
        crate::blocking(move || store.replace_token(&path, &token, now_ms)).await?;
        self.token.send_replace(answer.device_token);
        tracing::info!(
            previous_valid_until_ms = answer.previous_valid_until_ms,
            "device token rotated; the link uses the new one from its next connection"
        );
        Ok(true)
    }

    /// Checks now, then daily (hourly after a failure), until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        schedule(
            || {
                let rotator = self.clone();
                async move {
                    let result = rotator.check(jiff::Timestamp::now().as_millisecond()).await;
                    if let Err(e) = &result {
                        tracing::warn!(
                            "token rotation failed; the current token still works and rotation is retried in an hour: {e}"
                        );
                    }
                    result.map(|_| ())
                }
            },
            shutdown,
        )
        .await;
    }
}

/// Runs `check` at once, then [`CHECK_EVERY`] after a success and
/// [`RETRY_AFTER_FAILURE`] after a failure, until `shutdown`.
pub async fn schedule<F, Fut, E>(mut check: F, shutdown: CancellationToken)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    loop {
        let delay = tokio::select! {
            () = shutdown.cancelled() => return,
            r = check() => if r.is_ok() { CHECK_EVERY } else { RETRY_AFTER_FAILURE },
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    const DAY_MS: i64 = 24 * 3600 * 1000;

    #[test]
    fn a_token_is_due_from_its_thirtieth_day() {
        let issued = 1_700_000_000_000;
        assert!(!due(Some(issued), issued));
        assert!(!due(Some(issued), issued + 30 * DAY_MS - 1));
        assert!(due(Some(issued), issued + 30 * DAY_MS));
        assert!(due(None, issued), "unknown age is due");
    }

    #[tokio::test(start_paused = true)]
    async fn checks_run_at_start_then_daily_and_an_hour_after_a_failure() {
        let start = Instant::now();
        let calls: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let shutdown = CancellationToken::new();
        let (seen, stop) = (calls.clone(), shutdown.clone());
        let task = tokio::spawn(schedule(
            move || {
                let seen = seen.clone();
                let stop = stop.clone();
                async move {
                    let n = {
                        let mut seen = seen.lock().expect("lock");
                        seen.push(start.elapsed());
                        seen.len()
                    };
                    if n == 4 {
                        stop.cancel();
                    }
                    // The second check fails.
                    if n == 2 { Err("service down") } else { Ok(()) }
                }
            },
            shutdown,
        ));
        task.await.expect("schedule ends");
        let hour = Duration::from_secs(3600);
        let day = 24 * hour;
        assert_eq!(
            *calls.lock().expect("lock"),
            vec![Duration::ZERO, day, day + hour, 2 * day + hour]
        );
    }
}
