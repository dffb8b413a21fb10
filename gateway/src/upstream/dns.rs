//! DNS resolution of ServiceEntry endpoints (`resolution: DNS`), refreshed in the
//! background off the request path.

use std::{collections::BTreeMap, sync::Arc};

use super::{Cluster, Endpoint};
use crate::telemetry::labels::{DestinationLabels, Prehashed};

/// A name to resolve into endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsTarget {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Labels of the resulting endpoints.
    pub labels: BTreeMap<String, String>,
    /// Metric labels of the resulting endpoints.
    pub metrics: Arc<Prehashed<DestinationLabels>>,
    /// Load-balancing weight of each resulting endpoint.
    pub weight: Option<u32>,
}

/// Resolves every DNS target of `cluster` and installs the addresses found. When a
/// lookup fails the previous endpoints are kept. An address resolved again keeps its
/// endpoint, and with it its requests in flight and outlier state.
pub(crate) async fn refresh_dns(cluster: &Arc<Cluster>) {
    if cluster.dns.is_empty() {
        return;
    }
    let current = cluster.endpoints();
    let mut endpoints = Vec::new();
    for t in &cluster.dns {
        match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(addrs) => endpoints.extend(addrs.map(|a| {
                let same = current.iter().find(|e| e.addr == a && e.labels == t.labels).cloned();
                same.unwrap_or_else(|| {
                    Arc::new(Endpoint::new(a, t.labels.clone(), t.metrics.clone()).with_weight(t.weight))
                })
            })),
            Err(e) => {
                tracing::warn!(cluster = %cluster.name, host = %t.host, error = %e, "dns resolution failed");
                return;
            }
        }
    }
    cluster.set_endpoints(endpoints);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{LbPolicy, Protocol};

    #[tokio::test]
    async fn a_refresh_keeps_the_endpoints_it_finds_again() {
        let target = DnsTarget {
            host: "localhost".into(),
            port: 8080,
            labels: BTreeMap::new(),
            metrics: DestinationLabels::unknown(),
            weight: None,
        };
        let cluster =
            Arc::new(Cluster::new("dns".into(), Protocol::Http1, LbPolicy::LeastRequest, Vec::new(), vec![target]));
        refresh_dns(&cluster).await;
        let before = cluster.endpoints();
        assert!(!before.is_empty(), "localhost resolves");
        refresh_dns(&cluster).await;
        let after = cluster.endpoints();
        assert_eq!(before.len(), after.len());
        assert!(before.iter().zip(after.iter()).all(|(a, b)| Arc::ptr_eq(a, b)));
    }
}
