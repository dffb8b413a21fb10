//! The pooled upstream HTTP clients (HTTP/1.1 and HTTP/2 prior knowledge), shared by
//! every snapshot so that reloads keep warm connections.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use super::Protocol;

/// Boxed error of request and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type sent upstream and back downstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Default upstream connect timeout (Istio mesh `connectTimeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The upstream clients.
#[derive(Clone)]
pub struct Upstreams {
    h1: Client<HttpConnector, UpstreamBody>,
    h2: Client<HttpConnector, UpstreamBody>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstreams {
    /// Builds the clients with keep-alive pools.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90));
        let h1 = builder.build(connector.clone());
        let h2 = builder
            .http2_only(true)
            .timer(TokioTimer::new())
            .build(connector);
        Self { h1, h2 }
    }

    /// Sends one request; the URI must be absolute (`http://ip:port/path`).
    pub async fn send(
        &self,
        protocol: Protocol,
        req: http::Request<UpstreamBody>,
    ) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
        match protocol {
            Protocol::Http1 => self.h1.request(req).await,
            Protocol::Http2 => self.h2.request(req).await,
        }
    }
}
