//! AuthorizationPolicy fields → compiled matchers; every error names its field.

use super::{compile_list, AnyOf, Cidr, Key, OperationMatch, PathPattern, Pattern, Rule, SourceMatch, Values, When};
use crate::config::istio::{Condition, Operation, Rule as ConfigRule, Source};

pub(super) fn compile_rule(r: &ConfigRule, td: &str) -> Result<Rule, (String, String)> {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, f)| compile_source(&f.source, td).map_err(|e| (format!(".from[{i}].source"), e)))
        .collect::<Result<_, _>>()?;
    let to =
        r.to.iter()
            .enumerate()
            .map(|(i, t)| compile_operation(&t.operation).map_err(|e| (format!(".to[{i}].operation"), e)))
            .collect::<Result<_, _>>()?;
    let when = r
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| compile_when(c).map_err(|e| (format!(".when[{i}]"), e)))
        .collect::<Result<_, _>>()?;
    Ok(Rule { from, to, when })
}

fn strings(values: &[String]) -> Result<AnyOf<Pattern>, String> {
    compile_list(values, |v| Ok(Pattern::parse(v)))
}

/// Istio writes principals without `spiffe://`; accept both.
fn principals(values: &[String]) -> Result<AnyOf<Pattern>, String> {
    compile_list(values, |v| Ok(Pattern::parse(v.strip_prefix("spiffe://").unwrap_or(v))))
}

fn compile_source(s: &Source, _td: &str) -> Result<SourceMatch, String> {
    if !s.service_accounts.is_empty()
        || !s.not_service_accounts.is_empty()
        || !s.trust_domains.is_empty()
        || !s.not_trust_domains.is_empty()
    {
        return Err("serviceAccounts and trustDomains are not supported yet".into());
    }
    let cidrs = |v: &[String]| compile_list(v, Cidr::parse);
    Ok(SourceMatch {
        principals: principals(&s.principals)?,
        not_principals: principals(&s.not_principals)?,
        request_principals: strings(&s.request_principals)?,
        not_request_principals: strings(&s.not_request_principals)?,
        namespaces: strings(&s.namespaces)?,
        not_namespaces: strings(&s.not_namespaces)?,
        ip_blocks: cidrs(&s.ip_blocks)?,
        not_ip_blocks: cidrs(&s.not_ip_blocks)?,
        remote_ip_blocks: cidrs(&s.remote_ip_blocks)?,
        not_remote_ip_blocks: cidrs(&s.not_remote_ip_blocks)?,
    })
}

fn compile_operation(o: &Operation) -> Result<OperationMatch, String> {
    let ports =
        |v: &[String]| compile_list(v, |p| p.parse::<u16>().map_err(|_| format!("port {p:?} is not a port number")));
    let paths = |v: &[String]| compile_list(v, PathPattern::parse);
    Ok(OperationMatch {
        hosts: strings(&o.hosts)?,
        not_hosts: strings(&o.not_hosts)?,
        ports: ports(&o.ports)?,
        not_ports: ports(&o.not_ports)?,
        methods: strings(&o.methods)?,
        not_methods: strings(&o.not_methods)?,
        paths: paths(&o.paths)?,
        not_paths: paths(&o.not_paths)?,
    })
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
                Key::Header(
                    http::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("invalid header name in {k:?}"))?,
                )
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
            Key::SourceIp | Key::RemoteIp => Values::Ips(v.iter().map(|s| Cidr::parse(s)).collect::<Result<_, _>>()?),
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
