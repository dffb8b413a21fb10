//! One proxied request: endpoint choice, attempts with per-try and overall timeouts,
//! retries with back-off on a different endpoint, and the error that ends it.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{header::HeaderValue, uri::PathAndQuery, HeaderMap, HeaderName, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    cluster::Overflowed, retry::AttemptFailure, BoxError, Cluster, EndpointGuard, Outcome, Protocol, RetryPolicy,
    UpstreamBody, Upstreams,
};
use crate::{
    addr_text,
    error::{DownstreamError, ProxyError, ResponseFlags},
};

/// A request body that can be sent again when it was small enough to keep.
#[derive(Debug)]
pub(crate) enum ReplayBody {
    /// No body.
    Empty,
    /// A buffered body, replayable.
    Full(Bytes),
    /// A streamed body: sent once, so only one attempt is possible.
    Stream(Option<UpstreamBody>),
}

impl ReplayBody {
    fn take(&mut self) -> UpstreamBody {
        match self {
            Self::Empty => {
                Empty::new().map_err(|e: std::convert::Infallible| -> BoxError { match e {} }).boxed_unsync()
            }
            Self::Full(b) => {
                Full::new(b.clone()).map_err(|e: std::convert::Infallible| -> BoxError { match e {} }).boxed_unsync()
            }
            Self::Stream(s) => s.take().unwrap_or_else(|| Self::Empty.take()),
        }
    }

    /// True when the body can be sent again (for retries and mirrors).
    pub(crate) fn replayable(&self) -> bool {
        !matches!(self, Self::Stream(_))
    }

    /// A copy of the body for a mirror, when replayable.
    pub(crate) fn copy(&self) -> Option<Self> {
        match self {
            Self::Empty => Some(Self::Empty),
            Self::Full(b) => Some(Self::Full(b.clone())),
            Self::Stream(_) => None,
        }
    }
}

/// The request head sent to every attempt.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// Method.
    pub method: Method,
    /// Path and query as sent upstream (after rewrites).
    pub path_and_query: PathAndQuery,
    /// Headers as sent upstream.
    pub headers: HeaderMap,
    /// The consistent-hash key, the same for every attempt.
    pub hash_key: Option<u64>,
    /// Where the downstream connection was headed, for original-destination clusters.
    pub original_dst: Option<SocketAddr>,
    /// The downstream request was HTTP/2 (for clusters that speak the downstream's protocol).
    pub downstream_h2: bool,
}

impl RequestHead {
    /// A request of the gateway's own (a callout, an export): no hash key, no
    /// original destination, HTTP/1 downstream.
    pub(crate) fn new(method: Method, path_and_query: PathAndQuery, headers: HeaderMap) -> Self {
        Self { method, path_and_query, headers, hash_key: None, original_dst: None, downstream_h2: false }
    }
}

/// A response from an upstream and how it was obtained.
#[derive(Debug)]
pub(crate) struct CallOutcome {
    /// The response.
    pub response: Response<Incoming>,
    /// The endpoint that answered; keeps it counted as busy until dropped.
    pub endpoint: EndpointGuard,
    /// URX when retries ran out on a retriable response.
    pub flags: ResponseFlags,
}

/// A failed call: the error, attempts made, and flags such as URX.
#[derive(Debug)]
pub(crate) struct CallFailure {
    /// What failed.
    pub error: ProxyError,
    /// The last endpoint tried.
    pub upstream: Option<SocketAddr>,
    /// Extra flags (URX).
    pub flags: ResponseFlags,
}

/// One upstream attempt, as a trace shows it (a child span).
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it started.
    pub start: SystemTime,
    /// When it ended (headers received or failure).
    pub end: SystemTime,
    /// Endpoint tried.
    pub addr: SocketAddr,
    /// Status received, or `None` for a failure.
    pub status: Option<u16>,
}

/// Sends `head` + `body` to `cluster` with the route's timeout and retry policy.
pub(crate) async fn call(
    upstreams: &Upstreams,
    cluster: &Arc<Cluster>,
    head: RequestHead,
    mut body: ReplayBody,
    timeout: Option<Duration>,
    retry: &RetryPolicy,
    mut trace: Option<&mut Vec<Attempt>>,
) -> Result<CallOutcome, CallFailure> {
    let failed = |error| CallFailure { error, upstream: None, flags: ResponseFlags::default() };
    let overflow = || failed(ProxyError::Overflow { cluster: cluster.name.clone() });
    let Some(_in_flight) = cluster.breakers.request() else { return Err(overflow()) };
    let deadline = timeout.map(|t| Instant::now() + t);
    // HTTP/1 holds one connection per request in flight (`tcp.maxConnections`); HTTP/2
    // multiplexes over one per endpoint.
    let protocol = cluster.protocol_for(head.downstream_h2);
    let _connection = if protocol == Protocol::Http1 {
        let waited = match deadline {
            Some(d) => tokio::time::timeout_at(d, cluster.breakers.connection()).await,
            None => Ok(cluster.breakers.connection().await),
        };
        match waited {
            Ok(Ok(slot)) => slot,
            Ok(Err(Overflowed)) => return Err(overflow()),
            Err(_) => {
                let after = timeout.unwrap_or_default();
                return Err(failed(ProxyError::UpstreamTimeout { cluster: cluster.name.clone(), after }));
            }
        }
    } else {
        None
    };
    let mut previous = None;
    let mut attempt: u32 = 0;
    // Held while a retry is in flight (DestinationRule `maxRetries`).
    let mut _retrying = None;
    loop {
        attempt += 1;
        let avoid = if retry.avoid_previous_hosts { previous } else { None };
        let Some(endpoint) = cluster.endpoint_for(head.original_dst, avoid, head.hash_key) else {
            let error = ProxyError::NoHealthyUpstream { cluster: cluster.name.clone() };
            return Err(CallFailure { error, upstream: previous, flags: ResponseFlags::default() });
        };
        let addr = endpoint.addr;
        previous = Some(addr);
        let guard = EndpointGuard::new(endpoint);
        let req = build_request(&head, body.take(), addr, protocol, attempt);
        let now = Instant::now();
        let remaining = deadline.map(|d| d.saturating_duration_since(now));
        let limit = match (retry.per_try_timeout, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let started = trace.is_some().then(std::time::SystemTime::now);
        let sent = upstreams.send(protocol, addr, cluster.tls_for(guard.endpoint()), &cluster.pool, req);
        let result = match limit {
            Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| limit),
            None => Ok(sent.await),
        };
        if let (Some(log), Some(start)) = (trace.as_deref_mut(), started) {
            let status = match &result {
                Ok(Ok(r)) => Some(r.status().as_u16()),
                _ => None,
            };
            log.push(Attempt { start, end: SystemTime::now(), addr, status });
        }
        let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
        // A retry needs a slot under the cluster's `maxRetries`; without one the
        // failure stands (Envoy's retry overflow).
        let next_retry = if attempt <= retry.attempts && body.replayable() && !out_of_time {
            cluster.breakers.retry()
        } else {
            None
        };
        let can_retry = next_retry.is_some();
        let retried = attempt > 1;
        let urx = |retriable: bool| {
            if retried && retriable {
                ResponseFlags::URX
            } else {
                ResponseFlags::default()
            }
        };
        let result = match result {
            Ok(Err(source)) => match DownstreamError::fault(&source) {
                // The client's fault: no outlier count, no retry.
                Some(flag) => {
                    let error = ProxyError::DownstreamBody { cluster: cluster.name.clone(), flag, source };
                    return Err(CallFailure { error, upstream: Some(addr), flags: ResponseFlags::default() });
                }
                None => Ok(Err(source)),
            },
            other => other,
        };
        cluster.report(guard.endpoint(), attempt_outcome(&result));
        let failure = match result {
            Ok(Ok(response)) => {
                let retriable = retry.retries_response(response.status(), response.headers());
                if !(can_retry && retriable) {
                    return Ok(CallOutcome { response, endpoint: guard, flags: urx(retriable) });
                }
                None
            }
            Ok(Err(source)) => {
                let kind = if source.is_connect() { AttemptFailure::ConnectFailure } else { AttemptFailure::Reset };
                let retriable = retry.retries_failure(kind);
                if !(can_retry && retriable) {
                    let cluster = cluster.name.clone();
                    let error = match kind {
                        AttemptFailure::ConnectFailure => ProxyError::UpstreamConnect { cluster, addr, source },
                        _ => ProxyError::UpstreamReset { cluster, addr, source },
                    };
                    return Err(CallFailure { error, upstream: Some(addr), flags: urx(retriable) });
                }
                Some(kind)
            }
            Err(after) => {
                let retriable = retry.retries_failure(AttemptFailure::PerTryTimeout);
                if !(can_retry && retriable) {
                    let after = if out_of_time { timeout.unwrap_or(after) } else { after };
                    let error = ProxyError::UpstreamTimeout { cluster: cluster.name.clone(), after };
                    return Err(CallFailure { error, upstream: Some(addr), flags: urx(retriable && !out_of_time) });
                }
                Some(AttemptFailure::PerTryTimeout)
            }
        };
        tracing::debug!(cluster = %cluster.name, %addr, attempt, ?failure, "retrying");
        _retrying = next_retry;
        drop(guard);
        let mut pause = retry.backoff(attempt);
        if let Some(d) = deadline {
            pause = pause.min(d.saturating_duration_since(Instant::now()));
        }
        tokio::time::sleep(pause).await;
    }
}

/// How outlier detection sees an attempt: 502/503/504 are gateway errors, other 5xx
/// server errors, and no response at all a local-origin failure.
fn attempt_outcome<E>(result: &Result<Result<Response<Incoming>, E>, Duration>) -> Outcome {
    match result {
        Ok(Ok(response)) => match response.status().as_u16() {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        },
        _ => Outcome::LocalOrigin,
    }
}

fn build_request(
    head: &RequestHead,
    body: UpstreamBody,
    addr: SocketAddr,
    protocol: Protocol,
    attempt: u32,
) -> Request<UpstreamBody> {
    let mut headers = head.headers.clone();
    static ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
    headers.insert(&ATTEMPT_COUNT, HeaderValue::from(attempt));
    // HTTP/1.1 connects to the URI's authority and keeps `Host`; HTTP/2 sends the
    // request's authority as `:authority` (the connection is chosen by `addr`).
    let (version, authority) = match protocol {
        Protocol::Http1 => (Version::HTTP_11, addr_text::socket_addr(addr)),
        Protocol::Http2 => {
            let host = headers.remove(http::header::HOST);
            let authority = host.and_then(|h| h.to_str().ok().map(str::to_string));
            (Version::HTTP_2, authority.unwrap_or_else(|| addr_text::socket_addr(addr)))
        }
    };
    let uri_for = |authority: String| {
        Uri::builder().scheme("http").authority(authority).path_and_query(head.path_and_query.clone()).build()
    };
    let uri = uri_for(authority).or_else(|_| uri_for(addr_text::socket_addr(addr))).unwrap_or_default();
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}
