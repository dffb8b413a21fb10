//! A fake Kubernetes API server over real HTTP, faithful in what the `kube` client's
//! watchers use: list with `resourceVersion`, `limit` and `continue` pagination
//! (items of built-in kinds without `kind`/`apiVersion`, as the real one sends
//! them), metadata-only lists and watches (`as=PartialObjectMetadata`), watches as
//! chunked JSON events (ADDED, MODIFIED, DELETED, BOOKMARK, and ERROR 410 for a
//! compacted `resourceVersion`), `fieldSelector` on name and namespace, RBAC refusals
//! (403) and outages. It records every request.

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
    down: bool,
    requests: Vec<String>,
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
        let kubeconfig = tempfile::tempdir().unwrap();
        std::fs::write(
            kubeconfig.path().join("config"),
            format!(
                "apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: 'http://{addr}'}}}}]
users: [{{name: fake, user: {{token: fake-token}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]
current-context: fake
"
            ),
        )
        .unwrap();
        Self { addr, state, changes, kubeconfig }
    }

    /// A kubeconfig file pointing at this server.
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.path().join("config")
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

    fn put(&self, mut object: Value) -> u64 {
        let collection = collection_of(&object);
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let mut state = self.state.lock().unwrap();
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["uid"] = json!(format!("uid-{namespace}-{name}"));
        let key = (collection.clone(), namespace.clone(), name);
        let kind = if state.objects.insert(key, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        let change = Change { rv, collection, namespace, kind, object };
        state.log.push(change.clone());
        let _ = self.changes.send(Some(change));
        rv
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
        self.state.lock().unwrap().requests.clone()
    }
}

fn serde_yaml_to_json(doc: &str) -> Value {
    serde_yaml::from_str(doc).unwrap()
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
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural),
        _ => return None,
    };
    Some(Target { collection: (group.into(), version.into(), plural.into()), namespace })
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
        let q = query(&uri);
        let meta_only = req
            .headers()
            .get("accept")
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
        let _ = req.into_body().collect().await;
        {
            let mut state = self.state.lock().unwrap();
            state.requests.push(format!("GET {}", uri.path_and_query().map_or("", |p| p.as_str())));
            if state.down {
                return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "the server is down");
            }
        }
        let Some(target) = parse_path(uri.path()) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource");
        };
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
        let mut items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((c, ns, _), o)| matches(c, ns, o))
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
        let offset: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(usize::MAX);
        let rest = items.split_off(offset.min(items.len()));
        let more = rest.len() > limit;
        let page: Vec<Value> = rest.into_iter().take(limit).collect();
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
