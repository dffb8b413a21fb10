//! WasmPlugin → the snapshot's filter chain. Scope as Istio: the gateway's namespace
//! or the root namespace, and a selector matching the gateway's labels. A module
//! that cannot be fetched leaves a placeholder per `failStrategy` (FAIL_CLOSE
//! denies); a broken module or field, or a document that does not load, rejects the
//! resource, so its last good version keeps serving; without one, FAIL_CLOSE denies.

use std::{collections::HashMap, sync::Arc};

use super::{registry::Registry, Report};
use crate::{
    config::{Bootstrap, Diagnostic, Kind, MeshConfig, Resource, Spec, Unreadable},
    upstream::Cluster,
    wasm::{self, Chain, Filter, Phase, Runtime, Selector},
};

/// Builds the chain; reports every problem against its resource.
pub(super) fn compile(
    resources: &[Resource],
    mesh: &MeshConfig,
    bootstrap: &Bootstrap,
    runtime: &Arc<Runtime>,
    report: &mut Report,
) -> Chain {
    let mut filters = Vec::new();
    for r in resources {
        if let Spec::Unreadable(u) = &r.spec {
            if let Some(filter) = unreadable(r, u, mesh, bootstrap, report) {
                filters.push(filter);
            }
            continue;
        }
        let Spec::WasmPlugin(spec) = &r.spec else { continue };
        if !spec.target_refs.is_empty() || spec.target_ref.is_some() {
            let msg = "targetRefs are not supported; use selector";
            report.diagnostics.push(Diagnostic::warning(&r.origin, &r.id, "spec.targetRefs", msg));
            continue;
        }
        if !super::selects_workload(r, spec.selector.as_ref(), mesh, bootstrap) {
            continue;
        }
        let (phase, fail_open, selectors) = match wasm::placement(spec) {
            Ok(p) => p,
            Err(e) => {
                let (field, message) = e.field_and_message();
                report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, field, message));
                report.rejected.push(r.id.clone());
                continue;
            }
        };
        let id = format!("{}/{}", r.id.namespace, r.id.name);
        let plugin = match wasm::load(runtime, spec, &r.id.namespace, &r.id.name, bootstrap.base_dir()) {
            Ok(p) => Some(p),
            Err(e) => {
                let (field, message) = e.field_and_message();
                let strategy =
                    if fail_open { "FAIL_OPEN: requests skip it" } else { "FAIL_CLOSE: requests are denied" };
                let message = format!("{message} ({strategy})");
                // A module that cannot be fetched is the run time's to decide (by the
                // fail strategy), not an error in the resource.
                report.diagnostics.push(if e.is_fetch() {
                    Diagnostic::warning(&r.origin, &r.id, field, message)
                } else {
                    Diagnostic::error(&r.origin, &r.id, field, message)
                });
                if !e.is_fetch() {
                    report.rejected.push(r.id.clone());
                }
                None
            }
        };
        if plugin.is_none() && fail_open {
            continue;
        }
        filters.push(Arc::new(Filter { id, plugin, phase, priority: spec.priority, fail_open, selectors }));
    }
    Chain::new(filters)
}

/// A WasmPlugin whose document did not load and has no last good version: with
/// FAIL_CLOSE (Istio's default) it denies every request of the workloads its selector
/// (as far as it can be read) picks, as a plugin whose module cannot load does; with
/// FAIL_OPEN requests go on without it.
fn unreadable(
    r: &Resource,
    u: &Unreadable,
    mesh: &MeshConfig,
    bootstrap: &Bootstrap,
    report: &mut Report,
) -> Option<Arc<Filter>> {
    if r.id.kind != Kind::WasmPlugin || u.fail_open || u.targeted {
        return None;
    }
    if !super::selects_workload(r, u.selector.as_ref(), mesh, bootstrap) {
        return None;
    }
    let msg = "the plugin could not be read (FAIL_CLOSE: requests are denied until it is fixed)";
    report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, "spec", msg));
    report.fail_closed.push(r.id.clone());
    let selectors = vec![Selector { client: true, server: true, ports: Vec::new() }];
    let id = format!("{}/{}", r.id.namespace, r.id.name);
    Some(Arc::new(Filter { id, plugin: None, phase: Phase::Authn, priority: None, fail_open: false, selectors }))
}

/// Every registry service port as a cluster Wasm HTTP calls may name: Envoy's
/// `outbound|port||host`, `host:port`, and `host` when the service has one port.
pub(super) fn call_targets(registry: &mut Registry<'_>) -> HashMap<String, Arc<Cluster>> {
    let mut out = HashMap::new();
    for host in registry.service_hosts() {
        let ports = registry.service_ports(&host);
        for port in &ports {
            let Ok(cluster) = registry.cluster(&host, *port, None) else { continue };
            out.insert(cluster.name.to_string(), cluster.clone());
            out.insert(format!("{host}:{port}"), cluster.clone());
            if ports.len() == 1 {
                out.insert(host.clone(), cluster);
            }
        }
    }
    out
}
