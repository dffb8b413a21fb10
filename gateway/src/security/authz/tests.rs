use std::net::IpAddr;

use http::HeaderMap;

use super::*;

fn engine(yaml_policies: &[(&str, &str)]) -> AuthzEngine {
    let mut e = AuthzEngine::default();
    e.set_space_delimited(Vec::new());
    for (name, spec) in yaml_policies {
        let p: AuthorizationPolicy = serde_yaml::from_str(spec).unwrap();
        let (action, policy) = Policy::compile((*name).into(), &p, "cluster.local").unwrap();
        e.add(action, policy);
    }
    e
}

struct Req {
    method: &'static str,
    path: &'static str,
    headers: HeaderMap,
    identity: Option<Identity>,
    ip: IpAddr,
}

impl Req {
    fn new(method: &'static str, path: &'static str) -> Self {
        Self { method, path, headers: HeaderMap::new(), identity: None, ip: "10.0.0.1".parse().unwrap() }
    }

    fn decide(&self, e: &AuthzEngine) -> bool {
        let r = AuthzRequest {
            source_ip: self.ip,
            remote_ip: self.ip,
            peer_principal: None,
            identity: self.identity.as_ref(),
            host: "shop.test",
            port: 8080,
            method: self.method,
            path: self.path,
            headers: &self.headers,
            sni: None,
        };
        e.evaluate(&r) == Decision::Allow
    }
}

fn identity(claims: serde_json::Value) -> Identity {
    let principal = match (claims.get("iss").and_then(|v| v.as_str()), claims.get("sub").and_then(|v| v.as_str())) {
        (Some(i), Some(s)) => Some(format!("{i}/{s}")),
        _ => None,
    };
    Identity { principal, issuer: String::new(), claims }
}

#[test]
fn empty_spec_denies_all_and_empty_rule_allows_all() {
    assert!(!Req::new("GET", "/").decide(&engine(&[("a", "{}")])));
    assert!(Req::new("GET", "/").decide(&engine(&[("a", "rules: [{}]")])));
    assert!(!Req::new("GET", "/").decide(&engine(&[("a", "action: DENY\nrules: [{}]")])));
    assert!(Req::new("GET", "/").decide(&engine(&[("a", "action: DENY")])), "DENY without rules never matches");
    assert!(Req::new("GET", "/").decide(&AuthzEngine::default()));
}

#[test]
fn deny_wins_over_allow_and_unmatched_allow_denies() {
    let e = engine(&[
        ("deny-get", "action: DENY\nrules: [{to: [{operation: {methods: [GET]}}]}]"),
        ("allow-ip", "rules: [{to: [{operation: {paths: [/ip]}}]}]"),
    ]);
    assert!(!Req::new("GET", "/ip").decide(&e));
    assert!(Req::new("POST", "/ip").decide(&e));
    assert!(!Req::new("POST", "/get").decide(&e));
}

#[test]
fn string_patterns_and_path_templates() {
    let e = engine(&[("a", "rules: [{to: [{operation: {paths: [/api/*, '*.css', /exact, '/t/{*}/x/{**}']}}]}]")]);
    for ok in ["/api/v1", "/s/a.css", "/exact", "/t/a/x/", "/t/a/x/b/c"] {
        assert!(Req::new("GET", ok).decide(&e), "{ok}");
    }
    for no in ["/api", "/exactly", "/t//x/y", "/t/a/x"] {
        assert!(!Req::new("GET", no).decide(&e), "{no}");
    }
}

#[test]
fn not_values_hold_when_the_attribute_is_missing() {
    let e = engine(&[(
        "deny",
        "action: DENY\nrules: [{to: [{operation: {methods: [GET]}}], when: [{key: 'request.headers[x-token]', notValues: [admin]}]}]",
    )]);
    assert!(!Req::new("GET", "/").decide(&e), "no header: denied");
    let mut admin = Req::new("GET", "/");
    admin.headers.insert("x-token", "admin".parse().unwrap());
    assert!(admin.decide(&e));
}

#[test]
fn request_principal_star_needs_iss_and_sub() {
    let e = engine(&[("a", "rules: [{from: [{source: {requestPrincipals: ['*']}}]}]")]);
    let mut with_sub = Req::new("GET", "/");
    with_sub.identity = Some(identity(serde_json::json!({"iss": "i", "sub": "s"})));
    assert!(with_sub.decide(&e));
    let mut without_sub = Req::new("GET", "/");
    without_sub.identity = Some(identity(serde_json::json!({"iss": "i"})));
    assert!(!without_sub.decide(&e));
    assert!(!Req::new("GET", "/").decide(&e));
}

#[test]
fn list_claims_match_any_element_and_nested_claims_work() {
    let e = engine(&[("a", "rules: [{when: [{key: 'request.auth.claims[groups]', values: [group1]}, {key: 'request.auth.claims[org][unit]', values: [eng]}]}]")]);
    let mut r = Req::new("GET", "/");
    r.identity = Some(identity(
        serde_json::json!({"iss": "i", "sub": "s", "groups": ["group0", "group1"], "org": {"unit": "eng"}}),
    ));
    assert!(r.decide(&e));
    r.identity =
        Some(identity(serde_json::json!({"iss": "i", "sub": "s", "groups": ["group2"], "org": {"unit": "eng"}})));
    assert!(!r.decide(&e));
}

#[test]
fn ip_blocks_and_cidrs() {
    let e = engine(&[("a", "rules: [{from: [{source: {ipBlocks: [1.2.3.4, 5.6.7.0/24, '2001:db8::/32']}}]}]")]);
    for (ip, ok) in
        [("1.2.3.4", true), ("5.6.7.200", true), ("5.6.8.1", false), ("2001:db8::1", true), ("::ffff:1.2.3.4", true)]
    {
        let mut r = Req::new("GET", "/");
        r.ip = ip.parse().unwrap();
        assert_eq!(r.decide(&e), ok, "{ip}");
    }
}

#[test]
fn invalid_policies_name_the_field() {
    let bad = |spec: &str| {
        let p: AuthorizationPolicy = serde_yaml::from_str(spec).unwrap();
        Policy::compile("x".into(), &p, "cluster.local").unwrap_err()
    };
    assert_eq!(bad("rules: [{when: [{key: 'destination.labels[app]', values: [a]}]}]").0, "spec.rules[0].when[0]");
    assert_eq!(bad("rules: [{from: [{source: {ipBlocks: [300.1.1.1]}}]}]").0, "spec.rules[0].from[0].source");
    assert_eq!(bad("rules: [{to: [{operation: {ports: [http]}}]}]").0, "spec.rules[0].to[0].operation");
    assert_eq!(bad("rules: [{when: [{key: source.ip}]}]").0, "spec.rules[0].when[0]");
    assert_eq!(bad("action: MAYBE").0, "spec.action");
}

#[test]
fn tcp_drops_http_allow_rules_and_widens_http_deny_rules() {
    let tcp_request = |e: &AuthzEngine| {
        let headers = HeaderMap::new();
        let r = AuthzRequest {
            source_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "10.0.0.1".parse().unwrap(),
            peer_principal: None,
            identity: None,
            host: "",
            port: 9000,
            method: "",
            path: "",
            headers: &headers,
            sni: None,
        };
        e.for_tcp().evaluate(&r) == Decision::Allow
    };
    // ALLOW GET on port 9000 cannot be evaluated on TCP: the rule vanishes, nothing is allowed.
    assert!(!tcp_request(&engine(&[("a", "rules: [{to: [{operation: {methods: [GET], ports: ['9000']}}]}]")])));
    assert!(tcp_request(&engine(&[("a", "rules: [{to: [{operation: {ports: ['9000']}}]}]")])));
    // DENY GET becomes "deny every connection" on TCP.
    assert!(!tcp_request(&engine(&[("d", "action: DENY\nrules: [{to: [{operation: {methods: [GET]}}]}]")])));
    assert!(tcp_request(&engine(&[("d", "action: DENY\nrules: [{to: [{operation: {ports: ['8443']}}]}]")])));
}

#[test]
fn only_space_delimited_claims_match_by_word() {
    let e = engine(&[(
        "a",
        "rules: [{when: [{key: 'request.auth.claims[scope]', values: [write]}, {key: 'request.auth.claims[name]', notValues: [John]}]}]",
    )]);
    let mut r = Req::new("GET", "/");
    r.identity =
        Some(identity(serde_json::json!({"iss": "i", "sub": "s", "scope": "read write", "name": "John Smith"})));
    assert!(r.decide(&e), "scope splits on spaces, name does not");
    r.identity = Some(identity(serde_json::json!({"iss": "i", "sub": "s", "scope": "read", "name": "John Smith"})));
    assert!(!r.decide(&e));
}
