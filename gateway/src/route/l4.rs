//! Connection-level routes: VirtualService `tls` rules (matched by SNI, for passthrough
//! servers) and `tcp` rules (matched by port), each with weighted destinations.

use std::sync::Arc;

use super::Target;

/// One compiled `tls[]` or `tcp[]` rule.
#[derive(Debug)]
pub struct L4Route {
    /// `namespace/name` of the VirtualService, for logs.
    pub name: Arc<str>,
    /// SNI patterns (`*.example.com` allowed); empty matches any.
    pub sni_hosts: Vec<String>,
    /// Listener port condition.
    pub port: Option<u16>,
    /// Weighted destinations (weight > 0).
    pub destinations: Vec<(Target, u32)>,
}

impl L4Route {
    /// True when the rule applies to a connection with this SNI on this port.
    pub fn matches(&self, sni: Option<&str>, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
            && (self.sni_hosts.is_empty() || sni.is_some_and(|s| self.sni_hosts.iter().any(|h| host_matches(h, s))))
    }

    /// Picks a destination with probability weight / total.
    pub fn choose(&self) -> Option<&Target> {
        let total: u32 = self.destinations.iter().map(|(_, w)| w).sum();
        let mut ticket = rand::random_range(0..total.max(1));
        self.destinations.iter().find_map(|(t, w)| {
            if ticket < *w {
                return Some(t);
            }
            ticket -= w;
            None
        })
    }
}

/// Istio host matching: `*` matches all, `*.suffix` any name ending in `.suffix`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    pattern == "*"
        || pattern.eq_ignore_ascii_case(host)
        || pattern.strip_prefix('*').is_some_and(|suffix| {
            host.len() > suffix.len() && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        })
}

#[cfg(test)]
mod tests {
    use super::host_matches;

    #[test]
    fn wildcards_need_a_label_before_the_suffix() {
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("*", "anything"));
        assert!(host_matches("Shop.Example.com", "shop.example.com"));
    }
}
