//! The compiled world: one immutable `Snapshot` of listeners, route tables and
//! clusters, published atomically. A request loads it once and keeps its `Arc`.

mod compile;
mod reload;

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::SystemTime};

use arc_swap::ArcSwap;

pub use compile::{compile, Compiled};
pub use reload::{ReloadOutcome, Reloader};

use crate::{config::Diagnostic, route::RouteTable, upstream::Cluster};

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenerProtocol {
    /// Plaintext HTTP/1.1 and h2c on the same port.
    Http,
}

/// A listener the snapshot wants open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerSpec {
    /// Port as written in the Gateway (routes match on it).
    pub port: u16,
    /// Address to bind.
    pub bind: IpAddr,
    /// Protocol.
    pub protocol: ListenerProtocol,
}

/// One consistent, immutable configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every publish.
    pub version: u64,
    /// Listeners to keep open.
    pub listeners: Vec<ListenerSpec>,
    /// Route table of each listener port.
    pub route_tables: HashMap<u16, RouteTable>,
    /// Every cluster referenced by a route.
    pub clusters: Vec<Arc<Cluster>>,
    /// Problems found while compiling (warnings and reference errors).
    pub diagnostics: Vec<Diagnostic>,
    /// When it was compiled.
    pub created: Option<SystemTime>,
}

impl Snapshot {
    /// The route table of a listener port.
    pub fn route_table(&self, port: u16) -> Option<&RouteTable> {
        self.route_tables.get(&port)
    }
}

/// The live configuration. Cloning the handle is cheap; every clone sees every publish.
#[derive(Debug, Clone, Default)]
pub struct SnapshotHandle(Arc<ArcSwap<Snapshot>>);

impl SnapshotHandle {
    /// One consistent view: call once per request and keep the `Arc`.
    pub fn current(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Only `snapshot::reload` publishes.
    pub(crate) fn publish(&self, next: Arc<Snapshot>) {
        self.0.store(next);
    }
}
