//! Hot reload: good changes apply, bad ones keep the last good version serving, and
//! reloads under load fail no request.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use wicket_tests::{
    client,
    pki::Pki,
    yaml::{docs, service_entry, GATEWAY},
    TestGateway, Upstream,
};

fn vs(name: &str, host: &str, extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  gateways: [gw]
  http:
  - {extra}route: [{{destination: {{host: api}}}}]
"
    )
}

#[tokio::test]
async fn a_good_change_applies_and_a_bad_one_keeps_the_last_good_version() {
    let up = Upstream::start("api").await;
    let base = docs(&[GATEWAY, &service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")])]);
    let mut gw = TestGateway::start(&base).await;
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::NOT_FOUND);

    gw.write("a.yaml", &vs("a", "a.test", "")).await;
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK);

    // A typo rejects this VirtualService alone; its last good version keeps serving.
    gw.write("a.yaml", &vs("a", "a.test", "retries: {attempts: 2, retryon: 5xx}\n    ")).await;
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK);
    let snapshot = gw.gateway.snapshot();
    let d = snapshot
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .find(|d| d.contains("retryon"))
        .expect("the typo is reported");
    assert!(
        d.contains("a.yaml:") && d.contains("VirtualService/default/a") && d.contains("did you mean `retryOn`"),
        "{d}"
    );

    // Malformed YAML in another file does not disturb anything either.
    gw.write("broken.yaml", "kind: [\n").await;
    assert_eq!(gw.get("a.test", "/").await.status, StatusCode::OK);

    // Other resources still apply in the same reload.
    gw.write("b.yaml", &vs("b", "b.test", "")).await;
    assert_eq!(gw.get("b.test", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn listeners_open_and_close_with_gateway_servers() {
    let up = Upstream::start("api").await;
    let base = docs(&[
        GATEWAY,
        &service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]),
        &vs("a", "a.test", ""),
    ]);
    let mut gw = TestGateway::start(&base).await;
    assert!(gw.gateway.listener_addr(8080).is_none());
    let second = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
  - port: {number: 8080, name: http2, protocol: HTTP}
    hosts: [\"*\"]
";
    std::fs::write(
        gw.dir().join("config.yaml"),
        docs(&[
            second,
            &service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]),
            &vs("a", "a.test", ""),
        ]),
    )
    .unwrap();
    gw.wait_for_reload().await;
    let extra = gw.gateway.listener_addr(8080).expect("port 8080 opened");
    let r = wicket_tests::client::send(extra, wicket_tests::client::get("a.test", "/")).await;
    assert_eq!(r.status, StatusCode::OK);
    gw.write("config.yaml", &base).await;
    assert!(gw.gateway.listener_addr(8080).is_none());
    assert!(tokio::net::TcpStream::connect(extra).await.is_err(), "port 8080 closed");
}

/// One load worker's count of requests sent and failed.
type Tally = (u64, u64);

/// Requests on one keep-alive HTTP/1.1 connection until `stop`; any error or non-200 counts as failed.
async fn keep_alive_load(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Tally {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (mut sent, mut failed) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        sent += 1;
        let ok = match sender.send_request(client::get("a.test", "/")).await {
            Ok(r) => r.status() == StatusCode::OK && r.into_body().collect().await.is_ok(),
            Err(_) => false,
        };
        failed += u64::from(!ok);
    }
    (sent, failed)
}

#[tokio::test]
async fn a_hundred_reloads_under_load_fail_no_request() {
    let up = Upstream::start("api").await;
    let pki = Pki::default();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(&["a.test"]).write(certs.path(), "tls");
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let config = |generation: usize| {
        // Odd generations add a listener on 8080; every one changes the route.
        let extra = if generation % 2 == 1 {
            "  - port: {number: 8080, name: extra, protocol: HTTP}\n    hosts: [\"*\"]\n"
        } else {
            ""
        };
        let gateway = format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [\"*\"]
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [a.test]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
{extra}"
        );
        let route =
            vs("a", "a.test", &format!("headers: {{response: {{set: {{x-generation: \"{generation}\"}}}}}}\n    "));
        docs(&[&gateway, &se, &route])
    };
    let mut gw = TestGateway::start(&config(0)).await;
    let (plain, tls) = (gw.addr(), gw.addr_of(443));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(tokio::spawn(keep_alive_load(plain, stop.clone())));
    }
    let (s, client_tls) = (stop.clone(), pki.client(&["h2", "http/1.1"], None));
    // New TLS connections throughout, so handshakes meet certificate rotations.
    workers.push(tokio::spawn(async move {
        let (mut sent, mut failed) = (0, 0);
        while !s.load(Ordering::Relaxed) {
            sent += 1;
            let r = client::send_tls(tls, "a.test", client_tls.clone(), client::get("a.test", "/")).await;
            failed += u64::from(!r.is_ok_and(|(r, ..)| r.status == StatusCode::OK));
        }
        (sent, failed)
    }));
    for generation in 1..=100 {
        if generation % 10 == 0 {
            pki.leaf(&["a.test"]).write(certs.path(), "tls");
        }
        gw.write("config.yaml", &config(generation)).await;
    }
    assert_eq!(gw.get("a.test", "/").await.header("x-generation"), Some("100"), "the last route is in force");
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed) = (0, 0);
    for w in workers {
        let (s, f) = w.await.unwrap();
        sent += s;
        failed += f;
    }
    eprintln!("100 reloads under load: {sent} requests sent, {failed} failed");
    assert!(sent > 100, "the load ran throughout: {sent}");
    assert_eq!(failed, 0, "no request failed across 100 reloads ({sent} sent)");
}
