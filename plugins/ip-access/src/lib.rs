//! `ip-access`: allow and deny lists of CIDR ranges (IPv4 and IPv6). The client is
//! the connection's peer, or with `trusted_hops` N the Nth address from the right of
//! `x-forwarded-for` (the one the outermost trusted proxy saw). Deny wins; a
//! non-empty allow list admits only what it lists.

use std::net::IpAddr;

use serde::Deserialize;
use wicket_sdk::{Action, Filter, Plugin, Request};

/// `pluginConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Ranges admitted (empty: everyone not denied).
    pub allow: Vec<String>,
    /// Ranges refused.
    pub deny: Vec<String>,
    /// Proxies in front of the gateway that append to `x-forwarded-for`.
    pub trusted_hops: u32,
    /// Status of a refusal (default 403).
    pub deny_status: Option<u16>,
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    prefix: u8,
    v4: bool,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| format!("invalid prefix length in {text:?}"))?)),
            None => (text, None),
        };
        let ip: IpAddr = addr.trim().parse().map_err(|_| format!("invalid address in {text:?}"))?;
        let (bits, v4, max) = match ip {
            IpAddr::V4(v) => (u128::from(u32::from(v)), true, 32),
            IpAddr::V6(v) => (u128::from(v), false, 128),
        };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(format!("prefix length {prefix} is too long in {text:?}"));
        }
        Ok(Self { net: bits & mask(prefix, max), prefix, v4 })
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v) if self.v4 => u128::from(u32::from(v)) & mask(self.prefix, 32) == self.net,
            IpAddr::V6(v) if !self.v4 => u128::from(v) & mask(self.prefix, 128) == self.net,
            _ => false,
        }
    }
}

fn mask(prefix: u8, max: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        (u128::MAX << (128 - u32::from(prefix))) >> (128 - u32::from(max))
    }
}

/// The configured lists.
pub struct IpAccess {
    rules: std::rc::Rc<Rules>,
}

struct Rules {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    trusted_hops: u32,
    deny_status: u16,
}

fn parse_all(list: &[String], field: &str) -> Result<Vec<Cidr>, String> {
    list.iter().enumerate().map(|(i, c)| Cidr::parse(c).map_err(|e| format!("{field}[{i}]: {e}"))).collect()
}

impl Plugin for IpAccess {
    type Config = Config;
    type Filter = Gate;

    fn configure(c: Config) -> Result<Self, String> {
        let rules = Rules {
            allow: parse_all(&c.allow, "allow")?,
            deny: parse_all(&c.deny, "deny")?,
            trusted_hops: c.trusted_hops,
            deny_status: c.deny_status.unwrap_or(403),
        };
        Ok(Self { rules: std::rc::Rc::new(rules) })
    }

    fn filter(&self) -> Gate {
        Gate { rules: self.rules.clone() }
    }
}

/// Per request.
pub struct Gate {
    rules: std::rc::Rc<Rules>,
}

impl Gate {
    fn client(&self, req: &Request) -> Option<IpAddr> {
        if self.rules.trusted_hops == 0 {
            return req.source_ip();
        }
        let xff = req.header("x-forwarded-for")?;
        let hops: Vec<&str> = xff.split(',').map(str::trim).collect();
        let at = hops.len().checked_sub(self.rules.trusted_hops as usize)?;
        hops.get(at)?.parse().ok()
    }
}

impl Filter for Gate {
    fn on_request(&mut self, req: &mut Request) -> Action {
        let r = &self.rules;
        let admitted = self.client(req).is_some_and(|ip| {
            !r.deny.iter().any(|c| c.contains(ip)) && (r.allow.is_empty() || r.allow.iter().any(|c| c.contains(ip)))
        });
        if admitted {
            return Action::Continue;
        }
        req.respond(r.deny_status, &[("content-type", "text/plain")], b"access denied by ip-access\n");
        Action::Pause
    }
}

wicket_sdk::plugin!(IpAccess);

#[cfg(test)]
mod tests {
    use wicket_sdk::testing::{Harness, TestRequest};

    use super::*;

    #[test]
    fn cidrs_match_v4_v6_and_mapped_addresses() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("10.1.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("203.0.113.9".parse().unwrap()));
        assert!(Cidr::parse("192.0.2.7").unwrap().contains("192.0.2.7".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense/8").is_err());
    }

    #[test]
    fn deny_wins_and_allow_lists_admit_only_what_they_list() {
        let h = Harness::<IpAccess>::new(r#"{"allow": ["10.0.0.0/8", "2001:db8::/32"], "deny": ["10.66.0.0/16"]}"#)
            .unwrap();
        assert!(h.request(TestRequest::get("/").from("10.1.2.3")).forwarded());
        assert!(h.request(TestRequest::get("/").from("2001:db8::5")).forwarded());
        let ex = h.request(TestRequest::get("/").from("10.66.1.1"));
        assert_eq!(ex.local_response().unwrap().status, 403);
        assert!(!h.request(TestRequest::get("/").from("192.0.2.1")).forwarded());
    }

    #[test]
    fn trusted_hops_pick_the_client_from_forwarded_for() {
        let h = Harness::<IpAccess>::new(r#"{"deny": ["203.0.113.0/24"], "trusted_hops": 1}"#).unwrap();
        let via = |xff: &str| TestRequest::get("/").from("10.0.0.1").header("x-forwarded-for", xff);
        assert!(!h.request(via("203.0.113.5")).forwarded());
        // A client cannot hide behind an entry it wrote itself.
        assert!(!h.request(via("198.51.100.1, 203.0.113.5")).forwarded());
        assert!(h.request(via("203.0.113.5, 198.51.100.1")).forwarded());
        assert!(!h.request(TestRequest::get("/")).forwarded(), "no x-forwarded-for: unknown client");
    }

    #[test]
    fn bad_ranges_are_named() {
        let err = Harness::<IpAccess>::new(r#"{"deny": ["10.0.0.0/8", "10.0.0.0/40"]}"#).unwrap_err();
        assert!(err.starts_with("deny[1]:"), "{err}");
        let err = Harness::<IpAccess>::new(r#"{"alow": []}"#).unwrap_err();
        assert!(err.contains("alow"), "{err}");
    }
}
