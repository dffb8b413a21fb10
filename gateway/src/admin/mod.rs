//! The admin listener: `/ready`, `/healthz`, `/metrics`, `/config_dump`, `/clusters`,
//! `POST /logging`. It binds the `--admin` address (loopback by default) and never a
//! data-plane port.

mod clusters;
mod config_dump;

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::{
    snapshot::SnapshotHandle,
    supervisor::ReloadStatus,
    telemetry::{log_level, Metrics},
};

/// What the admin endpoints read.
#[derive(Clone)]
pub(crate) struct AdminState {
    /// Live configuration.
    pub snapshot: SnapshotHandle,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The last reload's outcome.
    pub status: Arc<RwLock<ReloadStatus>>,
}

/// Binds the admin listener and serves it in the background; returns its address.
/// With a directory alone it starts after the first configuration is loaded and the
/// listeners are bound, so `/ready` answers 200 as soon as it answers at all; the
/// Kubernetes source publishes later, and `/ready` answers 503 until it has.
pub(crate) async fn serve(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let state = Arc::new(state);
    crate::listener::serve_side(listener, move |req| std::future::ready(route(&state, &req)));
    Ok(local)
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") => match state.snapshot.current() {
            // Nothing published yet: the Kubernetes source is still listing.
            s if s.version == 0 => text(StatusCode::SERVICE_UNAVAILABLE, "waiting for the initial configuration\n"),
            s => text(StatusCode::OK, &ready(&s)),
        },
        (&Method::GET, "/healthz") => text(StatusCode::OK, "OK\n"),
        (&Method::GET, "/metrics" | "/stats/prometheus") => metrics(state, req),
        (&Method::GET, "/config_dump") => json(config_dump::render(&state.snapshot.current(), &state.status)),
        (&Method::GET, "/clusters") => json(clusters::render(&state.snapshot.current())),
        (&Method::POST, "/logging") => logging(req),
        (_, "/ready" | "/healthz" | "/metrics" | "/config_dump" | "/clusters" | "/logging") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `LIVE`, then one line per resource not in force as written, so a probe's body tells
/// a policy that fails closed (or a resource serving its last good version) at a glance.
fn ready(snapshot: &crate::snapshot::Snapshot) -> String {
    let mut body = String::from("LIVE\n");
    for r in &snapshot.resources {
        if let Some(state) = r.state.not_applied() {
            let at = if r.origin.is_empty() { String::new() } else { format!(" ({})", r.origin) };
            body.push_str(&format!("{state} {}{at}\n", r.id));
        }
    }
    body
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the same text
/// labelled as Prometheus' text format.
fn metrics(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_openmetrics = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let content_type = if wants_openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    let mut resp = text(StatusCode::OK, "");
    *resp.body_mut() = Full::new(Bytes::from(state.metrics.encode()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn logging(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let level =
        crate::http_parts::query_param(req.uri().query(), "level").map(|l| l.replace("%2C", ",").replace("%3D", "="));
    match level {
        None => text(StatusCode::BAD_REQUEST, "usage: POST /logging?level=debug\n"),
        Some(level) => match log_level::set(&level) {
            Ok(()) => {
                tracing::info!(level, "log level changed");
                text(StatusCode::OK, "level changed\n")
            }
            Err(e) => text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        },
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn json(value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{value:#}\n"))));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
