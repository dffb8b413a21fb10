//! Istio `CorsPolicy`: preflights answered by the gateway, headers on actual responses.

use http::{header, HeaderMap, HeaderValue, Method};

use super::matchers::StringMatcher;
use crate::config::istio::{CorsPolicy, UnmatchedPreflights};

/// A compiled CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<StringMatcher>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    /// `unmatchedPreflights: FORWARD` (default) sends unmatched preflights upstream.
    pub forward_unmatched_preflights: bool,
}

impl Cors {
    /// Compiles a CORS policy.
    pub fn compile(c: &CorsPolicy) -> Result<Self, String> {
        let mut origins = c.allow_origins.iter().map(StringMatcher::compile).collect::<Result<Vec<_>, _>>()?;
        for o in &c.allow_origin {
            origins.push(if o == "*" { StringMatcher::Present } else { StringMatcher::Exact(o.as_str().into()) });
        }
        let join = |v: &[String]| -> Result<Option<HeaderValue>, String> {
            if v.is_empty() {
                return Ok(None);
            }
            let s = v.join(",");
            HeaderValue::from_str(&s).map(Some).map_err(|_| format!("invalid header value {s:?}"))
        };
        let forward = c.unmatched_preflights != Some(UnmatchedPreflights::Ignore);
        Ok(Self {
            origins,
            allow_methods: join(&c.allow_methods)?,
            allow_headers: join(&c.allow_headers)?,
            expose_headers: join(&c.expose_headers)?,
            max_age: c.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
            allow_credentials: c.allow_credentials.unwrap_or(false),
            forward_unmatched_preflights: forward,
        })
    }

    /// True when `origin` is allowed.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        origin.to_str().is_ok_and(|o| self.origins.iter().any(|m| m.matches(o)))
    }

    /// A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Headers of the gateway's own answer to an allowed preflight.
    pub fn preflight_headers(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        self.common_headers(origin, out);
        if let Some(v) = &self.allow_methods {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v.clone());
        }
        if let Some(v) = &self.allow_headers {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if let Some(v) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
    }

    /// Headers added to an actual response for an allowed origin.
    pub fn response_headers(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        self.common_headers(origin, out);
        if let Some(v) = &self.expose_headers {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }

    fn common_headers(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}
