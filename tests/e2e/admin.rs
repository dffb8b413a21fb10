//! The admin listener and the metrics it exports, with Istio's names and labels.

use http::StatusCode;
use wicket_tests::{
    client,
    yaml::{docs, service_entry, GATEWAY},
    TestGateway, Upstream,
};

fn vs(extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.test]
  gateways: [gw]
  http:
{extra}  - route: [{{destination: {{host: api}}}}]
"
    )
}

async fn admin_get(gw: &TestGateway, path: &str) -> client::Resp {
    client::send(gw.gateway.admin_addr().unwrap(), client::get("admin", path)).await
}

/// The value of the sample whose name and labels contain all of `parts`.
fn sample(text: &str, parts: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn metrics_use_istio_names_labels_and_buckets() {
    let up = Upstream::start("api").await;
    let gw = TestGateway::start(&docs(&[
        GATEWAY,
        &service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]),
        &vs(""),
    ]))
    .await;
    for _ in 0..3 {
        assert_eq!(gw.get("api.test", "/").await.status, StatusCode::OK);
    }
    assert_eq!(gw.get("nowhere.test", "/").await.status, StatusCode::NOT_FOUND);
    gw.find_log(|l| l["response_code"] == 404).await; // the last request has finished
    let m = admin_get(&gw, "/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    let ok = [
        "istio_requests_total{",
        "reporter=\"source\"",
        "source_workload=\"istio-ingressgateway\"",
        "destination_service=\"api.default.svc.cluster.local\"",
        "destination_service_name=\"api\"",
        "destination_service_namespace=\"default\"",
        "destination_version=\"v1\"",
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "response_flags=\"-\"",
    ];
    assert_eq!(sample(&m.body, &ok), Some(3.0), "{}", m.body);
    let nr =
        ["istio_requests_total{", "destination_service=\"unknown\"", "response_code=\"404\"", "response_flags=\"NR\""];
    assert_eq!(sample(&m.body, &nr), Some(1.0), "{}", m.body);
    let bucket = ["istio_request_duration_milliseconds_bucket{", "response_code=\"200\"", "le=\"+Inf\""];
    assert_eq!(sample(&m.body, &bucket), Some(3.0), "{}", m.body);
    assert!(m.body.contains("le=\"0.5\"") && m.body.contains("le=\"3600000.0\""), "Istio's duration buckets");
    assert!(sample(&m.body, &["istio_response_bytes_sum{", "response_code=\"200\""]).unwrap() >= 9.0);
    assert_eq!(sample(&m.body, &["wicket_upstream_requests_total{", "outcome=\"2xx\""]), Some(3.0));
    assert_eq!(sample(&m.body, &["wicket_config_reloads_total{", "result=\"success\""]), Some(1.0));
    assert_eq!(sample(&m.body, &["wicket_config_version"]), Some(1.0));
    assert!(sample(&m.body, &["wicket_listener_active_connections{", "port=\"80\""]).is_some());
}

#[tokio::test]
async fn config_dump_clusters_and_ready() {
    let up = Upstream::start("api").await;
    let reg = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let mut gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs("")])).await;
    assert_eq!(admin_get(&gw, "/ready").await.status, StatusCode::OK);
    let broken = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: typo}\nspec:\n  hosts: [t.test]\n  gateways: [gw]\n  htp: []\n";
    gw.write("typo.yaml", broken).await;
    let dump: serde_json::Value = serde_json::from_str(&admin_get(&gw, "/config_dump").await.body).unwrap();
    assert_eq!(dump["version"], 2);
    let resources = dump["resources"].as_array().unwrap();
    let api = resources.iter().find(|r| r["resource"] == "VirtualService/default/api").unwrap();
    assert_eq!(api["state"], "applied");
    let typo = resources.iter().find(|r| r["resource"] == "VirtualService/default/typo").unwrap();
    assert_eq!(typo["state"], "rejected");
    assert!(typo["errors"][0].as_str().unwrap().contains("unknown field `htp`"), "{typo}");
    assert!(dump["last_reload"]["errors"][0].as_str().unwrap().contains("typo.yaml"));
    let clusters: serde_json::Value = serde_json::from_str(&admin_get(&gw, "/clusters").await.body).unwrap();
    let c = &clusters["clusters"][0];
    assert_eq!(c["name"], "outbound|80||api.default.svc.cluster.local");
    assert_eq!(c["endpoints"][0]["address"], up.addr.to_string());
    assert_eq!(c["endpoints"][0]["health"], "healthy");
}

#[tokio::test]
async fn logging_level_changes_at_run_time() {
    wicket::telemetry::log_level::init("error");
    let gw = TestGateway::start(GATEWAY).await;
    let admin = gw.gateway.admin_addr().unwrap();
    let post = |q: &'static str| http::Request::post(q).header("host", "admin").body(Default::default()).unwrap();
    assert_eq!(client::send(admin, post("/logging?level=warn")).await.status, StatusCode::OK);
    assert_eq!(client::send(admin, post("/logging?level=error")).await.status, StatusCode::OK);
    assert_eq!(client::send(admin, post("/logging?level=no[such")).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(client::send(admin, post("/logging")).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(admin_get(&gw, "/logging").await.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// Prometheus from Debian (installed by `.ci/run`) scraping the admin endpoint.
#[tokio::test]
async fn a_real_prometheus_counts_what_was_sent() {
    let up = Upstream::start("api").await;
    let reg = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs("")])).await;
    for _ in 0..5 {
        gw.get("api.test", "/").await;
    }
    for _ in 0..3 {
        gw.get("api.test", "/status/503").await;
    }
    for _ in 0..2 {
        gw.get("unrouted.test", "/").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: wicket\n  static_configs: [{{targets: ['{}']}}]\n",
        gw.gateway.admin_addr().unwrap()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is installed (.ci/run installs it)");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let query = "/api/v1/query?query=sum%20by%20(response_code)%20(istio_requests_total)";
    let mut last = String::new();
    for _ in 0..120 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            drop(stream);
            let r = client::send(addr, client::get("prometheus", query)).await;
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            let mut counts: Vec<(String, String)> = v["data"]["result"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            (
                                s["metric"]["response_code"].as_str().unwrap_or("").to_string(),
                                s["value"][1].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            counts.sort();
            let want = [("200", "5"), ("404", "2"), ("503", "3")].map(|(a, b)| (a.to_string(), b.to_string())).to_vec();
            if counts == want {
                return;
            }
            last = format!("{counts:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    panic!("Prometheus never reported the expected counts; last answer: {last}");
}

fn mesh(body: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n{body}"
    )
}

#[tokio::test]
async fn access_logs_follow_the_mesh_config_format() {
    let up = Upstream::start("api").await;
    let reg = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    // Istio's default TEXT format.
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(""), &mesh("    accessLogEncoding: TEXT\n")])).await;
    let req = http::Request::get("/x?y=1")
        .header("host", "api.test")
        .header("user-agent", "probe/1")
        .header("x-request-id", "rid-1")
        .body(Default::default())
        .unwrap();
    gw.send(req).await;
    let line = gw.next_line().await.unwrap();
    let rest = line.strip_prefix('[').unwrap().split_once("] ").unwrap().1;
    assert!(rest.starts_with("\"GET /x?y=1 HTTP/1.1\" 200 - - - \"-\" 0 3 "), "{line}");
    assert!(rest.contains("\"-\" \"probe/1\" \"rid-1\" \"api.test\""), "{line}");
    assert!(rest.contains(&format!("\"{}\" outbound|80||api.default.svc.cluster.local", up.addr)), "{line}");

    // A custom format, and a 404 with its flag.
    let custom = mesh("    accessLogEncoding: TEXT\n    accessLogFormat: \"%REQ(:METHOD)% %REQ(:AUTHORITY)% %RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(X-MISSING?X-REQUEST-ID)% %ROUTE_NAME%\\n\"\n");
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(""), &custom])).await;
    let req = http::Request::get("/")
        .header("host", "nowhere.test")
        .header("x-request-id", "rid-2")
        .body(Default::default())
        .unwrap();
    gw.send(req).await;
    assert_eq!(gw.next_line().await.unwrap(), "GET nowhere.test 404 NR rid-2 -");

    // accessLogFile: "" turns access logs off.
    let gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(""), &mesh("    accessLogFile: \"\"\n")])).await;
    gw.get("api.test", "/").await;
    assert_eq!(gw.next_line().await, None);
}

#[tokio::test]
async fn access_logs_go_to_the_mesh_config_file_and_back() {
    let up = Upstream::start("api").await;
    let reg = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let logs = tempfile::tempdir().unwrap();
    let file = logs.path().join("access.log");
    let to_file = mesh(&format!("    accessLogFile: {}\n", file.display()));
    let mut gw = TestGateway::start(&docs(&[GATEWAY, &reg, &vs(""), &to_file])).await;
    gw.get("api.test", "/into-file").await;
    let mut written = String::new();
    for _ in 0..300 {
        written = std::fs::read_to_string(&file).unwrap_or_default();
        if written.contains("/into-file") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let line: serde_json::Value = serde_json::from_str(written.lines().next().unwrap()).unwrap();
    assert_eq!(line["path"], "/into-file");
    assert_eq!(gw.next_line().await, None, "nothing went to the original output");

    // Without accessLogFile the lines go back to the gateway's output.
    gw.write("config.yaml", &docs(&[GATEWAY, &reg, &vs("")])).await;
    gw.get("api.test", "/back").await;
    assert!(gw.next_line().await.unwrap().contains("/back"));
    assert!(!std::fs::read_to_string(&file).unwrap().contains("/back"));

    // A relative path is an error naming the field.
    let relative = mesh("    accessLogFile: access.log\n");
    let problems = validate_dir(&relative);
    assert!(
        problems.iter().any(|p| p.contains("data.mesh.accessLogFile") && p.contains("must be an absolute path")),
        "{problems:#?}"
    );
}

fn validate_dir(yaml: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), yaml).unwrap();
    let bootstrap = wicket::config::Bootstrap { config_dir: Some(dir.path().into()), ..Default::default() };
    wicket::validate(&bootstrap).unwrap().iter().map(ToString::to_string).collect()
}

#[test]
fn a_bad_access_log_format_is_a_validate_error() {
    let problems = validate_dir(&mesh("    accessLogEncoding: TEXT\n    accessLogFormat: \"%NOPE%\"\n"));
    assert!(
        problems.iter().any(|p| p.contains(
            "ConfigMap/istio-system/istio: data.mesh.accessLogFormat: error: unknown access log operator %NOPE%"
        )),
        "{problems:#?}"
    );
}

/// The Grafana dashboard in `examples/` only queries series the gateway exports.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let up = Upstream::start("api").await;
    let se = service_entry("api.default.svc.cluster.local", 80, "HTTP", &[(&up, "v1")]);
    let gw = TestGateway::start(&docs(&[GATEWAY, &se, &vs("")])).await;
    assert_eq!(gw.get("api.test", "/").await.status, StatusCode::OK);
    gw.find_log(|l| l["response_code"] == 200).await; // the request has finished
    let exported = admin_get(&gw, "/metrics").await.body;
    let path = format!("{}/../examples/observability/grafana-dashboard.json", env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find(['i', 'w']) {
                let tail = &rest[at..];
                let word: String = tail.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if word.starts_with("istio_") || word.starts_with("wicket_") {
                    names.push(word.clone());
                }
                rest = &tail[word.len().max(1)..];
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let family = name.trim_end_matches("_bucket").trim_end_matches("_total");
        assert!(exported.contains(&format!("# TYPE {family} ")), "the dashboard queries {name}, which is not exported");
    }
}
