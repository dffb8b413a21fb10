//! `compile`: resources → `Snapshot`. Each resource is checked on its own; one that
//! fails is rejected alone (and named), everything else applies.

mod binding;
mod l4;
mod mesh;
mod peer_authn;
mod registry;
mod routes;
mod security;
mod sidecar;
mod telemetry;
mod tracer;
mod wasm;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use self::{
    binding::{ServerBinding, ServerKind},
    registry::Registry,
    routes::PortContext,
};
use super::{Caches, ChainAction, FilterChain, ListenerSpec, PortPlan, Snapshot};
use crate::{
    config::{Bootstrap, Diagnostic, Resource, ResourceRef, Spec},
    route::{Route, RouteTable, VirtualHost},
    telemetry::{
        log_format::{TextFormat, ISTIO_TEXT},
        LogFormat,
    },
    tls::server::{server_config, Credentials},
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
    /// Security resources with errors, applied in their fail-closed form instead.
    pub fail_closed: Vec<ResourceRef>,
}

/// Where compile stages report problems and what became of the resources that had them.
#[derive(Debug, Default)]
struct Report {
    diagnostics: Vec<Diagnostic>,
    rejected: Vec<ResourceRef>,
    fail_closed: Vec<ResourceRef>,
}

#[derive(Default)]
struct VhostBuild {
    routes: Vec<Arc<Route>>,
    sources: HashSet<ResourceRef>,
    require_tls: bool,
}

/// One HTTP route table: a plaintext port's (all its servers), or an HTTPS server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TableKey {
    port: u16,
    server: Option<usize>,
}

/// Compiles `resources` (in Istio order) for the gateway described by `bootstrap`.
/// Certificates and remote JWKS sets come from `caches`, which outlive snapshots.
pub fn compile(resources: &[Resource], bootstrap: &Bootstrap, caches: &Caches) -> Compiled {
    let certs = &caches.certs;
    let mut report = Report::default();
    let mut refs = Vec::new();
    // Istio's mesh config: the `istio` ConfigMap (the first one, if several).
    let mesh = resources.iter().find_map(|r| match &r.spec {
        Spec::MeshConfig(m) => Some((r, m)),
        _ => None,
    });
    let default_mesh = crate::config::MeshConfig::default();
    let peer = peer_authn::PeerPolicies::collect(resources, mesh.map_or(&default_mesh, |(_, m)| m), &mut report);
    let mut registry =
        Registry::build(resources, bootstrap, caches, &peer, &mut report.diagnostics, &mut report.rejected);
    let telemetry =
        telemetry::overrides(resources, mesh.map_or(&default_mesh, |(_, m)| m), bootstrap, &mut report.diagnostics);
    let security = security::compile(resources, mesh, bootstrap, &mut registry, &caches.jwks, &mut report);
    let access_log_file = mesh.and_then(|(r, m)| match access_log_file(m) {
        Ok(file) => file,
        Err(e) => {
            report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, "data.mesh.accessLogFile", e));
            None
        }
    });
    let access_log = Arc::new(match mesh.map(|(r, m)| (r, access_log_format(m))) {
        _ if telemetry.access_log_disabled => LogFormat::Off,
        None => LogFormat::Json,
        Some((_, Ok(f))) => f,
        Some((r, Err(e))) => {
            report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, "data.mesh.accessLogFormat", e));
            LogFormat::Json
        }
    });
    let wasm = wasm::compile(
        resources,
        mesh.map_or(&default_mesh, |(_, m)| m),
        bootstrap,
        &caches.wasm,
        &mut report.diagnostics,
        &mut report.rejected,
    );
    let services = if wasm.is_empty() { HashMap::new() } else { wasm::call_targets(&mut registry) };
    let tracer = tracer::compile(mesh, &telemetry, bootstrap, &mut registry, caches, &mut report.diagnostics);
    // A sidecar serves captured traffic only; Gateway servers are a gateway's.
    let ports = match bootstrap.sidecar {
        Some(_) => Default::default(),
        None => binding::gateway_servers(resources, bootstrap, &mut report.diagnostics),
    };
    let gateway_names: HashSet<String> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::Gateway(_)))
        .map(|r| format!("{}/{}", r.id.namespace, r.id.name))
        .collect();
    for r in resources {
        if let Spec::DestinationRule(dr) = &r.spec {
            report.diagnostics.extend(check_destination_rule(r, dr));
        }
    }
    let tables: Vec<(TableKey, Vec<&ServerBinding>)> = ports
        .iter()
        .flat_map(|(port, servers)| {
            let port = *port;
            if servers.family_kind() == ServerKind::Http {
                vec![(TableKey { port, server: None }, servers.servers.iter().collect())]
            } else {
                servers
                    .servers
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.kind == ServerKind::Https)
                    .map(|(i, s)| (TableKey { port, server: Some(i) }, vec![s]))
                    .collect()
            }
        })
        .collect();

    let mut vhosts: HashMap<TableKey, Vec<(String, VhostBuild)>> = HashMap::new();
    let mut l4_sources = Vec::new();
    for r in resources {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        if !exported_to(&vs.export_to, &r.id.namespace, &bootstrap.namespace) {
            continue;
        }
        if let Err(errs) = check_virtual_service(r, vs) {
            report.diagnostics.extend(errs);
            report.rejected.push(r.id.clone());
            continue;
        }
        let gateways = routes::vs_gateways(r, vs, bootstrap);
        for (i, g) in vs.gateways.iter().enumerate() {
            if let Some(g) = binding::resolve_gateway_ref(g, &r.id.namespace, bootstrap) {
                if !gateway_names.contains(&g) {
                    let msg = format!("gateway {g} not found");
                    refs.push(Diagnostic::error(&r.origin, &r.id, format!("spec.gateways[{i}]"), msg));
                }
            }
        }
        let hosts: Vec<String> = vs.hosts.iter().map(|h| bootstrap.fqdn(h, &r.id.namespace)).collect();
        let bound: Vec<(TableKey, Vec<String>)> = tables
            .iter()
            .map(|(key, servers)| (*key, binding::domains(&hosts, &r.id.namespace, &gateways, servers)))
            .filter(|(_, domains)| !domains.is_empty())
            .collect();
        // Compile once per bound port (destination ports default to the listener port);
        // an unbound VirtualService is still compiled once so that its errors are found.
        let mut bound_ports: Vec<u16> = bound.iter().map(|(k, _)| k.port).collect();
        bound_ports.dedup();
        if bound_ports.is_empty() {
            bound_ports.push(0);
        }
        let mut per_port = HashMap::new();
        let mut failed = None;
        for port in bound_ports {
            let on_port = |g: &str| ports.get(&port).is_some_and(|s| s.has_gateway(g));
            let cx = PortContext { port, gateways_on_port: &on_port, mesh: false };
            match routes::compile_http(r, vs, &cx, &mut registry, bootstrap, &mut refs) {
                Ok(routes) => {
                    per_port.insert(port, routes);
                }
                Err(errs) => {
                    failed = Some(errs);
                    break;
                }
            }
        }
        if let Some(errs) = failed {
            report.diagnostics.extend(errs);
            report.rejected.push(r.id.clone());
            continue;
        }
        for (key, domains) in &bound {
            let table = vhosts.entry(*key).or_default();
            let routes = per_port.get(&key.port).map(Vec::as_slice).unwrap_or_default();
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
        if !vs.tls.is_empty() || !vs.tcp.is_empty() {
            l4_sources.push(l4::Source { resource: r, vs, gateways, hosts });
        }
    }

    let mut plans = HashMap::new();
    let mut listeners = Vec::new();
    let mut l4 = l4::Compiler { sources: &l4_sources, registry: &mut registry, bootstrap, refs: &mut refs };
    for (port, servers) in &ports {
        let port = *port;
        listeners.push(ListenerSpec { port, bind: servers.bind, drains: true });
        let mut table_of = |server: Option<usize>| {
            let entries = vhosts.remove(&TableKey { port, server }).unwrap_or_default();
            let redirects: Vec<&ServerBinding> = servers.servers.iter().filter(|s| s.https_redirect).collect();
            build_table(entries, &redirects)
        };
        let plan = match servers.family_kind() {
            ServerKind::Http => PortPlan::Http(table_of(None)),
            ServerKind::Tcp => PortPlan::Tcp(l4.tcp_routes(&servers.servers.iter().collect::<Vec<_>>(), port)),
            _ => {
                let mut chains = Vec::new();
                for (i, server) in servers.servers.iter().enumerate() {
                    let creds =
                        Credentials { dir: bootstrap.credentials_dir.clone(), namespace: bootstrap.namespace.clone() };
                    let alpn: &[&[u8]] = if server.kind == ServerKind::Https { &[b"h2", b"http/1.1"] } else { &[] };
                    let tls = match server.tls.as_ref().map(|t| server_config(t, &creds, certs, alpn)) {
                        None => None,
                        Some(Ok(compiled)) => {
                            for w in compiled.warnings {
                                report.diagnostics.push(Diagnostic::warning(
                                    &server.origin,
                                    &server.id,
                                    format!("{}.tls", server.field),
                                    w,
                                ));
                            }
                            Some(compiled.tls)
                        }
                        Some(Err(e)) => {
                            report.diagnostics.push(Diagnostic::error(
                                &server.origin,
                                &server.id,
                                format!("{}.tls", server.field),
                                e,
                            ));
                            continue;
                        }
                    };
                    let action = match (server.kind, tls) {
                        (ServerKind::Https, Some(tls)) => ChainAction::Https { tls, table: table_of(Some(i)) },
                        (ServerKind::TlsTcp, Some(tls)) => {
                            ChainAction::TlsTcp { tls, routes: l4.tcp_routes(&[server], port) }
                        }
                        _ => ChainAction::Passthrough { routes: l4.tls_routes(server, port) },
                    };
                    chains.push(FilterChain { server_names: server.names(), action });
                }
                PortPlan::Tls(chains)
            }
        };
        plans.insert(port, plan);
    }

    if let Some(settings) = &bootstrap.sidecar {
        let cx = sidecar::Context {
            resources,
            mesh: mesh.map_or(&default_mesh, |(_, m)| m),
            bootstrap,
            settings,
            identity: caches.identity.as_ref(),
            peer: &peer,
        };
        let (outbound, inbound) =
            sidecar::plans(&cx, &mut registry, &report.rejected, &mut report.diagnostics, &mut refs);
        listeners.push(ListenerSpec { port: settings.outbound_port, bind: bootstrap.bind_ip, drains: false });
        listeners.push(ListenerSpec { port: settings.inbound_port, bind: bootstrap.bind_ip, drains: true });
        plans.insert(settings.outbound_port, PortPlan::Outbound(outbound));
        plans.insert(settings.inbound_port, PortPlan::Inbound(inbound));
    } else if let Some(port) = bootstrap.mesh_port {
        if ports.contains_key(&port) {
            let msg = format!("mesh port {port} is also a Gateway server port; the mesh listener is not opened");
            tracing::error!("{msg}");
        } else {
            let table =
                mesh::route_table(resources, &report.rejected, bootstrap, &mut registry, &mut refs, &|_, _| true);
            listeners.push(ListenerSpec { port, bind: bootstrap.bind_ip, drains: true });
            plans.insert(port, PortPlan::Http(table));
        }
    }

    let mut seen = HashSet::new();
    refs.retain(|d| seen.insert(d.to_string()));
    let snapshot = Snapshot {
        version: 0,
        listeners,
        ports: plans,
        clusters: registry.into_clusters(),
        security,
        request_metrics: !telemetry.metrics_disabled,
        tracer,
        wasm,
        services,
        access_log,
        access_log_file,
        diagnostics: report.diagnostics.iter().chain(&refs).cloned().collect(),
        resources: Vec::new(),
        created: Some(SystemTime::now()),
    };
    report.diagnostics.extend(refs);
    let Report { diagnostics, rejected, fail_closed } = report;
    Compiled { snapshot, diagnostics, rejected, fail_closed }
}

/// Mesh config `accessLogFile` (`""` turns logs off), `accessLogEncoding`,
/// `accessLogFormat`; JSON unless TEXT is asked for.
fn access_log_format(mesh: &crate::config::MeshConfig) -> Result<LogFormat, String> {
    if mesh.access_log_file.as_deref() == Some("") {
        return Ok(LogFormat::Off);
    }
    match mesh.access_log_encoding.as_deref().unwrap_or("JSON") {
        "JSON" => Ok(LogFormat::Json),
        "TEXT" => TextFormat::parse(mesh.access_log_format.as_deref().unwrap_or(ISTIO_TEXT)).map(LogFormat::Text),
        other => Err(format!("unknown accessLogEncoding {other:?} (JSON or TEXT)")),
    }
}

/// Mesh config `accessLogFile` when it names a file; `/dev/stdout` (and no setting)
/// keep the gateway's own output.
fn access_log_file(mesh: &crate::config::MeshConfig) -> Result<Option<PathBuf>, String> {
    let Some(file) = mesh.access_log_file.as_deref().filter(|f| !f.is_empty() && *f != "/dev/stdout") else {
        return Ok(None);
    };
    let path = PathBuf::from(file);
    if !path.is_absolute() {
        return Err(format!("accessLogFile {file:?} must be an absolute path"));
    }
    if !path.parent().is_some_and(Path::is_dir) {
        return Err(format!("accessLogFile {file:?}: its directory does not exist"));
    }
    Ok(Some(path))
}

/// A route table from its virtual hosts; `httpsRedirect` servers mark theirs.
fn build_table(mut entries: Vec<(String, VhostBuild)>, redirects: &[&ServerBinding]) -> RouteTable {
    for server in redirects {
        for (_, host) in &server.hosts {
            if !entries.iter().any(|(d, _)| d == host) {
                entries.push((host.clone(), VhostBuild::default()));
            }
            for (domain, vh) in entries.iter_mut() {
                if binding::intersect(host, domain).as_deref() == Some(domain.as_str()) {
                    vh.require_tls = true;
                }
            }
        }
    }
    let mut table = RouteTable::default();
    for (domain, mut vh) in entries {
        if vh.sources.len() > 1 {
            // Istio: when VirtualServices merge on a host, catch-all rules go last.
            let (catch_all, specific): (Vec<_>, Vec<_>) = vh.routes.into_iter().partition(|r| r.is_catch_all());
            vh.routes = specific.into_iter().chain(catch_all).collect();
        }
        let vhost = VirtualHost::new(&domain, vh.routes, vh.require_tls);
        table.insert(&domain, Arc::new(vhost));
    }
    table
}

/// Istio `exportTo`: empty or `*` is visible everywhere, `.` only in the resource's
/// own namespace, otherwise in the namespaces listed.
pub(super) fn exported_to(export_to: &[String], own: &str, viewer: &str) -> bool {
    export_to.is_empty() || export_to.iter().any(|e| e == "*" || e == viewer || (e == "." && own == viewer))
}

/// Policy blocks read but not enforced yet are reported, never silently accepted.
fn check_destination_rule(r: &Resource, dr: &crate::config::istio::DestinationRule) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut policies = vec![("spec.trafficPolicy".to_string(), dr.traffic_policy.as_ref())];
    policies.extend(
        dr.subsets
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("spec.subsets[{i}].trafficPolicy"), s.traffic_policy.as_ref())),
    );
    for (field, tp) in policies {
        let Some(tp) = tp else { continue };
        let mut unapplied = Vec::new();
        let pools =
            tp.connection_pool.iter().chain(tp.port_level_settings.iter().filter_map(|p| p.connection_pool.as_ref()));
        let partly = |p: &crate::config::istio::ConnectionPoolSettings| {
            p.tcp.as_ref().is_some_and(|t| t.max_connection_duration.is_some())
                || p.http.as_ref().is_some_and(|h| {
                    h.h2_upgrade_policy.is_some()
                        || h.use_client_protocol.is_some()
                        || h.max_concurrent_streams.is_some()
                })
        };
        if pools.clone().any(partly) {
            unapplied
                .push("connectionPool maxConnectionDuration, h2UpgradePolicy, useClientProtocol, maxConcurrentStreams");
        }
        let lb = tp.load_balancer.iter().chain(tp.port_level_settings.iter().filter_map(|p| p.load_balancer.as_ref()));
        let bad_header = |c: &crate::config::istio::ConsistentHashLb| {
            c.http_header_name.as_ref().is_some_and(|h| http::HeaderName::try_from(h.as_str()).is_err())
        };
        if lb.clone().filter_map(|l| l.consistent_hash.as_ref()).any(bad_header) {
            unapplied.push("consistentHash.httpHeaderName is not a valid header name");
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
fn check_virtual_service(r: &Resource, vs: &crate::config::istio::VirtualService) -> Result<(), Vec<Diagnostic>> {
    let mut errs = Vec::new();
    if vs.http.is_empty() && vs.tls.is_empty() && vs.tcp.is_empty() {
        errs.push(Diagnostic::error(&r.origin, &r.id, "spec", "at least one of http, tls and tcp must be set"));
    }
    if vs.hosts.is_empty() && !vs.gateways.is_empty() {
        errs.push(Diagnostic::error(&r.origin, &r.id, "spec.hosts", "hosts are required"));
    }
    let mut seen = HashSet::new();
    for (i, h) in vs.hosts.iter().enumerate() {
        if !seen.insert(h.to_ascii_lowercase()) {
            errs.push(Diagnostic::error(&r.origin, &r.id, format!("spec.hosts[{i}]"), format!("duplicate host {h:?}")));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}
