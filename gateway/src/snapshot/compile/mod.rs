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

    let mut vhosts: BTreeMap<u16, Vec<(String, VhostBuild)>> = BTreeMap::new();
    for r in resources {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        if let Err(errs) = check_virtual_service(r, vs) {
            diagnostics.extend(errs);
            rejected.push(r.id.clone());
            continue;
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
