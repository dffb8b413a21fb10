//! Pod injection, like `istioctl kube-inject` and Istio's injection webhook: a
//! workload's pod template gains the capture init container, the sidecar container
//! and the identity and mesh-config volumes. The containers keep Istio's names
//! (`istio-init`, `istio-proxy`) and the `sidecar.istio.io/status` annotation, so
//! the tooling and dashboards operators already have keep working.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use super::capture::CaptureConfig;
use crate::config::probers::{HttpGet, HttpHeader, Prober, Probers, PROBERS_ENV};

/// The uid and gid the sidecar runs as; the capture rules exempt them.
pub const PROXY_UID: u32 = 1337;
/// The sidecar's health port (Istio's agent port, left alone by the capture rules).
pub const PROBE_PORT: u16 = 15020;

/// Injection settings (the injector's "values").
#[derive(Debug, Clone)]
pub struct InjectConfig {
    /// Image with the `wicket` binary.
    pub image: String,
    /// ConfigMap holding the mesh's Istio YAML, mounted as the sidecar's config.
    pub config_map: String,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// The namespace's labels, when known: `istio-injection=enabled` turns injection
    /// on, `disabled` off. Unknown (`None`): inject unless the pod opts out, as
    /// `kube-inject` does.
    pub namespace_labels: Option<BTreeMap<String, String>>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            image: format!("ghcr.io/wicket-proxy/wicket:{}", env!("CARGO_PKG_VERSION")),
            config_map: "wicket-mesh".into(),
            trust_domain: "cluster.local".into(),
            namespace_labels: None,
        }
    }
}

/// What happened to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The pod template was injected.
    Injected,
    /// A workload left as it was, and why (opted out, already injected, ...).
    Skipped(String),
    /// Not a workload: passed through unchanged (with a warning).
    NotWorkload(String),
}

/// Why a document cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The input is not YAML.
    #[error("document {doc}: malformed YAML: {source}")]
    Yaml {
        /// 1-based document number.
        doc: usize,
        /// Cause.
        #[source]
        source: serde_yaml::Error,
    },
    /// A workload whose settings cannot be honoured (a bad annotation).
    #[error("{workload}: {message}")]
    Invalid {
        /// `Kind/name`.
        workload: String,
        /// What is wrong.
        message: String,
    },
}

fn key(k: &str) -> Value {
    Value::String(k.to_string())
}

fn str_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    Some((k.as_str()?.to_string(), v))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn child<'a>(v: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    v.as_mapping_mut()?.get_mut(name)
}

/// Injects every workload of a multi-document YAML text. Returns the documents
/// (injected or unchanged) and the warnings for those left alone.
pub fn inject_text(input: &str, config: &InjectConfig) -> Result<(String, Vec<String>), InjectError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let mut value = Value::deserialize(doc).map_err(|source| InjectError::Yaml { doc: i + 1, source })?;
        if value.is_null() {
            continue; // an empty document
        }
        match inject_document(&mut value, config)? {
            Outcome::Injected => {}
            Outcome::Skipped(why) => warnings.push(why),
            Outcome::NotWorkload(what) => warnings.push(format!("{what}: not a workload; passed through unchanged")),
        }
        out.push(serde_yaml::to_string(&value).map_err(|source| InjectError::Yaml { doc: i + 1, source })?);
    }
    Ok((out.join("---\n"), warnings))
}

/// Injects one document (a Pod or a workload with a pod template).
pub fn inject_document(doc: &mut Value, config: &InjectConfig) -> Result<Outcome, InjectError> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("?").to_string();
    let name = doc.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("?").to_string();
    let workload = format!("{kind}/{name}");
    let template = match kind.as_str() {
        "Pod" => Some(&mut *doc),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            child(doc, "spec").and_then(|s| child(s, "template"))
        }
        "CronJob" => child(doc, "spec")
            .and_then(|s| child(s, "jobTemplate"))
            .and_then(|j| child(j, "spec"))
            .and_then(|s| child(s, "template")),
        _ => return Ok(Outcome::NotWorkload(workload)),
    };
    let Some(template) = template.filter(|t| t.is_mapping()) else {
        return Ok(Outcome::NotWorkload(format!("{workload} (no pod template)")));
    };
    inject_pod(template, &workload, config).map_err(|message| InjectError::Invalid { workload, message })
}

/// Istio's truthy values for `sidecar.istio.io/inject`.
fn truthy(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "y" | "yes" | "on" => Some(true),
        "false" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Injects a pod (or a pod template: `metadata` + `spec`).
fn inject_pod(pod: &mut Value, workload: &str, config: &InjectConfig) -> Result<Outcome, String> {
    let pod_map = pod.as_mapping_mut().ok_or("the pod template is not a mapping")?;
    if !pod_map.contains_key("metadata") {
        pod_map.insert(key("metadata"), Value::Mapping(Mapping::new()));
    }
    let labels = str_map(pod.get("metadata").and_then(|m| m.get("labels")));
    let annotations = str_map(pod.get("metadata").and_then(|m| m.get("annotations")));
    if annotations.contains_key("sidecar.istio.io/status") {
        return Ok(Outcome::Skipped(format!("{workload}: already injected")));
    }
    let spec = pod.get("spec").ok_or("the pod template has no spec")?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(format!("{workload}: hostNetwork pods are not injected")));
    }
    let explicit = labels
        .get("sidecar.istio.io/inject")
        .or(annotations.get("sidecar.istio.io/inject"))
        .map(|v| truthy(v).ok_or_else(|| format!("sidecar.istio.io/inject: {v:?} is not true or false")))
        .transpose()?;
    let namespace_says = config.namespace_labels.as_ref().map(|l| l.get("istio-injection").map(String::as_str));
    let inject = match (namespace_says, explicit) {
        (Some(Some("disabled")), _) => false,
        (_, Some(explicit)) => explicit,
        (Some(Some("enabled")) | None, None) => true,
        (Some(_), None) => false,
    };
    if !inject {
        return Ok(Outcome::Skipped(format!("{workload}: injection not requested or turned off")));
    }
    let capture = CaptureConfig::default().with_annotations(&annotations)?;
    if let Some(mode) = annotations.get("sidecar.istio.io/interceptionMode").filter(|m| *m != "REDIRECT") {
        return Err(format!("sidecar.istio.io/interceptionMode {mode} is not supported (REDIRECT only)"));
    }
    let image = annotations.get("sidecar.istio.io/proxyImage").unwrap_or(&config.image).clone();
    let service_account = spec.get("serviceAccountName").and_then(Value::as_str).unwrap_or("default").to_string();
    let pod_labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();

    let init = container(&format!(
        r#"
name: istio-init
image: {image}
args: {args}
resources: {{requests: {{cpu: 10m, memory: 10Mi}}, limits: {{cpu: "2", memory: 1Gi}}}}
securityContext:
  allowPrivilegeEscalation: false
  capabilities: {{add: [NET_ADMIN, NET_RAW], drop: [ALL]}}
  privileged: false
  readOnlyRootFilesystem: false
  runAsGroup: 0
  runAsNonRoot: false
  runAsUser: 0
"#,
        args = serde_json::to_string(&capture.args()).unwrap_or_default(),
    ))?;
    let mut resources = Mapping::new();
    let mut requests = Mapping::new();
    requests.insert(key("cpu"), key(annotations.get("sidecar.istio.io/proxyCPU").map_or("100m", String::as_str)));
    requests
        .insert(key("memory"), key(annotations.get("sidecar.istio.io/proxyMemory").map_or("128Mi", String::as_str)));
    resources.insert(key("requests"), Value::Mapping(requests));
    let mut limits = Mapping::new();
    for (field, annotation) in
        [("cpu", "sidecar.istio.io/proxyCPULimit"), ("memory", "sidecar.istio.io/proxyMemoryLimit")]
    {
        if let Some(v) = annotations.get(annotation) {
            limits.insert(key(field), key(v));
        }
    }
    if !limits.is_empty() {
        resources.insert(key("limits"), Value::Mapping(limits));
    }
    let rewrite = annotations.get("sidecar.istio.io/rewriteAppHTTPProbers").is_none_or(|v| truthy(v) != Some(false));
    let probers = if rewrite { rewrite_probes(pod) } else { Probers::new() };
    let args = vec![
        "sidecar".to_string(),
        "--config=/etc/wicket/config".into(),
        "--namespace=$(POD_NAMESPACE)".into(),
        format!("--service-account={service_account}"),
        format!("--labels={}", pod_labels.join(",")),
        format!("--trust-domain={}", config.trust_domain),
        "--identity-dir=/etc/certs".into(),
        "--wasm-cache-dir=/tmp/wicket-wasm-cache".into(),
        format!("--probe-port={PROBE_PORT}"),
    ];
    let log_level = annotations.get("sidecar.istio.io/logLevel").map_or("info", String::as_str);
    let mut proxy = container(&format!(
        r#"
name: istio-proxy
image: {image}
args: {args}
env:
- {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
- {{name: RUST_LOG, value: {log_level}}}
securityContext:
  allowPrivilegeEscalation: false
  capabilities: {{drop: [ALL]}}
  privileged: false
  readOnlyRootFilesystem: true
  runAsGroup: {PROXY_UID}
  runAsNonRoot: true
  runAsUser: {PROXY_UID}
readinessProbe:
  httpGet: {{path: /healthz/ready, port: {PROBE_PORT}}}
  initialDelaySeconds: 1
  periodSeconds: 2
  failureThreshold: 30
volumeMounts:
- {{name: wicket-identity, mountPath: /etc/certs, readOnly: true}}
- {{name: wicket-config, mountPath: /etc/wicket/config, readOnly: true}}
- {{name: wicket-cache, mountPath: /tmp}}
"#,
        args = serde_json::to_string(&args).unwrap_or_default(),
    ))?;
    if let Some(map) = proxy.as_mapping_mut() {
        map.insert(key("resources"), Value::Mapping(resources));
        if !probers.is_empty() {
            let json = serde_json::to_string(&probers).map_err(|e| e.to_string())?;
            let mut env = Mapping::new();
            env.insert(key("name"), key(PROBERS_ENV));
            env.insert(key("value"), key(&json));
            if let Some(Value::Sequence(list)) = map.get_mut("env") {
                list.push(Value::Mapping(env));
            }
        }
    }
    let volumes: Value = serde_yaml::from_str(&format!(
        r#"
- name: wicket-identity
  csi:
    driver: spiffe.csi.cert-manager.io
    readOnly: true
- name: wicket-config
  configMap: {{name: {}}}
- name: wicket-cache
  emptyDir: {{}}
"#,
        config.config_map
    ))
    .map_err(|e| e.to_string())?;

    let spec = child(pod, "spec").and_then(Value::as_mapping_mut).ok_or("the pod template has no spec")?;
    append(spec, "initContainers", vec![init]);
    append(spec, "containers", vec![proxy]);
    append(spec, "volumes", volumes.as_sequence().cloned().unwrap_or_default());
    let first_container = spec
        .get("containers")
        .and_then(Value::as_sequence)
        .and_then(|c| c.first())
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);

    let metadata = child(pod, "metadata").and_then(Value::as_mapping_mut).ok_or("metadata is not a mapping")?;
    let app = labels.get("app").or(labels.get("app.kubernetes.io/name")).cloned();
    let canonical = app.unwrap_or_else(|| workload.split('/').nth(1).unwrap_or("unknown").to_string());
    let version = labels.get("version").or(labels.get("app.kubernetes.io/version")).cloned();
    set(metadata, "labels", "security.istio.io/tlsMode", "istio");
    set(metadata, "labels", "service.istio.io/canonical-name", &canonical);
    set(metadata, "labels", "service.istio.io/canonical-revision", version.as_deref().unwrap_or("latest"));
    let status = serde_json::json!({
        "initContainers": ["istio-init"],
        "containers": ["istio-proxy"],
        "volumes": ["wicket-identity", "wicket-config", "wicket-cache"],
        "imagePullSecrets": null,
        "revision": "default",
    });
    set(metadata, "annotations", "sidecar.istio.io/status", &status.to_string());
    if let Some(first) =
        first_container.filter(|_| !annotations.contains_key("kubectl.kubernetes.io/default-container"))
    {
        set(metadata, "annotations", "kubectl.kubernetes.io/default-container", &first);
    }
    Ok(Outcome::Injected)
}

/// Istio's probe rewrite: each application container's `httpGet` probes go to the
/// sidecar's health port under `/app-health/<container>/<readyz|livez|startupz>`, and
/// the originals come back for `ISTIO_KUBE_APP_PROBERS`. A probe whose named port
/// cannot be resolved stays as it is.
fn rewrite_probes(pod: &mut Value) -> Probers {
    let mut probers = Probers::new();
    let Some(Value::Sequence(containers)) = child(pod, "spec").and_then(|s| child(s, "containers")) else {
        return probers;
    };
    for c in containers.iter_mut() {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let named_ports: BTreeMap<String, u16> = c
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((p.get("name")?.as_str()?.to_string(), u16::try_from(p.get("containerPort")?.as_u64()?).ok()?))
            })
            .collect();
        for (field, kind) in [("readinessProbe", "readyz"), ("livenessProbe", "livez"), ("startupProbe", "startupz")] {
            let Some(probe) = child(c, field) else { continue };
            let timeout_seconds = probe.get("timeoutSeconds").and_then(Value::as_u64);
            let Some(get) = child(probe, "httpGet") else { continue };
            let port = match get.get("port") {
                Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Some(Value::String(s)) => s.parse().ok().or_else(|| named_ports.get(s).copied()),
                _ => None,
            };
            let Some(port) = port else { continue };
            let Ok(http_get) = serde_yaml::from_value::<HttpGetSource>(get.clone()) else { continue };
            let path = format!("/app-health/{name}/{kind}");
            let original =
                HttpGet { path: http_get.path, port, scheme: http_get.scheme, http_headers: http_get.http_headers };
            probers.insert(path.clone(), Prober { http_get: original, timeout_seconds });
            let mut rewritten = Mapping::new();
            rewritten.insert(key("path"), key(&path));
            rewritten.insert(key("port"), Value::Number(PROBE_PORT.into()));
            *get = Value::Mapping(rewritten);
        }
    }
    probers
}

/// A probe's `httpGet` as written (the port is resolved separately).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpGetSource {
    #[serde(default)]
    path: String,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<HttpHeader>,
}

fn container(yaml: &str) -> Result<Value, String> {
    serde_yaml::from_str(yaml).map_err(|e| format!("internal template: {e}"))
}

/// Appends to the list `field` of `spec`, creating it.
fn append(spec: &mut Mapping, field: &str, items: Vec<Value>) {
    let entry = spec.entry(key(field)).or_insert_with(|| Value::Sequence(Vec::new()));
    if !entry.is_sequence() {
        *entry = Value::Sequence(Vec::new());
    }
    if let Value::Sequence(list) = entry {
        list.extend(items);
    }
}

/// Sets `metadata.<field>.<name>`, creating the map.
fn set(metadata: &mut Mapping, field: &str, name: &str, value: &str) {
    let entry = metadata.entry(key(field)).or_insert_with(|| Value::Mapping(Mapping::new()));
    if !entry.is_mapping() {
        *entry = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(m) = entry {
        m.insert(key(name), key(value));
    }
}
