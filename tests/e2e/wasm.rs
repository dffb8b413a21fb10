//! Proxy-wasm filters end to end: a filter built from source with the public SDK,
//! loaded through WasmPlugin YAML, driving real requests.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use wicket_tests::{
    client,
    wasm::{conformance, plugin},
    yaml::{docs, service_entry, GATEWAY},
    TestGateway, Upstream,
};

/// Gateway `gw`, ServiceEntry `api` → `up`, and a catch-all route to it.
fn base(up: &Upstream) -> String {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api, namespace: default}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: api.default.svc.cluster.local}}]\n";
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
