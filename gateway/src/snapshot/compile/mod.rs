//! `compile`: resources → `Snapshot`, as a sequence of stages in their own files, each
//! reporting to one `Report`. Each resource is checked on its own; one that fails is
//! rejected alone (and named), everything else applies.

mod binding;
mod conditions;
mod kube_services;
mod l4;
mod listeners;
mod mesh;
mod peer_authn;
mod registry;
mod report;
mod routes;
mod security;
mod sidecar;
mod telemetry;
mod tracer;
mod vhosts;
mod wasm;

use std::{collections::HashMap, time::SystemTime};

use self::{registry::Registry, report::Report};
use super::{Caches, PortPlan, Snapshot};
use crate::config::{istio::MatchLabelsSelector, Bootstrap, Diagnostic, MeshConfig, Resource, ResourceRef, Spec};

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

/// Compiles `resources` (in Istio order) for the gateway described by `bootstrap`.
/// Certificates and remote JWKS sets come from `caches`, which outlive snapshots.
pub fn compile(resources: &[Resource], bootstrap: &Bootstrap, caches: &Caches) -> Compiled {
    let mut report = Report::default();
    // Istio's mesh config: the `istio` ConfigMap (the first one, if several).
    let mesh = resources.iter().find_map(|r| match &r.spec {
        Spec::MeshConfig(m) => Some((r, m)),
        _ => None,
    });
    let default_mesh = MeshConfig::default();
    let mesh_config = mesh.map_or(&default_mesh, |(_, m)| m);
    check_destination_rules(resources, &mut report);
    let peer = peer_authn::PeerPolicies::collect(resources, mesh_config, &mut report);
    let mut registry = Registry::build(resources, bootstrap, caches, &peer, &mut report);
    let telemetry = telemetry::overrides(resources, mesh_config, bootstrap, &mut report);
    let (access_log, access_log_file) = telemetry::access_log(mesh, &telemetry, &mut report);
    let security = security::compile(resources, mesh, bootstrap, &mut registry, &caches.jwks, &mut report);
    let wasm = wasm::compile(resources, mesh_config, bootstrap, &caches.wasm, &mut report);
    let services = if wasm.is_empty() { HashMap::new() } else { wasm::call_targets(&mut registry) };
    let tracer = tracer::compile(mesh, &telemetry, bootstrap, &mut registry, caches, &mut report);
    // A sidecar serves captured traffic only; Gateway servers are a gateway's.
    let ports = match bootstrap.sidecar {
        Some(_) => Default::default(),
        None => binding::gateway_servers(resources, bootstrap, &mut report),
    };
    let bound = vhosts::bind(resources, &ports, bootstrap, &mut registry, &mut report);
    let mut listeners = listeners::gateway(&ports, bound, bootstrap, &caches.certs, &mut registry, &mut report);
    if let Some(settings) = &bootstrap.sidecar {
        let cx = sidecar::Context {
            resources,
            mesh: mesh_config,
            bootstrap,
            settings,
            identity: caches.identity.as_ref(),
            peer: &peer,
        };
        let (outbound, inbound) = sidecar::plans(&cx, &mut registry, &mut report);
        listeners.add(settings.outbound_port, bootstrap.bind_ip, false, PortPlan::Outbound(outbound));
        listeners.add(settings.inbound_port, bootstrap.bind_ip, true, PortPlan::Inbound(inbound));
    } else if let Some(port) = bootstrap.mesh_port {
        if ports.contains_key(&port) {
            let msg = format!("mesh port {port} is also a Gateway server port; the mesh listener is not opened");
            tracing::error!("{msg}");
        } else {
            let table = mesh::route_table(resources, &mut report, bootstrap, &mut registry, &|_, _| true);
            listeners.add(port, bootstrap.bind_ip, true, PortPlan::Http(table));
        }
    }
    let diagnostics = report.all_diagnostics();
    let snapshot = Snapshot {
        version: 0,
        listeners: listeners.specs,
        ports: listeners.plans,
        clusters: registry.into_clusters(),
        security,
        request_metrics: !telemetry.metrics_disabled,
        tracer,
        wasm,
        services,
        access_log,
        access_log_file,
        diagnostics: diagnostics.clone(),
        resources: Vec::new(),
        created: Some(SystemTime::now()),
    };
    Compiled { snapshot, diagnostics, rejected: report.rejected, fail_closed: report.fail_closed }
}

/// DestinationRule consistent-hash headers that cannot be hashed on are reported.
fn check_destination_rules(resources: &[Resource], report: &mut Report) {
    for r in resources {
        if let Spec::DestinationRule(dr) = &r.spec {
            for (field, msg) in dr.unusable_hash_headers() {
                report.diagnostics.push(Diagnostic::warning(&r.origin, &r.id, field, msg));
            }
        }
    }
}

/// Whether a policy-like resource (WasmPlugin, RequestAuthentication,
/// AuthorizationPolicy) applies to this workload, as Istio scopes them: written in the
/// root namespace or the workload's own, and its selector (none: all) picks it.
pub(super) fn selects_workload(
    r: &Resource,
    selector: Option<&MatchLabelsSelector>,
    mesh: &MeshConfig,
    bootstrap: &Bootstrap,
) -> bool {
    let in_scope = r.id.namespace == mesh.root_namespace || r.id.namespace == bootstrap.namespace;
    in_scope && selector.is_none_or(|s| s.selects(&bootstrap.labels))
}

/// Istio `exportTo`: empty or `*` is visible everywhere, `.` only in the resource's
/// own namespace, otherwise in the namespaces listed.
pub(super) fn exported_to(export_to: &[String], own: &str, viewer: &str) -> bool {
    export_to.is_empty() || export_to.iter().any(|e| e == "*" || e == viewer || (e == "." && own == viewer))
}
