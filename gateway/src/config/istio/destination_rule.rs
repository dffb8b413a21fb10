//! `networking.istio.io` DestinationRule: subsets and upstream traffic policy.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::not_applied::NotApplied;

use super::{MatchLabelsSelector, PortSelector};
use crate::config::GoDuration;

istio_enum! {
    /// DestinationRule `tls.mode`.
    pub enum ClientTlsMode {
        /// Plaintext.
        Disable = ("DISABLE", 0),
        /// TLS, the server verified.
        Simple = ("SIMPLE", 1),
        /// TLS with a client certificate.
        Mutual = ("MUTUAL", 2),
        /// Istio's mutual TLS with the workload identity.
        IstioMutual = ("ISTIO_MUTUAL", 3),
    }
}

/// DestinationRule spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DestinationRule {
    /// Registry host.
    #[serde(default)]
    pub host: String,
    /// Default policy.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets selected by endpoint labels.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Namespaces that may see this rule.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Proxies this rule applies to.
    pub workload_selector: Option<MatchLabelsSelector>,
}

impl DestinationRule {
    /// Consistent-hash header names that are not header names, as `(field, why)`:
    /// such a policy hashes nothing (every request lands anywhere).
    pub(crate) fn unusable_hash_headers(&self) -> Vec<(String, String)> {
        let mut policies = vec![("spec.trafficPolicy".to_string(), self.traffic_policy.as_ref())];
        policies.extend(
            self.subsets
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("spec.subsets[{i}].trafficPolicy"), s.traffic_policy.as_ref())),
        );
        let mut out = Vec::new();
        for (field, tp) in policies {
            let Some(tp) = tp else { continue };
            let mut blocks = vec![(format!("{field}.loadBalancer"), tp.load_balancer.as_ref())];
            blocks.extend(
                tp.port_level_settings
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("{field}.portLevelSettings[{i}].loadBalancer"), p.load_balancer.as_ref())),
            );
            for (field, lb) in blocks {
                let name = lb.and_then(|l| l.consistent_hash.as_ref()).and_then(|c| c.http_header_name.as_ref());
                if let Some(name) = name.filter(|h| http::HeaderName::try_from(h.as_str()).is_err()) {
                    let why = format!("{name:?} is not a valid header name; requests are not hashed by it");
                    out.push((format!("{field}.consistentHash.httpHeaderName"), why));
                }
            }
        }
        out
    }
}

/// A named subset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Subset {
    /// Subset name.
    pub name: String,
    /// Endpoint labels the subset selects.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Block-level overrides of the top-level policy.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Istio `TrafficPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port replacements of the four blocks above.
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// HTTP CONNECT/POST tunnel.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub tunnel: NotApplied<Option<TunnelSettings>>,
    /// PROXY protocol to upstream.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub proxy_protocol: NotApplied<Option<ProxyProtocol>>,
    /// Retry budget.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub retry_budget: NotApplied<Option<RetryBudget>>,
}

/// Per-port policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PortTrafficPolicy {
    /// Port the policy applies to.
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    pub tls: Option<ClientTlsSettings>,
}

/// Simple load-balancing algorithms.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum SimpleLb {
    /// Istio's default (least request).
    Unspecified,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    /// Random choice.
    Random,
    /// Original destination (meaningless at an ingress).
    Passthrough,
    /// Round robin.
    RoundRobin,
    /// Power of two choices by active requests.
    LeastRequest,
}

/// Istio `LoadBalancerSettings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct LoadBalancerSettings {
    /// Simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality settings.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub locality_lb_setting: NotApplied<Option<LocalityLbSetting>>,
    /// Slow start.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub warmup_duration_secs: NotApplied<Option<GoDuration>>,
    /// Slow start.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub warmup: NotApplied<Option<Warmup>>,
}

/// Consistent hashing settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ConsistentHashLb {
    /// Hash on a header.
    pub http_header_name: Option<String>,
    /// Hash on a cookie.
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash on a query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring hash settings.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub ring_hash: NotApplied<Option<RingHash>>,
    /// Maglev settings.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub maglev: NotApplied<Option<Maglev>>,
    /// Deprecated ring size.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub minimum_ring_size: NotApplied<Option<u64>>,
}

/// Cookie to hash on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Lifetime of a generated cookie.
    pub ttl: Option<GoDuration>,
    /// Extra cookie attributes.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub attributes: NotApplied<Vec<CookieAttribute>>,
}

/// Extra cookie attribute.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct CookieAttribute {
    /// Attribute name.
    pub name: String,
    /// Attribute value.
    pub value: Option<String>,
}

/// Ring hash settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct RingHash {
    /// Minimum ring size.
    pub minimum_ring_size: Option<u64>,
}

/// Maglev settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct Maglev {
    /// Table size (prime).
    pub table_size: Option<u64>,
}

/// Locality load balancing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct LocalityLbSetting {
    /// Weighted distribution.
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    /// Failover.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// Failover by label priority.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// Locality weight distribution.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct LocalityDistribute {
    /// Origin locality.
    pub from: String,
    /// Destination localities and weights.
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// Locality failover.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct LocalityFailover {
    /// Origin region.
    pub from: String,
    /// Failover region.
    pub to: String,
}

/// Slow start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct Warmup {
    /// Warmup duration.
    pub duration: Option<GoDuration>,
    /// Minimum percent of traffic.
    pub minimum_percent: Option<f64>,
    /// Aggression.
    pub aggression: Option<f64>,
}

/// Istio `ConnectionPoolSettings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ConnectionPoolSettings {
    /// TCP settings.
    pub tcp: Option<TcpSettings>,
    /// HTTP settings.
    pub http: Option<HttpSettings>,
}

/// TCP pool settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TcpSettings {
    /// Max connections.
    pub max_connections: Option<u32>,
    /// Connect timeout.
    pub connect_timeout: Option<GoDuration>,
    /// Keepalive.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Max connection age.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub max_connection_duration: NotApplied<Option<GoDuration>>,
    /// Idle timeout.
    pub idle_timeout: Option<GoDuration>,
}

/// TCP keepalive.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub(crate) probes: NotApplied<Option<u32>>,
    /// Idle time before probing.
    pub time: Option<GoDuration>,
    /// Probe interval.
    pub interval: Option<GoDuration>,
}

/// HTTP pool settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct HttpSettings {
    /// Pending request queue.
    #[serde(rename = "http1MaxPendingRequests")]
    pub http1_max_pending_requests: Option<u32>,
    /// Max concurrent requests.
    #[serde(rename = "http2MaxRequests")]
    pub http2_max_requests: Option<u32>,
    /// Requests per connection.
    pub max_requests_per_connection: Option<u32>,
    /// Concurrent retries.
    pub max_retries: Option<u32>,
    /// Upstream idle timeout.
    pub idle_timeout: Option<GoDuration>,
    /// DEFAULT, DO_NOT_UPGRADE, UPGRADE.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub h2_upgrade_policy: NotApplied<Option<String>>,
    /// Keep the client's protocol.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub use_client_protocol: NotApplied<Option<bool>>,
    /// HTTP/2 concurrent streams.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub max_concurrent_streams: NotApplied<Option<u32>>,
}

/// Istio `OutlierDetection`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated; ignored by Istio.
    pub consecutive_errors: Option<u32>,
    /// Consecutive 5xx before ejection.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive 502/503/504 before ejection.
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive local-origin failures.
    pub consecutive_local_origin_failures: Option<u32>,
    /// Count local-origin failures separately.
    pub split_external_local_origin_errors: Option<bool>,
    /// Sweep interval.
    pub interval: Option<GoDuration>,
    /// Base ejection time.
    pub base_ejection_time: Option<GoDuration>,
    /// Cap on ejected hosts.
    pub max_ejection_percent: Option<u32>,
    /// Panic threshold.
    pub min_health_percent: Option<u32>,
}

/// Upstream TLS settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// DISABLE (the default), SIMPLE, MUTUAL, ISTIO_MUTUAL.
    pub mode: Option<ClientTlsMode>,
    /// Client certificate file.
    pub client_certificate: Option<String>,
    /// Client key file.
    pub private_key: Option<String>,
    /// Server CA file.
    pub ca_certificates: Option<String>,
    /// CRL file.
    pub ca_crl: Option<String>,
    /// Named secret.
    pub credential_name: Option<String>,
    /// Accepted server SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    pub sni: Option<String>,
    /// Skip verification.
    pub insecure_skip_verify: Option<bool>,
}

/// Tunnel settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct TunnelSettings {
    /// CONNECT or POST.
    pub protocol: Option<String>,
    /// Target host.
    pub target_host: String,
    /// Target port.
    pub target_port: u32,
}

/// PROXY protocol settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct ProxyProtocol {
    /// V1 or V2.
    pub version: Option<String>,
}

/// Retry budget.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // only validated: the field holding it is not applied
pub(crate) struct RetryBudget {
    /// Percent of active requests.
    pub percent: Option<f64>,
    /// Minimum concurrent retries.
    pub min_retry_concurrency: Option<u32>,
}
