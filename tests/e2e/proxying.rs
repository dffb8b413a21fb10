//! Upstream behaviour: retries, timeouts, failures with their flags, mirrors, HTTP/2,
//! gRPC trailers, WebSocket upgrades, malformed requests.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wicket_tests::{
    client,
    yaml::{docs, service_entry, GATEWAY},
    TestGateway, Upstream,
};

fn vs(http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: api, namespace: default}}\nspec:\n  hosts: [api.test]\n  gateways: [gw]\n  http:\n{http}")
}

fn api(up: &[(&Upstream, &str)], protocol: &str) -> String {
    service_entry("api.default.svc.cluster.local", 80, protocol, up)
}

#[tokio::test]
async fn retries_on_5xx_then_succeed_with_attempt_count() {
    let up = Upstream::failing_first("api", 2, StatusCode::SERVICE_UNAVAILABLE).await;
    let rules = "  - retries: {attempts: 3, retryOn: 5xx}\n    route: [{destination: {host: api}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &api(&[(&up, "v1")], "HTTP"), &vs(rules)])).await;
    let r = gw.get("api.test", "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.hits(), 3);
    assert_eq!(up.last().headers["x-envoy-attempt-count"], "3");
}

#[tokio::test]
async fn retry_limit_exceeded_returns_the_last_response_flagged_urx() {
    let up = Upstream::failing_first("api", 100, StatusCode::SERVICE_UNAVAILABLE).await;
    let rules = "  - retries: {attempts: 2, retryOn: \"503\"}\n    route: [{destination: {host: api}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &api(&[(&up, "v1")], "HTTP"), &vs(rules)])).await;
    assert_eq!(gw.get("api.test", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 3);
    assert_eq!(gw.next_log().await["response_flags"], "URX");
}

#[tokio::test]
async fn without_retry_policy_5xx_is_not_retried() {
    let up = Upstream::failing_first("api", 1, StatusCode::SERVICE_UNAVAILABLE).await;
    let gw = TestGateway::start(&docs(&[
        GATEWAY,
        &api(&[(&up, "v1")], "HTTP"),
        &vs("  - route: [{destination: {host: api}}]\n"),
    ]))
    .await;
    assert_eq!(gw.get("api.test", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn route_timeout_answers_504_ut() {
    let up = Upstream::start("api").await;
    let rules = "  - timeout: 100ms\n    route: [{destination: {host: api}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &api(&[(&up, "v1")], "HTTP"), &vs(rules)])).await;
    let r = gw.get("api.test", "/delay/5000").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.body, "upstream request timeout");
    assert_eq!(gw.next_log().await["response_flags"], "UT");
}

#[tokio::test]
async fn per_try_timeout_retries_on_another_endpoint() {
    let slow = Upstream::slow("slow", Duration::from_secs(30)).await;
    let fast = Upstream::start("fast").await;
    let rules = "  - retries: {attempts: 3, perTryTimeout: 200ms, retryOn: gateway-error}\n    route: [{destination: {host: api}}]\n";
    // Round robin makes sure the slow endpoint is tried first at least once.
    let rr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: rr}\nspec:\n  host: api\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &api(&[(&slow, "v1"), (&fast, "v1")], "HTTP"), rr, &vs(rules)])).await;
    for _ in 0..6 {
        // Whichever endpoint is tried first, a retry avoids the previous (slow) host.
        let r = gw.get("api.test", "/").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "fast"));
    }
    assert!(slow.hits() > 0, "the slow endpoint was tried at least once");
}

#[tokio::test]
async fn connect_failure_is_503_uf_and_missing_endpoints_503_uh() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dead = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: dead}}
spec:
  hosts: [dead.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: empty}}
spec:
  hosts: [empty.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
"
    );
    let rules = "  - match: [{uri: {prefix: /dead}}]\n    route: [{destination: {host: dead}}]\n  - match: [{uri: {prefix: /empty}}]\n    route: [{destination: {host: empty}}]\n  - match: [{uri: {prefix: /nowhere}}]\n    route: [{destination: {host: nowhere}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &dead, &vs(rules)])).await;
    let r = gw.get("api.test", "/dead").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(gw.next_log().await["response_flags"].as_str().unwrap().contains("UF"));
    assert_eq!(gw.get("api.test", "/empty").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gw.next_log().await["response_flags"], "UH");
    assert_eq!(gw.get("api.test", "/nowhere").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gw.next_log().await["response_flags"], "NC");
}

#[tokio::test]
async fn mirror_sends_a_shadow_copy_and_the_client_sees_the_primary() {
    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start("shadow").await;
    let reg = docs(&[
        &api(&[(&primary, "v1")], "HTTP"),
        &service_entry("shadow.default.svc.cluster.local", 80, "HTTP", &[(&shadow, "v1")]),
    ]);
    let rules = "  - route: [{destination: {host: api}}]\n    mirror: {host: shadow}\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(rules)])).await;
    let req =
        Request::post("/orders").header("host", "api.test").body(Full::new(Bytes::from_static(b"payload"))).unwrap();
    assert_eq!(gw.send(req).await.body, "primary");
    // The shadow records a request once its body is read (hits count on arrival).
    for _ in 0..200 {
        if !shadow.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let copy = shadow.last();
    assert_eq!(copy.headers["host"], "api.test-shadow");
    assert_eq!(copy.body, "payload");
    assert_eq!(primary.last().body, "payload");
}

#[tokio::test]
async fn h2c_downstream_and_grpc_trailers_pass_through() {
    let up = Upstream::start("grpc").await;
    let gw = TestGateway::start(&docs(&[
        GATEWAY,
        &api(&[(&up, "v1")], "GRPC"),
        &vs("  - route: [{destination: {host: api}}]\n"),
    ]))
    .await;
    let req = Request::post("/grpc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let r = client::send_h2(gw.addr(), "api.test", req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.trailers.expect("trailers")["grpc-status"], "0");
    assert_eq!(up.last().headers.get("te").map(|v| v.to_str().unwrap()), Some("trailers"));
    // Plain HTTP/2 request routed by :authority.
    let r = client::send_h2(gw.addr(), "api.test", client::get("api.test", "/x")).await;
    assert_eq!(r.body, "grpc");
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let up = Upstream::start("ws").await;
    let gw = TestGateway::start(&docs(&[
        GATEWAY,
        &api(&[(&up, "v1")], "HTTP"),
        &vs("  - route: [{destination: {host: api}}]\n"),
    ]))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_the_gateway_keeps_serving() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&docs(&[
        GATEWAY,
        &api(&[(&up, "v1")], "HTTP"),
        &vs("  - route: [{destination: {host: api}}]\n"),
    ]))
    .await;
    let raw = |bytes: &'static [u8]| {
        let addr = gw.addr();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(bytes).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).to_string()
        }
    };
    assert!(raw(b"GARBAGE\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    assert!(raw(b"GET / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 400"), "missing Host");
    assert!(raw(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await.starts_with("HTTP/1.1 400"), "repeated Host");
    let huge: &'static [u8] = Box::leak(
        format!("GET / HTTP/1.1\r\nHost: api.test\r\nx-big: {}\r\n\r\n", "a".repeat(100_000))
            .into_bytes()
            .into_boxed_slice(),
    );
    assert!(raw(huge).await.starts_with("HTTP/1.1 431"));
    assert_eq!(gw.get("api.test", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn retriable_4xx_retries_409_only() {
    let conflict = Upstream::failing_first("api", 1, StatusCode::CONFLICT).await;
    let rules = "  - retries: {attempts: 2, retryOn: retriable-4xx}\n    route: [{destination: {host: api}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &api(&[(&conflict, "v1")], "HTTP"), &vs(rules)])).await;
    assert_eq!(gw.get("api.test", "/").await.status, StatusCode::OK);
    assert_eq!(conflict.hits(), 2);
    assert_eq!(gw.get("api.test", "/status/404").await.status, StatusCode::NOT_FOUND);
    assert_eq!(conflict.hits(), 3, "404 is not retriable");
}

#[tokio::test]
async fn reset_before_headers_is_retried_on_another_endpoint() {
    let port = wicket_tests::upstream::raw(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await; // then close without answering
    })
    .await;
    let good = Upstream::start("good").await;
    let se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api}}
spec:
  hosts: [api.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {port}}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
",
        good.addr.port()
    );
    let rules = "  - retries: {attempts: 2, retryOn: reset}\n    route: [{destination: {host: api}}]\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs(rules)])).await;
    for _ in 0..6 {
        assert_eq!(gw.get("api.test", "/").await.body, "good");
    }
}
