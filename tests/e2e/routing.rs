//! Route matching and actions with Istio semantics, through real sockets.

use http::{Request, StatusCode};
use wicket_tests::{
    yaml::{docs, service_entry, subsets, GATEWAY},
    TestGateway, Upstream,
};

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: default}}
spec:
  hosts: [\"shop.test\"]
  gateways: [gw]
  http:
{http}"
    )
}

async fn two_versions() -> (Upstream, Upstream, String) {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let reg = docs(&[
        &service_entry("shop.default.svc.cluster.local", 80, "HTTP", &[(&v1, "v1"), (&v2, "v2")]),
        &subsets("shop", &["v1", "v2"]),
    ]);
    (v1, v2, reg)
}

#[tokio::test]
async fn first_matching_rule_wins_even_if_a_later_one_is_longer() {
    let (_v1, _v2, reg) = two_versions().await;
    let rules = "  - match: [{uri: {prefix: /}}]\n    route: [{destination: {host: shop, subset: v1}}]\n  - match: [{uri: {prefix: /cart}}]\n    route: [{destination: {host: shop, subset: v2}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    assert_eq!(gw.get("shop.test", "/cart").await.body, "v1");
}

#[tokio::test]
async fn uri_exact_prefix_regex_and_no_match_404() {
    let (_v1, _v2, reg) = two_versions().await;
    let rules = "  - match: [{uri: {exact: /exact}}]\n    route: [{destination: {host: shop, subset: v1}}]\n  - match: [{uri: {regex: '/items/[0-9]+'}}]\n    route: [{destination: {host: shop, subset: v2}}]\n  - match: [{uri: {prefix: /api}, ignoreUriCase: true}]\n    route: [{destination: {host: shop, subset: v1}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    assert_eq!(gw.get("shop.test", "/exact").await.body, "v1");
    assert_eq!(gw.get("shop.test", "/exact/more").await.status, StatusCode::NOT_FOUND);
    assert_eq!(gw.get("shop.test", "/items/42").await.body, "v2");
    // Regex is a full match.
    assert_eq!(gw.get("shop.test", "/items/42/x").await.status, StatusCode::NOT_FOUND);
    // Prefix is a raw string prefix, case-insensitive here.
    assert_eq!(gw.get("shop.test", "/APIX").await.body, "v1");
    let not_found = gw.get("shop.test", "/nothing").await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    // Unknown host: no virtual host.
    assert_eq!(gw.get("other.test", "/exact").await.status, StatusCode::NOT_FOUND);
    gw.find_log(|l| l["response_flags"] == "NR").await;
}

#[tokio::test]
async fn headers_without_headers_query_params_method_and_port_in_host() {
    let (_v1, _v2, reg) = two_versions().await;
    let rules = "  - match: [{headers: {end-user: {exact: jason}}, method: {exact: GET}}]\n    route: [{destination: {host: shop, subset: v2}}]\n  - match: [{queryParams: {beta: {exact: \"\"}}}]\n    route: [{destination: {host: shop, subset: v2}}]\n  - match: [{withoutHeaders: {x-block: {}}}]\n    route: [{destination: {host: shop, subset: v1}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    let jason =
        Request::get("/").header("host", "shop.test:80").header("end-user", "jason").body(Default::default()).unwrap();
    assert_eq!(gw.send(jason).await.body, "v2");
    let post =
        Request::post("/").header("host", "shop.test").header("end-user", "jason").body(Default::default()).unwrap();
    assert_eq!(gw.send(post).await.body, "v1");
    assert_eq!(gw.get("shop.test", "/?beta").await.body, "v2");
    let blocked =
        Request::get("/").header("host", "shop.test").header("x-block", "1").body(Default::default()).unwrap();
    assert_eq!(gw.send(blocked).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn redirect_direct_response_and_rewrite() {
    let (v1, _v2, reg) = two_versions().await;
    let rules = "  - match: [{uri: {prefix: /old/}}]\n    redirect: {uri: /new, redirectCode: 302}\n  - match: [{uri: {exact: /teapot}}]\n    directResponse: {status: 418, body: {string: short and stout}}\n    headers: {response: {set: {content-type: text/plain}}}\n  - match: [{uri: {prefix: /app/}}]\n    rewrite: {uri: /v2/, authority: backend.test}\n    route: [{destination: {host: shop, subset: v1}}]\n  - match: [{uri: {prefix: /legacy/}}]\n    rewrite: {uriRegexRewrite: {match: '^/legacy/([^/]+)/(.*)$', rewrite: '/t/\\1/\\2'}}\n    route: [{destination: {host: shop, subset: v1}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    let r = gw.get("shop.test", "/old/x?q=1").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("location"), Some("http://shop.test/new?q=1"));
    let t = gw.get("shop.test", "/teapot").await;
    assert_eq!(
        (t.status.as_u16(), t.body.as_str(), t.header("content-type")),
        (418, "short and stout", Some("text/plain"))
    );
    gw.get("shop.test", "/app/list?x=1").await;
    let seen = v1.last();
    assert_eq!(seen.path, "/v2/list?x=1");
    assert_eq!(seen.headers["host"], "backend.test");
    gw.get("shop.test", "/legacy/acme/orders").await;
    assert_eq!(v1.last().path, "/t/acme/orders");
}

#[tokio::test]
async fn header_operations_and_proxy_headers() {
    let (v1, _v2, reg) = two_versions().await;
    let rules = "  - headers:\n      request: {set: {x-tenant: gold}, add: {x-tag: edge}, remove: [x-debug]}\n      response: {set: {x-frame: deny}, remove: [x-upstream]}\n    route:\n    - destination: {host: shop, subset: v1}\n      headers: {request: {set: {x-dest: one}}}\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    let req = Request::get("/p")
        .header("host", "shop.test")
        .header("x-debug", "1")
        .header("x-forwarded-for", "10.9.9.9")
        .header("connection", "close, x-secret")
        .header("x-secret", "s")
        .body(Default::default())
        .unwrap();
    let resp = gw.send(req).await;
    assert_eq!(resp.header("x-frame"), Some("deny"));
    assert_eq!(resp.header("x-upstream"), None);
    let h = v1.last().headers;
    assert_eq!(h["x-tenant"], "gold");
    assert_eq!(h["x-tag"], "edge");
    assert_eq!(h["x-dest"], "one");
    assert!(h.get("x-debug").is_none());
    assert!(h.get("x-secret").is_none(), "headers named by Connection are hop-by-hop");
    assert_eq!(h["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["host"], "shop.test");
    assert!(h.get("x-request-id").is_some());
}

#[tokio::test]
async fn weighted_split_holds_statistically() {
    let (v1, v2, reg) = two_versions().await;
    let rules = "  - route:\n    - {destination: {host: shop, subset: v1}, weight: 90}\n    - {destination: {host: shop, subset: v2}, weight: 10}\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    for _ in 0..1000 {
        gw.get("shop.test", "/").await;
    }
    // Binomial(1000, 0.1): mean 100, sd ≈ 9.5; ±5 sd never fails by chance in practice.
    let (a, b) = (v1.hits(), v2.hits());
    assert_eq!(a + b, 1000);
    assert!((52..=148).contains(&b), "v2 got {b} of 1000");
}

#[tokio::test]
async fn cors_preflight_is_answered_and_actual_responses_get_headers() {
    let (v1, _v2, reg) = two_versions().await;
    let rules = "  - corsPolicy:\n      allowOrigins: [{exact: 'http://foo.example'}]\n      allowMethods: [POST, GET]\n      allowHeaders: [content-type]\n      exposeHeaders: [x-custom]\n      maxAge: 24h\n      allowCredentials: true\n    route: [{destination: {host: shop, subset: v1}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    let pre = Request::options("/")
        .header("host", "shop.test")
        .header("origin", "http://foo.example")
        .header("access-control-request-method", "POST")
        .body(Default::default())
        .unwrap();
    let r = gw.send(pre).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://foo.example"));
    assert_eq!(r.header("access-control-allow-methods"), Some("POST,GET"));
    assert_eq!(r.header("access-control-max-age"), Some("86400"));
    assert_eq!(v1.hits(), 0, "the preflight never reaches the upstream");
    let actual = Request::get("/")
        .header("host", "shop.test")
        .header("origin", "http://foo.example")
        .body(Default::default())
        .unwrap();
    let r = gw.send(actual).await;
    assert_eq!(r.header("access-control-expose-headers"), Some("x-custom"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let other = Request::get("/")
        .header("host", "shop.test")
        .header("origin", "http://evil.example")
        .body(Default::default())
        .unwrap();
    assert_eq!(gw.send(other).await.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn fault_abort_and_delay_are_flagged() {
    let (v1, _v2, reg) = two_versions().await;
    let rules = "  - match: [{uri: {prefix: /abort}}]\n    fault: {abort: {httpStatus: 555, percentage: {value: 100}}}\n    route: [{destination: {host: shop, subset: v1}}]\n  - match: [{uri: {prefix: /delay}}]\n    fault: {delay: {fixedDelay: 50ms, percentage: {value: 100}}}\n    route: [{destination: {host: shop, subset: v1}}]\n  - match: [{uri: {prefix: /never}}]\n    fault: {abort: {httpStatus: 503}}\n    route: [{destination: {host: shop, subset: v1}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    let r = gw.get("shop.test", "/abort").await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (555, "fault filter abort"));
    assert_eq!(gw.next_log().await["response_flags"], "FI");
    assert_eq!(gw.get("shop.test", "/delay").await.body, "v1");
    assert_eq!(gw.next_log().await["response_flags"], "DI");
    // No percentage: no request is affected.
    assert_eq!(gw.get("shop.test", "/never").await.body, "v1");
    assert_eq!(v1.hits(), 2);
}

#[tokio::test]
async fn authority_and_scheme_matches_see_the_request_as_sent() {
    let (_v1, _v2, reg) = two_versions().await;
    let rules = "  - match: [{authority: {exact: 'shop.test:80'}}]\n    route: [{destination: {host: shop, subset: v2}}]\n  - match: [{scheme: {exact: https}}]\n    route: [{destination: {host: shop, subset: v2}}]\n  - match: [{scheme: {exact: http}}]\n    route: [{destination: {host: shop, subset: v1}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    // The authority condition includes the port as sent; the vhost lookup ignores it.
    assert_eq!(gw.get("shop.test:80", "/").await.body, "v2");
    assert_eq!(gw.get("shop.test", "/").await.body, "v1");
}

#[tokio::test]
async fn redirect_scheme_port_and_authority() {
    let (_v1, _v2, reg) = two_versions().await;
    let rules = "  - match: [{uri: {prefix: /secure}}]\n    redirect: {scheme: https, derivePort: FROM_REQUEST_PORT}\n  - match: [{uri: {prefix: /elsewhere}}]\n    redirect: {authority: other.test, port: 9000, redirectCode: 308}\n  - match: [{uri: {prefix: /pfx/}}]\n    redirect: {prefixRewrite: /new/}\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    let r = gw.get("shop.test", "/secure/a").await;
    assert_eq!((r.status.as_u16(), r.header("location")), (301, Some("https://shop.test:80/secure/a")));
    let r = gw.get("shop.test", "/elsewhere").await;
    assert_eq!((r.status.as_u16(), r.header("location")), (308, Some("http://other.test:9000/elsewhere")));
    let r = gw.get("shop.test", "/pfx/x/y").await;
    assert_eq!(r.header("location"), Some("http://shop.test/new/x/y"));
}

#[tokio::test]
async fn mirror_percentage_zero_never_mirrors() {
    let (v1, v2, reg) = two_versions().await;
    let rules = "  - route: [{destination: {host: shop, subset: v1}}]\n    mirror: {host: shop, subset: v2}\n    mirrorPercentage: {value: 0}\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    for _ in 0..20 {
        gw.get("shop.test", "/").await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!((v1.hits(), v2.hits()), (20, 0));
}
