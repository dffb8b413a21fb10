//! The config loader and compiler on arbitrary YAML, as a gateway and as a sidecar:
//! errors are fine, panics and hangs are not.
#![no_main]

use std::{path::Path, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use wicket::{
    config::{Bootstrap, SidecarSettings},
    snapshot::Caches,
};

static CACHES: OnceLock<Caches> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let loaded = wicket::config::load_text(&text, Path::new("fuzz.yaml"), "default");
    // Local files named by the input (modules, certificates) stay out of reach.
    let bootstrap = Bootstrap {
        config_dir: Some("/nonexistent".into()),
        credentials_dir: "/nonexistent".into(),
        ..Default::default()
    };
    let caches = CACHES.get_or_init(Caches::default);
    let _ = wicket::snapshot::compile(&loaded.resources, &bootstrap, caches);
    let sidecar = Bootstrap { sidecar: Some(SidecarSettings::default()), ..bootstrap };
    let _ = wicket::snapshot::compile(&loaded.resources, &sidecar, caches);
});
