//! The config-time conditions of a VirtualService match block, one function for
//! `http`, `tls` and `tcp` rules: they decide, when routes are built for this proxy,
//! whether the block is kept at all. As Istio: `port` (any, when compiling for no
//! port), `gateways` (which then stand alone, `mesh` naming the mesh), else for HTTP
//! `sourceLabels` and `sourceNamespace`, which select the proxy itself
//! (`sourceMatchHTTP`). Istio's gateway TCP/TLS matches check port and gateways only
//! (`l4SingleMatch`); their source fields are reported as not applied.

use std::collections::BTreeMap;

use super::binding::resolve_gateway_ref;
use crate::config::istio::labels_match;
use crate::config::Bootstrap;

/// One match block's config-time fields.
pub(super) struct ConfigTime<'m> {
    pub(super) port: Option<u32>,
    pub(super) gateways: &'m [String],
    /// `sourceLabels` and `sourceNamespace`, for HTTP blocks.
    pub(super) source: Option<(&'m BTreeMap<String, String>, Option<&'m str>)>,
}

/// Where routes are being built.
pub(super) struct Site<'a> {
    /// The listener port; 0 when compiling for no port (validation, the mesh).
    pub(super) port: u16,
    /// Compiling the mesh's routes: `gateways` must name `mesh`.
    pub(super) mesh: bool,
    /// Whether a gateway (`ns/name`) serves here.
    pub(super) serves: &'a dyn Fn(&str) -> bool,
}

impl ConfigTime<'_> {
    /// Whether the block is kept for this proxy at `site`; `namespace` is the
    /// VirtualService's, for relative gateway names.
    pub(super) fn applies(&self, namespace: &str, site: &Site<'_>, bootstrap: &Bootstrap) -> bool {
        if self.port.is_some_and(|p| site.port != 0 && p != u32::from(site.port)) {
            return false;
        }
        if !self.gateways.is_empty() {
            if site.mesh {
                return self.gateways.iter().any(|g| g == "mesh");
            }
            return self
                .gateways
                .iter()
                .filter_map(|g| resolve_gateway_ref(g, namespace, bootstrap))
                .any(|g| (site.serves)(&g));
        }
        self.source.is_none_or(|(labels, ns)| {
            labels_match(labels, &bootstrap.labels) && ns.is_none_or(|ns| ns == bootstrap.namespace)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_kept_as_istio_keeps_them() {
        let bootstrap = Bootstrap::default(); // labels istio=ingressgateway, namespace default
        let app: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let ingress: BTreeMap<String, String> = [("istio".to_string(), "ingressgateway".to_string())].into();
        let (gw, other, mesh) = (vec!["gw".to_string()], vec!["other".to_string()], vec!["mesh".to_string()]);
        let serves_gw = |g: &str| g == "default/gw";
        let at = |port, mesh| Site { port, mesh, serves: &serves_gw };
        let none = BTreeMap::new();
        let cases: Vec<(&str, ConfigTime<'_>, Site<'_>, bool)> = vec![
            ("no conditions", ConfigTime { port: None, gateways: &[], source: None }, at(80, false), true),
            ("another port", ConfigTime { port: Some(443), gateways: &[], source: None }, at(80, false), false),
            (
                "any port when compiling for none",
                ConfigTime { port: Some(443), gateways: &[], source: None },
                at(0, false),
                true,
            ),
            ("a gateway served here", ConfigTime { port: None, gateways: &gw, source: None }, at(80, false), true),
            (
                "a gateway not served here",
                ConfigTime { port: None, gateways: &other, source: None },
                at(80, false),
                false,
            ),
            ("mesh blocks on the mesh", ConfigTime { port: None, gateways: &mesh, source: None }, at(0, true), true),
            (
                "gateway blocks not on the mesh",
                ConfigTime { port: None, gateways: &gw, source: None },
                at(0, true),
                false,
            ),
            (
                "source labels select this proxy",
                ConfigTime { port: None, gateways: &[], source: Some((&ingress, Some("default"))) },
                at(80, false),
                true,
            ),
            (
                "source labels of another workload",
                ConfigTime { port: None, gateways: &[], source: Some((&app, None)) },
                at(80, false),
                false,
            ),
            (
                "another source namespace",
                ConfigTime { port: None, gateways: &[], source: Some((&none, Some("shop"))) },
                at(80, false),
                false,
            ),
            (
                "gateways stand alone: source fields are not read",
                ConfigTime { port: None, gateways: &gw, source: Some((&app, None)) },
                at(80, false),
                true,
            ),
        ];
        for (what, block, site, kept) in cases {
            assert_eq!(block.applies("default", &site, &bootstrap), kept, "{what}");
        }
    }
}
