//! The security phases, in Istio's filter order: path normalization, JWT
//! authentication (RequestAuthentication), authorization (AuthorizationPolicy CUSTOM,
//! then DENY, then ALLOW). Each answers 400, 401 or 403 itself.

use http::Request;
use hyper::body::Incoming;

use super::{context::RequestCx, local::LocalReply, ConnInfo, Direction};
use crate::{
    error::{ProxyError, ResponseFlags},
    route::Cors,
    security::{
        self,
        authz::{AuthzRequest, Decision},
        ext_authz::Verdict,
        jwt::Identity,
    },
    snapshot::Snapshot,
};

impl RequestCx<'_> {
    /// Refuses lower-case methods and normalizes the path (meshConfig
    /// `pathNormalization`); a path that cannot be normalized is a 400.
    pub(super) fn normalize(&mut self, req: &mut Request<Incoming>) -> Result<(), LocalReply> {
        if req.method().as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(LocalReply::error(&ProxyError::BadRequest("method must be upper-case")));
        }
        match self.snapshot.security.normalization.apply(req.uri().path()) {
            Err(_) => Err(LocalReply::error(&ProxyError::BadRequest("invalid path"))),
            Ok(Some(path)) => set_path(req, &path),
            Ok(None) => Ok(()),
        }
    }

    /// RequestAuthentication: a valid token becomes the identity, an invalid one is 401.
    pub(super) fn authenticate(&mut self, req: &mut Request<Incoming>) -> Result<(), LocalReply> {
        let identity = match &self.snapshot.security.jwt {
            // Istio: CORS preflights skip JWT validation (not authorization).
            Some(jwt) if self.applies_policies() && !Cors::is_preflight(req.method(), req.headers()) => {
                let query = req.uri().query().map(str::to_string);
                jwt.authenticate(req.headers_mut(), query.as_deref()).map_err(|e| {
                    let authority = self.authority.as_deref().unwrap_or_default();
                    let realm = format!("{}://{authority}{}", self.conn.scheme, req.uri().path());
                    LocalReply::unauthenticated(&e.to_string(), &realm)
                })?
            }
            _ => None,
        };
        if let (Some(wasm), Some(id)) = (&self.wasm, &identity) {
            wasm.authenticated(id.clone());
        }
        self.identity = identity;
        Ok(())
    }

    /// AuthorizationPolicy: CUSTOM asks its external authorizer, then DENY and ALLOW
    /// decide; a denial is 403.
    pub(super) async fn authorize(&mut self, req: &mut Request<Incoming>) -> Result<(), LocalReply> {
        let authz = &self.snapshot.security.authz;
        if !self.applies_policies() || authz.is_empty() {
            return Ok(());
        }
        let (snapshot, conn, id) = (self.snapshot, self.conn, self.identity.as_deref());
        let authority = self.authority.as_deref().unwrap_or_default();
        let custom = authz.custom_provider(&authz_request(req, conn, snapshot, id, authority)).cloned();
        if let Some(provider) = custom {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
            match provider.check(&self.proxy.upstreams, req.method(), &pq, authority, req.headers()).await {
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
        match authz.evaluate(&authz_request(req, conn, snapshot, id, authority)) {
            Decision::Deny(policy) => Err(LocalReply::forbidden(&policy)),
            _ => Ok(()),
        }
    }

    /// A sidecar applies RequestAuthentication and AuthorizationPolicy to what its
    /// workload receives, not to what it calls.
    fn applies_policies(&self) -> bool {
        self.conn.direction != Direction::Outbound
    }
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
        destination_ip: conn.local,
        peer_principal: conn.peer_principal(),
        identity,
        host: authority,
        port: conn.port,
        method: req.method().as_str(),
        path: req.uri().path(),
        path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        scheme: conn.scheme,
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
