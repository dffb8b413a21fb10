//! `networking.istio.io` Sidecar: what one workload's sidecar sees and serves.

use serde::Deserialize;

use super::{ServicePort, WorkloadSelector};

/// Sidecar spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Sidecar {
    /// Workloads it applies to (none: the namespace's default, or the mesh's in the root namespace).
    pub workload_selector: Option<WorkloadSelector>,
    /// Services and configuration the sidecar's outbound side sees.
    #[serde(default)]
    pub egress: Vec<EgressListener>,
    /// How inbound traffic reaches the application.
    #[serde(default)]
    pub ingress: Vec<IngressListener>,
    /// Overrides the mesh's `outboundTrafficPolicy`.
    pub outbound_traffic_policy: Option<crate::config::mesh::OutboundTrafficPolicy>,
    /// Inbound connection pool (not applied; reported).
    pub inbound_connection_pool: Option<serde_json::Value>,
}

/// `egress[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct EgressListener {
    /// `namespace/dnsName` entries (`*`, `.`, `~` namespaces; `*` and `*.suffix` names).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// A port to restrict the listener to (not applied; every port is served).
    pub port: Option<serde_json::Value>,
    /// Bind address (not applied).
    pub bind: Option<String>,
    /// Capture mode (not applied: traffic is captured by iptables).
    pub capture_mode: Option<String>,
}

/// `ingress[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct IngressListener {
    /// The port traffic arrives on (Istio's `Port`, as in ServiceEntry).
    pub port: ServicePort,
    /// Where it goes: `127.0.0.1:PORT` or `0.0.0.0:PORT` (the application's address).
    pub default_endpoint: Option<String>,
    /// Bind address (not applied).
    pub bind: Option<String>,
    /// Capture mode (not applied).
    pub capture_mode: Option<String>,
    /// TLS settings (not applied: PeerAuthentication governs inbound TLS).
    pub tls: Option<serde_json::Value>,
    /// Connection pool (not applied).
    pub connection_pool: Option<serde_json::Value>,
}
