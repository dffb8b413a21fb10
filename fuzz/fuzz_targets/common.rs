//! A compiled snapshot shared by the targets that need one.

use std::{path::Path, sync::OnceLock};

use wicket::{config::Bootstrap, snapshot::Snapshot};

/// Compiles `yaml` once per process (compiling per input would measure the compiler).
pub fn snapshot(cell: &'static OnceLock<Snapshot>, yaml: &str) -> &'static Snapshot {
    cell.get_or_init(|| {
        let bootstrap = Bootstrap::default();
        let loaded = wicket::config::load_text(yaml, Path::new("fuzz.yaml"), "default");
        assert!(loaded.diagnostics.iter().all(|d| !d.is_error()), "{:?}", loaded.diagnostics);
        let caches = Box::leak(Box::default());
        wicket::snapshot::compile(&loaded.resources, &bootstrap, caches).snapshot
    })
}
