//! AuthorizationPolicy end to end: Istio's samples applied as written, remote IPs
//! behind trusted proxies, and path tricks that must not slip past a DENY.

use http::{Request, StatusCode};
use wicket_tests::{
    corpus,
    yaml::{docs, service_entry, GATEWAY},
    TestGateway, Upstream,
};

const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - route: [{destination: {host: httpbin}}]
";

/// A gateway running as the `httpbin` workload of namespace `foo` (the samples'
/// selector), routing everything to a test upstream.
async fn workload(policies: &[&str]) -> (TestGateway, Upstream) {
    let up = Upstream::start("httpbin").await;
    let reg = service_entry("httpbin.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let mut all = vec![GATEWAY, &reg, VS];
    all.extend_from_slice(policies);
    let gw = TestGateway::start_with(&docs(&all), |b| {
        b.namespace = "foo".into();
        b.labels.insert("app".into(), "httpbin".into());
    })
    .await;
    (gw, up)
}

fn req(method: &str, path: &str, token: Option<&str>) -> Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = Request::builder().method(method).uri(path).header("host", "httpbin.test");
    if let Some(t) = token {
        r = r.header("x-token", t);
    }
    r.body(Default::default()).unwrap()
}

#[tokio::test]
async fn deny_get_unless_admin_and_allow_path() {
    wicket_tests::require_corpus!();
    let deny_get = corpus("docs-authz/authz-deny-method-get.yaml");
    let (gw, _up) = workload(&[&deny_get]).await;
    assert_eq!(gw.send(req("GET", "/get", None)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(gw.send(req("POST", "/post", None)).await.status, StatusCode::OK);

    let unless_admin = corpus("docs-authz/authz-deny-method-get-unless-admin-token.yaml");
    let allow_ip = corpus("docs-authz/authz-allow-path-ip.yaml");
    let (gw, _up) = workload(&[&unless_admin, &allow_ip]).await;
    assert_eq!(gw.send(req("GET", "/ip", Some("admin"))).await.status, StatusCode::OK);
    assert_eq!(gw.send(req("GET", "/ip", Some("guest"))).await.status, StatusCode::FORBIDDEN, "DENY first");
    assert_eq!(
        gw.send(req("GET", "/get", Some("admin"))).await.status,
        StatusCode::FORBIDDEN,
        "ALLOW exists, path not allowed"
    );
    assert_eq!(
        gw.send(req("GET", "/ip", None)).await.status,
        StatusCode::FORBIDDEN,
        "notValues holds without the header"
    );
}

#[tokio::test]
async fn allow_nothing_denies_everything() {
    wicket_tests::require_corpus!();
    let up = Upstream::start("httpbin").await;
    let reg = service_entry("httpbin.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, VS, &corpus("docs-authz/authz-http-allow-nothing.yaml")])).await;
    let r = gw.get("any.test", "/").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::FORBIDDEN, "RBAC: access denied"));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn ip_blocks_see_the_peer_and_remote_ip_blocks_the_trusted_client() {
    wicket_tests::require_corpus!();
    let up = Upstream::start("httpbin").await;
    let reg = service_entry("httpbin.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let as_ingress = |b: &mut wicket::config::Bootstrap| {
        b.labels.insert("app".into(), "istio-ingressgateway".into());
    };
    // ipBlocks: the TCP peer (127.0.0.1) is not 1.2.3.4 or 5.6.7.0/24.
    let gw = TestGateway::start_with(
        &docs(&[GATEWAY, &reg, VS, &corpus("docs-authz/authz-ingress-ipblocks.yaml")]),
        as_ingress,
    )
    .await;
    let mut spoofed = req("GET", "/", None);
    spoofed.headers_mut().insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
    assert_eq!(gw.send(spoofed).await.status, StatusCode::FORBIDDEN, "X-Forwarded-For does not change the peer");

    // remoteIpBlocks with one trusted proxy in front (mesh config in the istio ConfigMap).
    let mesh = "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    defaultConfig:
      gatewayTopology:
        numTrustedProxies: 1
";
    let remote = corpus("docs-authz/authz-ingress-remoteipblocks.yaml");
    let gw = TestGateway::start_with(&docs(&[GATEWAY, &reg, VS, &remote, mesh]), as_ingress).await;
    let with_xff = |xff: &str| {
        let mut r = req("GET", "/", None);
        r.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
        r
    };
    assert_eq!(gw.send(with_xff("9.9.9.9, 5.6.7.8")).await.status, StatusCode::OK, "the client the trusted proxy saw");
    assert_eq!(
        gw.send(with_xff("5.6.7.8, 9.9.9.9")).await.status,
        StatusCode::FORBIDDEN,
        "a spoofed earlier hop is not trusted"
    );
    assert_eq!(gw.send(req("GET", "/", None)).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn path_tricks_never_bypass_a_deny() {
    let deny = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ['/admin*']}}]}]
";
    let (gw, up) = workload(&[deny]).await;
    for path in [
        "/admin",
        "/admin/x",
        "/x/../admin",
        "/%61dmin",
        "/admin%2Fx",
        "/admin;x",
        "/admin/.",
        "/./admin",
        "/%2e%2e/admin",
    ] {
        assert_eq!(gw.send(req("GET", path, None)).await.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(up.hits(), 0);
    // Case-sensitive rule: /ADMIN is another path, and the upstream receives it as such.
    assert_eq!(gw.send(req("GET", "/ADMIN", None)).await.status, StatusCode::OK);
    assert_eq!(up.last().path, "/ADMIN");
    // Normalized paths go upstream: what was authorized is what is served.
    assert_eq!(gw.send(req("GET", "/public/../x/%7Euser", None)).await.status, StatusCode::OK);
    assert_eq!(up.last().path, "/x/~user");
    // An encoded NUL or a lower-case method is refused outright.
    assert_eq!(gw.send(req("GET", "/a%00b", None)).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(gw.send(req("get", "/x", None)).await.status, StatusCode::BAD_REQUEST);

    // The gateway merges slashes unless the mesh config says otherwise.
    assert_eq!(gw.send(req("GET", "//admin", None)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(gw.send(req("GET", "/x/..//admin", None)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(up.hits(), 2, "only /ADMIN and /x/~user went upstream");

    // An explicit BASE (Istio's default) keeps repeated slashes, and validate says what
    // that means for the DENY rule.
    let mesh = "
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    pathNormalization:
      normalization: BASE
";
    let (gw, up) = workload(&[deny, mesh]).await;
    assert_eq!(gw.send(req("GET", "//admin", None)).await.status, StatusCode::OK);
    assert_eq!(up.last().path, "//admin");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), docs(&[deny, mesh])).unwrap();
    let bootstrap = wicket::config::Bootstrap {
        config_dir: Some(dir.path().into()),
        namespace: "foo".into(),
        ..Default::default()
    };
    let problems: Vec<String> = wicket::validate(&bootstrap).unwrap().iter().map(ToString::to_string).collect();
    assert!(
        problems.iter().any(|p| p.contains("AuthorizationPolicy/foo/no-admin: spec.rules[0].to[0].operation.paths: warning: under pathNormalization BASE `//admin` is not `/admin`")),
        "{problems:#?}"
    );
}

#[test]
fn invalid_policies_are_validate_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: default}
spec:
  rules:
  - when: [{key: 'destination.labels[app]', values: [x]}]
";
    std::fs::write(dir.path().join("p.yaml"), bad).unwrap();
    let bootstrap = wicket::config::Bootstrap { config_dir: Some(dir.path().into()), ..Default::default() };
    let problems: Vec<String> = wicket::validate(&bootstrap).unwrap().iter().map(ToString::to_string).collect();
    assert!(
        problems
            .iter()
            .any(|p| p
                .contains("AuthorizationPolicy/default/bad: spec.rules[0].when[0]: error: unsupported condition key")),
        "{problems:#?}"
    );
}

#[tokio::test]
async fn tcp_connections_follow_istio_tcp_semantics() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = wicket_tests::upstream::tcp_echo().await;
    let base = wicket_tests::yaml::tcp_gateway(port);
    let echoes = |gw: &TestGateway| {
        let addr = gw.addr_of(9000);
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(b"ping").await;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.is_ok() && &buf == b"ping"
        }
    };
    let policy = |spec: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: default}}\nspec:\n{spec}")
    };
    // Allowed on the port: passes.
    let gw = TestGateway::start(&docs(&[&base, &policy("  rules: [{to: [{operation: {ports: ['9000']}}]}]\n")])).await;
    assert!(echoes(&gw).await);
    // An ALLOW rule using an HTTP-only field vanishes on TCP: nothing is allowed.
    let gw = TestGateway::start(&docs(&[&base, &policy("  rules: [{to: [{operation: {methods: [GET]}}]}]\n")])).await;
    assert!(!echoes(&gw).await);
    // A DENY rule loses its HTTP-only condition: every connection is denied.
    let gw = TestGateway::start(&docs(&[
        &base,
        &policy("  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n"),
    ]))
    .await;
    assert!(!echoes(&gw).await);
    let log = gw.find_log(|l| l["protocol"] == "TCP").await;
    assert!(log["response_details"].as_str().unwrap().contains("default/p"));
}

/// Istio's ext-authz sample, as a test server: allows when `x-ext-authz: allow`.
async fn ext_authz_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let checked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = checked.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    seen.lock().unwrap().push(format!("{} {}", req.method(), req.uri()));
                    let allow = req.headers().get("x-ext-authz").is_some_and(|v| v == "allow");
                    let (status, result, body) = if allow {
                        (200, "allowed", "")
                    } else {
                        (403, "denied", "denied by ext_authz for not found header `x-ext-authz: allow` in the request")
                    };
                    let resp = hyper::Response::builder()
                        .status(status)
                        .header("x-ext-authz-check-result", result)
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, checked)
}

fn ext_authz_setup(authz_port: u16) -> Vec<String> {
    let mesh = "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        service: ext-authz.foo.svc.cluster.local
        port: 8000
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [x-ext-authz-check-result]
        headersToDownstreamOnDeny: [x-ext-authz-check-result]
"
    .to_string();
    let se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-authz, namespace: foo}}
spec:
  hosts: [ext-authz.foo.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {authz_port}}}}}]
"
    );
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: CUSTOM
  provider: {name: sample-ext-authz-http}
  rules: [{to: [{operation: {paths: [/headers]}}]}]
"
    .to_string();
    vec![mesh, se, policy]
}

#[tokio::test]
async fn custom_policies_ask_the_external_authorizer() {
    let (authz_port, checked) = ext_authz_server().await;
    let setup = ext_authz_setup(authz_port);
    let (gw, up) = workload(&setup.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut allowed = req("GET", "/headers?x=1", None);
    allowed.headers_mut().insert("x-ext-authz", "allow".parse().unwrap());
    assert_eq!(gw.send(allowed).await.status, StatusCode::OK);
    assert_eq!(up.last().headers["x-ext-authz-check-result"], "allowed");
    assert_eq!(checked.lock().unwrap().last().unwrap(), "GET /headers?x=1");

    let denied = gw.send(req("GET", "/headers", None)).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(denied.body.starts_with("denied by ext_authz"));
    assert_eq!(denied.header("x-ext-authz-check-result"), Some("denied"));
    assert_eq!(gw.find_log(|l| l["response_code"] == 403).await["response_flags"], "UAEX");

    // Paths the policy does not match are not checked.
    let before = checked.lock().unwrap().len();
    assert_eq!(gw.send(req("GET", "/ip", None)).await.status, StatusCode::OK);
    assert_eq!(checked.lock().unwrap().len(), before);
}

#[tokio::test]
async fn an_unreachable_authorizer_fails_closed() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let setup = ext_authz_setup(closed);
    let (gw, up) = workload(&setup.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut r = req("GET", "/headers", None);
    r.headers_mut().insert("x-ext-authz", "allow".parse().unwrap());
    assert_eq!(gw.send(r).await.status, StatusCode::FORBIDDEN);
    assert_eq!(up.hits(), 0);
}

/// Istio's ingress IP samples on the project's own YAML: `ipBlocks` is the TCP peer,
/// `remoteIpBlocks` the client the trusted proxies saw.
#[tokio::test]
async fn peer_and_remote_ip_blocks_on_own_fixtures() {
    let up = Upstream::start("httpbin").await;
    let reg = service_entry("httpbin.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let policy = |field: &str| {
        format!(
            "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ingress-policy, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{app: istio-ingressgateway}}}}
  rules: [{{from: [{{source: {{{field}: ['1.2.3.4', '5.6.7.0/24']}}}}]}}]
"
        )
    };
    let as_ingress = |b: &mut wicket::config::Bootstrap| {
        b.labels.insert("app".into(), "istio-ingressgateway".into());
    };
    let gw = TestGateway::start_with(&docs(&[GATEWAY, &reg, VS, &policy("ipBlocks")]), as_ingress).await;
    let with_xff = |xff: &str| {
        let mut r = req("GET", "/", None);
        r.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
        r
    };
    assert_eq!(gw.send(with_xff("1.2.3.4")).await.status, StatusCode::FORBIDDEN, "XFF does not change the peer");
    let mesh = "
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    defaultConfig:
      gatewayTopology:
        numTrustedProxies: 1
";
    let gw = TestGateway::start_with(&docs(&[GATEWAY, &reg, VS, &policy("remoteIpBlocks"), mesh]), as_ingress).await;
    assert_eq!(gw.send(with_xff("9.9.9.9, 5.6.7.8")).await.status, StatusCode::OK);
    assert_eq!(gw.send(with_xff("5.6.7.8, 9.9.9.9")).await.status, StatusCode::FORBIDDEN, "spoofed earlier hop");
    assert_eq!(gw.send(req("GET", "/", None)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(up.hits(), 1);
}

/// Conditions on the request's own facts: `destination.ip` is the address the client
/// connected to (127.0.0.1 here), and pseudo-headers name the method, path (with its
/// query) and authority.
#[tokio::test]
async fn destination_ip_and_pseudo_headers_in_conditions() {
    let policy = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: facts, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: [/local]}}]
    when: [{key: destination.ip, values: [127.0.0.0/8]}]
  - to: [{operation: {paths: [/remote]}}]
    when: [{key: destination.ip, values: [10.0.0.0/8]}]
  - when: [{key: \"request.headers[:method]\", values: [PATCH]}]
  - when: [{key: \"request.headers[:path]\", values: [\"*?debug=1\"]}]
";
    let (gw, _up) = workload(&[policy]).await;
    assert_eq!(gw.send(req("GET", "/local", None)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(gw.send(req("GET", "/remote", None)).await.status, StatusCode::OK);
    assert_eq!(gw.send(req("PATCH", "/get", None)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(gw.send(req("GET", "/get?debug=1", None)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(gw.send(req("GET", "/get", None)).await.status, StatusCode::OK);
    assert!(!gw.ready().await.contains("fail_closed"), "every condition compiled");
}
