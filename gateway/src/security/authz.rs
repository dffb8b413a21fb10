//! AuthorizationPolicy: compiled rules and their evaluation with Istio's semantics —
//! DENY before ALLOW; when ALLOW policies apply and none matches, deny; `spec: {}`
//! denies everything; `rules: [{}]` allows everything; `*` means present and non-empty.

use std::{net::IpAddr, sync::Arc};

use http::HeaderMap;
use serde_json::Value;

use super::{ext_authz::ExtAuthz, jwt::Identity};
use crate::config::istio::AuthorizationPolicy;

/// An Istio string value: exact, `prefix*`, `*suffix`, or `*` (present, non-empty).
#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl Pattern {
    fn parse(v: &str) -> Self {
        if v == "*" {
            Self::Present
        } else if let Some(p) = v.strip_suffix('*') {
            Self::Prefix(p.to_string())
        } else if let Some(s) = v.strip_prefix('*') {
            Self::Suffix(s.to_string())
        } else {
            Self::Exact(v.to_string())
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(e) => value == e,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Present => !value.is_empty(),
        }
    }

    fn matches_ignore_case(&self, value: &str) -> bool {
        let v = value.to_ascii_lowercase();
        match self {
            Self::Exact(e) => v == e.to_ascii_lowercase(),
            Self::Prefix(p) => v.starts_with(&p.to_ascii_lowercase()),
            Self::Suffix(s) => v.ends_with(&s.to_ascii_lowercase()),
            Self::Present => !v.is_empty(),
        }
    }
}

/// A path pattern: Istio string syntax, or a template with `{*}` / `{**}` segments.
#[derive(Debug, Clone)]
enum PathPattern {
    Plain(Pattern),
    Template(regex::Regex),
}

impl PathPattern {
    /// Istio's rules: templates are whole segments, and `{**}` (any number of segments)
    /// is the last operator, though literal segments may follow it (`/a/{**}/b`).
    fn parse(v: &str) -> Result<Self, String> {
        if !v.contains('{') && !v.contains('}') {
            return Ok(Self::Plain(Pattern::parse(v)));
        }
        let mut re = String::from("^");
        let mut any_seen = false;
        for (i, seg) in v.split('/').enumerate() {
            if i > 0 {
                re.push('/');
            }
            match seg {
                "{*}" | "{**}" if any_seen => return Err(format!("path {v:?}: {{**}} is not the last operator")),
                "{*}" => re.push_str("[^/]+"),
                "{**}" => {
                    any_seen = true;
                    re.push_str(".*");
                }
                s if s.contains('{') || s.contains('}') => {
                    return Err(format!("path {v:?}: templates must be whole segments ({{*}} or {{**}})"))
                }
                s if !s.bytes().all(is_pchar) => {
                    return Err(format!("path {v:?}: segment {s:?} is not a valid path literal"));
                }
                s => re.push_str(&regex::escape(s)),
            }
        }
        re.push('$');
        regex::Regex::new(&re).map(Self::Template).map_err(|e| e.to_string())
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Plain(p) => p.matches(path),
            Self::Template(re) => re.is_match(path),
        }
    }
}

/// RFC 3986 `pchar` but `*` (Envoy's URI template literals), the characters Istio
/// allows in literal segments beside path templates.
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;=:@".contains(&b)
}

/// An IP or CIDR block.
#[derive(Debug, Clone, Copy)]
struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(v: &str) -> Result<Self, String> {
        let (ip, bits) = match v.split_once('/') {
            Some((ip, b)) => (ip, Some(b)),
            None => (v, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| format!("{v:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{v:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(Self { addr, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let to_u128 = |a: IpAddr| match a {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        };
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        let ((a, width), (b, width_b)) = (to_u128(self.addr), to_u128(ip));
        if width != width_b {
            return false;
        }
        let shift = width - u32::from(self.bits);
        shift >= width || (a >> shift) == (b >> shift)
    }
}

/// A list with Istio's "any of" semantics; empty means "not constrained".
#[derive(Debug, Clone)]
struct AnyOf<T>(Vec<T>);

impl<T> Default for AnyOf<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

/// The request facts a policy reads.
#[derive(Debug)]
pub struct AuthzRequest<'a> {
    /// Direct peer address.
    pub source_ip: IpAddr,
    /// Original client address (X-Forwarded-For with trusted hops).
    pub remote_ip: IpAddr,
    /// The address the connection was made to.
    pub destination_ip: IpAddr,
    /// mTLS peer identity without `spiffe://` (`td/ns/x/sa/y`).
    pub peer_principal: Option<&'a str>,
    /// JWT identity.
    pub identity: Option<&'a Identity>,
    /// Host as sent (with port if any).
    pub host: &'a str,
    /// Listener port.
    pub port: u16,
    /// Method.
    pub method: &'a str,
    /// Normalized path without query.
    pub path: &'a str,
    /// Path with query, as `:path` carries it.
    pub path_and_query: &'a str,
    /// `http` or `https`, as `:scheme` carries it.
    pub scheme: &'a str,
    /// Request headers (after authentication outputs).
    pub headers: &'a HeaderMap,
    /// TLS SNI.
    pub sni: Option<&'a str>,
}

#[derive(Debug, Clone)]
struct SourceMatch {
    principals: AnyOf<Pattern>,
    not_principals: AnyOf<Pattern>,
    request_principals: AnyOf<Pattern>,
    not_request_principals: AnyOf<Pattern>,
    namespaces: AnyOf<Pattern>,
    not_namespaces: AnyOf<Pattern>,
    ip_blocks: AnyOf<Cidr>,
    not_ip_blocks: AnyOf<Cidr>,
    remote_ip_blocks: AnyOf<Cidr>,
    not_remote_ip_blocks: AnyOf<Cidr>,
    /// `ns/sa` pairs, matched against the peer identity in any trust domain.
    service_accounts: AnyOf<(String, String)>,
    not_service_accounts: AnyOf<(String, String)>,
    trust_domains: AnyOf<Pattern>,
    not_trust_domains: AnyOf<Pattern>,
}

#[derive(Debug, Clone)]
struct OperationMatch {
    hosts: AnyOf<Pattern>,
    not_hosts: AnyOf<Pattern>,
    ports: AnyOf<u16>,
    not_ports: AnyOf<u16>,
    methods: AnyOf<Pattern>,
    not_methods: AnyOf<Pattern>,
    paths: AnyOf<PathPattern>,
    not_paths: AnyOf<PathPattern>,
}

#[derive(Debug, Clone)]
enum Key {
    Header(http::header::HeaderName),
    /// `request.headers[:method]` and the other pseudo-headers Envoy matches on.
    Pseudo(Pseudo),
    SourceIp,
    RemoteIp,
    DestinationIp,
    SourceNamespace,
    SourcePrincipal,
    RequestPrincipal,
    Audiences,
    Presenter,
    Claim(Vec<String>),
    DestinationPort,
    Sni,
}

/// The HTTP/2 pseudo-headers a condition can name (Envoy sees them in HTTP/1 too).
#[derive(Debug, Clone, Copy)]
pub(super) enum Pseudo {
    Method,
    Path,
    Authority,
    Scheme,
}

impl Pseudo {
    pub(super) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            ":method" => Self::Method,
            ":path" => Self::Path,
            ":authority" => Self::Authority,
            ":scheme" => Self::Scheme,
            _ => return None,
        })
    }

    fn of<'r>(self, r: &AuthzRequest<'r>) -> &'r str {
        match self {
            Self::Method => r.method,
            Self::Path => r.path_and_query,
            Self::Authority => r.host,
            Self::Scheme => r.scheme,
        }
    }
}

#[derive(Debug, Clone)]
enum Values {
    Strings(Vec<Pattern>),
    Ips(Vec<Cidr>),
}

#[derive(Debug, Clone)]
struct When {
    key: Key,
    values: Option<Values>,
    not_values: Option<Values>,
}

#[derive(Debug, Clone)]
struct Rule {
    from: Vec<SourceMatch>,
    to: Vec<OperationMatch>,
    when: Vec<When>,
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `namespace/name`, named in denial logs.
    pub name: Arc<str>,
    rules: Vec<Rule>,
}

/// What the engine decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through.
    Allow,
    /// 403, naming the policy that denied (or `allow-policies` when none allowed).
    Deny(Arc<str>),
}

/// The policies that apply to this gateway.
#[derive(Debug, Clone, Default)]
pub struct AuthzEngine {
    /// Claims matched word by word (Istio: `scope`, `permission`, and each JWT rule's
    /// `spaceDelimitedClaims`).
    space_delimited: Arc<[String]>,
    custom: Vec<(Policy, Arc<ExtAuthz>)>,
    deny: Vec<Policy>,
    allow: Vec<Policy>,
    /// Names the ALLOW policies in a denial none of them allowed.
    allow_miss: Arc<str>,
}

impl AuthzEngine {
    /// Declares which claims are split on spaces (besides `scope` and `permission`).
    pub fn set_space_delimited(&mut self, claims: impl IntoIterator<Item = String>) {
        let mut all: Vec<String> = vec!["scope".into(), "permission".into()];
        all.extend(claims);
        self.space_delimited = all.into();
    }

    /// Adds a CUSTOM policy and the authorizer its matching requests are sent to.
    pub fn add_custom(&mut self, policy: Policy, provider: Arc<ExtAuthz>) {
        self.custom.push((policy, provider));
    }

    /// The authorizer to ask about this request: the first CUSTOM policy that matches.
    pub fn custom_provider(&self, req: &AuthzRequest<'_>) -> Option<&Arc<ExtAuthz>> {
        self.custom.iter().find(|(p, _)| p.matches(req, &self.space_delimited)).map(|(_, a)| a)
    }

    /// Adds a compiled policy by its action. A CUSTOM policy without its provider
    /// fails closed: requests its rules match are denied.
    pub fn add(&mut self, action: Action, policy: Policy) {
        match action {
            Action::Allow => {
                self.allow.push(policy);
                let names: Vec<&str> = self.allow.iter().map(|p| &*p.name).collect();
                self.allow_miss = format!("none of ALLOW {}", names.join(", ")).into();
            }
            Action::Deny | Action::Custom => self.deny.push(policy),
            Action::Audit => {}
        }
    }

    /// True when no policy applies.
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty() && self.deny.is_empty() && self.allow.is_empty()
    }

    /// The engine for TCP connections (Istio): HTTP-only fields cannot be evaluated, so
    /// ALLOW rules using them are dropped (narrower) and DENY rules lose them (broader).
    pub fn for_tcp(&self) -> Self {
        let allow = self
            .allow
            .iter()
            .map(|p| Policy {
                name: p.name.clone(),
                rules: p.rules.iter().filter(|r| !r.uses_http()).cloned().collect(),
            })
            .collect();
        let deny = self
            .deny
            .iter()
            .map(|p| Policy { name: p.name.clone(), rules: p.rules.iter().map(Rule::without_http).collect() })
            .collect();
        // An HTTP authorizer cannot judge a TCP connection: CUSTOM policies do not apply.
        Self {
            space_delimited: self.space_delimited.clone(),
            custom: Vec::new(),
            deny,
            allow,
            allow_miss: self.allow_miss.clone(),
        }
    }

    /// Istio: DENY first, then ALLOW (deny when ALLOW policies exist and none matches).
    pub fn evaluate(&self, req: &AuthzRequest<'_>) -> Decision {
        let split = &self.space_delimited;
        if let Some(p) = self.deny.iter().find(|p| p.matches(req, split)) {
            return Decision::Deny(p.name.clone());
        }
        if self.allow.is_empty() || self.allow.iter().any(|p| p.matches(req, split)) {
            return Decision::Allow;
        }
        Decision::Deny(self.allow_miss.clone())
    }
}

/// AuthorizationPolicy `action` as this gateway enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// ALLOW.
    Allow,
    /// DENY.
    Deny,
    /// CUSTOM: ask an external authorizer.
    Custom,
    /// AUDIT: never changes a decision.
    Audit,
}

/// A policy as compiled: in full when `errors` is empty, else in its fail-closed form.
#[derive(Debug)]
pub struct CompiledPolicy {
    /// The action it is enforced with (DENY for a policy whose action is unknown).
    pub action: Action,
    /// The rules that compiled; see [`Policy::compile`] for what errors do to them.
    pub policy: Policy,
    /// Each field that did not compile (`spec.rules[0].when[1]`) and why.
    pub errors: Vec<(String, String)>,
}

impl Policy {
    /// Compiles a policy, failing closed: a DENY or CUSTOM rule with a field that does
    /// not compile is kept without that field (broader), an ALLOW or AUDIT rule with
    /// one is left out (narrower), and an unknown action denies everything.
    pub fn compile(name: Arc<str>, p: &AuthorizationPolicy) -> CompiledPolicy {
        let mut errors = Vec::new();
        let action = match p.action.as_deref().unwrap_or("ALLOW") {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            "CUSTOM" => Action::Custom,
            "AUDIT" => Action::Audit,
            other => {
                errors.push(("spec.action".to_string(), format!("unknown action {other:?}")));
                let everything = Rule { from: Vec::new(), to: Vec::new(), when: Vec::new() };
                return CompiledPolicy { action: Action::Deny, policy: Self { name, rules: vec![everything] }, errors };
            }
        };
        let mut rules = Vec::new();
        for (i, r) in p.rules.iter().enumerate() {
            let before = errors.len();
            let rule = compile_rule(r, format!("spec.rules[{i}]"), &mut errors);
            if errors.len() == before || matches!(action, Action::Deny | Action::Custom) {
                rules.push(rule);
            }
        }
        CompiledPolicy { action, policy: Self { name, rules }, errors }
    }

    fn matches(&self, req: &AuthzRequest<'_>, space_delimited: &[String]) -> bool {
        self.rules.iter().any(|r| {
            (r.from.is_empty() || r.from.iter().any(|s| s.matches(req)))
                && (r.to.is_empty() || r.to.iter().any(|o| o.matches(req)))
                && r.when.iter().all(|w| w.holds(req, space_delimited))
        })
    }
}

impl Key {
    /// Attributes only an HTTP request has.
    fn is_http(&self) -> bool {
        matches!(
            self,
            Key::Header(_) | Key::Pseudo(_) | Key::RequestPrincipal | Key::Audiences | Key::Presenter | Key::Claim(_)
        )
    }
}

impl Rule {
    fn uses_http(&self) -> bool {
        self.from.iter().any(|s| !s.request_principals.0.is_empty() || !s.not_request_principals.0.is_empty())
            || self.to.iter().any(|o| {
                !(o.hosts.0.is_empty()
                    && o.not_hosts.0.is_empty()
                    && o.methods.0.is_empty()
                    && o.not_methods.0.is_empty()
                    && o.paths.0.is_empty()
                    && o.not_paths.0.is_empty())
            })
            || self.when.iter().any(|w| w.key.is_http())
    }

    fn without_http(&self) -> Rule {
        let empty = || AnyOf(Vec::new());
        let from = self
            .from
            .iter()
            .map(|s| SourceMatch { request_principals: empty(), not_request_principals: empty(), ..s.clone() })
            .collect();
        let to = self
            .to
            .iter()
            .map(|o| OperationMatch {
                hosts: empty(),
                not_hosts: empty(),
                methods: empty(),
                not_methods: empty(),
                paths: AnyOf(Vec::new()),
                not_paths: AnyOf(Vec::new()),
                ..o.clone()
            })
            .collect();
        Rule { from, to, when: self.when.iter().filter(|w| !w.key.is_http()).cloned().collect() }
    }
}

// === impl matching ===

fn any_str(list: &AnyOf<Pattern>, value: Option<&str>) -> bool {
    value.is_some_and(|v| list.0.iter().any(|p| p.matches(v)))
}

/// `field` and `notField` together: the value must match one of the first (when given)
/// and none of the second.
fn check<T>(yes: &AnyOf<T>, no: &AnyOf<T>, hit: impl Fn(&AnyOf<T>) -> bool) -> bool {
    (yes.0.is_empty() || hit(yes)) && (no.0.is_empty() || !hit(no))
}

/// Istio: a request principal `iss/sub` matches `*` only when both parts are non-empty.
fn request_principal_matches(list: &AnyOf<Pattern>, principal: Option<&str>) -> bool {
    list.0.iter().any(|p| match (p, principal) {
        (Pattern::Present, Some(pr)) => pr.rsplit_once('/').is_some_and(|(i, s)| !i.is_empty() && !s.is_empty()),
        (_, Some(pr)) => p.matches(pr),
        _ => false,
    })
}

impl SourceMatch {
    fn matches(&self, r: &AuthzRequest<'_>) -> bool {
        let principal = r.peer_principal;
        let peer = principal.and_then(PeerIdentity::parse);
        let namespace = principal.and_then(|p| p.split('/').skip_while(|s| *s != "ns").nth(1));
        let request_principal = r.identity.and_then(|i| i.principal.as_deref());
        let ip_in = |list: &AnyOf<Cidr>, ip: IpAddr| list.0.iter().any(|c| c.contains(ip));
        check(&self.principals, &self.not_principals, |l| any_str(l, principal))
            && check(&self.request_principals, &self.not_request_principals, |l| {
                request_principal_matches(l, request_principal)
            })
            && check(&self.namespaces, &self.not_namespaces, |l| any_str(l, namespace))
            && check(&self.ip_blocks, &self.not_ip_blocks, |l| ip_in(l, r.source_ip))
            && check(&self.remote_ip_blocks, &self.not_remote_ip_blocks, |l| ip_in(l, r.remote_ip))
            && check(&self.service_accounts, &self.not_service_accounts, |l| {
                peer.is_some_and(|p| l.0.iter().any(|(ns, sa)| p.namespace == ns && p.service_account == sa))
            })
            && check(&self.trust_domains, &self.not_trust_domains, |l| any_str(l, peer.map(|p| p.trust_domain)))
    }
}

/// The parts of a SPIFFE identity `td/ns/<ns>/sa/<sa>` (without `spiffe://`).
#[derive(Clone, Copy)]
struct PeerIdentity<'a> {
    trust_domain: &'a str,
    namespace: &'a str,
    service_account: &'a str,
}

impl<'a> PeerIdentity<'a> {
    fn parse(principal: &'a str) -> Option<Self> {
        let mut parts = principal.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(trust_domain), Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) => {
                Some(Self { trust_domain, namespace, service_account })
            }
            _ => None,
        }
    }
}

impl OperationMatch {
    fn matches(&self, r: &AuthzRequest<'_>) -> bool {
        check(&self.hosts, &self.not_hosts, |l| l.0.iter().any(|p| p.matches_ignore_case(r.host)))
            && check(&self.ports, &self.not_ports, |l| l.0.contains(&r.port))
            && check(&self.methods, &self.not_methods, |l| any_str(l, Some(r.method)))
            && check(&self.paths, &self.not_paths, |l| l.0.iter().any(|p| p.matches(r.path)))
    }
}

impl When {
    /// A missing attribute never equals a value, so `notValues` alone holds then.
    fn holds(&self, r: &AuthzRequest<'_>, space_delimited: &[String]) -> bool {
        let values = self.attribute(r, space_delimited);
        let hit = |v: &Values| match (v, &values) {
            (Values::Ips(cidrs), Attr::Ip(ip)) => cidrs.iter().any(|c| c.contains(*ip)),
            (Values::Strings(pats), Attr::Strings(vals)) => vals.iter().any(|val| pats.iter().any(|p| p.matches(val))),
            _ => false,
        };
        self.values.as_ref().is_none_or(hit) && self.not_values.as_ref().is_none_or(|v| !hit(v))
    }

    fn attribute(&self, r: &AuthzRequest<'_>, space_delimited: &[String]) -> Attr {
        let id = r.identity;
        let strings = |v: Option<String>| Attr::Strings(v.into_iter().collect());
        match &self.key {
            Key::SourceIp => Attr::Ip(r.source_ip),
            Key::RemoteIp => Attr::Ip(r.remote_ip),
            Key::DestinationIp => Attr::Ip(r.destination_ip),
            Key::SourcePrincipal => strings(r.peer_principal.map(str::to_string)),
            Key::SourceNamespace => strings(
                r.peer_principal.and_then(|p| p.split('/').skip_while(|s| *s != "ns").nth(1)).map(str::to_string),
            ),
            Key::RequestPrincipal => strings(id.and_then(|i| i.principal.clone())),
            Key::Presenter => strings(id.and_then(|i| i.claims.get("azp")).and_then(Value::as_str).map(str::to_string)),
            Key::Audiences => {
                Attr::Strings(id.and_then(|i| i.claims.get("aud")).map(|v| claim_values(v, false)).unwrap_or_default())
            }
            Key::Claim(path) => {
                let split = path.last().is_some_and(|name| space_delimited.contains(name));
                Attr::Strings(id.and_then(|i| i.claim(path)).map(|v| claim_values(v, split)).unwrap_or_default())
            }
            Key::Header(name) => {
                let all: Vec<&str> = r.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
                strings((!all.is_empty()).then(|| all.join(",")))
            }
            Key::Pseudo(p) => strings(Some(p.of(r).to_string()).filter(|v| !v.is_empty())),
            Key::DestinationPort => strings(Some(r.port.to_string())),
            Key::Sni => strings(r.sni.map(str::to_string)),
        }
    }
}

enum Attr {
    Ip(IpAddr),
    Strings(Vec<String>),
}

/// Claim values as strings: lists match by element; space-delimited claims (`scope`,
/// `permission`, configured ones) also by word.
fn claim_values(v: &Value, split: bool) -> Vec<String> {
    match v {
        Value::String(s) => {
            let mut out = vec![s.clone()];
            if split {
                out.extend(s.split(' ').filter(|p| !p.is_empty()).map(str::to_string));
            }
            out
        }
        Value::Array(items) => items.iter().flat_map(|i| claim_values(i, split)).collect(),
        Value::Bool(b) => vec![b.to_string()],
        Value::Number(n) => vec![n.to_string()],
        _ => Vec::new(),
    }
}

mod compile;
#[cfg(test)]
mod tests;

use compile::compile_rule;
