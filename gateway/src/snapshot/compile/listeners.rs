//! The listeners and what each port serves: a gateway's Gateway servers (HTTP route
//! tables, TLS filter chains chosen by SNI, TCP routes), the mesh port, or a
//! sidecar's outbound and inbound listeners.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use super::{
    binding::{self, PortServers, ServerBinding, ServerKind},
    l4,
    registry::Registry,
    routes::Destinations,
    vhosts::{Bound, TableKey, VhostBuild},
    Report,
};
use crate::{
    config::{Bootstrap, Diagnostic},
    route::{RouteTable, VirtualHost},
    snapshot::{ChainAction, FilterChain, ListenerSpec, PortPlan},
    tls::{
        certs::CertStore,
        server::{server_config, Credentials},
    },
};

/// The listeners to open and each port's plan.
#[derive(Default)]
pub(super) struct Listeners {
    pub(super) specs: Vec<ListenerSpec>,
    pub(super) plans: HashMap<u16, PortPlan>,
}

impl Listeners {
    /// Adds a listener; `drains` says whether it closes when the process drains.
    pub(super) fn add(&mut self, port: u16, bind: IpAddr, drains: bool, plan: PortPlan) {
        self.specs.push(ListenerSpec { port, bind, drains });
        self.plans.insert(port, plan);
    }
}

/// A gateway's listeners: one per Gateway server port, serving the route tables and
/// TCP/TLS routes the VirtualServices bound.
pub(super) fn gateway(
    ports: &BTreeMap<u16, PortServers>,
    mut bound: Bound<'_>,
    bootstrap: &Bootstrap,
    certs: &CertStore,
    registry: &mut Registry,
    report: &mut Report,
) -> Listeners {
    let mut listeners = Listeners::default();
    let dirs = bootstrap.secrets_dir.iter().chain([&bootstrap.credentials_dir]).cloned().collect();
    let creds = Credentials { dirs, namespace: bootstrap.namespace.clone() };
    for (port, servers) in ports {
        let port = *port;
        let mut table_of = |server: Option<usize>| {
            let entries = bound.vhosts.remove(&TableKey { port, server }).unwrap_or_default();
            let redirects: Vec<&ServerBinding> = servers.servers.iter().filter(|s| s.https_redirect).collect();
            build_table(entries, &redirects)
        };
        let dests = Destinations { registry: &mut *registry, bootstrap, report: &mut *report };
        let mut l4 = l4::Compiler { sources: &bound.l4, dests };
        let plan = match servers.family_kind() {
            ServerKind::Http => PortPlan::Http(table_of(None)),
            ServerKind::Tcp => PortPlan::Tcp(l4.tcp_routes(&servers.servers.iter().collect::<Vec<_>>(), port)),
            _ => {
                let mut chains = Vec::new();
                for (i, server) in servers.servers.iter().enumerate() {
                    let alpn: &[&[u8]] = if server.kind == ServerKind::Https { &[b"h2", b"http/1.1"] } else { &[] };
                    let field = format!("{}.tls", server.field);
                    let tls = match server.tls.as_ref().map(|t| server_config(t, &creds, certs, alpn)) {
                        None => None,
                        Some(Ok(compiled)) => {
                            for w in compiled.warnings {
                                let warning = Diagnostic::warning(&server.origin, &server.id, &field, w);
                                l4.dests.report.diagnostics.push(warning);
                            }
                            Some(compiled.tls)
                        }
                        Some(Err(e)) => {
                            let error = Diagnostic::error(&server.origin, &server.id, &field, e);
                            l4.dests.report.diagnostics.push(error);
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
        listeners.add(port, servers.bind, true, plan);
    }
    listeners
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
