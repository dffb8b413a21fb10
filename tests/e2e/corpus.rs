//! Istio's own YAML from `../shared/corpus`, applied as written. The samples assume
//! Kubernetes Services; here ServiceEntries point the same hosts at test upstreams.

use std::collections::HashMap;

use http::{Request, StatusCode};
use wicket_tests::{
    corpus,
    yaml::{docs, service_entry},
    TestGateway, Upstream,
};

/// Bookinfo's services on port 9080, one upstream per version, named `svc-version`.
async fn bookinfo() -> (HashMap<String, Upstream>, String) {
    let mut ups = HashMap::new();
    let mut entries = Vec::new();
    for (svc, versions) in [
        ("productpage", &["v1"][..]),
        ("reviews", &["v1", "v2", "v3"]),
        ("ratings", &["v1", "v2", "v2-mysql"]),
        ("details", &["v1", "v2"]),
    ] {
        let mut started = Vec::new();
        for v in versions {
            started.push((format!("{svc}-{v}"), Upstream::start(&format!("{svc}-{v}")).await, *v));
        }
        let eps: Vec<(&Upstream, &str)> = started.iter().map(|(_, u, v)| (u, *v)).collect();
        entries.push(service_entry(&format!("{svc}.default.svc.cluster.local"), 9080, "HTTP", &eps));
        for (name, u, _) in started {
            ups.insert(name, u);
        }
    }
    (ups, entries.join("\n---\n"))
}

fn jason(host: &str) -> Request<http_body_util::Full<bytes::Bytes>> {
    Request::get("/").header("host", host).header("end-user", "jason").body(Default::default()).unwrap()
}

#[tokio::test]
async fn bookinfo_all_v1_sends_every_service_to_v1() {
    wicket_tests::require_corpus!();
    let (_ups, reg) = bookinfo().await;
    let yaml = docs(&[
        &reg,
        &corpus("destination-rule/destination-rule-all.yaml"),
        &corpus("bookinfo-routing/virtual-service-all-v1.yaml"),
    ]);
    let gw = TestGateway::start_mesh(&yaml).await;
    for svc in ["productpage", "reviews", "ratings", "details"] {
        for host in [svc.to_string(), format!("{svc}:9080"), format!("{svc}.default.svc.cluster.local")] {
            assert_eq!(gw.mesh_get(&host, "/").await.body, format!("{svc}-v1"), "{host}");
        }
    }
}

async fn split(file: &str, n: usize) -> HashMap<String, usize> {
    let (_ups, reg) = bookinfo().await;
    let yaml = docs(&[&reg, &corpus("destination-rule/destination-rule-all.yaml"), &corpus(file)]);
    let gw = TestGateway::start_mesh(&yaml).await;
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(gw.mesh_get("reviews", "/").await.body).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn reviews_90_10_split() {
    wicket_tests::require_corpus!();
    let counts = split("bookinfo-routing/virtual-service-reviews-90-10.yaml", 600).await;
    // Binomial(600, 0.1): mean 60, sd ≈ 7.3; ±5 sd.
    let v2 = counts.get("reviews-v2").copied().unwrap_or(0);
    assert_eq!(counts.get("reviews-v1").copied().unwrap_or(0) + v2, 600, "{counts:?}");
    assert!((24..=96).contains(&v2), "{counts:?}");
}

#[tokio::test]
async fn reviews_50_50_split_between_v1_and_v3() {
    wicket_tests::require_corpus!();
    let counts = split("bookinfo-routing/virtual-service-reviews-50-v3.yaml", 400).await;
    // Binomial(400, 0.5): mean 200, sd 10; ±5 sd.
    let v3 = counts.get("reviews-v3").copied().unwrap_or(0);
    assert_eq!(counts.get("reviews-v1").copied().unwrap_or(0) + v3, 400, "{counts:?}");
    assert!((150..=250).contains(&v3), "{counts:?}");
}

#[tokio::test]
async fn end_user_jason_goes_to_reviews_v2_everyone_else_to_v1() {
    wicket_tests::require_corpus!();
    let (_ups, reg) = bookinfo().await;
    let yaml = docs(&[
        &reg,
        &corpus("destination-rule/destination-rule-all.yaml"),
        &corpus("bookinfo-routing/virtual-service-reviews-test-v2.yaml"),
    ]);
    let gw = TestGateway::start_mesh(&yaml).await;
    assert_eq!(gw.mesh_send(jason("reviews")).await.body, "reviews-v2");
    assert_eq!(gw.mesh_get("reviews", "/").await.body, "reviews-v1");
}

#[tokio::test]
async fn ratings_abort_for_jason_only() {
    wicket_tests::require_corpus!();
    let (ups, reg) = bookinfo().await;
    let yaml = docs(&[
        &reg,
        &corpus("destination-rule/destination-rule-all.yaml"),
        &corpus("fault-injection/virtual-service-ratings-test-abort.yaml"),
    ]);
    let gw = TestGateway::start_mesh(&yaml).await;
    let r = gw.mesh_send(jason("ratings")).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "fault filter abort"));
    assert_eq!(gw.next_log().await["response_flags"], "FI");
    assert_eq!(ups["ratings-v1"].hits(), 0);
    assert_eq!(gw.mesh_get("ratings", "/").await.body, "ratings-v1");
}

#[tokio::test]
async fn ratings_delay_for_jason_then_routed_to_v1() {
    wicket_tests::require_corpus!();
    let (_ups, reg) = bookinfo().await;
    let yaml = docs(&[
        &reg,
        &corpus("destination-rule/destination-rule-all.yaml"),
        &corpus("fault-injection/virtual-service-ratings-test-delay.yaml"),
    ]);
    let gw = TestGateway::start_mesh(&yaml).await;
    assert_eq!(gw.mesh_get("ratings", "/").await.body, "ratings-v1");
    assert_eq!(gw.next_log().await["response_flags"], "-");
    // The sample injects 7s for jason; the flag shows it was applied.
    assert_eq!(gw.mesh_send(jason("ratings")).await.body, "ratings-v1");
    assert_eq!(gw.next_log().await["response_flags"], "DI");
}

#[tokio::test]
async fn details_catch_all_abort_555_makes_the_second_rule_unreachable() {
    wicket_tests::require_corpus!();
    let (ups, reg) = bookinfo().await;
    let gw = TestGateway::start_mesh(&docs(&[&reg, &corpus("fault-injection/fault-injection-details-v1.yaml")])).await;
    assert_eq!(gw.mesh_get("details", "/").await.status.as_u16(), 555);
    assert_eq!(ups["details-v1"].hits() + ups["details-v2"].hits(), 0);
}

#[tokio::test]
async fn ratings_mysql_uses_a_hyphenated_subset() {
    wicket_tests::require_corpus!();
    let (_ups, reg) = bookinfo().await;
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  subsets:
  - {name: v2-mysql, labels: {version: v2-mysql}}
";
    let yaml = docs(&[
        &reg,
        &corpus("destination-rule/destination-rule-all.yaml"),
        dr,
        &corpus("bookinfo-routing/virtual-service-ratings-mysql.yaml"),
    ]);
    let gw = TestGateway::start_mesh(&yaml).await;
    assert_eq!(gw.mesh_get("ratings", "/").await.body, "ratings-v2-mysql");
    assert_eq!(gw.mesh_get("reviews", "/").await.body, "reviews-v3");
}

#[tokio::test]
async fn bookinfo_gateway_routes_only_the_listed_paths() {
    wicket_tests::require_corpus!();
    let (_ups, reg) = bookinfo().await;
    let gw = TestGateway::start(&docs(&[&reg, &corpus("gateway/bookinfo-gateway.yaml")])).await;
    let at = gw.addr_of(8080);
    let get = |path: &'static str| wicket_tests::client::send(at, wicket_tests::client::get("anything.example", path));
    assert_eq!(get("/productpage").await.body, "productpage-v1");
    assert_eq!(get("/static/app.css").await.body, "productpage-v1");
    assert_eq!(get("/api/v1/products/1").await.body, "productpage-v1");
    assert_eq!(get("/productpage/x").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get("/").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn httpbin_example_com_only_for_its_host_and_paths() {
    wicket_tests::require_corpus!();
    let httpbin = Upstream::start("httpbin").await;
    let reg = service_entry("httpbin.default.svc.cluster.local", 8000, "HTTP", &[(&httpbin, "v1")]);
    let gw = TestGateway::start(&docs(&[&reg, &corpus("docs-ingress/ingress-control-httpbin-example-com.yaml")])).await;
    assert_eq!(gw.get("httpbin.example.com", "/status/200").await.status, StatusCode::OK);
    assert_eq!(gw.get("httpbin.example.com", "/status/418").await.status.as_u16(), 418);
    assert_eq!(gw.get("httpbin.example.com", "/headers").await.status, StatusCode::NOT_FOUND);
    assert_eq!(gw.get("other.example.com", "/status/200").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn https_redirect_answers_301_for_the_server_hosts() {
    wicket_tests::require_corpus!();
    let gw = TestGateway::start_with(&corpus("gateway/gateway-all-https-redirect.yaml"), |b| {
        b.labels = [("app".to_string(), "my-gateway-controller".to_string())].into();
    })
    .await;
    let r = gw.get("uk.bookinfo.com", "/path?q=1").await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header("location"), Some("https://uk.bookinfo.com/path?q=1"));
    assert_eq!(gw.get("other.com", "/").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn redirect_injection_by_header() {
    wicket_tests::require_corpus!();
    let gw = TestGateway::start_mesh(&corpus("serviceentry/rule-redirect-injection.yaml")).await;
    let req = Request::get("/old")
        .header("host", "redirect.test.istio.io")
        .header("testredirect", "enabled")
        .body(Default::default())
        .unwrap();
    let r = gw.mesh_send(req).await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header("location"), Some("http://redirect2.test.istio.io/new/path"));
    assert_eq!(gw.mesh_get("redirect.test.istio.io", "/old").await.status, StatusCode::NOT_FOUND);
}

#[test]
fn every_corpus_file_parses_without_schema_errors() {
    wicket_tests::require_corpus!();
    let bootstrap = wicket::config::Bootstrap { config_dir: Some(wicket_tests::corpus_dir()), ..Default::default() };
    let problems = wicket::validate(&bootstrap).unwrap();
    // References to Kubernetes Services the corpus does not declare are expected;
    // anything else (a field, a type, a value) would be a gap in Wicket.
    let unexpected: Vec<String> = problems
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .filter(|d| !d.contains("is not in the registry") && !d.contains("no subset") && !d.contains("has no port"))
        // Secrets and certificate files the samples name do not exist here either.
        .filter(|d| {
            !["cannot read credentials/", "cannot read tests/testdata/", "cannot read /etc/certs/"]
                .iter()
                .any(|f| d.contains(f))
        })
        // WasmPlugins naming registries: an offline gateway cannot pull them.
        .filter(|d| !d.contains("in offline mode"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
}

#[test]
fn the_bundled_config_is_valid() {
    let dir = format!("{}/../config", env!("CARGO_MANIFEST_DIR"));
    let bootstrap = wicket::config::Bootstrap { config_dir: Some(dir.into()), ..Default::default() };
    let problems = wicket::validate(&bootstrap).unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn validate_names_file_line_resource_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: web}
spec:
  hosts: [shop]
  gateways: [gw]
  http:
  - route:
    - destination: {host: shop, subset: v3}
";
    std::fs::write(dir.path().join("shop.yaml"), vs).unwrap();
    let bootstrap = wicket::config::Bootstrap { config_dir: Some(dir.path().into()), ..Default::default() };
    let problems: Vec<String> = wicket::validate(&bootstrap).unwrap().iter().map(ToString::to_string).collect();
    let file = dir.path().join("shop.yaml").display().to_string();
    assert!(
        problems.iter().any(|p| p.starts_with(&format!(
            "{file}:1: VirtualService/web/shop: spec.gateways[0]: error: gateway web/gw not found"
        ))),
        "{problems:#?}"
    );
    assert!(problems.iter().any(|p| p.contains("VirtualService/web/shop: spec.http[0].route[0].destination: error: host \"shop.web.svc.cluster.local\" is not in the registry")), "{problems:#?}");
}
