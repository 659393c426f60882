//! What the feed reads from: the upstream set as [`Candidate`]s, a WebSocket [`Connection`]
//! to one of them, and `eth_getLogs` elsewhere when the source cannot answer one. The feed is
//! generic over [`SourcePool`], so its rules run in unit tests against a scripted pool.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::poll::{answer_result, Polling};
use super::select::Candidate;
use super::source::{Notification, Source, SourceError};
use super::timings::FeedTimings;
use crate::router::tags::Tag;
use crate::router::Router;
use crate::upstream::health::State;

/// One live connection to the upstream feeding subscriptions.
pub trait Connection: Send {
    /// Calls `method` and waits up to `limit` for its result.
    fn request(
        &mut self,
        method: &str,
        params: &str,
        limit: Duration,
    ) -> impl Future<Output = Result<Box<RawValue>, SourceError>> + Send;
    /// The next notification of any upstream subscription; an error means the source is gone.
    fn next_notification(
        &mut self,
    ) -> impl Future<Output = Result<Notification, SourceError>> + Send;
    /// Closes the connection politely.
    fn close(self) -> impl Future<Output = ()> + Send;
    /// Adopts new timings (a reload changed `[health]`) without reconnecting: the liveness
    /// window and poll period apply from the next wait on.
    fn retime(&mut self, timings: &FeedTimings);
}

/// The upstreams the feed may read from.
pub trait SourcePool: Send + Sync + 'static {
    /// A connection to one upstream.
    type Connection: Connection;
    /// Every configured upstream, in priority order.
    fn candidates(&self) -> Vec<Candidate>;
    /// The best head known while no upstream is in rotation and one reports syncing.
    fn syncing(&self) -> Option<u64>;
    /// Block `number` reached clients as a head: no later read may answer below it.
    fn delivered(&self, number: u64);
    /// Connects to the upstream named `name`, with the feed's current `timings`.
    fn connect(
        &self,
        name: &str,
        timings: &FeedTimings,
    ) -> impl Future<Output = Result<Self::Connection, SourceError>> + Send;
    /// `eth_getLogs` with `params` on in-rotation upstreams other than `skip`, the first
    /// answer winning; the error lists why each one failed.
    fn logs_elsewhere(
        &self,
        skip: &str,
        params: &str,
        limit: Duration,
    ) -> impl Future<Output = Result<Box<RawValue>, String>> + Send;
}

/// A feed connection: an upstream WebSocket, or HTTP polling where the upstream has none.
pub enum FeedConnection {
    /// Upstream subscriptions over WebSocket (boxed, as the other: both are large).
    Ws(Box<Source>),
    /// newHeads by polling over HTTP.
    Poll(Box<Polling>),
}

impl Connection for FeedConnection {
    async fn request(
        &mut self,
        method: &str,
        params: &str,
        limit: Duration,
    ) -> Result<Box<RawValue>, SourceError> {
        match self {
            FeedConnection::Ws(source) => source.request(method, params, limit).await,
            FeedConnection::Poll(polling) => match method {
                "eth_subscribe" => polling.subscribe(params),
                "eth_unsubscribe" => Ok(RawValue::from_string("true".into())
                    .map_err(|e| SourceError::Lost(e.to_string()))?),
                _ => polling.call(method, params, limit).await,
            },
        }
    }

    async fn next_notification(&mut self) -> Result<Notification, SourceError> {
        match self {
            FeedConnection::Ws(source) => source.next_notification().await,
            FeedConnection::Poll(polling) => polling.next_head().await,
        }
    }

    async fn close(self) {
        if let FeedConnection::Ws(source) = self {
            source.close().await
        }
    }

    fn retime(&mut self, timings: &FeedTimings) {
        match self {
            FeedConnection::Ws(source) => source.retime(timings.ping_after, timings.dead_after),
            FeedConnection::Poll(polling) => polling.retime(timings.poll_every, timings.dead_after),
        }
    }
}

/// The router's upstream set, reached over WebSocket (and HTTP for logs elsewhere).
pub struct RouterPool {
    /// The router holding the current upstream set (swapped on reload).
    pub router: Arc<Router>,
}

impl SourcePool for RouterPool {
    type Connection = FeedConnection;

    fn candidates(&self) -> Vec<Candidate> {
        let upstreams = self.router.upstreams();
        upstreams
            .by_priority()
            .map(|u| Candidate {
                name: u.name().into(),
                state: u.state().as_str(),
                in_rotation: u.in_rotation(),
                can_feed: u.config.ws.is_some() || u.config.http.is_some(),
                polled: u.config.ws.is_none(),
                head: u.head(),
            })
            .collect()
    }

    fn syncing(&self) -> Option<u64> {
        let upstreams = self.router.upstreams();
        let all = upstreams.all();
        let syncing =
            !upstreams.any_in_rotation() && all.iter().any(|u| u.state() == State::Syncing);
        syncing.then(|| all.iter().map(|u| u.head()).max().unwrap_or(0))
    }

    fn delivered(&self, number: u64) {
        self.router.marks().observe(Tag::Latest, number);
    }

    async fn connect(
        &self,
        name: &str,
        timings: &FeedTimings,
    ) -> Result<FeedConnection, SourceError> {
        let upstreams = self.router.upstreams();
        let upstream = upstreams.all().iter().find(|u| u.name() == name);
        let Some(upstream) = upstream else {
            return Err(SourceError::Connect(format!("{name} is not configured")));
        };
        let config = &upstream.config;
        match (&config.ws, &config.http) {
            (Some(_), _) => {
                let config = config.clone();
                drop(upstreams);
                let source = Source::connect(
                    &config,
                    timings.connect_timeout,
                    timings.ping_after,
                    timings.dead_after,
                )
                .await?;
                Ok(FeedConnection::Ws(Box::new(source)))
            }
            (None, Some(http)) => Ok(FeedConnection::Poll(Box::new(Polling::new(
                upstream.pool().clone(),
                http.clone(),
                timings.poll_every,
                timings.dead_after,
            )))),
            (None, None) => Err(SourceError::Connect(format!("{name} has no endpoint"))),
        }
    }

    async fn logs_elsewhere(
        &self,
        skip: &str,
        params: &str,
        limit: Duration,
    ) -> Result<Box<RawValue>, String> {
        let upstreams = self.router.upstreams();
        let body = Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":{params}}}"#
        ));
        let mut reasons = Vec::new();
        for upstream in upstreams.candidates(|u| u.in_rotation() && u.name() != skip) {
            let post = upstream.post(body.clone());
            let outcome = match tokio::time::timeout(limit, post).await {
                Err(_) => Err(format!("timed out after {limit:?}")),
                Ok(Err(error)) => Err(error.to_string()),
                Ok(Ok(answer)) => answer_result("eth_getLogs", &answer).map_err(|e| e.to_string()),
            };
            match outcome {
                Ok(result) => return Ok(result),
                Err(reason) => reasons.push(format!("{}: {reason}", upstream.name())),
            }
        }
        if reasons.is_empty() {
            reasons.push("no other upstream in rotation".into());
        }
        Err(reasons.join("; "))
    }
}
