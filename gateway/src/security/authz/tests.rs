use std::net::IpAddr;

use http::HeaderMap;

use super::*;

fn engine(yaml_policies: &[(&str, &str)]) -> AuthzEngine {
    let mut e = AuthzEngine::default();
    e.set_space_delimited(Vec::new());
    for (name, spec) in yaml_policies {
        let p: AuthorizationPolicy = serde_yaml::from_str(spec).unwrap();
        let c = Policy::compile((*name).into(), &p);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        e.add(c.action, c.policy);
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
            destination_ip: self.ip,
            peer_principal: None,
            identity: self.identity.as_ref(),
            host: "shop.test",
            port: 8080,
            method: self.method,
            path: self.path,
            path_and_query: self.path,
            scheme: "https",
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

fn compile_with_errors(spec: &str) -> CompiledPolicy {
    let p: AuthorizationPolicy = serde_yaml::from_str(spec).unwrap();
    Policy::compile("x".into(), &p)
}

#[test]
fn invalid_policies_name_the_field() {
    let bad = |spec: &str| compile_with_errors(spec).errors.into_iter().map(|(f, _)| f).collect::<Vec<_>>();
    assert_eq!(bad("rules: [{when: [{key: 'destination.labels[app]', values: [a]}]}]"), ["spec.rules[0].when[0]"]);
    assert_eq!(bad("rules: [{from: [{source: {ipBlocks: [300.1.1.1]}}]}]"), ["spec.rules[0].from[0].source.ipBlocks"]);
    assert_eq!(bad("rules: [{to: [{operation: {ports: [http]}}]}]"), ["spec.rules[0].to[0].operation.ports"]);
    assert_eq!(bad("rules: [{when: [{key: source.ip}]}]"), ["spec.rules[0].when[0]"]);
    assert_eq!(bad("action: MAYBE"), ["spec.action"]);
    assert_eq!(
        bad("rules: [{to: [{operation: {paths: ['/a/{**}/{*}']}}]}, {to: [{operation: {paths: ['/a{*}']}}]}]"),
        ["spec.rules[0].to[0].operation.paths", "spec.rules[1].to[0].operation.paths"]
    );
}

fn with_errors(policies: &[&str]) -> AuthzEngine {
    let mut e = AuthzEngine::default();
    for spec in policies {
        let c = compile_with_errors(spec);
        assert!(!c.errors.is_empty(), "{spec} should have errors");
        e.add(c.action, c.policy);
    }
    e
}

#[test]
fn a_deny_rule_with_errors_loses_the_failing_constraint_and_denies_more() {
    // The condition that fails is dropped: every GET is denied, not only those it named.
    let e = with_errors(&[
        "action: DENY\nrules: [{to: [{operation: {methods: [GET]}}], when: [{key: bogus.key, values: [x]}]}]",
    ]);
    assert!(!Req::new("GET", "/anything").decide(&e));
    assert!(Req::new("POST", "/anything").decide(&e), "what the rule never matched still passes");
    // A bad value in a list drops the whole field, not just the value (that would narrow).
    let e = with_errors(&["action: DENY\nrules: [{to: [{operation: {paths: [/admin, '/x/{**}/{*}']}}]}]"]);
    assert!(!Req::new("GET", "/public").decide(&e));
    // notX fields that fail are dropped too: a DENY never denies less than written.
    let e = with_errors(&["action: DENY\nrules: [{from: [{source: {notIpBlocks: [not-an-ip]}}]}]"]);
    assert!(!Req::new("GET", "/").decide(&e));
    // An unknown action denies everything.
    assert!(
        !Req::new("GET", "/").decide(&with_errors(&["action: REJECT\nrules: [{to: [{operation: {paths: [/a]}}]}]"]))
    );
}

#[test]
fn custom_and_allow_policies_with_errors_fail_closed() {
    let c = compile_with_errors("action: CUSTOM\nprovider: {name: p}\nrules: [{to: [{operation: {ports: [http]}}]}]");
    assert_eq!(c.action, Action::Custom);
    let mut e = AuthzEngine::default();
    e.add(c.action, c.policy);
    assert!(!Req::new("GET", "/").decide(&e), "a CUSTOM policy with errors denies what it could match");
    // ALLOW: the rule with an error is left out; the good one still allows.
    let e = with_errors(&["rules: [{to: [{operation: {paths: [/ok]}}]}, {when: [{key: bogus, values: [x]}]}]"]);
    assert!(Req::new("GET", "/ok").decide(&e));
    assert!(!Req::new("GET", "/other").decide(&e));
}

#[test]
fn path_templates_follow_istios_rules() {
    let e = engine(&[("a", "rules: [{to: [{operation: {paths: ['/a/{**}/b', '/v/{*}/c']}}]}]")]);
    for ok in ["/a/x/b", "/a/x/y/b", "/a//b", "/v/1/c"] {
        assert!(Req::new("GET", ok).decide(&e), "{ok}");
    }
    for no in ["/a/b", "/a/x/c", "/v/1/2/c", "/v//c"] {
        assert!(!Req::new("GET", no).decide(&e), "{no}");
    }
}

#[test]
fn tcp_drops_http_allow_rules_and_widens_http_deny_rules() {
    let tcp_request = |e: &AuthzEngine| {
        let headers = HeaderMap::new();
        let r = AuthzRequest {
            source_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "10.0.0.1".parse().unwrap(),
            destination_ip: "10.0.0.2".parse().unwrap(),
            peer_principal: None,
            identity: None,
            host: "",
            port: 9000,
            method: "",
            path: "",
            path_and_query: "",
            scheme: "",
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

#[test]
fn service_accounts_and_trust_domains_match_the_peer_identity() {
    let e = engine(&[("a", "rules: [{from: [{source: {serviceAccounts: [shop/cart], notTrustDomains: [old.td]}}]}]")]);
    let decide = |principal: Option<&str>| {
        let headers = HeaderMap::new();
        let ip = "10.0.0.1".parse().unwrap();
        let r = AuthzRequest {
            source_ip: ip,
            remote_ip: ip,
            destination_ip: ip,
            peer_principal: principal,
            identity: None,
            host: "shop.test",
            port: 8080,
            method: "GET",
            path: "/",
            path_and_query: "/",
            scheme: "",
            headers: &headers,
            sni: None,
        };
        e.evaluate(&r) == Decision::Allow
    };
    assert!(decide(Some("cluster.local/ns/shop/sa/cart")));
    assert!(decide(Some("other.td/ns/shop/sa/cart")), "any trust domain");
    assert!(!decide(Some("old.td/ns/shop/sa/cart")));
    assert!(!decide(Some("cluster.local/ns/shop/sa/web")));
    assert!(!decide(Some("cluster.local/ns/shop/sa/cart/x")));
    assert!(!decide(None), "needs mTLS");
    for bad in ["serviceAccounts: ['shop/*']", "serviceAccounts: [cart]", "serviceAccounts: [a/b], namespaces: [a]"] {
        let errors = compile_with_errors(&format!("rules: [{{from: [{{source: {{{bad}}}}}]}}]")).errors;
        assert!(errors[0].0.ends_with("serviceAccounts"), "{bad}: {errors:?}");
    }
}

#[test]
fn pseudo_headers_are_request_facts() {
    let e = engine(&[(
        "deny",
        "action: DENY
rules:
- when:
  - {key: \"request.headers[:method]\", values: [DELETE]}
- when:
  - {key: \"request.headers[:path]\", values: [\"/admin?*\"]}
- when:
  - {key: \"request.headers[:authority]\", values: [evil.test]}
  - {key: \"request.headers[:scheme]\", values: [https]}",
    )]);
    assert!(Req::new("GET", "/").decide(&e));
    assert!(!Req::new("DELETE", "/").decide(&e), ":method");
    // `:path` carries the query; the test request's host is shop.test.
    assert!(!Req::new("GET", "/admin?x=1").decide(&e), ":path with its query");
    assert!(Req::new("GET", "/admin").decide(&e), ":path without a query does not match /admin?*");
}

#[test]
fn destination_ip_is_the_address_the_connection_was_made_to() {
    // The test request is made to 10.0.0.1.
    let here = engine(&[("a", "rules: [{when: [{key: destination.ip, values: [10.0.0.0/24]}]}]")]);
    let there = engine(&[("a", "rules: [{when: [{key: destination.ip, values: [192.168.0.0/16]}]}]")]);
    assert!(Req::new("GET", "/").decide(&here));
    assert!(!Req::new("GET", "/").decide(&there));
}
