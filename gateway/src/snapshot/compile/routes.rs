//! VirtualService HTTP rules → `route::Route` for one listener port: matchers compiled,
//! config-time match conditions applied, destinations resolved to clusters.

use std::{collections::BTreeSet, sync::Arc};

use bytes::Bytes;

use super::{
    binding::resolve_gateway_ref,
    conditions::{ConfigTime, Site},
    registry::Registry,
    Report,
};
use crate::{
    config::{
        istio::{Destination, HttpMatchRequest, HttpRoute, VirtualService},
        Bootstrap, Diagnostic, Resource,
    },
    route::{
        matchers::{HeaderCondition, HeaderKey, StringMatcher},
        per_million, Action, Cors, DirectResponse, Fault, Forward, HeaderRules, MatchBlock, Mirror, Redirect, Rewrite,
        Route, Target, WeightedDestination,
    },
    upstream::RetryPolicy,
};

/// What a rule compiles against: the port and the gateways on it, or the mesh.
pub(super) struct PortContext<'a> {
    /// Listener port; 0 when compiling for validation or for the mesh listener.
    pub port: u16,
    /// True when a gateway (`ns/name`) has a server on this port.
    pub gateways_on_port: &'a dyn Fn(&str) -> bool,
    /// Compiling for the mesh listener: blocks with `gateways` must name `mesh`.
    pub mesh: bool,
}

/// Where rule destinations are resolved: the registry, and the report that names the
/// destinations that do not exist (their routes answer 503 NC).
pub(super) struct Destinations<'x, 'c> {
    pub(super) registry: &'x mut Registry<'c>,
    pub(super) bootstrap: &'x Bootstrap,
    pub(super) report: &'x mut Report,
}

/// Compiles every HTTP rule. Errors reject the VirtualService; unresolved
/// destinations are reported as references and answer 503 NC.
pub(super) fn compile_http(
    r: &Resource,
    vs: &VirtualService,
    cx: &PortContext<'_>,
    dests: &mut Destinations<'_, '_>,
) -> Result<Vec<Arc<Route>>, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut routes = Vec::new();
    for (i, rule) in vs.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        let mut err = |f: String, m: String| errors.push(Diagnostic::error(&r.origin, &r.id, f, m));
        let mut blocks = Vec::new();
        for (j, m) in rule.matches.iter().enumerate() {
            if !applies_here(m, r, cx, dests.bootstrap) {
                continue;
            }
            match compile_block(m) {
                Ok(b) => blocks.push(b),
                Err((f, msg)) => err(format!("{field}.match[{j}]{f}"), msg),
            }
        }
        if !rule.matches.is_empty() && blocks.is_empty() {
            continue; // every block is for other ports, gateways or proxies
        }
        let name: Arc<str> =
            rule.name.clone().unwrap_or_else(|| format!("{}.{}.{i}", r.id.name, r.id.namespace)).into();
        match compile_rule(rule, name, blocks, r, cx.port, dests, &field) {
            Ok(route) => routes.push(Arc::new(route)),
            Err((f, msg)) => err(format!("{field}{f}"), msg),
        }
    }
    if errors.is_empty() {
        Ok(routes)
    } else {
        Err(errors)
    }
}

/// Config-time conditions of an HTTP block (see `conditions`).
fn applies_here(m: &HttpMatchRequest, r: &Resource, cx: &PortContext<'_>, bootstrap: &Bootstrap) -> bool {
    let serves = |g: &str| cx.port == 0 || (cx.gateways_on_port)(g);
    let site = Site { port: cx.port, mesh: cx.mesh, serves: &serves };
    let source = Some((&m.source_labels, m.source_namespace.as_deref()));
    ConfigTime { port: m.port, gateways: &m.gateways, source }.applies(&r.id.namespace, &site, bootstrap)
}

type FieldError = (String, String);

fn compile_block(m: &HttpMatchRequest) -> Result<MatchBlock, FieldError> {
    let matcher = |f: &str, sm: &Option<crate::config::istio::StringMatch>| {
        sm.as_ref().map(StringMatcher::compile).transpose().map_err(|e| (format!(".{f}"), e))
    };
    let conditions = |f: &str, map: &std::collections::BTreeMap<String, crate::config::istio::StringMatch>| {
        let mut out = Vec::new();
        for (k, sm) in map {
            if matches!(k.as_str(), "uri" | "scheme" | "method" | "authority") {
                continue; // Istio ignores these keys; the dedicated fields match them.
            }
            let key = HeaderKey::parse(k).map_err(|e| (format!(".{f}.{k}"), e))?;
            let matcher = StringMatcher::compile(sm).map_err(|e| (format!(".{f}.{k}"), e))?;
            out.push(HeaderCondition { key, matcher });
        }
        Ok::<_, FieldError>(out)
    };
    let mut query_params = Vec::new();
    for (k, sm) in &m.query_params {
        let matcher = StringMatcher::compile(sm).map_err(|e| (format!(".queryParams.{k}"), e))?;
        query_params.push((k.as_str().into(), matcher));
    }
    let port = m
        .port
        .map(|p| u16::try_from(p).map_err(|_| (".port".to_string(), format!("port {p} is out of range"))))
        .transpose()?;
    Ok(MatchBlock {
        name: m.name.as_deref().map(Into::into),
        uri: matcher("uri", &m.uri)?,
        ignore_uri_case: m.ignore_uri_case,
        scheme: matcher("scheme", &m.scheme)?,
        method: matcher("method", &m.method)?,
        authority: matcher("authority", &m.authority)?,
        headers: conditions("headers", &m.headers)?,
        without_headers: conditions("withoutHeaders", &m.without_headers)?,
        query_params,
        port,
    })
}

fn compile_rule(
    rule: &HttpRoute,
    name: Arc<str>,
    matches: Vec<MatchBlock>,
    r: &Resource,
    port: u16,
    dests: &mut Destinations<'_, '_>,
    field: &str,
) -> Result<Route, FieldError> {
    let actions =
        [!rule.route.is_empty(), rule.redirect.is_some(), rule.direct_response.is_some(), rule.delegate.is_some()];
    if actions.iter().filter(|a| **a).count() != 1 {
        return Err((String::new(), "exactly one of route, redirect, directResponse and delegate must be set".into()));
    }
    if rule.delegate.is_some() {
        return Err((".delegate".into(), "delegate is not supported yet".into()));
    }
    let mut resolve = |d: &Destination, f: String| dests.target(d, r, port, f);
    let action = if let Some(redirect) = &rule.redirect {
        if rule.rewrite.is_some() || rule.fault.is_some() {
            return Err((".redirect".into(), "redirect cannot be combined with rewrite or fault".into()));
        }
        Action::Redirect(Redirect::compile(redirect).map_err(at("redirect"))?)
    } else if let Some(direct) = &rule.direct_response {
        let status = u16::try_from(direct.status)
            .ok()
            .and_then(|s| http::StatusCode::from_u16(s).ok())
            .filter(|s| s.as_u16() >= 200)
            .ok_or_else(|| {
                (".directResponse.status".to_string(), format!("status {} is not a valid HTTP status", direct.status))
            })?;
        let body = match direct.body.as_ref().map(|b| (&b.string, &b.bytes)) {
            None | Some((None, None)) => Bytes::new(),
            Some((Some(s), None)) => Bytes::from(s.clone()),
            Some((None, Some(b64))) => Bytes::from(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64.trim())
                    .ok()
                    .ok_or_else(|| (".directResponse.body.bytes".to_string(), "invalid base64".to_string()))?,
            ),
            Some(_) => return Err((".directResponse.body".into(), "only one of string and bytes may be set".into())),
        };
        if body.len() > 1 << 20 {
            return Err((".directResponse.body".into(), "body is larger than 1 MiB".into()));
        }
        Action::Direct(DirectResponse { status, body })
    } else {
        let all_unset = rule.route.iter().all(|d| d.weight.is_none());
        let mut destinations = Vec::new();
        for (k, d) in rule.route.iter().enumerate() {
            let weight = match d.weight {
                _ if rule.route.len() == 1 => 1,
                None if all_unset => 1,
                None => 0,
                Some(w) => u32::try_from(w)
                    .map_err(|_| (format!(".route[{k}].weight"), format!("weight {w} must not be negative")))?,
            };
            let headers = HeaderRules::compile(d.headers.as_ref()).map_err(at(&format!("route[{k}].headers")))?;
            let target = resolve(&d.destination, format!("{field}.route[{k}].destination"));
            if weight > 0 {
                destinations.push(WeightedDestination { target, weight, headers });
            }
        }
        let total_weight = destinations.iter().map(|d| d.weight).sum();
        if total_weight == 0 {
            return Err((".route".into(), "at least one destination needs a weight above 0".into()));
        }
        let rewrite = rule.rewrite.as_ref().map(Rewrite::compile).transpose().map_err(at("rewrite"))?;
        Action::Forward(Forward { destinations, total_weight, rewrite })
    };
    let mut mirrors = Vec::new();
    if let Some(m) = &rule.mirror {
        if !rule.mirrors.is_empty() {
            return Err((".mirror".into(), "mirror and mirrors cannot both be set".into()));
        }
        let share = match (rule.mirror_percentage, rule.mirror_percent) {
            (Some(p), _) => per_million(p.value),
            (None, Some(p)) => per_million(f64::from(p)),
            (None, None) => 1_000_000,
        };
        mirrors.push(Mirror { target: resolve(m, format!("{field}.mirror")), per_million: share });
    }
    for (k, m) in rule.mirrors.iter().enumerate() {
        let share = m.percentage.map_or(1_000_000, |p| per_million(p.value));
        mirrors.push(Mirror {
            target: resolve(&m.destination, format!("{field}.mirrors[{k}].destination")),
            per_million: share,
        });
    }
    let retry = match &rule.retries {
        None => RetryPolicy::istio_default(),
        Some(r) => RetryPolicy::compile(r).map_err(at("retries"))?,
    };
    let timeout = rule.timeout.map(|d| d.0).filter(|d| !d.is_zero());
    Ok(Route {
        name,
        matches,
        action,
        headers: HeaderRules::compile(rule.headers.as_ref()).map_err(at("headers"))?,
        timeout,
        retry,
        fault: rule.fault.as_ref().map(Fault::compile).transpose().map_err(at("fault"))?,
        mirrors,
        cors: rule.cors_policy.as_ref().map(Cors::compile).transpose().map_err(at("corsPolicy"))?,
    })
}

impl Destinations<'_, '_> {
    /// Resolves a destination of `r` (`field`) for a listener on `port`; an unknown
    /// host or subset is reported and answers 503 NC.
    pub(super) fn target(&mut self, d: &Destination, r: &Resource, port: u16, field: String) -> Target {
        let host = self.bootstrap.fqdn(&d.host, &r.id.namespace);
        let dest_port = match d.port {
            Some(p) => u16::try_from(p.number).unwrap_or(0),
            None => self.registry.default_port(&host, port),
        };
        resolve(self.registry, &host, dest_port, d.subset.as_deref()).unwrap_or_else(|(target, why)| {
            // At validation time (port 0) a service with several ports has no default.
            if !(port == 0 && d.port.is_none() && self.registry.has_service(&host) && why.contains("has no port")) {
                self.report.references.push(Diagnostic::error(&r.origin, &r.id, field, why));
            }
            target
        })
    }
}

/// The cluster of `(host, port, subset)`, or a target without cluster and the reason.
pub(super) fn resolve(
    registry: &mut Registry,
    host: &str,
    port: u16,
    subset: Option<&str>,
) -> Result<Target, (Target, String)> {
    match registry.cluster(host, port, subset) {
        Ok(cluster) => Ok(Target { name: cluster.name.clone(), cluster: Some(cluster) }),
        Err(why) => {
            let name = format!("outbound|{port}|{}|{host}", subset.unwrap_or_default()).into();
            Err((Target { name, cluster: None }, why))
        }
    }
}

/// Prefixes a conversion error with the field it came from.
fn at(field: &str) -> impl Fn(String) -> FieldError + '_ {
    move |e| (format!(".{field}"), e)
}

/// The gateways a VirtualService names, resolved (without `mesh`).
pub(super) fn vs_gateways(r: &Resource, vs: &VirtualService, bootstrap: &Bootstrap) -> BTreeSet<String> {
    vs.gateways.iter().filter_map(|g| resolve_gateway_ref(g, &r.id.namespace, bootstrap)).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http::{HeaderMap, HeaderValue};

    use crate::{config::Bootstrap, route::RequestView, snapshot::Caches};

    const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
";

    /// A small deterministic generator (no seed files, same cases every run).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn block(rng: &mut Lcg) -> String {
        let k = rng.below(6);
        match rng.below(9) {
            0 => format!("{{uri: {{exact: /a/{k}}}}}"),
            1 => format!("{{uri: {{prefix: /a/{k}}}}}"),
            2 => format!("{{uri: {{prefix: /{}}}}}", ["", "a", "a/", "b"][rng.below(4) as usize]),
            3 => format!("{{headers: {{x-t: {{exact: t{k}}}}}}}"),
            4 => format!("{{headers: {{x-t: {{prefix: t{k}}}}}}}"),
            5 => format!("{{uri: {{prefix: /A/{k}}}, ignoreUriCase: true}}"),
            6 => format!("{{uri: {{regex: \"/a/[0-{k}]\"}}}}"),
            7 => format!("{{uri: {{prefix: /a/{k}}}, headers: {{x-u: {{exact: u{k}}}}}}}"),
            _ => format!(
                "{{method: {{exact: {}}}, headers: {{x-u: {{exact: u{k}}}}}}}",
                ["GET", "POST"][rng.below(2) as usize]
            ),
        }
    }

    /// Compiled VirtualServices with many rules are indexed (`route::index`); the index
    /// must choose as the rules in order would.
    #[test]
    fn the_index_picks_the_same_rule_as_a_linear_scan() {
        let mut rng = Lcg(7);
        for round in 0..20 {
            let mut docs = vec![GATEWAY.to_string()];
            for i in 0..40 {
                let blocks: Vec<String> = (0..=rng.below(2)).map(|_| block(&mut rng)).collect();
                let matches =
                    if rng.below(30) == 0 { String::new() } else { format!("  - match: [{}]\n  ", blocks.join(", ")) };
                docs.push(format!(
                    "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs-{i:02}}}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
{}{}directResponse: {{status: 200}}
",
                    matches,
                    if matches.is_empty() { "  - " } else { "  " },
                ));
            }
            let loaded = crate::config::load_text(&docs.join("---\n"), Path::new("r.yaml"), "default");
            assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
            let snapshot =
                crate::snapshot::compile(&loaded.resources, &Bootstrap::default(), &Caches::default()).snapshot;
            let (table, _) = snapshot.route_table(80, None).unwrap();
            let vhost = table.find_vhost("shop.test").unwrap();
            assert!(vhost.is_indexed(), "round {round}: 40 rules are indexed");
            for _ in 0..200 {
                let path = ["/", "/a", "/a/", "/b/x"][rng.below(4) as usize].to_string()
                    + &(if rng.below(2) == 0 { rng.below(7).to_string() } else { String::new() });
                let mut headers = HeaderMap::new();
                for (name, prefix) in [("x-t", "t"), ("x-u", "u")] {
                    let value = HeaderValue::from_str(&format!("{prefix}{}", rng.below(7))).unwrap();
                    match rng.below(4) {
                        0 => {}
                        1 => {
                            headers.insert(name, value);
                        }
                        // Repeated headers match joined with ','.
                        _ => {
                            headers.append(name, value);
                            headers.append(name, HeaderValue::from_static("more"));
                        }
                    }
                }
                let method = ["GET", "POST"][rng.below(2) as usize];
                let view = RequestView {
                    path: &path,
                    query: None,
                    method,
                    scheme: "http",
                    authority: "shop.test",
                    headers: &headers,
                    port: 80,
                    claims: None,
                };
                let linear = vhost.routes.iter().find(|r| r.find_match(&view).is_some()).map(|r| r.name.clone());
                let indexed = vhost.find_route(&view).map(|(r, _)| r.name.clone());
                assert_eq!(indexed, linear, "round {round}: {method} {path} {headers:?}");
            }
        }
    }
}
