//! Routing: virtual hosts by authority, first-match-wins HTTP rules, and the actions a
//! rule takes (forward, redirect, direct response) with their decorations (rewrite,
//! header operations, fault, mirror, CORS). Pure data built by `snapshot::compile`;
//! nothing here does I/O.

mod cors;
mod fault;
mod header_ops;
mod index;
mod l4;
pub(crate) mod matchers;
mod redirect;
mod rewrite;
mod table;

use std::{sync::Arc, time::Duration};

pub use cors::Cors;
pub use fault::{Abort, Fault};
pub use header_ops::{HeaderOps, HeaderRules};
pub use l4::{host_matches, L4Route};
pub use matchers::{MatchBlock, RequestView};
pub use redirect::{Redirect, RedirectInput, RedirectPath, RedirectPort};
pub use rewrite::Rewrite;
pub use table::{RouteTable, VirtualHost};

use crate::upstream::{Cluster, RetryPolicy};

/// One compiled HTTP rule of a VirtualService.
#[derive(Debug)]
pub struct Route {
    /// `namespace/vs-name` plus the rule name, for logs.
    pub name: Arc<str>,
    /// OR of blocks; empty matches every request.
    pub matches: Vec<MatchBlock>,
    /// What to do with a matching request.
    pub action: Action,
    /// Rule-level header operations.
    pub headers: HeaderRules,
    /// Whole-request timeout (Istio default: none).
    pub timeout: Option<Duration>,
    /// Retry policy (Istio's mesh default when the rule has none).
    pub retry: RetryPolicy,
    /// Fault injection, applied before the action.
    pub fault: Option<Fault>,
    /// Fire-and-forget shadow destinations.
    pub mirrors: Vec<Mirror>,
    /// CORS policy.
    pub cors: Option<Cors>,
}

/// The matched block of a rule: `None` when the rule has no match (catch-all).
pub type MatchedBlock<'a> = Option<&'a MatchBlock>;

impl Route {
    /// Istio: a rule matches when any of its blocks matches; no blocks matches all.
    pub fn find_match(&self, req: &RequestView<'_>) -> Option<MatchedBlock<'_>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find(|m| m.matches(req)).map(Some)
    }

    /// True for rules that match every request (moved last when VirtualServices merge).
    pub fn is_catch_all(&self) -> bool {
        self.matches.is_empty()
            || self.matches.iter().any(|m| {
                m.headers.is_empty()
                    && m.without_headers.is_empty()
                    && m.query_params.is_empty()
                    && m.scheme.is_none()
                    && m.method.is_none()
                    && m.authority.is_none()
                    && m.port.is_none()
                    && match &m.uri {
                        None => true,
                        Some(matchers::StringMatcher::Prefix(p)) => &**p == "/",
                        Some(matchers::StringMatcher::Regex(r)) => r.as_str() == "^(?:.*)$",
                        Some(_) => false,
                    }
            })
    }
}

/// What a matching rule does.
#[derive(Debug)]
pub enum Action {
    /// Send upstream to one of several weighted destinations.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    Direct(DirectResponse),
}

/// Weighted destinations and the rewrite applied before forwarding.
#[derive(Debug)]
pub struct Forward {
    /// Destinations with weight > 0.
    pub destinations: Vec<WeightedDestination>,
    /// Sum of the weights.
    pub total_weight: u32,
    /// Path/authority rewrite.
    pub rewrite: Option<Rewrite>,
}

impl Forward {
    /// Picks a destination with probability weight / total.
    pub fn choose(&self) -> Option<&WeightedDestination> {
        if self.destinations.len() <= 1 {
            return self.destinations.first();
        }
        let mut ticket = rand::random_range(0..self.total_weight.max(1));
        self.destinations.iter().find(|d| {
            if ticket < d.weight {
                return true;
            }
            ticket -= d.weight;
            false
        })
    }
}

/// An upstream cluster reference that may not resolve (Istio answers 503 NC then).
#[derive(Debug, Clone)]
pub struct Target {
    /// Envoy-style cluster name, `outbound|port|subset|host`.
    pub name: Arc<str>,
    /// The cluster, when the host (and subset) exist.
    pub cluster: Option<Arc<Cluster>>,
}

/// One weighted destination of a rule.
#[derive(Debug)]
pub struct WeightedDestination {
    /// The upstream.
    pub target: Target,
    /// Normalized weight.
    pub weight: u32,
    /// Destination-level header operations.
    pub headers: HeaderRules,
}

/// A shadow destination.
#[derive(Debug)]
pub struct Mirror {
    /// The upstream.
    pub target: Target,
    /// Share of requests mirrored, per million.
    pub per_million: u32,
}

/// Istio `directResponse`.
#[derive(Debug)]
pub struct DirectResponse {
    /// Status code.
    pub status: http::StatusCode,
    /// Body (may be empty).
    pub body: bytes::Bytes,
}

/// Rolls a per-million chance.
pub fn roll(per_million: u32) -> bool {
    per_million >= 1_000_000 || (per_million > 0 && rand::random_range(0..1_000_000) < per_million)
}

/// Converts an Istio percent (0..100, 4 decimals) to parts per million.
pub fn per_million(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32
}
