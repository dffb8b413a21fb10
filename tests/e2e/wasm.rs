//! Proxy-wasm filters end to end: a filter built from source with the public SDK,
//! loaded through WasmPlugin YAML, driving real requests.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use wicket_tests::{
    client, corpus,
    wasm::{conformance, plugin},
    yaml::{docs, service_entry, GATEWAY},
    TestGateway, Upstream,
};

/// Gateway `gw`, ServiceEntry `api` → `up`, and a catch-all route to it.
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

/// One conformance plugin with `config` (JSON) and extra spec lines.
fn filter(name: &str, config: &str, extra: &str) -> String {
    plugin(name, conformance(), &format!("  pluginConfig: {config}\n{extra}"))
}

fn get(path: &str) -> Request<Full<Bytes>> {
    client::get("api.test", path)
}

#[tokio::test]
async fn headers_are_added_replaced_and_removed_in_both_directions() {
    let up = Upstream::start("api").await;
    let config = r#"{"request_add": [["x-added", "1"], ["x-added", "2"]], "request_set": [["x-replaced", "new"]], "request_remove": ["x-secret"], "response_add": [["x-filtered", "yes"]], "response_set": [["x-upstream", "rewritten"]], "response_remove": ["content-type"]}"#;
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("headers", config, "")])).await;
    let req = Request::get("/anything")
        .header("host", "api.test")
        .header("x-replaced", "old")
        .header("x-secret", "s3cret")
        .body(Full::default())
        .unwrap();
    let resp = gw.send(req).await;
    assert_eq!(resp.status, StatusCode::OK);
    let seen = up.last();
    let added: Vec<_> = seen.headers.get_all("x-added").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(added, ["1", "2"]);
    assert_eq!(seen.headers["x-replaced"], "new");
    assert!(seen.headers.get("x-secret").is_none());
    assert_eq!(resp.header("x-filtered"), Some("yes"));
    assert_eq!(resp.header("x-upstream"), Some("rewritten"));
    assert_eq!(resp.body, "api");
}

#[tokio::test]
async fn a_local_reply_denies_before_the_upstream() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("deny", r#"{"deny_if_header": "x-deny"}"#, "")])).await;
    let req = Request::get("/").header("host", "api.test").header("x-deny", "1").body(Full::default()).unwrap();
    let resp = gw.send(req).await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.header("x-denied-by"), Some("conformance"));
    assert_eq!(resp.body, "denied by wasm\n");
    assert_eq!(up.hits(), 0);
    let log = gw.find_log(|l| l["response_code"] == 403).await;
    assert_eq!(log["response_flags"], "UAEX");
    assert_eq!(gw.get("api.test", "/").await.status, StatusCode::OK);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn plugin_configuration_is_delivered_as_json() {
    let up = Upstream::start("api").await;
    let config = r#"{"echo_config_header": "x-config", "note": "hello"}"#;
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("config", config, "")])).await;
    let resp = gw.send(get("/")).await;
    let echoed: serde_json::Value = serde_json::from_str(resp.header("x-config").unwrap()).unwrap();
    assert_eq!(echoed["note"], "hello");
    assert_eq!(echoed["echo_config_header"], "x-config");
}

#[tokio::test]
async fn properties_describe_the_request_and_plugin() {
    let up = Upstream::start("api").await;
    let config = r#"{"properties": ["request.path", "request.method", "request.host", "request.scheme", "request.protocol", "request.id", "source.port", "destination.port", "response.code", "plugin_name", "plugin_root_id", "connection.mtls", "xds.route_name", "request.headers.x-probe"]}"#;
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("props", config, "  pluginName: my-root\n")])).await;
    let req =
        Request::post("/p?q=1").header("host", "api.test").header("x-probe", "probe").body(Full::default()).unwrap();
    let resp = gw.send(req).await;
    assert_eq!(resp.header("x-prop-request.path"), Some("/p?q=1"));
    assert_eq!(resp.header("x-prop-request.method"), Some("POST"));
    assert_eq!(resp.header("x-prop-request.host"), Some("api.test"));
    assert_eq!(resp.header("x-prop-request.scheme"), Some("http"));
    assert_eq!(resp.header("x-prop-request.protocol"), Some("HTTP/1.1"));
    assert_eq!(resp.header("x-prop-request.id").map(str::len), Some(36));
    assert_ne!(resp.header("x-prop-source.port"), Some("0"));
    assert_eq!(resp.header("x-prop-destination.port"), Some("80"));
    assert_eq!(resp.header("x-prop-response.code"), Some("200"));
    assert_eq!(resp.header("x-prop-plugin_name"), Some("default.props"));
    assert_eq!(resp.header("x-prop-plugin_root_id"), Some("my-root"));
    assert_eq!(resp.header("x-prop-connection.mtls"), Some("false"));
    assert_eq!(resp.header("x-prop-request.headers.x-probe"), Some("probe"));
    assert!(resp.header("x-prop-xds.route_name").is_some());
}

#[tokio::test]
async fn vm_environment_comes_from_vm_config_only() {
    let up = Upstream::start("api").await;
    let extra = "  vmConfig:\n    env:\n    - {name: REGION, value: eu-west}\n";
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("env", r#"{"env": "REGION"}"#, extra)])).await;
    assert_eq!(gw.send(get("/")).await.header("x-env"), Some("eu-west"));
    let _ = Duration::ZERO;
}

/// `base` plus an `auth` service the filter may call.
fn with_auth(up: &Upstream, auth: &Upstream) -> String {
    docs(&[&base(up), &service_entry("auth.default.svc.cluster.local", 80, "HTTP", &[(auth, "v1")])])
}

#[tokio::test]
async fn an_auth_filter_pauses_calls_out_and_then_continues_or_denies() {
    let (up, auth) = (Upstream::start("api").await, Upstream::start("auth-ok").await);
    let allow = r#"{"auth_call": {"cluster": "outbound|80||auth.default.svc.cluster.local", "path": "/check"}}"#;
    let deny = r#"{"auth_call": {"cluster": "auth.default.svc.cluster.local:80", "path": "/status/403"}}"#;
    let gw = TestGateway::start(&docs(&[&with_auth(&up, &auth), &filter("allow", allow, "")])).await;
    let resp = gw.send(get("/resource")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(up.last().headers["x-auth-body"], "auth-ok");
    let call = auth.last();
    assert_eq!(
        (call.path.as_str(), call.authority.as_str()),
        ("/check", "outbound|80||auth.default.svc.cluster.local")
    );
    assert_eq!(call.headers["x-original-path"], "/resource");

    let gw = TestGateway::start(&docs(&[&with_auth(&up, &auth), &filter("deny", deny, "")])).await;
    let hits = up.hits();
    let resp = gw.send(get("/resource")).await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.body, "denied by auth service (403)");
    assert_eq!(up.hits(), hits, "a denied request never reaches the upstream");
}

#[tokio::test]
async fn http_call_timeouts_and_unknown_clusters_are_answers_not_hangs() {
    let (up, slow) = (Upstream::start("api").await, Upstream::slow("slow", Duration::from_secs(5)).await);
    let timeout = r#"{"auth_call": {"cluster": "auth.default.svc.cluster.local", "path": "/", "timeout_ms": 100}}"#;
    let gw = TestGateway::start(&docs(&[&with_auth(&up, &slow), &filter("t", timeout, "")])).await;
    let resp = gw.send(get("/")).await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.body, "denied by auth service (504)");

    let unknown = r#"{"auth_call": {"cluster": "nowhere.example.com", "path": "/"}}"#;
    let gw = TestGateway::start(&docs(&[&with_auth(&up, &slow), &filter("u", unknown, "")])).await;
    let resp = gw.send(get("/")).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.body.contains("BadArgument"), "{}", resp.body);
}

#[tokio::test]
async fn request_and_response_bodies_are_read_and_replaced() {
    let up = Upstream::start("a secret answer").await;
    let config = r#"{"request_body": "upper", "redact_response": true}"#;
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("bodies", config, "")])).await;
    let req = Request::post("/").header("host", "api.test").body(Full::new(Bytes::from("hello body"))).unwrap();
    let resp = gw.send(req).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(up.last().body, "HELLO BODY");
    assert_eq!(resp.body, "a ****** answer");

    let append = r#"{"request_body": "append: and more"}"#;
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("append", append, "")])).await;
    let big = "x".repeat(200_000);
    let req = Request::post("/").header("host", "api.test").body(Full::new(Bytes::from(big.clone()))).unwrap();
    assert_eq!(gw.send(req).await.status, StatusCode::OK);
    assert_eq!(up.last().body, format!("{big} and more"));
}

#[tokio::test]
async fn shared_data_counts_exactly_across_requests_and_vms() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("count", r#"{"counter": "hits"}"#, "")])).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(gw.send(get("/")).await.header("x-count").unwrap().parse::<u64>().unwrap());
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6], "VMs take turns and share one counter");
    let addr = gw.addr();
    let tasks: Vec<_> = (0..40).map(|_| tokio::spawn(client::send(addr, get("/")))).collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap().header("x-count").unwrap().parse::<u64>().unwrap());
    }
    counts.sort_unstable();
    assert_eq!(counts, (7..=46).collect::<Vec<_>>(), "compare-and-swap loses no increment");
}

#[tokio::test]
async fn ticks_run_on_every_vm() {
    let up = Upstream::start("api").await;
    let config = r#"{"tick_ms": 20, "expose_shared": "ticks"}"#;
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("ticker", config, "")])).await;
    let mut ticks = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ticks = gw.send(get("/")).await.header("x-shared").unwrap().parse::<u64>().unwrap_or(0);
        if ticks >= 10 {
            break;
        }
    }
    assert!(ticks >= 10, "on_tick ran {ticks} times");
}

#[tokio::test]
async fn plugin_metrics_are_exported_with_the_gateways() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("m", r#"{"metric": "conformance.requests"}"#, "")])).await;
    for _ in 0..3 {
        assert_eq!(gw.send(get("/")).await.status, StatusCode::OK);
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains("wasmcustom_conformance_requests_total 3"), "{metrics}");
}

#[tokio::test]
async fn phases_and_priorities_sit_around_jwt_and_authorization_as_in_istio() {
    use serde_json::json;
    use wicket_tests::jwt::{jwks, now, Signer};
    let up = Upstream::start("api").await;
    let signer = Signer::es256("k1");
    let jwt = format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  jwtRules:
  - issuer: https://idp.test
    jwks: '{}'
    outputPayloadToHeader: x-jwt-payload
",
        jwks(&[&signer])
    );
    let require = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: [\"*\"]}}]
";
    let block = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block, namespace: default}
spec:
  action: DENY
  rules:
  - when: [{key: 'request.headers[x-block]', values: [\"*\"]}]
";
    let plugins = [
        // Written out of order on purpose: the chain order comes from phase and priority.
        filter("last", r#"{"tag": "unspecified"}"#, ""),
        filter("stats-low", r#"{"tag": "stats-10", "counter": "stats-runs"}"#, "  phase: STATS\n  priority: 10\n"),
        filter("stats-none", r#"{"tag": "stats-none"}"#, "  phase: STATS\n"),
        filter("stats-high", r#"{"tag": "stats-20"}"#, "  phase: STATS\n  priority: 20\n"),
        filter(
            "authz",
            r#"{"tag": "authz", "observe_header": "x-jwt-payload", "properties": ["request.auth.principal", "request.auth.claims.sub"]}"#,
            "  phase: AUTHZ\n",
        ),
        // Turns an API key header into the bearer token JWT authentication checks.
        filter(
            "authn",
            r#"{"tag": "authn", "copy_header": ["x-token", "authorization", "Bearer "]}"#,
            "  phase: AUTHN\n",
        ),
    ];
    let mut all = vec![base(&up), jwt, require.to_string(), block.to_string()];
    all.extend(plugins);
    let gw = TestGateway::start(&all.join("\n---\n")).await;
    assert!(gw.gateway.snapshot().diagnostics.is_empty(), "{:?}", gw.gateway.snapshot().diagnostics);
    let token = signer.sign(&json!({"iss": "https://idp.test", "sub": "bob", "exp": now() + 600}));
    let req = Request::get("/").header("host", "api.test").header("x-token", &token).body(Full::default()).unwrap();
    let resp = gw.send(req).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let seen = up.last();
    assert_eq!(seen.headers["x-order"], "authn,authz,stats-20,stats-10,stats-none,unspecified");
    assert_eq!(seen.headers["x-saw-x-jwt-payload"], "yes", "AUTHZ plugins run after JWT authentication");
    assert_eq!(resp.header("x-prop-request.auth.principal"), Some("https://idp.test/bob"));
    assert_eq!(resp.header("x-prop-request.auth.claims.sub"), Some("bob"));

    // Authorization denies before STATS plugins run: their counter does not move.
    let before = gw
        .send(Request::get("/").header("host", "api.test").header("x-token", &token).body(Full::default()).unwrap())
        .await;
    let count = before.header("x-count").unwrap().parse::<u64>().unwrap();
    let req = Request::get("/")
        .header("host", "api.test")
        .header("x-token", &token)
        .header("x-block", "1")
        .body(Full::default())
        .unwrap();
    assert_eq!(gw.send(req).await.status, StatusCode::FORBIDDEN);
    let after = gw
        .send(Request::get("/").header("host", "api.test").header("x-token", &token).body(Full::default()).unwrap())
        .await;
    assert_eq!(after.header("x-count").unwrap().parse::<u64>().unwrap(), count + 1);
    // Without the AUTHN plugin's token the request has no principal: 403.
    assert_eq!(gw.send(get("/")).await.status, StatusCode::FORBIDDEN);
}

/// A filter module in WAT: `imports` and `body` on top of the ABI skeleton.
fn hostile_plugin(gw_dir: &std::path::Path, name: &str, body: &str, extra: &str) -> String {
    let path = wicket_tests::wasm::wat(gw_dir, name, &wicket_tests::wasm::hostile(body));
    plugin(name, &path, extra)
}

/// Starts a gateway whose config directory holds the WAT modules it names.
async fn start_with_modules(build: impl FnOnce(&std::path::Path) -> String) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let yaml = build(dir.path());
    std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
    TestGateway::start_in(dir).await
}

async fn failures(gw: &TestGateway, cause: &str) -> u64 {
    gw.metric_sum("wicket_wasm_plugin_failures_total", &[&format!("cause=\"{cause}\"")]).await
}

const LOOP: &str = r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $forever (br $forever)) (i32.const 0))"#;

#[tokio::test]
async fn an_endless_loop_hits_the_deadline_and_fails_per_strategy() {
    let up = Upstream::start("api").await;
    for (strategy, expect) in [("FAIL_CLOSE", StatusCode::SERVICE_UNAVAILABLE), ("FAIL_OPEN", StatusCode::OK)] {
        let gw = start_with_modules(|dir| {
            docs(&[&base(&up), &hostile_plugin(dir, "spin", LOOP, &format!("  failStrategy: {strategy}\n"))])
        })
        .await;
        // Answering at all proves the deadline cut the loop.
        assert_eq!(gw.send(get("/")).await.status, expect, "{strategy}");
        assert!(failures(&gw, "deadline").await >= 1);
        // The gateway keeps serving: the next request meets a fresh VM (and the loop again).
        assert_eq!(gw.send(get("/")).await.status, expect);
    }
}

#[tokio::test]
async fn a_memory_bomb_stops_at_the_vm_cap() {
    let up = Upstream::start("api").await;
    // Grows 64 MiB at a time until refused, then reports how far it got in pages.
    let bomb = r#"(import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (block $full (loop $grow
      (br_if $full (i32.eq (memory.grow (i32.const 1024)) (i32.const -1)))
      (br $grow)))
    (drop (call $reply (select (i32.const 200) (i32.const 500) (i32.le_u (memory.size) (i32.const 4096)))
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1))"#;
    let gw = start_with_modules(|dir| docs(&[&base(&up), &hostile_plugin(dir, "bomb", bomb, "")])).await;
    assert_eq!(gw.send(get("/")).await.status, StatusCode::OK, "memory stayed within 256 MiB");
    assert_eq!(up.hits(), 0);
}

/// Every hostcall that takes a pointer, called with out-of-bounds pointers and
/// lengths: each must answer INVALID_MEMORY_ACCESS (WASI: EFAULT) and touch nothing.
#[tokio::test]
async fn out_of_bounds_pointers_are_refused_by_every_hostcall() {
    let up = Upstream::start("api").await;
    let calls: &[(&str, &str, &str, i32)] = &[
        ("env", "proxy_log", "(i32.const 2) $P $L", 6),
        ("env", "proxy_get_log_level", "$P", 6),
        ("env", "proxy_get_current_time_nanoseconds", "$P", 6),
        ("env", "proxy_get_property", "$P $L (i32.const 0) (i32.const 4)", 6),
        ("env", "proxy_get_property", "(i32.const 512) (i32.const 11) $P (i32.const 4)", 6),
        ("env", "proxy_set_property", "$P $L (i32.const 0) (i32.const 1)", 6),
        ("env", "proxy_get_header_map_pairs", "(i32.const 0) $P (i32.const 4)", 6),
        ("env", "proxy_set_header_map_pairs", "(i32.const 0) $P $L", 6),
        ("env", "proxy_get_header_map_value", "(i32.const 0) $P $L (i32.const 0) (i32.const 4)", 6),
        ("env", "proxy_add_header_map_value", "(i32.const 0) $P $L (i32.const 0) (i32.const 1)", 6),
        ("env", "proxy_replace_header_map_value", "(i32.const 0) (i32.const 0) (i32.const 1) $P $L", 6),
        ("env", "proxy_remove_header_map_value", "(i32.const 0) $P $L", 6),
        ("env", "proxy_get_buffer_bytes", "(i32.const 7) (i32.const 0) (i32.const 8) $P (i32.const 4)", 6),
        ("env", "proxy_set_buffer_bytes", "(i32.const 0) (i32.const 0) (i32.const 0) $P $L", 6),
        ("env", "proxy_send_local_response", "(i32.const 200) $P $L (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)", 6),
        ("env", "proxy_http_call", "$P $L (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 0)", 6),
        ("env", "proxy_get_shared_data", "$P $L (i32.const 0) (i32.const 4) (i32.const 8)", 6),
        ("env", "proxy_set_shared_data", "(i32.const 0) (i32.const 1) $P $L (i32.const 0)", 6),
        ("env", "proxy_register_shared_queue", "$P $L (i32.const 0)", 6),
        ("env", "proxy_resolve_shared_queue", "$P $L (i32.const 0) (i32.const 1) (i32.const 0)", 6),
        ("env", "proxy_enqueue_shared_queue", "(i32.const 1) $P $L", 6),
        ("env", "proxy_define_metric", "(i32.const 0) $P $L (i32.const 0)", 6),
        ("wasi_snapshot_preview1", "fd_write", "(i32.const 1) $P (i32.const 1) (i32.const 0)", 21),
        ("wasi_snapshot_preview1", "environ_sizes_get", "$P (i32.const 0)", 21),
        ("wasi_snapshot_preview1", "clock_time_get", "(i32.const 0) (i64.const 0) $P", 21),
        ("wasi_snapshot_preview1", "random_get", "$P (i32.const 64)", 21),
    ];
    let mut imports = String::new();
    let mut checks = String::new();
    for (i, (module, name, args, expect)) in calls.iter().enumerate() {
        let params: String = args
            .split_whitespace()
            .filter(|t| t.starts_with('$') || t.starts_with("(i"))
            .map(|t| if t.starts_with("(i64") { " i64" } else { " i32" })
            .collect();
        imports.push_str(&format!("(import \"{module}\" \"{name}\" (func $f{i} (param{params}) (result i32)))\n"));
        for (v, (p, l)) in [("(i32.const 0xfffffff0)", "(i32.const 64)"), ("(i32.const 16)", "(i32.const 0xffffffff)")]
            .into_iter()
            .enumerate()
        {
            let n = i * 2 + v;
            if v == 1 && !args.contains("$L") {
                continue; // only a pointer: the in-bounds variant is a valid call
            }
            let call = args.replace("$P", p).replace("$L", l);
            checks.push_str(&format!(
                "(if (i32.ne (call $f{i} {call}) (i32.const {expect})) (then (drop (call $reply (i32.add (i32.const 200) (i32.const {n})) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1))) (return (i32.const 1))))\n"
            ));
        }
    }
    let body = format!(
        r#"{imports}
  (data (i32.const 512) "plugin_name")
  (import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    {checks}
    (drop (call $reply (i32.const 200)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1))"#
    );
    let gw = start_with_modules(|dir| docs(&[&base(&up), &hostile_plugin(dir, "oob", &body, "")])).await;
    let resp = gw.send(get("/")).await;
    // 200, or 200 + (2 × index in `calls` + variant) of the first call that misbehaved.
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(up.hits(), 0);
}

/// A module whose callback `trap_in` executes `unreachable`; every other callback
/// continues.
fn trapping(trap_in: &str) -> String {
    let cb = |name: &str, params: &str, result: bool| {
        let body = if name == trap_in {
            "unreachable"
        } else if result {
            "i32.const 0"
        } else {
            ""
        };
        let result = if result { "(result i32)" } else { "" };
        format!("(func (export \"{name}\") (param {params}) {result} {body})\n")
    };
    let mut out = String::new();
    out.push_str(&cb("proxy_on_request_headers", "i32 i32 i32", true));
    out.push_str(&cb("proxy_on_request_body", "i32 i32 i32", true));
    out.push_str(&cb("proxy_on_response_headers", "i32 i32 i32", true));
    out.push_str(&cb("proxy_on_response_body", "i32 i32 i32", true));
    out.push_str(&cb("proxy_on_done", "i32", true).replace("i32.const 0", "i32.const 1"));
    out.push_str(&cb("proxy_on_log", "i32", false));
    out.push_str(&cb("proxy_on_delete", "i32", false));
    out
}

#[tokio::test]
async fn a_trap_in_each_callback_fails_the_stream_per_strategy_and_the_gateway_carries_on() {
    let up = Upstream::start("api").await;
    let post = || Request::post("/").header("host", "api.test").body(Full::new(Bytes::from("payload"))).unwrap();
    let cases = [
        ("proxy_on_request_headers", StatusCode::SERVICE_UNAVAILABLE),
        ("proxy_on_response_headers", StatusCode::SERVICE_UNAVAILABLE),
        ("proxy_on_request_body", StatusCode::SERVICE_UNAVAILABLE),
        ("proxy_on_response_body", StatusCode::OK),
        ("proxy_on_done", StatusCode::OK),
        ("proxy_on_log", StatusCode::OK),
        ("proxy_on_delete", StatusCode::OK),
    ];
    for (callback, closed) in cases {
        for strategy in ["FAIL_CLOSE", "FAIL_OPEN"] {
            let gw = start_with_modules(|dir| {
                docs(&[
                    &base(&up),
                    &hostile_plugin(dir, "trap", &trapping(callback), &format!("  failStrategy: {strategy}\n")),
                ])
            })
            .await;
            let hits = up.hits();
            let addr = gw.addr();
            // A failure in the response body resets the stream: the client sees an error.
            let answer = tokio::spawn(client::send(addr, post())).await;
            match (strategy, callback) {
                ("FAIL_CLOSE", "proxy_on_response_body") => {
                    assert!(answer.is_err() || answer.as_ref().unwrap().body != "api", "{callback}")
                }
                ("FAIL_CLOSE", _) => assert_eq!(answer.unwrap().status, closed, "{callback} {strategy}"),
                _ => {
                    let resp = answer.unwrap();
                    assert_eq!((resp.status, resp.body.as_str()), (StatusCode::OK, "api"), "{callback} {strategy}");
                    assert_eq!(up.last().body, "payload", "{callback} {strategy}");
                }
            }
            if callback.contains("response") {
                assert!(up.hits() > hits, "{callback}: the request went upstream before the trap");
            }
            // The plugin failure is counted, and a route the plugin still covers works
            // again once a fresh VM serves it (FAIL_OPEN) or fails cleanly (FAIL_CLOSE).
            for _ in 0..50 {
                if failures(&gw, "trap").await >= 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(failures(&gw, "trap").await >= 1, "{callback} {strategy}");
            if strategy == "FAIL_OPEN" {
                assert_eq!(gw.send(get("/")).await.status, StatusCode::OK, "{callback}");
            }
        }
    }
}

#[tokio::test]
async fn broken_modules_are_rejected_with_the_reason_and_the_fail_strategy_applies() {
    let up = Upstream::start("api").await;
    let no_marker =
        "(module (memory (export \"memory\") 1) (func (export \"malloc\") (param i32) (result i32) (i32.const 0)))";
    let no_alloc = "(module (memory (export \"memory\") 1) (func (export \"proxy_abi_version_0_2_1\")))";
    let cases: [(&str, String, &str); 6] = [
        ("marker", no_marker.to_string(), "no proxy_abi_version_0_2_1"),
        ("alloc", no_alloc.to_string(), "no allocator"),
        ("vmstart", wicket_tests::wasm::hostile("").replace("(func (export \"proxy_on_vm_start\") (param i32 i32) (result i32) (i32.const 1))", "(func (export \"proxy_on_vm_start\") (param i32 i32) (result i32) (i32.const 0))"), "proxy_on_vm_start returned false"),
        ("configure", wicket_tests::wasm::hostile("").replace("(func (export \"proxy_on_configure\") (param i32 i32) (result i32) (i32.const 1))", "(func (export \"proxy_on_configure\") (param i32 i32) (result i32) unreachable)"), "proxy_on_configure failed"),
        ("exit", wicket_tests::wasm::hostile("(import \"wasi_snapshot_preview1\" \"proc_exit\" (func $exit (param i32)))\n(func (export \"_initialize\") (call $exit (i32.const 3)))"), "proc_exit(3)"),
        ("garbage", "(module".to_string(), ""),
    ];
    for (name, text, why) in cases {
        for (strategy, status) in [("FAIL_CLOSE", StatusCode::FORBIDDEN), ("FAIL_OPEN", StatusCode::OK)] {
            let gw = start_with_modules(|dir| {
                let path = dir.join(format!("{name}.wasm"));
                let bytes = wat::parse_str(&text).unwrap_or_else(|_| b"\0asm\x01\0\0\0garbage".to_vec());
                std::fs::write(&path, bytes).unwrap();
                docs(&[&base(&up), &plugin(name, &path, &format!("  failStrategy: {strategy}\n"))])
            })
            .await;
            let snapshot = gw.gateway.snapshot();
            let diag = snapshot.diagnostics.iter().map(ToString::to_string).find(|d| d.contains(name));
            let diag = diag.unwrap_or_else(|| panic!("{name}: no diagnostic"));
            assert!(diag.contains("WasmPlugin/default/") && diag.contains(why), "{diag}");
            assert_eq!(gw.send(get("/")).await.status, status, "{name} {strategy}");
        }
    }
}

/// A WAT filter adding `x-module: wat` to every response.
const WAT_HEADER: &str = r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (data (i32.const 256) "x-modulewat")
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 256) (i32.const 8) (i32.const 264) (i32.const 3)))
    (i32.const 0))"#;

#[tokio::test]
async fn reloads_swap_plugins_without_failing_requests_and_keep_the_last_good_module() {
    let up = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("filter.wasm");
    std::fs::copy(conformance(), &module).unwrap();
    let with = |version: &str, url: &str| {
        let config = format!(r#"{{"response_set": [["x-version", "{version}"]]}}"#);
        docs(&[
            &base(&up),
            &format!(
                "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: swap, namespace: default}}
spec:
  url: {url}
  pluginConfig: {config}
"
            ),
        ])
    };
    std::fs::write(dir.path().join("config.yaml"), with("a", "filter.wasm")).unwrap();
    let mut gw = TestGateway::start_in(dir).await;
    assert_eq!(gw.send(get("/")).await.header("x-version"), Some("a"));

    // Steady load while the plugin is swapped, broken and replaced.
    let addr = gw.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client::send(addr, get("/")).await.status {
                    StatusCode::OK => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };

    gw.write("config.yaml", &with("b", "filter.wasm")).await;
    assert_eq!(gw.send(get("/")).await.header("x-version"), Some("b"));

    // A broken module is rejected; version b keeps serving.
    std::fs::write(gw.dir().join("broken.wasm"), b"\0asm\x01\0\0\0junk").unwrap();
    gw.write("config.yaml", &with("c", "broken.wasm")).await;
    assert_eq!(gw.send(get("/")).await.header("x-version"), Some("b"));
    let snapshot = gw.gateway.snapshot();
    let status = snapshot.resources.iter().find(|r| r.id.name == "swap").unwrap();
    assert_eq!(status.state, wicket::snapshot::ResourceState::LastGood);

    // Back to a good module, then the module file itself replaced in place.
    gw.write("config.yaml", &with("d", "filter.wasm")).await;
    assert_eq!(gw.send(get("/")).await.header("x-version"), Some("d"));
    let wat = wat::parse_str(wicket_tests::wasm::hostile(WAT_HEADER)).unwrap();
    std::fs::write(gw.dir().join("filter.wasm.tmp"), wat).unwrap();
    std::fs::rename(gw.dir().join("filter.wasm.tmp"), gw.dir().join("filter.wasm")).unwrap();
    gw.wait_for_reload().await;
    let resp = gw.send(get("/")).await;
    assert_eq!((resp.header("x-module"), resp.header("x-version")), (Some("wat"), None));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 0);
    assert_eq!(failed, 0, "no request failed across the swaps");
}

/// Points a corpus WasmPlugin's `url` (or template placeholder) at a local module.
fn localize(yaml: &str, module: &std::path::Path) -> String {
    let mut out = String::new();
    for line in yaml.lines() {
        if let Some((indent, _)) = line.split_once("url:") {
            out.push_str(&format!("{indent}url: file://{}\n", module.display()));
        } else {
            out.push_str(&line.replace("{{ .WasmPluginName }}", "templated"));
            out.push('\n');
        }
    }
    out
}

#[tokio::test]
async fn the_corpus_wasm_plugins_load_from_local_files() {
    wicket_tests::require_corpus!();
    let up = Upstream::start("api").await;
    let module = conformance();
    // basic-auth sits in istio-system with the ingress selector: it applies here.
    let basic = localize(&corpus("wasm/basic-auth-ingress.yaml"), module);
    let gw = TestGateway::start(&docs(&[&base(&up), &basic])).await;
    assert!(gw.gateway.snapshot().diagnostics.iter().all(|d| !d.is_error()), "{:?}", gw.gateway.snapshot().diagnostics);
    assert_eq!(gw.gateway.snapshot().wasm.filters.len(), 1);
    assert_eq!(gw.send(get("/productpage")).await.status, StatusCode::OK);

    // attributegen's selector (app: b) does not select this gateway; the template
    // with a targetRef is reported as unsupported and left out.
    let attributegen = localize(&corpus("wasm/attributegen.yaml.tmpl"), module);
    let templated = localize(&corpus("wasm/gateway-wasm-filter.yaml.tmpl"), module)
        .lines()
        .filter(|l| !l.contains("{{"))
        .collect::<Vec<_>>()
        .join("\n");
    let gw = TestGateway::start(&docs(&[&base(&up), &attributegen, &templated])).await;
    assert!(gw.gateway.snapshot().wasm.filters.is_empty());
    assert_eq!(gw.send(get("/")).await.status, StatusCode::OK);

    // The bad-url samples as written: offline, FAIL_CLOSE denies and FAIL_OPEN skips.
    let close = TestGateway::start(&docs(&[&base(&up), &corpus("wasm/bad-filter-fail-close.yaml")])).await;
    let resp = close.send(get("/")).await;
    assert_eq!((resp.status, resp.body.as_str()), (StatusCode::FORBIDDEN, "RBAC: access denied"));
    let open = TestGateway::start(&docs(&[&base(&up), &corpus("wasm/bad-filter-fail-open.yaml")])).await;
    assert_eq!(open.send(get("/")).await.status, StatusCode::OK);
    let diag = open.gateway.snapshot().diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert!(diag.contains("cannot fetch https://bad-url.wasm in offline mode"), "{diag}");
}

#[tokio::test]
async fn filters_see_http2_requests_with_pseudo_headers() {
    let up = Upstream::start("api").await;
    let config = r#"{"properties": ["request.protocol", "request.host"], "request_add": [["x-h2", "seen"]]}"#;
    let gw = TestGateway::start(&docs(&[&base(&up), &filter("h2", config, "")])).await;
    let resp = client::send_h2(gw.addr(), "api.test", get("/h2")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-prop-request.protocol"), Some("HTTP/2"));
    assert_eq!(resp.header("x-prop-request.host"), Some("api.test"));
    assert_eq!(up.last().headers["x-h2"], "seen");
}

#[tokio::test]
async fn a_remote_module_loads_offline_when_its_sha256_is_cached() {
    let up = Upstream::start("api").await;
    let module = std::fs::read(conformance()).unwrap();
    let sha = wicket::hex::sha256(&module);
    // A first gateway compiles the local file and caches it under its sha256.
    let local =
        TestGateway::start(&docs(&[&base(&up), &filter("local", r#"{"response_add": [["x-cached", "1"]]}"#, "")]))
            .await;
    assert_eq!(local.send(get("/")).await.header("x-cached"), Some("1"));
    let remote = |sha: &str| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: remote, namespace: default}}
spec:
  url: oci://registry.example/conformance:1
  sha256: {sha}
  pluginConfig: {{response_add: [[x-cached, remote]]}}
"
        )
    };
    let gw = TestGateway::start(&docs(&[&base(&up), &remote(&sha)])).await;
    assert_eq!(gw.send(get("/")).await.header("x-cached"), Some("remote"));
    let unknown = "0".repeat(64);
    let gw = TestGateway::start(&docs(&[&base(&up), &remote(&unknown)])).await;
    assert_eq!(gw.send(get("/")).await.status, StatusCode::FORBIDDEN, "not cached: FAIL_CLOSE placeholder");
}

#[tokio::test]
async fn a_panicking_filter_is_a_trap_handled_by_the_fail_strategy() {
    let up = Upstream::start("api").await;
    for (strategy, status) in [("FAIL_CLOSE", StatusCode::SERVICE_UNAVAILABLE), ("FAIL_OPEN", StatusCode::OK)] {
        let extra = format!("  failStrategy: {strategy}\n");
        let gw =
            TestGateway::start(&docs(&[&base(&up), &filter("panics", r#"{"panic_if_header": "x-panic"}"#, &extra)]))
                .await;
        let req = Request::get("/").header("host", "api.test").header("x-panic", "1").body(Full::default()).unwrap();
        assert_eq!(gw.send(req).await.status, status, "{strategy}");
        assert_eq!(gw.send(get("/")).await.status, StatusCode::OK, "other requests are unaffected");
        assert!(failures(&gw, "trap").await >= 1);
    }
}

#[tokio::test]
async fn a_module_path_to_a_device_is_refused_not_read_forever() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&docs(&[&base(&up), &plugin("zero", std::path::Path::new("/dev/zero"), "")])).await;
    let diags: Vec<String> = gw.gateway.snapshot().diagnostics.iter().map(ToString::to_string).collect();
    assert!(diags.iter().any(|d| d.contains("/dev/zero") && d.contains("not a regular file")), "{diags:?}");
}

/// A WasmPlugin document that does not load (a misspelt field): a plugin that loaded
/// before keeps serving its last good version; without one, FAIL_CLOSE (the default)
/// denies what it would have filtered and says so on `/ready`, and FAIL_OPEN lets
/// requests go on without it.
#[tokio::test]
async fn an_unloadable_wasm_plugin_keeps_its_last_good_version_or_fails_by_its_strategy() {
    let up = Upstream::start("api").await;
    let good = filter("guard", r#"{"response_add": [["x-guarded", "yes"]]}"#, "");
    let broken = |extra: &str| good.replace("  pluginConfig:", &format!("{extra}  phse: AUTHN\n  pluginConfig:"));

    let mut gw = TestGateway::start(&docs(&[&base(&up), &good])).await;
    assert_eq!(gw.send(get("/")).await.header("x-guarded"), Some("yes"));
    gw.write("config.yaml", &docs(&[&base(&up), &broken("")])).await;
    let resp = gw.send(get("/")).await;
    assert_eq!((resp.status, resp.header("x-guarded")), (StatusCode::OK, Some("yes")), "the last good version serves");

    let closed = TestGateway::start(&docs(&[&base(&up), &broken("")])).await;
    let resp = closed.send(get("/")).await;
    assert_eq!((resp.status, resp.body.as_str()), (StatusCode::FORBIDDEN, "RBAC: access denied"));
    assert!(closed.ready().await.contains("fail_closed WasmPlugin/default/guard"), "{}", closed.ready().await);
    assert_eq!(up.hits(), 2, "the denied request never reached the upstream");

    let open = TestGateway::start(&docs(&[&base(&up), &broken("  failStrategy: FAIL_OPEN\n")])).await;
    let resp = open.send(get("/")).await;
    assert_eq!((resp.status, resp.header("x-guarded")), (StatusCode::OK, None));
}
