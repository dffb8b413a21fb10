//! Sidecar mode: PeerAuthentication (mesh → namespace → workload, ports), the
//! outbound service index by address, and the passthrough and inbound routes.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use super::{mesh, registry::Registry, routes};
use crate::{
    config::{
        istio::{PeerAuthentication, ServicePort},
        Bootstrap, Diagnostic, MeshConfig, Resource, ResourceRef, SidecarSettings, Spec,
    },
    route::{L4Route, RouteTable, Target, VirtualHost},
    security::identity::{spiffe_id, WorkloadIdentity},
    sidecar::plan::{AppProtocol, InboundPlan, MtlsMode, OutboundPlan, OutboundService, PeerAuthn},
    telemetry::DestinationLabels,
    upstream::{Cluster, LbPolicy, Protocol, RetryPolicy},
};

/// What the sidecar plans are compiled from.
pub(super) struct Context<'a> {
    pub resources: &'a [Resource],
    pub mesh: &'a MeshConfig,
    pub bootstrap: &'a Bootstrap,
    pub settings: &'a SidecarSettings,
    pub identity: Option<&'a Arc<WorkloadIdentity>>,
}

/// Compiles both listeners' plans.
pub(super) fn plans(
    cx: &Context<'_>,
    registry: &mut Registry,
    rejected: &mut Vec<ResourceRef>,
    diags: &mut Vec<Diagnostic>,
    refs: &mut Vec<Diagnostic>,
) -> (OutboundPlan, InboundPlan) {
    let mtls = peer_authn(cx.resources, cx.mesh, cx.bootstrap, diags, rejected);
    let outbound = outbound(cx.resources, rejected, cx.mesh, cx.bootstrap, registry, refs);
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
    table.insert("*", Arc::new(VirtualHost { domain: "*".into(), routes: vec![Arc::new(route)], require_tls: false }));
    let inbound = InboundPlan {
        mtls,
        app_ip: cx.settings.app_ip,
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
fn own_labels(bootstrap: &Bootstrap, settings: &SidecarSettings) -> Arc<DestinationLabels> {
    let get = |k: &str| -> Arc<str> { bootstrap.labels.get(k).map_or("unknown", String::as_str).into() };
    let principal = spiffe_id(&bootstrap.trust_domain, &bootstrap.namespace, &settings.service_account);
    let namespace: Arc<str> = bootstrap.namespace.as_str().into();
    Arc::new(DestinationLabels {
        workload: get("app"),
        workload_namespace: namespace.clone(),
        principal: principal.into(),
        service: "unknown".into(),
        service_name: "unknown".into(),
        service_namespace: namespace,
        app: get("app"),
        version: get("version"),
    })
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

fn outbound(
    resources: &[Resource],
    rejected: &[ResourceRef],
    mesh_config: &MeshConfig,
    bootstrap: &Bootstrap,
    registry: &mut Registry,
    refs: &mut Vec<Diagnostic>,
) -> OutboundPlan {
    let mut table = mesh::route_table(resources, rejected, bootstrap, registry, refs);
    let mut services = HashMap::new();
    for r in resources.iter().filter(|r| !rejected.contains(&r.id)) {
        let Spec::ServiceEntry(se) = &r.spec else { continue };
        if !super::exported_to(&se.export_to, &r.id.namespace, &bootstrap.namespace) {
            continue;
        }
        let ips: Vec<std::net::IpAddr> = se.addresses.iter().filter_map(|a| a.parse().ok()).collect();
        for host in se.hosts.iter().map(|h| bootstrap.fqdn(h, &r.id.namespace)) {
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
    let allow_any = mesh_config.outbound_traffic_policy.mode.as_deref() != Some("REGISTRY_ONLY");
    let passthrough = Arc::new(
        Cluster::new("PassthroughCluster".into(), Protocol::Http1, LbPolicy::Random, vec![], vec![]).original_dst(),
    );
    let target = || Target { name: passthrough.name.clone(), cluster: Some(passthrough.clone()) };
    if allow_any {
        let route = mesh::catch_all("allow_any", target(), RetryPolicy::none());
        table.insert(
            "*",
            Arc::new(VirtualHost { domain: "*".into(), routes: vec![Arc::new(route)], require_tls: false }),
        );
    }
    OutboundPlan { table, services, allow_any, passthrough: vec![l4_to(target())] }
}

/// The PeerAuthentication in force: the workload's policy over the namespace's over
/// the mesh's (the first of each level wins); `UNSET` inherits; port-level modes come
/// from the workload's policy only.
fn peer_authn(
    resources: &[Resource],
    mesh: &MeshConfig,
    bootstrap: &Bootstrap,
    diags: &mut Vec<Diagnostic>,
    rejected: &mut Vec<ResourceRef>,
) -> PeerAuthn {
    let mut mesh_level = None;
    let mut namespace_level = None;
    let mut workload_level = None;
    for r in resources {
        let Spec::PeerAuthentication(pa) = &r.spec else { continue };
        let Some(level) = checked(r, pa, diags) else {
            rejected.push(r.id.clone());
            continue;
        };
        let selects =
            pa.selector.as_ref().map(|s| s.match_labels.iter().all(|(k, v)| bootstrap.labels.get(k) == Some(v)));
        let slot = match selects {
            Some(true) if r.id.namespace == bootstrap.namespace => &mut workload_level,
            Some(_) => continue,
            None if r.id.namespace == mesh.root_namespace => &mut mesh_level,
            None if r.id.namespace == bootstrap.namespace => &mut namespace_level,
            None => continue,
        };
        if slot.is_none() {
            *slot = Some((level, r));
        } else {
            let msg = "another PeerAuthentication already applies at this level; the first one wins";
            diags.push(Diagnostic::warning(&r.origin, &r.id, "spec", msg));
        }
    }
    let mode_of = |l: &Option<(Level, &Resource)>| l.as_ref().and_then(|(l, _)| l.mode);
    let default =
        mode_of(&workload_level).or(mode_of(&namespace_level)).or(mode_of(&mesh_level)).unwrap_or(MtlsMode::Permissive);
    let ports = workload_level
        .map(|(l, _)| l.ports.into_iter().map(|(p, m)| (p, m.unwrap_or(default))).collect())
        .unwrap_or_default();
    PeerAuthn { default, ports }
}

/// One policy's own modes.
struct Level {
    mode: Option<MtlsMode>,
    ports: Vec<(u16, Option<MtlsMode>)>,
}

fn checked(r: &Resource, pa: &PeerAuthentication, diags: &mut Vec<Diagnostic>) -> Option<Level> {
    let mode = match MtlsMode::parse(pa.mtls.as_ref().and_then(|m| m.mode.as_deref())) {
        Ok(m) => m,
        Err(e) => {
            diags.push(Diagnostic::error(&r.origin, &r.id, "spec.mtls.mode", e));
            return None;
        }
    };
    let mut ports = Vec::new();
    for (key, m) in &pa.port_level_mtls {
        let field = format!("spec.portLevelMtls.{key}");
        let Ok(port) = key.parse::<u16>() else {
            diags.push(Diagnostic::error(&r.origin, &r.id, field, format!("{key:?} is not a port number")));
            return None;
        };
        match MtlsMode::parse(m.mode.as_deref()) {
            Ok(mode) => ports.push((port, mode)),
            Err(e) => {
                diags.push(Diagnostic::error(&r.origin, &r.id, format!("{field}.mode"), e));
                return None;
            }
        }
    }
    if !ports.is_empty() && pa.selector.is_none() {
        let msg = "portLevelMtls applies only with a workload selector (Istio ignores it here)";
        diags.push(Diagnostic::warning(&r.origin, &r.id, "spec.portLevelMtls", msg));
        ports.clear();
    }
    Some(Level { mode, ports })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy(yaml: &str, labels: &[(&str, &str)]) -> (PeerAuthn, Vec<Diagnostic>) {
        let loaded = crate::config::load_text(yaml, Path::new("pa.yaml"), "shop");
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let bootstrap = Bootstrap {
            namespace: "shop".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Bootstrap::default()
        };
        let (mut diags, mut rejected) = (Vec::new(), Vec::new());
        let mtls = peer_authn(&loaded.resources, &MeshConfig::default(), &bootstrap, &mut diags, &mut rejected);
        (mtls, diags)
    }

    const LEVELS: &str = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: cart}
spec:
  selector: {matchLabels: {app: cart}}
  mtls: {mode: UNSET}
  portLevelMtls:
    '8080': {mode: PERMISSIVE}
    '9000': {mode: UNSET}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: other, namespace: elsewhere}
spec: {mtls: {mode: PERMISSIVE}}
";

    #[test]
    fn workload_over_namespace_over_mesh_with_unset_inheriting() {
        let (cart, diags) = policy(LEVELS, &[("app", "cart")]);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(cart.default, MtlsMode::Disable, "UNSET inherits the namespace's mode");
        assert_eq!(cart.mode(8080), MtlsMode::Permissive);
        assert_eq!(cart.mode(9000), MtlsMode::Disable, "a port's UNSET inherits the workload's mode");
        let (web, _) = policy(LEVELS, &[("app", "web")]);
        assert_eq!((web.default, web.mode(8080)), (MtlsMode::Disable, MtlsMode::Disable));
        let mesh_only = LEVELS.split("---").next().unwrap();
        assert_eq!(policy(mesh_only, &[]).0.default, MtlsMode::Strict);
        assert_eq!(policy("", &[]).0.default, MtlsMode::Permissive, "Istio's default without a policy");
    }

    #[test]
    fn bad_modes_are_named_and_port_levels_need_a_selector() {
        let yaml = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: typo}
spec: {mtls: {mode: STRIKT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ports}
spec:
  mtls: {mode: STRICT}
  portLevelMtls: {'80': {mode: DISABLE}}
";
        let (mtls, diags) = policy(yaml, &[]);
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("PeerAuthentication/shop/typo: spec.mtls.mode") && text[0].contains("STRIKT"),
            "{text:?}"
        );
        assert!(text[1].contains("spec.portLevelMtls") && text[1].contains("selector"), "{text:?}");
        assert_eq!((mtls.default, mtls.mode(80)), (MtlsMode::Strict, MtlsMode::Strict));
    }
}
