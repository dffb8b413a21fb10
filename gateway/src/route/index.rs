//! An index over a virtual host's rules, so that a host with a thousand rules does
//! not try a thousand rules per request. Each match block has a necessary condition
//! that a hash lookup can test (an exact path, a path prefix, an exact header value);
//! the index returns, in rule order, the rules with a block whose condition holds,
//! plus the rules it cannot index. The first of those that really matches is the
//! first rule that matches at all, so Istio's first-match order is kept.

use std::collections::HashMap;

use http::HeaderName;

use super::{
    matchers::{HeaderKey, MatchBlock, RequestView, StringMatcher},
    Route,
};

/// Below this many rules a linear scan is as fast as the lookups.
pub(super) const MIN_RULES: usize = 8;

/// What must hold for one block to match.
enum Guard<'a> {
    ExactPath(&'a str),
    Prefix(&'a str),
    Header(&'a HeaderName, &'a str),
    /// Nothing indexable: the rule is always a candidate.
    None,
}

fn guard(block: &MatchBlock) -> Guard<'_> {
    if !block.ignore_uri_case {
        match &block.uri {
            Some(StringMatcher::Exact(p)) => return Guard::ExactPath(p),
            Some(StringMatcher::Prefix(p)) => return Guard::Prefix(p),
            _ => {}
        }
    }
    block
        .headers
        .iter()
        .find_map(|c| match (&c.key, &c.matcher) {
            (HeaderKey::Name(name), StringMatcher::Exact(v)) => Some(Guard::Header(name, v)),
            _ => None,
        })
        .unwrap_or(Guard::None)
}

/// Rule positions by a key (a path, a prefix, a header value).
type Positions = HashMap<Box<str>, Vec<u32>>;

/// Rule positions by the condition that lets them match.
#[derive(Debug, Default)]
pub(super) struct RouteIndex {
    always: Vec<u32>,
    exact_paths: Positions,
    prefixes: Positions,
    /// Distinct prefix lengths, ascending: one lookup per length that fits the path.
    prefix_lengths: Vec<usize>,
    headers: Vec<(HeaderName, Positions)>,
}

impl RouteIndex {
    /// Indexes `routes` (positions are `u32`: a host has far fewer rules).
    pub(super) fn build(routes: &[std::sync::Arc<Route>]) -> Self {
        let mut index = Self::default();
        for (i, route) in routes.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if route.matches.is_empty() {
                index.always.push(i);
                continue;
            }
            let guards: Vec<Guard<'_>> = route.matches.iter().map(guard).collect();
            if guards.iter().any(|g| matches!(g, Guard::None)) {
                index.always.push(i);
                continue;
            }
            for g in guards {
                let list = match g {
                    Guard::ExactPath(p) => index.exact_paths.entry(p.into()).or_default(),
                    Guard::Prefix(p) => {
                        if !index.prefix_lengths.contains(&p.len()) {
                            index.prefix_lengths.push(p.len());
                        }
                        index.prefixes.entry(p.into()).or_default()
                    }
                    Guard::Header(name, value) => {
                        let at = match index.headers.iter().position(|(n, _)| n == name) {
                            Some(at) => at,
                            None => {
                                index.headers.push((name.clone(), HashMap::new()));
                                index.headers.len() - 1
                            }
                        };
                        index.headers[at].1.entry(value.into()).or_default()
                    }
                    Guard::None => continue,
                };
                // A rule with two blocks under one key is listed once.
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        index.prefix_lengths.sort_unstable();
        index
    }

    /// The positions of the rules that may match `req`, ascending.
    pub(super) fn candidates(&self, req: &RequestView<'_>) -> Vec<u32> {
        let mut out = self.always.clone();
        if let Some(ids) = self.exact_paths.get(req.path) {
            out.extend_from_slice(ids);
        }
        for &len in self.prefix_lengths.iter().take_while(|&&l| l <= req.path.len()) {
            if let Some(ids) = req.path.get(..len).and_then(|p| self.prefixes.get(p)) {
                out.extend_from_slice(ids);
            }
        }
        for (name, values) in &self.headers {
            if let Some(ids) = req.header_value(name).and_then(|v| values.get(&*v)) {
                out.extend_from_slice(ids);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}
