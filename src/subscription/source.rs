//! One WebSocket connection to the upstream that currently feeds subscriptions: requests,
//! upstream subscriptions, and liveness by ping so a half-open socket is noticed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Why the source can no longer be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Connecting or the WebSocket handshake failed.
    #[error("connect: {0}")]
    Connect(String),
    /// The socket closed or failed.
    #[error("connection lost: {0}")]
    Lost(String),
    /// Nothing arrived, not even a pong, within the liveness window.
    #[error("no pong within {0:?}")]
    Silent(Duration),
    /// A request got no answer in time.
    #[error("{0} timed out")]
    Timeout(String),
    /// The upstream answered a request with an error.
    #[error("{method}: {error}")]
    Rpc {
        /// Method called.
        method: String,
        /// The upstream's error object.
        error: String,
    },
}

/// A notification of one upstream subscription.
#[derive(Debug)]
pub struct Notification {
    /// Upstream subscription id.
    pub subscription: String,
    /// The `result` of the notification.
    pub result: Box<RawValue>,
}

#[derive(Deserialize)]
struct Incoming {
    id: Option<u64>,
    result: Option<Box<RawValue>>,
    error: Option<Box<RawValue>>,
    method: Option<String>,
    params: Option<NotificationParams>,
}

#[derive(Deserialize)]
struct NotificationParams {
    subscription: String,
    result: Box<RawValue>,
}

/// A live WebSocket connection to one upstream.
pub struct Source {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Notifications read while waiting for a request's answer.
    buffered: VecDeque<Notification>,
    /// Answers read while waiting for another request's answer.
    answers: HashMap<u64, Incoming>,
    /// Requests still waiting for an answer: an answer that comes after its request gave up
    /// is dropped rather than kept forever.
    waiting: HashSet<u64>,
    last_seen: Instant,
    ping_after: Duration,
    dead_after: Duration,
}

/// Initial read buffer of the feed's upstream WebSocket.
const FEED_READ_BUFFER: usize = 16 * 1024;

impl Source {
    /// Connects within `connect_timeout`; the socket is pinged after `ping_after` of silence
    /// and given up after `dead_after` of silence.
    pub async fn connect(
        upstream: &crate::config::UpstreamConfig,
        connect_timeout: Duration,
        ping_after: Duration,
        dead_after: Duration,
    ) -> Result<Source, SourceError> {
        // tungstenite zeroes its whole read buffer on every read attempt: its 128 KiB default
        // cost more than the rest of a head's handling; larger frames still grow it.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(FEED_READ_BUFFER);
        let socket = crate::upstream::dial::dial_ws_with(upstream, connect_timeout, Some(config))
            .await
            .map_err(SourceError::Connect)?;
        Ok(Source {
            socket,
            next_id: 1,
            buffered: VecDeque::new(),
            answers: HashMap::new(),
            waiting: HashSet::new(),
            last_seen: Instant::now(),
            ping_after,
            dead_after,
        })
    }

    /// Calls `method` and waits up to `limit` for its result.
    pub async fn request(
        &mut self,
        method: &str,
        params: &str,
        limit: Duration,
    ) -> Result<Box<RawValue>, SourceError> {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id);
        let answer = self.exchange(id, method, params, limit).await;
        self.waiting.remove(&id);
        self.answers.remove(&id);
        answer
    }

    async fn exchange(
        &mut self,
        id: u64,
        method: &str,
        params: &str,
        limit: Duration,
    ) -> Result<Box<RawValue>, SourceError> {
        let body =
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
        self.socket
            .send(Message::text(body))
            .await
            .map_err(|e| SourceError::Lost(e.to_string()))?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(answer) = self.answers.remove(&id) {
                return match (answer.result, answer.error) {
                    (_, Some(error)) => Err(SourceError::Rpc {
                        method: method.into(),
                        error: error.get().into(),
                    }),
                    (Some(result), None) => Ok(result),
                    (None, None) => Err(SourceError::Rpc {
                        method: method.into(),
                        error: "no result".into(),
                    }),
                };
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match timeout(remaining, self.read_one()).await {
                Ok(result) => result?,
                Err(_) => return Err(SourceError::Timeout(method.into())),
            }
        }
    }

    /// From now on, pings after `ping_after` and gives up after `dead_after` of silence
    /// (counted from the last frame, so a source already quiet past the new window is given
    /// up at its next wait).
    pub fn retime(&mut self, ping_after: Duration, dead_after: Duration) {
        self.ping_after = ping_after;
        self.dead_after = dead_after;
    }

    /// The next notification, pinging when quiet; an error means the source is gone.
    /// Cancel-safe: the liveness clock lives in `self`, so a call cut short (for a rotation
    /// check, a retime) loses nothing.
    pub async fn next_notification(&mut self) -> Result<Notification, SourceError> {
        loop {
            if let Some(notification) = self.buffered.pop_front() {
                return Ok(notification);
            }
            let quiet_for = self.last_seen.elapsed();
            if quiet_for >= self.dead_after {
                // Frames may be waiting unread (this task was starved of CPU, not the socket
                // of data): read what is there before declaring the source silent.
                match timeout(Duration::ZERO, self.read_one()).await {
                    Ok(result) => {
                        result?;
                        continue;
                    }
                    Err(_) => return Err(SourceError::Silent(self.dead_after)),
                }
            }
            let wait = if quiet_for >= self.ping_after {
                self.socket
                    .send(Message::Ping(Vec::new().into()))
                    .await
                    .map_err(|e| SourceError::Lost(e.to_string()))?;
                self.dead_after - quiet_for
            } else {
                self.ping_after - quiet_for
            };
            if let Ok(result) = timeout(wait, self.read_one()).await {
                result?;
            }
        }
    }

    /// Reads one frame and files it as a notification or an answer.
    async fn read_one(&mut self) -> Result<(), SourceError> {
        let frame = match self.socket.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(SourceError::Lost(e.to_string())),
            None => return Err(SourceError::Lost("closed".into())),
        };
        self.last_seen = Instant::now();
        let text = match frame {
            Message::Text(text) => text,
            Message::Close(frame) => {
                return Err(SourceError::Lost(format!("closed by upstream: {frame:?}")))
            }
            _ => return Ok(()),
        };
        let Ok(message) = serde_json::from_str::<Incoming>(text.as_str()) else {
            tracing::debug!(frame = %text.as_str(), "unparseable frame from upstream ignored");
            return Ok(());
        };
        match (&message.method, message.id) {
            (Some(method), _) if method == "eth_subscription" => {
                if let Some(params) = message.params {
                    self.buffered.push_back(Notification {
                        subscription: params.subscription,
                        result: params.result,
                    });
                }
            }
            (_, Some(id)) if self.waiting.contains(&id) => {
                self.answers.insert(id, message);
            }
            _ => {}
        }
        Ok(())
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = timeout(Duration::from_secs(1), self.socket.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// An upstream whose WebSocket completes the handshake and then reads nothing, so pings
    /// get no pong: a half-open node. The task holds the socket until aborted.
    async fn silent_upstream() -> (crate::config::UpstreamConfig, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _held = tokio_tungstenite::accept_async(stream).await.unwrap();
            std::future::pending::<()>().await
        });
        let toml = format!("[[upstream]]\nname = \"a\"\nws = \"ws://{addr}\"\n");
        let config = crate::config::Config::from_toml_str(&toml).unwrap();
        (config.upstreams[0].clone(), server)
    }

    #[tokio::test]
    async fn a_retime_applies_to_a_quiet_source_without_reconnecting() {
        let (upstream, server) = silent_upstream().await;
        let hour = Duration::from_secs(3600);
        let mut source = Source::connect(&upstream, Duration::from_secs(5), hour, hour * 2)
            .await
            .unwrap();
        // The feed cuts a wait short to retime the source (its select loop): the liveness
        // clock lives in the source, so the cut loses nothing.
        let cut = timeout(Duration::from_millis(50), source.next_notification()).await;
        assert!(cut.is_err(), "quiet, and far from the old window");
        let dead_after = Duration::from_millis(300);
        source.retime(Duration::from_millis(100), dead_after);
        let outcome = timeout(Duration::from_secs(10), source.next_notification())
            .await
            .expect("given up within the new window, not after two hours");
        assert_eq!(outcome.unwrap_err(), SourceError::Silent(dead_after));
        server.abort();
    }
}
