//! Kubernetes objects as the service registry and credential store: Services with
//! their EndpointSlices and Pods, and Secrets, here from the config directory.

use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use wicket_tests::{
    client::{self, send_tls},
    yaml::{docs, endpoint_slice, kube_service, pod, subsets, GATEWAY},
    Pki, TestGateway, Upstream,
};

const REVIEWS_VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.test]
  gateways: [gw]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2, port: {number: 9080}}}]
  - route: [{destination: {host: reviews.default.svc.cluster.local, subset: v1}}]
";

/// The Pods as `kubectl get pods -o yaml` prints them: one List.
fn pods_list() -> String {
    let indent =
        |doc: String| doc.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n").replacen("  ", "- ", 1);
    format!(
        "apiVersion: v1\nkind: List\nmetadata: {{resourceVersion: \"\"}}\nitems:\n{}\n{}\n",
        indent(pod("reviews-v1-abc", &[("app", "reviews"), ("version", "v1")])),
        indent(pod("reviews-v2-def", &[("app", "reviews"), ("version", "v2")])),
    )
}

#[tokio::test]
async fn a_kubernetes_service_routes_to_ready_endpoints_with_subsets_from_pod_labels() {
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let slices = |v1_ready: bool| {
        docs(&[
            &endpoint_slice("reviews-a", "reviews", "http", v1.addr.port(), &[("reviews-v1-abc", v1_ready)]),
            &endpoint_slice("reviews-b", "reviews", "http", v2.addr.port(), &[("reviews-v2-def", true)]),
            // Not ready: never sent traffic, although its Pod is a v1.
            &endpoint_slice("reviews-c", "reviews", "http", 1, &[("reviews-v1-abc", false)]),
        ])
    };
    let config = docs(&[
        GATEWAY,
        &kube_service("reviews", 9080, "http"),
        &pods_list(),
        &subsets("reviews.default.svc.cluster.local", &["v1", "v2"]),
        REVIEWS_VS,
    ]);
    let mut gw = TestGateway::start(&docs(&[&config, &slices(true)])).await;
    for _ in 0..4 {
        assert_eq!(gw.get("reviews.test", "/").await.body, "v1");
    }
    let mut jason = client::get("reviews.test", "/");
    jason.headers_mut().insert("end-user", "jason".parse().unwrap());
    assert_eq!(gw.send(jason).await.body, "v2");

    // The v1 endpoint stops being ready: subset v1 has no endpoint left.
    gw.write("config.yaml", &docs(&[&config, &slices(false)])).await;
    let resp = gw.get("reviews.test", "/").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    let log = gw.find_log(|l| l["response_flags"] == "UH").await;
    assert_eq!(log["upstream_cluster"], "outbound|9080|v1|reviews.default.svc.cluster.local", "{log}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("destination_service=\"reviews.default.svc.cluster.local\""),
        "Istio's labels name the Kubernetes service"
    );
}

#[tokio::test]
async fn an_external_name_service_is_a_dns_name() {
    let up = Upstream::start("outside").await;
    let svc = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: legacy, namespace: default}}
spec:
  type: ExternalName
  externalName: localhost
  ports: [{{name: http, port: {}}}]
",
        up.addr.port()
    );
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.test]
  gateways: [gw]
  http: [{route: [{destination: {host: legacy}}]}]
";
    let gw = TestGateway::start(&docs(&[GATEWAY, &svc, vs])).await;
    assert_eq!(gw.get("legacy.test", "/").await.body, "outside");
}

fn tls_secret(name: &str, leaf: &wicket_tests::pki::Leaf) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: default}}
type: kubernetes.io/tls
data:
  tls.crt: {}
  tls.key: {}
",
        b64(&leaf.cert_pem),
        b64(&leaf.key_pem)
    )
}

#[tokio::test]
async fn a_credential_name_reads_a_secret_of_the_config_and_follows_its_rotation() {
    let pki = Pki::default();
    let up = Upstream::start("a").await;
    let gateway = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [a.test]
    tls: {mode: SIMPLE, credentialName: a-cert}
";
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: default}
spec:
  hosts: [a.test]
  gateways: [gw]
  http: [{route: [{destination: {host: a}}]}]
";
    let rest = docs(&[
        gateway,
        vs,
        &kube_service("a", 80, "http"),
        &endpoint_slice("a", "a", "http", up.addr.port(), &[("a-1", true)]),
    ]);
    let first = pki.leaf(&["a.test"]);
    let mut gw = TestGateway::start(&docs(&[&rest, &tls_secret("a-cert", &first)])).await;
    let serial = |der: &[u8]| x509_parser::parse_x509_certificate(der).unwrap().1.raw_serial().to_vec();
    let (resp, _, leaf) =
        send_tls(gw.addr_of(443), "a.test", pki.client(&[], None), client::get("a.test", "/")).await.unwrap();
    assert_eq!(resp.body, "a");
    let first_serial = serial(&leaf);

    // A Secret with a key that does not match its certificate: the old pair serves.
    let (one, other) = (pki.leaf(&["a.test"]), pki.leaf(&["a.test"]));
    let mismatched = wicket_tests::pki::Leaf { cert_pem: one.cert_pem, key_pem: other.key_pem };
    gw.write("config.yaml", &docs(&[&rest, &tls_secret("a-cert", &mismatched)])).await;
    let (_, _, leaf) =
        send_tls(gw.addr_of(443), "a.test", pki.client(&[], None), client::get("a.test", "/")).await.unwrap();
    assert_eq!(serial(&leaf), first_serial, "a bad pair keeps the previous certificate");

    let rotated = pki.leaf(&["a.test"]);
    gw.write("config.yaml", &docs(&[&rest, &tls_secret("a-cert", &rotated)])).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, leaf) =
            send_tls(gw.addr_of(443), "a.test", pki.client(&[], None), client::get("a.test", "/")).await.unwrap();
        if serial(&leaf) != first_serial {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rotated Secret was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
