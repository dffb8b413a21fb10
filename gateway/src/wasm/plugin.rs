//! A configured plugin: its module, configuration and a small pool of VMs (one per
//! worker thread, like Envoy), and where it sits in the filter chain.

use std::{
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;
use wasmtime::InstancePre;

use super::{host::Host, runtime::Runtime, vm::Vm};

/// What a plugin's VMs see of their configuration (Istio's mapping, ABI §19).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginInfo {
    /// `namespace.name` (`plugin_name`).
    pub name: String,
    /// `pluginName` (`plugin_root_id`).
    pub root_id: String,
    /// Always empty under Istio: every plugin shares the VM id "".
    pub vm_id: String,
    /// `node.id`.
    pub node_id: String,
    /// `pluginConfig` as JSON text (PLUGIN_CONFIGURATION).
    pub configuration: Vec<u8>,
    /// WASI environment (`vmConfig.env` and the resource version).
    pub env: Vec<(String, String)>,
    /// sha256 of the module.
    pub sha256: String,
}

/// Istio's filter phases, in chain order (§8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Before JWT authentication.
    Authn,
    /// After authentication, before AuthorizationPolicy.
    Authz,
    /// After authorization (STATS, then unspecified).
    Stats,
    /// Unspecified: last.
    Unspecified,
}

/// Restarting a crashed VM at most this often per slot.
const RESTART_EVERY: Duration = Duration::from_secs(1);

struct Slot {
    vm: Mutex<(Option<Arc<Vm>>, Option<Instant>)>,
}

/// A running plugin.
pub struct Plugin {
    pub(super) info: Arc<PluginInfo>,
    pre: InstancePre<Host>,
    runtime: Arc<Runtime>,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.info.name).field("vms", &self.slots.len()).finish()
    }
}

impl Plugin {
    /// Starts `vms` VMs of the module; any failure to start (trap, `on_configure`
    /// false) rejects the plugin with the reason.
    pub(super) fn start(
        runtime: &Arc<Runtime>,
        info: PluginInfo,
        pre: InstancePre<Host>,
        vms: usize,
    ) -> Result<Arc<Self>, String> {
        let info = Arc::new(info);
        let mut slots = Vec::with_capacity(vms);
        for _ in 0..vms.max(1) {
            let vm = Vm::start(&pre, info.clone(), runtime.clone()).inspect_err(|_| {
                runtime.metrics.failure(&info.name, "start");
            })?;
            slots.push(Slot { vm: Mutex::new((Some(vm), None)) });
        }
        Ok(Arc::new(Self { info, pre, runtime: runtime.clone(), slots, next: AtomicUsize::new(0) }))
    }

    /// The identity under which a reload reuses this plugin's VMs.
    pub(super) fn key(info: &PluginInfo) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        info.hash(&mut h);
        h.finish()
    }

    /// A live VM for a new stream, round robin; a dead one is replaced (at most once a
    /// second per slot). `None` when none can run: the fail strategy applies.
    pub(super) fn pick(&self) -> Option<Arc<Vm>> {
        let n = self.slots.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let slot = &self.slots[(first + i) % n];
            let mut guard = slot.vm.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(vm) = guard.0.as_ref().filter(|vm| vm.is_alive()) {
                return Some(vm.clone());
            }
            if guard.1.is_some_and(|at| at.elapsed() < RESTART_EVERY) {
                continue;
            }
            guard.1 = Some(Instant::now());
            match Vm::start(&self.pre, self.info.clone(), self.runtime.clone()) {
                Ok(vm) => {
                    tracing::info!(plugin = %self.info.name, "replaced a failed Wasm VM");
                    guard.0 = Some(vm.clone());
                    return Some(vm);
                }
                Err(e) => {
                    self.runtime.metrics.failure(&self.info.name, "start");
                    tracing::error!(plugin = %self.info.name, error = %e, "cannot restart the Wasm VM");
                    guard.0 = None;
                }
            }
        }
        None
    }

    /// `namespace.name`.
    pub fn name(&self) -> &str {
        &self.info.name
    }
}

/// One WasmPlugin in the chain: the plugin (or, when its module could not be loaded,
/// nothing: a FAIL_CLOSE placeholder that denies) and where it applies.
#[derive(Debug)]
pub struct Filter {
    /// `namespace/name` of the WasmPlugin, for logs.
    pub id: String,
    /// The running plugin; `None` for a FAIL_CLOSE placeholder.
    pub plugin: Option<Arc<Plugin>>,
    /// Chain position.
    pub phase: Phase,
    /// Higher runs first within a phase; `None` sorts after every explicit priority.
    pub priority: Option<i64>,
    /// FAIL_OPEN: skip the plugin when its VM fails.
    pub fail_open: bool,
    /// `match[]`; empty = all traffic.
    pub selectors: Vec<Selector>,
}

/// One `match[]` entry: a traffic direction and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Applies to what the proxy sends (CLIENT: a gateway, a sidecar's outbound).
    pub client: bool,
    /// Applies to what the proxy receives for its workload (SERVER: a sidecar's inbound).
    pub server: bool,
    /// Ports; empty = every port.
    pub ports: Vec<u16>,
}

/// Which traffic a request is, for `match[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Inbound to this proxy's workload (SERVER) rather than sent by it (CLIENT).
    pub server: bool,
    /// The destination port.
    pub port: u16,
}

impl Filter {
    /// Whether it applies to this traffic.
    pub fn applies(&self, t: Traffic) -> bool {
        self.selectors.is_empty()
            || self.selectors.iter().any(|s| {
                (if t.server { s.server } else { s.client }) && (s.ports.is_empty() || s.ports.contains(&t.port))
            })
    }
}

/// The WasmPlugins of a snapshot, in Istio's chain order.
#[derive(Debug, Default)]
pub struct Chain {
    /// All filters, sorted by phase, then priority (descending), then creation order.
    pub filters: Vec<Arc<Filter>>,
}

impl Chain {
    /// Builds the chain in Istio's order.
    pub fn new(mut filters: Vec<Arc<Filter>>) -> Self {
        // Stable sort: ties keep creation (load) order.
        filters.sort_by_key(|f| (f.phase, std::cmp::Reverse(f.priority.unwrap_or(i64::MIN))));
        Self { filters }
    }

    /// The filters of one phase that apply to `traffic`.
    pub fn phase(&self, phase: Phase, traffic: Traffic) -> impl Iterator<Item = &Arc<Filter>> {
        self.filters.iter().filter(move |f| f.phase == phase && f.applies(traffic))
    }

    /// True when no plugin is configured.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}
