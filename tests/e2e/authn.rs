//! RequestAuthentication end to end: Istio's JWT samples, header outputs, hostile
//! tokens, JWKS rotation.

use http::{Request, StatusCode};
use serde_json::json;
use wicket_tests::{
    corpus,
    jwt::{forge, jwks, now, JwksServer, Signer},
    yaml::{docs, service_entry},
    TestGateway, Upstream,
};

/// The corpus names JWKS URLs on the internet; serve the same keys locally instead.
fn localize(yaml: &str, url: &str) -> String {
    let mut out = String::new();
    for line in yaml.lines() {
        match line.split_once("jwksUri:") {
            Some((indent, _)) => out.push_str(&format!("{indent}jwksUri: \"{url}\"")),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The ingress Gateway of Istio's JWT tasks (`httpbin-gateway` in `foo`, port 80).
const HTTPBIN_GATEWAY: &str = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway, namespace: foo}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
";

/// Every host on that Gateway to httpbin in `foo`, port 8000.
const HTTPBIN_ROUTE: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: foo}
spec:
  hosts: ['*']
  gateways: [httpbin-gateway]
  http:
  - route: [{destination: {host: httpbin.foo.svc.cluster.local, port: {number: 8000}}}]
";

fn bearer(path: &str, token: &str) -> Request<http_body_util::Full<bytes::Bytes>> {
    Request::get(path)
        .header("host", "httpbin.example.com")
        .header("authorization", format!("Bearer {token}"))
        .body(Default::default())
        .unwrap()
}

async fn httpbin() -> (Upstream, String) {
    let up = Upstream::start("httpbin").await;
    let reg = service_entry("httpbin.foo.svc.cluster.local", 8000, "HTTP", &[(&up, "v1")])
        .replace("namespace: default", "namespace: foo");
    (up, reg)
}

#[tokio::test]
async fn istio_sample_tokens_at_the_ingress() {
    wicket_tests::require_corpus!();
    let server = JwksServer::start(corpus("jwt-samples/jwks.json")).await;
    let (up, reg) = httpbin().await;
    let yaml = docs(&[
        &corpus("docs-authn/ingress-jwt-gateway-vs.yaml"),
        &reg,
        &localize(&corpus("docs-authn/ingress-jwt-requestauthentication.yaml"), &server.url),
    ]);
    let gw = TestGateway::start(&yaml).await;
    let demo = corpus("jwt-samples/demo.jwt").trim().to_string();
    assert_eq!(gw.get("httpbin.example.com", "/headers").await.status, StatusCode::OK, "no token passes");
    let bad = gw.send(bearer("/headers", "deadbeef")).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.header("www-authenticate").unwrap().starts_with("Bearer realm=\"http://httpbin.example.com/headers\""));
    assert_eq!(bad.body, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections");
    // The JWKS is fetched in the background: poll until the key is there.
    let mut status = StatusCode::UNAUTHORIZED;
    for _ in 0..100 {
        status = gw.send(bearer("/headers", &demo)).await.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::OK);
    assert!(up.last().headers.get("authorization").is_none(), "the token is removed before forwarding");
}

#[tokio::test]
async fn require_principal_and_claims_for_routing_and_headers() {
    wicket_tests::require_corpus!();
    let server = JwksServer::start(corpus("jwt-samples/jwks.json")).await;
    let (up, reg) = httpbin().await;
    let demo = corpus("jwt-samples/demo.jwt").trim().to_string();
    let groups = corpus("jwt-samples/groups-scope.jwt").trim().to_string();
    let policies = localize(&corpus("docs-authz/authz-jwt-require-principal.yaml"), &server.url);
    let claim_header = localize(&corpus("docs-authn/jwt-claim-to-header.yaml"), &server.url);
    let yaml = docs(&[&corpus("docs-authn/ingress-jwt-gateway-vs.yaml"), &reg, &policies, &claim_header]);
    // The workload policies select app=httpbin in foo: run the gateway as that workload.
    let gw = TestGateway::start_with(&yaml, |b| {
        b.namespace = "foo".into();
        b.labels.insert("app".into(), "httpbin".into());
    })
    .await;
    let wait_for_keys = async {
        for _ in 0..100 {
            if gw.send(bearer("/headers", &demo)).await.status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the JWKS never arrived");
    };
    wait_for_keys.await;
    assert_eq!(up.last().headers["x-jwt-claim-foo"], "bar", "outputClaimToHeaders");
    assert_eq!(gw.get("httpbin.example.com", "/headers").await.status, StatusCode::FORBIDDEN, "no token: no principal");
    assert_eq!(gw.send(bearer("/headers", "deadbeef")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.send(bearer("/headers", &groups)).await.status, StatusCode::OK);
    let denied = gw.get("httpbin.example.com", "/headers").await;
    assert_eq!(denied.body, "RBAC: access denied");
    assert!(gw.find_log(|l| l["response_code"] == 403).await["response_details"]
        .as_str()
        .unwrap()
        .contains("foo/require-jwt"));
}

#[tokio::test]
async fn claim_based_routing_at_the_gateway() {
    wicket_tests::require_corpus!();
    let server = JwksServer::start(corpus("jwt-samples/jwks.json")).await;
    let (_up, reg) = httpbin().await;
    let routes = localize(&corpus("docs-authn/jwt-claim-route.yaml"), &server.url)
        .replace("host: httpbin\n", "host: httpbin.foo.svc.cluster.local\n");
    let gw = TestGateway::start(&docs(&[HTTPBIN_GATEWAY, &reg, &routes])).await;
    let demo = corpus("jwt-samples/demo.jwt").trim().to_string();
    let groups = corpus("jwt-samples/groups-scope.jwt").trim().to_string();
    let mut ok = false;
    for _ in 0..100 {
        if gw.send(bearer("/headers", &groups)).await.status == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "groups-scope.jwt (groups contains group1) is routed");
    assert_eq!(gw.send(bearer("/headers", &demo)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(gw.get("httpbin.example.com", "/headers").await.status, StatusCode::NOT_FOUND);
    assert_eq!(gw.send(bearer("/headers", "deadbeef")).await.status, StatusCode::UNAUTHORIZED);
}

fn inline_rules(issuer: &str, jwks_json: &str, extra: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {issuer}
    audiences: [shop]
    jwks: '{jwks_json}'
{extra}"
    )
}

#[tokio::test]
async fn hostile_tokens_all_get_401_and_nothing_is_forwarded() {
    let (up, reg) = httpbin().await;
    let signer = Signer::es256("k1");
    let other = Signer::es256("k1");
    let yaml = docs(&[HTTPBIN_GATEWAY, HTTPBIN_ROUTE, &reg, &inline_rules("https://idp.test", &jwks(&[&signer]), "")]);
    let gw = TestGateway::start(&yaml).await;
    let t = now();
    let claims = |extra: serde_json::Value| {
        let mut c = json!({"iss": "https://idp.test", "sub": "alice", "aud": "shop", "exp": t + 600});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    };
    let good = signer.sign(&claims(json!({})));
    let parts: Vec<&str> = good.split('.').collect();
    let hostile = [
        ("alg none", forge(r#"{"alg":"none","kid":"k1"}"#, &claims(json!({})).to_string(), "")),
        ("HS256 with the public key", forge(r#"{"alg":"HS256","kid":"k1"}"#, &claims(json!({})).to_string(), parts[2])),
        ("expired", signer.sign(&claims(json!({"exp": t - 3600})))),
        ("not yet valid", signer.sign(&claims(json!({"nbf": t + 3600})))),
        ("wrong issuer", signer.sign(&claims(json!({"iss": "https://evil.test"})))),
        ("wrong audience", signer.sign(&claims(json!({"aud": "other"})))),
        ("bad signature", other.sign(&claims(json!({})))),
        ("unknown kid", forge(r#"{"alg":"ES256","kid":"nope"}"#, &claims(json!({})).to_string(), parts[2])),
        ("truncated", format!("{}.{}", parts[0], parts[1])),
        ("non-base64", format!("{}.!!!.{}", parts[0], parts[2])),
        (
            "duplicate keys",
            forge(
                r#"{"alg":"ES256","kid":"k1"}"#,
                r#"{"iss":"https://idp.test","sub":"a","sub":"b","aud":"shop"}"#,
                parts[2],
            ),
        ),
        ("JWE (five segments)", format!("{good}.x.y")),
    ];
    for (what, token) in &hostile {
        let r = gw.send(bearer("/", token)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.body);
    }
    // A 1 MB token never reaches JWT code: the header limit answers first.
    let huge = "a".repeat(1 << 20);
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {huge}\r\n\r\n").as_bytes()).await;
    let mut head = [0u8; 12];
    let _ = s.read_exact(&mut head).await;
    assert_eq!(&head, b"HTTP/1.1 431");
    assert_eq!(up.hits(), 0, "nothing was forwarded");
    assert_eq!(gw.send(bearer("/", &good)).await.status, StatusCode::OK);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_rotated_jwks_is_fetched_when_an_unknown_kid_arrives() {
    let (_up, reg) = httpbin().await;
    let old = Signer::es256("old");
    let new = Signer::es256("new");
    let server = JwksServer::start(jwks(&[&old])).await;
    let rules = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  jwtRules:
  - issuer: https://idp.test
    jwksUri: {}
",
        server.url
    );
    let gw = TestGateway::start_with(&docs(&[HTTPBIN_GATEWAY, HTTPBIN_ROUTE, &reg, &rules]), |b| {
        b.namespace = "istio-system".into()
    })
    .await;
    let claims = json!({"iss": "https://idp.test", "sub": "alice", "exp": now() + 600});
    let mut ok = false;
    for _ in 0..100 {
        if gw.send(bearer("/", &old.sign(&claims))).await.status == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "the first key set is fetched");
    server.set(jwks(&[&new]));
    let fetches = server.hits();
    // The first request with the new kid fails and triggers a refetch; then it passes.
    let mut status = StatusCode::UNAUTHORIZED;
    for _ in 0..100 {
        status = gw.send(bearer("/", &new.sign(&claims))).await.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::OK);
    assert!(server.hits() > fetches);
}

#[tokio::test]
async fn token_locations_payload_header_and_forwarding() {
    let (up, reg) = httpbin().await;
    let signer = Signer::es256("k1");
    let extra = "    fromHeaders: [{name: x-jwt, prefix: 'Token '}]\n    fromParams: [jwt]\n    fromCookies: [session]\n    forwardOriginalToken: true\n    outputPayloadToHeader: x-jwt-payload\n";
    let rules = inline_rules("https://idp.test", &jwks(&[&signer]), extra);
    let gw = TestGateway::start(&docs(&[HTTPBIN_GATEWAY, HTTPBIN_ROUTE, &reg, &rules])).await;
    let token = signer.sign(&json!({"iss": "https://idp.test", "sub": "bob", "aud": "shop", "exp": now() + 600}));
    let send = |r: Request<http_body_util::Full<bytes::Bytes>>| gw.send(r);
    let base = || Request::get("/").header("host", "h.test");
    // Custom header with its prefix; the token is forwarded (forwardOriginalToken).
    assert_eq!(
        send(base().header("x-jwt", format!("Token {token}")).body(Default::default()).unwrap()).await.status,
        StatusCode::OK
    );
    let seen = up.last();
    assert_eq!(seen.headers["x-jwt"], format!("Token {token}"));
    let payload = seen.headers["x-jwt-payload"].to_str().unwrap().to_string();
    assert_eq!(payload, token.split('.').nth(1).unwrap(), "base64url of the payload");
    // Query parameter and cookie locations.
    let by_param = Request::get(format!("/?jwt={token}")).header("host", "h.test").body(Default::default()).unwrap();
    assert_eq!(send(by_param).await.status, StatusCode::OK);
    assert_eq!(
        send(base().header("cookie", format!("a=1; session={token}")).body(Default::default()).unwrap()).await.status,
        StatusCode::OK
    );
    // Configured locations replace the defaults: a Bearer header is not read at all.
    assert_eq!(gw.send(bearer("/", "garbage")).await.status, StatusCode::OK);
    // A client cannot inject the payload header.
    let forged = base()
        .header("x-jwt-payload", "eyJzdWIiOiJhZG1pbiJ9")
        .header("x-jwt", format!("Token {token}"))
        .body(Default::default())
        .unwrap();
    send(forged).await;
    assert_eq!(up.last().headers["x-jwt-payload"].to_str().unwrap(), payload);
    let without_token = base().header("x-jwt-payload", "eyJzdWIiOiJhZG1pbiJ9").body(Default::default()).unwrap();
    assert_eq!(send(without_token).await.status, StatusCode::OK);
    assert!(up.last().headers.get("x-jwt-payload").is_none(), "not even without a token");
}

/// The semantics of Istio's JWT samples on the project's own keys: a principal
/// required by policy, a claim copied to a header, and a route on a claim.
#[tokio::test]
async fn principals_claim_headers_and_claim_routes_on_own_keys() {
    let (up, reg) = httpbin().await;
    let signer = Signer::es256("k1");
    let ra = format!(
        "
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: foo}}
spec:
  jwtRules:
  - issuer: https://idp.test
    jwks: '{}'
    outputClaimToHeaders: [{{header: x-jwt-claim-foo, claim: foo}}]
",
        jwks(&[&signer])
    );
    let require = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]
";
    let claim_route = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: foo}
spec:
  hosts: ['*']
  gateways: [httpbin-gateway]
  http:
  - match: [{uri: {prefix: /headers}, headers: {'@request.auth.claims.groups': {exact: group1}}}]
    route: [{destination: {host: httpbin.foo.svc.cluster.local, port: {number: 8000}}}]
";
    let gw = TestGateway::start_with(&docs(&[HTTPBIN_GATEWAY, claim_route, &reg, &ra, require]), |b| {
        b.namespace = "foo".into()
    })
    .await;
    let t = now();
    let plain = signer.sign(&json!({"iss": "https://idp.test", "sub": "a", "foo": "bar", "exp": t + 600}));
    let grouped = signer.sign(&json!({"iss": "https://idp.test", "sub": "b", "groups": ["group1"], "exp": t + 600}));
    let no_sub = signer.sign(&json!({"iss": "https://idp.test", "groups": ["group1"], "exp": t + 600}));
    assert_eq!(gw.send(bearer("/headers", &grouped)).await.status, StatusCode::OK, "routed on the claim");
    assert_eq!(gw.send(bearer("/headers", &plain)).await.status, StatusCode::NOT_FOUND, "no such claim: no route");
    let denied = gw.get("httpbin.example.com", "/headers").await;
    assert_eq!((denied.status, denied.body.as_str()), (StatusCode::FORBIDDEN, "RBAC: access denied"));
    assert_eq!(gw.send(bearer("/headers", &no_sub)).await.status, StatusCode::FORBIDDEN, "`*` needs iss and sub");
    assert_eq!(gw.send(bearer("/headers", "deadbeef")).await.status, StatusCode::UNAUTHORIZED);
    let log = gw.find_log(|l| l["response_code"] == 403).await;
    assert!(log["response_details"].as_str().unwrap().contains("foo/require-jwt"), "{log}");

    let with_claim = docs(&[HTTPBIN_GATEWAY, HTTPBIN_ROUTE, &reg, &ra]);
    let gw = TestGateway::start_with(&with_claim, |b| b.namespace = "foo".into()).await;
    assert_eq!(gw.send(bearer("/headers", &plain)).await.status, StatusCode::OK);
    assert_eq!(up.last().headers["x-jwt-claim-foo"], "bar", "outputClaimToHeaders");
    assert!(up.last().headers.get("authorization").is_none(), "the token is removed before forwarding");
}
