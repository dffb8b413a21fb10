//! VirtualServices bound to the gateway's servers: each one checked, its HTTP rules
//! compiled once per port it binds to, and the rules gathered per route table and
//! domain; its `tls`/`tcp` rules kept for the listener stage.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use super::{
    binding::{self, PortServers, ServerBinding, ServerKind},
    l4,
    registry::Registry,
    routes::{self, Destinations, PortContext},
    Report,
};
use crate::{
    config::{Bootstrap, Diagnostic, Resource, ResourceRef, Spec},
    route::Route,
};

/// One HTTP route table: a plaintext port's (all its servers), or an HTTPS server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct TableKey {
    pub(super) port: u16,
    pub(super) server: Option<usize>,
}

/// The rules of one domain of a route table, and where they came from.
#[derive(Default)]
pub(super) struct VhostBuild {
    pub(super) routes: Vec<Arc<Route>>,
    pub(super) sources: HashSet<ResourceRef>,
    pub(super) require_tls: bool,
}

/// What the VirtualServices bound: HTTP rules by table and domain (in binding order),
/// and the VirtualServices with `tls` or `tcp` rules.
pub(super) struct Bound<'a> {
    pub(super) vhosts: HashMap<TableKey, Vec<(String, VhostBuild)>>,
    pub(super) l4: Vec<l4::Source<'a>>,
}

/// Binds every VirtualService visible here to the route tables of `ports`. One that
/// fails its checks or whose rules do not compile is rejected alone; an unbound one
/// is still compiled once, so that its errors are reported.
pub(super) fn bind<'a>(
    resources: &'a [Resource],
    ports: &BTreeMap<u16, PortServers>,
    bootstrap: &Bootstrap,
    registry: &mut Registry,
    report: &mut Report,
) -> Bound<'a> {
    let tables = route_tables(ports);
    let gateway_names: HashSet<String> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::Gateway(_)))
        .map(|r| format!("{}/{}", r.id.namespace, r.id.name))
        .collect();
    let mut bound = Bound { vhosts: HashMap::new(), l4: Vec::new() };
    for r in resources {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        if !super::exported_to(&vs.export_to, &r.id.namespace, &bootstrap.namespace) {
            continue;
        }
        let errors = vs.check();
        if !errors.is_empty() {
            report.reject(r, errors.into_iter().map(|(f, m)| Diagnostic::error(&r.origin, &r.id, f, m)));
            continue;
        }
        let gateways = routes::vs_gateways(r, vs, bootstrap);
        for (i, g) in vs.gateways.iter().enumerate() {
            if let Some(g) = binding::resolve_gateway_ref(g, &r.id.namespace, bootstrap) {
                if !gateway_names.contains(&g) {
                    let msg = format!("gateway {g} not found");
                    report.references.push(Diagnostic::error(&r.origin, &r.id, format!("spec.gateways[{i}]"), msg));
                }
            }
        }
        let hosts: Vec<String> = vs.hosts.iter().map(|h| bootstrap.fqdn(h, &r.id.namespace)).collect();
        let domains: Vec<(TableKey, Vec<String>)> = tables
            .iter()
            .map(|(key, servers)| (*key, binding::domains(&hosts, &r.id.namespace, &gateways, servers)))
            .filter(|(_, domains)| !domains.is_empty())
            .collect();
        // Compile once per bound port (destination ports default to the listener port).
        let mut bound_ports: Vec<u16> = domains.iter().map(|(k, _)| k.port).collect();
        bound_ports.dedup();
        if bound_ports.is_empty() {
            bound_ports.push(0);
        }
        let mut per_port = HashMap::new();
        let mut failed = None;
        for port in bound_ports {
            let on_port = |g: &str| ports.get(&port).is_some_and(|s| s.has_gateway(g));
            let cx = PortContext { port, gateways_on_port: &on_port, mesh: false };
            let mut dests = Destinations { registry: &mut *registry, bootstrap, report: &mut *report };
            match routes::compile_http(r, vs, &cx, &mut dests) {
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
            report.reject(r, errs);
            continue;
        }
        for (key, domains) in &domains {
            let table = bound.vhosts.entry(*key).or_default();
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
            bound.l4.push(l4::Source { resource: r, vs, gateways, hosts });
        }
    }
    bound
}

/// The HTTP route tables of the ports: one per plaintext port, one per HTTPS server.
fn route_tables(ports: &BTreeMap<u16, PortServers>) -> Vec<(TableKey, Vec<&ServerBinding>)> {
    ports
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
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        config::{load_text, MeshConfig},
        snapshot::{compile::peer_authn::PeerPolicies, Caches},
    };

    const GATEWAYS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*.shop.test", "team/*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["api.shop.test"]
    tls: {mode: SIMPLE, serverCertificate: /nonexistent/cert.pem, privateKey: /nonexistent/key.pem}
"#;

    /// A VirtualService of `hosts` on `gateways` (flow sequences), with one HTTP rule
    /// answering 200 unless `http` is false.
    fn virtual_service(name: &str, namespace: &str, hosts: &str, gateways: &str, http: bool) -> String {
        let rule = if http { "  http:\n  - directResponse: {status: 200}\n" } else { "" };
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: {hosts}
  gateways: {gateways}
{rule}"
        )
    }

    /// Route tables as `(port, server, domains)`.
    type Tables = Vec<(u16, Option<usize>, Vec<String>)>;

    /// Binds `docs` after the Gateways: the domains of each table, and what was rejected.
    fn bind_docs(docs: &[String]) -> (Tables, Vec<String>) {
        let text = std::iter::once(GATEWAYS.to_string()).chain(docs.iter().cloned()).collect::<Vec<_>>().join("---\n");
        let loaded = load_text(&text, Path::new("vs.yaml"), "default");
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let (bootstrap, caches) = (Bootstrap::default(), Caches::default());
        let mut report = Report::default();
        let peer = PeerPolicies::collect(&loaded.resources, &MeshConfig::default(), &mut report);
        let mut registry = Registry::build(&loaded.resources, &bootstrap, &caches, &peer, &mut report);
        let ports = binding::gateway_servers(&loaded.resources, &bootstrap, &mut report);
        let bound = bind(&loaded.resources, &ports, &bootstrap, &mut registry, &mut report);
        let mut tables: Vec<_> = bound
            .vhosts
            .into_iter()
            .map(|(key, vhosts)| (key.port, key.server, vhosts.into_iter().map(|(d, _)| d).collect()))
            .collect();
        tables.sort();
        (tables, report.rejected.into_iter().map(|r| r.name).collect())
    }

    struct Case {
        what: &'static str,
        docs: Vec<String>,
        /// `(port, server, domains)`.
        tables: Vec<(u16, Option<usize>, Vec<&'static str>)>,
        rejected: Vec<&'static str>,
    }

    #[test]
    fn virtual_services_bind_to_the_tables_their_hosts_intersect() {
        let cases = [
            Case {
                what: "a wildcard server host narrows to the VirtualService's host",
                docs: vec![virtual_service("shop", "default", "[cart.shop.test]", "[web]", true)],
                tables: vec![(80, None, vec!["cart.shop.test"])],
                rejected: vec![],
            },
            Case {
                what: "the HTTPS server has its own table",
                docs: vec![virtual_service("api", "default", r#"["*.shop.test"]"#, "[web]", true)],
                tables: vec![(80, None, vec!["*.shop.test"]), (443, Some(0), vec!["api.shop.test"])],
                rejected: vec![],
            },
            Case {
                what: "a namespace-scoped server host binds only that namespace's VirtualServices",
                docs: vec![
                    virtual_service("ours", "team", "[tools.example]", "[default/web]", true),
                    virtual_service("theirs", "other", "[other.example]", "[default/web]", true),
                ],
                tables: vec![(80, None, vec!["tools.example"])],
                rejected: vec![],
            },
            Case {
                what: "a VirtualService bound to no gateway of this proxy binds nothing",
                docs: vec![virtual_service("mesh", "default", "[cart.shop.test]", "[]", true)],
                tables: vec![],
                rejected: vec![],
            },
            Case {
                what: "a VirtualService failing its checks is rejected alone",
                docs: vec![
                    virtual_service("empty", "default", "[a.shop.test]", "[web]", false),
                    virtual_service("twice", "default", "[b.shop.test, B.shop.test]", "[web]", true),
                    virtual_service("good", "default", "[c.shop.test]", "[web]", true),
                ],
                tables: vec![(80, None, vec!["c.shop.test"])],
                rejected: vec!["empty", "twice"],
            },
        ];
        for Case { what, docs, tables, rejected } in cases {
            let (got_tables, got_rejected) = bind_docs(&docs);
            let want: Tables =
                tables.into_iter().map(|(p, s, d)| (p, s, d.into_iter().map(String::from).collect())).collect();
            assert_eq!(got_tables, want, "{what}");
            assert_eq!(got_rejected, rejected, "{what}");
        }
    }
}
