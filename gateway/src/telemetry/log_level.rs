//! The process log (tracing to stderr) with a level that the admin endpoint can change
//! at run time (`POST /logging?level=debug`), as Envoy's admin `/logging` does.

use std::sync::OnceLock;

use tracing_subscriber::{filter::EnvFilter, layer::SubscriberExt, reload, util::SubscriberInitExt, Registry};

type Handle = reload::Handle<EnvFilter, Registry>;

static HANDLE: OnceLock<Handle> = OnceLock::new();

/// Installs the process-wide subscriber; `default` applies when `RUST_LOG` is unset.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (layer, handle) = reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
    if installed.is_ok() {
        let _ = HANDLE.set(handle);
    }
}

/// Replaces the filter (`info`, `debug`, `wicket=debug,hyper=info`, ...).
pub fn set(filter: &str) -> Result<(), String> {
    let handle = HANDLE.get().ok_or("the log level is not adjustable in this process")?;
    let parsed = EnvFilter::try_new(filter).map_err(|e| format!("invalid level {filter:?}: {e}"))?;
    handle.reload(parsed).map_err(|e| e.to_string())
}
