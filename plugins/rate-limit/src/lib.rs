//! `rate-limit`: local token buckets keyed by client IP, a header or a JWT claim,
//! kept in shared data so every VM of the proxy draws from the same bucket. Over the
//! limit: 429 with `Retry-After`; every answer carries `x-ratelimit-limit`,
//! `x-ratelimit-remaining` and `x-ratelimit-reset`.

use serde::Deserialize;
use wicket_sdk::{shared, Action, Filter, Plugin, Request, Response};

/// `pluginConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests allowed per `unit`.
    pub requests_per_unit: u64,
    /// `second`, `minute` or `hour`.
    pub unit: Unit,
    /// Bucket size: requests allowed in a burst (default `requests_per_unit`).
    #[serde(default)]
    pub burst: Option<u64>,
    /// What a bucket belongs to (default: the client IP).
    #[serde(default)]
    pub key: Key,
    /// Names the buckets in shared data, so two limiters do not share them.
    #[serde(default = "default_name")]
    pub name: String,
}

fn default_name() -> String {
    "default".into()
}

/// The refill period.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
}

impl Unit {
    fn millis(self) -> u64 {
        match self {
            Unit::Second => 1_000,
            Unit::Minute => 60_000,
            Unit::Hour => 3_600_000,
        }
    }
}

/// Whose bucket a request draws from. Requests without the header or claim share
/// one bucket.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Key {
    /// The client address as the gateway saw it.
    #[default]
    ClientIp,
    /// A request header's value.
    Header(String),
    /// A claim of the verified JWT (run the plugin in the AUTHZ phase or later).
    Claim(String),
}

/// The configured limiter.
pub struct RateLimit {
    config: std::rc::Rc<Config>,
}

impl Plugin for RateLimit {
    type Config = Config;
    type Filter = Limiter;

    fn configure(config: Config) -> Result<Self, String> {
        if config.requests_per_unit == 0 {
            return Err("requests_per_unit: must be at least 1".into());
        }
        if config.burst == Some(0) {
            return Err("burst: must be at least 1".into());
        }
        Ok(Self { config: std::rc::Rc::new(config) })
    }

    fn filter(&self) -> Limiter {
        Limiter { config: self.config.clone(), verdict: None }
    }
}

/// A bucket's state: thousandths of a token, and when it was last refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    milli_tokens: u64,
    at_ms: u64,
}

impl Bucket {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (t, at) = text.split_once(':')?;
        Some(Self { milli_tokens: t.parse().ok()?, at_ms: at.parse().ok()? })
    }

    fn encode(self) -> Vec<u8> {
        format!("{}:{}", self.milli_tokens, self.at_ms).into_bytes()
    }
}

/// The decision for one request.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    allowed: bool,
    limit: u64,
    remaining: u64,
    /// Seconds until the bucket is full again.
    reset_s: u64,
    /// Seconds until one more request is allowed.
    retry_s: u64,
}

/// Per request.
pub struct Limiter {
    config: std::rc::Rc<Config>,
    verdict: Option<Verdict>,
}

impl Limiter {
    fn key(&self, req: &Request) -> String {
        let who = match &self.config.key {
            Key::ClientIp => req.source_ip().map(|ip| ip.to_string()),
            Key::Header(h) => req.header(h),
            Key::Claim(c) => req.jwt_claim(c),
        };
        format!("rate-limit:{}:{}", self.config.name, who.unwrap_or_else(|| "-".into()))
    }

    /// Refills by elapsed time and takes one token, atomically across VMs.
    fn take(&self, key: &str) -> Verdict {
        let c = &self.config;
        let capacity = c.burst.unwrap_or(c.requests_per_unit) * 1000;
        let (rate, unit_ms) = (u128::from(c.requests_per_unit) * 1000, u128::from(c.unit.millis()));
        // Milliseconds to earn `milli` thousandths of a token, rounded up to seconds.
        let secs = |milli: u64| (u128::from(milli) * unit_ms).div_ceil(rate).div_ceil(1000) as u64;
        let now = wicket_sdk::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut verdict = None;
        shared::update(key, |old| {
            let mut b = old.and_then(Bucket::decode).unwrap_or(Bucket { milli_tokens: capacity, at_ms: now });
            let elapsed = u128::from(now.saturating_sub(b.at_ms));
            let gained = (elapsed * rate / unit_ms) as u64;
            if b.milli_tokens + gained >= capacity {
                b.milli_tokens = capacity;
                b.at_ms = now;
            } else {
                // Advance only by the time those tokens took, keeping the remainder.
                b.milli_tokens += gained;
                b.at_ms += (u128::from(gained) * unit_ms / rate) as u64;
            }
            let allowed = b.milli_tokens >= 1000;
            if allowed {
                b.milli_tokens -= 1000;
            }
            verdict = Some(Verdict {
                allowed,
                limit: capacity / 1000,
                remaining: b.milli_tokens / 1000,
                reset_s: secs(capacity - b.milli_tokens),
                retry_s: if allowed { 0 } else { secs(1000 - b.milli_tokens).max(1) },
            });
            b.encode()
        });
        verdict.unwrap_or(Verdict { allowed: true, limit: 0, remaining: 0, reset_s: 0, retry_s: 0 })
    }
}

impl Filter for Limiter {
    fn on_request(&mut self, req: &mut Request) -> Action {
        let v = self.take(&self.key(req));
        self.verdict = Some(v);
        if v.allowed {
            return Action::Continue;
        }
        let (limit, reset, retry) = (v.limit.to_string(), v.reset_s.to_string(), v.retry_s.to_string());
        let headers = [
            ("retry-after", retry.as_str()),
            ("x-ratelimit-limit", limit.as_str()),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", reset.as_str()),
            ("content-type", "text/plain"),
        ];
        req.respond(429, &headers, b"rate limit exceeded\n");
        Action::Pause
    }

    fn on_response(&mut self, resp: &mut Response) -> Action {
        if let Some(v) = self.verdict.filter(|v| v.allowed) {
            resp.set_header("x-ratelimit-limit", &v.limit.to_string());
            resp.set_header("x-ratelimit-remaining", &v.remaining.to_string());
            resp.set_header("x-ratelimit-reset", &v.reset_s.to_string());
        }
        Action::Continue
    }
}

wicket_sdk::plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wicket_sdk::testing::{advance, reset, Harness, TestRequest};

    use super::*;

    #[test]
    fn the_budget_holds_then_refills_with_time() {
        reset();
        let h = Harness::<RateLimit>::new(r#"{"requests_per_unit": 3, "unit": "minute"}"#).unwrap();
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let mut ex = h.request(TestRequest::get("/"));
            assert!(ex.forwarded());
            ex.respond(200, &[], b"");
            remaining.push(ex.response_header("x-ratelimit-remaining").unwrap().to_string());
        }
        assert_eq!(remaining, ["2", "1", "0"]);
        let ex = h.request(TestRequest::get("/"));
        let reply = ex.local_response().expect("429");
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header("retry-after"), Some("20"));
        assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(reply.header("x-ratelimit-reset"), Some("60"));
        // Another client has its own bucket.
        assert!(h.request(TestRequest::get("/").from("198.51.100.7")).forwarded());
        advance(Duration::from_secs(20));
        assert!(h.request(TestRequest::get("/")).forwarded(), "one token back after 20 s");
        assert!(!h.request(TestRequest::get("/")).forwarded());
    }

    #[test]
    fn buckets_by_header_and_by_jwt_claim() {
        reset();
        let h =
            Harness::<RateLimit>::new(r#"{"requests_per_unit": 1, "unit": "hour", "key": {"header": "x-api-key"}}"#)
                .unwrap();
        assert!(h.request(TestRequest::get("/").header("x-api-key", "a")).forwarded());
        assert!(!h.request(TestRequest::get("/").header("x-api-key", "a")).forwarded());
        assert!(h.request(TestRequest::get("/").header("x-api-key", "b")).forwarded());
        assert!(h.request(TestRequest::get("/")).forwarded(), "no key: the shared anonymous bucket");
        assert!(!h.request(TestRequest::get("/")).forwarded());

        let h = Harness::<RateLimit>::new(
            r#"{"requests_per_unit": 1, "unit": "hour", "key": {"claim": "sub"}, "name": "by-user"}"#,
        )
        .unwrap();
        let alice = || TestRequest::get("/").jwt("idp/alice", &serde_json::json!({"sub": "alice"}));
        assert!(h.request(alice()).forwarded());
        assert!(!h.request(alice()).forwarded());
        let bob = TestRequest::get("/").jwt("idp/bob", &serde_json::json!({"sub": "bob"}));
        assert!(h.request(bob).forwarded());
    }

    #[test]
    fn bad_configuration_names_the_field() {
        let err = Harness::<RateLimit>::new(r#"{"requests_per_unit": 0, "unit": "second"}"#).unwrap_err();
        assert!(err.contains("requests_per_unit"), "{err}");
        let err = Harness::<RateLimit>::new(r#"{"requests_per_unit": 5, "unit": "fortnight"}"#).unwrap_err();
        assert!(err.contains("unit") && err.contains("fortnight"), "{err}");
        let err = Harness::<RateLimit>::new(r#"{"requests_per_unit": "5", "unit": "second"}"#).unwrap_err();
        assert!(err.contains("requests_per_unit"), "{err}");
    }
}
