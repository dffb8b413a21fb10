//! Load balancing over a cluster's endpoints (DestinationRule `loadBalancer`).

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::Endpoint;

/// What a consistent-hash balancer hashes (`consistentHash`).
#[derive(Debug, Clone)]
pub enum HashOn {
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value; with a `ttl`, a request without the cookie gets a new one
    /// (Envoy's generated session cookie).
    Cookie {
        /// Cookie name.
        name: String,
        /// Lifetime of a generated cookie (`Max-Age`; zero makes a session cookie);
        /// `None` never generates one.
        ttl: Option<Duration>,
        /// `Path` of a generated cookie.
        path: Option<String>,
    },
    /// The downstream connection's address.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(String),
}

/// How a cluster picks an endpoint.
#[derive(Debug)]
pub enum LbPolicy {
    /// Each endpoint in turn.
    RoundRobin(AtomicUsize),
    /// Uniformly at random.
    Random,
    /// Envoy's least request: the less busy of two random choices.
    LeastRequest,
    /// Session affinity: the same key goes to the same endpoint, and a change of
    /// endpoints moves only the keys of the endpoints that changed. Rendezvous hashing
    /// gives Envoy's ring-hash/Maglev guarantees without a table to size; requests
    /// without the key are balanced at random, as in Envoy.
    ConsistentHash(HashOn),
}

impl LbPolicy {
    /// A round-robin balancer starting at a random position, so that many gateways do
    /// not all start on the same endpoint.
    pub fn round_robin() -> Self {
        Self::RoundRobin(AtomicUsize::new(rand::random_range(0..1024)))
    }

    /// The request's hash key under this policy; `None` when the policy does not hash
    /// or the request lacks the key.
    pub fn hash_key(&self, headers: &HeaderMap, query: Option<&str>, client: IpAddr) -> Option<u64> {
        let Self::ConsistentHash(on) = self else {
            return None;
        };
        let mut h = DefaultHasher::new();
        match on {
            HashOn::Header(name) => headers.get(name)?.as_bytes().hash(&mut h),
            HashOn::Cookie { name, .. } => crate::http_parts::cookie(headers, name)?.hash(&mut h),
            HashOn::SourceIp => client.hash(&mut h),
            HashOn::QueryParameter(name) => crate::http_parts::query_param(query, name)?.hash(&mut h),
        }
        Some(h.finish())
    }

    /// For a cookie policy with a TTL and a request without the cookie: a new cookie's
    /// hash key and the `Set-Cookie` value that pins the client to it.
    pub fn new_session_cookie(&self, headers: &HeaderMap) -> Option<(u64, HeaderValue)> {
        let Self::ConsistentHash(HashOn::Cookie { name, ttl: Some(ttl), path }) = self else {
            return None;
        };
        if crate::http_parts::cookie(headers, name).is_some() {
            return None;
        }
        let value = format!("{:016x}", rand::random::<u64>());
        let mut set = format!("{name}=\"{value}\"");
        if !ttl.is_zero() {
            set.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        if let Some(path) = path {
            set.push_str("; Path=");
            set.push_str(path);
        }
        set.push_str("; HttpOnly");
        let mut h = DefaultHasher::new();
        format!("\"{value}\"").as_str().hash(&mut h);
        Some((h.finish(), HeaderValue::try_from(set).ok()?))
    }

    /// Picks one of `eps`; `key` is the request's hash key for consistent hashing.
    /// Endpoint weights apply as in Envoy: round robin and random in proportion to
    /// them, least request comparing load per weight, consistent hashing weighted
    /// rendezvous (a key still moves only when its endpoint changes).
    pub fn pick<'a>(&self, eps: &'a [Arc<Endpoint>], key: Option<u64>) -> Option<&'a Arc<Endpoint>> {
        let n = eps.len();
        if n <= 1 {
            return eps.first();
        }
        let weighted = eps.iter().any(|e| e.weight != eps[0].weight);
        let random = || if weighted { weighted_random(eps) } else { &eps[rand::random_range(0..n)] };
        match self {
            Self::RoundRobin(next) if weighted => {
                let total: u64 = eps.iter().map(|e| u64::from(e.weight)).sum();
                let ticket = next.fetch_add(1, Ordering::Relaxed) as u64 % total;
                Some(by_ticket(eps, ticket))
            }
            Self::RoundRobin(next) => eps.get(next.fetch_add(1, Ordering::Relaxed) % n),
            Self::Random => Some(random()),
            Self::LeastRequest => {
                let (a, b) = (random(), random());
                // b is less loaded per unit of weight than a.
                let lighter = (b.active() as u64) * u64::from(a.weight) < (a.active() as u64) * u64::from(b.weight);
                Some(if lighter { b } else { a })
            }
            Self::ConsistentHash(_) => match key {
                Some(key) if weighted => eps.iter().max_by(|x, y| score(key, x).total_cmp(&score(key, y))),
                Some(key) => eps.iter().max_by_key(|e| rendezvous(key, e)),
                None => Some(random()),
            },
        }
    }
}

/// The endpoint whose share of the total weight holds `ticket` (`< total`).
fn by_ticket(eps: &[Arc<Endpoint>], mut ticket: u64) -> &Arc<Endpoint> {
    for e in eps {
        if ticket < u64::from(e.weight) {
            return e;
        }
        ticket -= u64::from(e.weight);
    }
    &eps[eps.len() - 1]
}

/// An endpoint at random, in proportion to the weights.
fn weighted_random(eps: &[Arc<Endpoint>]) -> &Arc<Endpoint> {
    let total: u64 = eps.iter().map(|e| u64::from(e.weight)).sum();
    by_ticket(eps, rand::random_range(0..total))
}

/// Rendezvous hash of a key and an endpoint.
fn rendezvous(key: u64, e: &Endpoint) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    e.addr.hash(&mut h);
    h.finish()
}

/// Weighted rendezvous score: `weight / -ln(u)` for the hash as `u` in (0, 1), so an
/// endpoint wins keys in proportion to its weight.
fn score(key: u64, e: &Endpoint) -> f64 {
    let u = ((rendezvous(key, e) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(e.weight) / -u.ln()
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::SocketAddr};

    use super::*;
    use crate::telemetry::labels::DestinationLabels;

    fn endpoints(ports: std::ops::Range<u16>) -> Vec<Arc<Endpoint>> {
        let ep = |p| {
            Arc::new(Endpoint::new(
                SocketAddr::from(([127, 0, 0, 1], p)),
                BTreeMap::new(),
                DestinationLabels::unknown(),
            ))
        };
        ports.map(ep).collect()
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_only_the_keys_of_a_removed_endpoint() {
        let lb = LbPolicy::ConsistentHash(HashOn::Header(HeaderName::from_static("x-user")));
        let all = endpoints(9000..9010);
        let fewer: Vec<_> = all.iter().filter(|e| e.addr.port() != 9003).cloned().collect();
        let mut moved = 0;
        for user in 0..1000 {
            let mut headers = HeaderMap::new();
            headers.insert("x-user", user.to_string().parse().unwrap());
            let key = lb.hash_key(&headers, None, IpAddr::from([127, 0, 0, 1]));
            let before = lb.pick(&all, key).unwrap().addr;
            assert_eq!(lb.pick(&all, key).unwrap().addr, before, "same key, same endpoint");
            let after = lb.pick(&fewer, key).unwrap().addr;
            if after != before {
                assert_eq!(before.port(), 9003, "only keys of the removed endpoint move");
                moved += 1;
            }
        }
        assert!((50..=150).contains(&moved), "about a tenth of the keys were on the removed endpoint: {moved}");
    }

    fn weighted(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        let eps = endpoints(9000..9000 + weights.len() as u16);
        eps.into_iter()
            .zip(weights)
            .map(|(e, w)| {
                Arc::new(Endpoint::new(e.addr, BTreeMap::new(), DestinationLabels::unknown()).with_weight(Some(*w)))
            })
            .collect()
    }

    /// How many of `rounds` picks each endpoint got.
    fn shares(lb: &LbPolicy, eps: &[Arc<Endpoint>], rounds: u64, key: impl Fn(u64) -> Option<u64>) -> Vec<u64> {
        let mut counts = vec![0; eps.len()];
        for i in 0..rounds {
            let picked = lb.pick(eps, key(i)).unwrap();
            counts[eps.iter().position(|e| Arc::ptr_eq(e, picked)).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn endpoint_weights_set_each_policys_shares() {
        let eps = weighted(&[1, 3]);
        assert_eq!(shares(&LbPolicy::round_robin(), &eps, 400, |_| None), [100, 300], "round robin is exact");
        let near = |got: &[u64], want: [u64; 2]| got.iter().zip(want).all(|(g, w)| g.abs_diff(w) < w / 5 + 30);
        for (name, lb) in [("random", LbPolicy::Random), ("least request", LbPolicy::LeastRequest)] {
            let got = shares(&lb, &eps, 4000, |_| None);
            assert!(near(&got, [1000, 3000]), "{name}: {got:?}");
        }
        let hash = LbPolicy::ConsistentHash(HashOn::SourceIp);
        let got = shares(&hash, &eps, 4000, |i| Some(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        assert!(near(&got, [1000, 3000]), "consistent hash: {got:?}");
        // Weight 0 is unset: equal shares.
        let unset = weighted(&[0, 1]);
        assert_eq!(unset[0].weight, 1);
    }
}
