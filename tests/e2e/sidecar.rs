//! Sidecar mode end to end: pods are network namespaces with Istio's capture rules
//! (`wicket capture`), each with an in-process sidecar; apps call services by their
//! address and never know the sidecars are there.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wicket::{
    config::{probers, Bootstrap, SidecarSettings},
    sidecar::{
        ca::{self, IssueRequest},
        capture::CaptureConfig,
    },
    telemetry::AccessLog,
};
use wicket_tests::{
    client,
    netns::{unavailable, Network, Pod},
};

/// Kubelet probes as the injector rewrote them (`ISTIO_KUBE_APP_PROBERS`).
const PROBERS: &str = r#"{"/app-health/echo/readyz": {"httpGet": {"path": "/ready", "port": 8080}},
    "/app-health/echo/livez": {"httpGet": {"path": "/", "port": 8099}, "timeoutSeconds": 1}}"#;

/// The mark sidecars put on their own connections (the test's apps share their uid).
const MARK: u32 = 1337;
const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const ECHO: &str = "echo.default.svc.cluster.local";

fn mesh_yaml(b1: &Pod, b2: &Pod, d: &Pod) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [{ECHO}]
  addresses: [10.96.0.20]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  endpoints:
  - {{address: {b1}, labels: {{app: echo, version: v1, security.istio.io/tlsMode: istio}}}}
  - {{address: {b2}, labels: {{app: echo, version: v2, security.istio.io/tlsMode: istio}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo-permissive}}
spec:
  hosts: [echo-permissive.default.svc.cluster.local]
  addresses: [10.96.0.21]
  resolution: STATIC
  ports: [{{number: 80, name: http-web, targetPort: 9090}}]
  endpoints:
  - {{address: {b1}, labels: {{app: echo, version: v1, security.istio.io/tlsMode: istio}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: probe}}
spec:
  hosts: [probe.default.svc.cluster.local]
  addresses: [10.96.0.30]
  resolution: STATIC
  ports: [{{number: 7000, name: tcp, protocol: TCP}}]
  endpoints:
  - {{address: {d}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: probe}}
spec:
  host: probe.default.svc.cluster.local
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: {ECHO}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo]
  http:
  - route:
    - {{destination: {{host: echo, subset: v1}}, weight: 80}}
    - {{destination: {{host: echo, subset: v2}}, weight: 20}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: echo}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  mtls: {{mode: UNSET}}
  portLevelMtls:
    "9090": {{mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/default/sa/sleep"]}}}}]
    to: [{{operation: {{ports: ["8080"]}}}}]
  - to: [{{operation: {{ports: ["9090"]}}}}]
"#,
        b1 = b1.ip,
        b2 = b2.ip,
        d = d.ip,
    )
}

/// A pod with the capture rules (IPv4 and IPv6) and a dual-stack sidecar.
async fn with_sidecar(pod: &Pod, config: &Path, labels: &str, identity: PathBuf, sa: &str) -> wicket::Gateway {
    let capture = CaptureConfig { mark: Some(MARK), ..CaptureConfig::default() };
    pod.iptables(&capture.rules(false));
    pod.ip6tables(&capture.rules(true));
    let bootstrap = Bootstrap {
        bind_ip: "::".parse().unwrap(),
        config_dir: Some(config.to_path_buf()),
        labels: labels.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        identity_dir: Some(identity),
        wasm_cache_dir: None,
        sidecar: Some(SidecarSettings {
            service_account: sa.into(),
            mark: Some(MARK),
            probe_port: Some(15020),
            probers: probers::parse(PROBERS).unwrap(),
            ..SidecarSettings::default()
        }),
        ..Bootstrap::default()
    };
    pod.run(async move { wicket::start(bootstrap, AccessLog::channel().0).await.unwrap() }).await
}

fn identity(ca: &Path, out: &Path, sa: &str, trust_domain: &str) -> PathBuf {
    let request =
        IssueRequest { trust_domain, namespace: "default", service_account: sa, ttl: Duration::from_secs(3600) };
    ca::issue(ca, out, &request).unwrap();
    out.to_path_buf()
}

/// The app in `pod` sends a GET for `host` to `addr` (a service address): status and
/// body, or `None` when the connection failed or closed without an answer.
async fn call(pod: &Pod, addr: &str, host: &str) -> Option<(u16, serde_json::Value)> {
    let addr: SocketAddr = addr.parse().unwrap();
    let host = host.to_string();
    pod.run(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let resp = sender.send_request(client::get(&host, "/")).await.ok()?;
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.ok()?.to_bytes();
        Some((status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)))
    })
    .await
}

async fn metrics(pod: &Pod, gateway: &wicket::Gateway) -> String {
    let admin = gateway.admin_addr().unwrap();
    pod.run(async move { client::send(admin, client::get("admin", "/metrics")).await.body }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_carry_mutual_tls_identity_authorization_and_canary_weights() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mesh_ca, evil_ca) = (dir.path().join("ca"), dir.path().join("evil-ca"));
    ca::init(&mesh_ca, "cluster.local").unwrap();
    ca::init(&evil_ca, "evil.local").unwrap();

    let net = Network::new();
    let (a, b1, b2, c, d, e) = (net.pod("a"), net.pod("b1"), net.pod("b2"), net.pod("c"), net.pod("d"), net.pod("e"));
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("mesh.yaml"), mesh_yaml(&b1, &b2, &d)).unwrap();

    // E holds a certificate from another CA claiming A's service account, and trusts
    // the mesh's root too, so that only the receiving side's check can stop it.
    let e_identity = identity(&evil_ca, &dir.path().join("e"), "sleep", "cluster.local");
    let roots = [
        std::fs::read_to_string(mesh_ca.join("root-cert.pem")).unwrap(),
        std::fs::read_to_string(evil_ca.join("root-cert.pem")).unwrap(),
    ];
    std::fs::write(e_identity.join("root-cert.pem"), roots.concat()).unwrap();

    let mut sidecars = Vec::new();
    for (pod, labels, sa) in [
        (&a, "app=sleep", "sleep"),
        (&b1, "app=echo,version=v1", "echo"),
        (&b2, "app=echo,version=v2", "echo"),
        (&c, "app=intruder", "intruder"),
    ] {
        let id = identity(&mesh_ca, &dir.path().join(&pod.ns), sa, "cluster.local");
        sidecars.push(with_sidecar(pod, &config, labels, id, sa).await);
    }
    sidecars.push(with_sidecar(&e, &config, "app=sleep", e_identity, "sleep").await);
    for (pod, name) in [(&b1, "v1"), (&b2, "v2")] {
        for port in [8080, 9090] {
            let addr: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
            let name = name.to_string();
            pod.run(async move { wicket::echo::serve(addr, name).await.unwrap() }).await;
        }
    }

    // A calls the service by its address: mutual TLS to B with A's identity, split 80/20.
    let mut v1 = 0;
    for _ in 0..200 {
        let (status, body) = call(&a, "10.96.0.20:80", ECHO).await.expect("an answer");
        assert_eq!(status, 200, "{body}");
        let xfcc = body["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_string();
        assert!(xfcc.contains(&format!("URI={SLEEP}")), "B sees A's SPIFFE identity: {body}");
        v1 += usize::from(body["upstream"] == "v1");
    }
    // 80% of 200 is 160 (σ ≈ 5.7): the window is over five σ wide on each side.
    assert!((130..=190).contains(&v1), "v1 took {v1} of 200");
    // The names a workload in the namespace may use for the service all route to it.
    for name in ["echo", "echo.default", "echo.default.svc", "10.96.0.20"] {
        let (status, body) = call(&a, "10.96.0.20:80", name).await.expect("an answer");
        assert_eq!(status, 200, "Host {name}: {body}");
    }

    // C is in the mesh but not allowed; E's certificate is from another CA.
    let (status, body) = call(&c, "10.96.0.20:80", ECHO).await.expect("an answer");
    assert_eq!(status, 403, "{body}");
    let refused = call(&e, "10.96.0.20:80", ECHO).await.expect("an answer from E's own sidecar");
    assert_eq!(refused.0, 503, "B refuses E's handshake, so E's sidecar cannot connect: {:?}", refused.1);

    // D has no sidecar: plaintext to the STRICT port is refused, the PERMISSIVE one serves.
    let b1_strict = format!("{}:8080", b1.ip);
    assert!(call(&d, &b1_strict, ECHO).await.is_none(), "plaintext under STRICT gets no answer");
    let (status, body) = call(&d, &format!("{}:9090", b1.ip), ECHO).await.expect("PERMISSIVE accepts plaintext");
    assert_eq!((status, body["upstream"].as_str()), (200, Some("v1")));
    assert!(body["headers"]["x-forwarded-client-cert"].is_null(), "no peer certificate: {body}");
    // Kubelet (D, plaintext) probes B's app through the sidecar's health port, which
    // the capture rules leave alone.
    let probe = |path: &str| {
        let url = format!("{}:15020", b1.ip);
        let path = path.to_string();
        d.run(async move { client::send(url.parse().unwrap(), client::get("kubelet", &path)).await.status.as_u16() })
    };
    assert_eq!(probe("/app-health/echo/readyz").await, 200, "the app answers on localhost");
    assert_eq!(probe("/app-health/echo/livez").await, 503, "nothing listens on the probe's port");
    assert_eq!(probe("/app-health/other/readyz").await, 404);
    assert_eq!(probe("/healthz/ready").await, 200, "the sidecar's own readiness");
    // ... and mutual TLS on the same port.
    let (status, body) = call(&a, "10.96.0.21:80", "echo-permissive").await.expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert!(body["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().contains(SLEEP), "{body}");

    // What crosses the network is TLS: D listens where A's TCP service points (its
    // endpoint has no sidecar label; the DestinationRule asks for ISTIO_MUTUAL).
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let listener = d.run(async { tokio::net::TcpListener::bind("0.0.0.0:7000").await.unwrap() }).await;
    let probe = d.spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut first = vec![0; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut first)).await.unwrap().unwrap();
        first.truncate(n);
        let _ = seen_tx.send(first);
    });
    a.run(async {
        let mut s = tokio::net::TcpStream::connect("10.96.0.30:7000").await.unwrap();
        let _ = s.write_all(b"the plaintext secret").await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    })
    .await;
    probe.await.unwrap();
    let seen = seen_rx.await.unwrap();
    assert_eq!(seen.first(), Some(&0x16), "a TLS handshake record, not the app's bytes: {seen:?}");
    assert!(!seen.windows(6).any(|w| w == b"secret"));

    // Telemetry: B reports as destination with A's principal; A as source.
    let b1_metrics = metrics(&b1, &sidecars[1]).await;
    let inbound = b1_metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("reporter=\"destination\"") && l.contains(SLEEP))
        .unwrap_or_else(|| panic!("no inbound request metric with A's principal:\n{b1_metrics}"));
    assert!(inbound.contains("connection_security_policy=\"mutual_tls\""), "{inbound}");
    assert!(inbound.contains("destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\""), "{inbound}");
    let a_metrics = metrics(&a, &sidecars[0]).await;
    let outbound = a_metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("reporter=\"source\"") && l.contains(ECHO))
        .unwrap_or_else(|| panic!("no outbound request metric:\n{a_metrics}"));
    assert!(outbound.contains(&format!("source_principal=\"{SLEEP}\"")), "{outbound}");
    assert!(outbound.contains("connection_security_policy=\"mutual_tls\""), "{outbound}");
}

/// The `Hash=` of the client certificate B's sidecar saw, from the echoed XFCC.
fn peer_hash(body: &serde_json::Value) -> String {
    let xfcc = body["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default();
    xfcc.split(';').find_map(|f| f.strip_prefix("Hash=")).unwrap_or_default().to_string()
}

/// Two pods: A (`app=sleep`) calling B (`app=echo`, an echo app on 8080), each with
/// capture rules and a sidecar, on the config `yaml(b)`. Fields drop in order:
/// sidecars, then pods, then their network.
struct TwoPods {
    sidecars: Vec<wicket::Gateway>,
    a: Pod,
    b: Pod,
    net: Network,
    /// The config file every sidecar watches.
    config: PathBuf,
    ca: PathBuf,
    a_identity: PathBuf,
    _dir: tempfile::TempDir,
}

async fn two_pods(yaml: impl FnOnce(&Pod) -> String) -> Option<TwoPods> {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ca::init(&ca, "cluster.local").unwrap();
    let net = Network::new();
    let (a, b) = (net.pod("a"), net.pod("b"));
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("mesh.yaml"), yaml(&b)).unwrap();
    let a_identity = identity(&ca, &dir.path().join("a"), "sleep", "cluster.local");
    let b_identity = identity(&ca, &dir.path().join("b"), "echo", "cluster.local");
    let sidecars = vec![
        with_sidecar(&a, &config, "app=sleep", a_identity.clone(), "sleep").await,
        with_sidecar(&b, &config, "app=echo", b_identity, "echo").await,
    ];
    b.run(async { wicket::echo::serve("[::]:8080".parse().unwrap(), "b".into()).await.unwrap() }).await;
    let config = config.join("mesh.yaml");
    Some(TwoPods { sidecars, a, b, net, config, ca, a_identity, _dir: dir })
}

/// A ServiceEntry `name` for `host` at `addresses` with one `port`, whose one
/// endpoint is B (`app: echo`, with a sidecar) at `b_addr`.
fn pod_service(name: &str, host: &str, addresses: &str, port: &str, b_addr: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  addresses: {addresses}
  resolution: STATIC
  ports: [{port}]
  endpoints: [{{address: "{b_addr}", labels: {{app: echo, security.istio.io/tlsMode: istio}}}}]
"#
    )
}

/// The echo service at 10.96.0.20 (and `fd96::20`), B its endpoint at `b_addr`.
fn echo_service(b_addr: &str) -> String {
    let service =
        pod_service("echo", ECHO, r#"["fd96::20", 10.96.0.20]"#, "{number: 80, name: http, targetPort: 8080}", b_addr);
    format!(
        r#"{service}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default}}
spec: {{mtls: {{mode: STRICT}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_certificates_rotate_without_dropping_connections() {
    // Every request on a connection of its own, so each shows the certificate in use.
    let rule = format!(
        "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: {ECHO}
  trafficPolicy: {{connectionPool: {{http: {{maxRequestsPerConnection: 1}}}}}}
"
    );
    let Some(pods) = two_pods(|b| echo_service(&b.ip.to_string()) + &rule).await else { return };
    let (ca, a_identity) = (pods.ca.clone(), pods.a_identity.clone());
    // The app keeps one connection to its sidecar open across the rotation.
    let (before, after) = pods
        .a
        .run(async move {
            let stream = tokio::net::TcpStream::connect("10.96.0.20:80").await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut get = async || {
                sender.ready().await.unwrap();
                let resp = sender.send_request(client::get(ECHO, "/")).await.unwrap();
                assert_eq!(resp.status(), 200);
                let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
                serde_json::from_slice::<serde_json::Value>(&body).unwrap()
            };
            let before = peer_hash(&get().await);
            identity(&ca, &a_identity, "sleep", "cluster.local");
            // The sidecar checks its files every second; allow it plenty of time.
            for _ in 0..300 {
                let now = peer_hash(&get().await);
                if now != before {
                    return (before, now);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (before.clone(), before)
        })
        .await;
    assert!(!before.is_empty(), "B saw a client certificate");
    assert_ne!(before, after, "new connections present the rotated certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_traffic_is_captured_and_carried_over_mutual_tls() {
    let Some(pods) = two_pods(|b| echo_service(&b.ip6.to_string())).await else { return };
    // Undeclared protocol: sniffed as HTTP. Both address families reach B over IPv6.
    for vip in ["[fd96::20]:80", "10.96.0.20:80"] {
        let (status, body) = call(&pods.a, vip, ECHO).await.unwrap_or_else(|| panic!("{vip}: no answer"));
        assert_eq!(status, 200, "{vip}: {body}");
        let xfcc = body["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default();
        assert!(xfcc.contains(SLEEP), "{vip}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_plugins_apply_to_client_or_server_traffic_as_their_match_says() {
    let module = wicket_tests::wasm::conformance();
    let tag = |name: &str, app: &str, mode: &str| {
        let config = format!(r#"{{"response_add": [["x-{name}", "1"]]}}"#);
        wicket_tests::wasm::plugin(
            name,
            module,
            &format!(
                "  selector: {{matchLabels: {{app: {app}}}}}\n  match: [{{mode: {mode}}}]\n  pluginConfig: {config}\n"
            ),
        )
    };
    let plugins = [
        tag("a-client", "sleep", "CLIENT"),
        tag("a-server", "sleep", "SERVER"),
        tag("b-server", "echo", "SERVER"),
        tag("b-client", "echo", "CLIENT"),
    ]
    .map(|p| format!("---\n{p}"))
    .concat();
    let Some(pods) = two_pods(|b| echo_service(&b.ip.to_string()) + &plugins).await else { return };
    let resp = pods.a.run(async { client::send("10.96.0.20:80".parse().unwrap(), client::get(ECHO, "/")).await }).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.header("x-a-client"), Some("1"), "A's outbound is CLIENT traffic");
    assert_eq!(resp.header("x-b-server"), Some("1"), "B's inbound is SERVER traffic");
    assert_eq!(resp.header("x-a-server"), None);
    assert_eq!(resp.header("x-b-client"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mtls_sends_plaintext_to_a_workload_that_disables_mtls() {
    let disable = "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo}
spec:
  selector: {matchLabels: {app: echo}}
  portLevelMtls: {8080: {mode: DISABLE}}
";
    let Some(pods) = two_pods(|b| echo_service(&b.ip.to_string()) + disable).await else { return };
    let (status, body) = call(&pods.a, "10.96.0.20:80", ECHO).await.expect("an answer");
    assert_eq!(status, 200, "A's sidecar knows B takes plaintext on 8080: {body}");
    assert!(body["headers"]["x-forwarded-client-cert"].is_null(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_services_stay_http2_through_both_sidecars() {
    let Some(pods) = two_pods(|b| {
        let port = "{number: 9000, name: grpc, protocol: GRPC, targetPort: 8080}";
        let grpc = pod_service("grpc", "grpc.default.svc.cluster.local", "[10.96.0.22]", port, &b.ip.to_string());
        echo_service(&b.ip.to_string()) + "---" + &grpc
    })
    .await
    else {
        return;
    };
    let resp = pods
        .a
        .run(async {
            let req = client::get("grpc.default.svc.cluster.local", "/shop.Cart/Add");
            client::send_h2("10.96.0.22:9000".parse().unwrap(), "grpc.default.svc.cluster.local", req).await
        })
        .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(body["version"], "HTTP/2.0", "B's sidecar speaks the downstream's protocol to the app: {body}");
    assert!(body["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().contains(SLEEP), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_gateway_with_an_identity_reaches_strict_workloads_over_mutual_tls() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mesh_ca = dir.path().join("ca");
    ca::init(&mesh_ca, "cluster.local").unwrap();
    let net = Network::new();
    let (gw, b) = (net.pod("gw"), net.pod("b"));
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let gateway_sa = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: 8080, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: ["shop.example.com"]
  gateways: [istio-system/gw]
  http: [{{route: [{{destination: {{host: {ECHO}}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [{ECHO}]
  resolution: STATIC
  ports: [{{number: 80, name: http, targetPort: 8080}}]
  endpoints: [{{address: "{b}", labels: {{app: echo, security.istio.io/tlsMode: istio}}}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  rules: [{{from: [{{source: {{principals: ["{gateway_sa}"]}}}}]}}]
"#,
        b = b.ip
    );
    std::fs::write(config.join("mesh.yaml"), yaml).unwrap();
    let b_identity = identity(&mesh_ca, &dir.path().join("b"), "echo", "cluster.local");
    let _b = with_sidecar(&b, &config, "app=echo", b_identity, "echo").await;
    b.run(async { wicket::echo::serve("[::]:8080".parse().unwrap(), "b".into()).await.unwrap() }).await;

    let request = IssueRequest {
        trust_domain: "cluster.local",
        namespace: "istio-system",
        service_account: "istio-ingressgateway-service-account",
        ttl: Duration::from_secs(3600),
    };
    let gw_identity = dir.path().join("gw");
    ca::issue(&mesh_ca, &gw_identity, &request).unwrap();
    let bootstrap = Bootstrap {
        config_dir: Some(config.clone()),
        namespace: "istio-system".into(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        bind_ip: "127.0.0.1".parse().unwrap(),
        identity_dir: Some(gw_identity),
        wasm_cache_dir: None,
        ..Bootstrap::default()
    };
    let _gateway = gw.run(async move { wicket::start(bootstrap, AccessLog::channel().0).await.unwrap() }).await;
    let (status, body) = call(&gw, "127.0.0.1:8080", "shop.example.com").await.expect("an answer");
    assert_eq!(status, 200, "{body}");
    let xfcc = body["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default();
    assert!(xfcc.contains(&format!("URI=spiffe://{gateway_sa}")), "B saw the gateway's identity: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_sidecar_closes_its_inbound_side_and_keeps_serving_its_apps_calls() {
    let Some(mut pods) = two_pods(|b| echo_service(&b.ip.to_string())).await else { return };
    let a_sidecar = pods.sidecars.remove(0);
    let drain = tokio::spawn(a_sidecar.shutdown(Duration::from_secs(3)));
    let inbound_closed = pods
        .a
        .run(async {
            for _ in 0..100 {
                if tokio::net::TcpStream::connect("127.0.0.1:15006").await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        })
        .await;
    assert!(inbound_closed, "the inbound listener closes when draining starts");
    let (status, body) = call(&pods.a, "10.96.0.20:80", ECHO).await.expect("outbound still serves");
    assert_eq!(status, 200, "{body}");
    drain.await.unwrap();
    assert!(call(&pods.a, "10.96.0.20:80", ECHO).await.is_none(), "after the drain nothing listens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_peer_authentication_applies_to_new_connections() {
    let permissive = |b: &Pod| echo_service(&b.ip.to_string()).replace("mode: STRICT", "mode: PERMISSIVE");
    let Some(mut pods) = two_pods(permissive).await else { return };
    let d = pods.net.pod("d");
    let b_app = format!("{}:8080", pods.b.ip);
    let (status, _) = call(&d, &b_app, ECHO).await.expect("PERMISSIVE takes plaintext");
    assert_eq!(status, 200);

    let version = pods.sidecars[1].snapshot().version;
    let strict = std::fs::read_to_string(&pods.config).unwrap().replace("mode: PERMISSIVE", "mode: STRICT");
    std::fs::write(&pods.config, strict).unwrap();
    tokio::time::timeout(Duration::from_secs(30), pods.sidecars[1].wait_for_version_after(version)).await.unwrap();
    assert!(call(&d, &b_app, ECHO).await.is_none(), "after the reload STRICT refuses plaintext");
    let (status, body) = call(&pods.a, "10.96.0.20:80", ECHO).await.expect("mTLS still serves");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_resources_scope_egress_and_route_ingress_ports() {
    let extra = |b: &Pod| {
        let b = b.ip.to_string();
        let hidden = pod_service(
            "hidden",
            "hidden.default.svc.cluster.local",
            "[10.96.0.21]",
            "{number: 80, name: http, targetPort: 8080}",
            &b,
        );
        let echo2 = pod_service(
            "echo2",
            "echo2.default.svc.cluster.local",
            "[10.96.0.22]",
            "{number: 80, name: http, targetPort: 9000}",
            &b,
        );
        format!(
            r#"---{hidden}---{echo2}---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: sleep}}
spec:
  workloadSelector: {{labels: {{app: sleep}}}}
  egress:
  - hosts: ["./{ECHO}", "./echo2.default.svc.cluster.local"]
  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: echo}}
spec:
  workloadSelector: {{labels: {{app: echo}}}}
  ingress:
  - port: {{number: 9000, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:8080
"#
        )
    };
    let Some(pods) = two_pods(|b| echo_service(&b.ip.to_string()) + &extra(b)).await else { return };
    let (status, body) = call(&pods.a, "10.96.0.20:80", ECHO).await.expect("an answer");
    assert_eq!(status, 200, "in A's egress: {body}");
    let hidden = call(&pods.a, "10.96.0.21:80", "hidden.default.svc.cluster.local").await;
    assert_eq!(
        hidden.map(|(status, _)| status),
        Some(502),
        "outside A's egress, REGISTRY_ONLY: Istio's BlackHoleCluster"
    );
    let (status, body) = call(&pods.a, "10.96.0.22:80", "echo2.default.svc.cluster.local").await.expect("an answer");
    assert_eq!(status, 200, "B's Sidecar sends port 9000 to the app on 8080: {body}");
}
