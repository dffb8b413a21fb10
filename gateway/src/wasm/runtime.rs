//! The process-wide Wasm machinery: one wasmtime `Engine` with epoch interruption
//! (a 10 ms ticker thread), the host linker, compiled modules cached in memory and
//! on disk by sha256, and what all plugins share (shared data, queues, metrics).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
};

use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module, Val, ValType};

use super::{
    abi,
    call::Dispatcher,
    host::Host,
    metrics::PluginMetrics,
    plugin::Plugin,
    shared::{Queues, SharedData},
    status::UNIMPLEMENTED,
    wasi,
};

/// Epoch length: every callback's CPU deadline is counted in these.
const EPOCH: Duration = Duration::from_millis(10);
/// A stream callback may run 4–5 epochs (40–50 ms) before it traps.
pub(super) const CALLBACK_EPOCHS: u64 = 5;
/// Start-up (`_initialize`, `on_vm_start`, `on_configure`) may take about a second.
pub(super) const START_EPOCHS: u64 = 100;
/// Linear memory per VM.
pub(super) const MEMORY_LIMIT: usize = 256 * 1024 * 1024;
/// Module size accepted (Istio's agent default).
pub(super) const MAX_MODULE: usize = 256 * 1024 * 1024;

/// The one engine of the process, and the thread that advances its epoch.
pub(super) fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(512 * 1024);
        // Filters are single-threaded, 32-bit, single-memory: every other proposal is
        // attack surface.
        config.wasm_memory64(false);
        config.wasm_multi_memory(false);
        let engine = Engine::new(&config).unwrap_or_else(|e| panic!("wasmtime rejects its configuration: {e}"));
        let ticker = engine.clone();
        // A dedicated OS thread, not a task: it must tick while every worker is stuck
        // in a looping guest.
        #[allow(clippy::disallowed_methods)]
        let spawned = std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || loop {
            std::thread::sleep(EPOCH);
            ticker.increment_epoch();
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the Wasm epoch thread: callbacks have no CPU deadline");
        }
        engine
    })
}

/// Everything plugins share, one per gateway; kept across reloads.
pub struct Runtime {
    linker: Linker<Host>,
    defined: HashSet<(&'static str, &'static str)>,
    modules: Mutex<HashMap<String, Module>>,
    cache_dir: Option<PathBuf>,
    pub(super) shared: SharedData,
    pub(super) queues: Queues,
    pub(super) metrics: Arc<PluginMetrics>,
    dispatcher: OnceLock<Dispatcher>,
    /// Running plugins by identity, so a reload that keeps a plugin keeps its VMs.
    plugins: Mutex<HashMap<u64, Weak<Plugin>>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cache_dir", &self.cache_dir).finish_non_exhaustive()
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new(Arc::default(), None)
    }
}

impl Runtime {
    /// A runtime exporting plugin metrics through `metrics`, caching compiled modules
    /// in `cache_dir`.
    pub fn new(metrics: Arc<PluginMetrics>, cache_dir: Option<PathBuf>) -> Self {
        let mut linker = Linker::new(engine());
        let mut defined = HashSet::new();
        match abi::define(&mut linker).and_then(|env| Ok((env, wasi::define(&mut linker)?))) {
            Ok((env, wasi)) => {
                defined.extend(env.into_iter().map(|n| ("env", n)));
                defined.extend(wasi);
            }
            Err(e) => tracing::error!(error = %e, "cannot define the proxy-wasm host functions"),
        }
        Self {
            linker,
            defined,
            modules: Mutex::default(),
            cache_dir,
            shared: SharedData::default(),
            queues: Queues::default(),
            metrics,
            dispatcher: OnceLock::new(),
            plugins: Mutex::default(),
        }
    }

    /// Connects HTTP calls to the gateway's upstreams and live clusters.
    pub fn set_dispatcher(&self, d: Dispatcher) {
        let _ = self.dispatcher.set(d);
    }

    pub(super) fn dispatcher(&self) -> Option<Dispatcher> {
        self.dispatcher.get().cloned()
    }

    /// The compiled module for `bytes` (whose sha256 is `sha`): from memory, from the
    /// disk cache, or compiled now (and written to the cache).
    pub(super) fn module(&self, bytes: &[u8], sha: &str) -> Result<Module, String> {
        if let Some(m) = self.modules.lock().ok().and_then(|m| m.get(sha).cloned()) {
            return Ok(m);
        }
        let module = match self.cached(sha) {
            Some(m) => m,
            None => {
                let m = Module::new(engine(), bytes).map_err(|e| format!("invalid Wasm module: {e:#}"))?;
                check_abi(&m)?;
                self.store(sha, &m);
                m
            }
        };
        check_abi(&module)?;
        if let Ok(mut all) = self.modules.lock() {
            all.insert(sha.to_string(), module.clone());
        }
        Ok(module)
    }

    /// A module already compiled for this sha256 (in memory or on disk), without
    /// its bytes: how a remote module the gateway cannot fetch may still load.
    pub(super) fn cached_module(&self, sha: &str) -> Option<Module> {
        let module = self.modules.lock().ok().and_then(|m| m.get(sha).cloned()).or_else(|| self.cached(sha))?;
        check_abi(&module).ok()?;
        Some(module)
    }

    fn cached(&self, sha: &str) -> Option<Module> {
        let path = self.cache_dir.as_ref()?.join(format!("{sha}.cwasm"));
        if !path.exists() {
            return None;
        }
        match super::cache::load(engine(), &path) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "ignoring a stale compiled-module cache entry");
                None
            }
        }
    }

    fn store(&self, sha: &str, module: &Module) {
        let Some(dir) = &self.cache_dir else { return };
        if let Err(e) = super::cache::save(dir, sha, module) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot cache a compiled Wasm module");
        }
    }

    /// Links `module`: the host functions, plus stubs for imports nobody defines
    /// (gRPC callouts, exotic SDKs) answering "unavailable", so the module fails
    /// only if it insists on one.
    pub(super) fn link(&self, module: &Module) -> Result<InstancePre<Host>, String> {
        let mut linker = self.linker.clone();
        for import in module.imports() {
            let (m, n) = (import.module(), import.name());
            match import.ty() {
                ExternType::Func(ft) => {
                    if m != "env" && !wasi::MODULES.contains(&m) {
                        return Err(format!("imports {m}.{n}, which no proxy-wasm host provides"));
                    }
                    if self.defined.contains(&(m, n)) {
                        continue;
                    }
                    let answer = match abi::NOT_OFFERED.iter().find(|(name, _)| *name == n) {
                        Some((_, status)) if m == "env" => *status,
                        _ if m == "env" => UNIMPLEMENTED,
                        _ => wasi::NOSYS,
                    };
                    let returns_i32 = ft.results().len() == 1 && matches!(ft.results().next(), Some(ValType::I32));
                    let (m2, n2) = (m.to_string(), n.to_string());
                    linker
                        .func_new(m, n, ft.clone(), move |_, _, results| {
                            if returns_i32 {
                                results[0] = Val::I32(answer);
                                Ok(())
                            } else {
                                Err(wasmtime::Error::msg(format!("called {m2}.{n2}, which Wicket does not provide")))
                            }
                        })
                        .map_err(|e| format!("cannot link {m}.{n}: {e}"))?;
                }
                other => {
                    return Err(format!(
                        "imports {m}.{n} ({other:?}); proxy-wasm modules must define and export their own memory"
                    ))
                }
            }
        }
        linker.instantiate_pre(module).map_err(|e| format!("cannot link the module: {e:#}"))
    }

    /// A running plugin with the same identity, if one is still alive.
    pub(super) fn running(&self, key: u64) -> Option<Arc<Plugin>> {
        self.plugins.lock().ok()?.get(&key)?.upgrade()
    }

    pub(super) fn remember(&self, key: u64, plugin: &Arc<Plugin>) {
        if let Ok(mut all) = self.plugins.lock() {
            all.retain(|_, p| p.strong_count() > 0);
            all.insert(key, Arc::downgrade(plugin));
        }
    }
}

/// Envoy refuses modules without an ABI version marker; so do we, with the reason.
fn check_abi(module: &Module) -> Result<(), String> {
    let exports: HashSet<&str> = module.exports().map(|e| e.name()).collect();
    if exports.contains("proxy_abi_version_0_1_0") && !exports.iter().any(|e| e.starts_with("proxy_abi_version_0_2")) {
        return Err("module speaks proxy-wasm ABI 0.1.0; Wicket supports 0.2.0 and 0.2.1".into());
    }
    if !exports.contains("proxy_abi_version_0_2_1") && !exports.contains("proxy_abi_version_0_2_0") {
        return Err("not a proxy-wasm module: no proxy_abi_version_0_2_1 or _0_2_0 export".into());
    }
    if !exports.contains("memory") {
        return Err("module exports no memory".into());
    }
    if !exports.contains("proxy_on_memory_allocate") && !exports.contains("malloc") {
        return Err("module exports no allocator (proxy_on_memory_allocate or malloc)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &str = r#"(module (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "malloc") (param i32) (result i32) (i32.const 0)))"#;

    #[test]
    fn a_restart_loads_the_compiled_module_from_the_disk_cache() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = wat::parse_str(MODULE).unwrap();
        let sha = crate::hex::sha256(&wasm);
        Runtime::new(Arc::default(), Some(dir.path().into())).module(&wasm, &sha).unwrap();
        assert!(dir.path().join(format!("{sha}.cwasm")).exists());
        // Not the module's bytes: only the cache can answer.
        let restarted = Runtime::new(Arc::default(), Some(dir.path().into()));
        assert!(restarted.module(b"not wasm", &sha).is_ok());
        assert!(Runtime::new(Arc::default(), None).module(b"not wasm", &sha).is_err());
    }

    #[test]
    fn modules_without_the_abi_marker_are_refused_with_the_reason() {
        let wasm = wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap();
        let err = Runtime::default().module(&wasm, "x").unwrap_err();
        assert!(err.contains("proxy_abi_version"), "{err}");
    }
}
