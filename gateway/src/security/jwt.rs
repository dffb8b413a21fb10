//! RequestAuthentication: find the JWT in the configured locations, verify it against
//! its issuer's keys (RFC 8725 rules), and expose principal and claims. Istio: no token
//! passes unauthenticated; an invalid token is 401; the token is removed before
//! forwarding unless `forwardOriginalToken`.

use std::{
    collections::{hash_map::DefaultHasher, HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine;
use http::{header::HeaderName, HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use tokio::time::Instant;

use super::jwks::KeySource;

/// Clock skew allowed on `exp` and `nbf` (Envoy `clock_skew_seconds`).
const LEEWAY_SECS: u64 = 60;
/// Verified tokens remembered.
const CACHE_ENTRIES: usize = 4096;

/// Why a token was refused: the 401 body, as Envoy words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url segments of JSON.
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    Malformed,
    /// `iss` matches no rule.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// The issuer's keys were never fetched.
    #[error("Jwks remote fetch is failed")]
    JwksUnavailable,
    /// No key for the `kid`/`alg`.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoKey,
    /// Expired.
    #[error("Jwt is expired")]
    Expired,
    /// `nbf` in the future.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// Wrong audience.
    #[error("Audiences in Jwt are not allowed")]
    Audience,
    /// Signature, algorithm or claims invalid.
    #[error("Jwt verification fails")]
    Verification,
}

/// Where a rule looks for its token.
#[derive(Debug, Clone)]
pub enum Location {
    /// A header, after a prefix (e.g. `Authorization: Bearer `).
    Header(HeaderName, String),
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// One compiled `jwtRules` entry.
#[derive(Debug)]
pub struct JwtRule {
    /// Required `iss`; empty only on a refusing rule whose issuer was never written,
    /// which then claims (and refuses) tokens from any issuer.
    pub issuer: String,
    /// Accepted audiences (empty: unchecked).
    pub audiences: Vec<String>,
    /// Keys of the issuer.
    pub keys: KeySource,
    /// Token locations.
    pub locations: Vec<Location>,
    /// Keep the token when forwarding.
    pub forward: bool,
    /// Header receiving the base64url payload.
    pub payload_header: Option<HeaderName>,
    /// Claims (paths) copied to headers.
    pub claim_headers: Vec<(HeaderName, Vec<String>)>,
}

impl JwtRule {
    /// True when this rule verifies (or, refusing, rejects) tokens from `issuer`.
    fn names(&self, issuer: &str) -> bool {
        self.issuer == issuer || (self.issuer.is_empty() && matches!(self.keys, KeySource::Refused))
    }
}

/// Who the token says the caller is.
#[derive(Debug)]
pub struct Identity {
    /// `iss/sub` (Istio request principal); `None` when `sub` is missing.
    pub principal: Option<String>,
    /// Issuer.
    pub issuer: String,
    /// All claims.
    pub claims: Value,
}

impl Identity {
    /// A claim by path (`[a, b]` for `claims[a][b]`).
    pub fn claim(&self, path: &[String]) -> Option<&Value> {
        path.iter().try_fold(&self.claims, |v, k| v.get(k))
    }
}

/// The RequestAuthentication rules that apply to this gateway, and a cache of
/// verified tokens.
#[derive(Debug)]
pub struct JwtAuthn {
    rules: Vec<JwtRule>,
    /// Verified tokens by hash.
    cache: Mutex<HashMap<u64, Verified>>,
}

/// A token verified earlier: its identity, the rule that verified it, until when.
#[derive(Debug, Clone)]
struct Verified {
    identity: Arc<Identity>,
    rule: usize,
    until: Instant,
}

impl JwtAuthn {
    /// The authenticator for these rules.
    pub fn new(rules: Vec<JwtRule>) -> Self {
        Self { rules, cache: Mutex::new(HashMap::new()) }
    }

    /// Every remote key set in use (to start their fetchers).
    pub fn rules(&self) -> &[JwtRule] {
        &self.rules
    }

    /// Authenticates a request. `Ok(None)`: no token; `Ok(Some)`: every token found is
    /// valid (headers updated: token removed, outputs set); `Err`: 401.
    pub fn authenticate(
        &self,
        headers: &mut HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Arc<Identity>>, JwtError> {
        // Output headers are the gateway's word only: a client never sets them, with or
        // without a token.
        for rule in &self.rules {
            if let Some(h) = &rule.payload_header {
                headers.remove(h);
            }
            for (h, _) in &rule.claim_headers {
                headers.remove(h);
            }
        }
        let mut found: Vec<(String, Vec<usize>, Location)> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for loc in &rule.locations {
                if let Some(token) = extract(loc, headers, query) {
                    match found.iter_mut().find(|(t, _, _)| *t == token) {
                        Some((_, rules, _)) => rules.push(i),
                        None => found.push((token, vec![i], loc.clone())),
                    }
                }
            }
        }
        let mut identity = None;
        for (token, rule_ids, location) in &found {
            let (id, rule) = self.verify(token, rule_ids)?;
            if !rule.forward {
                if let Location::Header(name, _) = location {
                    headers.remove(name);
                }
            }
            if let Some(h) = &rule.payload_header {
                if let Some(payload) = token.split('.').nth(1).and_then(|p| HeaderValue::from_str(p).ok()) {
                    headers.insert(h.clone(), payload);
                }
            }
            for (h, path) in &rule.claim_headers {
                headers.remove(h);
                let value = match id.claim(path) {
                    Some(Value::String(s)) => HeaderValue::from_str(s).ok(),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => HeaderValue::from_str(&v.to_string()).ok(),
                    _ => None,
                };
                if let Some(v) = value {
                    headers.insert(h.clone(), v);
                }
            }
            identity.get_or_insert(id);
        }
        Ok(identity)
    }

    /// Verifies `token` against the rules it was found for whose issuer it names. A
    /// token verified before costs a hash lookup.
    fn verify(&self, token: &str, rule_ids: &[usize]) -> Result<(Arc<Identity>, &JwtRule), JwtError> {
        let key = cache_key(token);
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            if Instant::now() < hit.until && rule_ids.contains(&hit.rule) {
                return Ok((hit.identity, &self.rules[hit.rule]));
            }
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header_b64, payload_b64, _] = parts.as_slice() else { return Err(JwtError::Malformed) };
        let header = decode_json(header_b64)?;
        let payload = decode_json(payload_b64)?;
        if header.get("crit").is_some() {
            return Err(JwtError::Verification);
        }
        let alg: Algorithm =
            header.get("alg").and_then(Value::as_str).and_then(|a| a.parse().ok()).ok_or(JwtError::Verification)?;
        let kid = header.get("kid").and_then(Value::as_str);
        let issuer = payload.get("iss").and_then(Value::as_str).ok_or(JwtError::UnknownIssuer)?;
        let candidates: Vec<usize> = rule_ids.iter().copied().filter(|i| self.rules[*i].names(issuer)).collect();
        if candidates.is_empty() {
            return Err(JwtError::UnknownIssuer);
        }
        let mut last = JwtError::NoKey;
        for index in candidates {
            let rule = &self.rules[index];
            match verify_with(rule, token, alg, kid) {
                Ok(claims) => {
                    let principal =
                        match (claims.get("iss").and_then(Value::as_str), claims.get("sub").and_then(Value::as_str)) {
                            (Some(i), Some(s)) if !s.is_empty() => Some(format!("{i}/{s}")),
                            _ => None,
                        };
                    let id = Arc::new(Identity { principal, issuer: issuer.to_string(), claims });
                    self.remember(key, &id, index);
                    return Ok((id, rule));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Caches a verified token until its `exp` (at most an hour; a key rotation within
    /// that hour does not revoke a token that was valid when verified).
    fn remember(&self, key: u64, id: &Arc<Identity>, rule: usize) {
        let now_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let ttl = match id.claims.get("exp").and_then(Value::as_u64) {
            Some(exp) => Duration::from_secs(exp.saturating_sub(now_unix).min(3600)),
            None => Duration::from_secs(300),
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                let now = Instant::now();
                cache.retain(|_, v| v.until > now);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key, Verified { identity: id.clone(), rule, until: Instant::now() + ttl });
        }
    }
}

fn cache_key(token: &str) -> u64 {
    let mut h = DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

fn verify_with(rule: &JwtRule, token: &str, alg: Algorithm, kid: Option<&str>) -> Result<Value, JwtError> {
    let keys = rule.keys.current().ok_or(JwtError::JwksUnavailable)?;
    let candidates = keys.candidates(kid, alg);
    if candidates.is_empty() {
        if kid.is_some_and(|k| !keys.has_kid(k)) {
            rule.keys.unknown_kid();
        }
        return Err(JwtError::NoKey);
    }
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.required_spec_claims = HashSet::from(["iss".to_string()]);
    validation.set_issuer(&[&rule.issuer]);
    if rule.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&rule.audiences);
    }
    let mut last = JwtError::Verification;
    for key in candidates {
        validation.algorithms = vec![alg];
        match jsonwebtoken::decode::<Value>(token, &key.decoding, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                last = match e.kind() {
                    K::ExpiredSignature => JwtError::Expired,
                    K::ImmatureSignature => JwtError::NotYetValid,
                    K::InvalidAudience => JwtError::Audience,
                    _ => JwtError::Verification,
                };
            }
        }
    }
    Err(last)
}

/// Decodes a base64url segment holding a JSON object with no duplicate keys.
fn decode_json(segment: &str) -> Result<Value, JwtError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    if has_duplicate_keys(&bytes) {
        return Err(JwtError::Malformed);
    }
    match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(JwtError::Malformed),
    }
}

/// RFC 8725 §3.10-style hygiene: a JSON object with a key twice (at any depth) is
/// refused, so the gateway and an upstream reading the payload cannot disagree.
fn has_duplicate_keys(json: &[u8]) -> bool {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Check;
    impl<'de> Visitor<'de> for Check {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key) {
                    return Err(serde::de::Error::custom("duplicate key"));
                }
                map.next_value::<Nested>()?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element::<Nested>()?.is_some() {}
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    struct Nested;
    impl<'de> serde::Deserialize<'de> for Nested {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Check).map(|()| Nested)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_any(Check).is_err()
}

/// The token at `location`, if present (a header without the prefix counts as absent,
/// as Envoy does).
fn extract(location: &Location, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    match location {
        Location::Header(name, prefix) => {
            let value = headers.get(name)?.to_str().ok()?;
            let token = if prefix.is_empty() {
                value
            } else if value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix) {
                &value[prefix.len()..]
            } else {
                return None;
            };
            Some(token.trim().to_string()).filter(|t| !t.is_empty())
        }
        Location::Param(name) => {
            crate::http_parts::query_param(query, name).filter(|v| !v.is_empty()).map(str::to_string)
        }
        Location::Cookie(name) => {
            crate::http_parts::cookie(headers, name).filter(|v| !v.is_empty()).map(str::to_string)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        assert!(has_duplicate_keys(br#"{"a":1,"a":2}"#));
        assert!(has_duplicate_keys(br#"{"a":{"b":1,"b":1}}"#));
        assert!(has_duplicate_keys(br#"{"a":[{"b":1,"b":1}]}"#));
        assert!(!has_duplicate_keys(br#"{"a":1,"b":{"a":2},"c":[1,"x",null,true]}"#));
    }

    #[test]
    fn locations_honour_prefixes_params_and_cookies() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        h.insert("cookie", "x=1; session=tok".parse().unwrap());
        let bearer = Location::Header(HeaderName::from_static("authorization"), "Bearer ".into());
        assert_eq!(extract(&bearer, &h, None).as_deref(), Some("abc"));
        let basic = Location::Header(HeaderName::from_static("authorization"), "Basic ".into());
        assert_eq!(extract(&basic, &h, None), None);
        assert_eq!(
            extract(&Location::Param("access_token".into()), &h, Some("a=1&access_token=t")).as_deref(),
            Some("t")
        );
        assert_eq!(extract(&Location::Cookie("session".into()), &h, None).as_deref(), Some("tok"));
    }
}
