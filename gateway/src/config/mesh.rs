//! Istio's MeshConfig, read from the `istio` ConfigMap's `mesh` key as Istio stores it.
//! Only the fields Wicket applies are read; the rest of a real mesh config is ignored.

use serde::Deserialize;

/// The parts of MeshConfig Wicket applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// Namespace whose policies apply mesh-wide.
    #[serde(default = "default_root")]
    pub root_namespace: String,
    /// SPIFFE trust domain.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Path normalization for routing, authorization and the upstream.
    #[serde(default)]
    pub path_normalization: PathNormalizationConfig,
    /// Proxy defaults.
    #[serde(default)]
    pub default_config: ProxyConfig,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            root_namespace: default_root(),
            trust_domain: default_trust_domain(),
            path_normalization: PathNormalizationConfig::default(),
            default_config: ProxyConfig::default(),
        }
    }
}

fn default_root() -> String {
    "istio-system".into()
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

/// `pathNormalization`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathNormalizationConfig {
    /// NONE, BASE (default), MERGE_SLASHES, DECODE_AND_MERGE_SLASHES.
    pub normalization: Option<String>,
}

/// `defaultConfig` (ProxyConfig).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Gateway network topology.
    #[serde(default)]
    pub gateway_topology: GatewayTopology,
}

/// `gatewayTopology`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTopology {
    /// Trusted proxies in front of the gateway (X-Forwarded-For hops).
    #[serde(default)]
    pub num_trusted_proxies: u32,
}
