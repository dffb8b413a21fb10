//! `extensions.istio.io` WasmPlugin.

use serde::Deserialize;

use super::{MatchLabelsSelector, PolicyTargetReference, PortSelector};

/// WasmPlugin spec: a proxy-wasm module, its configuration and its chain position.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmPlugin {
    /// Workloads it applies to (same namespace; root namespace: all).
    pub selector: Option<MatchLabelsSelector>,
    /// Kubernetes Gateway API targets (not supported at this gateway).
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Single target (deprecated form).
    pub target_ref: Option<PolicyTargetReference>,
    /// `file://`, a plain path, `oci://`, `http(s)://`.
    #[serde(default)]
    pub url: String,
    /// Expected sha256 of the module, hex.
    pub sha256: Option<String>,
    /// `IfNotPresent` or `Always` (only meaningful for remote modules).
    pub image_pull_policy: Option<String>,
    /// Registry credential (remote modules).
    pub image_pull_secret: Option<String>,
    /// Configuration handed to the plugin as JSON.
    pub plugin_config: Option<serde_json::Value>,
    /// Root id.
    pub plugin_name: Option<String>,
    /// `AUTHN`, `AUTHZ`, `STATS`, `UNSPECIFIED_PHASE`.
    pub phase: Option<String>,
    /// Higher runs first within a phase.
    pub priority: Option<i64>,
    /// `FAIL_CLOSE` (default), `FAIL_OPEN`, `FAIL_RELOAD`.
    pub fail_strategy: Option<String>,
    /// VM settings: the environment.
    pub vm_config: Option<VmConfig>,
    /// Traffic the plugin applies to.
    #[serde(default, rename = "match")]
    pub matches: Vec<TrafficSelector>,
    /// `HTTP` (default) or `NETWORK`.
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
}

/// `vmConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    /// Environment variables of the VM.
    #[serde(default)]
    pub env: Vec<EnvVar>,
}

/// One `vmConfig.env` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// `INLINE` (default) or `HOST`.
    pub value_from: Option<String>,
    /// Value for INLINE.
    pub value: Option<String>,
}

/// `match[]`: mode and ports.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSelector {
    /// `CLIENT`, `SERVER`, `CLIENT_AND_SERVER` (default).
    pub mode: Option<String>,
    /// Ports; empty = all.
    #[serde(default)]
    pub ports: Vec<PortSelector>,
}
