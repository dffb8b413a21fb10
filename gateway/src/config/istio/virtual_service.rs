//! `networking.istio.io` VirtualService: HTTP, TLS and TCP routing rules.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::not_applied::NotApplied;

use super::{Destination, Percent, StringMatch};
use crate::config::GoDuration;

istio_enum! {
    /// HTTPRedirect `derivePort`.
    pub enum RedirectPortSelection {
        /// 80 for http, 443 for https.
        FromProtocolDefault = ("FROM_PROTOCOL_DEFAULT", 0),
        /// The port the request came in on.
        FromRequestPort = ("FROM_REQUEST_PORT", 1),
    }
}

istio_enum! {
    /// CorsPolicy `unmatchedPreflights`.
    pub enum UnmatchedPreflights {
        /// Forward (the default).
        Unspecified = ("UNSPECIFIED", 0),
        /// Forward to the upstream.
        Forward = ("FORWARD", 1),
        /// Answer 200 without CORS headers.
        Ignore = ("IGNORE", 2),
    }
}

/// VirtualService spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct VirtualService {
    /// Hosts this VirtualService applies to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (and/or `mesh`) the rules apply to; empty means `mesh`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Ordered HTTP rules: first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// Ordered rules for unterminated TLS.
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    /// Ordered rules for opaque TCP.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces that may see this VirtualService.
    #[serde(default)]
    pub export_to: Vec<String>,
}

impl VirtualService {
    /// What Istio's validation refuses in one VirtualService on its own, as
    /// `(field, message)`: no rules, gateways without hosts, a host listed twice.
    pub(crate) fn check(&self) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        if self.http.is_empty() && self.tls.is_empty() && self.tcp.is_empty() {
            errs.push(("spec".to_string(), "at least one of http, tls and tcp must be set".to_string()));
        }
        if self.hosts.is_empty() && !self.gateways.is_empty() {
            errs.push(("spec.hosts".to_string(), "hosts are required".to_string()));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, h) in self.hosts.iter().enumerate() {
            if !seen.insert(h.to_ascii_lowercase()) {
                errs.push((format!("spec.hosts[{i}]"), format!("duplicate host {h:?}")));
            }
        }
        errs
    }
}

/// One HTTP rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct HttpRoute {
    /// Name for logs.
    pub name: Option<String>,
    /// OR of match blocks; empty matches everything.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Redirect instead of forwarding.
    pub redirect: Option<HttpRedirect>,
    /// Fixed response instead of forwarding.
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand matched traffic to another VirtualService.
    pub delegate: Option<Delegate>,
    /// Path and authority rewrite before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Whole-request timeout.
    pub timeout: Option<GoDuration>,
    /// Retry policy.
    pub retries: Option<HttpRetry>,
    /// Delay and abort injection.
    pub fault: Option<HttpFaultInjection>,
    /// Single shadow destination.
    pub mirror: Option<Destination>,
    /// Share of traffic mirrored by `mirror`.
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    pub mirror_percent: Option<u32>,
    /// Several shadow destinations.
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// CORS policy.
    pub cors_policy: Option<CorsPolicy>,
    /// Header operations for every destination.
    pub headers: Option<Headers>,
}

/// One match block: an AND of conditions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct HttpMatchRequest {
    /// Name appended to the route name.
    pub name: Option<String>,
    /// Path without query.
    pub uri: Option<StringMatch>,
    /// `:scheme`.
    pub scheme: Option<StringMatch>,
    /// `:method`.
    pub method: Option<StringMatch>,
    /// `:authority` as sent.
    pub authority: Option<StringMatch>,
    /// Header conditions.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Negated header conditions.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Case-insensitive uri exact/prefix.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Listener port.
    pub port: Option<u32>,
    /// Config-time selector on the proxy's labels.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Per-match gateways override.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Config-time selector on the proxy's namespace.
    pub source_namespace: Option<String>,
    /// Envoy stats prefix (no effect here).
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub stat_prefix: NotApplied<Option<String>>,
}

/// A weighted HTTP destination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Relative weight.
    pub weight: Option<i64>,
    /// Header operations applied when this destination is chosen.
    pub headers: Option<Headers>,
}

/// Istio `HTTPRedirect`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replaces the whole path.
    pub uri: Option<String>,
    /// Replaces the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Replaces the host.
    pub authority: Option<String>,
    /// Explicit port.
    pub port: Option<u32>,
    /// FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT.
    pub derive_port: Option<RedirectPortSelection>,
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// 301 (default), 302, 303, 307, 308.
    pub redirect_code: Option<u32>,
}

/// Istio `HTTPDirectResponse`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct HttpDirectResponse {
    /// Status code.
    pub status: u32,
    /// Optional body.
    pub body: Option<HttpBody>,
}

/// Body of a direct response: a string or base64 bytes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct HttpBody {
    /// Text body.
    pub string: Option<String>,
    /// Base64 body.
    pub bytes: Option<String>,
}

/// Delegate reference.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct Delegate {
    /// VirtualService name.
    pub name: String,
    /// VirtualService namespace (default: the root's).
    pub namespace: Option<String>,
}

/// Istio `HTTPRewrite`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replaces the matched prefix.
    pub uri: Option<String>,
    /// Replaces the authority.
    pub authority: Option<String>,
    /// Regex substitution on the path.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Istio `RegexRewrite`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 pattern.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Substitution with `\1`-style groups.
    pub rewrite: String,
}

/// Istio `HTTPRetry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries.
    #[serde(default)]
    pub attempts: i64,
    /// Timeout per attempt.
    pub per_try_timeout: Option<GoDuration>,
    /// Comma list of Envoy retry conditions.
    pub retry_on: Option<String>,
    /// Retry to other localities.
    pub retry_remote_localities: Option<bool>,
    /// Avoid the previous host (default true).
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base back-off interval.
    pub backoff: Option<GoDuration>,
}

/// Istio `HTTPFaultInjection`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay injection.
    pub delay: Option<FaultDelay>,
    /// Abort injection.
    pub abort: Option<FaultAbort>,
}

/// Delay injection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Fixed delay.
    pub fixed_delay: Option<GoDuration>,
    /// Unsupported exponential delay.
    pub exponential_delay: Option<GoDuration>,
    /// Share of requests delayed.
    pub percentage: Option<Percent>,
    /// Deprecated integer share.
    pub percent: Option<u32>,
}

/// Abort injection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to answer.
    pub http_status: Option<u32>,
    /// gRPC status name to answer.
    pub grpc_status: Option<String>,
    /// Unsupported HTTP/2 error.
    pub http2_error: Option<String>,
    /// Share of requests aborted.
    pub percentage: Option<Percent>,
}

/// One of several mirrors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct HttpMirrorPolicy {
    /// Shadow destination.
    pub destination: Destination,
    /// Share mirrored (absent = 100).
    pub percentage: Option<Percent>,
}

/// Istio `CorsPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Allowed origins.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins (`*` allowed).
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// `Access-Control-Allow-Methods`.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers`.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers`.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<GoDuration>,
    /// `Access-Control-Allow-Credentials`.
    pub allow_credentials: Option<bool>,
    /// FORWARD (default) or IGNORE.
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// Request and response header operations.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Applied to the upstream request.
    pub request: Option<HeaderOperations>,
    /// Applied to the downstream response.
    pub response: Option<HeaderOperations>,
}

/// set / add / remove.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite or create.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append a value.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A TLS passthrough rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TlsRoute {
    /// Match blocks.
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// TLS match conditions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TlsMatchAttributes {
    /// SNI names.
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    /// Destination subnets.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub destination_subnets: NotApplied<Vec<String>>,
    /// Listener port.
    pub port: Option<u32>,
    /// Config-time selector.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub source_labels: NotApplied<BTreeMap<String, String>>,
    /// Gateways override.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Config-time selector.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub source_namespace: NotApplied<Option<String>>,
}

/// A TCP rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TcpRoute {
    /// Match blocks.
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// L4 match conditions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct L4MatchAttributes {
    /// Destination subnets.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub destination_subnets: NotApplied<Vec<String>>,
    /// Listener port.
    pub port: Option<u32>,
    /// Config-time selector.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub source_labels: NotApplied<BTreeMap<String, String>>,
    /// Gateways override.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Config-time selector.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub source_namespace: NotApplied<Option<String>>,
}

/// A weighted L4 destination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Relative weight.
    pub weight: Option<i64>,
}
