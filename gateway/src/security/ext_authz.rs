//! CUSTOM AuthorizationPolicy: an HTTP external authorizer (Envoy ext_authz HTTP, as
//! Istio's `extensionProviders[].envoyExtAuthzHttp` configures it), asked about the
//! requests the policy's rules match, through the gateway's own upstream stack.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header::HeaderName, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::upstream::{self, Cluster, ReplayBody, RequestHead, RetryPolicy, Upstreams};

/// Largest authorizer response body relayed to the client.
const MAX_DENY_BODY: usize = 64 << 10;

/// A compiled `envoyExtAuthzHttp` provider.
#[derive(Debug)]
pub struct ExtAuthz {
    /// Provider name.
    pub name: Arc<str>,
    /// The authorizer service; `None` when it does not resolve (every check fails).
    pub cluster: Option<Arc<Cluster>>,
    /// Prefix added to the checked path.
    pub path_prefix: String,
    /// Check timeout.
    pub timeout: Duration,
    /// Client headers copied into the check.
    pub include: Vec<HeaderName>,
    /// Extra headers set on the check.
    pub additional: Vec<(HeaderName, HeaderValue)>,
    /// Authorizer headers copied upstream on allow.
    pub to_upstream: Vec<HeaderName>,
    /// Authorizer headers copied to the client on deny.
    pub to_downstream: Vec<HeaderName>,
    /// Allow when the authorizer cannot answer.
    pub fail_open: bool,
    /// Status when it cannot answer and `fail_open` is false.
    pub status_on_error: StatusCode,
}

/// The authorizer's answer.
#[derive(Debug)]
pub enum Verdict {
    /// Go on, adding these headers upstream.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// Answer the client with this.
    Deny {
        /// Status (the authorizer's, or `statusOnError`).
        status: StatusCode,
        /// Headers for the client.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// Body (the authorizer's).
        body: Bytes,
    },
}

impl ExtAuthz {
    /// Asks the authorizer about a request: Envoy sends the method, the path (with the
    /// prefix), Host, the configured headers and no body; 2xx allows.
    pub async fn check(
        &self,
        upstreams: &Upstreams,
        method: &Method,
        path_and_query: &str,
        host: &str,
        headers: &HeaderMap,
    ) -> Verdict {
        let Some(cluster) = &self.cluster else { return self.unavailable() };
        let mut check = HeaderMap::new();
        if let Ok(h) = HeaderValue::from_str(host) {
            check.insert(http::header::HOST, h);
        }
        for name in &self.include {
            for v in headers.get_all(name) {
                check.append(name.clone(), v.clone());
            }
        }
        for (k, v) in &self.additional {
            check.insert(k.clone(), v.clone());
        }
        check.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let Ok(path) = format!("{}{path_and_query}", self.path_prefix).parse() else { return self.unavailable() };
        let head = RequestHead::new(method.clone(), path, check);
        let no_retry = RetryPolicy::none();
        match upstream::call(upstreams, cluster, head, ReplayBody::Empty, Some(self.timeout), &no_retry, None).await {
            Ok(outcome) => {
                let status = outcome.response.status();
                let pick = |names: &[HeaderName], from: &HeaderMap| -> Vec<(HeaderName, HeaderValue)> {
                    names.iter().filter_map(|n| from.get(n).map(|v| (n.clone(), v.clone()))).collect()
                };
                if status.is_success() {
                    return Verdict::Allow(pick(&self.to_upstream, outcome.response.headers()));
                }
                let headers = pick(&self.to_downstream, outcome.response.headers());
                let body = Limited::new(outcome.response.into_body(), MAX_DENY_BODY)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Verdict::Deny { status, headers, body }
            }
            Err(failure) => {
                tracing::warn!(provider = %self.name, error = %failure.error, "external authorizer unavailable");
                self.unavailable()
            }
        }
    }

    fn unavailable(&self) -> Verdict {
        if self.fail_open {
            Verdict::Allow(Vec::new())
        } else {
            Verdict::Deny { status: self.status_on_error, headers: Vec::new(), body: Bytes::new() }
        }
    }
}
