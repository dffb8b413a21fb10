//! The pooled upstream HTTP clients, shared by every snapshot so that reloads keep warm
//! connections. HTTP/1.1 goes through hyper-util's keep-alive pool (one connection per
//! request in flight); HTTP/2 keeps one multiplexed connection per endpoint, so that the
//! request's own authority is sent as `:authority`, as Envoy does.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};

use super::Protocol;

/// Boxed error of request and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type sent upstream and back downstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Default upstream connect timeout (Istio mesh `connectTimeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why sending a request upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made.
    #[error("connect failed")]
    Connect(#[source] BoxError),
    /// The connection failed or was reset before a response arrived.
    #[error("connection failed before a response")]
    Protocol(#[source] BoxError),
}

impl SendError {
    /// True when the TCP connection could not be made (Envoy `connect-failure`).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

/// The upstream clients.
#[derive(Clone)]
pub struct Upstreams {
    h1: Client<HttpConnector, UpstreamBody>,
    h2: Arc<Mutex<HashMap<SocketAddr, http2::SendRequest<UpstreamBody>>>>,
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
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self { h1, h2: Arc::default() }
    }

    /// Sends one request to `addr`. For HTTP/1.1 the URI is `http://addr/path`; for
    /// HTTP/2 it carries the authority to send, and `addr` says where to connect.
    pub async fn send(
        &self,
        protocol: Protocol,
        addr: SocketAddr,
        req: http::Request<UpstreamBody>,
    ) -> Result<http::Response<Incoming>, SendError> {
        match protocol {
            Protocol::Http1 => self.h1.request(req).await.map_err(|e| {
                if e.is_connect() {
                    SendError::Connect(e.into())
                } else {
                    SendError::Protocol(e.into())
                }
            }),
            Protocol::Http2 => {
                let mut sender = self.h2_sender(addr).await?;
                sender.ready().await.map_err(|e| SendError::Protocol(e.into()))?;
                sender.send_request(req).await.map_err(|e| SendError::Protocol(e.into()))
            }
        }
    }

    /// The open HTTP/2 connection to `addr`, or a new one. The lock is never held
    /// across an await: a race opens two connections and the later one is kept.
    async fn h2_sender(&self, addr: SocketAddr) -> Result<http2::SendRequest<UpstreamBody>, SendError> {
        let existing = self.h2.lock().ok().and_then(|m| m.get(&addr).filter(|s| !s.is_closed()).cloned());
        if let Some(sender) = existing {
            return Ok(sender);
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|e| SendError::Connect(e.into()))?
            .map_err(|e| SendError::Connect(e.into()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
            }
        });
        if let Ok(mut m) = self.h2.lock() {
            m.insert(addr, sender.clone());
        }
        Ok(sender)
    }
}
