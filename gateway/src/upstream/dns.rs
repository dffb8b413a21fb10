//! DNS resolution of ServiceEntry endpoints (`resolution: DNS`), refreshed in the
//! background off the request path.

use std::{collections::BTreeMap, sync::Arc};

use super::{Cluster, Endpoint};
use crate::telemetry::DestinationLabels;

/// A name to resolve into endpoints.
#[derive(Debug, Clone)]
pub struct DnsTarget {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Labels of the resulting endpoints.
    pub labels: BTreeMap<String, String>,
    /// Metric labels of the resulting endpoints.
    pub metrics: Arc<DestinationLabels>,
}

/// Resolves every DNS target of `cluster` and installs the addresses found. When a
/// lookup fails the previous endpoints are kept.
pub async fn refresh_dns(cluster: &Arc<Cluster>) {
    if cluster.dns.is_empty() {
        return;
    }
    let mut endpoints = Vec::new();
    for t in &cluster.dns {
        match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(addrs) => {
                endpoints.extend(addrs.map(|a| Arc::new(Endpoint::new(a, t.labels.clone(), t.metrics.clone()))))
            }
            Err(e) => {
                tracing::warn!(cluster = %cluster.name, host = %t.host, error = %e, "dns resolution failed");
                return;
            }
        }
    }
    cluster.set_endpoints(endpoints);
}
