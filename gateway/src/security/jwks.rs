//! JSON Web Key Sets: parsing (with the algorithms each key may verify), and remote
//! sets fetched in the background through the gateway's own HTTP(S) client, refreshed
//! periodically and on an unknown `kid`, kept across reloads. The request path only
//! reads the current set; it never waits on a fetch.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm},
    Algorithm, DecodingKey,
};
use tokio::sync::Notify;

/// Largest JWKS body accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Most keys kept from one set.
const MAX_KEYS: usize = 100;
/// Refresh period of a remote set (Envoy's `cache_duration`).
const REFRESH: Duration = Duration::from_secs(300);
/// Minimum gap between refetches caused by an unknown `kid`.
const UNKNOWN_KID_GAP: Duration = Duration::from_secs(60);

/// One verification key and the algorithms it may verify.
pub struct Key {
    /// `kid`, if the JWK had one.
    pub kid: Option<String>,
    /// The key.
    pub decoding: DecodingKey,
    /// Algorithms allowed with this key (never taken from the token).
    pub algorithms: Vec<Algorithm>,
}

/// A parsed key set.
#[derive(Default)]
pub struct KeySet {
    /// The keys, in JWKS order.
    pub keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.keys.len()).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document. `allow_hmac` admits `oct` keys (inline sets only).
    pub fn parse(json: &[u8], allow_hmac: bool) -> Result<Self, String> {
        if json.len() > MAX_JWKS_BYTES {
            return Err("JWKS is larger than 1 MiB".into());
        }
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("invalid JWKS: {e}"))?;
        let mut keys = Vec::new();
        for jwk in set.keys.iter().take(MAX_KEYS) {
            let algorithms = algorithms_for(jwk, allow_hmac);
            if algorithms.is_empty() {
                continue;
            }
            let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable JWK: {e}"))?;
            keys.push(Key { kid: jwk.common.key_id.clone(), decoding, algorithms });
        }
        if keys.is_empty() {
            return Err("JWKS has no usable key".into());
        }
        Ok(Self { keys })
    }

    /// Keys that may verify a token with this `kid` and `alg`: the exact `kid`, or
    /// without a `kid` the keys allowing `alg` (at most 10, bounding CPU per token).
    pub fn candidates<'a>(&'a self, kid: Option<&str>, alg: Algorithm) -> Vec<&'a Key> {
        let fits = |k: &&Key| k.algorithms.contains(&alg);
        match kid {
            Some(kid) => self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).filter(fits).collect(),
            None => self.keys.iter().filter(fits).take(10).collect(),
        }
    }

    /// True when some key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The JWK's own `alg` if given, else the algorithms its key type supports.
fn algorithms_for(jwk: &Jwk, allow_hmac: bool) -> Vec<Algorithm> {
    use Algorithm::*;
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        AlgorithmParameters::OctetKey(_) if allow_hmac => vec![HS256, HS384, HS512],
        AlgorithmParameters::OctetKey(_) => vec![],
    };
    let declared = jwk.common.key_algorithm.and_then(|a| match a {
        KeyAlgorithm::RS256 => Some(RS256),
        KeyAlgorithm::RS384 => Some(RS384),
        KeyAlgorithm::RS512 => Some(RS512),
        KeyAlgorithm::PS256 => Some(PS256),
        KeyAlgorithm::PS384 => Some(PS384),
        KeyAlgorithm::PS512 => Some(PS512),
        KeyAlgorithm::ES256 => Some(ES256),
        KeyAlgorithm::ES384 => Some(ES384),
        KeyAlgorithm::EdDSA => Some(EdDSA),
        KeyAlgorithm::HS256 => Some(HS256),
        KeyAlgorithm::HS384 => Some(HS384),
        KeyAlgorithm::HS512 => Some(HS512),
        _ => None,
    });
    match declared {
        // A declared algorithm must also fit the key type (no RSA key as an HMAC secret).
        Some(alg) => by_type.into_iter().filter(|a| *a == alg).collect(),
        None => by_type,
    }
}

/// Where a rule's keys come from.
pub enum KeySource {
    /// `jwks`: fixed keys.
    Inline(Arc<KeySet>),
    /// `jwksUri`: fetched and refreshed in the background.
    Remote(Arc<RemoteKeys>),
    /// None: the rule stands in for one that failed to compile, and refuses its tokens.
    Refused,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(k) => write!(f, "Inline({k:?})"),
            Self::Remote(r) => write!(f, "Remote({})", r.uri),
            Self::Refused => f.write_str("Refused"),
        }
    }
}

impl KeySource {
    /// The current key set (`None` while a remote set was never fetched, or for a
    /// refusing rule: fail closed).
    pub fn current(&self) -> Option<Arc<KeySet>> {
        match self {
            Self::Inline(k) => Some(k.clone()),
            Self::Remote(r) => r.keys.load_full(),
            Self::Refused => None,
        }
    }

    /// Asks for a refetch because a token named a `kid` the set lacks.
    pub fn unknown_kid(&self) {
        if let Self::Remote(r) = self {
            r.refetch.notify_one();
        }
    }
}

/// A remote key set and its fetch state.
pub struct RemoteKeys {
    /// The JWKS URL.
    pub uri: String,
    timeout: Duration,
    keys: ArcSwapOption<KeySet>,
    refetch: Arc<Notify>,
    started: AtomicBool,
    /// Successful and failed fetches, for the admin endpoint and metrics.
    pub fetched: AtomicU64,
    /// Failed fetches.
    pub failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl RemoteKeys {
    /// The last fetch error, if the last fetch failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Starts the background fetcher once (idempotent).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            let mut last_kid_fetch: Option<tokio::time::Instant> = None;
            loop {
                let Some(me) = this.upgrade() else { return };
                let wait = match fetch(&me.uri, me.timeout).await.and_then(|body| KeySet::parse(&body, false)) {
                    Ok(set) => {
                        me.keys.store(Some(Arc::new(set)));
                        me.fetched.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut e) = me.last_error.lock() {
                            *e = None;
                        }
                        backoff = Duration::from_secs(1);
                        REFRESH
                    }
                    Err(e) => {
                        tracing::warn!(uri = %me.uri, error = %e, "JWKS fetch failed; tokens for this issuer fail until it succeeds");
                        me.failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut last) = me.last_error.lock() {
                            *last = Some(e);
                        }
                        let wait = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        wait
                    }
                };
                // Hold only the notifier while waiting, so a dropped set ends the task.
                let refetch = me.refetch.clone();
                drop(me);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = refetch.notified() => {
                        // An unknown `kid`: refetch now, but at most once a minute.
                        if let Some(last) = last_kid_fetch {
                            tokio::time::sleep_until(last + UNKNOWN_KID_GAP).await;
                        }
                        last_kid_fetch = Some(tokio::time::Instant::now());
                    }
                }
            }
        });
    }
}

/// Remote key sets by URL, shared across snapshots so a reload keeps fetched keys.
#[derive(Default)]
pub struct JwksCache {
    remotes: Mutex<HashMap<String, Arc<RemoteKeys>>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwksCache")
    }
}

impl JwksCache {
    /// The remote set for `uri` (created unstarted when new).
    pub fn remote(&self, uri: &str, timeout: Duration) -> Arc<RemoteKeys> {
        let mut remotes = match self.remotes.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        remotes
            .entry(uri.to_string())
            .or_insert_with(|| {
                Arc::new(RemoteKeys {
                    uri: uri.to_string(),
                    timeout,
                    keys: ArcSwapOption::empty(),
                    refetch: Arc::new(Notify::new()),
                    started: AtomicBool::new(false),
                    fetched: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    last_error: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Starts every fetcher and forgets sets no snapshot uses.
    pub fn start_all(&self) {
        let Ok(mut remotes) = self.remotes.lock() else { return };
        remotes.retain(|_, r| Arc::strong_count(r) > 1);
        for r in remotes.values() {
            r.start();
        }
    }
}

/// GET `uri` (http or https, system roots) within `timeout`; the body, at most 1 MiB.
async fn fetch(uri: &str, timeout: Duration) -> Result<Bytes, String> {
    tokio::time::timeout(timeout, fetch_inner(uri)).await.map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn fetch_inner(uri: &str) -> Result<Bytes, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("invalid jwksUri: {e}"))?;
    let https = parsed.scheme_str() == Some("https");
    let host = parsed.host().ok_or("jwksUri has no host")?.to_string();
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect: {e}"))?;
    let path = parsed.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let req = http::Request::get(path)
        .header(http::header::HOST, parsed.authority().map_or(host.as_str(), |a| a.as_str()))
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if https {
        let config = crate::tls::system_client_config();
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| format!("body: {e}"))?;
    Ok(body.to_bytes())
}

async fn send<I>(io: I, req: http::Request<Empty<Bytes>>) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2048-bit RSA public key in the shape of Istio's sample JWKS
    /// (`security/tools/jwt/samples/jwks.json`: one RSA key, a kid, no `alg`).
    fn rsa_jwks() -> String {
        let n = [
            "ynwL0LYqcbKJSPsmUBetuXuliiuzGuueUOmzZQ4gv4AMXSsxDQTZ2bHL30S-mh701Yw2t3bl8l5Ag6_t",
            "Z8sJJEoGiujO2MdMpvbhH6BMr8_CWvyPQE36zy_cfaOvFqAxVAA_FmW4PXSFmjrm1xbe3gESJkujMb1B",
            "827dQHxeo49i-qx2oJU3GS9lCsEQ0d7BwP6PgqhwJt0IZUKfGHmu7S8l2LQT264qfVlJ0OUHyJ4cpp2j",
            "VWKMyP3X_Cp35gwAECh16UuAFJKnR7nbq1Ac9tKid5Q_1Q_Cvc7JNtf-yHu_8UsOwtKLOdv6GCQtQMwP",
            "JdvXnxC21lYfLuRsNaXf-w",
        ]
        .concat();
        format!(r#"{{"keys":[{{"e":"AQAB","kid":"sample","kty":"RSA","n":"{n}"}}]}}"#)
    }

    #[test]
    fn an_rsa_jwks_without_alg_parses_with_rsa_algorithms() {
        let set = KeySet::parse(rsa_jwks().as_bytes(), false).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert!(set.has_kid("sample"));
        assert!(set.candidates(Some("sample"), Algorithm::RS256).len() == 1);
        assert!(set.candidates(None, Algorithm::HS256).is_empty(), "an RSA key never verifies HMAC");
    }

    #[test]
    fn hmac_keys_only_inline() {
        let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}"#;
        assert!(KeySet::parse(oct.as_bytes(), false).is_err());
        assert_eq!(KeySet::parse(oct.as_bytes(), true).unwrap().keys[0].algorithms.len(), 3);
    }
}
