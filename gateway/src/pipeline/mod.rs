//! The one request path, shared by every listener: it reads like the flow chart in
//! `architecture.md`. Each step calls into the module that owns it; the gateway's own
//! answers (404, 301, fault aborts, ...) are `LocalReply`s, not errors.

mod body;
mod forward;
mod local;

use std::{net::SocketAddr, sync::Arc};

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;

pub use body::ResponseBody;
use local::LocalReply;

use crate::{
    error::{ProxyError, ResponseFlags},
    route::{Abort, Action, Cors, RequestView},
    security::{
        self,
        authz::{AuthzRequest, Decision},
        ext_authz::Verdict,
        jwt::Identity,
    },
    snapshot::{Snapshot, SnapshotHandle},
    telemetry::{metrics::Reporter, AccessRecord, Logged, Prehashed, SourceLabels, Telemetry},
    upstream::Upstreams,
    wasm::{Phase, WasmStream},
};

/// What every request needs from the process: the live snapshot, the upstream
/// clients and the access log.
#[derive(Clone)]
pub struct Proxy {
    /// Live configuration.
    pub snapshot: SnapshotHandle,
    /// Pooled upstream clients.
    pub upstreams: Upstreams,
    /// Access log and metrics.
    pub telemetry: Telemetry,
    /// Largest request body accepted (`--max-request-body`); `None`: no limit.
    pub max_request_body: Option<u64>,
}

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Client address.
    pub peer: SocketAddr,
    /// The listener's port as written (it picks the route table).
    pub listener_port: u16,
    /// The destination port routes and policies match on: the listener port, or for
    /// captured traffic the port the connection was originally headed to.
    pub port: u16,
    /// Which way the traffic flows, for telemetry's `reporter`.
    pub direction: Direction,
    /// Where captured traffic was headed (`SO_ORIGINAL_DST`), for passthrough clusters;
    /// inbound, the application's address.
    pub original_dst: Option<SocketAddr>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// SNI of a TLS connection (selects the server's route table).
    pub sni: Option<Arc<str>>,
    /// The client's verified certificate (mutual TLS).
    pub peer_cert: Option<Arc<crate::tls::peer::PeerCert>>,
    /// Unique per process (Envoy's `connection.id`).
    pub id: u64,
    /// Negotiated TLS version (`TLSv1.3`), for TLS connections.
    pub tls_version: Option<&'static str>,
}

/// Which way a connection's traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Into the mesh through the ingress gateway (Istio reports it as `source`).
    Gateway,
    /// From the local application out (sidecar outbound; `reporter="source"`).
    Outbound,
    /// From a peer to the local application (sidecar inbound; `reporter="destination"`).
    Inbound,
}

impl ConnInfo {
    /// A plaintext connection accepted on a gateway listener.
    pub fn plain(peer: SocketAddr, port: u16) -> Self {
        Self {
            peer,
            listener_port: port,
            port,
            direction: Direction::Gateway,
            original_dst: None,
            scheme: "http",
            sni: None,
            peer_cert: None,
            id: Self::next_id(),
            tls_version: None,
        }
    }

    /// The peer's identity as AuthorizationPolicy `principals` name it: its SPIFFE URI
    /// without the scheme (`cluster.local/ns/default/sa/sleep`).
    pub fn peer_principal(&self) -> Option<&str> {
        let uri = self.peer_cert.as_ref()?.uris.first()?;
        Some(uri.strip_prefix("spiffe://").unwrap_or(uri))
    }

    /// Istio's `reporter` and `source_*` labels for this connection: inbound, the
    /// destination reports and the source is the peer; otherwise this workload.
    pub fn reporter_and_source(&self, own: &Arc<Prehashed<SourceLabels>>) -> (Reporter, Arc<Prehashed<SourceLabels>>) {
        match self.direction {
            Direction::Inbound => {
                let spiffe = self.peer_cert.as_ref().and_then(|p| p.uris.first()).map(String::as_str);
                (Reporter::Destination, SourceLabels::peer(spiffe))
            }
            Direction::Gateway | Direction::Outbound => (Reporter::Source, own.clone()),
        }
    }

    /// What WasmPlugin `match[]` selects on: direction and destination port.
    pub fn traffic(&self) -> crate::wasm::Traffic {
        crate::wasm::Traffic { server: self.direction == Direction::Inbound, port: self.port }
    }

    /// A fresh connection id.
    pub fn next_id() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Handles one request end to end; never fails (failures become responses).
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<Logged<ResponseBody>> {
    let snapshot = proxy.snapshot.current();
    let authority = request_authority(&req);
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut record = AccessRecord::start(
        req.method().as_str(),
        authority.as_deref().unwrap_or(""),
        &path_and_query,
        protocol(req.version()),
        conn.peer,
    );
    record.request_id = ensure_request_id(req.headers_mut());
    if let crate::telemetry::LogFormat::Text(text) = &*snapshot.access_log {
        record.captured = text.capture(req.headers());
    }
    record.format = snapshot.access_log.clone();
    record.scheme = conn.scheme;
    if conn.direction == Direction::Inbound {
        let (reporter, source) = conn.reporter_and_source(&proxy.telemetry.source);
        (record.reporter, record.source) = (reporter, Some(source));
        record.mutual_tls = conn.peer_cert.is_some();
    }
    record.metrics = snapshot.request_metrics;
    if let Some(tracer) = &snapshot.tracer {
        record.span = Some(tracer.start(req.headers_mut()));
    }
    record.grpc =
        req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));

    let mut wasm = (!snapshot.wasm.is_empty()).then(|| WasmStream::new(stream_info(&conn, &req, &record)));
    let reply = match authority {
        None => Err(LocalReply::error(&ProxyError::BadRequest("missing or repeated Host header"))),
        Some(_) if req.version() == Version::HTTP_10 => Err(LocalReply::text(StatusCode::UPGRADE_REQUIRED, "")),
        Some(authority) => {
            route_and_forward(&proxy, &snapshot, &conn, req, &authority, &mut record, wasm.as_mut()).await
        }
    };
    let (mut response, received) = match reply {
        Ok(forwarded) => forwarded,
        Err(local) => (local.into_response(&mut record), None),
    };
    if let Some(mut stream) = wasm.filter(|w| !w.is_empty()) {
        let eos = response.body().is_end_stream();
        if let Err(local) = stream.response_headers(&mut response, eos) {
            response = LocalReply::wasm(local).into_response(&mut record);
        }
        // A response without a body never reaches the body callbacks (as in Envoy).
        if !response.body().is_end_stream() {
            response = response.map(|b| body::boxed(stream.response_body(b)));
        }
    }
    record.response_code = response.status().as_u16();
    record.grpc_status = crate::telemetry::grpc_status(response.headers()).or(record.grpc_status);
    response.map(|b| Logged::new(b, record, received, proxy.telemetry.clone()))
}

type Forwarded = (Response<ResponseBody>, Option<Arc<std::sync::atomic::AtomicU64>>);

/// What Wasm filters read as `source.*`, `request.*` and `connection.*`.
fn stream_info<B>(conn: &ConnInfo, req: &Request<B>, record: &AccessRecord) -> crate::wasm::StreamInfo {
    crate::wasm::StreamInfo {
        source: conn.peer,
        destination_port: conn.port,
        scheme: conn.scheme,
        protocol: protocol(req.version()),
        request_id: record.request_id.clone(),
        start: std::time::SystemTime::now(),
        connection_id: conn.id,
        sni: conn.sni.clone(),
        mtls: conn.peer_cert.is_some(),
        peer_uri_san: conn.peer_cert.as_ref().and_then(|p| p.uris.first().cloned()),
        tls_version: conn.tls_version,
    }
}

/// Virtual host, route, CORS, fault and action, in Istio's order.
async fn route_and_forward(
    proxy: &Proxy,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    authority: &str,
    record: &mut AccessRecord,
    mut wasm: Option<&mut WasmStream>,
) -> Result<Forwarded, LocalReply> {
    let no_route = || {
        LocalReply::error(&ProxyError::NoRoute { authority: authority.to_string(), path: req.uri().path().to_string() })
    };
    let (table, server_names) = snapshot.route_table(conn.listener_port, conn.sni.as_deref()).ok_or_else(no_route)?;
    if let Some(names) = server_names {
        // A reused HTTP/2 connection asking for a host its TLS server does not serve.
        let host = crate::http_parts::strip_port(authority);
        if !names.iter().any(|n| crate::route::host_matches(n, host)) {
            return Err(LocalReply::text(StatusCode::MISDIRECTED_REQUEST, "misdirected request"));
        }
    }
    // Istio's filter order: normalization, JWT, authorization, then routing.
    let identity = secure(proxy, snapshot, conn, &mut req, authority, wasm.as_deref_mut()).await?;
    // Filters may have rewritten `:authority`.
    let rewritten = wasm.is_some().then(|| request_authority(&req)).flatten();
    let authority = rewritten.as_deref().unwrap_or(authority);
    let no_route = || {
        LocalReply::error(&ProxyError::NoRoute { authority: authority.to_string(), path: req.uri().path().to_string() })
    };
    let vhost = table.find_vhost(authority).ok_or_else(no_route)?;
    if vhost.require_tls && conn.scheme == "http" {
        let host = crate::http_parts::strip_port(authority);
        let location = format!("https://{host}{}", req.uri().path_and_query().map_or("/", |p| p.as_str()));
        return Err(LocalReply::redirect(StatusCode::MOVED_PERMANENTLY, &location));
    }
    let view = RequestView {
        path: req.uri().path(),
        query: req.uri().query(),
        method: req.method().as_str(),
        scheme: conn.scheme,
        authority,
        headers: req.headers(),
        port: conn.port,
        claims: identity.as_deref().map(|i| &i.claims),
    };
    let (route, matched) = vhost.find_route(&view).ok_or_else(no_route)?;
    record.route_name = Some(route.name.to_string());
    if let Some(w) = &wasm {
        let cluster = match &route.action {
            Action::Forward(f) => f.choose().map(|d| Arc::from(&*d.target.name)),
            _ => None,
        };
        w.routed(&req, Some(Arc::from(&*route.name)), cluster);
    }

    let origin = req.headers().get(header::ORIGIN).cloned();
    let cors = route.cors.as_ref().zip(origin.as_ref()).filter(|(c, o)| c.allows(o));
    if let Some(policy) = &route.cors {
        if Cors::is_preflight(req.method(), req.headers()) {
            match cors {
                Some((c, o)) => return Err(LocalReply::preflight(c, o)),
                None if !policy.forward_unmatched_preflights => return Err(LocalReply::text(StatusCode::OK, "")),
                None => {}
            }
        }
    }

    if let Some(limit) = proxy.max_request_body {
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(LocalReply::text(StatusCode::PAYLOAD_TOO_LARGE, "payload too large")
                .with_details("request_payload_too_large".into()));
        }
    }

    let mut flags = ResponseFlags::default();
    if let Some(fault) = &route.fault {
        if let Some((delay, share)) = fault.delay {
            if crate::route::roll(share) {
                flags.insert(ResponseFlags::DI);
                tokio::time::sleep(delay).await;
            }
        }
        if let Some((abort, share)) = fault.abort {
            if crate::route::roll(share) {
                flags.insert(ResponseFlags::FI);
                record.flags(flags);
                return Err(match abort {
                    Abort::Http(status) => LocalReply::text(status, "fault filter abort"),
                    Abort::Grpc(code) => LocalReply::grpc(code, "fault filter abort"),
                }
                .with_flags(flags));
            }
        }
    }

    let mut forwarded = match &route.action {
        Action::Redirect(r) => {
            let input = crate::route::RedirectInput {
                scheme: conn.scheme,
                authority,
                path: req.uri().path(),
                query: req.uri().query(),
                listener_port: conn.port,
            };
            return Err(LocalReply::redirect(r.code, &r.location(&input, matched)).with_flags(flags));
        }
        Action::Direct(d) => {
            let mut reply = LocalReply::bytes(d.status, d.body.clone()).with_flags(flags);
            route.headers.response.apply(reply.headers_mut());
            return Err(reply);
        }
        Action::Forward(fwd) => match wasm {
            Some(w) if !w.is_empty() && !req.body().is_end_stream() => {
                let req = req.map(|b| w.request_body(b));
                forward::forward(proxy, conn, route, fwd, matched, req, record, flags).await?
            }
            _ => forward::forward(proxy, conn, route, fwd, matched, req, record, flags).await?,
        },
    };
    if let Some((c, o)) = cors {
        c.response_headers(o, forwarded.0.headers_mut());
    }
    Ok(forwarded)
}

/// Normalizes the path, authenticates the JWT and applies AuthorizationPolicy.
/// Returns the verified identity (for claim-based routing) or the 400/401/403 reply.
async fn secure(
    proxy: &Proxy,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    req: &mut Request<Incoming>,
    authority: &str,
    mut wasm: Option<&mut WasmStream>,
) -> Result<Option<Arc<Identity>>, LocalReply> {
    let security = &snapshot.security;
    let eos = req.body().is_end_stream();
    if req.method().as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(LocalReply::error(&ProxyError::BadRequest("method must be upper-case")));
    }
    match security.normalization.apply(req.uri().path()) {
        Err(_) => return Err(LocalReply::error(&ProxyError::BadRequest("invalid path"))),
        Ok(Some(path)) => set_path(req, &path)?,
        Ok(None) => {}
    }
    if let Some(w) = wasm.as_deref_mut() {
        w.request_headers(&snapshot.wasm, Phase::Authn, conn.traffic(), req, eos).await.map_err(LocalReply::wasm)?;
    }
    // A sidecar applies RequestAuthentication and AuthorizationPolicy to what its
    // workload receives, not to what it calls.
    let policies = conn.direction != Direction::Outbound;
    let identity = match &security.jwt {
        // Istio: CORS preflights skip JWT validation (not authorization).
        Some(jwt) if policies && !Cors::is_preflight(req.method(), req.headers()) => {
            let query = req.uri().query().map(str::to_string);
            jwt.authenticate(req.headers_mut(), query.as_deref()).map_err(|e| {
                let realm = format!("{}://{authority}{}", conn.scheme, req.uri().path());
                LocalReply::unauthenticated(&e.to_string(), &realm)
            })?
        }
        _ => None,
    };
    if let Some(w) = wasm.as_deref_mut() {
        if let Some(id) = &identity {
            w.authenticated(id.clone());
        }
        w.request_headers(&snapshot.wasm, Phase::Authz, conn.traffic(), req, eos).await.map_err(LocalReply::wasm)?;
    }
    if policies && !security.authz.is_empty() {
        let id = identity.as_deref();
        // Istio: CUSTOM first, then DENY, then ALLOW.
        let custom = security.authz.custom_provider(&authz_request(req, conn, snapshot, id, authority)).cloned();
        if let Some(provider) = custom {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
            match provider.check(&proxy.upstreams, req.method(), &pq, authority, req.headers()).await {
                Verdict::Allow(headers) => {
                    for (k, v) in headers {
                        req.headers_mut().insert(k, v);
                    }
                }
                Verdict::Deny { status, headers, body } => {
                    let mut reply = LocalReply::bytes(status, body).with_flags(ResponseFlags::UAEX);
                    for (k, v) in headers {
                        reply.headers_mut().insert(k, v);
                    }
                    return Err(reply.with_details(format!("ext_authz_denied[{}]", provider.name)));
                }
            }
        }
        if let Decision::Deny(policy) = security.authz.evaluate(&authz_request(req, conn, snapshot, id, authority)) {
            return Err(LocalReply::forbidden(&policy));
        }
    }
    if let Some(w) = wasm {
        for phase in [Phase::Stats, Phase::Unspecified] {
            w.request_headers(&snapshot.wasm, phase, conn.traffic(), req, eos).await.map_err(LocalReply::wasm)?;
        }
    }
    Ok(identity)
}

/// The request facts AuthorizationPolicy reads.
fn authz_request<'a>(
    req: &'a Request<Incoming>,
    conn: &'a ConnInfo,
    snapshot: &'a Snapshot,
    identity: Option<&'a Identity>,
    authority: &'a str,
) -> AuthzRequest<'a> {
    AuthzRequest {
        source_ip: conn.peer.ip(),
        remote_ip: security::remote_ip(req.headers(), conn.peer.ip(), snapshot.security.trusted_hops),
        peer_principal: conn.peer_principal(),
        identity,
        host: authority,
        port: conn.port,
        method: req.method().as_str(),
        path: req.uri().path(),
        headers: req.headers(),
        sni: conn.sni.as_deref(),
    }
}

/// Replaces the request's path, keeping its query.
fn set_path(req: &mut Request<Incoming>, path: &str) -> Result<(), LocalReply> {
    let full = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(full.parse().map_err(|_| LocalReply::error(&ProxyError::BadRequest("invalid path")))?);
    *req.uri_mut() =
        http::Uri::from_parts(parts).map_err(|_| LocalReply::error(&ProxyError::BadRequest("invalid path")))?;
    Ok(())
}

/// `:authority` for HTTP/2, `Host` for HTTP/1 (exactly one); absolute-form wins.
fn request_authority<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next()?;
    if hosts.next().is_some() {
        return None;
    }
    host.to_str().ok().filter(|h| !h.is_empty()).map(str::to_string)
}

/// Envoy generates `x-request-id` when missing and passes it on.
fn ensure_request_id(headers: &mut http::HeaderMap) -> String {
    static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
    if let Some(id) = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) {
        return id.to_string();
    }
    // A v4 UUID from the thread-local generator: `Uuid::new_v4` costs a syscall each.
    let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let id = uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_string();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(&X_REQUEST_ID, v);
    }
    id
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP",
    }
}
