//! Istio `headers.request` / `headers.response` operations, compiled to typed names.

use http::{header::HeaderName, HeaderMap, HeaderValue};

use crate::config::istio::{HeaderOperations, Headers};

/// Compiled set/add/remove operations for one direction.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    /// `host`/`:authority` set or added: rewrites the upstream authority.
    pub authority: Option<HeaderValue>,
}

/// Request and response operations of a rule or destination.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// Applied to the upstream request.
    pub request: HeaderOps,
    /// Applied to the downstream response.
    pub response: HeaderOps,
}

impl HeaderRules {
    /// Compiles Istio `Headers`; errors name the offending header.
    pub fn compile(headers: Option<&Headers>) -> Result<Self, String> {
        let Some(h) = headers else {
            return Ok(Self::default());
        };
        Ok(Self {
            request: h.request.as_ref().map(HeaderOps::compile).transpose()?.unwrap_or_default(),
            response: h.response.as_ref().map(HeaderOps::compile).transpose()?.unwrap_or_default(),
        })
    }
}

impl HeaderOps {
    /// Compiles one direction's operations.
    pub fn compile(ops: &HeaderOperations) -> Result<Self, String> {
        let mut out = Self::default();
        let value = |v: &str| HeaderValue::from_str(v).map_err(|_| format!("invalid header value {v:?}"));
        for (list, target) in [(&ops.set, &mut out.set), (&ops.add, &mut out.add)] {
            for (k, v) in list {
                if k.eq_ignore_ascii_case("host") || k == ":authority" {
                    out.authority = Some(value(v)?);
                    continue;
                }
                target.push((name(k)?, value(v)?));
            }
        }
        out.remove = ops.remove.iter().map(|k| name(k)).collect::<Result<_, _>>()?;
        Ok(out)
    }

    /// Envoy order: remove, then set (overwrite), then add (append).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

fn name(k: &str) -> Result<HeaderName, String> {
    if k.starts_with(':') {
        return Err(format!("pseudo-header {k:?} cannot be changed"));
    }
    HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("invalid header name {k:?}"))
}
