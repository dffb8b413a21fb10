//! Istio `HTTPRewrite`: prefix and regex path rewrites and authority rewrite.

use regex::Regex;

use super::{matchers::StringMatcher, MatchedBlock};
use crate::config::istio::HttpRewrite;

/// A compiled rewrite.
#[derive(Debug, Clone)]
pub struct Rewrite {
    path: PathRewrite,
    /// New authority for the upstream request.
    pub authority: Option<http::HeaderValue>,
}

#[derive(Debug, Clone)]
enum PathRewrite {
    None,
    /// Envoy `prefix_rewrite`: replace what the uri match matched.
    Prefix(String),
    /// Envoy `regex_rewrite`: substitute every match.
    Regex(Regex, String),
}

impl Rewrite {
    /// Compiles a rewrite; `uri` and `uriRegexRewrite` are mutually exclusive.
    pub fn compile(r: &HttpRewrite) -> Result<Self, String> {
        let path = match (&r.uri, &r.uri_regex_rewrite) {
            (Some(_), Some(_)) => return Err("uri and uriRegexRewrite are mutually exclusive".into()),
            (Some(u), None) => PathRewrite::Prefix(u.clone()),
            (None, Some(rr)) => {
                let re = Regex::new(&rr.pattern).map_err(|e| format!("invalid regex {:?}: {e}", rr.pattern))?;
                // RE2 substitutions are written \1; the regex crate wants ${1}.
                let sub =
                    Regex::new(r"\\(\d)").map_err(|e| e.to_string())?.replace_all(&rr.rewrite, "$${$1}").into_owned();
                PathRewrite::Regex(re, sub)
            }
            (None, None) => PathRewrite::None,
        };
        let authority = r
            .authority
            .as_deref()
            .map(|a| http::HeaderValue::from_str(a).map_err(|_| format!("invalid authority {a:?}")))
            .transpose()?;
        Ok(Self { path, authority })
    }

    /// The rewritten path, or `None` when the path stays. `path` excludes the query.
    pub fn rewrite_path(&self, path: &str, matched: MatchedBlock<'_>) -> Option<String> {
        match &self.path {
            PathRewrite::None => None,
            PathRewrite::Prefix(new) => {
                let replaced = match matched.and_then(|m| m.uri.as_ref()) {
                    Some(StringMatcher::Prefix(p)) => p.len(),
                    Some(StringMatcher::Exact(_) | StringMatcher::Regex(_)) => path.len(),
                    // Istio: no uri condition means an implicit prefix "/".
                    _ => 1,
                };
                Some(format!("{new}{}", path.get(replaced..).unwrap_or_default()))
            }
            PathRewrite::Regex(re, sub) => Some(re.replace_all(path, sub.as_str()).into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::istio::RegexRewrite;
    use crate::route::MatchBlock;

    #[test]
    fn prefix_rewrite_replaces_only_the_matched_prefix() {
        let r = Rewrite::compile(&HttpRewrite { uri: Some("/".into()), ..Default::default() }).unwrap();
        let block = MatchBlock { uri: Some(StringMatcher::Prefix("/app".into())), ..Default::default() };
        assert_eq!(r.rewrite_path("/app/list", Some(&block)).unwrap(), "//list");
        let v2 = Rewrite::compile(&HttpRewrite { uri: Some("/v2".into()), ..Default::default() }).unwrap();
        assert_eq!(v2.rewrite_path("/x", None).unwrap(), "/v2x");
    }

    #[test]
    fn regex_rewrite_substitutes_groups() {
        let rr = RegexRewrite { pattern: "^/legacy/([^/]+)/(.*)$".into(), rewrite: "/v2/tenants/\\1/\\2".into() };
        let r = Rewrite::compile(&HttpRewrite { uri_regex_rewrite: Some(rr), ..Default::default() }).unwrap();
        assert_eq!(r.rewrite_path("/legacy/acme/orders/7", None).unwrap(), "/v2/tenants/acme/orders/7");
    }
}
