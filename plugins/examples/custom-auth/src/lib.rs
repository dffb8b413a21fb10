//! Example: a custom authorization filter. Every request pauses while an external
//! HTTP service is asked; 200 lets it through (with the service's `x-auth-user`
//! passed upstream), anything else is answered with 403 and the service's body, and
//! an unreachable service with 503.

use std::time::Duration;

use serde::Deserialize;
use wicket_sdk::{Action, CallAnswer, Filter, Plugin, Request};

/// `pluginConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The auth service's cluster (`auth.example.com:80`).
    pub cluster: String,
    /// Path asked (the original path goes in `x-original-path`).
    #[serde(default = "default_path")]
    pub path: String,
    /// Request headers passed to the service.
    #[serde(default = "default_forward")]
    pub forward_headers: Vec<String>,
    /// Time allowed for the answer.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_path() -> String {
    "/check".into()
}

fn default_forward() -> Vec<String> {
    vec!["authorization".into()]
}

fn default_timeout() -> u64 {
    1000
}

/// The configured check.
pub struct CustomAuth {
    config: std::rc::Rc<Config>,
}

impl Plugin for CustomAuth {
    type Config = Config;
    type Filter = Check;

    fn configure(config: Config) -> Result<Self, String> {
        if config.cluster.is_empty() {
            return Err("cluster: must name the auth service".into());
        }
        Ok(Self { config: std::rc::Rc::new(config) })
    }

    fn filter(&self) -> Check {
        Check { config: self.config.clone() }
    }
}

/// Per request.
pub struct Check {
    config: std::rc::Rc<Config>,
}

impl Filter for Check {
    fn on_request(&mut self, req: &mut Request) -> Action {
        let c = &self.config;
        let path = req.path();
        let forwarded: Vec<(String, String)> =
            c.forward_headers.iter().filter_map(|h| req.header(h).map(|v| (h.clone(), v))).collect();
        let mut headers: Vec<(&str, &str)> = forwarded.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        headers.push(("x-original-path", &path));
        let timeout = Duration::from_millis(c.timeout_ms);
        match req.call(&c.cluster, "GET", &c.path, &headers, None, timeout) {
            Ok(_) => Action::Pause,
            Err(e) => {
                wicket_sdk::log(wicket_sdk::Level::Error, &format!("cannot ask {}: {e}", c.cluster));
                req.respond(503, &[], b"auth service unavailable\n");
                Action::Pause
            }
        }
    }

    fn on_call_answer(&mut self, req: &mut Request, answer: CallAnswer) {
        match answer.status {
            200 => {
                if let Some(user) = answer.header("x-auth-user") {
                    req.set_header("x-auth-user", user);
                }
                req.resume();
            }
            0 => req.respond(503, &[], b"auth service unavailable\n"),
            _ => req.respond(403, &[("content-type", "text/plain")], &answer.body),
        }
    }
}

wicket_sdk::plugin!(CustomAuth);

#[cfg(test)]
mod tests {
    use wicket_sdk::testing::{Harness, TestRequest};

    use super::*;

    fn harness() -> Harness<CustomAuth> {
        Harness::new(r#"{"cluster": "auth.example.com:80", "forward_headers": ["authorization", "cookie"]}"#).unwrap()
    }

    #[test]
    fn the_request_waits_for_the_service_and_goes_on_when_allowed() {
        let mut ex = harness().request(TestRequest::get("/orders?id=1").header("authorization", "Bearer t"));
        assert_eq!(ex.action(), Action::Pause);
        let call = &ex.calls()[0];
        assert_eq!(call.cluster, "auth.example.com:80");
        assert_eq!(call.header(":path"), Some("/check"));
        assert_eq!(call.header("authorization"), Some("Bearer t"));
        assert_eq!(call.header("x-original-path"), Some("/orders?id=1"));
        assert_eq!(call.header("cookie"), None);
        ex.answer(200, &[("x-auth-user", "alice")], b"");
        assert!(ex.forwarded());
        assert_eq!(ex.request_header("x-auth-user"), Some("alice"));
    }

    #[test]
    fn a_refusal_or_an_unreachable_service_answers_locally() {
        let mut ex = harness().request(TestRequest::get("/"));
        ex.answer(401, &[], b"who are you?");
        let reply = ex.local_response().unwrap();
        assert_eq!((reply.status, reply.body.as_slice()), (403, &b"who are you?"[..]));
        assert!(!ex.forwarded());
        let mut ex = harness().request(TestRequest::get("/"));
        ex.fail_call();
        assert_eq!(ex.local_response().unwrap().status, 503);
    }

    #[test]
    fn the_cluster_is_required() {
        let err = Harness::<CustomAuth>::new("{}").unwrap_err();
        assert!(err.contains("cluster"), "{err}");
    }
}
