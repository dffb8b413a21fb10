//! JWTs for tests: ES256 signers made at test time, their JWKS, and a JWKS server
//! whose key set a test can swap (rotation).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A key that signs tokens, and its public JWK.
pub struct Signer {
    /// Key id.
    pub kid: String,
    key: EncodingKey,
    /// Public JWK.
    pub jwk: Value,
}

impl Signer {
    /// A fresh P-256 key.
    pub fn es256(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw(); // 0x04 || x || y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
        Self { kid: kid.to_string(), key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(), jwk }
    }

    /// Signs `claims` with ES256 and this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// A JWKS document for these signers.
pub fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Builds a token from raw header and payload JSON with a given signature segment.
pub fn forge(header: &str, payload: &str, signature: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_bytes());
    format!("{}.{}.{signature}", b64(header), b64(payload))
}

/// An HTTP server answering every request with the current JWKS.
pub struct JwksServer {
    /// `http://127.0.0.1:port/jwks.json`.
    pub url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    /// Serves `body`.
    pub async fn start(body: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let text = b.lock().unwrap().clone();
                        async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(text)))) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { url: format!("http://{addr}/jwks.json"), body, hits }
    }

    /// Replaces the served key set.
    pub fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    /// Fetches served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}
