//! Distributed tracing: propagation (W3C, B3) towards the upstream, spans exported
//! over OTLP/HTTP to a collector named in the mesh config, sampling, and a collector
//! that is down.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use wicket_tests::{
    otlp,
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
  - name: main
    route: [{destination: {host: api.default.svc.cluster.local}}]
";
    docs(&[GATEWAY, &service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(up, "v1")]), vs])
}

/// Mesh config naming an OTLP collector at `collector_port` (via a ServiceEntry).
fn tracing_mesh(collector_port: u16, sampling: f64) -> String {
    let mesh = format!(
        "apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    defaultProviders:
      tracing: [otel]
    defaultConfig:
      tracing:
        sampling: {sampling}
    extensionProviders:
    - name: otel
      opentelemetry:
        service: otel-collector.observability.svc.cluster.local
        port: 4318
"
    );
    let se = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: otel, namespace: default}}
spec:
  hosts: [otel-collector.observability.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 4318, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {collector_port}}}}}]
"
    );
    docs(&[&mesh, &se])
}

/// Waits until the collector has received `n` spans; returns them.
async fn spans(collector: &Upstream, n: usize) -> Vec<otlp::Span> {
    for _ in 0..100 {
        let all: Vec<otlp::Span> = collector.seen().iter().flat_map(|r| otlp::decode(&r.body).1).collect();
        if all.len() >= n {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the collector did not receive {n} spans");
}

fn get(headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut r = Request::get("/traced").header("host", "api.test");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::default()).unwrap()
}

#[tokio::test]
async fn w3c_context_is_continued_and_the_span_exported_over_otlp() {
    let (up, collector) = (Upstream::start("api").await, Upstream::start("collector").await);
    let gw = TestGateway::start(&docs(&[&base(&up), &tracing_mesh(collector.addr.port(), 0.0)])).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = gw.send(get(&[("traceparent", parent), ("tracestate", "congo=t61")])).await;
    assert_eq!(resp.status, StatusCode::OK);
    let seen = up.last();
    let tp = seen.headers["traceparent"].to_str().unwrap().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"));
    assert_ne!(parts[2], "00f067aa0ba902b7", "the upstream's parent is the gateway's span");
    assert_eq!(seen.headers["tracestate"], "congo=t61");

    let spans = spans(&collector, 2).await;
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(server.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(server.parent, "00f067aa0ba902b7");
    assert_eq!(server.span_id, parts[2]);
    assert_eq!(server.name, "api.default.svc.cluster.local:80/*");
    assert_eq!(server.attr("http.method"), Some("GET"));
    assert_eq!(server.attr("http.url"), Some("http://api.test/traced"));
    assert_eq!(server.attr("http.status_code"), Some("200"));
    assert_eq!(server.attr("upstream_cluster"), Some("outbound|80||api.default.svc.cluster.local"));
    assert_eq!(server.attr("guid:x-request-id").map(str::len), Some(36));
    let attempt = spans.iter().find(|s| s.kind == 3).unwrap();
    assert_eq!(
        (attempt.parent.as_str(), attempt.trace_id.as_str()),
        (server.span_id.as_str(), server.trace_id.as_str())
    );
    assert_eq!(attempt.attr("upstream_address"), Some(up.addr.to_string().as_str()));
    let (service, _) = otlp::decode(&collector.last().body);
    assert_eq!(service, "ingressgateway.default");
    assert_eq!(collector.last().path, "/v1/traces");
    assert_eq!(collector.last().headers["content-type"], "application/x-protobuf");
}

#[tokio::test]
async fn b3_headers_are_answered_in_b3_and_unsampled_callers_are_not_exported() {
    let (up, collector) = (Upstream::start("api").await, Upstream::start("collector").await);
    let gw = TestGateway::start(&docs(&[&base(&up), &tracing_mesh(collector.addr.port(), 100.0)])).await;
    let b3 = [
        ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "0"),
    ];
    assert_eq!(gw.send(get(&b3)).await.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.headers["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
    assert_eq!(seen.headers["x-b3-parentspanid"], "a2fb4a1d1a96d312");
    assert_eq!(seen.headers["x-b3-sampled"], "0");
    assert_ne!(seen.headers["x-b3-spanid"], "a2fb4a1d1a96d312");

    let single = [("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")];
    assert_eq!(gw.send(get(&single)).await.status, StatusCode::OK);
    let b3 = up.last().headers["b3"].to_str().unwrap().to_string();
    assert!(b3.starts_with("80f198ee56343ba864fe8b2a57d3eff7-") && b3.ends_with("-1-e457b5a2e4d86bd1"), "{b3}");

    // Sampling 100% with no caller decision: exported too. The unsampled B3 request is not.
    assert_eq!(gw.send(get(&[])).await.status, StatusCode::OK);
    let spans = spans(&collector, 4).await;
    assert!(spans.iter().all(|s| s.trace_id != "463ac35c9f6413ad48485a3953bb6124"));
    assert!(spans.iter().any(|s| s.trace_id == "80f198ee56343ba864fe8b2a57d3eff7"));
}

#[tokio::test]
async fn a_collector_that_is_down_costs_spans_not_requests() {
    let up = Upstream::start("api").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = TestGateway::start(&docs(&[&base(&up), &tracing_mesh(closed, 100.0)])).await;
    for _ in 0..5 {
        assert_eq!(gw.send(get(&[])).await.status, StatusCode::OK);
    }
    for _ in 0..100 {
        if gw.metric_sum("wicket_tracing_spans_dropped_total", &[]).await >= 10 {
            return; // five server spans and five attempt spans
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("dropped spans were not counted");
}

#[tokio::test]
async fn without_a_tracing_provider_trace_headers_pass_through_untouched() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&base(&up)).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(gw.send(get(&[("traceparent", parent)])).await.status, StatusCode::OK);
    assert_eq!(up.last().headers["traceparent"], parent);
}

fn telemetry(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
}

#[tokio::test]
async fn telemetry_resources_turn_metrics_and_access_logs_off_with_istio_inheritance() {
    let up = Upstream::start("api").await;
    let off = telemetry(
        "istio-system",
        "mesh-default",
        "  metrics:\n  - providers: [{name: prometheus}]\n    overrides:\n    - match: {metric: ALL_METRICS}\n      disabled: true\n  accessLogging:\n  - disabled: true\n",
    );
    let gw = TestGateway::start(&docs(&[&base(&up), &off])).await;
    assert_eq!(gw.send(get(&[])).await.status, StatusCode::OK);
    assert_eq!(gw.metric_sum("istio_requests_total", &[]).await, 0);
    assert!(gw.next_line().await.is_none(), "no access log line");

    // The gateway's own namespace, selecting it, turns metrics back on.
    let on = telemetry(
        "default",
        "gateway",
        "  selector: {matchLabels: {istio: ingressgateway}}\n  metrics:\n  - overrides:\n    - disabled: false\n",
    );
    let gw = TestGateway::start(&docs(&[&base(&up), &off, &on])).await;
    assert_eq!(gw.send(get(&[])).await.status, StatusCode::OK);
    assert_eq!(gw.metric_sum("istio_requests_total", &[]).await, 1);
    assert!(gw.next_line().await.is_none(), "access logs stay off (not overridden)");
}

#[tokio::test]
async fn telemetry_tracing_picks_the_provider_and_sampling_or_only_propagates() {
    let (up, collector) = (Upstream::start("api").await, Upstream::start("collector").await);
    // The mesh config declares the provider without making it the default.
    let mesh = tracing_mesh(collector.addr.port(), 0.0).replace("    defaultProviders:\n      tracing: [otel]\n", "");
    let traced = telemetry(
        "istio-system",
        "tracing",
        "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 100\n",
    );
    let gw = TestGateway::start(&docs(&[&base(&up), &mesh, &traced])).await;
    assert_eq!(gw.send(get(&[])).await.status, StatusCode::OK);
    assert_eq!(spans(&collector, 2).await.len(), 2);

    let quiet = telemetry("default", "quiet", "  tracing:\n  - disableSpanReporting: true\n");
    let before = collector.hits();
    let gw = TestGateway::start(&docs(&[&base(&up), &mesh, &traced, &quiet])).await;
    assert_eq!(gw.send(get(&[])).await.status, StatusCode::OK);
    assert!(up.last().headers["traceparent"].to_str().unwrap().ends_with("-01"), "still propagated, sampled");
    tokio::time::sleep(Duration::from_millis(1500)).await; // longer than one export batch
    assert_eq!(collector.hits(), before, "nothing exported");
}
