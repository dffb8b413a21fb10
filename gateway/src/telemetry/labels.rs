//! The label values that describe the two ends of a request (Istio's `source_*` and
//! `destination_*`), resolved when the snapshot compiles and hashed once. A leaf:
//! upstream endpoints carry them, and the metrics and logs above read them.

use std::{
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash, Hasher},
    ops::Deref,
    sync::{Arc, OnceLock},
};

/// A group of label values hashed once, when it is made. Request metrics look their
/// label set up in four families on every request, and hashing thirteen strings each
/// time was a tenth of the request path's instructions. Equality stays by content, so
/// groups that two snapshots made alike are one series.
#[derive(Debug)]
pub struct Prehashed<T> {
    hash: u64,
    value: T,
}

impl<T: Hash> Prehashed<T> {
    /// Hashes `value` with a fixed key, so equal groups have equal hashes.
    pub fn new(value: T) -> Self {
        Self { hash: BuildHasherDefault::<DefaultHasher>::default().hash_one(&value), value }
    }
}

impl<T> Deref for Prehashed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Hash for Prehashed<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<T: PartialEq> PartialEq for Prehashed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.value == other.value
    }
}

impl<T: Eq> Eq for Prehashed<T> {}

/// Labels describing the gateway itself (Istio `source_*`): fixed at start-up.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct SourceLabels {
    /// `source_workload`.
    pub workload: Arc<str>,
    /// `source_workload_namespace`.
    pub namespace: Arc<str>,
    /// `source_principal`.
    pub principal: Arc<str>,
    /// `source_app`.
    pub app: Arc<str>,
    /// `source_version`.
    pub version: Arc<str>,
}

/// Labels describing where a request went (Istio `destination_*`), per endpoint.
#[derive(Debug, Hash, PartialEq, Eq)]
pub struct DestinationLabels {
    /// `destination_workload`.
    pub workload: Arc<str>,
    /// `destination_workload_namespace`.
    pub workload_namespace: Arc<str>,
    /// `destination_principal`.
    pub principal: Arc<str>,
    /// `destination_service` (FQDN).
    pub service: Arc<str>,
    /// `destination_service_name`.
    pub service_name: Arc<str>,
    /// `destination_service_namespace`.
    pub service_namespace: Arc<str>,
    /// `destination_app`.
    pub app: Arc<str>,
    /// `destination_version`.
    pub version: Arc<str>,
}

impl DestinationLabels {
    /// Labels for a request that reached no service (no route, gateway replies).
    pub fn unknown() -> Arc<Prehashed<Self>> {
        static UNKNOWN: OnceLock<Arc<Prehashed<DestinationLabels>>> = OnceLock::new();
        UNKNOWN
            .get_or_init(|| {
                let u: Arc<str> = "unknown".into();
                Arc::new(Prehashed::new(Self {
                    workload: u.clone(),
                    workload_namespace: u.clone(),
                    principal: u.clone(),
                    service: u.clone(),
                    service_name: u.clone(),
                    service_namespace: u.clone(),
                    app: u.clone(),
                    version: u,
                }))
            })
            .clone()
    }
}

impl SourceLabels {
    /// A peer known by its SPIFFE identity only (inbound at a sidecar): its principal
    /// and namespace, the rest unknown (Istio's metadata exchange is not spoken).
    pub fn peer(spiffe: Option<&str>) -> Arc<Prehashed<Self>> {
        let unknown: Arc<str> = "unknown".into();
        let namespace =
            spiffe.and_then(|s| s.split('/').skip_while(|p| *p != "ns").nth(1)).map_or(unknown.clone(), Into::into);
        Arc::new(Prehashed::new(Self {
            workload: unknown.clone(),
            namespace,
            principal: spiffe.map_or(unknown.clone(), Into::into),
            app: unknown.clone(),
            version: unknown,
        }))
    }
}
