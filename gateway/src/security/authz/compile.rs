//! AuthorizationPolicy fields → compiled matchers; every error names its field.
//!
//! A field that does not compile is left unconstrained and reported. That makes its
//! rule broader, which is what a DENY rule needs (Istio: an unsupported condition
//! widens a DENY rule, never narrows it); the caller drops an ALLOW rule that has any
//! error, which can only narrow what ALLOW policies let through.

use super::{AnyOf, Cidr, Key, OperationMatch, PathPattern, Pattern, Pseudo, Rule, SourceMatch, Values, When};
use crate::config::istio::{Condition, Operation, Rule as ConfigRule, Source};

/// A field's path (`spec.rules[0].when[1].key`) and what is wrong with it.
pub(super) type FieldError = (String, String);

/// Where a rule's errors go, prefixed with the rule's path.
struct Fields<'a> {
    at: String,
    errors: &'a mut Vec<FieldError>,
}

impl Fields<'_> {
    /// The compiled field, or (on error) the unconstrained default, the error noted.
    fn take<T: Default>(&mut self, field: &str, compiled: Result<T, String>) -> T {
        compiled.unwrap_or_else(|e| {
            self.errors.push((format!("{}{field}", self.at), e));
            T::default()
        })
    }

    fn nested(&mut self, field: String) -> Fields<'_> {
        Fields { at: format!("{}{field}", self.at), errors: self.errors }
    }
}

/// Compiles rule `r` at `at` (`spec.rules[i]`); its errors are appended to `errors`.
pub(super) fn compile_rule(r: &ConfigRule, at: String, errors: &mut Vec<FieldError>) -> Rule {
    let mut f = Fields { at, errors };
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, s)| compile_source(&s.source, &mut f.nested(format!(".from[{i}].source"))))
        .collect();
    let to =
        r.to.iter()
            .enumerate()
            .map(|(i, t)| compile_operation(&t.operation, &mut f.nested(format!(".to[{i}].operation"))))
            .collect();
    let when = r
        .when
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let when = compile_when(c);
            f.take(&format!(".when[{i}]"), when.map(Some))
        })
        .collect();
    Rule { from, to, when }
}

fn strings(values: &[String]) -> Result<AnyOf<Pattern>, String> {
    compile_list(values, |v| Ok(Pattern::parse(v)))
}

/// Istio writes principals without `spiffe://`; accept both.
fn principals(values: &[String]) -> Result<AnyOf<Pattern>, String> {
    compile_list(values, |v| Ok(Pattern::parse(v.strip_prefix("spiffe://").unwrap_or(v))))
}

fn compile_list<T>(values: &[String], f: impl Fn(&str) -> Result<T, String>) -> Result<AnyOf<T>, String> {
    values.iter().map(|v| f(v)).collect::<Result<_, _>>().map(AnyOf)
}

/// Istio's `serviceAccounts`: `namespace/name`, no wildcards, and not beside
/// `principals` or `namespaces` (which say the same thing another way).
fn service_accounts(s: &Source, values: &[String]) -> Result<AnyOf<(String, String)>, String> {
    let combined = [&s.principals, &s.not_principals, &s.namespaces, &s.not_namespaces];
    if !values.is_empty() && combined.iter().any(|v| !v.is_empty()) {
        return Err("cannot be combined with principals or namespaces".into());
    }
    compile_list(values, |v| match v.split_once('/') {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') && !v.contains('*') => {
            Ok((ns.to_string(), sa.to_string()))
        }
        _ => Err(format!("{v:?} is not namespace/serviceaccount")),
    })
}

fn compile_source(s: &Source, f: &mut Fields<'_>) -> SourceMatch {
    let cidrs = |v: &[String]| compile_list(v, Cidr::parse);
    SourceMatch {
        service_accounts: f.take(".serviceAccounts", service_accounts(s, &s.service_accounts)),
        not_service_accounts: f.take(".notServiceAccounts", service_accounts(s, &s.not_service_accounts)),
        trust_domains: f.take(".trustDomains", strings(&s.trust_domains)),
        not_trust_domains: f.take(".notTrustDomains", strings(&s.not_trust_domains)),
        principals: f.take(".principals", principals(&s.principals)),
        not_principals: f.take(".notPrincipals", principals(&s.not_principals)),
        request_principals: f.take(".requestPrincipals", strings(&s.request_principals)),
        not_request_principals: f.take(".notRequestPrincipals", strings(&s.not_request_principals)),
        namespaces: f.take(".namespaces", strings(&s.namespaces)),
        not_namespaces: f.take(".notNamespaces", strings(&s.not_namespaces)),
        ip_blocks: f.take(".ipBlocks", cidrs(&s.ip_blocks)),
        not_ip_blocks: f.take(".notIpBlocks", cidrs(&s.not_ip_blocks)),
        remote_ip_blocks: f.take(".remoteIpBlocks", cidrs(&s.remote_ip_blocks)),
        not_remote_ip_blocks: f.take(".notRemoteIpBlocks", cidrs(&s.not_remote_ip_blocks)),
    }
}

fn compile_operation(o: &Operation, f: &mut Fields<'_>) -> OperationMatch {
    let ports =
        |v: &[String]| compile_list(v, |p| p.parse::<u16>().map_err(|_| format!("port {p:?} is not a port number")));
    let paths = |v: &[String]| compile_list(v, PathPattern::parse);
    OperationMatch {
        hosts: f.take(".hosts", strings(&o.hosts)),
        not_hosts: f.take(".notHosts", strings(&o.not_hosts)),
        ports: f.take(".ports", ports(&o.ports)),
        not_ports: f.take(".notPorts", ports(&o.not_ports)),
        methods: f.take(".methods", strings(&o.methods)),
        not_methods: f.take(".notMethods", strings(&o.not_methods)),
        paths: f.take(".paths", paths(&o.paths)),
        not_paths: f.take(".notPaths", paths(&o.not_paths)),
    }
}

fn compile_when(c: &Condition) -> Result<When, String> {
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(format!("condition {:?} needs values or notValues", c.key));
    }
    let bracket = |rest: &str| -> Option<Vec<String>> {
        let inner = rest.strip_prefix('[')?.strip_suffix(']')?;
        let parts: Vec<String> = inner.split("][").map(str::to_string).collect();
        parts.iter().all(|p| !p.is_empty()).then_some(parts)
    };
    let key = match c.key.as_str() {
        "source.ip" => Key::SourceIp,
        "remote.ip" => Key::RemoteIp,
        "destination.ip" => Key::DestinationIp,
        "source.namespace" => Key::SourceNamespace,
        "source.principal" => Key::SourcePrincipal,
        "request.auth.principal" => Key::RequestPrincipal,
        "request.auth.audiences" => Key::Audiences,
        "request.auth.presenter" => Key::Presenter,
        "destination.port" => Key::DestinationPort,
        "connection.sni" => Key::Sni,
        k => {
            if let Some(name) = k.strip_prefix("request.headers").and_then(bracket) {
                let [name] = name.as_slice() else { return Err(format!("invalid header key {k:?}")) };
                match Pseudo::parse(name) {
                    Some(pseudo) => Key::Pseudo(pseudo),
                    None => Key::Header(
                        http::header::HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| format!("invalid header name in {k:?}"))?,
                    ),
                }
            } else if let Some(path) = k.strip_prefix("request.auth.claims").and_then(bracket) {
                Key::Claim(path)
            } else {
                return Err(format!("unsupported condition key {k:?}"));
            }
        }
    };
    let values = |v: &[String]| -> Result<Option<Values>, String> {
        if v.is_empty() {
            return Ok(None);
        }
        Ok(Some(match key {
            Key::SourceIp | Key::RemoteIp | Key::DestinationIp => {
                Values::Ips(v.iter().map(|s| Cidr::parse(s)).collect::<Result<_, _>>()?)
            }
            Key::SourcePrincipal => Values::Strings(principals(v)?.0),
            Key::DestinationPort => {
                for p in v {
                    p.parse::<u16>().map_err(|_| format!("port {p:?} is not a port number"))?;
                }
                Values::Strings(v.iter().map(|s| Pattern::parse(s)).collect())
            }
            _ => Values::Strings(v.iter().map(|s| Pattern::parse(s)).collect()),
        }))
    };
    Ok(When { values: values(&c.values)?, not_values: values(&c.not_values)?, key })
}
