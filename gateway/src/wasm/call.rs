//! `proxy_http_call` (ABI §10): an outbound request through the gateway's own
//! upstream stack (clusters, pools, breakers, TLS), answered later with
//! `proxy_on_http_call_response` on the root context of the VM that asked.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{uri::PathAndQuery, HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::{BodyExt, Limited};

use super::{
    host::{CallAnswer, Host},
    status::{Fail, BAD_ARGUMENT, BROKEN_CONNECTION, INTERNAL_FAILURE},
};
use crate::upstream::{self, Cluster, ReplayBody, RequestHead, RetryPolicy, Upstreams};

/// Response bodies an HTTP call may return to a filter.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// The clusters a call may name: those of the live configuration (a call names a
/// cluster the operator configured, nothing else). The snapshot handle is one.
pub trait ClusterLookup: Send + Sync {
    /// A configured cluster by Envoy name (`outbound|80||auth.example.com`),
    /// `host:port`, or a service host with one port.
    fn cluster(&self, name: &str) -> Option<Arc<Cluster>>;
}

/// What a call needs from the gateway: the upstream clients and the clusters.
#[derive(Clone)]
pub struct Dispatcher {
    /// Upstream clients.
    pub upstreams: Upstreams,
    /// The clusters calls are resolved against.
    pub clusters: Arc<dyn ClusterLookup>,
}

/// Starts a call for the effective context; returns its token.
pub(super) fn start(
    host: &mut Host,
    upstream: &str,
    head: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<u32, Fail> {
    let dispatcher = host.runtime.dispatcher().ok_or(INTERNAL_FAILURE)?;
    let Some(cluster) = dispatcher.clusters.cluster(upstream) else {
        tracing::warn!(plugin = %host.plugin.name, upstream, "http_call to a cluster that is not configured");
        return Err(BAD_ARGUMENT.into());
    };
    let (mut method, mut path, mut authority) = (None, None, None);
    let mut headers = HeaderMap::new();
    for (k, v) in head {
        match k.as_slice() {
            b":method" => method = Method::from_bytes(&v).ok(),
            b":path" => path = PathAndQuery::try_from(v).ok(),
            b":authority" => authority = HeaderValue::from_bytes(&v).ok(),
            b":scheme" => {}
            _ => {
                let name = HeaderName::from_bytes(&k).map_err(|_| BAD_ARGUMENT)?;
                headers.append(name, HeaderValue::from_bytes(&v).map_err(|_| BAD_ARGUMENT)?);
            }
        }
    }
    let (Some(method), Some(path_and_query), Some(authority)) = (method, path, authority) else {
        return Err(BAD_ARGUMENT.into());
    };
    headers.insert(http::header::HOST, authority);
    if !body.is_empty() {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let rt = tokio::runtime::Handle::try_current().map_err(|_| INTERNAL_FAILURE)?;
    let token = host.next_token;
    host.next_token = host.next_token.wrapping_add(1).max(1);
    host.calls.insert(token, host.effective);
    let vm = host.vm.clone();
    let head = RequestHead::new(method, path_and_query, headers);
    let body = if body.is_empty() { ReplayBody::Empty } else { ReplayBody::Full(Bytes::from(body)) };
    rt.spawn(async move {
        let answer = answer(&dispatcher.upstreams, &cluster, head, body, timeout).await;
        if let Some(vm) = vm.upgrade() {
            vm.deliver_call(token, answer);
        }
    });
    Ok(token)
}

async fn answer(
    upstreams: &Upstreams,
    cluster: &Arc<Cluster>,
    head: RequestHead,
    body: ReplayBody,
    timeout: Duration,
) -> CallAnswer {
    let timed_out = || CallAnswer {
        headers: vec![(b":status".to_vec(), b"504".to_vec())],
        body: Bytes::from_static(b"upstream request timeout"),
        trailers: Vec::new(),
        status: (0, String::new()),
    };
    let failed = |why: String| CallAnswer { status: (BROKEN_CONNECTION as u32, why), ..CallAnswer::default() };
    let no_retry = RetryPolicy::none();
    let call = upstream::call(upstreams, cluster, head, body, Some(timeout), &no_retry, None);
    let outcome = match tokio::time::timeout(timeout, call).await {
        Err(_) => return timed_out(),
        Ok(Err(f)) if f.error.flag().first_name() == "UT" => return timed_out(),
        Ok(Err(f)) => return failed(f.error.to_string()),
        Ok(Ok(o)) => o,
    };
    let (parts, body) = outcome.response.into_parts();
    let collected = match tokio::time::timeout(timeout, Limited::new(body, MAX_ANSWER).collect()).await {
        Err(_) => return timed_out(),
        Ok(Err(e)) => return failed(format!("reading the answer: {e}")),
        Ok(Ok(c)) => c,
    };
    let trailers = collected
        .trailers()
        .map(|t| t.iter().map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())).collect())
        .unwrap_or_default();
    let mut headers = vec![(b":status".to_vec(), parts.status.as_str().as_bytes().to_vec())];
    headers.extend(parts.headers.iter().map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())));
    CallAnswer { headers, body: collected.to_bytes(), trailers, status: (0, String::new()) }
}
