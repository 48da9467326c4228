//! Shared pieces of the relay's integration tests: a real service on
//! 127.0.0.1:0 with its SQLite file in a temp dir, an admin client, the event
//! bus, and a fake daemon that speaks the real protocol over a real websocket.
//! Nothing here sleeps: tests await the event bus or the socket, with a
//! generous timeout only as a guard against hanging forever.

#![allow(dead_code, clippy::missing_panics_doc)]

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use whatsnap_proto::api::{ApiError, DeviceInfo, PairResponse};
use whatsnap_proto::frame::{
    self, Ack, Body, ChatKind, EventMessage, Frame, Handle, HandleKind, Hello, HelloCommands,
    HelloEvents, Stream, Welcome,
};
use whatsnap_relay::client::AdminClient;
use whatsnap_relay::{RelayConfig, RelayEvent, RelayHandle};

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Guard against a hang; nothing waits this long when things work.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestRelay {
    pub handle: RelayHandle,
    pub shutdown: CancellationToken,
    pub client: AdminClient,
    pub events: broadcast::Receiver<RelayEvent>,
    pub dir: tempfile::TempDir,
}

pub async fn start_relay() -> TestRelay {
    start_relay_with(whatsnap_relay::Timing::default()).await
}

pub async fn start_relay_with(timing: whatsnap_relay::Timing) -> TestRelay {
    let dir = tempfile::tempdir().expect("temp dir for the database");
    let shutdown = CancellationToken::new();
    let config = RelayConfig {
        db_path: dir.path().join("relay.db"),
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        admin_token: ADMIN_TOKEN.to_owned(),
        public_url: None,
    };
    let handle = whatsnap_relay::start_with_timing(config, timing, shutdown.clone())
        .await
        .expect("relay starts");
    let client = AdminClient::new(&handle.base_url(), Some(ADMIN_TOKEN.to_owned()));
    let events = handle.subscribe();
    TestRelay {
        handle,
        shutdown,
        client,
        events,
        dir,
    }
}

impl TestRelay {
    /// A client without the admin token (for `pair`).
    pub fn anonymous(&self) -> AdminClient {
        AdminClient::new(&self.handle.base_url(), None)
    }

    /// Waits for the first event matching `pred`, skipping others.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&RelayEvent) -> bool) -> RelayEvent {
        let fut = async {
            loop {
                match self.events.recv().await {
                    Ok(e) if pred(&e) => return e,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("event bus closed"),
                }
            }
        };
        tokio::time::timeout(PATIENCE, fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Creates an account and pairs a device with its code.
    pub async fn paired_account(&self, name: &str) -> (String, PairResponse) {
        let created = self
            .client
            .create_account(name)
            .await
            .expect("account created");
        let paired = self
            .anonymous()
            .pair(&created.pairing.code, device_info())
            .await
            .expect("paired");
        (created.account.id, paired)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/device/ws", self.handle.addr())
    }
}

pub fn device_info() -> DeviceInfo {
    DeviceInfo {
        name: "Mike's MacBook".into(),
        model: "Mac14,2".into(),
        macos_version: "15.5".into(),
        daemon_version: "0.1.0".into(),
        hw_id_hash: None,
    }
}

/// Tries to open the device websocket; on an HTTP refusal returns the status
/// and the `ApiError` body.
pub async fn try_connect(url: &str, token: Option<&str>) -> Result<FakeDaemon, (u16, ApiError)> {
    let mut request = url.into_client_request().expect("ws request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"),
        );
    }
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(whatsnap_proto::SUBPROTOCOL),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => {
            assert_eq!(
                response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some(whatsnap_proto::SUBPROTOCOL),
                "the service selects the whatsnap.v1 subprotocol"
            );
            Ok(FakeDaemon {
                ws,
                events_epoch: "epoch-a".into(),
                next_seq: 1,
                patience: PATIENCE,
            })
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response.body().clone().unwrap_or_default();
            let error: ApiError = serde_json::from_slice(&body).expect("ApiError JSON body");
            Err((status, error))
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

/// A daemon speaking protocol v1 over a real websocket.
pub struct FakeDaemon {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub events_epoch: String,
    pub next_seq: u64,
    /// How long [`FakeDaemon::next`] waits before failing the test; tests of
    /// the service's own timers (on the paused clock) raise it above them.
    pub patience: Duration,
}

/// What the service sent, as the daemon sees it.
#[derive(Debug)]
pub enum Incoming {
    Frame(Box<Frame>),
    Closed { code: u16, reason: String },
}

impl FakeDaemon {
    pub async fn connect(relay: &TestRelay, token: &str) -> FakeDaemon {
        match try_connect(&relay.ws_url(), Some(token)).await {
            Ok(d) => d,
            Err((status, e)) => panic!("connect refused: {status} {e:?}"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send to the service");
    }

    pub async fn send(&mut self, frame: &Frame) {
        self.send_text(&frame.to_json()).await;
    }

    /// The next frame or close from the service (websocket pings skipped).
    pub async fn next(&mut self) -> Incoming {
        let fut = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Incoming::Frame(Box::new(
                            frame::decode(t.as_str()).expect("service frame decodes"),
                        ));
                    }
                    Some(Ok(Message::Close(c))) => {
                        let (code, reason) = c.map_or((1005, String::new()), |c| {
                            (u16::from(c.code), c.reason.as_str().to_owned())
                        });
                        return Incoming::Closed { code, reason };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("websocket error: {e}"),
                    None => {
                        return Incoming::Closed {
                            code: 1006,
                            reason: String::new(),
                        };
                    }
                }
            }
        };
        tokio::time::timeout(self.patience, fut)
            .await
            .expect("the service answers in time")
    }

    pub async fn frame(&mut self) -> Frame {
        match self.next().await {
            Incoming::Frame(f) => *f,
            Incoming::Closed { code, reason } => {
                panic!("closed {code} {reason} while expecting a frame")
            }
        }
    }

    pub async fn close_code(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Incoming::Closed { code, reason } => return (code, reason),
                Incoming::Frame(_) => {}
            }
        }
    }

    /// The next events-stream ack (other frames must not come first).
    pub async fn events_ack(&mut self) -> Ack {
        match self.frame().await.body {
            Body::Ack(a) if a.stream == Stream::Events => a,
            other => panic!("expected an events ack, got {other:?}"),
        }
    }

    pub fn hello(&self, device_id: &str, commands_epoch: &str, commands_acked: u64) -> Hello {
        Hello {
            device_id: device_id.to_owned(),
            daemon_version: "0.1.0".into(),
            macos_version: "15.5".into(),
            protocols: vec![1],
            events: HelloEvents {
                epoch: self.events_epoch.clone(),
                last_seq: self.next_seq - 1,
            },
            commands: HelloCommands {
                epoch: commands_epoch.to_owned(),
                acked_upto: commands_acked,
            },
            settings_version: 0,
            capabilities: vec!["imessage".into(), "sms".into()],
            health: None,
        }
    }

    /// Sends `hello` and returns the `welcome`.
    pub async fn handshake(&mut self, device_id: &str) -> Welcome {
        self.handshake_with(self.hello(device_id, "", 0)).await
    }

    pub async fn handshake_with(&mut self, hello: Hello) -> Welcome {
        let frame = Frame::new(Body::Hello(hello), 1);
        self.send(&frame).await;
        let answer = self.frame().await;
        assert_eq!(answer.reply_to.as_deref(), Some(frame.id.as_str()));
        match answer.body {
            Body::Welcome(w) => w,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Sends a durable event with the next seq; returns the seq.
    pub async fn send_event(&mut self, body: Body) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send(&Frame::new(body, 1).with_seq(seq)).await;
        seq
    }
}

/// An inbound one-to-one message from `handle`.
pub fn inbound(guid: &str, handle: &str, text: &str) -> Body {
    Body::EventMessage(EventMessage {
        event_key: whatsnap_proto::message_event_key(guid),
        guid: guid.to_owned(),
        rowid: 1,
        chat_guid: format!("iMessage;-;{handle}"),
        chat_kind: ChatKind::Direct,
        group_name: None,
        participants: vec![],
        service: "iMessage".into(),
        from_me: false,
        sender: Some(Handle {
            handle: handle.to_owned(),
            kind: HandleKind::Phone,
        }),
        recipients: vec![],
        text: text.to_owned(),
        subject: None,
        reply_to_guid: None,
        thread_originator_guid: None,
        date_ms: 1_732_500_000_000,
        attachments: vec![],
        origin: None,
        backfill: false,
        backfill_request_id: None,
        suspected_echo: false,
        truncated: false,
    })
}
