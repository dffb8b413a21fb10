//! VirtualService `tls` and `tcp` rules → `route::L4Route` for the servers that carry
//! them: passthrough servers match by SNI, TCP and TLS-terminated TCP servers by port.

use std::collections::BTreeSet;

use super::{
    binding::ServerBinding,
    conditions::{ConfigTime, Site},
    routes::Destinations,
};
use crate::{
    config::{
        istio::{RouteDestination, VirtualService},
        Bootstrap, Resource,
    },
    route::{host_matches, L4Route},
};

/// A VirtualService with `tls` or `tcp` rules, and what it binds to.
pub(super) struct Source<'a> {
    pub resource: &'a Resource,
    pub vs: &'a VirtualService,
    /// Resolved gateway references.
    pub gateways: BTreeSet<String>,
    /// Hosts, expanded.
    pub hosts: Vec<String>,
}

/// Compiles L4 rules for servers, resolving destinations through the registry.
pub(super) struct Compiler<'a, 'r, 'c> {
    pub sources: &'a [Source<'a>],
    pub dests: Destinations<'r, 'c>,
}

impl Compiler<'_, '_, '_> {
    /// `tls` rules for a passthrough server: a rule applies when its `sniHosts` fall
    /// within the server's hosts; rules keep VirtualService order.
    pub(super) fn tls_routes(&mut self, server: &ServerBinding, port: u16) -> Vec<L4Route> {
        let mut out = Vec::new();
        for src in self.sources.iter().filter(|s| binds(s, &[server])) {
            for (i, rule) in src.vs.tls.iter().enumerate() {
                for m in rule
                    .matches
                    .iter()
                    .filter(|m| config_time_ok(m.port, &m.gateways, src, port, &[server], self.dests.bootstrap))
                {
                    let sni_hosts: Vec<String> = m
                        .sni_hosts
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .filter(|h| server.hosts.iter().any(|(_, s)| host_matches(s, h) || host_matches(h, s)))
                        .collect();
                    if sni_hosts.is_empty() {
                        continue;
                    }
                    let field = format!("spec.tls[{i}]");
                    let destinations = self.destinations(src.resource, &rule.route, port, &field);
                    out.push(L4Route {
                        name: name(src.resource),
                        sni_hosts,
                        port: m.port.and_then(|p| u16::try_from(p).ok()),
                        destinations,
                    });
                }
            }
        }
        out
    }

    /// `tcp` rules for the servers of a TCP port (or one TLS-terminated server).
    pub(super) fn tcp_routes(&mut self, servers: &[&ServerBinding], port: u16) -> Vec<L4Route> {
        let mut out = Vec::new();
        for src in self.sources.iter().filter(|s| binds(s, servers)) {
            for (i, rule) in src.vs.tcp.iter().enumerate() {
                let field = format!("spec.tcp[{i}]");
                let applies = rule.matches.is_empty()
                    || rule
                        .matches
                        .iter()
                        .any(|m| config_time_ok(m.port, &m.gateways, src, port, servers, self.dests.bootstrap));
                if applies {
                    let destinations = self.destinations(src.resource, &rule.route, port, &field);
                    out.push(L4Route { name: name(src.resource), sni_hosts: Vec::new(), port: None, destinations });
                }
            }
        }
        out
    }

    fn destinations(
        &mut self,
        r: &Resource,
        route: &[RouteDestination],
        port: u16,
        field: &str,
    ) -> Vec<(crate::route::Target, u32)> {
        let all_unset = route.iter().all(|d| d.weight.is_none());
        route
            .iter()
            .enumerate()
            .filter_map(|(k, d)| {
                let weight = match d.weight {
                    _ if route.len() == 1 || all_unset => 1,
                    None => 0,
                    Some(w) => u32::try_from(w).unwrap_or(0),
                };
                let f = format!("{field}.route[{k}].destination");
                let target = self.dests.target(&d.destination, r, port, f);
                (weight > 0).then_some((target, weight))
            })
            .collect()
    }
}

fn name(r: &Resource) -> std::sync::Arc<str> {
    format!("{}/{}", r.id.namespace, r.id.name).into()
}

/// A VirtualService binds to servers of its gateways whose hosts meet its own.
fn binds(src: &Source<'_>, servers: &[&ServerBinding]) -> bool {
    servers.iter().any(|s| {
        src.gateways.contains(&s.gateway)
            && s.hosts.iter().any(|(ns, h)| {
                (ns == "*" || *ns == src.resource.id.namespace)
                    && src.hosts.iter().any(|v| host_matches(h, v) || host_matches(v, h))
            })
    })
}

/// Config-time conditions of a TLS or TCP block (see `conditions`).
fn config_time_ok(
    port: Option<u32>,
    gateways: &[String],
    src: &Source<'_>,
    listener_port: u16,
    servers: &[&ServerBinding],
    bootstrap: &Bootstrap,
) -> bool {
    let serves = |g: &str| servers.iter().any(|s| s.gateway == g);
    let site = Site { port: listener_port, mesh: false, serves: &serves };
    ConfigTime { port, gateways, source: None }.applies(&src.resource.id.namespace, &site, bootstrap)
}
