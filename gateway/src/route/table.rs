//! Virtual hosts of one listener's route table, found by authority.
//!
//! Istio at a gateway: exact host first, then the longest matching `*.suffix`, then
//! `*`; the port in `Host` is ignored. Within a host, rules are tried in order.

use std::{collections::HashMap, sync::Arc};

use super::{
    index::{self, RouteIndex},
    MatchedBlock, RequestView, Route,
};
use crate::http_parts::strip_port;

/// The rules served for a set of domains.
#[derive(Debug)]
pub struct VirtualHost {
    /// The domain this virtual host was built for (for logs).
    pub domain: Arc<str>,
    /// Rules in Istio order (VirtualService order, catch-alls last).
    pub routes: Vec<Arc<Route>>,
    /// Gateway `httpsRedirect`: plaintext requests get 301 to https.
    pub require_tls: bool,
    /// Candidate rules by path and header, for hosts with many rules.
    index: Option<RouteIndex>,
}

impl VirtualHost {
    /// A virtual host for `domain` serving `routes` in order.
    pub fn new(domain: &str, routes: Vec<Arc<Route>>, require_tls: bool) -> Self {
        let index = (routes.len() >= index::MIN_RULES).then(|| RouteIndex::build(&routes));
        Self { domain: domain.into(), routes, require_tls, index }
    }

    /// True when its rules are found through an index rather than one by one.
    pub fn is_indexed(&self) -> bool {
        self.index.is_some()
    }

    /// Istio: the first rule whose match holds wins; no rule means 404.
    pub fn find_route(&self, req: &RequestView<'_>) -> Option<(&Route, MatchedBlock<'_>)> {
        let Some(index) = &self.index else {
            return self.routes.iter().find_map(|r| r.find_match(req).map(|m| (&**r, m)));
        };
        index.candidates(req).into_iter().find_map(|i| {
            let r = self.routes.get(i as usize)?;
            r.find_match(req).map(|m| (&**r, m))
        })
    }
}

/// Domain index over the virtual hosts of one listener.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, Arc<VirtualHost>>,
    /// `.suffix` entries for `*.suffix` domains, longest first.
    suffixes: Vec<(Box<str>, Arc<VirtualHost>)>,
    any: Option<Arc<VirtualHost>>,
}

impl RouteTable {
    /// Adds a virtual host for `domain` (`name`, `*.suffix` or `*`), lower-cased.
    pub fn insert(&mut self, domain: &str, vhost: Arc<VirtualHost>) {
        let domain = domain.to_ascii_lowercase();
        if domain == "*" {
            self.any = Some(vhost);
        } else if let Some(suffix) = domain.strip_prefix('*') {
            self.suffixes.push((suffix.into(), vhost));
            self.suffixes.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        } else {
            self.exact.insert(domain.into(), vhost);
        }
    }

    /// The virtual host registered for exactly `domain`.
    pub fn exact(&self, domain: &str) -> Option<Arc<VirtualHost>> {
        self.exact.get(domain).cloned()
    }

    /// Finds the virtual host for an authority (`host` or `host:port`).
    pub fn find_vhost(&self, authority: &str) -> Option<&VirtualHost> {
        let host = strip_port(authority);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        self.suffixes
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
            .map(|(_, v)| &**v)
            .or(self.any.as_deref())
    }

    /// All virtual hosts (for the admin dump and tests).
    pub fn len(&self) -> usize {
        self.exact.len() + self.suffixes.len() + usize::from(self.any.is_some())
    }

    /// True when the table has no virtual host.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(domain: &str) -> Arc<VirtualHost> {
        Arc::new(VirtualHost::new(domain, vec![], false))
    }

    #[test]
    fn exact_then_longest_suffix_then_any() {
        let mut t = RouteTable::default();
        t.insert("*", vh("*"));
        t.insert("*.example.com", vh("*.example.com"));
        t.insert("*.a.example.com", vh("*.a.example.com"));
        t.insert("shop.example.com", vh("shop.example.com"));
        let find = |h| &*t.find_vhost(h).unwrap().domain;
        assert_eq!(find("Shop.Example.com:8080"), "shop.example.com");
        assert_eq!(find("x.a.example.com"), "*.a.example.com");
        assert_eq!(find("b.example.com"), "*.example.com");
        assert_eq!(find("example.com"), "*");
    }
}
