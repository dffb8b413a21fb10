//! Sidecar mode: PeerAuthentication (mesh → namespace → workload, ports), the
//! outbound service index by address, and the passthrough and inbound routes.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use super::{mesh, peer_authn::PeerPolicies, registry::Registry, routes, Report};
use crate::config::istio::labels_match;
use crate::{
    config::{
        istio::ServicePort, Bootstrap, Diagnostic, MeshConfig, OutboundTrafficMode, Resource, SidecarSettings, Spec,
    },
    route::{L4Route, RouteTable, Target, VirtualHost},
    snapshot::sidecar::{AppProtocol, InboundPlan, OutboundPlan, OutboundService},
    telemetry::{DestinationLabels, Prehashed},
    tls::identity::{spiffe_id, WorkloadIdentity},
    upstream::{Cluster, LbPolicy, Protocol, RetryPolicy},
};

/// What the sidecar plans are compiled from.
pub(super) struct Context<'a> {
    pub resources: &'a [Resource],
    pub mesh: &'a MeshConfig,
    pub bootstrap: &'a Bootstrap,
    pub settings: &'a SidecarSettings,
    pub identity: Option<&'a Arc<WorkloadIdentity>>,
    pub peer: &'a PeerPolicies<'a>,
}

/// Compiles both listeners' plans.
pub(super) fn plans(cx: &Context<'_>, registry: &mut Registry, report: &mut Report) -> (OutboundPlan, InboundPlan) {
    let (mtls, shadowed) = cx.peer.effective(&cx.bootstrap.namespace, &cx.bootstrap.labels);
    for r in shadowed {
        let msg = "another PeerAuthentication already applies at this level; the first one wins";
        report.diagnostics.push(Diagnostic::warning(&r.origin, &r.id, "spec", msg));
    }
    let scope = Scope::of(cx, &mut report.diagnostics);
    let outbound = outbound(cx, &scope, registry, report);
    let own = own_labels(cx.bootstrap, cx.settings);
    let app = Arc::new(
        Cluster::new("InboundPassthroughCluster".into(), Protocol::Http1, LbPolicy::Random, vec![], vec![])
            .with_metrics(own)
            .original_dst(),
    );
    let target = || Target { name: app.name.clone(), cluster: Some(app.clone()) };
    let mut table = RouteTable::default();
    // Istio's inbound routes neither retry nor time out.
    let route = mesh::catch_all("inbound|http", target(), RetryPolicy::none());
    table.insert("*", Arc::new(VirtualHost::new("*", vec![Arc::new(route)], false)));
    let inbound = InboundPlan {
        mtls,
        app_ip: cx.settings.app_ip,
        endpoints: scope.endpoints,
        identity: cx.identity.cloned(),
        table,
        tcp: vec![l4_to(target())],
    };
    (outbound, inbound)
}

/// One L4 rule sending everything to `target`.
fn l4_to(target: Target) -> L4Route {
    L4Route { name: target.name.clone(), sni_hosts: Vec::new(), port: None, destinations: vec![(target, 1)] }
}

/// Istio's `destination_*` labels of this workload, for inbound metrics.
fn own_labels(bootstrap: &Bootstrap, settings: &SidecarSettings) -> Arc<Prehashed<DestinationLabels>> {
    let get = |k: &str| -> Arc<str> { bootstrap.labels.get(k).map_or("unknown", String::as_str).into() };
    let principal = spiffe_id(&bootstrap.trust_domain, &bootstrap.namespace, &settings.service_account);
    let namespace: Arc<str> = bootstrap.namespace.as_str().into();
    Arc::new(Prehashed::new(DestinationLabels {
        workload: get("app"),
        workload_namespace: namespace.clone(),
        principal: principal.into(),
        service: "unknown".into(),
        service_name: "unknown".into(),
        service_namespace: namespace,
        app: get("app"),
        version: get("version"),
    }))
}

/// How a service port's traffic is recognised: its protocol, else its name's prefix
/// (`http-web`, `grpc`), else sniffed.
fn app_protocol(port: &ServicePort) -> AppProtocol {
    let declared = if port.protocol.is_empty() {
        port.name.split('-').next().unwrap_or_default().to_ascii_uppercase()
    } else {
        port.protocol.to_ascii_uppercase()
    };
    match declared.as_str() {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => AppProtocol::Http,
        "TCP" | "TLS" | "HTTPS" | "MONGO" | "MYSQL" | "REDIS" => AppProtocol::Opaque,
        _ => AppProtocol::Detect,
    }
}

/// What the Sidecar resource that applies to this workload says: the workload's own
/// (selector) over the namespace's over the mesh's (root namespace), the first of a
/// level winning. Without one, everything is visible and the mesh decides.
struct Scope {
    /// Sidecar's namespace and `egress[].hosts` (`None`: no Sidecar, or one without egress).
    egress: Option<(String, Vec<(String, String)>)>,
    /// `outboundTrafficPolicy.mode`, when the Sidecar sets it.
    mode: Option<OutboundTrafficMode>,
    /// `ingress[]`: port → where the application listens.
    endpoints: HashMap<u16, SocketAddr>,
}

impl Scope {
    fn of(cx: &Context<'_>, diags: &mut Vec<Diagnostic>) -> Self {
        let (ns, labels, root) = (&cx.bootstrap.namespace, &cx.bootstrap.labels, &cx.mesh.root_namespace);
        let sidecars: Vec<(&Resource, &crate::config::istio::Sidecar)> = cx
            .resources
            .iter()
            .filter_map(|r| match &r.spec {
                Spec::Sidecar(s) => Some((r, s)),
                _ => None,
            })
            .collect();
        let selects = |s: &crate::config::istio::Sidecar| {
            s.workload_selector.as_ref().is_some_and(|w| labels_match(&w.labels, labels))
        };
        let chosen = sidecars
            .iter()
            .find(|(r, s)| r.id.namespace == *ns && selects(s))
            .or_else(|| sidecars.iter().find(|(r, s)| r.id.namespace == *ns && s.workload_selector.is_none()))
            .or_else(|| sidecars.iter().find(|(r, s)| r.id.namespace == *root && s.workload_selector.is_none()));
        let Some((r, s)) = chosen else {
            return Self { egress: None, mode: None, endpoints: HashMap::new() };
        };
        let mut warn = |field: String, what: &str| {
            diags.push(Diagnostic::warning(&r.origin, &r.id, field, format!("{what} is not applied")));
        };
        if s.inbound_connection_pool.is_some() {
            warn("spec.inboundConnectionPool".into(), "inboundConnectionPool");
        }
        let mut hosts = Vec::new();
        for (i, e) in s.egress.iter().enumerate() {
            if e.port.is_some() || e.bind.is_some() || e.capture_mode.is_some() {
                warn(format!("spec.egress[{i}]"), "port, bind and captureMode (every captured port is served)");
            }
            for h in &e.hosts {
                let (namespace, name) = h.split_once('/').unwrap_or(("*", h.as_str()));
                hosts.push((namespace.to_string(), name.to_ascii_lowercase()));
            }
        }
        let mut endpoints = HashMap::new();
        for (i, ing) in s.ingress.iter().enumerate() {
            if ing.bind.is_some() || ing.capture_mode.is_some() || ing.tls.is_some() || ing.connection_pool.is_some() {
                warn(format!("spec.ingress[{i}]"), "bind, captureMode, tls and connectionPool");
            }
            let Some(endpoint) = &ing.default_endpoint else { continue };
            let parsed =
                endpoint.parse::<SocketAddr>().ok().filter(|a| a.ip().is_loopback() || a.ip().is_unspecified());
            match (parsed, u16::try_from(ing.port.number)) {
                (Some(a), Ok(port)) => {
                    // `0.0.0.0:PORT` is the application on the pod's own address.
                    let ip = if a.ip().is_unspecified() { cx.settings.app_ip } else { a.ip() };
                    endpoints.insert(port, SocketAddr::new(ip, a.port()));
                }
                _ => warn(
                    format!("spec.ingress[{i}].defaultEndpoint"),
                    &format!("{endpoint:?} (only 127.0.0.1:PORT and 0.0.0.0:PORT are supported)"),
                ),
            }
        }
        let egress = (!hosts.is_empty()).then(|| (r.id.namespace.clone(), hosts));
        let mode = s.outbound_traffic_policy.as_ref().and_then(|p| p.mode);
        Self { egress, mode, endpoints }
    }

    /// Istio's egress hosts: `namespace/dnsName`, the namespace `*` (any), `.` (the
    /// Sidecar's own), `~` (none) or a name; the name `*`, `*.suffix` or exact.
    fn visible(&self, host: &str, namespace: &str) -> bool {
        let Some((own, hosts)) = &self.egress else { return true };
        hosts.iter().any(|(ns, name)| {
            let ns_ok = match ns.as_str() {
                "*" => true,
                "~" => false,
                "." => namespace == own,
                other => namespace == other,
            };
            ns_ok && crate::route::host_matches(name, host)
        })
    }
}

fn outbound(cx: &Context<'_>, scope: &Scope, registry: &mut Registry, report: &mut Report) -> OutboundPlan {
    let (resources, bootstrap, mesh_config) = (cx.resources, cx.bootstrap, cx.mesh);
    let visible = |host: &str, namespace: &str| scope.visible(host, namespace);
    let mut table = mesh::route_table(resources, report, bootstrap, registry, &visible);
    let mut services = HashMap::new();
    for r in resources.iter().filter(|r| !report.rejected.contains(&r.id)) {
        let Spec::ServiceEntry(se) = &r.spec else { continue };
        if !super::exported_to(&se.export_to, &r.id.namespace, &bootstrap.namespace) {
            continue;
        }
        let ips: Vec<std::net::IpAddr> = se.addresses.iter().filter_map(|a| a.parse().ok()).collect();
        let hosts = se.hosts.iter().map(|h| bootstrap.fqdn(h, &r.id.namespace));
        for host in hosts.filter(|h| scope.visible(h, &r.id.namespace)) {
            for ip in &ips {
                // Requests naming the address instead of the host route like the host.
                if let Some(vhost) = table.exact(&host) {
                    table.insert(&ip.to_string(), vhost);
                }
                for port in &se.ports {
                    let Ok(number) = u16::try_from(port.number) else { continue };
                    let target = routes::resolve(registry, &host, number, None).unwrap_or_else(|(t, _)| t);
                    let service = OutboundService {
                        host: host.as_str().into(),
                        protocol: app_protocol(port),
                        tcp: vec![l4_to(target)],
                    };
                    services.entry(SocketAddr::new(*ip, number)).or_insert(service);
                }
            }
        }
    }
    let mode = scope.mode.or(mesh_config.outbound_traffic_policy.mode);
    let allow_any = mode != Some(OutboundTrafficMode::RegistryOnly);
    let passthrough = Arc::new(
        Cluster::new("PassthroughCluster".into(), Protocol::Http1, LbPolicy::Random, vec![], vec![]).original_dst(),
    );
    let target = || Target { name: passthrough.name.clone(), cluster: Some(passthrough.clone()) };
    // Istio's last virtual host: pass other hosts through, or answer 502 (BlackHoleCluster).
    let route = if allow_any {
        mesh::catch_all("allow_any", target(), RetryPolicy::none())
    } else {
        mesh::answer_all("block_all", http::StatusCode::BAD_GATEWAY)
    };
    table.insert("*", Arc::new(VirtualHost::new("*", vec![Arc::new(route)], false)));
    OutboundPlan { table, services, allow_any, passthrough: vec![l4_to(target())] }
}
