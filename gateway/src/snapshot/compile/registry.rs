//! The service registry of a file-based mesh: ServiceEntries (with inline or selected
//! WorkloadEntries) and DestinationRules, turned into clusters on demand.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::{
    config::{
        istio::{
            DestinationRule, LoadBalancerSettings, ServiceEntry, ServicePort, SimpleLb, TrafficPolicy, WorkloadEntry,
        },
        Bootstrap, Resource, Spec,
    },
    upstream::{Cluster, DnsTarget, Endpoint, LbPolicy, Protocol},
};

struct Service {
    ports: Vec<ServicePort>,
    endpoints: Vec<WorkloadEntry>,
    dns: bool,
}

struct Rule {
    host: String,
    spec: DestinationRule,
}

/// Services and destination rules by host, and the clusters built so far.
pub(super) struct Registry {
    services: HashMap<String, Service>,
    rules: Vec<Rule>,
    clusters: HashMap<(String, u16, Option<String>), Arc<Cluster>>,
}

/// Why a destination does not resolve (Istio answers 503 NC when it is hit).
pub(super) type Unresolved = String;

impl Registry {
    pub(super) fn build(resources: &[Resource], bootstrap: &Bootstrap) -> Self {
        let workload_entries: Vec<(&str, &WorkloadEntry)> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::WorkloadEntry(we) => Some((r.id.namespace.as_str(), we)),
                _ => None,
            })
            .collect();
        let mut services = HashMap::new();
        let mut rules = Vec::new();
        let visible = |export_to: &[String], ns: &str| super::exported_to(export_to, ns, &bootstrap.namespace);
        for r in resources {
            match &r.spec {
                Spec::ServiceEntry(se) if !visible(&se.export_to, &r.id.namespace) => {}
                Spec::DestinationRule(dr) if !visible(&dr.export_to, &r.id.namespace) => {}
                Spec::ServiceEntry(se) => {
                    for host in &se.hosts {
                        let host = bootstrap.fqdn(host, &r.id.namespace);
                        let service = service_of(se, &host, &r.id.namespace, &workload_entries);
                        services.entry(host).or_insert(service);
                    }
                }
                Spec::DestinationRule(dr) => {
                    rules.push(Rule { host: bootstrap.fqdn(&dr.host, &r.id.namespace), spec: dr.clone() })
                }
                _ => {}
            }
        }
        Self { services, rules, clusters: HashMap::new() }
    }

    /// True when `host` is a registry service.
    pub(super) fn has_service(&self, host: &str) -> bool {
        self.services.contains_key(host)
    }

    /// The port a destination without `port` goes to: the service's only port, else
    /// the listener port (Istio); without a listener port (0), the first port.
    pub(super) fn default_port(&self, host: &str, listener_port: u16) -> u16 {
        match self.services.get(host).map(|s| s.ports.as_slice()) {
            Some([only, ..]) if listener_port == 0 => u16::try_from(only.number).unwrap_or(0),
            Some([only]) => u16::try_from(only.number).unwrap_or(listener_port),
            _ => listener_port,
        }
    }

    /// Every service host, sorted.
    pub(super) fn service_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.services.keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// The cluster for `(host, port, subset)`, built once per compile.
    pub(super) fn cluster(&mut self, host: &str, port: u16, subset: Option<&str>) -> Result<Arc<Cluster>, Unresolved> {
        let key = (host.to_string(), port, subset.map(str::to_string));
        if let Some(c) = self.clusters.get(&key) {
            return Ok(c.clone());
        }
        let service =
            self.services.get(host).ok_or_else(|| format!("host {host:?} is not in the registry (no ServiceEntry)"))?;
        let svc_port = service
            .ports
            .iter()
            .find(|p| p.number == u32::from(port))
            .ok_or_else(|| format!("service {host:?} has no port {port}"))?;
        let rules: Vec<&DestinationRule> = self.rules_for(host);
        let (subset_labels, subset_policy) = match subset {
            None => (BTreeMap::new(), None),
            Some(name) => {
                let s = rules
                    .iter()
                    .flat_map(|r| r.subsets.iter())
                    .find(|s| s.name == name)
                    .ok_or_else(|| format!("no subset {name:?} for host {host:?} in any DestinationRule"))?;
                (s.labels.clone(), s.traffic_policy.as_ref())
            }
        };
        let top = rules.first().and_then(|r| r.traffic_policy.as_ref());
        let lb = lb_policy(top, subset_policy, port);
        let protocol = match svc_port.protocol.to_ascii_uppercase().as_str() {
            "HTTP2" | "GRPC" | "GRPC-WEB" => Protocol::Http2,
            _ => Protocol::Http1,
        };
        let mut endpoints = Vec::new();
        let mut dns = Vec::new();
        for ep in service.endpoints.iter().filter(|e| subset_labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))) {
            let ep_port = ep.ports.get(&svc_port.name).copied().or(svc_port.target_port).unwrap_or(svc_port.number);
            let Ok(ep_port) = u16::try_from(ep_port) else {
                continue;
            };
            match ep.address.parse::<IpAddr>() {
                Ok(ip) => endpoints.push(Arc::new(Endpoint::new(SocketAddr::new(ip, ep_port), ep.labels.clone()))),
                Err(_) if service.dns && !ep.address.starts_with("unix://") => {
                    dns.push(DnsTarget { host: ep.address.clone(), port: ep_port, labels: ep.labels.clone() })
                }
                Err(_) => {
                    tracing::warn!(host, address = %ep.address, "endpoint address is not an IP; skipped")
                }
            }
        }
        let name: Arc<str> = format!("outbound|{port}|{}|{host}", subset.unwrap_or_default()).into();
        let cluster = Arc::new(Cluster::new(name, protocol, lb, endpoints, dns));
        self.clusters.insert(key, cluster.clone());
        Ok(cluster)
    }

    /// Every cluster built.
    pub(super) fn into_clusters(self) -> Vec<Arc<Cluster>> {
        self.clusters.into_values().collect()
    }

    /// Istio: an exact host rule wins over wildcards; several rules for one host merge
    /// (subsets unioned, the first rule's top-level policy wins).
    fn rules_for(&self, host: &str) -> Vec<&DestinationRule> {
        let exact: Vec<&DestinationRule> = self.rules.iter().filter(|r| r.host == host).map(|r| &r.spec).collect();
        if !exact.is_empty() {
            return exact;
        }
        let best = self
            .rules
            .iter()
            .filter(|r| r.host == "*" || r.host.strip_prefix('*').is_some_and(|s| host.ends_with(s)))
            .max_by_key(|r| r.host.len());
        best.map(|r| vec![&r.spec]).unwrap_or_default()
    }
}

fn service_of(se: &ServiceEntry, host: &str, namespace: &str, workload_entries: &[(&str, &WorkloadEntry)]) -> Service {
    let dns = matches!(se.resolution.as_deref(), Some("DNS" | "DNS_ROUND_ROBIN"));
    let mut endpoints = se.endpoints.clone();
    if let Some(sel) = &se.workload_selector {
        endpoints.extend(
            workload_entries
                .iter()
                .filter(|(ns, we)| *ns == namespace && sel.labels.iter().all(|(k, v)| we.labels.get(k) == Some(v)))
                .map(|(_, we)| (*we).clone()),
        );
    }
    if dns && endpoints.is_empty() && !host.starts_with('*') {
        endpoints.push(WorkloadEntry { address: host.to_string(), ..Default::default() });
    }
    Service { ports: se.ports.clone(), endpoints, dns }
}

/// Istio's block-level override: port-level settings replace the top-level block,
/// a subset's block replaces both.
fn lb_policy(top: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>, port: u16) -> LbPolicy {
    let pick = |tp: Option<&TrafficPolicy>| -> Option<Option<LoadBalancerSettings>> {
        let tp = tp?;
        match tp.port_level_settings.iter().find(|p| p.port.is_some_and(|p| p.number == u32::from(port))) {
            Some(pl) => Some(pl.load_balancer.clone()),
            None => tp.load_balancer.clone().map(Some),
        }
    };
    let settings = pick(subset).flatten().or_else(|| pick(top).flatten());
    match settings.and_then(|s| s.simple) {
        Some(SimpleLb::RoundRobin) => LbPolicy::round_robin(),
        Some(SimpleLb::Random) => LbPolicy::Random,
        // TODO(#8): consistentHash; Istio's default and LEAST_CONN are least request.
        _ => LbPolicy::LeastRequest,
    }
}
