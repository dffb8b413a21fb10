//! Loading multi-document YAML into typed resources.
//!
//! Every `serde_yaml` call in Wicket lives here, so the archived crate can be swapped
//! for a fork without touching anything else. A document that fails is reported with
//! its file, line and field path and left out; the others load.

use std::{collections::BTreeSet, path::Path, sync::Arc};

use serde::{de::DeserializeOwned, Deserialize};

use super::{
    istio, not_applied, Diagnostic, Kind, MeshConfig, ObjectMeta, Origin, Resource, ResourceRef, Severity, Spec,
    Unreadable,
};

/// What one load of a directory produced.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Resources that parsed, in load order (file path order, then position in file).
    pub resources: Vec<Resource>,
    /// Problems found, errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
    /// Resources whose document failed to parse, when their identity could be read.
    pub rejected: Vec<ResourceRef>,
    /// Hash of every file's path and content: unchanged input, unchanged digest.
    pub digest: u64,
}

/// Loads the documents of one YAML text as if read from `file` (for tools, tests
/// and fuzzing; the gateway reads whole sources with [`load_texts`]).
pub fn load_text(text: &str, file: &Path, namespace: &str) -> Loaded {
    load_texts([(Arc::from(file), text)], namespace)
}

/// Loads several YAML texts (files, in order) as one set: a later definition of the
/// same resource replaces an earlier one, wherever it is. `namespace` is given to
/// resources that do not name one.
pub fn load_texts<'t>(texts: impl IntoIterator<Item = (Arc<Path>, &'t str)>, namespace: &str) -> Loaded {
    load_inputs(texts.into_iter().map(|(file, text)| Input::File(file, text)), namespace)
}

/// How a document is written: API objects are JSON, read by serde_json (many times
/// faster than reading the same text as YAML, which matters for 20,000 objects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Yaml,
    Json,
}

/// One input of [`load_inputs`].
pub enum Input<'t> {
    /// A file's text: YAML documents separated by `---`, reported by line.
    File(Arc<Path>, &'t str),
    /// One object of an API, as JSON, reported by the name given, without lines.
    Object(Arc<Path>, &'t str),
}

/// Loads files and API objects, in order, as one set (see [`load_texts`]).
pub fn load_inputs<'t>(inputs: impl IntoIterator<Item = Input<'t>>, namespace: &str) -> Loaded {
    let mut loaded = Loaded::default();
    let mut warned_kinds = BTreeSet::new();
    for input in inputs {
        match input {
            Input::File(file, text) => {
                for (line, doc) in split_documents(text) {
                    let origin = Origin { file: file.clone(), line };
                    load_document(doc, Syntax::Yaml, origin, namespace, &mut loaded, &mut warned_kinds, false);
                }
            }
            // Line 0: the document's line 1 (all of a JSON object) reports as no line.
            Input::Object(name, text) => {
                let origin = Origin { file: name, line: 0 };
                load_document(text, Syntax::Json, origin, namespace, &mut loaded, &mut warned_kinds, false);
            }
        }
    }
    replace_duplicates(&mut loaded);
    loaded
}

/// Like `kubectl apply` of the files in order: a later document with the same kind,
/// namespace and name replaces the earlier one (reported as a warning).
fn replace_duplicates(loaded: &mut Loaded) {
    let mut last: std::collections::HashMap<ResourceRef, usize> = std::collections::HashMap::new();
    for (i, r) in loaded.resources.iter().enumerate() {
        last.insert(r.id.clone(), i);
    }
    let winners: std::collections::HashMap<ResourceRef, Origin> =
        last.iter().map(|(id, i)| (id.clone(), loaded.resources[*i].origin.clone())).collect();
    for (i, r) in std::mem::take(&mut loaded.resources).into_iter().enumerate() {
        if last.get(&r.id) == Some(&i) {
            loaded.resources.push(r);
        } else {
            let msg = format!("defined again at {}; the later definition applies", winners[&r.id]);
            loaded.diagnostics.push(Diagnostic::warning(&r.origin, &r.id, "metadata.name", msg));
        }
    }
}

/// Splits a YAML stream at `---` lines, returning each document with its 1-based
/// first line. Lines of the document keep their positions relative to that line.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_separator = trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "...";
        if is_separator {
            docs.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = idx + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs
}

/// The fields every document has; read first to pick the typed spec.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<ObjectMeta>,
}

/// A whole typed document: unknown top-level fields are errors too.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document<T> {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(rename = "metadata")]
    _metadata: serde::de::IgnoredAny,
    #[serde(default = "Option::default")]
    spec: Option<T>,
    #[serde(rename = "status", default)]
    _status: Option<serde::de::IgnoredAny>,
}

fn load_document(
    doc: &str,
    syntax: Syntax,
    origin: Origin,
    namespace: &str,
    loaded: &mut Loaded,
    warned_kinds: &mut BTreeSet<String>,
    in_list: bool,
) {
    let doc_diag = |origin: &Origin, line: Option<usize>, message: String| Diagnostic {
        severity: Severity::Error,
        origin: Origin { file: origin.file.clone(), line: line.map_or(origin.line, |l| origin.line + l - 1) },
        resource: None,
        field: String::new(),
        message,
    };
    let header: Option<Header> = match deserialize(doc, syntax) {
        Ok(h) => h,
        Err(e) => {
            let what = if syntax == Syntax::Json { "JSON" } else { "YAML" };
            loaded.diagnostics.push(doc_diag(&origin, e.line, format!("malformed {what}: {}", e.message)));
            return;
        }
    };
    let Some(header) = header else { return }; // empty document
    let (Some(api_version), Some(kind)) = (header.api_version, header.kind) else {
        loaded.diagnostics.push(doc_diag(&origin, None, "document has no apiVersion or kind".into()));
        return;
    };
    let group = api_version.split('/').next().unwrap_or_default();
    let known = match (group, kind.as_str()) {
        ("networking.istio.io", "Gateway") => Some(Kind::Gateway),
        ("networking.istio.io", "VirtualService") => Some(Kind::VirtualService),
        ("networking.istio.io", "DestinationRule") => Some(Kind::DestinationRule),
        ("networking.istio.io", "ServiceEntry") => Some(Kind::ServiceEntry),
        ("networking.istio.io", "WorkloadEntry") => Some(Kind::WorkloadEntry),
        ("networking.istio.io", "Sidecar") => Some(Kind::Sidecar),
        ("security.istio.io", "RequestAuthentication") => Some(Kind::RequestAuthentication),
        ("security.istio.io", "AuthorizationPolicy") => Some(Kind::AuthorizationPolicy),
        ("security.istio.io", "PeerAuthentication") => Some(Kind::PeerAuthentication),
        ("extensions.istio.io", "WasmPlugin") => Some(Kind::WasmPlugin),
        ("telemetry.istio.io", "Telemetry") => Some(Kind::Telemetry),
        // Istio keeps MeshConfig in the `istio` ConfigMap, under `data.mesh`.
        ("v1", "ConfigMap") if header.metadata.as_ref().is_some_and(|m| m.name == "istio") => Some(Kind::MeshConfig),
        ("v1", "Service") => Some(Kind::Service),
        ("discovery.k8s.io", "EndpointSlice") => Some(Kind::EndpointSlice),
        ("v1", "Pod") => Some(Kind::Pod),
        ("v1", "Secret") => Some(Kind::Secret),
        // `kubectl get -o yaml` prints a List of the objects.
        (_, list) if list.ends_with("List") && !in_list => {
            load_list(doc, &origin, namespace, loaded, warned_kinds);
            return;
        }
        _ => None,
    };
    let Some(kind_id) = known else {
        if warned_kinds.insert(kind.clone()) {
            let mut d = doc_diag(&origin, None, format!("kind {kind} ({api_version}) is not supported yet; ignored"));
            d.severity = Severity::Warning;
            loaded.diagnostics.push(d);
        }
        return;
    };
    let meta = header.metadata.unwrap_or_default();
    let id = ResourceRef {
        kind: kind_id,
        namespace: meta.namespace.clone().unwrap_or_else(|| namespace.to_string()),
        name: meta.name.clone(),
    };
    let version = api_version.split_once('/').map_or(api_version.as_str(), |(_, v)| v);
    let versions: &[&str] = match kind_id {
        Kind::RequestAuthentication | Kind::AuthorizationPolicy | Kind::PeerAuthentication => &["v1", "v1beta1"],
        Kind::MeshConfig | Kind::Service | Kind::EndpointSlice | Kind::Pod | Kind::Secret => &["v1"],
        Kind::WasmPlugin => &["v1alpha1"],
        Kind::Telemetry => &["v1", "v1alpha1"],
        _ => &["v1", "v1beta1", "v1alpha3"],
    };
    if !versions.contains(&version) {
        let msg = format!("apiVersion {api_version} is not a known version of {kind} ({})", versions.join(", "));
        loaded.diagnostics.push(Diagnostic::warning(&origin, &id, "apiVersion", msg));
    }
    if id.name.is_empty() {
        loaded.diagnostics.push(Diagnostic::error(&origin, &id, "metadata.name", "missing name"));
        return;
    }
    let spec = match kind_id {
        Kind::Gateway => parse_spec::<istio::Gateway>(doc, syntax).map(Spec::Gateway),
        Kind::VirtualService => parse_spec::<istio::VirtualService>(doc, syntax).map(Spec::VirtualService),
        Kind::DestinationRule => parse_spec::<istio::DestinationRule>(doc, syntax).map(Spec::DestinationRule),
        Kind::ServiceEntry => parse_spec::<istio::ServiceEntry>(doc, syntax).map(Spec::ServiceEntry),
        Kind::WorkloadEntry => parse_spec::<istio::WorkloadEntry>(doc, syntax).map(Spec::WorkloadEntry),
        Kind::RequestAuthentication => {
            parse_spec::<istio::RequestAuthentication>(doc, syntax).map(Spec::RequestAuthentication)
        }
        Kind::AuthorizationPolicy => {
            parse_spec::<istio::AuthorizationPolicy>(doc, syntax).map(Spec::AuthorizationPolicy)
        }
        Kind::MeshConfig => parse_mesh_config(doc, syntax).map(Spec::MeshConfig),
        Kind::WasmPlugin => parse_spec::<istio::WasmPlugin>(doc, syntax).map(Spec::WasmPlugin),
        Kind::Telemetry => parse_spec::<istio::Telemetry>(doc, syntax).map(Spec::Telemetry),
        Kind::PeerAuthentication => parse_spec::<istio::PeerAuthentication>(doc, syntax).map(Spec::PeerAuthentication),
        Kind::Sidecar => parse_spec::<istio::Sidecar>(doc, syntax).map(Spec::Sidecar),
        Kind::Service => parse_object(doc, syntax).map(Spec::Service),
        Kind::EndpointSlice => parse_object(doc, syntax).map(Spec::EndpointSlice),
        Kind::Pod => parse_object(doc, syntax).map(Spec::Pod),
        Kind::Secret => parse_object(doc, syntax).map(Spec::Secret),
    };
    match spec {
        Ok(spec) => {
            for (field, why) in not_applied::report(kind_id, doc) {
                loaded.diagnostics.push(Diagnostic::warning(&origin, &id, field, format!("not applied: {why}")));
            }
            loaded.resources.push(Resource { id, origin, meta, spec })
        }
        Err(SpecError { line, field, message }) => {
            let at = Origin { file: origin.file.clone(), line: line.map_or(origin.line, |l| origin.line + l - 1) };
            loaded.diagnostics.push(Diagnostic::error(&at, &id, field, message));
            if matches!(kind_id, Kind::AuthorizationPolicy | Kind::RequestAuthentication | Kind::PeerAuthentication) {
                let spec = Spec::Unreadable(unreadable(doc));
                loaded.resources.push(Resource { id, origin, meta, spec });
            } else if kind_id == Kind::WasmPlugin {
                // Its last good version serves if there is one (the reloader swaps it
                // in); otherwise what can be read decides how it fails.
                loaded.rejected.push(id.clone());
                let spec = Spec::Unreadable(unreadable(doc));
                loaded.resources.push(Resource { id, origin, meta, spec });
            } else {
                loaded.rejected.push(id);
            }
        }
    }
}

/// The objects of a `List` document (`kubectl get -o yaml`), each loaded as its own
/// document; they are reported at the List's line.
fn load_list(doc: &str, origin: &Origin, namespace: &str, loaded: &mut Loaded, warned_kinds: &mut BTreeSet<String>) {
    #[derive(Deserialize)]
    struct List {
        #[serde(default)]
        items: Vec<serde_yaml::Value>,
    }
    let list: List = match serde_yaml::from_str(doc) {
        Ok(list) => list,
        Err(e) => {
            let message = format!("List: {}", strip_location(&e.to_string()));
            loaded.diagnostics.push(Diagnostic::document(origin, message));
            return;
        }
    };
    for item in list.items {
        match serde_yaml::to_string(&item) {
            Ok(text) => load_document(&text, Syntax::Yaml, origin.clone(), namespace, loaded, warned_kinds, true),
            Err(e) => loaded.diagnostics.push(Diagnostic::document(origin, format!("List item: {e}"))),
        }
    }
}

/// A Kubernetes object the user did not write (fields Wicket does not read are skipped).
fn parse_object<T: DeserializeOwned>(doc: &str, syntax: Syntax) -> Result<T, SpecError> {
    deserialize(doc, syntax)
}

/// Deserializes `doc`, naming the field at fault and its line.
fn deserialize<T: DeserializeOwned>(doc: &str, syntax: Syntax) -> Result<T, SpecError> {
    let (field, line, message) = match syntax {
        Syntax::Yaml => {
            let de = serde_yaml::Deserializer::from_str(doc);
            match serde_path_to_error::deserialize::<_, T>(de) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let field = e.path().to_string();
                    let inner = e.into_inner();
                    (field, inner.location().map(|l| l.line()), inner.to_string())
                }
            }
        }
        Syntax::Json => {
            let mut de = serde_json::Deserializer::from_str(doc);
            match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let field = e.path().to_string();
                    let inner = e.into_inner();
                    (field, Some(inner.line()), inner.to_string())
                }
            }
        }
    };
    let field = if field == "." { String::new() } else { field };
    Err(SpecError { line, field, message: strip_location(&message) })
}

/// Reads what it can of a security or Wasm document that failed to load (see
/// `Unreadable`).
fn unreadable(doc: &str) -> Unreadable {
    let value: serde_yaml::Value = serde_yaml::from_str(doc).unwrap_or_default();
    let spec = &value["spec"];
    let issuers = match &spec["jwtRules"] {
        serde_yaml::Value::Sequence(rules) => {
            rules.iter().filter_map(|r| r["issuer"].as_str()).filter(|i| !i.is_empty()).map(str::to_string).collect()
        }
        _ => Vec::new(),
    };
    Unreadable {
        selector: serde_yaml::from_value(spec["selector"].clone()).ok().flatten(),
        action: match &spec["action"] {
            serde_yaml::Value::Null => Some("ALLOW".into()),
            action => action.as_str().map(str::to_string),
        },
        targeted: !spec["targetRefs"].is_null() || !spec["targetRef"].is_null(),
        issuers,
        fail_open: spec["failStrategy"].as_str() == Some("FAIL_OPEN"),
    }
}

struct SpecError {
    line: Option<usize>,
    field: String,
    message: String,
}

fn parse_spec<T: DeserializeOwned + Default>(doc: &str, syntax: Syntax) -> Result<T, SpecError> {
    match deserialize::<Document<T>>(doc, syntax) {
        Ok(d) => Ok(d.spec.unwrap_or_default()),
        Err(SpecError { line, field, mut message }) => {
            // serde_yaml prefixes its own (partial) path; the field is reported separately.
            if let Some((head, rest)) = message.split_once(": ") {
                if !head.contains(' ') && field.starts_with(head) {
                    message = rest.to_string();
                }
            }
            Err(SpecError { line, field, message: with_suggestion(&message) })
        }
    }
}

/// The `mesh` key of the `istio` ConfigMap: a YAML document inside a string. Fields
/// Wicket does not apply are ignored (a real mesh config has hundreds).
fn parse_mesh_config(doc: &str, syntax: Syntax) -> Result<MeshConfig, SpecError> {
    #[derive(Deserialize)]
    struct ConfigMap {
        #[serde(default)]
        data: std::collections::BTreeMap<String, String>,
    }
    let map: ConfigMap = deserialize(doc, syntax)?;
    let Some(mesh) = map.data.get("mesh") else { return Ok(MeshConfig::default()) };
    serde_yaml::from_str::<Option<MeshConfig>>(mesh).map(Option::unwrap_or_default).map_err(|e| SpecError {
        line: None,
        field: "data.mesh".into(),
        message: strip_location(&e.to_string()),
    })
}

fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Adds "did you mean" to serde's unknown field / variant messages when a known name
/// is close to the one written (`retryon` → `retryOn`).
fn with_suggestion(message: &str) -> String {
    let Some((head, expected)) = message.split_once(", expected ") else {
        return message.to_string();
    };
    let Some(written) = head.split('`').nth(1) else {
        return message.to_string();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let best = candidates
        .iter()
        .map(|c| {
            let distance = if c.eq_ignore_ascii_case(written) {
                0
            } else {
                strsim::levenshtein(&c.to_ascii_lowercase(), &written.to_ascii_lowercase()).max(1)
            };
            (distance, *c)
        })
        .min();
    match best {
        Some((d, name)) if d <= 2.max(written.len() / 3) => {
            format!("{head}; did you mean `{name}`?")
        }
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_keeping_line_numbers() {
        let text = "a: 1\n---\nb: 2\nc: 3\n--- \n---\nd: 4\n";
        let docs = split_documents(text);
        assert_eq!(docs, vec![(1, "a: 1\n"), (3, "b: 2\nc: 3\n"), (6, ""), (7, "d: 4\n")]);
    }

    #[test]
    fn suggests_the_closest_field() {
        let msg = "unknown field `retryon`, expected one of `attempts`, `perTryTimeout`, `retryOn`";
        assert_eq!(with_suggestion(msg), "unknown field `retryon`; did you mean `retryOn`?");
        let far = "unknown field `zzzzzz`, expected one of `attempts`, `retryOn`";
        assert_eq!(with_suggestion(far), far);
    }

    fn load_str(yaml: &str) -> Loaded {
        load_text(yaml, Path::new("c.yaml"), "default")
    }

    #[test]
    fn unknown_field_names_file_line_and_path() {
        let loaded = load_str(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: r
spec:
  hosts: [a]
  http:
  - retries:
      attempts: 3
      retryon: 5xx
    route: []
",
        );
        assert!(loaded.resources.is_empty());
        let d = &loaded.diagnostics[0];
        let text = d.to_string();
        assert!(text.contains("c.yaml:10: VirtualService/default/r: spec.http[0].retries"), "{text}");
        assert!(text.contains("did you mean `retryOn`"), "{text}");
        assert!(text.contains("error: unknown field"), "no repeated path: {text}");
    }

    #[test]
    fn unsupported_kinds_warn_once() {
        let doc = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: x}\nspec: {}\n";
        let loaded = load_str(&format!("{doc}---\n{doc}"));
        assert_eq!(loaded.diagnostics.len(), 1);
        assert_eq!(loaded.diagnostics[0].severity, Severity::Warning);
    }

    #[test]
    fn a_later_definition_replaces_an_earlier_one() {
        let doc = |host: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: x}}\nspec: {{hosts: [{host}]}}\n")
        };
        let loaded = load_str(&format!("{}---\n{}", doc("a.test"), doc("b.test")));
        assert_eq!(loaded.resources.len(), 1);
        let Spec::ServiceEntry(se) = &loaded.resources[0].spec else { panic!("a ServiceEntry") };
        assert_eq!(se.hosts, ["b.test"]);
        assert!(loaded.diagnostics[0]
            .to_string()
            .contains("c.yaml:1: ServiceEntry/default/x: metadata.name: warning: defined again at"));
    }

    #[test]
    fn an_enum_value_istio_does_not_know_is_an_error_naming_the_values() {
        let loaded = load_str(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d}
spec:
  host: a.test
  trafficPolicy:
    tls:
      mode: simple
",
        );
        assert!(loaded.resources.is_empty());
        let text = loaded.diagnostics[0].to_string();
        assert!(text.contains("c.yaml:8: DestinationRule/default/d: spec.trafficPolicy.tls.mode"), "{text}");
        assert!(text.contains("expected one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"), "{text}");
        // Protobuf numbers are Istio's too.
        let numbered = load_str("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: a.test, trafficPolicy: {tls: {mode: 1}}}\n");
        assert!(numbered.diagnostics.is_empty(), "{:?}", numbered.diagnostics);
    }

    #[test]
    fn malformed_yaml_is_an_error_with_a_line() {
        let loaded = load_str("apiVersion: v1\nkind: [\n");
        assert!(loaded.diagnostics[0].is_error());
        assert!(loaded.diagnostics[0].to_string().contains("malformed YAML"));
    }
}
