//! The application's HTTP probes as kubelet would run them, in Istio's
//! `ISTIO_KUBE_APP_PROBERS` format: written by the injector (which points kubelet at
//! the sidecar instead), read by the sidecar's probe listener.

use std::collections::HashMap;

use serde::Deserialize;

/// Env var the injector fills with the rewritten probes (Istio's name and format).
pub const PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// One original probe: `{"httpGet": {...}, "timeoutSeconds": 1}`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Prober {
    /// The HTTP check.
    pub http_get: HttpGet,
    /// Kubelet's timeout (default 1 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// A probe's `httpGet`, with a numeric port (the injector resolves named ports).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    /// Path (default `/`).
    #[serde(default)]
    pub path: String,
    /// Application port.
    pub port: u16,
    /// `HTTP` or `HTTPS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

/// A probe request header.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct HttpHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Probes by the path kubelet now asks for.
pub type Probers = HashMap<String, Prober>;

/// Parses `ISTIO_KUBE_APP_PROBERS`.
pub fn parse(json: &str) -> Result<Probers, String> {
    serde_json::from_str(json).map_err(|e| format!("{PROBERS_ENV}: {e}"))
}
