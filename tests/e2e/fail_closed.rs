//! Security resources that cannot be applied in full fail closed: a DENY or CUSTOM
//! policy with an error denies what it could have matched, a broken ALLOW allows less,
//! a broken RequestAuthentication refuses tokens, and `/ready` and a metric say so.

use http::{Request, StatusCode};
use wicket_tests::{
    jwt::{jwks, now, Signer},
    yaml::{docs, service_entry, tcp_gateway, GATEWAY},
    TestGateway, Upstream,
};

const VS: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: ['*']
  gateways: [gw]
  http:
  - route: [{destination: {host: web}}]
";

/// A gateway in namespace `foo` labelled `app: web`, routing everything upstream.
async fn gateway(policies: &[&str]) -> (TestGateway, Upstream) {
    let up = Upstream::start("web").await;
    let reg = service_entry("web.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let mut all = vec![GATEWAY, &reg, VS];
    all.extend_from_slice(policies);
    let gw = TestGateway::start_with(&docs(&all), |b| {
        b.namespace = "foo".into();
        b.labels.insert("app".into(), "web".into());
    })
    .await;
    (gw, up)
}

fn req(method: &str, path: &str) -> Request<http_body_util::Full<bytes::Bytes>> {
    Request::builder().method(method).uri(path).header("host", "web.test").body(Default::default()).unwrap()
}

/// DENY GET to /admin, with a condition Wicket does not know.
const DENY_UNSUPPORTED: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {methods: [GET], paths: [/admin]}}]
    when: [{key: experimental.unknown.key, values: [x]}]
";

#[tokio::test]
async fn a_deny_rule_that_does_not_compile_denies_more_not_less() {
    let (gw, up) = gateway(&[DENY_UNSUPPORTED]).await;
    assert_eq!(gw.send(req("GET", "/admin")).await.status, StatusCode::FORBIDDEN);
    // Without its unknown condition the rule matches every GET to /admin, never fewer.
    assert_eq!(gw.send(req("GET", "/public")).await.status, StatusCode::OK);
    assert_eq!(gw.send(req("POST", "/admin")).await.status, StatusCode::OK);
    assert_eq!(up.hits(), 2);

    let ready = gw.ready().await;
    assert!(ready.starts_with("LIVE\n"), "{ready}");
    assert!(
        ready.contains("fail_closed AuthorizationPolicy/foo/deny-admin (") && ready.contains("config.yaml:"),
        "{ready}"
    );
    let labels = ["name=\"deny-admin\"", "state=\"fail_closed\"", "kind=\"AuthorizationPolicy\""];
    assert_eq!(gw.metric_sum("wicket_config_resources_not_applied", &labels).await, 1);

    let problems = validate(&docs(&[GATEWAY, DENY_UNSUPPORTED]));
    assert!(
        problems.iter().any(|p| p.contains("AuthorizationPolicy/foo/deny-admin: spec.rules[0].when[0]: error:")
            && p.contains("fails closed")),
        "{problems:#?}"
    );
}

#[tokio::test]
async fn a_deny_policy_that_does_not_load_denies_every_request_it_selects() {
    // `operation.method` (singular) is not a field: the document does not load at all.
    let unloadable = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {method: DELETE}}]}]
";
    let (gw, up) = gateway(&[unloadable]).await;
    for (method, path) in [("GET", "/"), ("POST", "/x"), ("DELETE", "/y")] {
        assert_eq!(gw.send(req(method, path)).await.status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    assert_eq!(up.hits(), 0);
    assert!(gw.ready().await.contains("fail_closed AuthorizationPolicy/foo/deny-delete"));
    let log = gw.find_log(|l| l["response_code"] == 403).await;
    assert!(log["response_details"].as_str().unwrap().contains("foo/deny-delete"), "{log}");

    // The same broken policy selecting another workload leaves this one alone.
    let elsewhere = unloadable.replace("app: web", "app: other");
    let (gw, _up) = gateway(&[&elsewhere]).await;
    assert_eq!(gw.send(req("GET", "/")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn broken_allow_and_custom_policies_fail_closed() {
    // ALLOW: the rule that fails is left out, the other still allows.
    let allow = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: foo}
spec:
  rules:
  - to: [{operation: {paths: [/ok]}}]
  - to: [{operation: {ports: [http]}}]
";
    let (gw, _up) = gateway(&[allow]).await;
    assert_eq!(gw.send(req("GET", "/ok")).await.status, StatusCode::OK);
    assert_eq!(gw.send(req("GET", "/other")).await.status, StatusCode::FORBIDDEN);

    // CUSTOM: a rule with an error denies what it could match, without asking anyone.
    let custom = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: nowhere}
  rules: [{to: [{operation: {paths: ['/api/{**}/{*}']}}]}]
";
    let (gw, up) = gateway(&[custom]).await;
    assert_eq!(gw.send(req("GET", "/anything")).await.status, StatusCode::FORBIDDEN);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_deny_policy_that_does_not_compile_closes_tcp_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = wicket_tests::upstream::tcp_echo().await;
    let policy = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bad, namespace: default}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]
";
    let gw = TestGateway::start(&docs(&[&tcp_gateway(port), policy])).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr_of(9000)).await.unwrap();
    let _ = s.write_all(b"ping").await;
    let mut buf = [0u8; 4];
    assert!(s.read_exact(&mut buf).await.is_err(), "the connection is closed, not echoed");
}

#[tokio::test]
async fn a_request_authentication_that_fails_refuses_tokens_and_strips_its_headers() {
    let signer = Signer::es256("k1");
    let token = signer.sign(&serde_json::json!({"iss": "issuer.test", "sub": "alice", "exp": now() + 600}));
    // Both rules name `issuer.test`; the second one has a bad JWKS and fails closed.
    let ra = format!(
        "
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: foo}}
spec:
  jwtRules:
  - issuer: other.test
    jwks: '{jwks}'
  - issuer: issuer.test
    jwks: 'not json'
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
",
        jwks = jwks(&[&signer])
    );
    let (gw, up) = gateway(&[&ra]).await;
    let with_token = |t: &str| {
        let mut r = req("GET", "/");
        r.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        r.headers_mut().insert("x-user", "forged".parse().unwrap());
        r
    };
    assert_eq!(gw.send(with_token(&token)).await.status, StatusCode::UNAUTHORIZED);
    let mut plain = req("GET", "/");
    plain.headers_mut().insert("x-user", "forged".parse().unwrap());
    assert_eq!(gw.send(plain).await.status, StatusCode::OK, "no token: allowed, as Istio does");
    assert!(!up.last().headers.contains_key("x-user"), "a client never sets the rule's output header");
    assert!(gw.ready().await.contains("fail_closed RequestAuthentication/foo/jwt"));

    // A RequestAuthentication that does not load refuses the tokens of the issuers it names.
    let unloadable = "
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules: [{issuer: issuer.test, jwksUri: 'https://keys.test/jwks', forwardToken: true}]
";
    let (gw, _up) = gateway(&[unloadable]).await;
    assert_eq!(gw.send(with_token(&token)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.send(req("GET", "/")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_broken_edit_of_a_deny_policy_fails_closed_instead_of_serving_the_last_good_version() {
    let good = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
";
    let (mut gw, _up) = gateway(&[]).await;
    gw.write("policy.yaml", good).await;
    assert_eq!(gw.send(req("GET", "/admin")).await.status, StatusCode::FORBIDDEN);
    assert_eq!(gw.send(req("GET", "/public")).await.status, StatusCode::OK);
    gw.write("policy.yaml", &good.replace("paths: [/admin]", "paths: [/admin, /private], hostz: [x]")).await;
    assert_eq!(gw.send(req("GET", "/public")).await.status, StatusCode::FORBIDDEN, "the broken edit denies all");
    assert!(gw.ready().await.contains("fail_closed AuthorizationPolicy/foo/deny-admin"));
    // Fixed: the policy applies as written again and /ready is clean.
    gw.write("policy.yaml", &good.replace("paths: [/admin]", "paths: [/admin, /private]")).await;
    assert_eq!(gw.send(req("GET", "/private")).await.status, StatusCode::FORBIDDEN);
    assert_eq!(gw.send(req("GET", "/public")).await.status, StatusCode::OK);
    assert_eq!(gw.ready().await, "LIVE\n");
}

fn validate(yaml: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), yaml).unwrap();
    let bootstrap = wicket::config::Bootstrap {
        config_dir: Some(dir.path().into()),
        namespace: "foo".into(),
        ..Default::default()
    };
    wicket::validate(&bootstrap).unwrap().iter().map(ToString::to_string).collect()
}

#[test]
fn validate_checks_policies_and_gateways_of_every_workload() {
    let other_policy = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules: [{to: [{operation: {ports: [http]}}]}]
";
    let other_gateway = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: internal, namespace: shop}
spec:
  selector: {istio: internal-gateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ['*']
    tls: {mode: SIMPLE, serverCertificate: /missing/cert.pem, privateKey: /missing/key.pem}
";
    let problems = validate(&docs(&[GATEWAY, other_policy, other_gateway]));
    let has = |what: &str| problems.iter().any(|p| p.contains(what));
    assert!(has("AuthorizationPolicy/shop/other: spec.rules[0].to[0].operation.ports: error"), "{problems:#?}");
    assert!(has("Gateway/shop/internal: spec.servers[0].tls: error"), "{problems:#?}");
    assert_eq!(problems.iter().filter(|p| p.contains("AuthorizationPolicy/shop/other")).count(), 1, "once each");
}
