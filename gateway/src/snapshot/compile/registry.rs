//! The service registry of a file-based mesh: ServiceEntries (with inline or selected
//! WorkloadEntries) and DestinationRules, turned into clusters on demand.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::HeaderName;

use super::{peer_authn::PeerPolicies, Report};
use crate::config::istio::labels_match;
use crate::snapshot::sidecar::MtlsMode;
use crate::{
    config::{
        istio::{
            ClientTlsMode, ConsistentHashLb, DestinationRule, PortTrafficPolicy, Resolution, ServiceEntry, ServicePort,
            SimpleLb, TrafficPolicy, WorkloadEntry,
        },
        Bootstrap, Diagnostic, Resource, Spec,
    },
    snapshot::Caches,
    telemetry::{DestinationLabels, Prehashed},
    tls::{certs::CertStore, identity::WorkloadIdentity, UpstreamTls},
    upstream::{Breakers, Cluster, DnsTarget, Endpoint, HashOn, LbPolicy, OutlierPolicy, PoolSettings, Protocol},
};

/// A service of the registry: a ServiceEntry host or a Kubernetes Service.
pub(super) struct Service {
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<WorkloadEntry>,
    /// Endpoint addresses are DNS names.
    pub dns: bool,
    pub namespace: String,
    /// An endpoint serves a port only when it names it (EndpointSlice ports); otherwise
    /// it serves every port, at `targetPort` or the port number.
    pub ports_from_endpoints: bool,
}

struct Rule {
    host: String,
    spec: DestinationRule,
}

/// Services and destination rules by host, and the clusters built so far.
pub(super) struct Registry<'a> {
    services: HashMap<String, Service>,
    rules: Vec<Rule>,
    clusters: HashMap<(String, u16, Option<String>), Arc<Cluster>>,
    certs: &'a CertStore,
    identity: Option<&'a Arc<WorkloadIdentity>>,
    /// Mesh config `enableAutoMtls` (default on).
    auto_mtls: bool,
    /// PeerAuthentication, for auto mTLS: a destination that disables mTLS gets plaintext.
    peer: &'a PeerPolicies<'a>,
    domain_suffix: String,
    /// Mesh config `connectTimeout` and `tcpKeepalive`: what a DestinationRule overrides.
    defaults: PoolSettings,
}

/// Why a destination does not resolve (Istio answers 503 NC when it is hit).
pub(super) type Unresolved = String;

impl<'a> Registry<'a> {
    /// Reads the registry. DestinationRules whose TLS settings cannot be used (files
    /// missing, mismatched, expired) are reported and left out.
    pub(super) fn build(
        resources: &[Resource],
        bootstrap: &Bootstrap,
        caches: &'a Caches,
        peer: &'a PeerPolicies<'a>,
        report: &mut Report,
    ) -> Self {
        let (certs, identity) = (&caches.certs, caches.identity.as_ref());
        let workload_entries: Vec<(&str, &WorkloadEntry)> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::WorkloadEntry(we) => Some((r.id.namespace.as_str(), we)),
                _ => None,
            })
            .collect();
        // Istio's Kubernetes registry comes first: a Service wins over a ServiceEntry
        // of the same host.
        let mut services: HashMap<String, Service> =
            super::kube_services::services(resources, bootstrap).into_iter().collect();
        let mut rules = Vec::new();
        let visible = |export_to: &[String], ns: &str| super::exported_to(export_to, ns, &bootstrap.namespace);
        for r in resources {
            match &r.spec {
                Spec::ServiceEntry(se) if !visible(&se.export_to, &r.id.namespace) => {}
                Spec::DestinationRule(dr) if !visible(&dr.export_to, &r.id.namespace) => {}
                // Istio: a rule with a workloadSelector applies only to the workloads it
                // selects in its own namespace.
                Spec::DestinationRule(dr)
                    if dr
                        .workload_selector
                        .as_ref()
                        .is_some_and(|s| r.id.namespace != bootstrap.namespace || !s.selects(&bootstrap.labels)) => {}
                Spec::ServiceEntry(se) => {
                    for host in &se.hosts {
                        let host = bootstrap.fqdn(host, &r.id.namespace);
                        let service = service_of(se, &host, &r.id.namespace, &workload_entries);
                        services.entry(host).or_insert(service);
                    }
                }
                Spec::DestinationRule(dr) => match check_tls(dr, certs, identity.is_some()) {
                    Ok(warnings) => {
                        for (field, w) in warnings {
                            report.diagnostics.push(Diagnostic::warning(&r.origin, &r.id, field, w));
                        }
                        rules.push(Rule { host: bootstrap.fqdn(&dr.host, &r.id.namespace), spec: dr.clone() })
                    }
                    Err((field, e)) => {
                        report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, field, e));
                        report.rejected.push(r.id.clone());
                    }
                },
                _ => {}
            }
        }
        let mesh = resources.iter().find_map(|r| match &r.spec {
            Spec::MeshConfig(m) => Some(m),
            _ => None,
        });
        let mut defaults = PoolSettings::default();
        // Istio's `enableAutoMtls: false` leaves mutual TLS to DestinationRules.
        let auto_mtls = mesh.is_none_or(|m| m.enable_auto_mtls != Some(false));
        if let Some(m) = mesh {
            if let Some(t) = m.connect_timeout.map(|t| t.0).filter(|t| !t.is_zero()) {
                defaults.connect_timeout = t;
            }
            defaults.keepalive = m.tcp_keepalive.as_ref().map(PoolSettings::keepalive);
        }
        let domain_suffix = bootstrap.domain_suffix.clone();
        Self { services, rules, clusters: HashMap::new(), certs, identity, auto_mtls, peer, domain_suffix, defaults }
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

    /// The port numbers of a service.
    pub(super) fn service_ports(&self, host: &str) -> Vec<u16> {
        self.services
            .get(host)
            .map(|s| s.ports.iter().filter_map(|p| u16::try_from(p.number).ok()).collect())
            .unwrap_or_default()
    }

    /// The namespace a service is declared in.
    pub(super) fn service_namespace(&self, host: &str) -> Option<&str> {
        self.services.get(host).map(|s| s.namespace.as_str())
    }

    /// Every service host, sorted.
    pub(super) fn service_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.services.keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// The cluster of a mesh config extension provider: its `service` (an FQDN, or
    /// `namespace/host`) and `port`. Returns the host too, for `Host` headers.
    pub(super) fn provider_cluster<'s>(
        &mut self,
        service: &'s str,
        port: u32,
    ) -> Result<(&'s str, Arc<Cluster>), Unresolved> {
        let host = service.rsplit('/').next().unwrap_or_default();
        let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
        Ok((host, self.cluster(host, port, None)?))
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
        let protocol = Protocol::of_port(&svc_port.protocol);
        let pool = block(top, subset_policy, port, |t| t.connection_pool.clone(), |p| p.connection_pool.clone());
        let breakers = Breakers::compile(pool.as_ref());
        let pool = PoolSettings::compile(pool.as_ref(), &self.defaults);
        let tls_block = block(top, subset_policy, port, |t| t.tls.clone(), |p| p.tls.clone());
        let mesh_tls = |sans: Vec<String>| {
            let sni = format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or_default());
            self.identity.map(|id| UpstreamTls::mesh(id, protocol.mesh_alpn(), &sni, sans).map(Arc::new)).transpose()
        };
        let (tls, auto_mtls) = match tls_block {
            Some(s) if s.mode == Some(ClientTlsMode::IstioMutual) => (mesh_tls(s.subject_alt_names.clone())?, None),
            Some(settings) => (UpstreamTls::compile(&settings, protocol.alpn(), self.certs)?.map(Arc::new), None),
            // Istio auto mTLS: only when the DestinationRule says nothing about TLS.
            None if self.auto_mtls => (None, mesh_tls(Vec::new())?),
            None => (None, None),
        };
        let outlier = block(top, subset_policy, port, |t| t.outlier_detection.clone(), |p| p.outlier_detection.clone())
            .map(|o| OutlierPolicy::compile(&o));
        let mut endpoints = Vec::new();
        let mut dns = Vec::new();
        for ep in service.endpoints.iter().filter(|e| labels_match(&subset_labels, &e.labels)) {
            let named = ep.ports.get(&svc_port.name).copied();
            let ep_port = match named {
                None if service.ports_from_endpoints => continue,
                named => named.or(svc_port.target_port).unwrap_or(svc_port.number),
            };
            let Ok(ep_port) = u16::try_from(ep_port) else {
                continue;
            };
            let metrics = destination_labels(host, service, &self.domain_suffix, Some(ep));
            match ep.address.parse::<IpAddr>() {
                Ok(ip) => {
                    let mut endpoint =
                        Endpoint::new(SocketAddr::new(ip, ep_port), ep.labels.clone(), metrics).with_weight(ep.weight);
                    // Istio's auto mTLS sends plaintext to a workload whose policy disables mTLS.
                    if auto_mtls.is_some() && endpoint.mesh_tls {
                        let (policy, _) = self.peer.effective(&service.namespace, &ep.labels);
                        if policy.mode(ep_port) == MtlsMode::Disable {
                            endpoint = endpoint.plaintext();
                        }
                    }
                    endpoints.push(Arc::new(endpoint))
                }
                Err(_) if service.dns && !ep.address.starts_with("unix://") => dns.push(DnsTarget {
                    host: ep.address.clone(),
                    port: ep_port,
                    labels: ep.labels.clone(),
                    metrics,
                    weight: ep.weight,
                }),
                Err(_) => {
                    tracing::warn!(host, address = %ep.address, "endpoint address is not an IP; skipped")
                }
            }
        }
        let name: Arc<str> = format!("outbound|{port}|{}|{host}", subset.unwrap_or_default()).into();
        let service_labels = destination_labels(host, service, &self.domain_suffix, None);
        let cluster = Arc::new(
            Cluster::new(name, protocol, lb, endpoints, dns)
                .with_tls(tls)
                .with_auto_mtls(auto_mtls)
                .with_metrics(service_labels)
                .with_breakers(breakers)
                .with_outlier(outlier)
                .with_pool(pool),
        );
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
    let dns = matches!(se.resolution, Some(Resolution::Dns | Resolution::DnsRoundRobin));
    let mut endpoints = se.endpoints.clone();
    if let Some(sel) = &se.workload_selector {
        endpoints.extend(
            workload_entries
                .iter()
                .filter(|(ns, we)| *ns == namespace && labels_match(&sel.labels, &we.labels))
                .map(|(_, we)| (*we).clone()),
        );
    }
    if dns && endpoints.is_empty() && !host.starts_with('*') {
        endpoints.push(WorkloadEntry { address: host.to_string(), ..Default::default() });
    }
    Service { ports: se.ports.clone(), endpoints, dns, namespace: namespace.to_string(), ports_from_endpoints: false }
}

/// Istio's `destination_*` labels: the service from its host (`name.ns.svc.<suffix>`
/// or the ServiceEntry's namespace), the workload from the endpoint's `app` and
/// `version` labels and service account.
fn destination_labels(
    host: &str,
    service: &Service,
    suffix: &str,
    ep: Option<&WorkloadEntry>,
) -> Arc<Prehashed<DestinationLabels>> {
    let (name, ns) = host
        .strip_suffix(&format!(".svc.{suffix}"))
        .and_then(|rest| rest.split_once('.'))
        .map_or((host, service.namespace.as_str()), |(n, ns)| (n, ns));
    let label = |k: &str| -> Arc<str> { ep.and_then(|e| e.labels.get(k)).map_or("unknown", String::as_str).into() };
    let principal = ep
        .and_then(|e| e.service_account.as_ref())
        .map_or_else(|| "unknown".to_string(), |sa| format!("spiffe://{suffix}/ns/{}/sa/{sa}", service.namespace));
    Arc::new(Prehashed::new(DestinationLabels {
        workload: label("app"),
        workload_namespace: service.namespace.as_str().into(),
        principal: principal.into(),
        service: host.into(),
        service_name: name.into(),
        service_namespace: ns.into(),
        app: label("app"),
        version: label("version"),
    }))
}

/// Istio's block-level override for one policy block: a matching `portLevelSettings`
/// entry replaces the block (absent there means the default), and a subset's policy
/// replaces the top level's.
fn block<T>(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: u16,
    of_policy: impl Fn(&TrafficPolicy) -> Option<T>,
    of_port: impl Fn(&PortTrafficPolicy) -> Option<T>,
) -> Option<T> {
    let decide = |tp: &TrafficPolicy| -> Option<Option<T>> {
        match tp.port_level_settings.iter().find(|p| p.port.is_some_and(|p| p.number == u32::from(port))) {
            Some(entry) => Some(of_port(entry)),
            None => of_policy(tp).map(Some),
        }
    };
    subset.and_then(&decide).or_else(|| top.and_then(&decide)).flatten()
}

fn lb_policy(top: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>, port: u16) -> LbPolicy {
    let settings = block(top, subset, port, |t| t.load_balancer.clone(), |p| p.load_balancer.clone());
    if let Some(on) = settings.as_ref().and_then(|s| s.consistent_hash.as_ref()).and_then(hash_on) {
        return LbPolicy::ConsistentHash(on);
    }
    match settings.and_then(|s| s.simple) {
        Some(SimpleLb::RoundRobin) => LbPolicy::round_robin(),
        Some(SimpleLb::Random) => LbPolicy::Random,
        // Istio's default and LEAST_CONN are least request.
        _ => LbPolicy::LeastRequest,
    }
}

/// The key of a `consistentHash` block; `None` when it names none (or an invalid header).
fn hash_on(c: &ConsistentHashLb) -> Option<HashOn> {
    if let Some(name) = &c.http_header_name {
        return HeaderName::try_from(name.to_ascii_lowercase()).ok().map(HashOn::Header);
    }
    if let Some(cookie) = &c.http_cookie {
        return Some(HashOn::Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.map(|t| t.0),
            path: cookie.path.clone(),
        });
    }
    if c.use_source_ip == Some(true) {
        return Some(HashOn::SourceIp);
    }
    c.http_query_parameter_name.clone().map(HashOn::QueryParameter)
}

/// Every TLS block of a DestinationRule must be usable (files present and valid);
/// blocks that cannot be honoured yet come back as warnings.
fn check_tls(
    dr: &DestinationRule,
    certs: &CertStore,
    has_identity: bool,
) -> Result<Vec<(String, String)>, (String, String)> {
    let mut blocks = Vec::new();
    let mut add = |field: String, tp: &TrafficPolicy| {
        if let Some(t) = &tp.tls {
            blocks.push((format!("{field}.tls"), t.clone()));
        }
        for (i, p) in tp.port_level_settings.iter().enumerate() {
            if let Some(t) = &p.tls {
                blocks.push((format!("{field}.portLevelSettings[{i}].tls"), t.clone()));
            }
        }
    };
    if let Some(tp) = &dr.traffic_policy {
        add("spec.trafficPolicy".into(), tp);
    }
    for (i, s) in dr.subsets.iter().enumerate() {
        if let Some(tp) = &s.traffic_policy {
            add(format!("spec.subsets[{i}].trafficPolicy"), tp);
        }
    }
    let mut warnings = Vec::new();
    for (field, settings) in blocks {
        if settings.mode == Some(ClientTlsMode::IstioMutual) {
            if !has_identity {
                let why = "ISTIO_MUTUAL needs a workload identity (--identity-dir); traffic is plaintext";
                warnings.push((field, why.into()));
            }
            continue;
        }
        UpstreamTls::compile(&settings, Protocol::Http1.alpn(), certs).map_err(|e| (field, e))?;
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{config::load_text, snapshot::Caches};

    use super::*;

    /// The diagnostics of a gateway (labels `istio: ingressgateway`) routing to subset
    /// v1 of a DestinationRule selecting `selector`.
    fn compile_with_selector(selector: &str) -> Vec<String> {
        let text = format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.test]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews.test
  workloadSelector: {selector}
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews.test]
  http: [{{route: [{{destination: {{host: reviews.test, subset: v1}}}}]}}]
"
        );
        let loaded = load_text(&text, Path::new("dr.yaml"), "default");
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let bootstrap = Bootstrap { mesh_port: Some(15001), ..Bootstrap::default() };
        let compiled = crate::snapshot::compile(&loaded.resources, &bootstrap, &Caches::default());
        compiled.diagnostics.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_destination_rule_applies_only_to_the_workloads_its_selector_picks() {
        assert_eq!(compile_with_selector("{matchLabels: {istio: ingressgateway}}"), Vec::<String>::new());
        let other = compile_with_selector("{matchLabels: {app: reviews}}");
        assert!(other.iter().any(|d| d.contains("no subset \"v1\"")), "{other:?}");
    }
}
