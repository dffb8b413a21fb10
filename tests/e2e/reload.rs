//! Hot reload: good changes apply, bad ones keep the last good version serving.

use http::StatusCode;
use wicket_tests::{
    yaml::{docs, service_entry, GATEWAY},
    TestGateway, Upstream,
};

fn vs(name: &str, host: &str, extra: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{host}]\n  gateways: [gw]\n  http:\n  - {extra}route: [{{destination: {{host: api}}}}]\n")
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
    let second = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n  - port: {number: 8080, name: http2, protocol: HTTP}\n    hosts: [\"*\"]\n";
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
