//! Load balancing over a cluster's endpoints (DestinationRule `loadBalancer.simple`).

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use super::Endpoint;

/// How a cluster picks an endpoint.
#[derive(Debug)]
pub enum LbPolicy {
    /// Each endpoint in turn.
    RoundRobin(AtomicUsize),
    /// Uniformly at random.
    Random,
    /// Envoy's least request: the less busy of two random choices.
    LeastRequest,
}

impl LbPolicy {
    /// A round-robin balancer starting at a random position, so that many gateways do
    /// not all start on the same endpoint.
    pub fn round_robin() -> Self {
        Self::RoundRobin(AtomicUsize::new(rand::random_range(0..1024)))
    }

    /// Picks one of `eps`.
    pub fn pick<'a>(&self, eps: &'a [Arc<Endpoint>]) -> Option<&'a Arc<Endpoint>> {
        match eps.len() {
            0 => None,
            1 => eps.first(),
            n => match self {
                Self::RoundRobin(next) => eps.get(next.fetch_add(1, Ordering::Relaxed) % n),
                Self::Random => eps.get(rand::random_range(0..n)),
                Self::LeastRequest => {
                    let a = &eps[rand::random_range(0..n)];
                    let b = &eps[rand::random_range(0..n)];
                    Some(if b.active() < a.active() { b } else { a })
                }
            },
        }
    }
}
