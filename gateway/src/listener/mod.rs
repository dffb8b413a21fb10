//! Listeners: the accept loops for the ports the snapshot asks for, reconciled after
//! every reload (new ports opened, removed ports closed). Each connection is handled
//! by the handler the assembler gave the listeners (`connection` for a gateway, the
//! sidecar's own for captured ports) according to what its port serves in the
//! current snapshot: plaintext HTTP, TLS chosen by SNI (terminated to HTTP or TCP, or
//! passed through), or opaque TCP. TLS itself is `tls`'s.

pub(crate) mod client_hello;
mod drain;
pub(crate) mod l4;
mod resets;

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
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

use self::client_hello::Prefixed;
pub(crate) use self::drain::Drain;
use crate::{
    pipeline::{self, ConnInfo, Proxy},
    snapshot::{select_chain, ChainAction, FilterChain, ListenerSpec, PortPlan, Snapshot},
    tls::{
        handshake::{self, HANDSHAKE_TIMEOUT},
        server::TlsTermination,
    },
};

/// HTTP/1 request head limit (Envoy `max_request_headers_kb` 60 plus framing).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// hyper's header read timer: a request head must arrive within this (slowloris),
/// and since hyper 1.6 it also closes keep-alive connections idle this long. One
/// timer for both, so it stays above a front load balancer's idle timeout (AWS ALB:
/// 60 s) rather than at Envoy's seconds-long header timeout (hardening.md §4).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one accepted connection on `port`. A gateway's listeners run `connection`;
/// a sidecar's run its own handler, which serves the captured ports and hands the
/// others to `connection`.
pub(crate) type Handler = fn(TcpStream, SocketAddr, u16, Arc<Server>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// What every connection of one listener shares.
pub(crate) struct Server {
    pub(crate) proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    /// Set when this listener's connections are told to finish on shutdown.
    drain: Option<Arc<Drain>>,
}

struct Open {
    local: SocketAddr,
    task: JoinHandle<()>,
    drains: bool,
}

/// The open listeners, keyed by bind address and port as written.
pub(crate) struct Listeners {
    proxy: Arc<Proxy>,
    handler: Handler,
    drain: Arc<Drain>,
    port_map: BTreeMap<u16, u16>,
    max_connections: usize,
    open: HashMap<(IpAddr, u16), Open>,
    /// Draining: only listeners that do not drain stay open.
    draining: bool,
}

impl Listeners {
    /// No listener open yet. Connections are served by `handler`; those of listeners
    /// that drain are counted in `drain`.
    pub(crate) fn new(
        proxy: Arc<Proxy>,
        handler: Handler,
        drain: Arc<Drain>,
        port_map: BTreeMap<u16, u16>,
        max_connections: usize,
    ) -> Self {
        Self { proxy, handler, drain, port_map, max_connections, open: HashMap::new(), draining: false }
    }

    /// Istio drains a sidecar's inbound side only: every listener that drains closes
    /// (and stays closed across reloads), and the outbound one, which does not, keeps
    /// the application able to call out while it finishes its work.
    pub(crate) fn close_for_drain(&mut self) {
        self.draining = true;
        self.open.retain(|(_, port), open| {
            let keep = !open.drains;
            if !keep {
                tracing::info!(port, addr = %open.local, "listener closed for draining");
                open.task.abort();
            }
            keep
        });
    }

    /// Closes every listener and waits until none accepts any more.
    pub(crate) async fn close_all(&mut self) {
        for (_, open) in self.open.drain() {
            open.task.abort();
            let _ = open.task.await;
        }
    }

    /// Opens the listeners `specs` has and we lack, closes those it no longer has.
    /// Returns the ports that could not be bound, with why.
    pub(crate) async fn reconcile(&mut self, specs: &[ListenerSpec]) -> Vec<(u16, io::Error)> {
        let wanted: HashMap<(IpAddr, u16), &ListenerSpec> =
            specs.iter().filter(|s| !self.draining || !s.drains).map(|s| ((s.bind, s.port), s)).collect();
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
                    let server = Arc::new(Server {
                        proxy: self.proxy.clone(),
                        builder: server_builder(),
                        drain: spec.drains.then(|| self.drain.clone()),
                    });
                    let accept = accept_loop(listener, server, self.handler, spec.port, self.max_connections);
                    let task = tokio::spawn(accept.instrument(span));
                    self.open.insert(key, Open { local, task, drains: spec.drains });
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
    pub(crate) fn addrs(&self) -> HashMap<u16, SocketAddr> {
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

/// Accepts connections for `port` and hands each to `handler`.
async fn accept_loop(listener: TcpListener, server: Arc<Server>, handler: Handler, port: u16, max_connections: usize) {
    let active = server.proxy.telemetry.metrics.active_connections(port);
    let overflow = server.proxy.telemetry.metrics.overflow(port);
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
                let open = (OpenConnection::new(&active), server.drain.as_ref().map(|d| d.track()), permit);
                let conn = handler(stream, peer, port, server.clone());
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

/// Serves one connection of a gateway port according to what the port serves right
/// now. Each kind of connection is boxed on its own, so an idle plaintext connection
/// carries only its own state, not room for the largest kind (a TLS one).
pub(crate) async fn connection(stream: TcpStream, peer: SocketAddr, port: u16, server: Arc<Server>) {
    let snapshot = server.proxy.snapshot.current();
    if matches!(snapshot.ports.get(&port), None | Some(PortPlan::Http(_))) {
        // Requests load the snapshot themselves: a long connection keeps no old one alive.
        drop(snapshot);
        let conn = Arc::new(ConnInfo::plain(peer, local_ip(&stream), port));
        return Box::pin(serve_http(stream, conn, server)).await;
    }
    match snapshot.ports.get(&port) {
        Some(PortPlan::Tcp(routes)) => {
            let conn = ConnInfo::plain(peer, local_ip(&stream), port);
            Box::pin(l4::proxy(stream, routes, &conn, &server.proxy, &snapshot.security.tcp_authz)).await
        }
        Some(PortPlan::Tls(chains)) => {
            Box::pin(tls_connection(stream, peer, port, chains, &snapshot, server.clone())).await
        }
        Some(PortPlan::Outbound(_) | PortPlan::Inbound(_)) => {
            tracing::warn!(%peer, port, "a sidecar's port reached a gateway listener; connection closed")
        }
        None | Some(PortPlan::Http(_)) => {}
    }
}

/// The address a connection was made to (the unspecified address if unknown).
fn local_ip(stream: &TcpStream) -> IpAddr {
    stream.local_addr().map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip())
}

/// A connection to a TLS port: the ClientHello's SNI picks the server, which
/// terminates (then HTTP or TCP) or passes the bytes through.
async fn tls_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    chains: &[FilterChain],
    snapshot: &Snapshot,
    server: Arc<Server>,
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
    let conn = ConnInfo { sni, ..ConnInfo::plain(peer, local_ip(&stream), port) };
    let stream = Prefixed::new(raw, stream);
    match &chain.action {
        // The ClientHello bytes already read are replayed to the upstream.
        ChainAction::Passthrough { routes } => {
            l4::proxy(stream, routes, &conn, &server.proxy, &snapshot.security.tcp_authz).await
        }
        ChainAction::Https { tls, .. } => {
            let Some(tls) = terminate(tls, stream, peer).await else { return };
            let conn = ConnInfo { scheme: "https", peer_cert: tls.peer_cert, tls_version: tls.version, ..conn };
            serve_http(tls.stream, Arc::new(conn), server).await
        }
        ChainAction::TlsTcp { tls, routes } => {
            let Some(tls) = terminate(tls, stream, peer).await else { return };
            l4::proxy(tls.stream, routes, &conn, &server.proxy, &snapshot.security.tcp_authz).await
        }
    }
}

/// Completes the handshake and applies the server's client-certificate pinning.
async fn terminate<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &TlsTermination,
    stream: S,
    peer: SocketAddr,
) -> Option<handshake::Accepted<S>> {
    handshake::accept(tls.config.clone(), stream, |leaf| tls.peer.check(leaf))
        .await
        .inspect_err(|why| tracing::info!(%peer, %why, "connection closed"))
        .ok()
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

/// Serves HTTP/1.1 and HTTP/2 on a connection: every request through the pipeline.
pub(crate) async fn serve_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    conn: Arc<ConnInfo>,
    server: Arc<Server>,
) {
    let mut draining = server.drain.as_ref().map(|d| d.watch());
    let drain_started = async move {
        match &mut draining {
            Some(draining) => drop(draining.wait_for(|d| *d).await),
            None => std::future::pending::<()>().await,
        }
    };
    let resets = Arc::new(resets::ResetGuard::default());
    let guard = resets.clone();
    let proxy = server.proxy.clone();
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
    let served = server.builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
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
