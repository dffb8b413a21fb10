//! Resilience: graceful shutdown, circuit breakers and outlier detection.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use wicket_tests::{
    client,
    yaml::{docs, service_entry, GATEWAY},
    TestGateway, Upstream,
};

const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - route: [{destination: {host: api}}]
";

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_and_closes_idle_connections() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&docs(&[
        GATEWAY,
        &service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]),
        VS,
    ]))
    .await;
    let addr = gw.addr();
    // An idle HTTP/1.1 keep-alive connection and an idle HTTP/2 connection.
    let idle_h1 = client::send(addr, client::get("a.test", "/")).await;
    assert_eq!(idle_h1.status, StatusCode::OK);
    let mut keep_alive = tokio::net::TcpStream::connect(addr).await.unwrap();
    keep_alive.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    let h2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2_sender, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2)).await.unwrap();
    let h2_task = tokio::spawn(h2_conn);
    let warm = h2_sender
        .send_request(http::Request::get("http://a.test/").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap())
        .await
        .unwrap();
    let _ = warm.into_body().collect().await;
    // A slow request in flight.
    let slow = tokio::spawn(client::send(addr, client::get("a.test", "/delay/400")));
    while up.seen().iter().all(|r| r.path != "/delay/400") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = gw.shutdown(Duration::from_secs(20)).await;
    assert_eq!(left, 0, "every connection closed before the limit");
    assert_eq!(slow.await.unwrap().status, StatusCode::OK, "the request in flight finished");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no new connection is accepted");
    let _ = tokio::time::timeout(Duration::from_secs(5), h2_task)
        .await
        .expect("the HTTP/2 connection got GOAWAY and closed");
}

fn pool_rule(http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api}}\nspec:\n  host: api\n  trafficPolicy:\n    connectionPool:\n      http: {http}\n")
}

#[tokio::test]
async fn circuit_breakers_answer_503_uo_instead_of_queueing() {
    let up = Upstream::slow("api", Duration::from_millis(600)).await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, VS, &pool_rule("{http2MaxRequests: 2}")])).await;
    let addr = gw.addr();
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(tokio::spawn(client::send(addr, client::get("a.test", "/"))));
    }
    while up.hits() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        let r = client::send(addr, client::get("a.test", "/")).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(gw.find_log(|l| l["response_code"] == 503).await["response_flags"], "UO");
    for s in slow {
        assert_eq!(s.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(up.hits(), 2, "overflowing requests never reached the upstream");
    assert_eq!(client::send(addr, client::get("a.test", "/")).await.status, StatusCode::OK, "capacity is back");
}

#[tokio::test]
async fn max_retries_caps_concurrent_retries() {
    let up = Upstream::failing_first("api", 100, StatusCode::SERVICE_UNAVAILABLE).await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let vs = VS.replace("  - route:", "  - retries: {attempts: 3, retryOn: 5xx}\n    route:");
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs, &pool_rule("{maxRetries: 0}")])).await;
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 1, "no retry slot, no retry");
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint() {
    let bad = Upstream::failing_first("bad", usize::MAX, StatusCode::SERVICE_UNAVAILABLE).await;
    let good = Upstream::start("good").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&bad, "v1"), (&good, "v1")]);
    // No retries, so every request lands on the endpoint picked first.
    let vs = VS.replace("  - route:", "  - retries: {attempts: 0}\n    route:");
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 5m, maxEjectionPercent: 100}
";
    let mut gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs, dr])).await;
    let mut failures = 0;
    for _ in 0..6 {
        if gw.get("a.test", "/").await.status != StatusCode::OK {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "two failures eject the endpoint");
    for _ in 0..10 {
        assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK, "the ejected endpoint gets no traffic");
    }
    assert_eq!(bad.hits(), 2);
    // A reload keeps the ejection.
    let other = VS.replace("name: api", "name: other").replace("\"*\"", "other.test");
    gw.write("other.yaml", &other).await;
    for _ in 0..4 {
        assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK);
    }
    assert_eq!(bad.hits(), 2, "still ejected after the reload");
    let admin = gw.gateway.admin_addr().unwrap();
    let clusters: serde_json::Value =
        serde_json::from_str(&client::send(admin, client::get("admin", "/clusters")).await.body).unwrap();
    let endpoints = clusters["clusters"][0]["endpoints"].as_array().unwrap();
    let state = |addr: std::net::SocketAddr| {
        let e = endpoints.iter().find(|e| e["address"] == addr.to_string()).unwrap();
        (e["health"].as_str().unwrap().to_owned(), e["times_ejected"].as_u64().unwrap())
    };
    assert_eq!(state(bad.addr), ("ejected".to_owned(), 1));
    assert_eq!(state(good.addr), ("healthy".to_owned(), 0));
}

#[tokio::test]
async fn an_ejected_endpoint_returns_after_base_ejection_time() {
    let bad = Upstream::failing_first("bad", 2, StatusCode::SERVICE_UNAVAILABLE).await;
    let good = Upstream::start("good").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&bad, "v1"), (&good, "v1")]);
    let vs = VS.replace("  - route:", "  - retries: {attempts: 0}\n    route:");
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 1s, maxEjectionPercent: 100}
";
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs, dr])).await;
    while bad.hits() < 2 {
        gw.get("a.test", "/").await;
    }
    // Ejected now; it comes back once its ejection time is up, and answers again.
    let mut bodies = Vec::new();
    for _ in 0..500 {
        let r = gw.get("a.test", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        bodies.push(r.body);
        if bad.hits() > 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bodies.last().map(String::as_str), Some("bad"), "the endpoint is back in rotation");
    assert!(bodies.iter().filter(|b| *b == "good").count() > 1, "it was ejected for a while: {bodies:?}");
}

#[tokio::test]
async fn connections_over_the_listener_limit_are_closed_at_once() {
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start_with(&docs(&[GATEWAY, &se, VS]), |b| b.max_connections = 2).await;
    let addr = gw.addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        assert_eq!(sender.send_request(client::get("a.test", "/")).await.unwrap().status(), StatusCode::OK);
        held.push(sender);
    }
    // A third connection is accepted by the kernel, then closed by the gateway.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::io::AsyncReadExt::read(&mut third, &mut buf).await;
    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer: {read:?}");
    let metrics = gw.metrics().await;
    assert!(metrics.contains("wicket_listener_overflow_total{port=\"80\"} 1"), "{metrics}");
    // Closing a held connection makes room again.
    drop(held.pop());
    let mut served = false;
    for _ in 0..300 {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        if let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            tokio::spawn(conn);
            if sender.send_request(client::get("a.test", "/")).await.is_ok_and(|r| r.status() == StatusCode::OK) {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served, "a new connection is served once one closed");
}

#[tokio::test]
async fn connect_timeout_bounds_connection_attempts() {
    // A listener that never accepts, with its backlog full: new connections hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut filler = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
        {
            filler.push(s);
        }
    }
    let se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: hang}}
spec:
  hosts: [api.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
",
        addr.port()
    );
    // The route allows 5 s (less than the default 10 s connect timeout); the pool gives
    // up on connecting after 100 ms.
    let vs = VS.replace("  - route:", "  - timeout: 5s\n    route:");
    let dr =
        pool_rule("{http2MaxRequests: 100}").replace("      http:", "      tcp: {connectTimeout: 100ms}\n      http:");
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs, &dr])).await;
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    let log = gw.find_log(|l| l["response_code"] == 503).await;
    assert!(log["response_flags"].as_str().unwrap().contains("UF"), "a connect failure, not a timeout: {log}");
    // The mesh config's `connectTimeout` is the default a DestinationRule overrides.
    let mesh = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    connectTimeout: 100ms\n    tcpKeepalive: {time: 60s}\n";
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs, mesh])).await;
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    let log = gw.find_log(|l| l["response_code"] == 503).await;
    assert!(log["response_flags"].as_str().unwrap().contains("UF"), "{log}");
    drop(listener);
}

#[tokio::test]
async fn max_connections_queues_up_to_http1_max_pending_requests() {
    let up = Upstream::slow("api", Duration::from_millis(600)).await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let dr =
        pool_rule("{http1MaxPendingRequests: 1}").replace("      http:", "      tcp: {maxConnections: 1}\n      http:");
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, VS, &dr])).await;
    let addr = gw.addr();
    let first = tokio::spawn(client::send(addr, client::get("a.test", "/")));
    while up.hits() < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One connection busy: of the next two, one waits for it and one overflows.
    let (b, c) =
        tokio::join!(client::send(addr, client::get("a.test", "/")), client::send(addr, client::get("a.test", "/")));
    let mut statuses = [b.status, c.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE]);
    assert_eq!(gw.find_log(|l| l["response_code"] == 503).await["response_flags"], "UO");
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(up.hits(), 2, "the overflowing request never reached the upstream");
}

#[tokio::test]
async fn max_connections_refuses_tcp_connections_over_the_limit() {
    use tokio::io::AsyncReadExt;
    let port = wicket_tests::upstream::tcp_echo().await;
    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}
";
    let gw = TestGateway::start(&docs(&[&wicket_tests::yaml::tcp_gateway(port), dr])).await;
    let mut held = tokio::net::TcpStream::connect(gw.addr_of(9000)).await.unwrap();
    held.write_all(b"one").await.unwrap();
    let mut back = [0u8; 3];
    held.read_exact(&mut back).await.unwrap();
    let mut over = tokio::net::TcpStream::connect(gw.addr_of(9000)).await.unwrap();
    let _ = over.write_all(b"two").await;
    assert!(matches!(over.read(&mut back).await, Ok(0) | Err(_)), "the second connection is closed");
    assert_eq!(gw.find_log(|l| l["response_flags"] == "UO").await["response_flags"], "UO");
}

/// The upstream connections (client ports) the requests so far came on, in order.
fn connections(up: &Upstream) -> Vec<u16> {
    up.seen().iter().map(|r| r.peer.port()).collect()
}

#[tokio::test]
async fn connection_pools_reuse_or_not_as_the_destination_rule_says() {
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    // Default: one kept-alive connection serves sequential requests.
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, VS])).await;
    for _ in 0..3 {
        assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK);
    }
    let ports = connections(&up);
    assert!(ports.windows(2).all(|w| w[0] == w[1]), "reused: {ports:?}");

    // maxRequestsPerConnection: 1 opens a connection per request.
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, VS, &pool_rule("{maxRequestsPerConnection: 1}")])).await;
    for _ in 0..3 {
        assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK);
    }
    let mut ports = connections(&up);
    ports.dedup();
    assert_eq!(ports.len(), 3, "a connection per request: {:?}", connections(&up));

    // maxRequestsPerConnection: 2 closes each connection after its second request.
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, VS, &pool_rule("{maxRequestsPerConnection: 2}")])).await;
    assert!(gw.gateway.snapshot().diagnostics.is_empty(), "{:?}", gw.gateway.snapshot().diagnostics);
    for _ in 0..4 {
        assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK);
    }
    let ports = connections(&up);
    assert!(ports[0] == ports[1] && ports[2] == ports[3] && ports[1] != ports[2], "two requests each: {ports:?}");

    // idleTimeout closes a connection left idle; keepalive settings are accepted.
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let rule = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    connectionPool:
      tcp: {tcpKeepalive: {time: 30s, interval: 5s}}
      http: {idleTimeout: 200ms}
";
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, VS, rule])).await;
    assert!(gw.gateway.snapshot().diagnostics.is_empty(), "{:?}", gw.gateway.snapshot().diagnostics);
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK);
    let ports = connections(&up);
    assert_ne!(ports[0], ports[1], "the idle connection was closed: {ports:?}");
}

/// Opens streams on one HTTP/2 connection and resets each one; with `dispatched`,
/// only after the gateway has passed it upstream. Returns whether the gateway
/// refused to go on, and the connection task.
async fn rapid_resets(gw: &TestGateway, up: &Upstream, dispatched: bool) -> bool {
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let closed = tokio::spawn(conn);
    for _ in 0..2000 {
        let Ok(ready) = h2.ready().await else { break };
        h2 = ready;
        let hits = up.hits();
        let req = http::Request::get("http://a.test/delay/2000").body(()).unwrap();
        let Ok((_, mut stream)) = h2.send_request(req, false) else { break };
        // Let the connection task put HEADERS on the wire before the reset.
        tokio::task::yield_now().await;
        while dispatched && up.hits() == hits && !closed.is_finished() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        stream.send_reset(h2::Reason::CANCEL);
    }
    // The gateway ends the connection (GOAWAY, or a close): the task finishes.
    tokio::time::timeout(Duration::from_secs(10), closed).await.is_ok()
}

/// CVE-2023-44487: a client that opens streams and resets them at once loses its
/// connection instead of keeping the gateway busy; other clients are served. Bursts
/// (HEADERS and RST together) trip h2's accept-queue limit; streams reset after they
/// reached the gateway trip Envoy's premature-reset rule (`listener::resets`).
#[tokio::test]
async fn http2_rapid_reset_closes_the_offending_connection() {
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, VS])).await;
    assert!(rapid_resets(&gw, &up, false).await, "bursts of resets are refused");
    let hits = up.hits();
    assert!(rapid_resets(&gw, &up, true).await, "resets after dispatch are refused");
    let dispatched = up.hits() - hits;
    assert!((500..1000).contains(&dispatched), "closed after 500 streams, at most half of them reset: {dispatched}");
    // A well-behaved client is unaffected.
    let resp = client::send_h2(gw.addr(), "a.test", client::get("a.test", "/")).await;
    assert_eq!(resp.status, StatusCode::OK);
}

#[tokio::test]
async fn request_bodies_over_the_configured_limit_get_413() {
    use tokio::io::AsyncReadExt;
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start_with(&docs(&[GATEWAY, &se, VS]), |b| b.max_request_body = Some(1000)).await;
    let post = |n: usize| {
        http::Request::post("/")
            .header("host", "a.test")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    assert_eq!(gw.send(post(1000)).await.status, StatusCode::OK);
    let resp = gw.send(post(5000)).await;
    assert_eq!((resp.status, resp.body.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "payload too large"));
    assert_eq!(up.hits(), 1, "a declared oversize body never reaches the upstream");

    // A streamed (chunked) body is cut off once it passes the limit.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
    for _ in 0..10 {
        if tcp.write_all(b"200\r\n").await.is_err() {
            break;
        }
        let _ = tcp.write_all(&[b'y'; 0x200]).await;
        let _ = tcp.write_all(b"\r\n").await;
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // Other requests carry on.
    assert_eq!(gw.send(post(10)).await.status, StatusCode::OK);
}

/// Outlier detection that ejects the endpoint on its first failure, so blaming it once
/// for a client's fault would show.
const EJECT_AT_ONCE: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, consecutiveGatewayErrors: 1, baseEjectionTime: 5m, maxEjectionPercent: 100}
";

/// A client whose request body is malformed (bad chunked encoding) gets 400 and the
/// blame: the endpoint is neither ejected nor retried, and every other client is still
/// served (before, three such bodies ejected a healthy endpoint: 503 UH for everyone).
#[tokio::test]
async fn malformed_request_bodies_are_the_clients_fault_not_the_endpoints() {
    use tokio::io::AsyncReadExt;
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let vs = VS.replace("  - route:", "  - retries: {attempts: 3, retryOn: \"reset,connect-failure,5xx\"}\n    route:");
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs, EJECT_AT_ONCE])).await;
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        tcp.write_all(b"POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await
            .unwrap();
        tcp.write_all(b"zz-not-a-chunk-size\r\n\r\n").await.unwrap();
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer)).await.unwrap().unwrap_or(0);
        let head = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(n == 0 || head.starts_with("HTTP/1.1 400"), "the client is told its request was bad: {head}");
    }
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK, "the endpoint was not ejected");
    let blamed = gw.find_log(|l| l["response_flags"] == "DPE").await;
    assert_eq!(blamed["response_code"], 400, "{blamed}");
    assert_eq!(up.hits(), 4, "no retry resent a broken body; the good request arrived");
}

/// A client that goes away in the middle of its request body is logged as DC
/// (downstream connection terminated), and the endpoint is not blamed either.
#[tokio::test]
async fn a_client_that_leaves_mid_body_is_dc_and_the_endpoint_is_not_blamed() {
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, VS, EJECT_AT_ONCE])).await;
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        tcp.write_all(b"POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel").await.unwrap();
        drop(tcp);
        let gone = gw.find_log(|l| l["response_flags"] != "-").await;
        assert_eq!(gone["response_flags"], "DC", "{gone}");
    }
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK, "the endpoint was not ejected");
}
