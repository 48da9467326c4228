//! A client of the service's admin API (and of `POST /v1/pair`), shared by
//! the `whatsnap-relay` CLI, the demo and the tests.
//!
//! Every method returns the `whatsnap-proto` body the service answered. A
//! refusal by the service is [`ClientError::Api`] carrying the service's own
//! message (which says what to do); not reaching the service at all is
//! [`ClientError::Connect`]. The CLI maps the two to different exit codes.

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use whatsnap_proto::api::{
    AccountView, ApiError, ContactView, CreateAccountRequest, CreateAccountResponse, DeviceInfo,
    DeviceView, MessageView, PairRequest, PairResponse, PairingCode, RotateTokenResponse,
    SendMessageRequest, SetContactTagRequest,
};

/// Errors of [`AdminClient`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service could not be reached or did not answer.
    #[error(
        "cannot reach the account service at {url}: {source}; check --server (or WHATSNAP_RELAY_URL) and that `whatsnap-relay serve` is running"
    )]
    Connect {
        /// The URL called.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The service refused the request; `message` says what to do.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The service's error code.
        code: String,
        /// The service's message.
        message: String,
    },
    /// The service answered something this client does not understand.
    #[error(
        "the service at {url} answered HTTP {status} with a body this client cannot read ({detail}); is --server a whatsnap-relay of the same version?"
    )]
    Unexpected {
        /// The URL called.
        url: String,
        /// HTTP status.
        status: u16,
        /// What went wrong.
        detail: String,
    },
}

impl ClientError {
    /// The service's error code, when the service refused.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            ClientError::Connect { .. } => None,
        }
    }
}

/// The admin API over HTTP.
#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl AdminClient {
    /// A client of the service at `base_url` (`http://127.0.0.1:8787`) with
    /// the admin token (`None` only for [`AdminClient::pair`]).
    pub fn new(base_url: &str, token: Option<String>) -> Self {
        // reqwest is built without a crypto provider; make sure rustls has
        // one (ring) so building the client cannot panic. A provider already
        // installed by `main` makes this a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        AdminClient {
            http: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    async fn call<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base_url);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
                url,
                status: status.as_u16(),
                detail: e.to_string(),
            });
        }
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(e) => Err(ClientError::Api {
                status: status.as_u16(),
                code: e.error.code,
                message: e.error.message,
            }),
            Err(_) => Err(ClientError::Unexpected {
                url,
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }

    /// `POST /v1/accounts`.
    pub async fn create_account(&self, name: &str) -> Result<CreateAccountResponse, ClientError> {
        let body = CreateAccountRequest {
            name: name.to_owned(),
        };
        self.call(Method::POST, "/v1/accounts", Some(&body)).await
    }

    /// `GET /v1/accounts`.
    pub async fn list_accounts(&self) -> Result<Vec<AccountView>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/accounts", None).await
    }

    /// `POST /v1/accounts/{account}/pairing-code` (id, tag or name).
    pub async fn new_pairing_code(&self, account: &str) -> Result<PairingCode, ClientError> {
        let path = format!("/v1/accounts/{}/pairing-code", segment(account));
        self.call::<(), _>(Method::POST, &path, None).await
    }

    /// `DELETE /v1/accounts/{account}`.
    pub async fn remove_account(&self, account: &str) -> Result<AccountView, ClientError> {
        let path = format!("/v1/accounts/{}", segment(account));
        self.call::<(), _>(Method::DELETE, &path, None).await
    }

    /// `PATCH /v1/accounts/{account}/settings`: set keys (`null` removes one).
    pub async fn update_settings(
        &self,
        account: &str,
        values: &Map<String, Value>,
    ) -> Result<AccountView, ClientError> {
        let path = format!("/v1/accounts/{}/settings", segment(account));
        self.call(Method::PATCH, &path, Some(values)).await
    }

    /// `GET /v1/contacts`.
    pub async fn list_contacts(&self) -> Result<Vec<ContactView>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/contacts", None).await
    }

    /// `PUT /v1/contacts/{contact}/account-tag` (id or handle).
    pub async fn set_contact_tag(
        &self,
        contact: &str,
        tag: &str,
    ) -> Result<ContactView, ClientError> {
        let path = format!("/v1/contacts/{}/account-tag", segment(contact));
        let body = SetContactTagRequest {
            tag: tag.to_owned(),
        };
        self.call(Method::PUT, &path, Some(&body)).await
    }

    /// `POST /v1/messages`.
    pub async fn send_message(
        &self,
        contact: &str,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<MessageView, ClientError> {
        let body = SendMessageRequest {
            contact: contact.to_owned(),
            text: text.to_owned(),
            client_msg_id: client_msg_id.map(str::to_owned),
        };
        self.call(Method::POST, "/v1/messages", Some(&body)).await
    }

    /// `GET /v1/messages[?contact=]`.
    pub async fn list_messages(
        &self,
        contact: Option<&str>,
    ) -> Result<Vec<MessageView>, ClientError> {
        let path = match contact {
            Some(c) => format!("/v1/messages?contact={}", segment(c)),
            None => "/v1/messages".to_owned(),
        };
        self.call::<(), _>(Method::GET, &path, None).await
    }

    /// `POST /v1/pair` (needs no admin token).
    pub async fn pair(&self, code: &str, device: DeviceInfo) -> Result<PairResponse, ClientError> {
        let body = PairRequest {
            code: code.to_owned(),
            device,
        };
        self.call(Method::POST, "/v1/pair", Some(&body)).await
    }

    /// `GET /v1/device`; the client's token must be a device token.
    pub async fn device(&self) -> Result<DeviceView, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/device", None).await
    }

    /// `POST /v1/device/token/rotate`; the client's token must be a device
    /// token, which keeps working 24 h more.
    pub async fn rotate_device_token(&self) -> Result<RotateTokenResponse, ClientError> {
        self.call::<(), _>(Method::POST, "/v1/device/token/rotate", None)
            .await
    }

    /// `GET /healthz`: true when the service answers 200.
    pub async fn healthy(&self) -> Result<bool, ClientError> {
        let url = format!("{}/healthz", self.base_url);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| ClientError::Connect { url, source })?;
        Ok(resp.status() == StatusCode::OK)
    }
}

/// Percent-encodes a path segment or query value (handles like `+1555…` or
/// emails, names with spaces).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("+15551234567"), "%2B15551234567");
        assert_eq!(segment("Front Desk"), "Front%20Desk");
        assert_eq!(segment("a@b.co"), "a%40b.co");
    }
}
