//! `telemetry.istio.io` Telemetry: per-workload tracing, metrics and access logging.

use serde::Deserialize;

use crate::config::not_applied::NotApplied;

use super::{MatchLabelsSelector, PolicyTargetReference};

/// Telemetry spec. The most specific one applies: selector in the gateway's
/// namespace, then namespace-wide, then the root namespace.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Telemetry {
    /// Workloads it applies to.
    pub selector: Option<MatchLabelsSelector>,
    /// Gateway API targets (not supported at this gateway).
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Single target (deprecated form).
    pub target_ref: Option<PolicyTargetReference>,
    /// Tracing settings (the first entry applies).
    #[serde(default)]
    pub tracing: Vec<TracingSpec>,
    /// Metrics settings.
    #[serde(default)]
    pub metrics: Vec<MetricsSpec>,
    /// Access log settings.
    #[serde(default)]
    pub access_logging: Vec<AccessLoggingSpec>,
}

/// A provider named in the mesh config's `extensionProviders`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ProviderRef {
    /// Provider name.
    pub name: String,
}

/// `tracing[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TracingSpec {
    /// Tracing provider (the first one is used).
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Percentage of requests traced when the caller did not decide.
    pub random_sampling_percentage: Option<f64>,
    /// Propagate trace context but export nothing.
    pub disable_span_reporting: Option<bool>,
    /// Extra span tags (not applied by Wicket).
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub custom_tags: NotApplied<Option<serde_json::Value>>,
    /// Traffic mode match (a gateway is CLIENT).
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default, rename = "match")]
    pub match_: NotApplied<Option<serde_json::Value>>,
    /// Sample by request id (not applied by Wicket).
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub use_request_id_for_trace_sampling: NotApplied<Option<bool>>,
}

/// `metrics[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct MetricsSpec {
    /// Metrics providers (`prometheus`).
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub providers: NotApplied<Vec<ProviderRef>>,
    /// Per-metric overrides; Wicket applies `disabled` for all metrics.
    #[serde(default)]
    pub overrides: Vec<MetricsOverride>,
    /// Reporting interval (Prometheus is scraped: not applicable).
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub reporting_interval: NotApplied<Option<String>>,
}

/// `metrics[].overrides[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct MetricsOverride {
    /// Which metrics and mode; absent = all.
    #[serde(rename = "match")]
    pub selector: Option<serde_json::Value>,
    /// Turns the matched metrics off.
    pub disabled: Option<bool>,
    /// Tag changes (not applied by Wicket).
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub tag_overrides: NotApplied<Option<serde_json::Value>>,
}

/// `accessLogging[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AccessLoggingSpec {
    /// Logging providers.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub providers: NotApplied<Vec<ProviderRef>>,
    /// Turns access logs off.
    pub disabled: Option<bool>,
    /// Traffic mode match.
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default, rename = "match")]
    pub match_: NotApplied<Option<serde_json::Value>>,
    /// CEL filter (not applied by Wicket).
    #[allow(dead_code)] // not applied: see `not_applied::FIELDS`
    #[serde(default)]
    pub filter: NotApplied<Option<serde_json::Value>>,
}
