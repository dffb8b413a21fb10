//! The admin listener: `/ready`, `/healthz`, `/config_dump`. Loopback by default and
//! never on a data-plane port.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use crate::snapshot::SnapshotHandle;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Live configuration.
    pub snapshot: SnapshotHandle,
    /// Set once listeners are bound and the first config is loaded.
    pub ready: Arc<AtomicBool>,
}

/// Binds the admin listener and serves it in the background; returns its address.
pub async fn serve(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(&state, &req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(local)
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/ready" if state.ready.load(Ordering::Acquire) => (StatusCode::OK, "LIVE\n".to_string()),
        "/ready" => (StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n".to_string()),
        "/healthz" => (StatusCode::OK, "OK\n".to_string()),
        "/config_dump" => (StatusCode::OK, config_dump(&state.snapshot)),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

fn config_dump(handle: &SnapshotHandle) -> String {
    let s = handle.current();
    let listeners: Vec<u16> = s.listeners.iter().map(|l| l.port).collect();
    let clusters: Vec<String> = s.clusters.iter().map(|c| c.name.to_string()).collect();
    let diagnostics: Vec<String> = s.diagnostics.iter().map(ToString::to_string).collect();
    let created = s.created.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
    serde_json::json!({
        "version": s.version,
        "created_unix": created,
        "listeners": listeners,
        "clusters": clusters,
        "diagnostics": diagnostics,
    })
    .to_string()
}
