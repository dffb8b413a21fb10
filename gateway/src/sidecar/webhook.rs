//! `wicket inject-webhook`: the injection as a Kubernetes mutating admission webhook.
//! AdmissionReview v1 over HTTPS on `/inject` (Istio's path); an injected pod comes
//! back as a JSON patch. A malformed review gets 400 with the reason.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::inject::{inject_document, InjectConfig, InjectError, Outcome};
use crate::tls::certs::CertStore;

/// Largest AdmissionReview read (the API server sends at most 3 MiB objects).
const MAX_REVIEW: usize = 4 * 1024 * 1024;

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The serving certificate is unusable.
    #[error("{0}")]
    Certificate(String),
    /// The address could not be bound.
    #[error("cannot bind {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// Serves the webhook on `addr` with the key pair in `cert`/`key` (re-read when the
/// files change); returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
    config: InjectConfig,
) -> Result<SocketAddr, WebhookError> {
    let certs = Arc::new(CertStore::default());
    let pair = certs.get(cert, key).map_err(|e| WebhookError::Certificate(e.describe()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(pair);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(addr).await.map_err(|e| WebhookError::Bind(addr, e))?;
    let local = listener.local_addr().map_err(|e| WebhookError::Bind(addr, e))?;
    let config = Arc::new(config);
    tokio::spawn(async move {
        let mut rotation = tokio::time::interval(Duration::from_secs(5));
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = rotation.tick() => {
                    certs.refresh();
                    continue;
                }
            };
            let (acceptor, config) = (acceptor.clone(), config.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await else {
                    tracing::debug!(%peer, "webhook TLS handshake failed");
                    return;
                };
                let svc = service_fn(move |req| {
                    let config = config.clone();
                    async move { Ok::<_, Infallible>(handle(req, &config).await) }
                });
                let _ = crate::listener::side_server().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    Ok(local)
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn bad_request(message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    tracing::info!(%message, "malformed admission request");
    reply(StatusCode::BAD_REQUEST, json!({"error": message.to_string()}))
}

async fn handle(req: Request<Incoming>, config: &InjectConfig) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || !req.uri().path().starts_with("/inject") {
        return reply(StatusCode::NOT_FOUND, json!({"error": "POST an AdmissionReview to /inject"}));
    }
    let body = match Limited::new(req.into_body(), MAX_REVIEW).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_request(format!("cannot read the request body: {e}")),
    };
    let review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("malformed AdmissionReview: {e}")),
    };
    match review_response(&review, config) {
        Ok(response) => reply(StatusCode::OK, response),
        Err(message) => bad_request(message),
    }
}

/// The AdmissionReview answering `review`, or why it is malformed.
pub fn review_response(review: &Value, config: &InjectConfig) -> Result<Value, String> {
    if review.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err("malformed AdmissionReview: kind is not AdmissionReview".into());
    }
    let api_version = review.get("apiVersion").and_then(Value::as_str).unwrap_or("admission.k8s.io/v1");
    let request = review.get("request").ok_or("malformed AdmissionReview: no request")?;
    let uid = request.get("uid").and_then(Value::as_str).ok_or("malformed AdmissionReview: request.uid is missing")?;
    let respond = |fields: Value| {
        let mut response = json!({"uid": uid, "allowed": true});
        if let (Some(r), Some(extra)) = (response.as_object_mut(), fields.as_object()) {
            r.extend(extra.clone());
        }
        json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
    };
    let kind = request.get("kind").and_then(|k| k.get("kind")).and_then(Value::as_str);
    if kind != Some("Pod") {
        return Ok(respond(json!({})));
    }
    let object = request.get("object").ok_or("malformed AdmissionReview: request.object is missing")?;
    if !object.is_object() {
        return Err("malformed AdmissionReview: request.object is not an object".into());
    }
    let mut pod: serde_yaml::Value =
        serde_json::from_value(object.clone()).map_err(|e| format!("malformed AdmissionReview: {e}"))?;
    if let Some(map) = pod.as_mapping_mut() {
        map.entry("kind".into()).or_insert("Pod".into());
    }
    match inject_document(&mut pod, config) {
        Ok(Outcome::Injected) => {
            let pod = serde_json::to_value(&pod).map_err(|e| e.to_string())?;
            let patch: Vec<Value> = [
                ("/spec", &pod["spec"]),
                ("/metadata/labels", &pod["metadata"]["labels"]),
                ("/metadata/annotations", &pod["metadata"]["annotations"]),
            ]
            .into_iter()
            .map(|(path, value)| json!({"op": "add", "path": path, "value": value}))
            .collect();
            let patch = base64::engine::general_purpose::STANDARD.encode(Value::Array(patch).to_string());
            Ok(respond(json!({"patchType": "JSONPatch", "patch": patch})))
        }
        Ok(Outcome::Skipped(why) | Outcome::NotWorkload(why)) => {
            tracing::debug!(why, "pod admitted without injection");
            Ok(respond(json!({})))
        }
        Err(e @ InjectError::Invalid { .. }) => {
            Ok(respond(json!({"allowed": false, "status": {"code": 400, "message": e.to_string()}})))
        }
        Err(e) => Err(e.to_string()),
    }
}
