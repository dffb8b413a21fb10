//! Types shared by several Istio kinds: string matches, percents, destinations.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Istio `StringMatch`: at most one of `exact`, `prefix`, `regex`; none means "present".
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// Whole value equal.
    pub exact: Option<String>,
    /// Raw string prefix (not segment-aware).
    pub prefix: Option<String>,
    /// RE2 full match.
    pub regex: Option<String>,
}

/// Istio `Percent`: `{value: 0..100}`, fractional values allowed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// Percentage in 0..=100.
    #[serde(default)]
    pub value: f64,
}

/// Istio `PortSelector`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// Port number.
    pub number: u32,
}

/// Istio `Destination`: a registry host, an optional subset and port.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Destination {
    /// Registry host (short names are expanded with the resource's namespace).
    pub host: String,
    /// Subset name defined by a DestinationRule.
    pub subset: Option<String>,
    /// Destination port; required when the service has several ports.
    pub port: Option<PortSelector>,
}

/// Istio `WorkloadSelector` as used by ServiceEntry (`labels`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WorkloadSelector {
    /// Labels the selected workloads must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Istio `type.v1beta1.WorkloadSelector` as used by DestinationRule (`matchLabels`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabelsSelector {
    /// Labels the selected workloads must carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl MatchLabelsSelector {
    /// Whether a workload with `labels` is selected.
    pub(crate) fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        labels_match(&self.match_labels, labels)
    }
}

/// Label selection as Kubernetes does it: every label of `want` is in `have` with the
/// same value (an empty `want` selects everything).
pub(crate) fn labels_match(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}
