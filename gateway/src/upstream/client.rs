//! The pooled upstream HTTP clients, shared by every snapshot so that reloads keep warm
//! connections. Plaintext HTTP/1.1 goes through hyper-util's keep-alive pool; HTTP/2
//! keeps one multiplexed connection per endpoint (so the request's own authority is
//! sent as `:authority`, as Envoy does); HTTP/1.1 over TLS keeps idle connections per
//! endpoint, TLS settings and SNI.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{cluster::PoolSettings, Protocol};
use crate::{
    error::{BoxError, SendError},
    tls::UpstreamTls,
};

/// The body type sent upstream and back downstream.
pub(crate) type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Default upstream connect timeout (Istio mesh `connectTimeout`).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle HTTP/1.1 connections kept per endpoint after a burst.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// How long an idle pooled connection is kept when the DestinationRule says nothing.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A connection's identity: endpoint, TLS settings (0 for plaintext) and SNI.
type ConnKey = (SocketAddr, u64, Option<ServerName<'static>>);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A pooled HTTP/1.1 connection and the requests it has carried.
type Counted = (http1::SendRequest<UpstreamBody>, u32);

/// The upstream clients.
#[derive(Clone)]
pub struct Upstreams {
    h1: Client<HttpConnector, UpstreamBody>,
    /// Plain HTTP/1.1 clients for clusters with their own pool settings.
    h1_tuned: Arc<Mutex<HashMap<PoolSettings, Client<HttpConnector, UpstreamBody>>>>,
    h2: Arc<Mutex<HashMap<ConnKey, http2::SendRequest<UpstreamBody>>>>,
    /// HTTP/1.1 connections Wicket pools itself (TLS, or a request limit per
    /// connection), with the requests each has carried.
    h1_own: Arc<Mutex<HashMap<ConnKey, Vec<Counted>>>>,
    /// `SO_MARK` on every upstream socket: a sidecar's own traffic is told apart from
    /// the application's by the capture rules.
    mark: Option<u32>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstreams")
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstreams {
    /// Builds the clients with keep-alive pools.
    pub fn new() -> Self {
        let h1 = h1_client(&PoolSettings::default());
        Self { h1, h1_tuned: Arc::default(), h2: Arc::default(), h1_own: Arc::default(), mark: None }
    }

    /// Clients whose sockets carry `SO_MARK` `mark` (sidecar mode). Every connection
    /// then comes from Wicket's own pools, which set it.
    pub fn with_mark(mark: Option<u32>) -> Self {
        Self { mark, ..Self::new() }
    }

    /// The socket mark of upstream connections.
    pub fn mark(&self) -> Option<u32> {
        self.mark
    }

    /// The plain HTTP/1.1 client for a cluster's pool settings.
    fn h1(&self, pool: &PoolSettings) -> Client<HttpConnector, UpstreamBody> {
        if *pool == PoolSettings::default() {
            return self.h1.clone();
        }
        let Ok(mut tuned) = self.h1_tuned.lock() else { return self.h1.clone() };
        tuned.entry(*pool).or_insert_with(|| h1_client(pool)).clone()
    }

    /// Sends one request to `addr`. For HTTP/1.1 the URI is `http://addr/path`; for
    /// HTTP/2 it carries the authority to send. With `tls`, the connection is TLS and
    /// its SNI is the configured one or the request's host. Connections follow `pool`
    /// (connect timeout, keepalive, idle timeout, reuse).
    pub async fn send(
        &self,
        protocol: Protocol,
        addr: SocketAddr,
        tls: Option<&UpstreamTls>,
        pool: &PoolSettings,
        mut req: http::Request<UpstreamBody>,
    ) -> Result<http::Response<Incoming>, SendError> {
        let tls = tls.map(|t| {
            let sni = t.sni.clone().unwrap_or_else(|| request_server_name(&req, addr));
            (t, sni)
        });
        let key: ConnKey = (addr, tls.as_ref().map_or(0, |(t, _)| t.key), tls.as_ref().map(|(_, n)| n.clone()));
        match (protocol, &tls) {
            (Protocol::Http1, None) if self.mark.is_none() && pool.max_requests.is_none_or(|n| n == 1) => self
                .h1(pool)
                .request(req)
                .await
                .map_err(|e| if e.is_connect() { SendError::Connect(e.into()) } else { SendError::Protocol(e.into()) }),
            (Protocol::Http2, _) => {
                let mut sender = self.h2_sender(key, tls, pool).await?;
                sender.ready().await.map_err(|e| SendError::Protocol(e.into()))?;
                sender.send_request(req).await.map_err(|e| SendError::Protocol(e.into()))
            }
            (Protocol::Http1, _) => {
                // The low-level HTTP/1 client sends the URI as written: origin-form.
                let origin =
                    req.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                *req.uri_mut() = origin.into();
                let (mut sender, used) = self.h1_own_sender(&key, tls, pool).await?;
                sender.ready().await.map_err(|e| SendError::Protocol(e.into()))?;
                let response = sender.send_request(req);
                // Back to the pool at once (ready again when this response ends), unless
                // it has carried its `maxRequestsPerConnection`: then it closes after it.
                if pool.max_requests.is_none_or(|max| used + 1 < max) {
                    if let Ok(mut idle) = self.h1_own.lock() {
                        idle.entry(key).or_default().push((sender, used + 1));
                    }
                }
                response.await.map_err(|e| SendError::Protocol(e.into()))
            }
        }
    }

    /// An idle HTTP/1.1 TLS connection for `key`, or a new one.
    /// An idle connection of Wicket's own HTTP/1.1 pool for `key` with the requests it
    /// has carried, or a new one.
    async fn h1_own_sender(
        &self,
        key: &ConnKey,
        tls: Option<(&UpstreamTls, ServerName<'static>)>,
        pool: &PoolSettings,
    ) -> Result<Counted, SendError> {
        let idle = self.h1_own.lock().ok().and_then(|mut pool| {
            let list = pool.get_mut(key)?;
            list.retain(|(s, _)| !s.is_closed());
            let ready = list.iter().position(|(s, _)| s.is_ready())?;
            Some(list.swap_remove(ready))
        });
        if let Some(idle) = idle {
            return Ok(idle);
        }
        let io = connect(key.0, tls, pool, self.mark).await?;
        let (sender, conn) =
            http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(|e| SendError::Connect(e.into()))?;
        let addr = key.0;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok((sender, 0))
    }

    async fn h2_sender(
        &self,
        key: ConnKey,
        tls: Option<(&UpstreamTls, ServerName<'static>)>,
        pool: &PoolSettings,
    ) -> Result<http2::SendRequest<UpstreamBody>, SendError> {
        let existing = self.h2.lock().ok().and_then(|m| m.get(&key).filter(|s| !s.is_closed()).cloned());
        if let Some(sender) = existing {
            return Ok(sender);
        }
        let io = connect(key.0, tls, pool, self.mark).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        let addr = key.0;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
            }
        });
        // A race opens two connections; the later one is kept. No lock across awaits.
        if let Ok(mut m) = self.h2.lock() {
            m.insert(key, sender.clone());
        }
        Ok(sender)
    }
}

/// A pooled plain HTTP/1.1 client.
fn h1_client(pool: &PoolSettings) -> Client<HttpConnector, UpstreamBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(pool.connect_timeout));
    if let Some((time, interval)) = pool.keepalive {
        connector.set_keepalive(Some(time));
        connector.set_keepalive_interval(interval);
    }
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_timer(TokioTimer::new()).pool_idle_timeout(pool.idle_timeout);
    // A burst opens a connection per concurrent request; once it is over, keep a
    // bounded number idle per endpoint rather than all of them for the idle timeout.
    builder.pool_max_idle_per_host(if pool.max_requests == Some(1) { 0 } else { MAX_IDLE_PER_ENDPOINT });
    builder.build(connector)
}

/// Opens a TCP connection to `addr`, with TLS when asked.
async fn connect(
    addr: SocketAddr,
    tls: Option<(&UpstreamTls, ServerName<'static>)>,
    pool: &PoolSettings,
    mark: Option<u32>,
) -> Result<Box<dyn Io>, SendError> {
    let connect_timeout = pool.connect_timeout;
    let tcp = connect_tcp(addr, connect_timeout, mark).await.map_err(|e| SendError::Connect(e.into()))?;
    if let Some((time, interval)) = pool.keepalive {
        let mut ka = socket2::TcpKeepalive::new().with_time(time);
        if let Some(i) = interval {
            ka = ka.with_interval(i);
        }
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka) {
            tracing::debug!(%addr, error = %e, "cannot set TCP keepalive");
        }
    }
    let Some((tls, sni)) = tls else { return Ok(Box::new(tcp)) };
    let handshake = tokio_rustls::TlsConnector::from(tls.config.clone()).connect(sni, tcp);
    let stream = tokio::time::timeout(connect_timeout, handshake)
        .await
        .map_err(|e| SendError::Connect(e.into()))?
        .map_err(|e| SendError::Connect(e.into()))?;
    Ok(Box::new(stream))
}

/// Opens a TCP connection (no delay) within `timeout`, with `SO_MARK` `mark` if set.
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    timeout: Duration,
    mark: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(mark) = mark {
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    socket.set_nodelay(true)?;
    tokio::time::timeout(timeout, socket.connect(addr)).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect timed out after {timeout:?}"))
    })?
}

/// Istio "auto SNI": the request's host, or the endpoint's IP when it has none.
fn request_server_name(req: &http::Request<UpstreamBody>, addr: SocketAddr) -> ServerName<'static> {
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri().host());
    host.map(crate::http_parts::strip_port)
        .and_then(|h| ServerName::try_from(h.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}
