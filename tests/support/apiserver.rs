//! A fake Kubernetes API server over real HTTP, faithful in what the `kube` client's
//! watchers use: list with `resourceVersion`, `limit` and `continue` pagination
//! (items of built-in kinds without `kind`/`apiVersion`, as the real one sends
//! them), metadata-only lists and watches (`as=PartialObjectMetadata`), watches as
//! chunked JSON events (ADDED, MODIFIED, DELETED, BOOKMARK, and ERROR 410 for a
//! compacted `resourceVersion`), `fieldSelector` on name and namespace, RBAC refusals
//! (403) and outages; single objects (GET, create, replace with resourceVersion
//! conflicts, as Lease elections use them) and merge patches of the status
//! subresource. It records every request with its user (the bearer token).

use std::{
    collections::{BTreeMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::broadcast};

/// A resource collection: `(group, version, plural)`; group empty for core.
type Collection = (String, String, String);

/// One stored change, for watches to replay and follow.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    collection: Collection,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(Collection, String, String), Value>,
    log: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted_below: u64,
    forbidden: HashSet<String>,
    /// Collections answered 404, as for a CRD not installed.
    unserved: HashSet<String>,
    down: bool,
    /// `(user, "METHOD path?query")`; the user is the bearer token.
    requests: Vec<(String, String)>,
}

/// The fake API server.
pub struct FakeApiServer {
    /// Where it listens (plain HTTP on loopback).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Option<Change>>,
    kubeconfig: tempfile::TempDir,
}

impl FakeApiServer {
    /// Starts it on an ephemeral port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State { rv: 1000, ..State::default() }));
        let (changes, _) = broadcast::channel(4096);
        let server = Server { state: state.clone(), changes: changes.clone() };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, changes, kubeconfig: tempfile::tempdir().unwrap() }
    }

    /// A kubeconfig file pointing at this server, for user `wicket`.
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig_for("wicket")
    }

    /// A kubeconfig file pointing at this server for `user` (its bearer token, by
    /// which requests are told apart).
    pub fn kubeconfig_for(&self, user: &str) -> PathBuf {
        let path = self.kubeconfig.path().join(user);
        let addr = self.addr;
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: 'http://{addr}'}}}}]
users: [{{name: fake, user: {{token: {user}}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]
current-context: fake
"
            ),
        )
        .unwrap();
        path
    }

    /// The stored object `kind`/`namespace`/`name` of `api_version`.
    pub fn object(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let collection = collection_of(&json!({"apiVersion": api_version, "kind": kind}));
        self.state.lock().unwrap().objects.get(&(collection, namespace.into(), name.into())).cloned()
    }

    /// Creates or replaces objects from YAML documents (`---`-separated), as
    /// `kubectl apply` would; returns the new resourceVersion.
    pub fn apply(&self, yaml: &str) -> u64 {
        let mut rv = 0;
        for doc in yaml.split("\n---\n") {
            let value: Value = serde_yaml_to_json(doc);
            if value.is_null() {
                continue;
            }
            rv = self.put(value);
        }
        rv
    }

    fn put(&self, object: Value) -> u64 {
        let collection = collection_of(&object);
        let mut state = self.state.lock().unwrap();
        store(&mut state, &self.changes, collection, object)
    }

    /// Deletes an object named in a YAML document (apiVersion, kind, metadata).
    pub fn delete(&self, yaml: &str) {
        let object = serde_yaml_to_json(yaml);
        let collection = collection_of(&object);
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let mut state = self.state.lock().unwrap();
        let Some(mut object) = state.objects.remove(&(collection.clone(), namespace.clone(), name)) else { return };
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change { rv, collection, namespace, kind: "DELETED", object };
        state.log.push(change.clone());
        let _ = self.changes.send(Some(change));
    }

    /// Forgets the change history: a watch resuming from before now gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted_below = state.rv + 1;
        state.log.clear();
    }

    /// Refuses list and watch of `plural` with 403, as RBAC does.
    pub fn forbid(&self, plural: &str) {
        self.state.lock().unwrap().forbidden.insert(plural.to_string());
    }

    /// Answers 404 for `plural`, as the API server does for a CRD not installed.
    pub fn unserve(&self, plural: &str) {
        self.state.lock().unwrap().unserved.insert(plural.to_string());
    }

    /// Takes the server down (every open watch ends, every request answers 503) or
    /// brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
        if down {
            let _ = self.changes.send(None);
        }
    }

    /// Every request received, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.iter().map(|(_, r)| r.clone()).collect()
    }

    /// The requests `user` made.
    pub fn requests_of(&self, user: &str) -> Vec<String> {
        self.state.lock().unwrap().requests.iter().filter(|(u, _)| u == user).map(|(_, r)| r.clone()).collect()
    }
}

fn serde_yaml_to_json(doc: &str) -> Value {
    serde_yaml::from_str(doc).unwrap()
}

/// Stores `object` (a new generation of it), as create or update; returns its
/// resourceVersion.
fn store(
    state: &mut State,
    changes: &broadcast::Sender<Option<Change>>,
    collection: Collection,
    mut object: Value,
) -> u64 {
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    state.rv += 1;
    let rv = state.rv;
    let key = (collection.clone(), namespace.clone(), name.clone());
    let generation = state.objects.get(&key).and_then(|o| o["metadata"]["generation"].as_i64()).unwrap_or(0) + 1;
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    object["metadata"]["generation"] = json!(generation);
    object["metadata"]["uid"] = json!(format!("uid-{namespace}-{name}"));
    let kind = if state.objects.insert(key, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
    let change = Change { rv, collection, namespace, kind, object };
    state.log.push(change.clone());
    let _ = changes.send(Some(change));
    rv
}

/// RFC 7386 JSON merge patch: `null` removes a key.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().unwrap();
    for (k, v) in fields {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn collection_of(object: &Value) -> Collection {
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap();
    (group.to_string(), version.to_string(), plural(kind))
}

/// The plural resource name of a kind, as the API server registers them.
fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.as_str() {
        "serviceentry" => "serviceentries".into(),
        "workloadentry" => "workloadentries".into(),
        "authorizationpolicy" => "authorizationpolicies".into(),
        "lease" => "leases".into(),
        "telemetry" => "telemetries".into(),
        _ => format!("{lower}s"),
    }
}

#[derive(Clone)]
struct Server {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Option<Change>>,
}

/// What a request's path names.
struct Target {
    collection: Collection,
    namespace: Option<String>,
    /// One object of the collection.
    name: Option<String>,
    /// Its status subresource.
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name, status) = match rest {
        [plural] => (None, *plural, None, false),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural, None, false),
        ["namespaces", ns, plural, name] => (Some(ns.to_string()), *plural, Some(name.to_string()), false),
        ["namespaces", ns, plural, name, "status"] => (Some(ns.to_string()), *plural, Some(name.to_string()), true),
        _ => return None,
    };
    Some(Target { collection: (group.into(), version.into(), plural.into()), namespace, name, status })
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%2C", ",")))
        .collect()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    let mut resp = Response::new(Body::full(body.to_string()));
    *resp.status_mut() = code;
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp
}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let uri = req.uri().clone();
        let method = req.method().clone();
        let q = query(&uri);
        let header = |name: &str| req.headers().get(name).and_then(|a| a.to_str().ok()).unwrap_or_default().to_string();
        let meta_only = header("accept").contains("as=PartialObjectMetadata");
        let user = header("authorization").trim_start_matches("Bearer ").to_string();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        {
            let mut state = self.state.lock().unwrap();
            state.requests.push((user, format!("{method} {}", uri.path_and_query().map_or("", |p| p.as_str()))));
            if state.down {
                return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the server is down");
            }
        }
        let Some(target) = parse_path(uri.path()) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource");
        };
        if target.name.is_some() || method != http::Method::GET {
            return self.object_request(&method, target, &body);
        }
        if self.state.lock().unwrap().unserved.contains(&target.collection.2) {
            return status(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource");
        }
        if self.state.lock().unwrap().forbidden.contains(&target.collection.2) {
            let (group, plural) = (&target.collection.0, &target.collection.2);
            let message = format!(
                "{plural}.{group} is forbidden: User \"system:serviceaccount:default:wicket\" cannot list resource \"{plural}\" in API group \"{group}\" at the cluster scope"
            );
            return status(StatusCode::FORBIDDEN, "Forbidden", &message);
        }
        let name_filter = q.get("fieldSelector").and_then(|f| f.strip_prefix("metadata.name=")).map(str::to_string);
        let matches = move |c: &Collection, ns: &str, object: &Value| {
            *c == target.collection
                && target.namespace.as_deref().is_none_or(|t| t == ns)
                && name_filter.as_deref().is_none_or(|n| object["metadata"]["name"] == n)
        };
        let view = move |object: &Value| -> Value {
            if meta_only {
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]})
            } else {
                object.clone()
            }
        };
        if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
            let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            return self.watch(from, q.contains_key("allowWatchBookmarks"), matches, view);
        }
        let state = self.state.lock().unwrap();
        let offset: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(usize::MAX);
        // One past the page tells whether there is more.
        let mut items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((c, ns, _), o)| matches(c, ns, o))
            .skip(offset)
            .take(limit.saturating_add(1))
            .map(|(_, o)| {
                let mut item = view(o);
                // The real server leaves kind and apiVersion out of built-in list items.
                if target_is_core_like(&item) && !meta_only {
                    item.as_object_mut().unwrap().remove("kind");
                    item.as_object_mut().unwrap().remove("apiVersion");
                }
                item
            })
            .collect();
        let more = items.len() > limit;
        items.truncate(limit);
        let page = items;
        let mut metadata = json!({"resourceVersion": state.rv.to_string()});
        if more {
            metadata["continue"] = json!((offset + limit).to_string());
        }
        let kind = if meta_only { "PartialObjectMetadataList" } else { "List" };
        let body = json!({"kind": kind, "apiVersion": "v1", "metadata": metadata, "items": page});
        let mut resp = Response::new(Body::full(body.to_string()));
        resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
        resp
    }

    /// One object: GET, create (POST), replace (PUT, compare-and-swap on
    /// resourceVersion), and merge PATCH of its status subresource.
    fn object_request(&self, method: &http::Method, target: Target, body: &[u8]) -> Response<Body> {
        let ok = |object: &Value| {
            let mut resp = Response::new(Body::full(object.to_string()));
            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
            resp
        };
        let namespace = target.namespace.clone().unwrap_or_default();
        let mut state = self.state.lock().unwrap();
        let posted: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let name = target.name.clone().or_else(|| posted["metadata"]["name"].as_str().map(str::to_string));
        let Some(name) = name else { return status(StatusCode::BAD_REQUEST, "BadRequest", "no name") };
        let key = (target.collection.clone(), namespace.clone(), name.clone());
        let not_found =
            || status(StatusCode::NOT_FOUND, "NotFound", &format!("{} \"{name}\" not found", target.collection.2));
        match (method.as_str(), target.status) {
            ("GET", false) => state.objects.get(&key).map_or_else(not_found, ok),
            ("POST", false) => {
                if state.objects.contains_key(&key) {
                    return status(StatusCode::CONFLICT, "AlreadyExists", &format!("\"{name}\" already exists"));
                }
                let mut object = posted;
                object["metadata"]["namespace"] = json!(namespace);
                store(&mut state, &self.changes, target.collection, object);
                ok(&state.objects[&key].clone())
            }
            ("PUT", false) => {
                let Some(current) = state.objects.get(&key) else { return not_found() };
                if posted["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    let message =
                        "the object has been modified; please apply your changes to the latest version and try again";
                    return status(StatusCode::CONFLICT, "Conflict", message);
                }
                let mut object = posted;
                object["metadata"]["namespace"] = json!(namespace);
                store(&mut state, &self.changes, target.collection, object);
                ok(&state.objects[&key].clone())
            }
            ("PATCH", true) => {
                let Some(mut object) = state.objects.get(&key).cloned() else { return not_found() };
                merge_patch(&mut object["status"], &posted["status"]);
                // The status subresource changes the resourceVersion, never the generation.
                let generation = object["metadata"]["generation"].clone();
                state.rv += 1;
                let rv = state.rv;
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                object["metadata"]["generation"] = generation;
                state.objects.insert(key, object.clone());
                let change =
                    Change { rv, collection: target.collection, namespace, kind: "MODIFIED", object: object.clone() };
                state.log.push(change.clone());
                let _ = self.changes.send(Some(change));
                ok(&object)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported by the fake"),
        }
    }

    fn watch(
        &self,
        from: u64,
        bookmarks: bool,
        matches: impl Fn(&Collection, &str, &Value) -> bool + Send + 'static,
        view: impl Fn(&Value) -> Value + Send + 'static,
    ) -> Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let line = |kind: &str, object: Value| Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
        let state = self.state.lock().unwrap();
        let mut live = self.changes.subscribe();
        if from < state.compacted_below {
            let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({})", state.compacted_below), "reason": "Expired", "code": 410});
            let _ = tx.send(line("ERROR", gone));
            drop(tx);
        } else {
            for c in state.log.iter().filter(|c| c.rv > from && matches(&c.collection, &c.namespace, &c.object)) {
                let _ = tx.send(line(c.kind, view(&c.object)));
            }
            if bookmarks {
                let mark = json!({"kind": "Bookmark", "apiVersion": "v1", "metadata": {"resourceVersion": state.rv.to_string()}});
                let _ = tx.send(line("BOOKMARK", mark));
            }
            tokio::spawn(async move {
                while let Ok(Some(c)) = live.recv().await {
                    if matches(&c.collection, &c.namespace, &c.object)
                        && tx.send(line(c.kind, view(&c.object))).is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(state);
        let mut resp = Response::new(Body::Stream(rx));
        resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
        resp
    }
}

/// Core kinds have no group in their apiVersion (`v1`).
fn target_is_core_like(item: &Value) -> bool {
    item["apiVersion"].as_str().is_some_and(|v| !v.contains('/') || v.starts_with("discovery.k8s.io/"))
}

/// A whole body or a stream of chunks.
enum Body {
    Full(Full<Bytes>),
    Stream(tokio::sync::mpsc::UnboundedReceiver<Bytes>),
}

impl Body {
    fn full(s: String) -> Self {
        Body::Full(Full::new(Bytes::from(s)))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(f) => Pin::new(f).poll_frame(cx),
            Body::Stream(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }
}
