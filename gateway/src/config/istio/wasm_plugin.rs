//! `extensions.istio.io` WasmPlugin.

use serde::Deserialize;

use super::{MatchLabelsSelector, PolicyTargetReference, PortSelector};

istio_enum! {
    /// WasmPlugin `imagePullPolicy`.
    pub enum PullPolicy {
        /// IfNotPresent, unless the tag is `latest`.
        UnspecifiedPolicy = ("UNSPECIFIED_POLICY", 0),
        /// Fetch once.
        IfNotPresent = ("IfNotPresent", 1),
        /// Fetch on every change.
        Always = ("Always", 2),
    }
}

istio_enum! {
    /// WasmPlugin `phase`.
    pub enum PluginPhase {
        /// After Istio's filters, before the router.
        UnspecifiedPhase = ("UNSPECIFIED_PHASE", 0),
        /// Before Istio's authentication.
        Authn = ("AUTHN", 1),
        /// Before Istio's authorization.
        Authz = ("AUTHZ", 2),
        /// Before Istio's stats.
        Stats = ("STATS", 3),
    }
}

istio_enum! {
    /// WasmPlugin `failStrategy`.
    pub enum FailStrategy {
        /// A failing plugin fails the request.
        FailClose = ("FAIL_CLOSE", 0),
        /// A failing plugin is skipped.
        FailOpen = ("FAIL_OPEN", 1),
        /// A failing VM is replaced and the request retried in it.
        FailReload = ("FAIL_RELOAD", 2),
    }
}

istio_enum! {
    /// WasmPlugin `type`.
    pub enum PluginType {
        /// HTTP.
        UnspecifiedPluginType = ("UNSPECIFIED_PLUGIN_TYPE", 0),
        /// An HTTP filter.
        Http = ("HTTP", 1),
        /// A network (TCP) filter.
        Network = ("NETWORK", 2),
    }
}

istio_enum! {
    /// WasmPlugin `vmConfig.env[].valueFrom`.
    pub enum EnvValueSource {
        /// The value written.
        Inline = ("INLINE", 0),
        /// The proxy's environment variable of that name.
        Host = ("HOST", 1),
    }
}

istio_enum! {
    /// WasmPlugin `match[].mode`.
    pub enum WorkloadMode {
        /// Both directions.
        Undefined = ("UNDEFINED", 0),
        /// Outbound: a gateway, a sidecar's calls.
        Client = ("CLIENT", 1),
        /// Inbound to a sidecar's workload.
        Server = ("SERVER", 2),
        /// Both.
        ClientAndServer = ("CLIENT_AND_SERVER", 3),
    }
}

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
    pub image_pull_policy: Option<PullPolicy>,
    /// Registry credential (remote modules).
    pub image_pull_secret: Option<String>,
    /// Configuration handed to the plugin as JSON.
    pub plugin_config: Option<serde_json::Value>,
    /// Root id.
    pub plugin_name: Option<String>,
    /// `AUTHN`, `AUTHZ`, `STATS`, `UNSPECIFIED_PHASE`.
    pub phase: Option<PluginPhase>,
    /// Higher runs first within a phase.
    pub priority: Option<i64>,
    /// `FAIL_CLOSE` (default), `FAIL_OPEN`, `FAIL_RELOAD`.
    pub fail_strategy: Option<FailStrategy>,
    /// VM settings: the environment.
    pub vm_config: Option<VmConfig>,
    /// Traffic the plugin applies to.
    #[serde(default, rename = "match")]
    pub matches: Vec<TrafficSelector>,
    /// `HTTP` (default) or `NETWORK`.
    #[serde(rename = "type")]
    pub plugin_type: Option<PluginType>,
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
    pub value_from: Option<EnvValueSource>,
    /// Value for INLINE.
    pub value: Option<String>,
}

/// `match[]`: mode and ports.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSelector {
    /// `CLIENT`, `SERVER`, `CLIENT_AND_SERVER` (default).
    pub mode: Option<WorkloadMode>,
    /// Ports; empty = all.
    #[serde(default)]
    pub ports: Vec<PortSelector>,
}
