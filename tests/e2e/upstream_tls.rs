//! TLS towards upstreams from DestinationRule `trafficPolicy.tls`: SIMPLE and MUTUAL,
//! SNI (configured or the request's host), `subjectAltNames`, HTTP/2 via ALPN, and
//! port- and subset-level overrides.

use http::StatusCode;
use wicket_tests::{
    yaml::{docs, service_entry, GATEWAY},
    Pki, TestGateway, Upstream,
};

fn vs(dest: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs}}
spec:
  hosts: [api.test]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: {dest}}}}}]
"
    )
}

fn dr(tls: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr}}\nspec:\n  host: backend\n  trafficPolicy:\n    tls: {tls}\n")
}

fn backend(up: &Upstream, protocol: &str) -> String {
    service_entry("backend.default.svc.cluster.local", 443, protocol, &[(up, "v1")])
}

#[tokio::test]
async fn simple_tls_with_a_configured_ca_and_sni() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("backend ca");
    let up = Upstream::tls("backend", pki.server(&["backend.internal"])).await;
    let ca = pki.write_ca(dir.path(), "ca");
    let tls = format!("{{mode: SIMPLE, caCertificates: {ca}, sni: backend.internal}}");
    let gw = TestGateway::start(&docs(&[GATEWAY, &backend(&up, "HTTPS"), &dr(&tls), &vs("backend")])).await;
    for _ in 0..3 {
        assert_eq!(gw.get("api.test", "/").await.body, "backend");
    }
    let hs = up.handshakes();
    assert_eq!(hs[0].sni.as_deref(), Some("backend.internal"));
    assert_eq!(hs.len(), 1, "the TLS connection is pooled");
    assert_eq!(up.last().authority, "api.test", "Host is kept");
}

#[tokio::test]
async fn without_sni_the_request_host_is_sent_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("backend ca");
    let up = Upstream::tls("backend", pki.server(&["api.test"])).await;
    let ca = pki.write_ca(dir.path(), "ca");
    let gw = TestGateway::start(&docs(&[
        GATEWAY,
        &backend(&up, "HTTPS"),
        &dr(&format!("{{mode: SIMPLE, caCertificates: {ca}}}")),
        &vs("backend"),
    ]))
    .await;
    assert_eq!(gw.get("api.test", "/").await.body, "backend");
    assert_eq!(up.handshakes()[0].sni.as_deref(), Some("api.test"));
}

#[tokio::test]
async fn a_server_certificate_failing_verification_is_a_503_connect_failure() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("backend ca");
    let up = Upstream::tls("backend", pki.server(&["backend.internal"])).await;
    let ca = pki.write_ca(dir.path(), "ca");
    let wrong_name =
        format!("{{mode: SIMPLE, caCertificates: {ca}, sni: backend.internal, subjectAltNames: [other.internal]}}");
    let gw = TestGateway::start(&docs(&[GATEWAY, &backend(&up, "HTTPS"), &dr(&wrong_name), &vs("backend")])).await;
    assert_eq!(gw.get("api.test", "/").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(gw.next_log().await["response_flags"].as_str().unwrap().contains("UF"));
    assert_eq!(up.hits(), 0);
    // The same upstream with a matching SAN is accepted.
    let matching =
        format!("{{mode: SIMPLE, caCertificates: {ca}, sni: backend.internal, subjectAltNames: [backend.internal]}}");
    let mut gw = gw;
    gw.write("config.yaml", &docs(&[GATEWAY, &backend(&up, "HTTPS"), &dr(&matching), &vs("backend")])).await;
    assert_eq!(gw.get("api.test", "/").await.body, "backend");
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = Pki::new("backend ca");
    let client_pki = Pki::new("gateway client ca");
    let up =
        Upstream::tls("backend", server_pki.server_with(&["backend.internal"], Some(&client_pki), &["http/1.1"])).await;
    let ca = server_pki.write_ca(dir.path(), "ca");
    let (cert, key) = client_pki.leaf(&["spiffe://cluster.local/ns/default/sa/gateway"]).write(dir.path(), "client");
    let tls = format!(
        "{{mode: MUTUAL, caCertificates: {ca}, sni: backend.internal, clientCertificate: {cert}, privateKey: {key}}}"
    );
    let gw = TestGateway::start(&docs(&[GATEWAY, &backend(&up, "HTTPS"), &dr(&tls), &vs("backend")])).await;
    assert_eq!(gw.get("api.test", "/").await.body, "backend");
    assert!(up.handshakes()[0].client_cert);
}

#[tokio::test]
async fn http2_upstreams_negotiate_h2_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("backend ca");
    let up = Upstream::tls("grpc-backend", pki.server(&["backend.internal"])).await;
    let ca = pki.write_ca(dir.path(), "ca");
    let tls = format!("{{mode: SIMPLE, caCertificates: {ca}, sni: backend.internal}}");
    let gw = TestGateway::start(&docs(&[GATEWAY, &backend(&up, "GRPC"), &dr(&tls), &vs("backend")])).await;
    assert_eq!(gw.get("api.test", "/").await.body, "grpc-backend");
    assert_eq!(up.handshakes()[0].alpn.as_deref(), Some("h2"));
}

#[tokio::test]
async fn port_level_and_subset_settings_replace_the_top_level_block() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("backend ca");
    let tls_up = Upstream::tls("tls", pki.server(&["backend.internal"])).await;
    let plain_up = Upstream::start("plain").await;
    let ca = pki.write_ca(dir.path(), "ca");
    let se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend}}
spec:
  hosts: [backend.default.svc.cluster.local]
  resolution: STATIC
  ports:
  - {{number: 443, name: https, protocol: HTTPS}}
  - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
  - {{address: 127.0.0.1, ports: {{https: {}, http: {}}}, labels: {{version: v1}}}}
",
        tls_up.addr.port(),
        plain_up.addr.port()
    );
    let rule = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr}}
spec:
  host: backend
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {ca}, sni: backend.internal}}
    portLevelSettings:
    - port: {{number: 80}}
      loadBalancer: {{simple: ROUND_ROBIN}}
  subsets:
  - name: plain
    labels: {{version: v1}}
    trafficPolicy: {{tls: {{mode: DISABLE}}}}
"
    );
    let routes = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: [api.test]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /tls}}]
    route: [{destination: {host: backend, port: {number: 443}}}]
  - match: [{uri: {prefix: /port80}}]
    route: [{destination: {host: backend, port: {number: 80}}}]
  - route: [{destination: {host: backend, subset: plain, port: {number: 80}}}]
";
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &rule, routes])).await;
    assert_eq!(gw.get("api.test", "/tls").await.body, "tls");
    // The port-80 entry has no tls block: it resets tls to the default (plaintext).
    assert_eq!(gw.get("api.test", "/port80").await.body, "plain");
    assert_eq!(gw.get("api.test", "/other").await.body, "plain");
}

#[test]
fn destination_rules_with_unusable_tls_files_are_rejected_by_name() {
    let cfg = tempfile::tempdir().unwrap();
    std::fs::write(
        cfg.path().join("dr.yaml"),
        dr("{mode: MUTUAL, clientCertificate: /missing/c.pem, privateKey: /missing/k.pem}"),
    )
    .unwrap();
    let bootstrap = wicket::config::Bootstrap { config_dir: Some(cfg.path().into()), ..Default::default() };
    let problems: Vec<String> = wicket::validate(&bootstrap).unwrap().iter().map(ToString::to_string).collect();
    assert!(
        problems.iter().any(
            |p| p.contains("DestinationRule/default/dr: spec.trafficPolicy.tls: error: cannot read /missing/c.pem")
        ),
        "{problems:#?}"
    );
}
