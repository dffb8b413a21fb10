//! Wasm modules for tests: the conformance filter in `tests/filters/` built from
//! source for `wasm32-wasip1` with the public `proxy-wasm` SDK (once per test run),
//! hostile modules written in WAT, and WasmPlugin YAML.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Installs the `wasm32-wasip1` target when rustup lacks it.
fn ensure_target() {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if let Ok(out) = installed {
        if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "wasm32-wasip1") {
            return;
        }
        let status = Command::new("rustup").args(["target", "add", "wasm32-wasip1"]).status().unwrap();
        assert!(status.success(), "rustup target add wasm32-wasip1 failed");
    }
}

/// The conformance filter's `.wasm` (built on first use).
pub fn conformance() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build(&root().join("tests/filters/Cargo.toml")).join("conformance.wasm"))
}

/// A first-party plugin's `.wasm` from `plugins/` (`header_policy`, `rate_limit`,
/// `ip_access`, `custom_auth`), the workspace built on first use.
pub fn first_party(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| build(&root().join("plugins/Cargo.toml")));
    dir.join(format!("{name}.wasm"))
}

/// Builds a workspace of filters for wasm32-wasip1; returns its output directory.
pub fn build(manifest: &Path) -> PathBuf {
    ensure_target();
    let target_dir = root().join("target").join("wasm-filters");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "building {} failed:\n{}", manifest.display(), String::from_utf8_lossy(&out.stderr));
    target_dir.join("wasm32-wasip1/release")
}

/// Compiles WAT text to a module file in `dir`.
pub fn wat(dir: &Path, name: &str, text: &str) -> PathBuf {
    let bytes = wat::parse_str(text).unwrap();
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A WasmPlugin `name` in `default` loading `module`, with extra spec lines
/// (`phase: AUTHZ`, `pluginConfig: {...}`, ...), each indented by the caller's choice.
pub fn plugin(name: &str, module: &Path, extra: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  url: file://{}\n{extra}",
        module.display()
    )
}

/// The minimal hostile-module skeleton: ABI marker, memory, allocator; `body` adds
/// more exports and functions, and its `(import ...)` lines are hoisted first.
pub fn hostile(body: &str) -> String {
    let (imports, rest): (Vec<&str>, Vec<&str>) = body.lines().partition(|l| l.trim_start().starts_with("(import"));
    let (imports, body) = (imports.join("\n"), rest.join("\n"));
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  {body}
)"#
    )
}
