//! Mesh config, RequestAuthentication and AuthorizationPolicy → the gateway's
//! `Security`. Istio scope: a policy applies when it sits in the gateway's namespace
//! or the root namespace and its selector (if any) matches the gateway's labels.

use std::{sync::Arc, time::Duration};

use http::header::HeaderName;

use super::{registry::Registry, Report};
use crate::{
    config::{
        istio::{AuthorizationPolicy, JwtRule as ConfigJwtRule, MatchLabelsSelector, PolicyTargetReference},
        Bootstrap, Diagnostic, Kind, MeshConfig, Resource, Spec,
    },
    security::{
        authz::{Action, AuthzEngine, Policy},
        ext_authz::ExtAuthz,
        jwks::{JwksCache, KeySet, KeySource},
        jwt::{JwtAuthn, JwtRule, Location},
        normalize::Normalization,
    },
    snapshot::Security,
};

/// Default JWKS fetch timeout (Istio `jwtRules[].timeout`).
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the security of this gateway. A policy with errors is reported and applied
/// in its fail-closed form: never less authentication or authorization than written.
pub(super) fn compile(
    resources: &[Resource],
    mesh: Option<(&Resource, &MeshConfig)>,
    bootstrap: &Bootstrap,
    registry: &mut Registry<'_>,
    jwks: &JwksCache,
    report: &mut Report,
) -> Security {
    let diags = &mut report.diagnostics;
    // At the edge `//admin` must not dodge a rule on `/admin`: unless the mesh config
    // says otherwise, a gateway merges slashes; a sidecar keeps Istio's BASE.
    let default = if bootstrap.sidecar.is_some() { Normalization::Base } else { Normalization::MergeSlashes };
    let mut normalization = default;
    if let Some((_, m)) = mesh {
        normalization = Normalization::from_config(m.path_normalization.normalization, default);
    }
    let default_mesh = MeshConfig::default();
    let mesh = mesh.map_or(&default_mesh, |(_, m)| m);
    let applies = |r: &Resource, selector: &Option<MatchLabelsSelector>| {
        super::selects_workload(r, selector.as_ref(), mesh, bootstrap)
    };
    let mut jwt_rules = Vec::new();
    let mut space_delimited = Vec::new();
    let mut authz = AuthzEngine::default();
    for r in resources {
        match &r.spec {
            Spec::RequestAuthentication(ra) if applies(r, &ra.selector) => {
                if targets_refs(r, &ra.target_refs, &ra.target_ref, diags) {
                    continue;
                }
                let mut failed = false;
                for (i, rule) in ra.jwt_rules.iter().enumerate() {
                    match jwt_rule(rule, jwks) {
                        Ok(compiled) => jwt_rules.push(compiled),
                        Err((field, e)) => {
                            let msg = format!("{e}; {}", refused(&rule.issuer));
                            diags.push(Diagnostic::error(&r.origin, &r.id, format!("spec.jwtRules[{i}]{field}"), msg));
                            jwt_rules.push(fail_closed_jwt_rule(rule));
                            failed = true;
                        }
                    }
                }
                if failed {
                    report.fail_closed.push(r.id.clone());
                }
                space_delimited.extend(ra.jwt_rules.iter().flat_map(|j| j.space_delimited_claims.iter().cloned()));
            }
            Spec::AuthorizationPolicy(ap) if applies(r, &ap.selector) => {
                if targets_refs(r, &ap.target_refs, &ap.target_ref, diags) {
                    continue;
                }
                diags.extend(path_variants(r, ap, normalization));
                let name: Arc<str> = format!("{}/{}", r.id.namespace, r.id.name).into();
                let compiled = Policy::compile(name, ap);
                let effect = fail_closed_effect(compiled.action, ap);
                for (field, e) in &compiled.errors {
                    diags.push(Diagnostic::error(&r.origin, &r.id, field, format!("{e}; {effect}")));
                }
                if !compiled.errors.is_empty() {
                    report.fail_closed.push(r.id.clone());
                }
                match compiled.action {
                    // A CUSTOM policy with errors denies what its (broader) rules match.
                    Action::Custom if compiled.errors.is_empty() => {
                        let wanted = ap.provider.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
                        match ext_authz(mesh, wanted, registry) {
                            Ok(provider) => authz.add_custom(compiled.policy, provider),
                            Err(e) => {
                                diags.push(Diagnostic::error(
                                    &r.origin,
                                    &r.id,
                                    "spec.provider",
                                    format!("{e}; requests its rules match are denied"),
                                ));
                                report.fail_closed.push(r.id.clone());
                                authz.add(Action::Custom, compiled.policy);
                            }
                        }
                    }
                    action => authz.add(action, compiled.policy),
                }
            }
            Spec::Unreadable(u) if applies(r, &u.selector) && !u.targeted => {
                let name: Arc<str> = format!("{}/{}", r.id.namespace, r.id.name).into();
                let effect = match r.id.kind {
                    Kind::RequestAuthentication => {
                        // No issuer could be read: one refusing rule with none claims every token.
                        let issuers = if u.issuers.is_empty() { vec![String::new()] } else { u.issuers.clone() };
                        jwt_rules.extend(issuers.iter().map(|issuer| {
                            fail_closed_jwt_rule(&ConfigJwtRule { issuer: issuer.clone(), ..Default::default() })
                        }));
                        refused(&issuers.join(", "))
                    }
                    Kind::AuthorizationPolicy => {
                        let (action, rules, effect) = match u.action.as_deref() {
                            Some("AUDIT") => continue,
                            Some("ALLOW") => ("ALLOW", vec![], "it allows nothing until it loads"),
                            _ => (
                                "DENY",
                                vec![Default::default()],
                                "every request and connection it selects is denied until it loads",
                            ),
                        };
                        let ap = AuthorizationPolicy { action: Some(action.into()), rules, ..Default::default() };
                        let compiled = Policy::compile(name, &ap);
                        authz.add(compiled.action, compiled.policy);
                        effect.to_string()
                    }
                    _ => continue,
                };
                diags.push(Diagnostic::error(&r.origin, &r.id, "", format!("not loaded; fails closed: {effect}")));
                report.fail_closed.push(r.id.clone());
            }
            _ => {}
        }
    }
    authz.set_space_delimited(space_delimited);
    Security {
        normalization,
        trusted_hops: mesh.default_config.gateway_topology.num_trusted_proxies,
        jwt: (!jwt_rules.is_empty()).then(|| JwtAuthn::new(jwt_rules)),
        tcp_authz: authz.for_tcp(),
        authz,
    }
}

type FieldError = (String, String);

/// What a policy's errors do to it, for the diagnostics (see `Policy::compile`).
fn fail_closed_effect(action: Action, ap: &AuthorizationPolicy) -> &'static str {
    match action {
        Action::Deny if ap.action.as_deref() != Some("DENY") => {
            "the policy denies every request to the workloads it selects (fails closed)"
        }
        Action::Deny => "the rule applies without it, so it denies more (fails closed)",
        Action::Custom => "the policy denies what its rules match, without asking the authorizer (fails closed)",
        Action::Allow => "the rule is left out, so the policy allows less (fails closed)",
        Action::Audit => "the rule is left out (AUDIT never decides)",
    }
}

/// Warnings for path rules that deny (DENY `paths`, ALLOW `notPaths`) under a
/// normalization that lets variants of a path through: `//admin` under BASE, and
/// `/x/../admin` or `/%61dmin` as well under NONE.
fn path_variants(r: &Resource, ap: &AuthorizationPolicy, normalization: Normalization) -> Vec<Diagnostic> {
    let (mode, variants) = match normalization {
        Normalization::None => ("NONE", "`/x/../admin`, `/%61dmin` and `//admin` are not `/admin`"),
        Normalization::Base => ("BASE", "`//admin` is not `/admin`"),
        Normalization::MergeSlashes | Normalization::DecodeAndMergeSlashes => return Vec::new(),
    };
    let deny = ap.action.as_deref() == Some("DENY");
    let mut out = Vec::new();
    for (i, rule) in ap.rules.iter().enumerate() {
        for (j, to) in rule.to.iter().enumerate() {
            let (field, paths) =
                if deny { ("paths", &to.operation.paths) } else { ("notPaths", &to.operation.not_paths) };
            if !paths.is_empty() {
                let msg = format!("under pathNormalization {mode} {variants} to this rule; MERGE_SLASHES closes that");
                out.push(Diagnostic::warning(
                    &r.origin,
                    &r.id,
                    format!("spec.rules[{i}].to[{j}].operation.{field}"),
                    msg,
                ));
            }
        }
    }
    out
}

/// What a RequestAuthentication rule that failed does instead.
fn refused(issuers: &str) -> String {
    match issuers {
        "" => "every JWT is refused (401) until it is fixed".into(),
        i => format!("tokens from {i} are refused (401) until it is fixed"),
    }
}

/// A JWT rule standing in for one that failed: it finds tokens where the rule would
/// have, refuses them, and strips the output headers the rule would have set, so a
/// broken rule never lets an unverified token (or a forged output header) through.
fn fail_closed_jwt_rule(rule: &ConfigJwtRule) -> JwtRule {
    let header = |name: &str| HeaderName::from_bytes(name.as_bytes()).ok();
    let mut locations: Vec<Location> =
        rule.from_headers.iter().filter_map(|h| Some(Location::Header(header(&h.name)?, h.prefix.clone()))).collect();
    locations.extend(rule.from_params.iter().cloned().map(Location::Param));
    locations.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
    if locations.is_empty() {
        locations = default_locations();
    }
    JwtRule {
        issuer: rule.issuer.clone(),
        audiences: Vec::new(),
        keys: KeySource::Refused,
        locations,
        forward: rule.forward_original_token,
        payload_header: rule.output_payload_to_header.as_deref().and_then(header),
        claim_headers: rule
            .output_claim_to_headers
            .iter()
            .filter_map(|c| Some((header(&c.header)?, Vec::new())))
            .collect(),
    }
}

/// Istio's token locations when a rule names none: `Authorization: Bearer` and
/// `?access_token=`.
fn default_locations() -> Vec<Location> {
    vec![Location::Header(http::header::AUTHORIZATION, "Bearer ".into()), Location::Param("access_token".into())]
}

/// Policies attached with `targetRefs` (Gateway API) are reported and left out.
fn targets_refs(
    r: &Resource,
    many: &[PolicyTargetReference],
    one: &Option<PolicyTargetReference>,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    let attached = !many.is_empty() || one.is_some();
    if attached {
        diags.push(Diagnostic::warning(
            &r.origin,
            &r.id,
            "spec.targetRefs",
            "targetRefs are not supported; use selector",
        ));
    }
    attached
}

/// The mesh config's `envoyExtAuthzHttp` provider named `name`.
fn ext_authz(mesh: &MeshConfig, name: &str, registry: &mut Registry<'_>) -> Result<Arc<ExtAuthz>, String> {
    let provider = mesh
        .extension_providers
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| format!("no extension provider {name:?} in the mesh config"))?;
    let http = provider
        .envoy_ext_authz_http
        .as_ref()
        .ok_or_else(|| format!("extension provider {name:?} is not an envoyExtAuthzHttp provider"))?;
    let (_, cluster) =
        registry.provider_cluster(&http.service, http.port).map_err(|e| format!("extension provider {name:?}: {e}"))?;
    let header = |h: &str| HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("invalid header name {h:?}"));
    let names = |list: &[String]| list.iter().map(|h| header(h)).collect::<Result<Vec<_>, _>>();
    let status_on_error = match &http.status_on_error {
        None => http::StatusCode::FORBIDDEN,
        Some(s) => s
            .parse::<u16>()
            .ok()
            .and_then(|c| http::StatusCode::from_u16(c).ok())
            .ok_or_else(|| format!("invalid statusOnError {s:?}"))?,
    };
    let mut additional = Vec::new();
    for (k, v) in &http.include_additional_headers_in_check {
        additional
            .push((header(k)?, http::HeaderValue::from_str(v).map_err(|_| format!("invalid header value {v:?}"))?));
    }
    Ok(Arc::new(ExtAuthz {
        name: name.into(),
        cluster: Some(cluster),
        path_prefix: http.path_prefix.clone().unwrap_or_default(),
        timeout: http.timeout.map_or(Duration::from_secs(10), |t| t.0),
        include: names(&http.include_request_headers_in_check)?,
        additional,
        to_upstream: names(&http.headers_to_upstream_on_allow)?,
        to_downstream: names(&http.headers_to_downstream_on_deny)?,
        fail_open: http.fail_open,
        status_on_error,
    }))
}

fn jwt_rule(rule: &ConfigJwtRule, jwks: &JwksCache) -> Result<JwtRule, FieldError> {
    if rule.issuer.is_empty() {
        return Err((".issuer".into(), "issuer is required".into()));
    }
    let keys = match (&rule.jwks, &rule.jwks_uri) {
        (Some(_), Some(_)) => return Err((".jwks".into(), "only one of jwks and jwksUri may be set".into())),
        (Some(inline), None) => {
            KeySource::Inline(Arc::new(KeySet::parse(inline.as_bytes(), true).map_err(|e| (".jwks".to_string(), e))?))
        }
        (None, Some(uri)) => {
            let parsed: http::Uri =
                uri.parse().map_err(|_| (".jwksUri".to_string(), format!("invalid URL {uri:?}")))?;
            if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
                return Err((".jwksUri".into(), format!("{uri:?} is not an http(s) URL")));
            }
            KeySource::Remote(jwks.remote(uri, rule.timeout.map_or(JWKS_TIMEOUT, |t| t.0)))
        }
        (None, None) => {
            return Err((".jwksUri".into(), "set jwks or jwksUri (OpenID discovery is not supported yet)".into()))
        }
    };
    let header = |name: &str, f: String| {
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| (f, format!("invalid header name {name:?}")))
    };
    let mut locations = Vec::new();
    for (i, h) in rule.from_headers.iter().enumerate() {
        locations.push(Location::Header(header(&h.name, format!(".fromHeaders[{i}].name"))?, h.prefix.clone()));
    }
    locations.extend(rule.from_params.iter().cloned().map(Location::Param));
    locations.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
    if locations.is_empty() {
        locations = default_locations();
    }
    let payload_header =
        rule.output_payload_to_header.as_deref().map(|h| header(h, ".outputPayloadToHeader".into())).transpose()?;
    let claim_headers = rule
        .output_claim_to_headers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let h = header(&c.header, format!(".outputClaimToHeaders[{i}].header"))?;
            Ok((h, c.claim.split('.').map(str::to_string).collect()))
        })
        .collect::<Result<_, FieldError>>()?;
    Ok(JwtRule {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        keys,
        locations,
        forward: rule.forward_original_token,
        payload_header,
        claim_headers,
    })
}
