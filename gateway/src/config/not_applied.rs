//! The fields Wicket parses and does not apply, in one place. A field of type
//! `NotApplied<T>` is checked like any other (so what Istio rejects is rejected) and
//! then dropped; `FIELDS` names each one with its paths, and loading reports every
//! such field a document sets, so nothing is accepted and silently ignored. Every
//! other field of the config types is read somewhere (the compiler's dead-code
//! analysis sees to that), and `tests::every_not_applied_field_is_listed` keeps the
//! list and the types in step.

use std::{fmt, marker::PhantomData};

use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

use super::Kind;

/// A field that is validated and then dropped (see the module doc).
pub(crate) struct NotApplied<T>(PhantomData<T>);

impl<T> Default for NotApplied<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T> Clone for NotApplied<T> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<T> fmt::Debug for NotApplied<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NotApplied")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NotApplied<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer)?;
        Ok(Self::default())
    }
}

/// What leaving a field out changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Istio would behave differently: setting it is a warning.
    Ignored,
    /// Nothing Wicket does depends on it (a name for Envoy's own stats or config);
    /// listed, not reported.
    None,
}

/// One field parsed and not applied.
pub(crate) struct Field {
    /// The Rust field, `Struct.field`, whose type is `NotApplied`.
    #[allow(dead_code)] // read by the coverage test
    pub(crate) rust: &'static str,
    /// Where documents set it: kind and path (`[]` any element, `**.` any depth).
    pub(crate) paths: &'static [(Kind, &'static str)],
    pub(crate) effect: Effect,
    /// Why it is not applied, for the warning.
    pub(crate) why: &'static str,
}

const fn ignored(rust: &'static str, paths: &'static [(Kind, &'static str)], why: &'static str) -> Field {
    Field { rust, paths, effect: Effect::Ignored, why }
}

const fn no_effect(rust: &'static str, paths: &'static [(Kind, &'static str)], why: &'static str) -> Field {
    Field { rust, paths, effect: Effect::None, why }
}

use Kind::{DestinationRule as Dr, Gateway as Gw, ServiceEntry as Se, Telemetry as Tm, VirtualService as Vs};

/// Every field parsed and not applied.
pub(crate) const FIELDS: &[Field] = &[
    ignored(
        "LoadBalancerSettings.locality_lb_setting",
        &[(Dr, "spec.**.loadBalancer.localityLbSetting")],
        "locality load balancing is not implemented; endpoints are chosen regardless of locality",
    ),
    ignored(
        "LoadBalancerSettings.warmup_duration_secs",
        &[(Dr, "spec.**.loadBalancer.warmupDurationSecs")],
        "slow start is not implemented; new endpoints get their full share at once",
    ),
    ignored(
        "LoadBalancerSettings.warmup",
        &[(Dr, "spec.**.loadBalancer.warmup")],
        "slow start is not implemented; new endpoints get their full share at once",
    ),
    ignored(
        "ConsistentHashLb.ring_hash",
        &[(Dr, "spec.**.consistentHash.ringHash")],
        "the hash ring's size is Wicket's own",
    ),
    ignored("ConsistentHashLb.maglev", &[(Dr, "spec.**.consistentHash.maglev")], "Maglev hashing is not implemented"),
    ignored(
        "ConsistentHashLb.minimum_ring_size",
        &[(Dr, "spec.**.consistentHash.minimumRingSize")],
        "the hash ring's size is Wicket's own",
    ),
    ignored(
        "HttpCookie.attributes",
        &[(Dr, "spec.**.consistentHash.httpCookie.attributes")],
        "generated session cookies carry no extra attributes",
    ),
    ignored(
        "TcpSettings.max_connection_duration",
        &[(Dr, "spec.**.connectionPool.tcp.maxConnectionDuration")],
        "upstream connections are not closed by age",
    ),
    ignored("TcpKeepalive.probes", &[(Dr, "spec.**.tcpKeepalive.probes")], "the kernel's probe count applies"),
    ignored(
        "HttpSettings.h2_upgrade_policy",
        &[(Dr, "spec.**.connectionPool.http.h2UpgradePolicy")],
        "HTTP/1.1 upstreams are not upgraded to HTTP/2",
    ),
    ignored(
        "HttpSettings.use_client_protocol",
        &[(Dr, "spec.**.connectionPool.http.useClientProtocol")],
        "the upstream protocol follows the service port",
    ),
    ignored(
        "HttpSettings.max_concurrent_streams",
        &[(Dr, "spec.**.connectionPool.http.maxConcurrentStreams")],
        "HTTP/2 upstream connections take the server's stream limit",
    ),
    ignored("TrafficPolicy.tunnel", &[(Dr, "spec.**.tunnel")], "tunneling (HTTP CONNECT) is not implemented"),
    ignored(
        "TrafficPolicy.proxy_protocol",
        &[(Dr, "spec.**.proxyProtocol")],
        "no PROXY protocol header is sent upstream",
    ),
    ignored("TrafficPolicy.retry_budget", &[(Dr, "spec.**.retryBudget")], "retries are not budgeted"),
    ignored(
        "Server.default_endpoint",
        &[(Gw, "spec.servers[].defaultEndpoint")],
        "a gateway forwards by its routes only",
    ),
    no_effect("Server.name", &[(Gw, "spec.servers[].name")], "a name for Envoy's route configuration"),
    no_effect("ServerPort.name", &[(Gw, "spec.servers[].port.name")], "a label"),
    ignored(
        "ServerPort.target_port",
        &[(Gw, "spec.servers[].port.targetPort")],
        "the port is bound as written (see --port-map)",
    ),
    no_effect(
        "ServiceEntry.location",
        &[(Se, "spec.location")],
        "mutual TLS follows the endpoints' tlsMode label and the DestinationRule",
    ),
    ignored(
        "ServiceEntry.subject_alt_names",
        &[(Se, "spec.subjectAltNames")],
        "ISTIO_MUTUAL checks the destination's SPIFFE identity in the trust domain",
    ),
    ignored(
        "WorkloadEntry.network",
        &[(Se, "spec.endpoints[].network"), (Kind::WorkloadEntry, "spec.network")],
        "multi-network routing is not implemented",
    ),
    ignored(
        "WorkloadEntry.locality",
        &[(Se, "spec.endpoints[].locality"), (Kind::WorkloadEntry, "spec.locality")],
        "locality load balancing is not implemented",
    ),
    ignored(
        "TracingSpec.custom_tags",
        &[(Tm, "spec.tracing[].customTags")],
        "spans carry Istio's standard attributes only",
    ),
    ignored(
        "TracingSpec.match_",
        &[(Tm, "spec.tracing[].match")],
        "tracing settings apply to all traffic of the workload",
    ),
    ignored(
        "TracingSpec.use_request_id_for_trace_sampling",
        &[(Tm, "spec.tracing[].useRequestIdForTraceSampling")],
        "sampling is random",
    ),
    ignored("MetricsSpec.providers", &[(Tm, "spec.metrics[].providers")], "metrics go to the Prometheus endpoint"),
    ignored(
        "MetricsSpec.reporting_interval",
        &[(Tm, "spec.metrics[].reportingInterval")],
        "metrics are read when scraped",
    ),
    ignored(
        "MetricsOverride.tag_overrides",
        &[(Tm, "spec.metrics[].overrides[].tagOverrides")],
        "metric labels are Istio's standard set",
    ),
    ignored(
        "AccessLoggingSpec.providers",
        &[(Tm, "spec.accessLogging[].providers")],
        "the access log goes to the gateway's log output",
    ),
    ignored(
        "AccessLoggingSpec.match_",
        &[(Tm, "spec.accessLogging[].match")],
        "access logging applies to all traffic of the workload",
    ),
    ignored(
        "AccessLoggingSpec.filter",
        &[(Tm, "spec.accessLogging[].filter")],
        "every request is logged (CEL filters are not evaluated)",
    ),
    no_effect("HttpMatchRequest.stat_prefix", &[(Vs, "spec.http[].match[].statPrefix")], "a name for Envoy's stats"),
    ignored(
        "TlsMatchAttributes.destination_subnets",
        &[(Vs, "spec.tls[].match[].destinationSubnets")],
        "TLS routes match on SNI and port",
    ),
    ignored(
        "TlsMatchAttributes.source_labels",
        &[(Vs, "spec.tls[].match[].sourceLabels")],
        "Istio applies it on sidecars only; a gateway's TLS routes ignore it",
    ),
    ignored(
        "TlsMatchAttributes.source_namespace",
        &[(Vs, "spec.tls[].match[].sourceNamespace")],
        "Istio applies it on sidecars only; a gateway's TLS routes ignore it",
    ),
    ignored(
        "L4MatchAttributes.destination_subnets",
        &[(Vs, "spec.tcp[].match[].destinationSubnets")],
        "TCP routes match on port",
    ),
    ignored(
        "L4MatchAttributes.source_labels",
        &[(Vs, "spec.tcp[].match[].sourceLabels")],
        "Istio applies it on sidecars only; a gateway's TCP routes ignore it",
    ),
    ignored(
        "L4MatchAttributes.source_namespace",
        &[(Vs, "spec.tcp[].match[].sourceNamespace")],
        "Istio applies it on sidecars only; a gateway's TCP routes ignore it",
    ),
];

/// The not-applied fields a document of `kind` sets, as `(path, why)`, the path with
/// its indices (`spec.subsets[0].trafficPolicy.tunnel`). The document is walked as a
/// YAML value only when its text names one of them (most never do).
pub(crate) fn report(kind: Kind, doc: &str) -> Vec<(String, &'static str)> {
    let paths = || {
        FIELDS
            .iter()
            .filter(|f| f.effect == Effect::Ignored)
            .flat_map(|f| f.paths.iter().filter(|(k, _)| *k == kind).map(move |(_, p)| (*p, f.why)))
    };
    let named = |path: &str| path.rsplit('.').next().is_some_and(|key| doc.contains(key));
    if !paths().any(|(p, _)| named(p)) {
        return Vec::new();
    }
    let Ok(doc) = serde_yaml::from_str::<Value>(doc) else { return Vec::new() };
    let mut out = Vec::new();
    for (path, why) in paths() {
        let segments: Vec<&str> = path.split('.').collect();
        find(&doc, &segments, String::new(), &mut |at| out.push((at, why)));
    }
    out.sort();
    out.dedup();
    out
}

/// Calls `found` with the path of every value `segments` reaches under `value`.
fn find(value: &Value, segments: &[&str], at: String, found: &mut dyn FnMut(String)) {
    let Some((first, rest)) = segments.split_first() else {
        if !value.is_null() {
            found(at);
        }
        return;
    };
    let join = |key: &str| if at.is_empty() { key.to_string() } else { format!("{at}.{key}") };
    if *first == "**" {
        // Here, or anywhere below.
        find(value, rest, at.clone(), found);
        match value {
            Value::Mapping(map) => {
                for (k, v) in map {
                    if let Some(k) = k.as_str() {
                        find(v, segments, join(k), found);
                    }
                }
            }
            Value::Sequence(items) => {
                for (i, v) in items.iter().enumerate() {
                    find(v, segments, format!("{at}[{i}]"), found);
                }
            }
            _ => {}
        }
        return;
    }
    let (key, each) = match first.strip_suffix("[]") {
        Some(key) => (key, true),
        None => (*first, false),
    };
    let Some(child) = value.as_mapping().and_then(|m| m.get(key)) else { return };
    match (each, child) {
        (true, Value::Sequence(items)) => {
            for (i, v) in items.iter().enumerate() {
                find(v, rest, format!("{}[{i}]", join(key)), found);
            }
        }
        (true, _) => {}
        (false, v) => find(v, rest, join(key), found),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `Struct.field` of every field whose type is `NotApplied<..>` in the config types.
    fn not_applied_fields() -> BTreeSet<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/istio");
        let mut out = BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let mut current = None;
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("pub(crate) struct ").or(line.strip_prefix("pub struct ")) {
                    current = rest.split([' ', '<', '(', '{']).next().map(str::to_string);
                }
                let line = line.trim();
                if let (Some(strukt), Some((name, ty))) = (&current, line.split_once(": ")) {
                    let name = name.trim_start_matches("pub(crate) ").trim_start_matches("pub ");
                    if ty.contains("NotApplied<") && !name.contains(' ') {
                        out.insert(format!("{strukt}.{name}"));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_not_applied_field_is_listed() {
        let in_types = not_applied_fields();
        let listed: BTreeSet<String> = FIELDS.iter().map(|f| f.rust.to_string()).collect();
        assert_eq!(FIELDS.len(), listed.len(), "a field is listed twice");
        let unlisted: Vec<_> = in_types.difference(&listed).collect();
        let stale: Vec<_> = listed.difference(&in_types).collect();
        assert!(unlisted.is_empty(), "NotApplied fields missing from FIELDS: {unlisted:?}");
        assert!(stale.is_empty(), "FIELDS entries that are not NotApplied fields: {stale:?}");
        for field in FIELDS {
            let name = field.rust.split_once('.').unwrap().1.trim_end_matches('_');
            let camel: String = name
                .split('_')
                .enumerate()
                .map(|(i, w)| if i == 0 { w.to_string() } else { w[..1].to_uppercase() + &w[1..] })
                .collect();
            for (_, path) in field.paths {
                assert!(path.ends_with(&format!(".{camel}")), "{}: {path} does not end in {camel}", field.rust);
            }
        }
    }

    #[test]
    fn set_fields_are_found_wherever_they_are_written() {
        let doc = "spec:
  host: a.test
  trafficPolicy:
    tunnel: {protocol: CONNECT, targetHost: x, targetPort: 1}
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {localityLbSetting: {enabled: true}}
  subsets:
  - name: v1
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 10s}}
";
        let paths: Vec<String> = report(Kind::DestinationRule, doc).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "spec.subsets[0].trafficPolicy.loadBalancer.warmup",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting",
                "spec.trafficPolicy.tunnel",
            ]
        );
        assert!(report(Kind::VirtualService, doc).is_empty());
    }
}
