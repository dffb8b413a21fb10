//! Istio's MeshConfig, read from the `istio` ConfigMap's `mesh` key as Istio stores it.
//! Only the fields Wicket applies are read; the rest of a real mesh config is ignored.

use serde::Deserialize;

istio_enum! {
    /// Mesh config `accessLogEncoding`.
    pub enum AccessLogEncoding {
        /// Envoy's text format.
        Text = ("TEXT", 0),
        /// One JSON object per line.
        Json = ("JSON", 1),
    }
}

istio_enum! {
    /// `outboundTrafficPolicy.mode`.
    pub enum OutboundTrafficMode {
        /// Only registry services are reachable.
        RegistryOnly = ("REGISTRY_ONLY", 0),
        /// Unknown destinations are passed through.
        AllowAny = ("ALLOW_ANY", 1),
    }
}

istio_enum! {
    /// `pathNormalization.normalization`.
    pub enum NormalizationType {
        /// The proxy's default.
        Default = ("DEFAULT", 0),
        /// No normalization.
        None = ("NONE", 1),
        /// RFC 3986 normalization, backslashes as slashes.
        Base = ("BASE", 2),
        /// BASE, and `//` merged.
        MergeSlashes = ("MERGE_SLASHES", 3),
        /// MERGE_SLASHES after decoding `%2F`, `%5C`.
        DecodeAndMergeSlashes = ("DECODE_AND_MERGE_SLASHES", 4),
    }
}

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
    /// External authorizers, tracers and loggers.
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    /// Where access logs go: unset means stdout (Wicket's default), `""` turns them off.
    pub access_log_file: Option<String>,
    /// `JSON` (Wicket's default) or `TEXT`.
    pub access_log_encoding: Option<AccessLogEncoding>,
    /// Envoy format string for TEXT logs (`%START_TIME%`, `%REQ(X-REQUEST-ID)%`, ...).
    pub access_log_format: Option<String>,
    /// Turns tracing off when `false` (default on, given a provider).
    pub enable_tracing: Option<bool>,
    /// Default upstream connect timeout (Istio: 10 s); DestinationRules override it.
    pub connect_timeout: Option<crate::config::GoDuration>,
    /// Default TCP keepalive of upstream connections; DestinationRules override it.
    pub tcp_keepalive: Option<crate::config::istio::TcpKeepalive>,
    /// Providers used when no Telemetry resource names one.
    #[serde(default)]
    pub default_providers: DefaultProviders,
    /// Sidecars: where traffic to destinations outside the registry goes.
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Istio auto mTLS towards endpoints that run a sidecar (default on).
    pub enable_auto_mtls: Option<bool>,
}

/// `outboundTrafficPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` (default: passed through) or `REGISTRY_ONLY` (refused).
    pub mode: Option<OutboundTrafficMode>,
}

/// `defaultProviders`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultProviders {
    /// Tracing providers by `extensionProviders[].name` (the first one is used).
    #[serde(default)]
    pub tracing: Vec<String>,
}

/// `extensionProviders[].opentelemetry`: an OTLP collector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenTelemetryProvider {
    /// Collector service host.
    pub service: String,
    /// Its port.
    pub port: u32,
    /// OTLP/HTTP settings; Wicket always speaks OTLP/HTTP (protobuf).
    #[serde(default)]
    pub http: OtlpHttp,
}

/// `opentelemetry.http`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtlpHttp {
    /// Export path (default `/v1/traces`).
    pub path: Option<String>,
    /// Export timeout.
    pub timeout: Option<crate::config::GoDuration>,
}

/// `extensionProviders[]`: the HTTP external authorizer and the OpenTelemetry tracer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// Name AuthorizationPolicy `provider.name` refers to.
    pub name: String,
    /// Envoy HTTP ext_authz.
    pub envoy_ext_authz_http: Option<ExtAuthzHttp>,
    /// OpenTelemetry tracing.
    pub opentelemetry: Option<OpenTelemetryProvider>,
}

/// `envoyExtAuthzHttp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzHttp {
    /// Authorizer service host (FQDN, or `namespace/host`).
    pub service: String,
    /// Its port.
    pub port: u32,
    /// Check timeout.
    pub timeout: Option<crate::config::GoDuration>,
    /// Prefix added to the checked path.
    pub path_prefix: Option<String>,
    /// Allow when the authorizer cannot be reached.
    #[serde(default)]
    pub fail_open: bool,
    /// Status when the authorizer cannot be reached (default 403).
    pub status_on_error: Option<String>,
    /// Client headers sent with the check (besides Host, Method, Path).
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    /// Extra headers sent with the check.
    #[serde(default)]
    pub include_additional_headers_in_check: std::collections::BTreeMap<String, String>,
    /// Authorizer headers copied to the upstream request on allow.
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    /// Authorizer headers copied to the client response on deny.
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            root_namespace: default_root(),
            trust_domain: default_trust_domain(),
            path_normalization: PathNormalizationConfig::default(),
            default_config: ProxyConfig::default(),
            extension_providers: Vec::new(),
            access_log_file: None,
            access_log_encoding: None,
            access_log_format: None,
            enable_tracing: None,
            connect_timeout: None,
            tcp_keepalive: None,
            default_providers: DefaultProviders::default(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            enable_auto_mtls: None,
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
    /// NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES; unset (or DEFAULT):
    /// MERGE_SLASHES at a gateway, BASE (Istio's default) in a sidecar.
    pub normalization: Option<NormalizationType>,
}

/// `defaultConfig` (ProxyConfig).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Gateway network topology.
    #[serde(default)]
    pub gateway_topology: GatewayTopology,
    /// Trace sampling.
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// `defaultConfig.tracing`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingConfig {
    /// Percentage of requests traced when the caller made no decision (Istio: 1).
    pub sampling: Option<f64>,
}

/// `gatewayTopology`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTopology {
    /// Trusted proxies in front of the gateway (X-Forwarded-For hops).
    #[serde(default)]
    pub num_trusted_proxies: u32,
}
