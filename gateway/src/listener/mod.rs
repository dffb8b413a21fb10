//! Listeners: the accept loops for the ports the snapshot asks for, reconciled after
//! every reload (new ports opened, removed ports closed). Each connection is handled
//! by what its port serves in the current snapshot: plaintext HTTP, TLS chosen by SNI
//! (terminated to HTTP or TCP, or passed through), or opaque TCP.

pub mod certs;
pub mod client_hello;
pub mod drain;
pub(crate) mod l4;
mod resets;
pub mod tls;

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::Instrument;

use self::{client_hello::Prefixed, tls::TlsTermination};
use crate::{
    pipeline::{self, ConnInfo, Proxy},
    security::peer::PeerCert,
    snapshot::{select_chain, ChainAction, FilterChain, ListenerSpec, PortPlan, Snapshot},
};

/// HTTP/1 request head limit (Envoy `max_request_headers_kb` 60 plus framing).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// hyper's header read timer: a request head must arrive within this (slowloris),
/// and since hyper 1.6 it also closes keep-alive connections idle this long. One
/// timer for both, so it stays above a front load balancer's idle timeout (AWS ALB:
/// 60 s) rather than at Envoy's seconds-long header timeout (hardening.md §4).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

struct Open {
    local: SocketAddr,
    task: JoinHandle<()>,
}

/// The open listeners, keyed by bind address and port as written.
pub struct Listeners {
    proxy: Arc<Proxy>,
    port_map: BTreeMap<u16, u16>,
    max_connections: usize,
    open: HashMap<(IpAddr, u16), Open>,
    /// A sidecar's outbound port: its connections keep serving while the rest drains.
    outbound: Option<u16>,
    /// Draining: only the outbound listener stays open.
    draining: bool,
}

impl Listeners {
    /// No listener open yet. `outbound` is a sidecar's outbound port.
    pub fn new(proxy: Arc<Proxy>, port_map: BTreeMap<u16, u16>, max_connections: usize, outbound: Option<u16>) -> Self {
        Self { proxy, port_map, max_connections, open: HashMap::new(), outbound, draining: false }
    }

    /// Istio drains a sidecar's inbound side only: every listener but the outbound one
    /// closes (and stays closed across reloads), so the application can still call
    /// out while it finishes its work.
    pub fn close_for_drain(&mut self) {
        self.draining = true;
        let outbound = self.outbound;
        self.open.retain(|(_, port), open| {
            let keep = Some(*port) == outbound;
            if !keep {
                tracing::info!(port, addr = %open.local, "listener closed for draining");
                open.task.abort();
            }
            keep
        });
    }

    /// Closes every listener and waits until none accepts any more.
    pub async fn close_all(&mut self) {
        for (_, open) in self.open.drain() {
            open.task.abort();
            let _ = open.task.await;
        }
    }

    /// Opens the listeners `specs` has and we lack, closes those it no longer has.
    /// Returns the ports that could not be bound, with why.
    pub async fn reconcile(&mut self, specs: &[ListenerSpec]) -> Vec<(u16, io::Error)> {
        let wanted: HashMap<(IpAddr, u16), &ListenerSpec> = specs
            .iter()
            .filter(|s| !self.draining || Some(s.port) == self.outbound)
            .map(|s| ((s.bind, s.port), s))
            .collect();
        self.open.retain(|key, open| {
            let keep = wanted.contains_key(key);
            if !keep {
                tracing::info!(port = key.1, addr = %open.local, "listener closed");
                open.task.abort();
            }
            keep
        });
        let mut failed = Vec::new();
        for (key, spec) in wanted {
            if self.open.contains_key(&key) {
                continue;
            }
            let bind_port = self.port_map.get(&spec.port).copied().unwrap_or(spec.port);
            match TcpListener::bind(SocketAddr::new(spec.bind, bind_port)).await {
                Ok(listener) => {
                    let local = listener.local_addr().unwrap_or(SocketAddr::new(spec.bind, bind_port));
                    tracing::info!(port = spec.port, addr = %local, "listener bound");
                    let span = tracing::info_span!("listener", port = spec.port, addr = %local);
                    let drained = Some(spec.port) != self.outbound;
                    let accept = accept_loop(listener, self.proxy.clone(), spec.port, self.max_connections, drained);
                    let task = tokio::spawn(accept.instrument(span));
                    self.open.insert(key, Open { local, task });
                }
                Err(e) => {
                    tracing::error!(port = spec.port, bind_port, error = %e, "cannot bind listener");
                    failed.push((spec.port, e));
                }
            }
        }
        failed
    }

    /// Bound address of each open listener, by the port written in the Gateway.
    pub fn addrs(&self) -> HashMap<u16, SocketAddr> {
        self.open.iter().map(|((_, port), o)| (*port, o.local)).collect()
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for open in self.open.values() {
            open.task.abort();
        }
    }
}

/// Counts a connection in `wicket_listener_active_connections` while it lives.
struct OpenConnection(Gauge);

impl OpenConnection {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Bound on reading the ClientHello and completing a TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections for `port`; `drained` ones are told to finish and waited for
/// on shutdown.
async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>, port: u16, max_connections: usize, drained: bool) {
    let builder = Arc::new(server_builder());
    let active = proxy.telemetry.metrics.active_connections(port);
    let overflow = proxy.telemetry.metrics.overflow(port);
    let limit = Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    overflow.inc();
                    tracing::debug!(%peer, max_connections, "listener at its connection limit; connection closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let span = tracing::debug_span!("conn", peer.addr = %peer);
                let open = (OpenConnection::new(&active), drained.then(|| proxy.drain.track()), permit);
                let conn = connection(stream, peer, port, proxy.clone(), builder.clone());
                tokio::spawn(
                    async move {
                        conn.await;
                        drop(open);
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                // Out of file descriptors and the like: log, breathe, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection according to what its port serves right now. Each kind of
/// connection is boxed on its own, so an idle plaintext connection carries only its
/// own state, not room for the largest kind (a TLS or captured one).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    let snapshot = proxy.snapshot.current();
    if matches!(snapshot.ports.get(&port), None | Some(PortPlan::Http(_))) {
        // Requests load the snapshot themselves: a long connection keeps no old one alive.
        drop(snapshot);
        let conn = Arc::new(ConnInfo::plain(peer, port));
        return Box::pin(serve_http(stream, conn, proxy, builder)).await;
    }
    match snapshot.ports.get(&port) {
        Some(PortPlan::Tcp(routes)) => {
            let conn = ConnInfo::plain(peer, port);
            Box::pin(l4::proxy(stream, routes, &conn, &proxy, &snapshot.security.tcp_authz)).await
        }
        Some(PortPlan::Outbound(plan)) => {
            Box::pin(crate::sidecar::outbound::serve(stream, peer, port, plan, proxy.clone(), builder)).await
        }
        Some(PortPlan::Inbound(plan)) => {
            let authz = &snapshot.security.tcp_authz;
            Box::pin(crate::sidecar::inbound::serve(stream, peer, port, plan, authz, proxy.clone(), builder)).await
        }
        Some(PortPlan::Tls(chains)) => {
            Box::pin(tls_connection(stream, peer, port, chains, &snapshot, proxy.clone(), builder)).await
        }
        None | Some(PortPlan::Http(_)) => {}
    }
}

/// A connection to a TLS port: the ClientHello's SNI picks the server, which
/// terminates (then HTTP or TCP) or passes the bytes through.
async fn tls_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    chains: &[FilterChain],
    snapshot: &Snapshot,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    let (hello, raw) = match client_hello::read(&mut stream, HANDSHAKE_TIMEOUT).await {
        Ok(read) => read,
        Err(e) => {
            tracing::info!(%peer, port, error = %e, "connection closed before TLS");
            return;
        }
    };
    let sni = hello.sni.as_deref();
    let Some(chain) = select_chain(chains, sni) else {
        tracing::info!(%peer, port, sni, "no server for this SNI; connection closed");
        return;
    };
    let sni: Option<Arc<str>> = hello.sni.as_deref().map(Into::into);
    let conn = ConnInfo { sni, ..ConnInfo::plain(peer, port) };
    let stream = Prefixed::new(raw, stream);
    match &chain.action {
        // The ClientHello bytes already read are replayed to the upstream.
        ChainAction::Passthrough { routes } => {
            l4::proxy(stream, routes, &conn, &proxy, &snapshot.security.tcp_authz).await
        }
        ChainAction::Https { tls, .. } => {
            let Some((tls_stream, peer_cert)) = handshake(tls, stream, peer).await else { return };
            let tls_version = tls::version_name(tls_stream.get_ref().1);
            let conn = Arc::new(ConnInfo { scheme: "https", peer_cert, tls_version, ..conn });
            serve_http(tls_stream, conn, proxy, builder).await
        }
        ChainAction::TlsTcp { tls, routes } => {
            let Some((tls_stream, _)) = handshake(tls, stream, peer).await else { return };
            l4::proxy(tls_stream, routes, &conn, &proxy, &snapshot.security.tcp_authz).await
        }
    }
}

/// Completes the handshake and applies the server's client-certificate pinning.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &TlsTermination,
    stream: S,
    peer: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<S>, Option<Arc<PeerCert>>)> {
    let accept = tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(s)) => {
            let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first());
            if let Err(why) = tls.peer.check(leaf) {
                tracing::info!(%peer, why, "client certificate refused");
                return None;
            }
            let peer_cert = leaf.and_then(PeerCert::from_leaf).map(Arc::new);
            Some((s, peer_cert))
        }
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Serves a plaintext side listener (admin, health) in the background: every request
/// is answered by `handle`.
pub(crate) fn serve_side<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors and the like: breathe, go on.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let answer = handle(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = side_server().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
}

/// The HTTP server of the side listeners (admin, health, injection webhook): small
/// heads that must arrive within seconds, few streams.
pub(crate) fn side_server() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10)).max_buf_size(MAX_HEAD_BYTES);
    b.http2().timer(TokioTimer::new()).max_concurrent_streams(16).max_header_list_size(61_440);
    b
}

fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEAD_BYTES);
    b.http2().timer(TokioTimer::new()).max_concurrent_streams(100).max_header_list_size(61_440);
    b
}

pub(crate) async fn serve_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    conn: Arc<ConnInfo>,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    let mut draining = proxy.drain.watch();
    // A sidecar's outbound connections serve the application until the process exits.
    let drains = conn.direction != pipeline::Direction::Outbound;
    let drain_started = async move {
        if drains {
            let _ = draining.wait_for(|d| *d).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let resets = Arc::new(resets::ResetGuard::default());
    let guard = resets.clone();
    let svc = service_fn(move |req| {
        let (proxy, conn, guard) = (proxy.clone(), conn.clone(), guard.clone());
        async move {
            let ticket = guard.open();
            // Boxed: hyper keeps room for this future on every connection, idle or not.
            let response = Box::pin(pipeline::handle(proxy, conn, req)).await;
            ticket.finish();
            Ok::<_, Infallible>(response)
        }
    });
    let served = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = resets.abuse.notified() => {
            tracing::warn!("closing a connection that resets most of its streams at once (HTTP/2 rapid reset)");
            return;
        }
        () = drain_started => {
            // HTTP/2: GOAWAY; HTTP/1: close after the response in flight.
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
