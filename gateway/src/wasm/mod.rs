//! Proxy-wasm filters in wasmtime, driven by WasmPlugin resources.
//!
//! `runtime` owns the engine and what plugins share; `plugin` a configured plugin
//! and its VMs; `vm` one instance and its callbacks; `abi` + `wasi` the host
//! functions, over `host` (the store data), `headers`, `properties`, `guest`
//! (bounds-checked memory) and `pairs`; `call` outbound HTTP calls; `stream` drives
//! one request through the chain for the pipeline.

mod abi;
mod cache;
mod call;
mod guest;
mod headers;
mod host;
mod metrics;
mod pairs;
mod plugin;
mod properties;
mod runtime;
mod shared;
mod status;
mod stream;
mod vm;
mod wasi;

use std::{path::Path, sync::Arc};

pub use call::{ClusterLookup, Dispatcher};
pub use host::{LocalResponse, StreamInfo};
pub use metrics::PluginMetrics;
pub use plugin::{Chain, Filter, Phase, Plugin, PluginInfo, Selector, Traffic};
pub use runtime::Runtime;
pub use stream::{Filtered, WasmStream};

use crate::config::istio::{EnvValueSource, FailStrategy, PluginPhase, PluginType, WasmPlugin, WorkloadMode};

/// Why a WasmPlugin cannot run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A field is invalid.
    #[error("{field}: {message}")]
    Field {
        /// The field, as written.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The module cannot be fetched (remote URL while offline, missing file).
    #[error("url: {0}")]
    Fetch(String),
    /// The module is not a working proxy-wasm filter.
    #[error("module: {0}")]
    Module(String),
}

impl LoadError {
    /// Fetch failures leave a placeholder that applies the fail strategy; a broken
    /// module or field is a rejection (the last good version keeps serving).
    pub fn is_fetch(&self) -> bool {
        matches!(self, Self::Fetch(_))
    }

    /// The WasmPlugin field to blame, and what is wrong with it.
    pub fn field_and_message(&self) -> (&'static str, String) {
        match self {
            Self::Field { field, message } => (field, message.clone()),
            Self::Fetch(m) => ("spec.url", m.clone()),
            Self::Module(m) => ("spec.url", format!("module: {m}")),
        }
    }
}

/// Where the plugin sits and how it fails, without loading the module.
pub fn placement(spec: &WasmPlugin) -> Result<(Phase, bool, Vec<Selector>), LoadError> {
    let field = |field, message: String| LoadError::Field { field, message };
    let phase = match spec.phase.unwrap_or(PluginPhase::UnspecifiedPhase) {
        PluginPhase::UnspecifiedPhase => Phase::Unspecified,
        PluginPhase::Authn => Phase::Authn,
        PluginPhase::Authz => Phase::Authz,
        PluginPhase::Stats => Phase::Stats,
    };
    // FAIL_RELOAD fails the stream like FAIL_CLOSE; the broken VM is replaced either way.
    let fail_open = spec.fail_strategy == Some(FailStrategy::FailOpen);
    if spec.plugin_type == Some(PluginType::Network) {
        return Err(field("spec.type", "NETWORK plugins are not supported; use HTTP".into()));
    }
    let mut selectors = Vec::new();
    for m in &spec.matches {
        // A gateway is a client; a sidecar is the client of what its workload calls and
        // the server of what its workload receives.
        let (client, server) = match m.mode.unwrap_or(WorkloadMode::Undefined) {
            WorkloadMode::Undefined | WorkloadMode::ClientAndServer => (true, true),
            WorkloadMode::Client => (true, false),
            WorkloadMode::Server => (false, true),
        };
        let ports = m
            .ports
            .iter()
            .map(|p| {
                u16::try_from(p.number).map_err(|_| field("spec.match", format!("port {} out of range", p.number)))
            })
            .collect::<Result<_, _>>()?;
        selectors.push(Selector { client, server, ports });
    }
    Ok((phase, fail_open, selectors))
}

/// Loads the module a WasmPlugin names and starts its VMs (or reuses the running
/// plugin when nothing about it changed).
pub fn load(
    runtime: &Arc<Runtime>,
    spec: &WasmPlugin,
    namespace: &str,
    name: &str,
    config_dir: &Path,
) -> Result<Arc<Plugin>, LoadError> {
    // A remote module cannot be fetched offline, but one compiled earlier for the
    // same sha256 is the same module.
    let (bytes, sha) = match fetch(&spec.url, config_dir) {
        Ok(bytes) => {
            let sha = crate::hex::sha256(&bytes);
            if let Some(want) = spec.sha256.as_ref().filter(|w| !w.eq_ignore_ascii_case(&sha)) {
                let message = format!("module has sha256 {sha}, not {want}");
                return Err(LoadError::Field { field: "spec.sha256", message });
            }
            (Some(bytes), sha)
        }
        Err(e) => match spec.sha256.as_ref().filter(|_| local_path(&spec.url, config_dir).is_none()) {
            Some(want) if runtime.cached_module(&want.to_ascii_lowercase()).is_some() => {
                (None, want.to_ascii_lowercase())
            }
            _ => return Err(e),
        },
    };
    let configuration = match &spec.plugin_config {
        None => Vec::new(),
        Some(v) if v.as_object().is_some_and(serde_json::Map::is_empty) => Vec::new(),
        Some(v) => serde_json::to_vec(v)
            .map_err(|e| LoadError::Field { field: "spec.pluginConfig", message: e.to_string() })?,
    };
    let mut env = Vec::new();
    for e in spec.vm_config.iter().flat_map(|v| &v.env) {
        match e.value_from.unwrap_or(EnvValueSource::Inline) {
            EnvValueSource::Inline => env.push((e.name.clone(), e.value.clone().unwrap_or_default())),
            EnvValueSource::Host => {
                if e.value.is_some() {
                    return Err(LoadError::Field {
                        field: "spec.vmConfig.env",
                        message: format!("{}: value is only allowed with valueFrom INLINE", e.name),
                    });
                }
                if let Ok(v) = std::env::var(&e.name) {
                    env.push((e.name.clone(), v));
                }
            }
        }
    }
    let info = PluginInfo {
        name: format!("{namespace}.{name}"),
        root_id: spec.plugin_name.clone().unwrap_or_default(),
        vm_id: String::new(),
        node_id: format!("router~wicket~{namespace}"),
        configuration,
        env,
        sha256: sha.clone(),
    };
    let key = Plugin::key(&info);
    if let Some(running) = runtime.running(key) {
        return Ok(running);
    }
    let module = match &bytes {
        Some(bytes) => runtime.module(bytes, &sha).map_err(LoadError::Module)?,
        None => runtime.cached_module(&sha).ok_or_else(|| LoadError::Fetch(format!("{sha} left the cache")))?,
    };
    let pre = runtime.link(&module).map_err(LoadError::Module)?;
    let vms = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    let plugin = Plugin::start(runtime, info, pre, vms).map_err(LoadError::Module)?;
    runtime.remember(key, &plugin);
    Ok(plugin)
}

/// The file a `url` names: `file://` paths, and plain paths (relative ones from the
/// config directory). `None` for remote schemes (`oci://`, `http(s)://`, and bare
/// `registry/repo:tag` references, which Istio reads as OCI).
pub fn local_path(url: &str, config_dir: &Path) -> Option<std::path::PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        return Some(Path::new(p).to_path_buf());
    }
    let first = url.split('/').next().unwrap_or("");
    let host_like = first != "." && first != ".." && (first.contains('.') || first.contains(':'));
    let remote = url.contains("://") || (url.contains('/') && host_like);
    (!url.is_empty() && !remote && !url.contains(':')).then(|| config_dir.join(url))
}

/// Reads a local module; remote schemes cannot be fetched by an offline gateway.
fn fetch(url: &str, config_dir: &Path) -> Result<Vec<u8>, LoadError> {
    if url.is_empty() {
        return Err(LoadError::Fetch("url is required".into()));
    }
    let Some(path) = local_path(url, config_dir) else {
        return Err(LoadError::Fetch(format!(
            "cannot fetch {url} in offline mode (and no module with its sha256 is cached); download it and use a file:// url"
        )));
    };
    crate::config::files::read_bounded(&path, runtime::MAX_MODULE as u64)
        .map_err(|e| LoadError::Fetch(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_local_files_or_remote_references() {
        let dir = Path::new("/etc/wicket");
        assert_eq!(local_path("file:///m/f.wasm", dir), Some("/m/f.wasm".into()));
        assert_eq!(local_path("plugins/f.wasm", dir), Some("/etc/wicket/plugins/f.wasm".into()));
        assert_eq!(local_path("f.wasm", dir), Some("/etc/wicket/f.wasm".into()));
        assert_eq!(local_path("../build/f.wasm", dir), Some("/etc/wicket/../build/f.wasm".into()));
        for remote in ["oci://ghcr.io/a/b:1", "https://x/f.wasm", "ghcr.io/a/b:1", "localhost:5000/a", ""] {
            assert_eq!(local_path(remote, dir), None, "{remote}");
        }
    }
}
