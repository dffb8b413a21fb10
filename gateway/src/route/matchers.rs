//! Typed request matchers compiled from Istio `HTTPMatchRequest` blocks.
//!
//! Istio semantics: regex is an RE2 full match, prefix a raw string prefix, `{}` (or
//! `regex: "*"`) means "present"; `withoutHeaders` treats a missing header as "".

use std::borrow::Cow;

use http::{header::HeaderName, HeaderMap};
use regex::Regex;

use crate::config::istio::StringMatch;

/// A compiled `StringMatch`.
#[derive(Debug, Clone)]
pub enum StringMatcher {
    /// Whole value equal.
    Exact(Box<str>),
    /// Raw prefix.
    Prefix(Box<str>),
    /// Anchored regex (full match).
    Regex(Regex),
    /// Any value, as long as it is present.
    Present,
}

impl StringMatcher {
    /// Compiles a `StringMatch`; an empty match means "present".
    pub fn compile(m: &StringMatch) -> Result<Self, String> {
        match (&m.exact, &m.prefix, &m.regex) {
            (None, None, None) => Ok(Self::Present),
            (Some(e), None, None) => Ok(Self::Exact(e.as_str().into())),
            (None, Some(p), None) => Ok(Self::Prefix(p.as_str().into())),
            (None, None, Some(r)) if r == "*" => Ok(Self::Present),
            (None, None, Some(r)) => full_match_regex(r).map(Self::Regex),
            _ => Err("only one of exact, prefix and regex may be set".into()),
        }
    }

    /// True when `value` satisfies the matcher.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(e) => value == &**e,
            Self::Prefix(p) => value.starts_with(&**p),
            Self::Regex(r) => r.is_match(value),
            Self::Present => true,
        }
    }

    fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            Self::Exact(e) => value.eq_ignore_ascii_case(e),
            Self::Prefix(p) => {
                value.len() >= p.len() && value.is_char_boundary(p.len()) && value[..p.len()].eq_ignore_ascii_case(p)
            }
            _ => self.matches(value),
        }
    }
}

/// Compiles an RE2 pattern so that it must match the whole value.
pub(crate) fn full_match_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

/// What a header condition reads.
#[derive(Debug, Clone)]
pub enum HeaderKey {
    /// A regular header.
    Name(HeaderName),
    /// `:method`.
    Method,
    /// `:path` (with query).
    Path,
    /// `:authority`.
    Authority,
    /// `:scheme`.
    Scheme,
    /// `@request.auth.claims...`: a validated JWT claim path.
    Claim(Vec<String>),
}

impl HeaderKey {
    /// Parses a header key from a match block.
    pub fn parse(key: &str) -> Result<Self, String> {
        if let Some(rest) = key.strip_prefix("@request.auth.claims") {
            return parse_claim_path(rest).map(Self::Claim).ok_or_else(|| format!("invalid claim key {key:?}"));
        }
        match key {
            ":method" => Ok(Self::Method),
            ":path" => Ok(Self::Path),
            ":authority" => Ok(Self::Authority),
            ":scheme" => Ok(Self::Scheme),
            _ if key.starts_with(':') => Err(format!("unsupported pseudo-header {key:?}")),
            _ => HeaderName::from_bytes(key.as_bytes())
                .map(Self::Name)
                .map_err(|_| format!("invalid header name {key:?}")),
        }
    }
}

/// `.a.b` or `[a][b]` after `@request.auth.claims`.
fn parse_claim_path(rest: &str) -> Option<Vec<String>> {
    if let Some(dotted) = rest.strip_prefix('.') {
        let parts: Vec<String> = dotted.split('.').map(str::to_string).collect();
        return parts.iter().all(|p| !p.is_empty()).then_some(parts);
    }
    let inner = rest.strip_prefix('[')?.strip_suffix(']')?;
    let parts: Vec<String> = inner.split("][").map(str::to_string).collect();
    parts.iter().all(|p| !p.is_empty()).then_some(parts)
}

/// One header condition.
#[derive(Debug, Clone)]
pub struct HeaderCondition {
    /// What is read.
    pub key: HeaderKey,
    /// How it is compared.
    pub matcher: StringMatcher,
}

/// A compiled match block: all conditions must hold.
#[derive(Debug, Clone, Default)]
pub struct MatchBlock {
    /// Match name for logs.
    pub name: Option<Box<str>>,
    /// Path condition.
    pub uri: Option<StringMatcher>,
    /// Case-insensitive `uri` exact/prefix.
    pub ignore_uri_case: bool,
    /// `:scheme` condition.
    pub scheme: Option<StringMatcher>,
    /// `:method` condition.
    pub method: Option<StringMatcher>,
    /// `:authority` condition (with port, as sent).
    pub authority: Option<StringMatcher>,
    /// Conditions that must hold.
    pub headers: Vec<HeaderCondition>,
    /// Conditions that must not hold.
    pub without_headers: Vec<HeaderCondition>,
    /// Query parameter conditions.
    pub query_params: Vec<(Box<str>, StringMatcher)>,
    /// Listener port condition.
    pub port: Option<u16>,
}

/// The parts of a request the matchers read; built once per request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Path without query.
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Authority as sent (with port if any).
    pub authority: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Listener port (as written in the Gateway).
    pub port: u16,
    /// Claims of a verified JWT, for `@request.auth.claims` matches.
    pub claims: Option<&'a serde_json::Value>,
}

impl RequestView<'_> {
    fn header(&self, key: &HeaderKey) -> Option<Cow<'_, str>> {
        match key {
            HeaderKey::Method => Some(Cow::Borrowed(self.method)),
            HeaderKey::Authority => Some(Cow::Borrowed(self.authority)),
            HeaderKey::Scheme => Some(Cow::Borrowed(self.scheme)),
            HeaderKey::Path => Some(match self.query {
                Some(q) => Cow::Owned(format!("{}?{q}", self.path)),
                None => Cow::Borrowed(self.path),
            }),
            // Istio: string or list-of-string claims; a list matches if any element does,
            // which the caller gets by trying each value (see `claim_values`).
            HeaderKey::Claim(path) => {
                let v = path.iter().try_fold(self.claims?, |v, k| v.get(k))?;
                v.as_str().map(Cow::Borrowed)
            }
            HeaderKey::Name(name) => self.header_value(name),
        }
    }

    /// A request header's value as matchers see it: Envoy joins repeated request
    /// headers with ','.
    pub(super) fn header_value(&self, name: &HeaderName) -> Option<Cow<'_, str>> {
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?.to_str().ok()?;
        let mut rest = values.peekable();
        if rest.peek().is_none() {
            return Some(Cow::Borrowed(first));
        }
        let mut joined = first.to_string();
        for v in rest {
            joined.push(',');
            joined.push_str(v.to_str().ok()?);
        }
        Some(Cow::Owned(joined))
    }

    fn query_param(&self, name: &str) -> Option<&str> {
        crate::http_parts::query_param(self.query, name)
    }
}

impl MatchBlock {
    /// True when every condition of the block holds for `req`.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if self.port.is_some_and(|p| p != req.port) {
            return false;
        }
        if let Some(uri) = &self.uri {
            let ok = if self.ignore_uri_case { uri.matches_ignore_case(req.path) } else { uri.matches(req.path) };
            if !ok {
                return false;
            }
        }
        let field_ok = |m: &Option<StringMatcher>, v: &str| m.as_ref().is_none_or(|m| m.matches(v));
        if !field_ok(&self.scheme, req.scheme)
            || !field_ok(&self.method, req.method)
            || !field_ok(&self.authority, req.authority)
        {
            return false;
        }
        let headers_ok = self.headers.iter().all(|c| match &c.key {
            HeaderKey::Claim(path) => claim_matches(req.claims, path, &c.matcher),
            key => req.header(key).is_some_and(|v| c.matcher.matches(&v)),
        });
        let without_ok = self.without_headers.iter().all(|c| match req.header(&c.key) {
            Some(v) => !c.matcher.matches(&v),
            None => matches!(c.matcher, StringMatcher::Present) || !c.matcher.matches(""),
        });
        headers_ok
            && without_ok
            && self.query_params.iter().all(|(name, m)| req.query_param(name).is_some_and(|v| m.matches(v)))
    }
}

/// A claim condition holds when the claim (a string, or any string of a list) matches.
fn claim_matches(claims: Option<&serde_json::Value>, path: &[String], m: &StringMatcher) -> bool {
    let Some(v) = claims.and_then(|c| path.iter().try_fold(c, |v, k| v.get(k))) else { return false };
    match v {
        serde_json::Value::String(s) => m.matches(s),
        serde_json::Value::Array(items) => items.iter().any(|i| i.as_str().is_some_and(|s| m.matches(s))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> StringMatcher {
        let m =
            StringMatch { exact: exact.map(Into::into), prefix: prefix.map(Into::into), regex: regex.map(Into::into) };
        StringMatcher::compile(&m).unwrap()
    }

    #[test]
    fn regex_is_a_full_match_and_prefix_is_raw() {
        let re = sm(None, None, Some("b.*"));
        assert!(re.matches("bar"));
        assert!(!re.matches("abar"));
        assert!(sm(None, Some("/api"), None).matches("/apix"));
        assert!(sm(None, None, Some("*")).matches(""));
    }

    #[test]
    fn two_kinds_in_one_match_are_refused() {
        let m = StringMatch { exact: Some("a".into()), prefix: Some("b".into()), regex: None };
        assert!(StringMatcher::compile(&m).is_err());
    }

    fn view<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            path: "/Items/1",
            query,
            method: "GET",
            scheme: "http",
            authority: "shop:8080",
            headers,
            port: 8080,
            claims: None,
        }
    }

    #[test]
    fn without_headers_treats_missing_as_empty() {
        let headers = HeaderMap::new();
        let cond = |m| HeaderCondition { key: HeaderKey::parse("x").unwrap(), matcher: m };
        let block = |m| MatchBlock { without_headers: vec![cond(m)], ..Default::default() };
        assert!(block(sm(Some("foo"), None, None)).matches(&view(&headers, None)));
        assert!(block(StringMatcher::Present).matches(&view(&headers, None)));
        assert!(!block(sm(None, None, Some(".*"))).matches(&view(&headers, None)));
    }

    #[test]
    fn repeated_headers_are_joined_with_commas() {
        let mut headers = HeaderMap::new();
        headers.append("x", "a".parse().unwrap());
        headers.append("x", "b".parse().unwrap());
        let block = MatchBlock {
            headers: vec![HeaderCondition {
                key: HeaderKey::parse("x").unwrap(),
                matcher: sm(Some("a,b"), None, None),
            }],
            ..Default::default()
        };
        assert!(block.matches(&view(&headers, None)));
    }

    #[test]
    fn query_params_and_ignore_case() {
        let headers = HeaderMap::new();
        let block = MatchBlock {
            uri: Some(sm(None, Some("/items"), None)),
            ignore_uri_case: true,
            query_params: vec![("debug".into(), sm(Some(""), None, None))],
            ..Default::default()
        };
        assert!(block.matches(&view(&headers, Some("a=1&debug"))));
        assert!(!block.matches(&view(&headers, Some("a=1"))));
    }
}
