//! `networking.istio.io` DestinationRule: subsets and upstream traffic policy.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{MatchLabelsSelector, Percent, PortSelector};
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
pub struct DestinationRule {
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
    /// Policy blocks read but not enforced yet, as `(field, what)`: reported, never
    /// silently accepted.
    pub fn not_enforced(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut policies = vec![("spec.trafficPolicy".to_string(), self.traffic_policy.as_ref())];
        policies.extend(
            self.subsets
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("spec.subsets[{i}].trafficPolicy"), s.traffic_policy.as_ref())),
        );
        for (field, tp) in policies {
            let Some(tp) = tp else { continue };
            let mut unapplied = Vec::new();
            let pools = tp
                .connection_pool
                .iter()
                .chain(tp.port_level_settings.iter().filter_map(|p| p.connection_pool.as_ref()));
            let partly = |p: &ConnectionPoolSettings| {
                p.tcp.as_ref().is_some_and(|t| t.max_connection_duration.is_some())
                    || p.http.as_ref().is_some_and(|h| {
                        h.h2_upgrade_policy.is_some()
                            || h.use_client_protocol.is_some()
                            || h.max_concurrent_streams.is_some()
                    })
            };
            if pools.clone().any(partly) {
                unapplied.push(
                    "connectionPool maxConnectionDuration, h2UpgradePolicy, useClientProtocol, maxConcurrentStreams",
                );
            }
            let lb =
                tp.load_balancer.iter().chain(tp.port_level_settings.iter().filter_map(|p| p.load_balancer.as_ref()));
            let bad_header = |c: &ConsistentHashLb| {
                c.http_header_name.as_ref().is_some_and(|h| http::HeaderName::try_from(h.as_str()).is_err())
            };
            if lb.clone().filter_map(|l| l.consistent_hash.as_ref()).any(bad_header) {
                unapplied.push("consistentHash.httpHeaderName is not a valid header name");
            }
            if tp.tunnel.is_some() || tp.proxy_protocol.is_some() || tp.retry_budget.is_some() {
                unapplied.push("tunnel/proxyProtocol/retryBudget");
            }
            if !unapplied.is_empty() {
                out.push((field, format!("not enforced yet: {}", unapplied.join(", "))));
            }
        }
        out
    }
}

/// A named subset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
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
pub struct TrafficPolicy {
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
    pub tunnel: Option<TunnelSettings>,
    /// PROXY protocol to upstream.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Retry budget.
    pub retry_budget: Option<RetryBudget>,
}

/// Per-port policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
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
pub enum SimpleLb {
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
pub struct LoadBalancerSettings {
    /// Simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality settings.
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Slow start.
    pub warmup_duration_secs: Option<GoDuration>,
    /// Slow start.
    pub warmup: Option<Warmup>,
}

/// Consistent hashing settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    /// Hash on a header.
    pub http_header_name: Option<String>,
    /// Hash on a cookie.
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash on a query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring hash settings.
    pub ring_hash: Option<RingHash>,
    /// Maglev settings.
    pub maglev: Option<Maglev>,
    /// Deprecated ring size.
    pub minimum_ring_size: Option<u64>,
}

/// Cookie to hash on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Lifetime of a generated cookie.
    pub ttl: Option<GoDuration>,
    /// Extra cookie attributes.
    #[serde(default)]
    pub attributes: Vec<CookieAttribute>,
}

/// Extra cookie attribute.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    /// Attribute name.
    pub name: String,
    /// Attribute value.
    pub value: Option<String>,
}

/// Ring hash settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum ring size.
    pub minimum_ring_size: Option<u64>,
}

/// Maglev settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    /// Table size (prime).
    pub table_size: Option<u64>,
}

/// Locality load balancing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
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
pub struct LocalityDistribute {
    /// Origin locality.
    pub from: String,
    /// Destination localities and weights.
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// Locality failover.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityFailover {
    /// Origin region.
    pub from: String,
    /// Failover region.
    pub to: String,
}

/// Slow start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Warmup {
    /// Warmup duration.
    pub duration: Option<GoDuration>,
    /// Minimum percent of traffic.
    pub minimum_percent: Option<Percent>,
    /// Aggression.
    pub aggression: Option<f64>,
}

/// Istio `ConnectionPoolSettings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP settings.
    pub tcp: Option<TcpSettings>,
    /// HTTP settings.
    pub http: Option<HttpSettings>,
}

/// TCP pool settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Max connections.
    pub max_connections: Option<u32>,
    /// Connect timeout.
    pub connect_timeout: Option<GoDuration>,
    /// Keepalive.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Max connection age.
    pub max_connection_duration: Option<GoDuration>,
    /// Idle timeout.
    pub idle_timeout: Option<GoDuration>,
}

/// TCP keepalive.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes.
    pub probes: Option<u32>,
    /// Idle time before probing.
    pub time: Option<GoDuration>,
    /// Probe interval.
    pub interval: Option<GoDuration>,
}

/// HTTP pool settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
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
    pub h2_upgrade_policy: Option<String>,
    /// Keep the client's protocol.
    pub use_client_protocol: Option<bool>,
    /// HTTP/2 concurrent streams.
    pub max_concurrent_streams: Option<u32>,
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
pub struct TunnelSettings {
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
pub struct ProxyProtocol {
    /// V1 or V2.
    pub version: Option<String>,
}

/// Retry budget.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Percent of active requests.
    pub percent: Option<Percent>,
    /// Minimum concurrent retries.
    pub min_retry_concurrency: Option<u32>,
}
