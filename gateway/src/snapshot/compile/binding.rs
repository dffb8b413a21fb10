//! Gateway servers and VirtualService binding: which listener ports exist, what each
//! server on them does, and which domains of which VirtualService a server serves
//! (Istio host intersection).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::Report;
use crate::config::istio::labels_match;
use crate::config::{
    istio::{ServerTlsMode, ServerTlsSettings},
    Bootstrap, Diagnostic, Origin, Resource, ResourceRef, Spec,
};

/// What a Gateway server does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServerKind {
    /// Plaintext HTTP (HTTP, HTTP2, GRPC, GRPC-WEB).
    Http,
    /// TLS terminated, then HTTP routes.
    Https,
    /// TLS terminated, then TCP routes.
    TlsTcp,
    /// TLS passed through by SNI (`tls` routes).
    Passthrough,
    /// Opaque TCP (`tcp` routes).
    Tcp,
}

impl ServerKind {
    /// Servers of one family can share a port.
    fn family(self) -> u8 {
        match self {
            Self::Http => 0,
            Self::Https | Self::TlsTcp | Self::Passthrough => 1,
            Self::Tcp => 2,
        }
    }
}

/// One Gateway server bound on a port.
#[derive(Debug)]
pub(super) struct ServerBinding {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// `(namespace filter, dnsName)`; the filter is `*` or a namespace.
    pub hosts: Vec<(String, String)>,
    /// Gateway `tls.httpsRedirect`.
    pub https_redirect: bool,
    /// What the server does.
    pub kind: ServerKind,
    /// TLS settings of terminating servers.
    pub tls: Option<ServerTlsSettings>,
    /// The Gateway, for diagnostics.
    pub origin: Origin,
    /// The Gateway, for diagnostics.
    pub id: ResourceRef,
    /// `spec.servers[i]`, for diagnostics.
    pub field: String,
}

impl ServerBinding {
    /// The server's dnsNames (its SNI names on TLS ports).
    pub(super) fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|(_, h)| h.clone()).collect()
    }
}

/// The servers sharing one listener port.
#[derive(Debug)]
pub(super) struct PortServers {
    pub bind: IpAddr,
    pub servers: Vec<ServerBinding>,
}

impl PortServers {
    /// True when a server of gateway `gw` is on this port.
    pub(super) fn has_gateway(&self, gw: &str) -> bool {
        self.servers.iter().any(|s| s.gateway == gw)
    }

    /// The kind shared by the servers of this port's family.
    pub(super) fn family_kind(&self) -> ServerKind {
        self.servers.first().map_or(ServerKind::Http, |s| s.kind)
    }
}

/// Classifies a server; `Err` carries a warning for servers that are skipped.
fn kind_of(protocol: &str, tls: Option<&ServerTlsSettings>) -> Result<ServerKind, String> {
    use ServerTlsMode::*;
    let mode = tls.and_then(|t| t.mode).unwrap_or(Passthrough);
    match protocol {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => Ok(ServerKind::Http),
        "HTTPS" | "TLS" if tls.is_none() => Err(format!("{protocol} servers need a tls block")),
        "HTTPS" | "TLS" => match mode {
            Simple | Mutual | OptionalMutual if protocol == "HTTPS" => Ok(ServerKind::Https),
            Simple | Mutual | OptionalMutual => Ok(ServerKind::TlsTcp),
            Passthrough => Ok(ServerKind::Passthrough),
            AutoPassthrough | IstioMutual => Err(format!("tls mode {mode} is not served yet; server skipped")),
        },
        _ => Ok(ServerKind::Tcp),
    }
}

/// The servers of the Gateways selecting this gateway's labels, by port. A server
/// whose protocol family differs from the port's first server is skipped (Istio).
pub(super) fn gateway_servers(
    resources: &[Resource],
    bootstrap: &Bootstrap,
    report: &mut Report,
) -> BTreeMap<u16, PortServers> {
    let mut ports: BTreeMap<u16, PortServers> = BTreeMap::new();
    for r in resources {
        let Spec::Gateway(gw) = &r.spec else { continue };
        if !labels_match(&gw.selector, &bootstrap.labels) {
            continue;
        }
        let gateway = format!("{}/{}", r.id.namespace, r.id.name);
        for (i, server) in gw.servers.iter().enumerate() {
            let field = format!("spec.servers[{i}]");
            let protocol = server.port.protocol.to_ascii_uppercase();
            let kind = match kind_of(&protocol, server.tls.as_ref()) {
                Ok(k) => k,
                Err(msg) => {
                    report.diagnostics.push(Diagnostic::warning(&r.origin, &r.id, format!("{field}.tls"), msg));
                    continue;
                }
            };
            let Some(port) = u16::try_from(server.port.number).ok().filter(|p| *p != 0) else {
                let msg = format!("port {} is not a valid port", server.port.number);
                report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, format!("{field}.port.number"), msg));
                continue;
            };
            let bind = match server.bind.as_deref().map(str::parse::<IpAddr>) {
                None => bootstrap.bind_ip,
                Some(Ok(ip)) => ip,
                Some(Err(_)) => {
                    let msg = format!("bind {:?} is not an IP address", server.bind.as_deref().unwrap_or_default());
                    report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, format!("{field}.bind"), msg));
                    continue;
                }
            };
            if server.hosts.is_empty() {
                report.diagnostics.push(Diagnostic::error(
                    &r.origin,
                    &r.id,
                    format!("{field}.hosts"),
                    "a server needs at least one host",
                ));
                continue;
            }
            let hosts = server
                .hosts
                .iter()
                .map(|h| match h.split_once('/') {
                    Some((".", host)) => (r.id.namespace.clone(), host.to_ascii_lowercase()),
                    Some((ns, host)) => (ns.to_string(), host.to_ascii_lowercase()),
                    None => ("*".to_string(), h.to_ascii_lowercase()),
                })
                .collect();
            let entry = ports.entry(port).or_insert_with(|| PortServers { bind, servers: Vec::new() });
            if entry.servers.first().is_some_and(|first| first.kind.family() != kind.family()) {
                let msg = format!("port {port} already serves another protocol family; server skipped");
                report.diagnostics.push(Diagnostic::warning(&r.origin, &r.id, format!("{field}.port"), msg));
                continue;
            }
            entry.servers.push(ServerBinding {
                gateway: gateway.clone(),
                hosts,
                https_redirect: server.tls.as_ref().is_some_and(|t| t.https_redirect) && kind == ServerKind::Http,
                kind,
                tls: server.tls.clone().filter(|_| matches!(kind, ServerKind::Https | ServerKind::TlsTcp)),
                origin: r.origin.clone(),
                id: r.id.clone(),
                field,
            });
        }
    }
    ports
}

/// Resolves a gateway reference written in namespace `ns`; `None` for `mesh`.
pub(super) fn resolve_gateway_ref(reference: &str, ns: &str, bootstrap: &Bootstrap) -> Option<String> {
    if reference == "mesh" {
        return None;
    }
    if let Some(name) = reference.strip_prefix("./") {
        return Some(format!("{ns}/{name}"));
    }
    if reference.contains('/') {
        return Some(reference.to_string());
    }
    // Legacy `name.namespace.svc.cluster.local`.
    let suffix = format!(".svc.{}", bootstrap.domain_suffix);
    if let Some(rest) = reference.strip_suffix(&suffix) {
        if let Some((name, gw_ns)) = rest.split_once('.') {
            return Some(format!("{gw_ns}/{name}"));
        }
    }
    Some(format!("{ns}/{reference}"))
}

/// The domains a VirtualService serves through `servers`: its hosts intersected with
/// the hosts of the servers of its gateways that admit its namespace.
pub(super) fn domains(
    vs_hosts: &[String],
    vs_ns: &str,
    gateways: &BTreeSet<String>,
    servers: &[&ServerBinding],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for server in servers.iter().filter(|s| gateways.contains(&s.gateway)) {
        for (ns_filter, server_host) in &server.hosts {
            if ns_filter != "*" && ns_filter != vs_ns {
                continue;
            }
            for vs_host in vs_hosts {
                if let Some(d) = intersect(server_host, vs_host) {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
            }
        }
    }
    out
}

/// Istio host intersection: the more specific of two overlapping hosts.
pub(super) fn intersect(a: &str, b: &str) -> Option<String> {
    let covers = |wild: &str, host: &str| {
        wild == "*" || wild.strip_prefix('*').is_some_and(|s| host.ends_with(s) && host.len() > s.len())
    };
    if a == b {
        Some(a.to_string())
    } else if covers(a, b) {
        Some(b.to_string())
    } else if covers(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersection_keeps_the_more_specific_host() {
        assert_eq!(intersect("*.example.com", "shop.example.com").as_deref(), Some("shop.example.com"));
        assert_eq!(intersect("shop.example.com", "*").as_deref(), Some("shop.example.com"));
        assert_eq!(intersect("*.example.com", "*.a.example.com").as_deref(), Some("*.a.example.com"));
        assert_eq!(intersect("*.example.com", "example.com"), None);
        assert_eq!(intersect("a.com", "b.com"), None);
    }

    #[test]
    fn gateway_references_resolve_like_istio() {
        let b = Bootstrap::default();
        assert_eq!(resolve_gateway_ref("gw", "shop", &b).as_deref(), Some("shop/gw"));
        assert_eq!(resolve_gateway_ref("./gw", "shop", &b).as_deref(), Some("shop/gw"));
        assert_eq!(resolve_gateway_ref("edge/gw", "shop", &b).as_deref(), Some("edge/gw"));
        assert_eq!(resolve_gateway_ref("gw.edge.svc.cluster.local", "shop", &b).as_deref(), Some("edge/gw"));
        assert_eq!(resolve_gateway_ref("mesh", "shop", &b), None);
    }
}
