//! `compile`: resources → `Snapshot`. Each resource is checked on its own; one that
//! fails is rejected alone (and named), everything else applies.

mod binding;
mod mesh;
mod registry;
mod routes;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::SystemTime,
};

use self::{binding::PortServers, registry::Registry, routes::PortContext};
use super::{ListenerProtocol, ListenerSpec, Snapshot};
use crate::{
    config::{Bootstrap, Diagnostic, Resource, ResourceRef, Spec},
    route::{Route, RouteTable, VirtualHost},
};

/// The result of compiling a set of resources.
#[derive(Debug)]
pub struct Compiled {
    /// The snapshot (version 0: the reloader numbers it).
    pub snapshot: Snapshot,
    /// Errors and warnings, each naming file, line, resource and field.
    pub diagnostics: Vec<Diagnostic>,
    /// Resources left out because of errors.
    pub rejected: Vec<ResourceRef>,
}

#[derive(Default)]
struct VhostBuild {
    routes: Vec<Arc<Route>>,
    sources: HashSet<ResourceRef>,
    require_tls: bool,
}

/// Compiles `resources` (in Istio order) for the gateway described by `bootstrap`.
pub fn compile(resources: &[Resource], bootstrap: &Bootstrap) -> Compiled {
    let mut diagnostics = Vec::new();
    let mut refs = Vec::new();
    let mut rejected = Vec::new();
    let mut registry = Registry::build(resources, bootstrap);
    let ports = binding::gateway_servers(resources, bootstrap, &mut diagnostics);
    let gateway_names: HashSet<String> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::Gateway(_)))
        .map(|r| format!("{}/{}", r.id.namespace, r.id.name))
        .collect();

    for r in resources {
        if let Spec::DestinationRule(dr) = &r.spec {
            diagnostics.extend(check_destination_rule(r, dr));
        }
    }
    let mut vhosts: BTreeMap<u16, Vec<(String, VhostBuild)>> = BTreeMap::new();
    for r in resources {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        if !exported_to(&vs.export_to, &r.id.namespace, &bootstrap.namespace) {
            continue;
        }
        if let Err(errs) = check_virtual_service(r, vs) {
            diagnostics.extend(errs);
            rejected.push(r.id.clone());
            continue;
        }
        if !vs.tls.is_empty() || !vs.tcp.is_empty() {
            let msg = "tls and tcp routes are not served yet (TODO(#3))";
            diagnostics.push(Diagnostic::warning(&r.origin, &r.id, "spec", msg));
        }
        let gateways = routes::vs_gateways(r, vs, bootstrap);
        for (i, g) in vs.gateways.iter().enumerate() {
            if let Some(g) = binding::resolve_gateway_ref(g, &r.id.namespace, bootstrap) {
                if !gateway_names.contains(&g) {
                    refs.push(Diagnostic::error(
                        &r.origin,
                        &r.id,
                        format!("spec.gateways[{i}]"),
                        format!("gateway {g} not found"),
                    ));
                }
            }
        }
        let hosts: Vec<String> = vs
            .hosts
            .iter()
            .map(|h| bootstrap.fqdn(h, &r.id.namespace))
            .collect();
        let bound: Vec<(u16, &PortServers, Vec<String>)> = ports
            .iter()
            .map(|(port, servers)| {
                (
                    *port,
                    servers,
                    binding::domains(&hosts, &r.id.namespace, &gateways, servers),
                )
            })
            .filter(|(_, _, domains)| !domains.is_empty())
            .collect();
        // Compile once per bound port (destination ports default to the listener port);
        // an unbound VirtualService is still compiled once so that its errors are found.
        let mut per_port = Vec::new();
        let mut failed = None;
        let targets: Vec<(u16, Option<&PortServers>)> = if bound.is_empty() {
            vec![(0, None)]
        } else {
            bound.iter().map(|(p, s, _)| (*p, Some(*s))).collect()
        };
        for (port, servers) in targets {
            let on_port = |g: &str| servers.is_some_and(|s| s.has_gateway(g));
            let cx = PortContext {
                port,
                gateways_on_port: &on_port,
                mesh: false,
            };
            match routes::compile_http(r, vs, &cx, &mut registry, bootstrap, &mut refs) {
                Ok(routes) => per_port.push((port, routes)),
                Err(errs) => {
                    failed = Some(errs);
                    break;
                }
            }
        }
        if let Some(errs) = failed {
            diagnostics.extend(errs);
            rejected.push(r.id.clone());
            continue;
        }
        for ((port, _, domains), (_, routes)) in bound.iter().zip(per_port) {
            let table = vhosts.entry(*port).or_default();
            for domain in domains {
                let idx = match table.iter().position(|(d, _)| d == domain) {
                    Some(i) => i,
                    None => {
                        table.push((domain.clone(), VhostBuild::default()));
                        table.len() - 1
                    }
                };
                let vh = &mut table[idx].1;
                vh.routes.extend(routes.iter().cloned());
                vh.sources.insert(r.id.clone());
            }
        }
    }

    let mut route_tables = HashMap::new();
    let mut listeners = Vec::new();
    for (port, servers) in &ports {
        listeners.push(ListenerSpec {
            port: *port,
            bind: servers.bind,
            protocol: ListenerProtocol::Http,
        });
        let table = vhosts.entry(*port).or_default();
        for server in servers.servers.iter().filter(|s| s.https_redirect) {
            for (_, host) in &server.hosts {
                if !table.iter().any(|(d, _)| d == host) {
                    table.push((host.clone(), VhostBuild::default()));
                }
                for (domain, vh) in table.iter_mut() {
                    if binding::intersect(host, domain).as_deref() == Some(domain.as_str()) {
                        vh.require_tls = true;
                    }
                }
            }
        }
        let mut rt = RouteTable::default();
        for (domain, mut vh) in std::mem::take(table) {
            if vh.sources.len() > 1 {
                // Istio: when VirtualServices merge on a host, catch-all rules go last.
                let (catch_all, specific): (Vec<_>, Vec<_>) =
                    vh.routes.into_iter().partition(|r| r.is_catch_all());
                vh.routes = specific.into_iter().chain(catch_all).collect();
            }
            let vhost = VirtualHost {
                domain: domain.as_str().into(),
                routes: vh.routes,
                require_tls: vh.require_tls,
            };
            rt.insert(&domain, Arc::new(vhost));
        }
        route_tables.insert(*port, rt);
    }

    if let Some(port) = bootstrap.mesh_port {
        if ports.contains_key(&port) {
            let msg = format!(
                "mesh port {port} is also a Gateway server port; the mesh listener is not opened"
            );
            tracing::error!("{msg}");
        } else {
            let table =
                mesh::route_table(resources, &rejected, bootstrap, &mut registry, &mut refs);
            listeners.push(ListenerSpec {
                port,
                bind: bootstrap.bind_ip,
                protocol: ListenerProtocol::Http,
            });
            route_tables.insert(port, table);
        }
    }

    let mut seen = HashSet::new();
    refs.retain(|d| seen.insert(d.to_string()));
    let snapshot = Snapshot {
        version: 0,
        listeners,
        route_tables,
        clusters: registry.into_clusters(),
        diagnostics: diagnostics.iter().chain(&refs).cloned().collect(),
        created: Some(SystemTime::now()),
    };
    diagnostics.extend(refs);
    Compiled {
        snapshot,
        diagnostics,
        rejected,
    }
}

/// Istio `exportTo`: empty or `*` is visible everywhere, `.` only in the resource's
/// own namespace, otherwise in the namespaces listed.
pub(super) fn exported_to(export_to: &[String], own: &str, viewer: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == viewer || (e == "." && own == viewer))
}

/// Policy blocks read but not enforced yet are reported, never silently accepted.
fn check_destination_rule(
    r: &Resource,
    dr: &crate::config::istio::DestinationRule,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut policies = vec![("spec.trafficPolicy".to_string(), dr.traffic_policy.as_ref())];
    policies.extend(dr.subsets.iter().enumerate().map(|(i, s)| {
        (
            format!("spec.subsets[{i}].trafficPolicy"),
            s.traffic_policy.as_ref(),
        )
    }));
    for (field, tp) in policies {
        let Some(tp) = tp else { continue };
        let mut unapplied = Vec::new();
        if tp.connection_pool.is_some()
            || tp
                .port_level_settings
                .iter()
                .any(|p| p.connection_pool.is_some())
        {
            unapplied.push("connectionPool (TODO(#8))");
        }
        if tp.outlier_detection.is_some()
            || tp
                .port_level_settings
                .iter()
                .any(|p| p.outlier_detection.is_some())
        {
            unapplied.push("outlierDetection (TODO(#8))");
        }
        let lb = tp.load_balancer.iter().chain(
            tp.port_level_settings
                .iter()
                .filter_map(|p| p.load_balancer.as_ref()),
        );
        if lb.clone().any(|l| l.consistent_hash.is_some()) {
            unapplied.push("loadBalancer.consistentHash (TODO(#8); LEAST_REQUEST is used)");
        }
        let tls_on = |t: &crate::config::istio::ClientTlsSettings| {
            t.mode.as_deref().is_some_and(|m| m != "DISABLE")
        };
        if tp.tls.as_ref().is_some_and(tls_on)
            || tp
                .port_level_settings
                .iter()
                .filter_map(|p| p.tls.as_ref())
                .any(tls_on)
        {
            unapplied.push("tls (TODO(#3); upstream traffic is plaintext)");
        }
        if tp.tunnel.is_some() || tp.proxy_protocol.is_some() || tp.retry_budget.is_some() {
            unapplied.push("tunnel/proxyProtocol/retryBudget");
        }
        if !unapplied.is_empty() {
            out.push(Diagnostic::warning(
                &r.origin,
                &r.id,
                field,
                format!("not enforced yet: {}", unapplied.join(", ")),
            ));
        }
    }
    out
}

/// Checks of one VirtualService that do not depend on other resources.
fn check_virtual_service(
    r: &Resource,
    vs: &crate::config::istio::VirtualService,
) -> Result<(), Vec<Diagnostic>> {
    let mut errs = Vec::new();
    if vs.http.is_empty() && vs.tls.is_empty() && vs.tcp.is_empty() {
        errs.push(Diagnostic::error(
            &r.origin,
            &r.id,
            "spec",
            "at least one of http, tls and tcp must be set",
        ));
    }
    if vs.hosts.is_empty() && !vs.gateways.is_empty() {
        errs.push(Diagnostic::error(
            &r.origin,
            &r.id,
            "spec.hosts",
            "hosts are required",
        ));
    }
    let mut seen = HashSet::new();
    for (i, h) in vs.hosts.iter().enumerate() {
        if !seen.insert(h.to_ascii_lowercase()) {
            errs.push(Diagnostic::error(
                &r.origin,
                &r.id,
                format!("spec.hosts[{i}]"),
                format!("duplicate host {h:?}"),
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}
