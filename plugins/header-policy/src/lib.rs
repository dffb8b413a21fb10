//! `header-policy`: add, set, remove or require headers on requests and responses.
//! Each rule applies when its conditions (path prefix, methods, headers present or
//! absent) all hold for the request.

use std::collections::BTreeMap;

use serde::Deserialize;
use wicket_sdk::{Action, Filter, Plugin, Request, Response};

/// `pluginConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Rules, all applied in order when they match.
    pub rules: Vec<Rule>,
}

/// One rule.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// When the rule applies (all conditions; none = always).
    #[serde(rename = "match")]
    pub when: Conditions,
    /// Edits to the request.
    pub request: Edits,
    /// Edits to the response.
    pub response: Edits,
    /// Request headers that must be present; a request without one is rejected.
    pub require: Vec<String>,
    /// Status of that rejection (default 400).
    pub reject_status: Option<u16>,
}

/// Conditions on the request.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conditions {
    /// The path starts with this.
    pub path_prefix: Option<String>,
    /// The method is one of these.
    pub methods: Vec<String>,
    /// These headers are present.
    pub present: Vec<String>,
    /// These headers are absent.
    pub absent: Vec<String>,
}

/// Header edits, applied add, then set, then remove.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Edits {
    /// Appended (existing values kept).
    pub add: BTreeMap<String, String>,
    /// Replacing every existing value.
    pub set: BTreeMap<String, String>,
    /// Removed.
    pub remove: Vec<String>,
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

impl Conditions {
    fn hold(&self, req: &Request) -> bool {
        let path = req.path();
        self.path_prefix.as_ref().is_none_or(|p| path.starts_with(p.as_str()))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(&req.method())))
            && self.present.iter().all(|h| req.header(h).is_some())
            && self.absent.iter().all(|h| req.header(h).is_none())
    }
}

/// The configured policy.
pub struct HeaderPolicy {
    rules: std::rc::Rc<Vec<Rule>>,
}

impl Plugin for HeaderPolicy {
    type Config = Config;
    type Filter = PolicyFilter;

    fn configure(config: Config) -> Result<Self, String> {
        for (i, rule) in config.rules.iter().enumerate() {
            if rule.reject_status.is_some_and(|s| !(200..=599).contains(&s)) {
                return Err(format!("rules[{i}].reject_status: must be 200..599"));
            }
            let names = rule.request.add.keys().chain(rule.request.set.keys()).chain(rule.response.add.keys());
            if let Some(bad) = names.chain(rule.response.set.keys()).find(|n| !valid_name(n)) {
                return Err(format!("rules[{i}]: invalid header name {bad:?}"));
            }
        }
        Ok(Self { rules: std::rc::Rc::new(config.rules) })
    }

    fn filter(&self) -> PolicyFilter {
        PolicyFilter { rules: self.rules.clone(), matched: Vec::new() }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// Per request: the rules that matched it.
pub struct PolicyFilter {
    rules: std::rc::Rc<Vec<Rule>>,
    matched: Vec<usize>,
}

fn apply_request(req: &mut Request, e: &Edits) {
    for (k, v) in &e.add {
        req.add_header(k, v);
    }
    for (k, v) in &e.set {
        req.set_header(k, v);
    }
    for k in &e.remove {
        req.remove_header(k);
    }
}

impl Filter for PolicyFilter {
    fn on_request(&mut self, req: &mut Request) -> Action {
        let rules = self.rules.clone();
        for (i, rule) in rules.iter().enumerate() {
            if !rule.when.hold(req) {
                continue;
            }
            if let Some(missing) = rule.require.iter().find(|h| req.header(h).is_none()) {
                let body = format!("missing required header {missing}\n");
                req.respond(rule.reject_status.unwrap_or(400), &[("content-type", "text/plain")], body.as_bytes());
                return Action::Pause;
            }
            apply_request(req, &rule.request);
            self.matched.push(i);
        }
        Action::Continue
    }

    fn on_response(&mut self, resp: &mut Response) -> Action {
        for &i in &self.matched {
            let e = &self.rules[i].response;
            if e.is_empty() {
                continue;
            }
            for (k, v) in &e.add {
                resp.add_header(k, v);
            }
            for (k, v) in &e.set {
                resp.set_header(k, v);
            }
            for k in &e.remove {
                resp.remove_header(k);
            }
        }
        Action::Continue
    }
}

wicket_sdk::plugin!(HeaderPolicy);

#[cfg(test)]
mod tests {
    use wicket_sdk::testing::{Harness, TestRequest};

    use super::*;

    const CONFIG: &str = r#"{"rules": [
        {"request": {"add": {"x-gateway": "wicket"}}, "response": {"set": {"x-frame-options": "DENY"}, "remove": ["server"]}},
        {"match": {"path_prefix": "/api", "methods": ["POST"]}, "require": ["x-api-key"], "reject_status": 401,
         "request": {"set": {"x-api": "yes"}, "remove": ["x-debug"]}},
        {"match": {"present": ["x-beta"], "absent": ["x-opt-out"]}, "response": {"add": {"x-beta": "on"}}}
    ]}"#;

    #[test]
    fn edits_apply_when_their_conditions_hold() {
        let h = Harness::<HeaderPolicy>::new(CONFIG).unwrap();
        let mut ex = h.request(TestRequest::post("/api/items", b"{}").header("x-api-key", "k").header("x-debug", "1"));
        assert!(ex.forwarded());
        assert_eq!(ex.request_header("x-gateway"), Some("wicket"));
        assert_eq!(ex.request_header("x-api"), Some("yes"));
        assert_eq!(ex.request_header("x-debug"), None);
        ex.respond(200, &[("server", "nginx")], b"ok");
        assert_eq!(ex.response_header("x-frame-options"), Some("DENY"));
        assert_eq!(ex.response_header("server"), None);
        assert_eq!(ex.response_header("x-beta"), None);

        let ex = h.request(TestRequest::get("/api/items").header("x-debug", "1"));
        assert_eq!(ex.request_header("x-api"), None, "GET does not match the POST rule");
        assert_eq!(ex.request_header("x-debug"), Some("1"));

        let mut ex = h.request(TestRequest::get("/").header("x-beta", "1"));
        ex.respond(200, &[], b"");
        assert_eq!(ex.response_header("x-beta"), Some("on"));
        let mut ex = h.request(TestRequest::get("/").header("x-beta", "1").header("x-opt-out", "1"));
        ex.respond(200, &[], b"");
        assert_eq!(ex.response_header("x-beta"), None);
    }

    #[test]
    fn a_missing_required_header_is_rejected() {
        let h = Harness::<HeaderPolicy>::new(CONFIG).unwrap();
        let ex = h.request(TestRequest::post("/api/items", b"{}"));
        assert!(!ex.forwarded());
        let reply = ex.local_response().unwrap();
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body, b"missing required header x-api-key\n");
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let err = Harness::<HeaderPolicy>::new(r#"{"rules": [{"requst": {}}]}"#).unwrap_err();
        assert!(err.contains("rules[0]") && err.contains("requst"), "{err}");
        let err = Harness::<HeaderPolicy>::new(r#"{"rules": [{"reject_status": 99}]}"#).unwrap_err();
        assert!(err.contains("rules[0].reject_status"), "{err}");
        let err = Harness::<HeaderPolicy>::new(r#"{"rules": [{"request": {"set": {"bad name": "x"}}}]}"#).unwrap_err();
        assert!(err.contains("invalid header name"), "{err}");
        assert!(Harness::<HeaderPolicy>::new("").unwrap_err().contains("rules"), "rules is required");
    }
}
