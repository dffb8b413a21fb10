//! Forwarding a routed request: destination choice, the upstream request head
//! (rewrites, header rules, proxy headers), mirrors, the call itself, WebSocket
//! upgrades, and the response head on the way back.

use std::sync::{atomic::AtomicU64, Arc};

use bytes::Bytes;
use http::{header, uri::PathAndQuery, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tracing::Instrument;

use super::{
    body::{boxed, Counting, Downstream},
    context::RequestCx,
    local::LocalReply,
    ConnInfo, Forwarded, Proxy,
};
use crate::{
    addr_text,
    error::ProxyError,
    route::{Forward, MatchedBlock, Mirror, Route},
    upstream::{self, BoxError, ReplayBody, RequestHead},
};

/// Bodies up to this size are buffered so that retries and mirrors can replay them.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// Headers the proxy sets on every request, named once rather than parsed each time.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers never forwarded (RFC 9110 §7.6.1), besides those `Connection` names.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

impl RequestCx<'_> {
    /// Forwards a routed request; Wasm filters that asked for the request body see it
    /// on its way.
    pub(super) async fn forward(
        &mut self,
        route: &Route,
        fwd: &Forward,
        matched: MatchedBlock<'_>,
        req: Request<Incoming>,
    ) -> Result<Forwarded, LocalReply> {
        // The client's body errors are marked as the client's, before any filter, so a
        // failed send upstream knows whom to blame (a filter's own failure is not).
        let req = req.map(Downstream);
        match &self.wasm {
            Some(w) if !w.is_empty() && !req.body().is_end_stream() => {
                let req = req.map(|b| w.request_body(b));
                send(self, route, fwd, matched, req).await
            }
            _ => send(self, route, fwd, matched, req).await,
        }
    }
}

/// The destination, the upstream request head, mirrors, the call, the response head.
async fn send<B>(
    cx: &mut RequestCx<'_>,
    route: &Route,
    fwd: &Forward,
    matched: MatchedBlock<'_>,
    mut req: Request<B>,
) -> Result<Forwarded, LocalReply>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (proxy, conn, mut flags) = (cx.proxy, cx.conn, cx.flags);
    let Some(dest) = fwd.choose() else {
        return Err(LocalReply::error(&ProxyError::NoRoute {
            authority: String::new(),
            path: req.uri().path().to_string(),
        }));
    };
    cx.upstream.cluster = Some(dest.target.name.clone());
    let Some(cluster) = dest.target.cluster.clone() else {
        return Err(
            LocalReply::error(&ProxyError::ClusterNotFound { cluster: dest.target.name.clone() }).with_flags(flags)
        );
    };

    let websocket = is_websocket_upgrade(req.headers());
    let downstream_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, websocket);
    append_forwarded_for(&mut headers, conn);
    // Envoy SANITIZE_SET: never trust a client's XFCC; set it from the verified cert.
    headers.remove("x-forwarded-client-cert");
    if let Some(peer) = &conn.peer_cert {
        headers.insert("x-forwarded-client-cert", peer.xfcc.clone());
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme));

    // Authority: route-level header rules win over destination-level, then rewrite.
    let authority = route
        .headers
        .request
        .authority
        .clone()
        .or_else(|| dest.headers.request.authority.clone())
        .or_else(|| fwd.rewrite.as_ref().and_then(|r| r.authority.clone()));
    if let Some(a) = authority {
        headers.insert(header::HOST, a);
    } else if !headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(header::HOST, a);
        }
    }
    route.headers.request.apply(&mut headers);
    dest.headers.request.apply(&mut headers);

    let path_and_query = match fwd.rewrite.as_ref().and_then(|r| r.rewrite_path(parts.uri.path(), matched)) {
        None => parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")),
        Some(path) => {
            let full = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            PathAndQuery::try_from(full)
                .map_err(|_| LocalReply::error(&ProxyError::BadRequest("rewritten path is invalid")))?
        }
    };

    let (body, received) = request_body(body, proxy.max_request_body).await?;
    if let ReplayBody::Full(b) = &body {
        cx.upstream.bytes_received = Some(b.len() as u64);
    }
    let (hash_key, session_cookie) = match cluster.lb.new_session_cookie(&headers) {
        Some((key, cookie)) => (Some(key), Some(cookie)),
        None => (cluster.lb.hash_key(&headers, parts.uri.query(), conn.peer.ip()), None),
    };
    let head = RequestHead {
        method: parts.method,
        path_and_query,
        headers,
        hash_key,
        original_dst: conn.original_dst,
        downstream_h2: parts.version == http::Version::HTTP_2,
    };
    for mirror in &route.mirrors {
        if crate::route::roll(mirror.per_million) {
            spawn_mirror(proxy, mirror, &head, &body, route.timeout);
        }
    }

    let retry = if websocket { crate::upstream::RetryPolicy::none() } else { route.retry.clone() };
    let span = tracing::debug_span!("upstream", cluster = %cluster.name);
    let mut attempts = cx.record.span.as_ref().filter(|s| s.sampled()).map(|_| Vec::new());
    let call = upstream::call(&proxy.upstreams, &cluster, head, body, route.timeout, &retry, attempts.as_mut());
    let result = call.instrument(span).await;
    if let (Some(span), Some(attempts)) = (cx.record.span.as_mut(), attempts) {
        span.attempts(attempts);
    }
    cx.upstream.destination = Some(cluster.metrics.clone());
    let metrics = &proxy.telemetry.metrics;
    let outcome = match result {
        Ok(o) => o,
        Err(failure) => {
            cx.upstream.host = failure.upstream;
            metrics.upstream(&cluster.name, failure.error.flag().first_name());
            flags.insert(failure.flags);
            tracing::debug!(error = %failure.error, "upstream failed");
            if body_too_large(&failure.error) {
                return Err(LocalReply::text(StatusCode::PAYLOAD_TOO_LARGE, "payload too large")
                    .with_details("request_payload_too_large".into()));
            }
            return Err(LocalReply::error(&failure.error).with_flags(flags));
        }
    };
    flags.insert(outcome.flags);
    cx.flags = flags;
    let endpoint = outcome.endpoint.endpoint();
    cx.upstream.host = Some(endpoint.addr);
    cx.upstream.destination = Some(endpoint.metrics.clone());
    cx.upstream.mutual_tls = cluster.tls_for(endpoint).is_some_and(|t| t.config.client_auth_cert_resolver.has_certs());
    metrics.upstream(&cluster.name, crate::telemetry::metrics::status_class(outcome.response.status().as_u16()));

    let mut response = outcome.response;
    if let (Some(downstream), StatusCode::SWITCHING_PROTOCOLS) = (downstream_upgrade, response.status()) {
        let upstream_io = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(down), Ok(up)) = (downstream.await, upstream_io.await) {
                let mut down = hyper_util::rt::TokioIo::new(down);
                let mut up = hyper_util::rt::TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            }
        });
        let (parts, _) = response.into_parts();
        return Ok((Response::from_parts(parts, super::body::full(Bytes::new())), received));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    dest.headers.response.apply(&mut parts.headers);
    route.headers.response.apply(&mut parts.headers);
    if let Some(cookie) = session_cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    let guard = outcome.endpoint;
    // The endpoint stays counted as busy until the response body is done.
    let body = body.map_frame(move |f| {
        let _ = &guard;
        f
    });
    Ok((Response::from_parts(parts, boxed(body)), received))
}

/// Buffers small bodies (known length ≤ 64 KiB) so they can be replayed; streams the
/// rest, cut off past `limit` (the stream is reset and the client gets a 413 if the
/// upstream had not answered yet).
async fn request_body<B>(body: B, limit: Option<u64>) -> Result<(ReplayBody, Option<Arc<AtomicU64>>), LocalReply>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok((ReplayBody::Empty, None));
    }
    let known_small = body.size_hint().exact().is_some_and(|n| n <= REPLAY_LIMIT);
    if known_small {
        let collected = Limited::new(body, REPLAY_LIMIT as usize)
            .collect()
            .await
            .map_err(|_| LocalReply::error(&ProxyError::BadRequest("request body could not be read")))?;
        return Ok((ReplayBody::Full(collected.to_bytes()), None));
    }
    let count = Arc::new(AtomicU64::new(0));
    let counted = Counting::new(body, count.clone());
    let streamed = match limit {
        Some(limit) => boxed(Limited::new(counted, usize::try_from(limit).unwrap_or(usize::MAX))),
        None => boxed(counted),
    };
    Ok((ReplayBody::Stream(Some(streamed)), Some(count)))
}

/// Whether a failure was our own body limit cutting the request off.
fn body_too_large(e: &ProxyError) -> bool {
    crate::error::cause::<http_body_util::LengthLimitError>(e).is_some()
}

/// Istio mirroring: fire and forget, `-shadow` appended to the Host, response dropped.
fn spawn_mirror(
    proxy: &Proxy,
    mirror: &Mirror,
    head: &RequestHead,
    body: &ReplayBody,
    timeout: Option<std::time::Duration>,
) {
    let (Some(cluster), Some(body)) = (mirror.target.cluster.clone(), body.copy()) else {
        return;
    };
    let mut headers = head.headers.clone();
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        // Envoy's shadow host: `-shadow` after the host name, before any port.
        let name = crate::http_parts::strip_port(host);
        let shadow = format!("{name}-shadow{}", &host[name.len()..]);
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            headers.insert(header::HOST, v);
        }
    }
    let head = RequestHead {
        method: head.method.clone(),
        path_and_query: head.path_and_query.clone(),
        headers,
        hash_key: head.hash_key,
        original_dst: head.original_dst,
        downstream_h2: head.downstream_h2,
    };
    let upstreams = proxy.upstreams.clone();
    let no_retry = crate::upstream::RetryPolicy::none();
    tokio::spawn(async move {
        if let Ok(outcome) = upstream::call(&upstreams, &cluster, head, body, timeout, &no_retry, None).await {
            let _ = outcome.response.into_body().collect().await;
        }
    });
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Removes hop-by-hop headers and those named by `Connection`; keeps the WebSocket
/// `Upgrade`/`Connection` pair when upgrading. `TE: trailers` survives (gRPC needs it).
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Each removal hashes a name: remove only the ones a look at the names finds.
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|name| HOP_BY_HOP.contains(name)).cloned().collect();
    if doomed.is_empty() {
        return;
    }
    doomed.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok()),
    );
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("trailers"));
    for name in &doomed {
        if keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Envoy with `use_remote_address`: append the TCP peer to `x-forwarded-for`.
fn append_forwarded_for(headers: &mut HeaderMap, conn: &ConnInfo) {
    let peer = addr_text::ip(conn.peer.ip());
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {peer}"),
        _ => peer,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, deflate"),
            ("x-secret", "1"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept", "te"]);
        assert_eq!(h["te"], "trailers");

        let mut plain = headers(&[("x-kept", "1")]);
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1);

        let mut ws = headers(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("keep-alive", "5")]);
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(
            (&ws["connection"], &ws["upgrade"], ws.get("keep-alive")),
            (&"upgrade".parse::<HeaderValue>().unwrap(), &"websocket".parse::<HeaderValue>().unwrap(), None)
        );
    }
}
