//! PeerAuthentication: which mutual TLS a workload accepts on each port. The mesh's
//! policy (root namespace, no selector), the namespace's (no selector) and the
//! workload's (selector) are layered, the first of each level winning and `UNSET`
//! inheriting; port-level modes come from the workload's policy. A sidecar applies its
//! own workload's; auto mTLS asks the same of a destination.

use std::collections::BTreeMap;

use super::Report;
use crate::config::istio::labels_match;
use crate::{
    config::{istio::PeerAuthentication, Diagnostic, Kind, MeshConfig, Resource, Spec},
    snapshot::sidecar::{MtlsMode, PeerAuthn},
};

/// One policy's own modes.
struct Level {
    mode: Option<MtlsMode>,
    ports: Vec<(u16, Option<MtlsMode>)>,
}

struct Policy<'a> {
    resource: &'a Resource,
    selector: Option<&'a BTreeMap<String, String>>,
    level: Level,
}

/// Every usable PeerAuthentication, in load order.
pub(super) struct PeerPolicies<'a> {
    root: String,
    policies: Vec<Policy<'a>>,
}

impl<'a> PeerPolicies<'a> {
    /// Checks the policies; a bad one is reported and fails closed (STRICT where its
    /// mode cannot be read), since leaving it out could weaken what it asks for.
    pub(super) fn collect(resources: &'a [Resource], mesh: &MeshConfig, report: &mut Report) -> Self {
        let mut policies = Vec::new();
        for r in resources {
            let pa = match &r.spec {
                Spec::PeerAuthentication(pa) => pa,
                Spec::Unreadable(u) if r.id.kind == Kind::PeerAuthentication => {
                    let msg = "not loaded; fails closed: STRICT applies to the workloads it selects until it loads";
                    report.diagnostics.push(Diagnostic::error(&r.origin, &r.id, "", msg));
                    report.fail_closed.push(r.id.clone());
                    let level = Level { mode: Some(MtlsMode::Strict), ports: Vec::new() };
                    policies.push(Policy {
                        resource: r,
                        selector: u.selector.as_ref().map(|s| &s.match_labels),
                        level,
                    });
                    continue;
                }
                _ => continue,
            };
            let errors = report.diagnostics.len();
            let level = checked(r, pa, &mut report.diagnostics);
            if report.diagnostics[errors..].iter().any(Diagnostic::is_error) {
                report.fail_closed.push(r.id.clone());
            }
            policies.push(Policy { resource: r, selector: pa.selector.as_ref().map(|s| &s.match_labels), level });
        }
        Self { root: mesh.root_namespace.clone(), policies }
    }

    /// The modes of a workload in `namespace` with `labels`, and the policies that a
    /// first one shadowed at their level.
    pub(super) fn effective(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> (PeerAuthn, Vec<&'a Resource>) {
        let (mut mesh, mut ns, mut workload) = (None, None, None);
        let mut shadowed = Vec::new();
        for p in &self.policies {
            let at = &p.resource.id.namespace;
            let slot = match p.selector {
                // Selector policies in the root namespace are ignored (Istio).
                Some(_) if *at == self.root => continue,
                Some(sel) if at == namespace && labels_match(sel, labels) => &mut workload,
                Some(_) => continue,
                None if *at == self.root => &mut mesh,
                None if at == namespace => &mut ns,
                None => continue,
            };
            match slot {
                None => *slot = Some(p),
                Some(_) => shadowed.push(p.resource),
            }
        }
        let mode_of = |l: Option<&Policy>| l.and_then(|p| p.level.mode);
        let default = mode_of(workload).or(mode_of(ns)).or(mode_of(mesh)).unwrap_or(MtlsMode::Permissive);
        let ports = workload
            .map(|p| p.level.ports.iter().map(|(port, m)| (*port, m.unwrap_or(default))).collect())
            .unwrap_or_default();
        (PeerAuthn { default, ports }, shadowed)
    }
}

/// A policy's modes; a mode that cannot be read is reported and taken as STRICT.
fn checked(r: &Resource, pa: &PeerAuthentication, diags: &mut Vec<Diagnostic>) -> Level {
    let mut mode_at = |field: String, mode: Option<&str>| {
        MtlsMode::parse(mode).unwrap_or_else(|e| {
            diags.push(Diagnostic::error(&r.origin, &r.id, field, format!("{e}; STRICT applies until it is fixed")));
            Some(MtlsMode::Strict)
        })
    };
    let mut mode = mode_at("spec.mtls.mode".into(), pa.mtls.as_ref().and_then(|m| m.mode.as_deref()));
    let mut ports = Vec::new();
    let mut bad_ports = Vec::new();
    for (key, m) in &pa.port_level_mtls {
        let field = format!("spec.portLevelMtls.{key}");
        match key.parse::<u16>() {
            Ok(port) => ports.push((port, mode_at(format!("{field}.mode"), m.mode.as_deref()))),
            Err(_) => bad_ports.push((field, key)),
        }
    }
    // The port an unreadable key meant is unknown: every port is held to STRICT.
    for (field, key) in bad_ports {
        let msg = format!("{key:?} is not a port number; STRICT applies to every port until it is fixed");
        diags.push(Diagnostic::error(&r.origin, &r.id, field, msg));
        mode = Some(MtlsMode::Strict);
        ports.retain(|(_, m)| *m == Some(MtlsMode::Strict));
    }
    if !ports.is_empty() && pa.selector.is_none() {
        let msg = "portLevelMtls applies only with a workload selector (Istio ignores it here)";
        diags.push(Diagnostic::warning(&r.origin, &r.id, "spec.portLevelMtls", msg));
        ports.clear();
    }
    Level { mode, ports }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy(yaml: &str, labels: &[(&str, &str)]) -> (PeerAuthn, Vec<Diagnostic>) {
        let loaded = crate::config::load_text(yaml, Path::new("pa.yaml"), "shop");
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        effective(&loaded.resources, labels)
    }

    fn effective(resources: &[Resource], labels: &[(&str, &str)]) -> (PeerAuthn, Vec<Diagnostic>) {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut report = Report::default();
        let policies = PeerPolicies::collect(resources, &MeshConfig::default(), &mut report);
        (policies.effective("shop", &labels).0, report.diagnostics)
    }

    const LEVELS: &str = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: cart}
spec:
  selector: {matchLabels: {app: cart}}
  mtls: {mode: UNSET}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
    '9000': {mode: UNSET}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: root-selector, namespace: istio-system}
spec:
  selector: {matchLabels: {app: cart}}
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: other, namespace: elsewhere}
spec: {mtls: {mode: PERMISSIVE}}
";

    #[test]
    fn workload_over_namespace_over_mesh_with_unset_inheriting() {
        let (cart, diags) = policy(LEVELS, &[("app", "cart")]);
        assert!(diags.is_empty(), "{diags:?}");
        // The root namespace's selector policy is ignored; port keys may be integers.
        assert_eq!(cart.default, MtlsMode::Disable, "UNSET inherits the namespace's mode");
        assert_eq!(cart.mode(8080), MtlsMode::Permissive);
        assert_eq!(cart.mode(9000), MtlsMode::Disable, "a port's UNSET inherits the workload's mode");
        let (web, _) = policy(LEVELS, &[("app", "web")]);
        assert_eq!((web.default, web.mode(8080)), (MtlsMode::Disable, MtlsMode::Disable));
        let mesh_only = LEVELS.split("---").next().unwrap();
        assert_eq!(policy(mesh_only, &[]).0.default, MtlsMode::Strict);
        assert_eq!(policy("", &[]).0.default, MtlsMode::Permissive, "Istio's default without a policy");
    }

    #[test]
    fn bad_modes_are_named_and_port_levels_need_a_selector() {
        let yaml = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: typo}
spec: {mtls: {mode: STRIKT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ports}
spec:
  mtls: {mode: STRICT}
  portLevelMtls: {'80': {mode: DISABLE}}
";
        let (mtls, diags) = policy(yaml, &[]);
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("PeerAuthentication/shop/typo: spec.mtls.mode") && text[0].contains("STRIKT"),
            "{text:?}"
        );
        assert!(text[1].contains("spec.portLevelMtls") && text[1].contains("selector"), "{text:?}");
        assert_eq!((mtls.default, mtls.mode(80)), (MtlsMode::Strict, MtlsMode::Strict));
    }

    #[test]
    fn policies_with_errors_fail_closed_to_strict() {
        let yaml = "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: cart}
spec:
  selector: {matchLabels: {app: cart}}
  mtls: {mode: PERMISIVE}
  portLevelMtls: {8080: {mode: DISABLE}, http: {mode: DISABLE}}
";
        let (cart, diags) = policy(yaml, &[("app", "cart")]);
        assert_eq!((cart.default, cart.mode(8080)), (MtlsMode::Strict, MtlsMode::Strict), "{diags:?}");
        assert!(diags.iter().any(|d| d.field == "spec.mtls.mode" && d.message.contains("STRICT applies")));
        assert!(diags.iter().any(|d| d.field == "spec.portLevelMtls.http"));
        assert_eq!(policy(yaml, &[("app", "web")]).0.default, MtlsMode::Disable, "other workloads keep theirs");

        // A document that does not load holds the workloads it selects to STRICT.
        let unloadable = yaml.replace("mtls: {mode: PERMISIVE}", "mtls: {mode: PERMISSIVE, extra: 1}");
        let loaded = crate::config::load_text(&unloadable, Path::new("pa.yaml"), "shop");
        assert!(loaded.diagnostics[0].to_string().contains("unknown field `extra`"));
        let (cart, diags) = effective(&loaded.resources, &[("app", "cart")]);
        assert_eq!((cart.default, cart.mode(8080)), (MtlsMode::Strict, MtlsMode::Strict));
        assert!(diags[0].message.contains("fails closed"), "{diags:?}");
        assert_eq!(effective(&loaded.resources, &[("app", "web")]).0.default, MtlsMode::Disable);
    }
}
