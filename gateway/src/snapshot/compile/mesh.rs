//! The mesh (outbound) route table: VirtualServices bound to `mesh`, found by Host
//! like a sidecar's outbound listener, and a default route for every registry service
//! that no VirtualService claims.

use std::{collections::HashSet, sync::Arc};

use super::{registry::Registry, routes, Report};
use crate::{
    config::{Bootstrap, Resource, Spec},
    route::{
        Action, DirectResponse, Forward, HeaderRules, Route, RouteTable, Target, VirtualHost, WeightedDestination,
    },
    upstream::RetryPolicy,
};

/// Builds the mesh route table. Istio: on sidecars VirtualServices do not merge; the
/// oldest one for a host wins. `visible(host, namespace)` is a Sidecar resource's
/// egress scope: what it hides is not routed.
pub(super) fn route_table(
    resources: &[Resource],
    report: &mut Report,
    bootstrap: &Bootstrap,
    registry: &mut Registry,
    visible: &dyn Fn(&str, &str) -> bool,
) -> RouteTable {
    let mut table = RouteTable::default();
    let mut claimed = HashSet::new();
    for r in resources {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        if report.rejected.contains(&r.id) {
            continue;
        }
        if !(vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")) {
            continue;
        }
        let no_gateway = |_: &str| false;
        let cx = routes::PortContext { port: 0, gateways_on_port: &no_gateway, mesh: true };
        let mut dests = routes::Destinations { registry: &mut *registry, bootstrap, report: &mut *report };
        let Ok(rules) = routes::compile_http(r, vs, &cx, &mut dests) else {
            continue;
        };
        for host in vs.hosts.iter().map(|h| bootstrap.fqdn(h, &r.id.namespace)) {
            if host == "*" || !visible(&host, &r.id.namespace) || !claimed.insert(host.clone()) {
                continue;
            }
            insert(&mut table, &host, bootstrap, rules.clone());
        }
    }
    for host in registry.service_hosts() {
        if claimed.contains(&host) || !registry.service_namespace(&host).is_some_and(|ns| visible(&host, ns)) {
            continue;
        }
        let port = registry.default_port(&host, 0);
        let target = routes::resolve(registry, &host, port, None).unwrap_or_else(|(target, _)| target);
        let route = catch_all(&format!("{host}:default"), target, RetryPolicy::istio_default());
        insert(&mut table, &host, bootstrap, vec![Arc::new(route)]);
    }
    table
}

/// A route sending every request to `target`.
pub(super) fn catch_all(name: &str, target: Target, retry: RetryPolicy) -> Route {
    let action = Action::Forward(Forward {
        destinations: vec![WeightedDestination { target, weight: 1, headers: HeaderRules::default() }],
        total_weight: 1,
        rewrite: None,
    });
    any_request(name, action, retry)
}

/// A route answering every request with `status` itself (Istio's BlackHoleCluster).
pub(super) fn answer_all(name: &str, status: http::StatusCode) -> Route {
    any_request(name, Action::Direct(DirectResponse { status, body: bytes::Bytes::new() }), RetryPolicy::none())
}

fn any_request(name: &str, action: Action, retry: RetryPolicy) -> Route {
    Route {
        name: name.into(),
        matches: Vec::new(),
        action,
        headers: HeaderRules::default(),
        timeout: None,
        retry,
        fault: None,
        mirrors: Vec::new(),
        cors: None,
    }
}

/// Registers `host` and the names a workload in the mesh may use for it:
/// `name.ns.svc`, `name.ns`, and `name` within the gateway's own namespace.
fn insert(table: &mut RouteTable, host: &str, bootstrap: &Bootstrap, routes: Vec<Arc<Route>>) {
    let vhost = Arc::new(VirtualHost::new(host, routes, false));
    table.insert(host, vhost.clone());
    let suffix = format!(".svc.{}", bootstrap.domain_suffix);
    if let Some((name, ns)) = host.strip_suffix(&suffix).and_then(|rest| rest.split_once('.')) {
        table.insert(&format!("{name}.{ns}.svc"), vhost.clone());
        table.insert(&format!("{name}.{ns}"), vhost.clone());
        if ns == bootstrap.namespace {
            table.insert(name, vhost);
        }
    }
}
