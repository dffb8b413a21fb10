//! The one request path, shared by every listener. `handle` reads as the flow chart
//! in `architecture.md`: one line per phase, each a method of the request's context
//! (`RequestCx`) calling into the module that owns it. The gateway's own answers
//! (404, 301, 401, 403, fault aborts, ...) are `LocalReply`s, not errors.

mod body;
mod conn;
mod context;
mod forward;
mod local;
mod secure;

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

pub(crate) use body::ResponseBody;
pub(crate) use conn::{ConnInfo, Direction};
use context::{request_authority, RequestCx};
use local::LocalReply;

use crate::{
    error::{ProxyError, ResponseFlags},
    route::{Abort, Action, Cors, Forward, MatchedBlock, RequestView, Route, RouteTable},
    snapshot::SnapshotHandle,
    telemetry::{Logged, Telemetry},
    upstream::Upstreams,
    wasm::Phase,
};

/// What every request needs from the process: the live snapshot, the upstream
/// clients and the access log.
#[derive(Clone)]
pub(crate) struct Proxy {
    /// Live configuration.
    pub snapshot: SnapshotHandle,
    /// Pooled upstream clients.
    pub upstreams: Upstreams,
    /// Access log and metrics.
    pub telemetry: Telemetry,
    /// Largest request body accepted (`--max-request-body`); `None`: no limit.
    pub max_request_body: Option<u64>,
}

/// Handles one request end to end; never fails (failures become responses).
pub(crate) async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<Logged<ResponseBody>> {
    let snapshot = proxy.snapshot.current();
    let mut cx = RequestCx::start(&proxy, &snapshot, &conn, &mut req);
    let reply = cx.request(req).await;
    let response = cx.respond(reply);
    cx.finish(response)
}

type Forwarded = (Response<ResponseBody>, Option<Arc<std::sync::atomic::AtomicU64>>);

impl<'a> RequestCx<'a> {
    /// The request phases, in Istio's filter order; the first that answers ends it.
    async fn request(&mut self, mut req: Request<Incoming>) -> Result<Forwarded, LocalReply> {
        let table = self.accept(&req)?;
        self.normalize(&mut req)?;
        self.filters(Phase::Authn, &mut req).await?;
        self.authenticate(&mut req)?;
        self.filters(Phase::Authz, &mut req).await?;
        self.authorize(&mut req).await?;
        self.filters(Phase::Stats, &mut req).await?;
        self.filters(Phase::Unspecified, &mut req).await?;
        let (route, matched) = self.route(table, &req)?;
        let cors = self.cors(route, &req)?;
        let forward = self.local_actions(route, matched, &req).await?;
        let mut forwarded = self.forward(route, forward, matched, req).await?;
        if let Some((policy, origin)) = cors {
            policy.response_headers(&origin, forwarded.0.headers_mut());
        }
        Ok(forwarded)
    }

    /// What the listener serves for this request: a `Host`, HTTP/1.1 or later, the
    /// route table of its port (and TLS server), a host that server serves.
    fn accept(&self, req: &Request<Incoming>) -> Result<&'a RouteTable, LocalReply> {
        let Some(authority) = self.authority.as_deref() else {
            return Err(LocalReply::error(&ProxyError::BadRequest("missing or repeated Host header")));
        };
        if req.version() == Version::HTTP_10 {
            return Err(LocalReply::text(StatusCode::UPGRADE_REQUIRED, ""));
        }
        let (table, server_names) = self
            .snapshot
            .route_table(self.conn.listener_port, self.conn.sni.as_deref())
            .ok_or_else(|| self.no_route(req))?;
        if let Some(names) = server_names {
            // A reused HTTP/2 connection asking for a host its TLS server does not serve.
            let host = crate::http_parts::strip_port(authority);
            if !names.iter().any(|n| crate::route::host_matches(n, host)) {
                return Err(LocalReply::text(StatusCode::MISDIRECTED_REQUEST, "misdirected request"));
            }
        }
        Ok(table)
    }

    /// The virtual host by authority (as filters left it), then its first matching
    /// rule; an HTTP request to a TLS-only host is redirected to HTTPS.
    fn route(
        &mut self,
        table: &'a RouteTable,
        req: &Request<Incoming>,
    ) -> Result<(&'a Route, MatchedBlock<'a>), LocalReply> {
        if self.wasm.is_some() {
            // Filters may have rewritten `:authority`.
            if let Some(rewritten) = request_authority(req) {
                self.authority = Some(rewritten);
            }
        }
        let authority = self.authority.as_deref().unwrap_or_default();
        let vhost = table.find_vhost(authority).ok_or_else(|| self.no_route(req))?;
        if vhost.require_tls && self.conn.scheme == "http" {
            let host = crate::http_parts::strip_port(authority);
            let location = format!("https://{host}{}", req.uri().path_and_query().map_or("/", |p| p.as_str()));
            return Err(LocalReply::redirect(StatusCode::MOVED_PERMANENTLY, &location));
        }
        let view = RequestView {
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method().as_str(),
            scheme: self.conn.scheme,
            authority,
            headers: req.headers(),
            port: self.conn.port,
            claims: self.identity.as_deref().map(|i| &i.claims),
        };
        let (route, matched) = vhost.find_route(&view).ok_or_else(|| self.no_route(req))?;
        self.route_name = Some(route.name.clone());
        if let Some(w) = &self.wasm {
            let cluster = match &route.action {
                Action::Forward(f) => f.choose().map(|d| Arc::from(&*d.target.name)),
                _ => None,
            };
            w.routed(req, Some(Arc::from(&*route.name)), cluster);
        }
        Ok((route, matched))
    }

    /// CORS: a preflight is answered here; otherwise the policy that allows the
    /// request's origin, for the response headers.
    fn cors(&self, route: &'a Route, req: &Request<Incoming>) -> Result<Option<(&'a Cors, HeaderValue)>, LocalReply> {
        let Some(policy) = &route.cors else { return Ok(None) };
        let allowed = req.headers().get(header::ORIGIN).filter(|o| policy.allows(o)).cloned();
        if Cors::is_preflight(req.method(), req.headers()) {
            match &allowed {
                Some(origin) => return Err(LocalReply::preflight(policy, origin)),
                None if !policy.forward_unmatched_preflights => return Err(LocalReply::text(StatusCode::OK, "")),
                None => {}
            }
        }
        Ok(allowed.map(|origin| (policy, origin)))
    }

    /// What the gateway answers itself: a body over the limit, an injected delay or
    /// abort, a redirect, a direct response. Otherwise the route forwards.
    async fn local_actions(
        &mut self,
        route: &'a Route,
        matched: MatchedBlock<'_>,
        req: &Request<Incoming>,
    ) -> Result<&'a Forward, LocalReply> {
        if let Some(limit) = self.proxy.max_request_body {
            let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                return Err(LocalReply::text(StatusCode::PAYLOAD_TOO_LARGE, "payload too large")
                    .with_details("request_payload_too_large".into()));
            }
        }
        if let Some(fault) = &route.fault {
            if let Some((delay, share)) = fault.delay {
                if crate::route::roll(share) {
                    self.flags.insert(ResponseFlags::DI);
                    tokio::time::sleep(delay).await;
                }
            }
            if let Some((abort, share)) = fault.abort {
                if crate::route::roll(share) {
                    self.flags.insert(ResponseFlags::FI);
                    return Err(match abort {
                        Abort::Http(status) => LocalReply::text(status, "fault filter abort"),
                        Abort::Grpc(code) => LocalReply::grpc(code, "fault filter abort"),
                    }
                    .with_flags(self.flags));
                }
            }
        }
        match &route.action {
            Action::Redirect(r) => {
                let input = crate::route::RedirectInput {
                    scheme: self.conn.scheme,
                    authority: self.authority.as_deref().unwrap_or_default(),
                    path: req.uri().path(),
                    query: req.uri().query(),
                    listener_port: self.conn.port,
                };
                Err(LocalReply::redirect(r.code, &r.location(&input, matched)).with_flags(self.flags))
            }
            Action::Direct(d) => {
                let mut reply = LocalReply::bytes(d.status, d.body.clone()).with_flags(self.flags);
                route.headers.response.apply(reply.headers_mut());
                Err(reply)
            }
            Action::Forward(forward) => Ok(forward),
        }
    }

    fn no_route(&self, req: &Request<Incoming>) -> LocalReply {
        let authority = self.authority.clone().unwrap_or_default();
        LocalReply::error(&ProxyError::NoRoute { authority, path: req.uri().path().to_string() })
    }
}
