//! Application health checks under mutual TLS, as Istio's agent does them. Kubelet
//! probes arrive in plaintext from the node, which STRICT would refuse, so the
//! injector points HTTP probes at this listener (`/app-health/<container>/readyz`,
//! on a port the capture rules leave alone) and records the originals in
//! `ISTIO_KUBE_APP_PROBERS`; the sidecar asks the application on localhost and answers
//! with its status. `/healthz/ready` is the sidecar's own readiness.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::{
    config::{
        istio::{ClientTlsMode, ClientTlsSettings},
        probers::{Prober, Probers},
    },
    tls::{certs::CertStore, UpstreamTls},
    upstream::{BoxError, PoolSettings, Protocol, Upstreams},
};

/// Serves the probe listener on `addr`; `ready` says whether the sidecar is ready.
pub(crate) async fn serve(
    addr: SocketAddr,
    probers: Probers,
    upstreams: Upstreams,
    ready: impl Fn() -> bool + Send + Sync + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    // HTTPS probes check the application's answer, not its certificate (as kubelet).
    let insecure =
        ClientTlsSettings { mode: Some(ClientTlsMode::Simple), insecure_skip_verify: Some(true), ..Default::default() };
    let tls =
        UpstreamTls::compile(&insecure, Protocol::Http1.alpn(), &CertStore::default()).ok().flatten().map(Arc::new);
    let state = Arc::new((probers, upstreams, tls, ready));
    crate::listener::serve_side(listener, move |req: Request<Incoming>| {
        let state = state.clone();
        async move {
            let (probers, upstreams, tls, ready) = &*state;
            let status = match req.uri().path() {
                "/healthz/ready" if ready() => StatusCode::OK,
                "/healthz/ready" => StatusCode::SERVICE_UNAVAILABLE,
                path => match probers.get(path) {
                    Some(p) => check(p, upstreams, tls.as_deref()).await,
                    None => StatusCode::NOT_FOUND,
                },
            };
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = status;
            resp
        }
    });
    Ok(local)
}

/// Asks the application; its status comes back, or 503 when it did not answer in time.
async fn check(p: &Prober, upstreams: &Upstreams, tls: Option<&UpstreamTls>) -> StatusCode {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1));
    let addr = SocketAddr::from(([127, 0, 0, 1], p.http_get.port));
    let https = p.http_get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
    let path = if p.http_get.path.is_empty() { "/" } else { &p.http_get.path };
    let mut req = Request::get(format!("http://{addr}{path}")).header(http::header::HOST, addr.to_string());
    for h in &p.http_get.http_headers {
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    let body = Empty::<Bytes>::new().map_err(|e: Infallible| -> BoxError { match e {} }).boxed_unsync();
    let Ok(req) = req.body(body) else { return StatusCode::INTERNAL_SERVER_ERROR };
    let pool = PoolSettings { connect_timeout: timeout, max_requests: Some(1), ..PoolSettings::default() };
    let sent = upstreams.send(Protocol::Http1, addr, tls.filter(|_| https), &pool, req);
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(resp)) => resp.status(),
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}
