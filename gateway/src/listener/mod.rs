//! Listeners: the accept loops for the ports the snapshot asks for, reconciled after
//! every reload (new ports opened, removed ports closed), each connection served as
//! HTTP/1.1 or h2c by hyper and handed to `pipeline::handle`.

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
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::Instrument;

use crate::{
    pipeline::{self, ConnInfo, Proxy},
    snapshot::ListenerSpec,
};

/// HTTP/1 request head limit (Envoy `max_request_headers_kb` 60 plus framing).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Slowloris bound until the dedicated header timer lands (TODO(#8)).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

struct Open {
    local: SocketAddr,
    task: JoinHandle<()>,
}

/// The open listeners, keyed by bind address and port as written.
pub struct Listeners {
    proxy: Arc<Proxy>,
    port_map: BTreeMap<u16, u16>,
    open: HashMap<(IpAddr, u16), Open>,
}

impl Listeners {
    /// No listener open yet.
    pub fn new(proxy: Arc<Proxy>, port_map: BTreeMap<u16, u16>) -> Self {
        Self {
            proxy,
            port_map,
            open: HashMap::new(),
        }
    }

    /// Opens the listeners `specs` has and we lack, closes those it no longer has.
    /// Returns the ports that could not be bound, with why.
    pub async fn reconcile(&mut self, specs: &[ListenerSpec]) -> Vec<(u16, io::Error)> {
        let wanted: HashMap<(IpAddr, u16), &ListenerSpec> =
            specs.iter().map(|s| ((s.bind, s.port), s)).collect();
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
                    let local = listener
                        .local_addr()
                        .unwrap_or(SocketAddr::new(spec.bind, bind_port));
                    tracing::info!(port = spec.port, addr = %local, "listener bound");
                    let span = tracing::info_span!("listener", port = spec.port, addr = %local);
                    let task = tokio::spawn(
                        accept_loop(listener, self.proxy.clone(), spec.port).instrument(span),
                    );
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
        self.open
            .iter()
            .map(|((_, port), o)| (*port, o.local))
            .collect()
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for open in self.open.values() {
            open.task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>, port: u16) {
    let builder = Arc::new(server_builder());
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let conn = Arc::new(ConnInfo {
                    peer,
                    port,
                    scheme: "http",
                });
                let span = tracing::debug_span!("conn", peer.addr = %peer);
                tokio::spawn(serve(stream, conn, proxy.clone(), builder.clone()).instrument(span));
            }
            Err(e) => {
                // Out of file descriptors and the like: log, breathe, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(61_440);
    b
}

async fn serve(
    stream: tokio::net::TcpStream,
    conn: Arc<ConnInfo>,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    let svc = service_fn(move |req| {
        let (proxy, conn) = (proxy.clone(), conn.clone());
        async move { Ok::<_, Infallible>(pipeline::handle(proxy, conn, req).await) }
    });
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
