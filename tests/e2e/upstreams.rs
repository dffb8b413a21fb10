//! The registry side: DNS and WorkloadEntry endpoints, load balancing, visibility,
//! resets, and requests in flight across a reload.

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use wicket_tests::{
    client,
    yaml::{docs, service_entry, GATEWAY},
    TestGateway, Upstream,
};

fn vs(host: &str, dest: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs-{host}, namespace: default}}
spec:
  hosts: [{host}]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: {dest}}}}}]
"
    )
}

#[tokio::test]
async fn dns_resolution_finds_localhost() {
    let up = Upstream::start("dns").await;
    let se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: dns}}
spec:
  hosts: [dns.example]
  resolution: DNS
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: localhost, ports: {{http: {}}}}}]
",
        up.addr.port()
    );
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs("d.test", "dns.example")])).await;
    // localhost may resolve to ::1 first, where nothing listens: the default retry
    // policy retries connect failures on another endpoint.
    assert_eq!(gw.get("d.test", "/").await.body, "dns");
}

#[tokio::test]
async fn workload_selector_picks_workload_entries_by_label() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let we = |name: &str, up: &Upstream, app: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}}}
spec:
  address: 127.0.0.1
  ports: {{http: {}}}
  labels: {{app: {app}}}
",
            up.addr.port()
        )
    };
    let se = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sel}
spec:
  hosts: [sel.example]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: shop}}
";
    let gw = TestGateway::start(&docs(&[
        GATEWAY,
        se,
        &we("wa", &a, "shop"),
        &we("wb", &b, "other"),
        &vs("s.test", "sel.example"),
    ]))
    .await;
    for _ in 0..5 {
        assert_eq!(gw.get("s.test", "/").await.body, "a");
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn round_robin_alternates_endpoints() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: rr}\nspec:\n  host: api\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n";
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&a, "v1"), (&b, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, dr, &vs("r.test", "api")])).await;
    let mut bodies = Vec::new();
    for _ in 0..6 {
        bodies.push(gw.get("r.test", "/").await.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] != w[1]), "{bodies:?}");
    assert_eq!((a.hits(), b.hits()), (3, 3));
}

/// Three upstreams named a, b, c behind service `api`, and its ServiceEntry.
async fn three_endpoints() -> ([Upstream; 3], String) {
    let ups = [Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await];
    let se = service_entry(
        "api.default.svc.cluster.local",
        80,
        "HTTP",
        &[(&ups[0], "v1"), (&ups[1], "v1"), (&ups[2], "v1")],
    );
    (ups, se)
}

/// Puts a session key into a request.
type SetKey = fn(&mut Request<http_body_util::Full<bytes::Bytes>>, u32);

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_endpoint() {
    let (_ups, se) = three_endpoints().await;
    let keyed: [(&str, SetKey); 3] = [
        ("{httpHeaderName: X-User}", |r, k| {
            r.headers_mut().insert("x-user", k.to_string().parse().unwrap());
        }),
        ("{httpCookie: {name: session}}", |r, k| {
            r.headers_mut().insert("cookie", format!("theme=dark; session={k}").parse().unwrap());
        }),
        ("{httpQueryParameterName: user}", |r, k| {
            *r.uri_mut() = format!("/items?user={k}").parse().unwrap();
        }),
    ];
    for (hash, set_key) in keyed {
        let dr = format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: sticky}}
spec:
  host: api
  trafficPolicy: {{loadBalancer: {{consistentHash: {hash}}}}}
"
        );
        let gw = TestGateway::start(&docs(&[GATEWAY, &se, &dr, &vs("h.test", "api")])).await;
        let mut used = std::collections::BTreeSet::new();
        for key in 0..20 {
            let mut bodies = std::collections::BTreeSet::new();
            for _ in 0..3 {
                let mut req = client::get("h.test", "/");
                set_key(&mut req, key);
                bodies.insert(client::send(gw.addr(), req).await.body);
            }
            assert_eq!(bodies.len(), 1, "{hash}: key {key} went to {bodies:?}");
            used.extend(bodies);
        }
        assert!(used.len() > 1, "{hash}: keys spread over endpoints: {used:?}");
    }
}

#[tokio::test]
async fn a_cookie_with_a_ttl_is_generated_and_pins_the_client() {
    let (_ups, se) = three_endpoints().await;
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky}
spec:
  host: api
  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: session, path: /, ttl: 60s}}}}
";
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, dr, &vs("h.test", "api")])).await;
    for _ in 0..10 {
        let first = gw.get("h.test", "/").await;
        let set = first.header("set-cookie").expect("a session cookie is generated").to_owned();
        assert!(set.starts_with("session=\"") && set.ends_with("\"; Max-Age=60; Path=/; HttpOnly"), "{set}");
        let cookie = set.split(';').next().unwrap().to_owned();
        for _ in 0..3 {
            let mut req = client::get("h.test", "/");
            req.headers_mut().insert("cookie", cookie.parse().unwrap());
            let again = client::send(gw.addr(), req).await;
            assert_eq!(again.body, first.body, "{cookie} stays on one endpoint");
            assert_eq!(again.header("set-cookie"), None, "the client has its cookie");
        }
    }
}

#[tokio::test]
async fn a_resource_not_exported_to_the_gateway_namespace_is_invisible() {
    let up = Upstream::start("api").await;
    let hidden = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hidden, namespace: other}
spec:
  hosts: [h.test]
  gateways: [default/gw]
  exportTo: [\".\"]
  http:
  - route: [{destination: {host: api.default.svc.cluster.local}}]
";
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, hidden])).await;
    assert_eq!(gw.get("h.test", "/").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn virtual_services_sharing_a_host_merge_with_catch_alls_last() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let reg = docs(&[
        &service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&a, "v1")]),
        &service_entry("b.default.svc.cluster.local", 80, "HTTP", &[(&b, "v1")]),
    ]);
    let first = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: first}
spec:
  hosts: [m.test]
  gateways: [gw]
  http:
  - route: [{destination: {host: a}}]
";
    let second = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: second}
spec:
  hosts: [m.test]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: b}}]
";
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, first, second])).await;
    assert_eq!(gw.get("m.test", "/b/x").await.body, "b");
    assert_eq!(gw.get("m.test", "/other").await.body, "a");
}

#[tokio::test]
async fn match_port_and_gateways_select_blocks_at_config_time() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let reg = docs(&[
        &service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&a, "v1")]),
        &service_entry("b.default.svc.cluster.local", 80, "HTTP", &[(&b, "v1")]),
    ]);
    let two_ports = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
  - port: {number: 8080, name: alt, protocol: HTTP}
    hosts: [\"*\"]
";
    let rules = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: p}
spec:
  hosts: [p.test]
  gateways: [gw]
  http:
  - match: [{port: 8080}]
    route: [{destination: {host: b}}]
  - match: [{gateways: [mesh]}]
    route: [{destination: {host: b}}]
  - route: [{destination: {host: a}}]
";
    let gw = TestGateway::start(&docs(&[two_ports, &reg, rules])).await;
    assert_eq!(gw.get("p.test", "/").await.body, "a");
    let alt = wicket_tests::client::send(gw.addr_of(8080), wicket_tests::client::get("p.test", "/")).await;
    assert_eq!(alt.body, "b");
}

#[tokio::test]
async fn an_upstream_reset_mid_response_ends_that_stream_alone() {
    let port = wicket_tests::upstream::raw(|mut s| async move {
        let mut buf = [0u8; 4096];
        let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial").await;
    })
    .await;
    let ok = Upstream::start("ok").await;
    let se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cut}}
spec:
  hosts: [cut.example]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"
    );
    let reg = docs(&[&se, &service_entry("ok.default.svc.cluster.local", 80, "HTTP", &[(&ok, "v1")])]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs("cut.test", "cut.example"), &vs("ok.test", "ok")])).await;

    // One HTTP/2 connection carries both streams: the cut one fails, the other is fine.
    let stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = |host: &str| {
        Request::get(format!("http://{host}/")).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap()
    };
    let mut s1 = sender.clone();
    let cut = s1.send_request(req("cut.test")).await.unwrap();
    assert_eq!(cut.status(), StatusCode::OK);
    assert!(cut.into_body().collect().await.is_err(), "the truncated body is an error, not a short success");
    let mut s2 = sender.clone();
    let fine = s2.send_request(req("ok.test")).await.unwrap();
    assert_eq!(fine.into_body().collect().await.unwrap().to_bytes(), "ok");
    gw.find_log(|l| l["response_flags"] == "UC").await;
}

#[tokio::test]
async fn requests_in_flight_finish_on_the_snapshot_they_started_on() {
    let old = Upstream::start("old").await;
    let new = Upstream::start("new").await;
    let reg = docs(&[
        &service_entry("old.default.svc.cluster.local", 80, "HTTP", &[(&old, "v1")]),
        &service_entry("new.default.svc.cluster.local", 80, "HTTP", &[(&new, "v1")]),
    ]);
    let mut gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs("f.test", "old")])).await;
    let addr = gw.addr();
    let slow = tokio::spawn(wicket_tests::client::send(addr, wicket_tests::client::get("f.test", "/delay/700")));
    while old.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.write("config.yaml", &docs(&[GATEWAY, &reg, &vs("f.test", "new")])).await;
    assert_eq!(gw.get("f.test", "/").await.body, "new");
    assert_eq!(slow.await.unwrap().body, "old");
}

#[tokio::test]
async fn request_ids_pass_through_and_http_1_0_is_refused() {
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs("i.test", "api")])).await;
    let req =
        Request::get("/").header("host", "i.test").header("x-request-id", "abc-123").body(Default::default()).unwrap();
    gw.send(req).await;
    assert_eq!(up.last().headers["x-request-id"], "abc-123");
    assert_eq!(gw.next_log().await["request_id"], "abc-123");
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: i.test\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.0 426"), "{}", String::from_utf8_lossy(&out));
}

/// ServiceEntry endpoint `weight`s set the shares of the endpoints (Istio's
/// load-balancing weight); round robin makes them exact.
#[tokio::test]
async fn endpoint_weights_share_the_traffic() {
    let light = Upstream::start("light").await;
    let heavy = Upstream::start("heavy").await;
    let se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: weighted}}
spec:
  hosts: [weighted.example]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}, weight: 1}}
  - {{address: 127.0.0.1, ports: {{http: {}}}, weight: 3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: weighted}}
spec:
  host: weighted.example
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
",
        light.addr.port(),
        heavy.addr.port()
    );
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs("w.test", "weighted.example")])).await;
    for _ in 0..40 {
        assert_eq!(gw.get("w.test", "/").await.status, StatusCode::OK);
    }
    assert_eq!((light.hits(), heavy.hits()), (10, 30));
}
