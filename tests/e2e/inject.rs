//! Pod injection: `wicket inject` on real workload YAML against golden files, and
//! the admission webhook over HTTPS with a real AdmissionReview.

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use wicket::sidecar::{
    inject::{inject_text, InjectConfig},
    webhook,
};
use wicket_tests::{client, Pki};

fn golden(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/inject").join(name)
}

fn config() -> InjectConfig {
    InjectConfig { image: "wicket:test".into(), ..InjectConfig::default() }
}

#[test]
fn workloads_are_injected_as_the_golden_file_says() {
    let input = std::fs::read_to_string(golden("workloads.yaml")).unwrap();
    let (out, warnings) = inject_text(&input, &config()).unwrap();
    let expected_path = golden("workloads.injected.yaml");
    if std::env::var_os("WICKET_UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &out).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    assert_eq!(out, expected, "rerun with WICKET_UPDATE_GOLDEN=1 to accept a deliberate change");
    assert_eq!(
        warnings,
        [
            "ServiceAccount/cart: not a workload; passed through unchanged",
            "Service/cart: not a workload; passed through unchanged",
            "DaemonSet/node-exporter: injection not requested or turned off",
            "Pod/debug: hostNetwork pods are not injected",
        ]
    );
    // Injecting again changes nothing.
    let (again, _) = inject_text(&out, &config()).unwrap();
    assert_eq!(again, out);
}

#[test]
fn namespace_labels_and_pod_opt_ins_decide_like_istio() {
    let pod = |label: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {{{label}}}\nspec:\n  containers: [{{name: app, image: app}}]\n")
    };
    let injected = |yaml: &str, ns: Option<&str>| {
        let namespace_labels = ns.map(|l| [("istio-injection".to_string(), l.to_string())].into());
        let (out, _) = inject_text(yaml, &InjectConfig { namespace_labels, ..config() }).unwrap();
        out.contains("istio-proxy")
    };
    assert!(injected(&pod(""), None), "kube-inject injects unless told not to");
    assert!(injected(&pod(""), Some("enabled")));
    assert!(!injected(&pod(""), Some("other")), "a namespace that did not enable injection");
    assert!(injected(&pod("sidecar.istio.io/inject: 'true'"), Some("other")), "a pod may opt in");
    assert!(!injected(&pod("sidecar.istio.io/inject: 'false'"), Some("enabled")), "a pod may opt out");
    assert!(!injected(&pod("sidecar.istio.io/inject: 'true'"), Some("disabled")), "disabled wins");

    let bad = "apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations: {traffic.sidecar.istio.io/excludeOutboundPorts: 'db'}
spec:
  containers: [{name: app, image: app}]
";
    let e = inject_text(bad, &config()).unwrap_err().to_string();
    assert!(e.contains("Pod/p") && e.contains("traffic.sidecar.istio.io/excludeOutboundPorts"), "{e}");
    let e = inject_text("kind: [", &config()).unwrap_err().to_string();
    assert!(e.contains("document 1: malformed YAML"), "{e}");
}

/// Applies the webhook's `add` operations the way the API server would.
fn apply(object: &mut Value, patch: &[Value]) {
    for op in patch {
        assert_eq!(op["op"], "add", "{op}");
        let path: Vec<&str> = op["path"].as_str().unwrap().trim_start_matches('/').split('/').collect();
        let (last, parents) = path.split_last().unwrap();
        let mut target = &mut *object;
        for p in parents {
            target = target.get_mut(*p).unwrap_or_else(|| panic!("{op}: no /{p} in the object"));
        }
        target.as_object_mut().unwrap().insert((*last).to_string(), op["value"].clone());
    }
}

async fn post(addr: std::net::SocketAddr, pki: &Pki, body: String) -> client::Resp {
    let req = http::Request::post("/inject")
        .header("host", "wicket-injector.wicket-system.svc")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let tls = pki.client(&["http/1.1"], None);
    client::send_tls(addr, "wicket-injector.wicket-system.svc", tls, req).await.unwrap().0
}

#[tokio::test]
async fn the_webhook_answers_admission_reviews_with_a_json_patch() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default();
    let (cert, key) = pki.leaf(&["wicket-injector.wicket-system.svc"]).write(dir.path(), "webhook");
    let addr = webhook::serve("127.0.0.1:0".parse().unwrap(), cert.as_ref(), key.as_ref(), config()).await.unwrap();

    let review: Value =
        serde_json::from_str(&std::fs::read_to_string(golden("admission-review.json")).unwrap()).unwrap();
    let resp = post(addr, &pki, review.to_string()).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let answer: Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch =
        base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().unwrap()).unwrap();
    let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    let mut pod = review["request"]["object"].clone();
    apply(&mut pod, &patch);
    let names = |list: &str| -> Vec<String> {
        pod["spec"][list].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names("containers"), ["cart", "istio-proxy"]);
    assert_eq!(names("initContainers"), ["istio-init"]);
    assert_eq!(names("volumes"), ["kube-api-access-x7k2p", "wicket-identity", "wicket-config", "wicket-cache"]);
    assert_eq!(pod["metadata"]["labels"]["security.istio.io/tlsMode"], "istio");
    assert_eq!(pod["metadata"]["labels"]["pod-template-hash"], "6d9f7c8b5", "labels are kept");
    let proxy = &pod["spec"]["containers"][1];
    assert!(proxy["args"].as_array().unwrap().contains(&json!("--service-account=cart")), "{proxy}");
    assert_eq!(pod["spec"]["tolerations"], review["request"]["object"]["spec"]["tolerations"], "the rest is untouched");

    // A pod that opts out, and objects that are not pods, are admitted as they are.
    let mut opted_out = review.clone();
    opted_out["request"]["object"]["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false");
    let answer: Value = serde_json::from_str(&post(addr, &pki, opted_out.to_string()).await.body).unwrap();
    assert_eq!((answer["response"]["allowed"].clone(), answer["response"].get("patch")), (json!(true), None));
    let mut service = review.clone();
    service["request"]["kind"]["kind"] = json!("Service");
    let answer: Value = serde_json::from_str(&post(addr, &pki, service.to_string()).await.body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());

    // A pod whose annotation cannot be honoured is refused with the reason.
    let mut bad = review.clone();
    bad["request"]["object"]["metadata"]["annotations"] =
        json!({"traffic.sidecar.istio.io/includeInboundPorts": "web"});
    let answer: Value = serde_json::from_str(&post(addr, &pki, bad.to_string()).await.body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("includeInboundPorts"), "{message}");

    // Malformed reviews get 400 with a message; the webhook keeps serving.
    for body in
        ["{", "[]", r#"{"kind":"AdmissionReview"}"#, r#"{"kind":"AdmissionReview","request":{"kind":{"kind":"Pod"}}}"#]
    {
        let resp = post(addr, &pki, body.to_string()).await;
        assert_eq!(resp.status, 400, "{body}: {}", resp.body);
        assert!(resp.body.contains("malformed AdmissionReview"), "{}", resp.body);
    }
    assert_eq!(post(addr, &pki, review.to_string()).await.status, 200);
}
