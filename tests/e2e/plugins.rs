//! The first-party plugins (`plugins/`), built for wasm32-wasip1 and loaded through
//! WasmPlugin YAML, driving real requests.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use wicket_tests::{
    client,
    wasm::{first_party, plugin},
    yaml::{docs, service_entry, GATEWAY},
    TestGateway, Upstream,
};

fn base(up: &Upstream) -> String {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: default}
spec:
  hosts: [\"*\"]
  gateways: [gw]
  http:
  - route: [{destination: {host: api.default.svc.cluster.local}}]
";
    docs(&[GATEWAY, &service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(up, "v1")]), vs])
}

fn with_plugin(up: &Upstream, module: &str, config: &str, extra: &str) -> String {
    let p =
        plugin(module.replace('_', "-").as_str(), &first_party(module), &format!("  pluginConfig: {config}\n{extra}"));
    docs(&[&base(up), &p])
}

fn get(path: &str) -> Request<Full<Bytes>> {
    client::get("api.test", path)
}

#[tokio::test]
async fn header_policy_edits_and_requires_headers() {
    let up = Upstream::start("api").await;
    let config = r#"{"rules": [{"request": {"add": {"x-gateway": "wicket"}}, "response": {"set": {"x-frame-options": "DENY"}}}, {"match": {"path_prefix": "/api", "methods": ["POST"]}, "require": ["x-api-key"], "reject_status": 401}]}"#;
    let gw = TestGateway::start(&with_plugin(&up, "header_policy", config, "")).await;
    let resp = gw.send(get("/page")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-frame-options"), Some("DENY"));
    assert_eq!(up.last().headers["x-gateway"], "wicket");
    let post = |key: Option<&str>| {
        let mut r = Request::post("/api/x").header("host", "api.test");
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        r.body(Full::new(Bytes::from("{}"))).unwrap()
    };
    let denied = gw.send(post(None)).await;
    assert_eq!(
        (denied.status, denied.body.as_str()),
        (StatusCode::UNAUTHORIZED, "missing required header x-api-key\n")
    );
    assert_eq!(gw.send(post(Some("k"))).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_holds_its_budget_exactly_under_concurrent_requests() {
    let up = Upstream::start("api").await;
    let config = r#"{"requests_per_unit": 10, "unit": "hour"}"#;
    let gw = TestGateway::start(&with_plugin(&up, "rate_limit", config, "")).await;
    let addr = gw.addr();
    let tasks: Vec<_> = (0..60).map(|_| tokio::spawn(client::send(addr, get("/")))).collect();
    let mut by_status = BTreeMap::new();
    let mut retry_after = None;
    for t in tasks {
        let resp = t.await.unwrap();
        *by_status.entry(resp.status.as_u16()).or_insert(0) += 1;
        if resp.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = resp.header("retry-after").map(str::to_string);
            assert_eq!(resp.header("x-ratelimit-limit"), Some("10"));
            assert_eq!(resp.header("x-ratelimit-remaining"), Some("0"));
        }
    }
    assert_eq!(by_status, BTreeMap::from([(200, 10), (429, 50)]), "shared across VMs, no token lost or doubled");
    assert_eq!(retry_after.as_deref(), Some("360"), "one token per 6 minutes");
    assert_eq!(up.hits(), 10);
}

#[tokio::test]
async fn ip_access_allows_denies_and_reads_trusted_forwarded_for() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&with_plugin(&up, "ip_access", r#"{"deny": ["127.0.0.0/8"]}"#, "")).await;
    assert_eq!(gw.send(get("/")).await.status, StatusCode::FORBIDDEN);
    let gw = TestGateway::start(&with_plugin(&up, "ip_access", r#"{"allow": ["127.0.0.1/32", "::1/128"]}"#, "")).await;
    assert_eq!(gw.send(get("/")).await.status, StatusCode::OK);
    let config = r#"{"allow": ["198.51.100.0/24"], "trusted_hops": 1}"#;
    let gw = TestGateway::start(&with_plugin(&up, "ip_access", config, "")).await;
    let via = |xff: &str| {
        Request::get("/").header("host", "api.test").header("x-forwarded-for", xff).body(Full::default()).unwrap()
    };
    assert_eq!(gw.send(via("198.51.100.20")).await.status, StatusCode::OK);
    assert_eq!(gw.send(via("198.51.100.20, 203.0.113.1")).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn custom_auth_asks_a_service_and_allows_or_denies() {
    let (up, auth) = (Upstream::start("api").await, Upstream::start("ok").await);
    let auth_se = service_entry("auth.default.svc.cluster.local", 80, "HTTP", &[(&auth, "v1")]);
    let allow = r#"{"cluster": "auth.default.svc.cluster.local:80", "path": "/check"}"#;
    let yaml = docs(&[&with_plugin(&up, "custom_auth", allow, ""), &auth_se]);
    let gw = TestGateway::start(&yaml).await;
    let req = Request::get("/orders")
        .header("host", "api.test")
        .header("authorization", "Bearer t")
        .body(Full::default())
        .unwrap();
    assert_eq!(gw.send(req).await.status, StatusCode::OK);
    let asked = auth.last();
    assert_eq!(asked.path, "/check");
    assert_eq!(asked.headers["authorization"], "Bearer t");
    assert_eq!(asked.headers["x-original-path"], "/orders");

    let deny = r#"{"cluster": "auth.default.svc.cluster.local:80", "path": "/status/403"}"#;
    let gw = TestGateway::start(&docs(&[&with_plugin(&up, "custom_auth", deny, ""), &auth_se])).await;
    let hits = up.hits();
    assert_eq!(gw.send(get("/orders")).await.status, StatusCode::FORBIDDEN);
    assert_eq!(up.hits(), hits);
}

#[tokio::test]
async fn invalid_plugin_configuration_is_rejected_at_load_naming_plugin_and_field() {
    let up = Upstream::start("api").await;
    let gw =
        TestGateway::start(&with_plugin(&up, "rate_limit", r#"{"requests_per_unit": 5, "unit": "fortnight"}"#, ""))
            .await;
    let diags: Vec<String> = gw.gateway.snapshot().diagnostics.iter().map(ToString::to_string).collect();
    let diag = diags.iter().find(|d| d.contains("WasmPlugin/default/rate-limit")).expect("a diagnostic");
    assert!(diag.contains("unit") && diag.contains("fortnight"), "{diag}");
    // FAIL_CLOSE (the default) with no good version: requests are denied.
    assert_eq!(gw.send(get("/")).await.status, StatusCode::FORBIDDEN);
}

/// The fenced blocks of a Markdown file with the given info string, in order.
fn blocks(markdown: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start() == format!("```{lang}") => current = Some(String::new()),
            Some(_) if line.trim_start() == "```" => out.push(current.take().unwrap()),
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

/// The SDK guide's example, exactly as the guide shows it: its unit tests pass
/// natively, and built for wasm32-wasip1 it serves requests through its WasmPlugin.
#[tokio::test]
async fn the_sdk_guide_example_builds_tests_and_runs_in_the_gateway() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let guide = std::fs::read_to_string(root.join("sdk/README.md")).unwrap();
    let (toml, rust, yaml) = (blocks(&guide, "toml"), blocks(&guide, "rust"), blocks(&guide, "yaml"));
    let krate = tempfile::tempdir().unwrap();
    let manifest = toml[0].replace("../wicket/sdk", &root.join("sdk").display().to_string());
    std::fs::write(krate.path().join("Cargo.toml"), manifest).unwrap();
    std::fs::create_dir(krate.path().join("src")).unwrap();
    std::fs::write(krate.path().join("src/lib.rs"), &rust[0]).unwrap();
    let target_dir = root.join("target/wasm-filters");
    let native = std::process::Command::new(env!("CARGO"))
        .arg("test")
        .arg("--manifest-path")
        .arg(krate.path().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .unwrap();
    assert!(native.status.success(), "the guide's tests:\n{}", String::from_utf8_lossy(&native.stderr));
    let module = wicket_tests::wasm::build(&krate.path().join("Cargo.toml")).join("greeter.wasm");

    let up = Upstream::start("api").await;
    let plugin_yaml: String = yaml[0]
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("url:") {
                format!("  url: file://{}", module.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let gw = TestGateway::start(&docs(&[&base(&up), &plugin_yaml])).await;
    let resp = gw.send(get("/")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-greeted"), Some("yes"));
    assert_eq!(up.last().headers["x-greeting"], "hello");
    assert_eq!(gw.send(get("/private/x")).await.status, StatusCode::FORBIDDEN);
    let metrics = gw.metrics().await;
    assert!(metrics.contains("wasmcustom_greeter_requests_total 1"), "{metrics}");
}
