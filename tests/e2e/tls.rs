//! TLS at the edge: termination with SNI selection, ALPN, mutual TLS, versions,
//! passthrough, TCP, certificate rotation, and interoperability with curl.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wicket_tests::{
    client::{self, send_tls},
    yaml::{docs, service_entry},
    Pki, TestGateway, Upstream,
};

fn get(host: &str) -> Request<Full<Bytes>> {
    client::get(host, "/")
}

fn server(name: &str, hosts: &str, tls: &str) -> String {
    format!("  - port: {{number: 443, name: {name}, protocol: HTTPS}}\n    hosts: [{hosts}]\n    tls: {tls}\n")
}

fn gateway(servers: &[String]) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{}",
        servers.concat()
    )
}

fn vs(name: &str, host: &str, dest: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [\"{host}\"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: {dest}}}}}]
"
    )
}

fn simple(dir: &Path, pki: &Pki, stem: &str, names: &[&str]) -> String {
    let (cert, key) = pki.leaf(names).write(dir, stem);
    format!("{{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}")
}

fn leaf_cn(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
    cn
}

#[tokio::test]
async fn sni_selects_among_three_servers_and_unknown_names_fail() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let (a, b, c) = (Upstream::start("a").await, Upstream::start("b").await, Upstream::start("c").await);
    let reg = docs(&[
        &service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&a, "v1")]),
        &service_entry("b.default.svc.cluster.local", 80, "HTTP", &[(&b, "v1")]),
        &service_entry("c.default.svc.cluster.local", 80, "HTTP", &[(&c, "v1")]),
    ]);
    let gw_yaml = gateway(&[
        server("https-a", "a.test", &simple(dir.path(), &pki, "a", &["a.test"])),
        server("https-b", "b.test", &simple(dir.path(), &pki, "b", &["b.test"])),
        server("https-c", "\"*.c.test\"", &simple(dir.path(), &pki, "c", &["*.c.test"])),
    ]);
    let gw = TestGateway::start(&docs(&[
        &gw_yaml,
        &reg,
        &vs("a", "a.test", "a"),
        &vs("b", "b.test", "b"),
        &vs("c", "*.c.test", "c"),
    ]))
    .await;
    let addr = gw.addr_of(443);
    let cfg = pki.client(&["http/1.1"], None);
    for (sni, body, cn) in [("a.test", "a", "a.test"), ("b.test", "b", "b.test"), ("x.c.test", "c", "*.c.test")] {
        let (resp, _, leaf) = send_tls(addr, sni, cfg.clone(), get(sni)).await.unwrap();
        assert_eq!((resp.body.as_str(), leaf_cn(&leaf).as_str()), (body, cn));
    }
    assert!(send_tls(addr, "unknown.test", cfg.clone(), get("unknown.test")).await.is_err());
    // A request for b.test on a.test's connection is misdirected (HTTP/2 reuse).
    let (resp, _, _) = send_tls(addr, "a.test", cfg, get("b.test")).await.unwrap();
    assert_eq!(resp.status, StatusCode::MISDIRECTED_REQUEST);
    // Plaintext on a TLS port closes that connection alone.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut out)).await;
    assert!(out.is_empty());
}

#[tokio::test]
async fn alpn_h2_is_negotiated_and_scheme_is_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let up = Upstream::start("a").await;
    let gw_yaml = gateway(&[server("https", "a.test", &simple(dir.path(), &pki, "a", &["a.test"]))]);
    let reg = service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[&gw_yaml, &reg, &vs("a", "a.test", "a")])).await;
    let (resp, alpn, _) =
        send_tls(gw.addr_of(443), "a.test", pki.client(&["h2", "http/1.1"], None), get("a.test")).await.unwrap();
    assert_eq!((alpn.as_deref(), resp.body.as_str()), (Some(&b"h2"[..]), "a"));
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn mutual_tls_accepts_clients_of_the_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let stranger = Pki::new("another ca");
    let up = Upstream::start("a").await;
    let (cert, key) = pki.leaf(&["a.test", "o.test"]).write(dir.path(), "a");
    let ca = pki.write_ca(dir.path(), "ca");
    let mutual = format!("{{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}}}");
    let optional =
        format!("{{mode: OPTIONAL_MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}}}");
    let gw_yaml = gateway(&[server("m", "a.test", &mutual), server("o", "o.test", &optional)]);
    let reg = service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[&gw_yaml, &reg, &vs("a", "a.test", "a"), &vs("o", "o.test", "a")])).await;
    let addr = gw.addr_of(443);
    let good = pki.leaf(&["spiffe://cluster.local/ns/default/sa/client"]);
    let (resp, _, _) = send_tls(addr, "a.test", pki.client(&[], Some(&good)), get("a.test")).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    // TLS 1.3: the client learns of the rejection when it reads.
    assert!(send_tls(addr, "a.test", pki.client(&[], None), get("a.test")).await.is_err(), "no client certificate");
    let wrong = stranger.leaf(&["spiffe://elsewhere/client"]);
    assert!(send_tls(addr, "a.test", pki.client(&[], Some(&wrong)), get("a.test")).await.is_err(), "wrong CA");
    // OPTIONAL_MUTUAL lets clients without a certificate in.
    let (resp, _, _) = send_tls(addr, "o.test", pki.client(&[], None), get("o.test")).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
}

#[tokio::test]
async fn a_tls_1_3_only_server_refuses_tls_1_2_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let up = Upstream::start("a").await;
    let (cert, key) = pki.leaf(&["a.test"]).write(dir.path(), "a");
    let tls = format!("{{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}, minProtocolVersion: TLSV1_3}}");
    let reg = service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw =
        TestGateway::start(&docs(&[&gateway(&[server("h", "a.test", &tls)]), &reg, &vs("a", "a.test", "a")])).await;
    let tls12 = pki.client_with_versions(&[], None, &[&rustls::version::TLS12]);
    assert!(send_tls(gw.addr_of(443), "a.test", tls12, get("a.test")).await.is_err());
    let tls13 = pki.client_with_versions(&[], None, &[&rustls::version::TLS13]);
    assert!(send_tls(gw.addr_of(443), "a.test", tls13, get("a.test")).await.is_ok());
}

#[tokio::test]
async fn credential_name_reads_a_kubernetes_style_secret_directory() {
    wicket_tests::require_corpus!();
    let creds = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let secret = creds.path().join("default/httpbin-credential");
    std::fs::create_dir_all(&secret).unwrap();
    let leaf = pki.leaf(&["httpbin.example.com"]);
    std::fs::write(secret.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(secret.join("tls.key"), &leaf.key_pem).unwrap();
    let httpbin = Upstream::start("httpbin").await;
    let corpus = wicket_tests::corpus("docs-ingress/secure-ingress-simple-single-host.yaml");
    let reg = service_entry("httpbin.default.svc.cluster.local", 8000, "HTTP", &[(&httpbin, "v1")]);
    let dir = creds.path().to_path_buf();
    let gw = TestGateway::start_with(&docs(&[&corpus, &reg]), |b| b.credentials_dir = dir).await;
    let req = client::get("httpbin.example.com", "/status/418");
    let (resp, alpn, _) =
        send_tls(gw.addr_of(443), "httpbin.example.com", pki.client(&["h2", "http/1.1"], None), req).await.unwrap();
    assert_eq!((resp.status.as_u16(), alpn.as_deref()), (418, Some(&b"h2"[..])));
}

#[tokio::test]
async fn rotated_certificates_serve_new_handshakes_and_broken_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let up = Upstream::start("a").await;
    let first = pki.leaf_with(&["a.test"], |p| p.distinguished_name.push(rcgen::DnType::OrganizationName, "first"));
    let (cert, key) = first.write(dir.path(), "a");
    let tls = format!("{{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}");
    let reg = service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw =
        TestGateway::start(&docs(&[&gateway(&[server("h", "a.test", &tls)]), &reg, &vs("a", "a.test", "a")])).await;
    let addr = gw.addr_of(443);
    // A fresh client each time: a resumed TLS 1.3 session would not show the certificate.
    let cfg = || pki.client(&[], None);
    let org = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        let org = c.subject().iter_organization().next().map(|o| o.as_str().unwrap().to_string());
        org
    };
    let (_, _, leaf) = send_tls(addr, "a.test", cfg(), get("a.test")).await.unwrap();
    assert_eq!(org(&leaf).as_deref(), Some("first"));
    // A connection opened before the rotation keeps working after it.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let open = tokio_rustls::TlsConnector::from(cfg()).connect(name, tcp).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(open)).await.unwrap();
    tokio::spawn(conn);

    // A broken pair (key of another certificate) is refused; the old one keeps serving.
    let other = pki.leaf(&["a.test"]);
    std::fs::write(&key, &other.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, _, leaf) = send_tls(addr, "a.test", cfg(), get("a.test")).await.unwrap();
    assert_eq!(org(&leaf).as_deref(), Some("first"));

    let second = pki.leaf_with(&["a.test"], |p| p.distinguished_name.push(rcgen::DnType::OrganizationName, "second"));
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        let (_, _, leaf) = send_tls(addr, "a.test", cfg(), get("a.test")).await.unwrap();
        if org(&leaf).as_deref() == Some("second") {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "new handshakes use the rotated certificate");
    let resp = sender.send_request(get("a.test")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the connection opened before the rotation still serves");
}

#[tokio::test]
async fn passthrough_routes_by_sni_to_a_tls_upstream() {
    wicket_tests::require_corpus!();
    let upstream_pki = Pki::new("upstream ca");
    let acceptor = tokio_rustls::TlsAcceptor::from(upstream_pki.server(&["nginx.example.com"]));
    let port = wicket_tests::upstream::raw(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(s).await else { return };
            let mut buf = [0u8; 1024];
            let _ = tls.read(&mut buf).await;
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nnginx").await;
            let _ = tls.shutdown().await;
        }
    })
    .await;
    let se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: my-nginx}}
spec:
  hosts: [my-nginx.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  endpoints: [{{address: 127.0.0.1, ports: {{https: {port}}}}}]
"
    );
    let corpus = wicket_tests::corpus("docs-ingress/sni-passthrough-nginx.yaml");
    let gw = TestGateway::start(&docs(&[&corpus, &se])).await;
    let (resp, _, leaf) =
        send_tls(gw.addr_of(443), "nginx.example.com", upstream_pki.client(&[], None), get("nginx.example.com"))
            .await
            .unwrap();
    assert_eq!(resp.body, "nginx");
    assert_eq!(leaf_cn(&leaf), "nginx.example.com", "the client sees the upstream's own certificate");
    let log = gw.next_log().await;
    assert_eq!(
        (log["protocol"].as_str(), log["requested_server_name"].as_str()),
        (Some("TCP"), Some("nginx.example.com"))
    );
    assert!(log["bytes_sent"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn tcp_servers_route_by_port_with_weights() {
    let port = wicket_tests::upstream::tcp_echo().await;
    let yaml = wicket_tests::yaml::tcp_gateway(port);
    let gw = TestGateway::start(&yaml).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr_of(9000)).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello");
    drop(s);
    let log = gw.next_log().await;
    assert_eq!((log["bytes_received"].as_u64(), log["bytes_sent"].as_u64()), (Some(5), Some(5)));
    let metrics = gw.metrics().await;
    for family in ["istio_tcp_connections_opened_total{", "istio_tcp_connections_closed_total{"] {
        assert!(metrics.lines().any(|l| l.starts_with(family) && l.ends_with(" 1")), "{family}: {metrics}");
    }
    assert!(metrics.lines().any(|l| l.starts_with("istio_tcp_sent_bytes_total{")
        && l.contains("request_protocol=\"tcp\"")
        && l.ends_with(" 5")));
}

#[tokio::test]
async fn curl_talks_https_and_http2_to_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let up = Upstream::start("via-curl").await;
    let gw_yaml = gateway(&[server("https", "a.test", &simple(dir.path(), &pki, "a", &["a.test"]))]);
    let reg = service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[&gw_yaml, &reg, &vs("a", "a.test", "a")])).await;
    let ca = pki.write_ca(dir.path(), "ca");
    let port = gw.addr_of(443).port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert", &ca, "--resolve", &format!("a.test:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version} %{http_code}", &format!("https://a.test:{port}/")])
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "via-curl\n2 200", "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn validate_reports_missing_mismatched_and_expired_files() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let (cert, _) = pki.leaf(&["a.test"]).write(dir.path(), "a");
    let (_, other_key) = pki.leaf(&["a.test"]).write(dir.path(), "other");
    let expired = pki.leaf_with(&["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    let (old_cert, old_key) = expired.write(dir.path(), "old");
    let servers = [
        server(
            "missing",
            "m.test",
            "{mode: SIMPLE, serverCertificate: /nonexistent/tls.crt, privateKey: /nonexistent/tls.key}",
        ),
        server("mismatch", "x.test", &format!("{{mode: SIMPLE, serverCertificate: {cert}, privateKey: {other_key}}}")),
        server(
            "expired",
            "old.test",
            &format!("{{mode: SIMPLE, serverCertificate: {old_cert}, privateKey: {old_key}}}"),
        ),
    ];
    let cfg = tempfile::tempdir().unwrap();
    std::fs::write(cfg.path().join("gw.yaml"), gateway(&servers)).unwrap();
    let bootstrap = wicket::config::Bootstrap { config_dir: Some(cfg.path().into()), ..Default::default() };
    let problems: Vec<String> =
        wicket::validate(&bootstrap).unwrap().iter().filter(|d| d.is_error()).map(ToString::to_string).collect();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].contains("Gateway/default/gw: spec.servers[0].tls") && problems[0].contains("/nonexistent/tls.crt")
    );
    assert!(problems[1].contains("does not match"), "{}", problems[1]);
    assert!(problems[2].contains("not valid now"), "{}", problems[2]);
}

#[tokio::test]
async fn verified_client_certificates_reach_the_upstream_as_xfcc_and_pins_apply() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let up = Upstream::start("a").await;
    let (cert, key) = pki.leaf(&["a.test", "p.test", "r.test"]).write(dir.path(), "a");
    let ca = pki.write_ca(dir.path(), "ca");
    let revoked = pki.leaf_with(&["spiffe://cluster.local/ns/default/sa/revoked"], |p| {
        p.serial_number = Some(rcgen::SerialNumber::from(4242u64))
    });
    std::fs::write(dir.path().join("ca.crl"), pki.crl(&[4242])).unwrap();
    let crl = dir.path().join("ca.crl").display().to_string();
    let base = format!("mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}");
    let servers = [
        server("m", "a.test", &format!("{{{base}}}")),
        server("p", "p.test", &format!("{{{base}, subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/good\"]}}")),
        server("r", "r.test", &format!("{{{base}, caCrl: {crl}}}")),
    ];
    let reg = service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[
        &gateway(&servers),
        &reg,
        &vs("a", "a.test", "a"),
        &vs("p", "p.test", "a"),
        &vs("r", "r.test", "a"),
    ]))
    .await;
    let addr = gw.addr_of(443);
    let good = pki.leaf(&["spiffe://cluster.local/ns/default/sa/good"]);
    let other = pki.leaf(&["spiffe://cluster.local/ns/default/sa/other"]);

    let mut forged = get("a.test");
    forged.headers_mut().insert("x-forwarded-client-cert", "URI=spiffe://forged".parse().unwrap());
    send_tls(addr, "a.test", pki.client(&[], Some(&good)), forged).await.unwrap();
    let xfcc = up.last().headers["x-forwarded-client-cert"].to_str().unwrap().to_string();
    assert!(xfcc.starts_with("Hash=") && xfcc.contains(";URI=spiffe://cluster.local/ns/default/sa/good"), "{xfcc}");
    assert!(!xfcc.contains("forged"));

    // subjectAltNames pins the client identity.
    assert!(send_tls(addr, "p.test", pki.client(&[], Some(&good)), get("p.test")).await.is_ok());
    assert!(send_tls(addr, "p.test", pki.client(&[], Some(&other)), get("p.test")).await.is_err());
    // caCrl refuses a revoked client certificate.
    assert!(send_tls(addr, "r.test", pki.client(&[], Some(&good)), get("r.test")).await.is_ok());
    assert!(send_tls(addr, "r.test", pki.client(&[], Some(&revoked)), get("r.test")).await.is_err());

    // Plaintext clients cannot inject an identity either.
    let plain = docs(&[wicket_tests::yaml::GATEWAY, &reg, &vs("a", "a.test", "a")]);
    let gw2 = TestGateway::start(&plain).await;
    let mut req = get("a.test");
    req.headers_mut().insert("x-forwarded-client-cert", "URI=spiffe://forged".parse().unwrap());
    gw2.send(req).await;
    assert!(up.last().headers.get("x-forwarded-client-cert").is_none());
}

/// A client that can only verify Ed25519 handshake signatures.
fn ed25519_only_client(pki: &Pki) -> std::sync::Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    let algs = provider.signature_verification_algorithms;
    let mapping: Vec<_> =
        algs.mapping.iter().filter(|(s, _)| *s == rustls::SignatureScheme::ED25519).cloned().collect();
    provider.signature_verification_algorithms =
        rustls::crypto::WebPkiSupportedAlgorithms { all: algs.all, mapping: Box::leak(mapping.into_boxed_slice()) };
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider.into())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

#[tokio::test]
async fn credential_names_offer_the_pair_the_client_can_verify() {
    let creds = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    for (name, leaf) in [("ecdsa-cred", pki.leaf(&["a.test"])), ("ed25519-cred", pki.leaf_ed25519(&["a.test"]))] {
        let dir = creds.path().join("default").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
    }
    let up = Upstream::start("a").await;
    let tls = "{mode: SIMPLE, credentialNames: [ecdsa-cred, ed25519-cred]}";
    let reg = service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let dir = creds.path().to_path_buf();
    let gw = TestGateway::start_with(
        &docs(&[&gateway(&[server("h", "a.test", tls)]), &reg, &vs("a", "a.test", "a")]),
        |b| b.credentials_dir = dir,
    )
    .await;
    let key_alg = |der: &[u8]| {
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        let oid = c.public_key().algorithm.algorithm.to_id_string();
        oid
    };
    let (_, _, leaf) = send_tls(gw.addr_of(443), "a.test", pki.client(&[], None), get("a.test")).await.unwrap();
    assert_eq!(key_alg(&leaf), "1.2.840.10045.2.1", "ECDSA for a client that verifies anything");
    let (_, _, leaf) = send_tls(gw.addr_of(443), "a.test", ed25519_only_client(&pki), get("a.test")).await.unwrap();
    assert_eq!(key_alg(&leaf), "1.3.101.112", "Ed25519 for an Ed25519-only client");
}

#[tokio::test]
async fn insecure_skip_verify_lets_unverified_client_certificates_through() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let stranger = Pki::new("another ca");
    let up = Upstream::start("a").await;
    let (cert, key) = pki.leaf(&["a.test"]).write(dir.path(), "a");
    let ca = pki.write_ca(dir.path(), "ca");
    let tls = format!("{{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}, insecureSkipVerify: true}}");
    let reg = service_entry("a.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw =
        TestGateway::start(&docs(&[&gateway(&[server("h", "a.test", &tls)]), &reg, &vs("a", "a.test", "a")])).await;
    let wrong = stranger.leaf(&["spiffe://elsewhere/client"]);
    let (resp, _, _) = send_tls(gw.addr_of(443), "a.test", pki.client(&[], Some(&wrong)), get("a.test")).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
}
