//! The on-disk cache of compiled modules, so a restart loads machine code instead of
//! compiling again. Files are named by the module's sha256 and written atomically
//! into a directory only the gateway's user can write.

use std::{io::Write, path::Path};

use wasmtime::{Engine, Module};

/// Loads a module compiled earlier by this engine build. wasmtime checks the
/// artifact's header (version, target, settings) and refuses a mismatch.
#[allow(unsafe_code)]
pub(super) fn load(engine: &Engine, path: &Path) -> Result<Module, String> {
    check_private(path.parent().unwrap_or(path))?;
    // SAFETY: the file is machine code wasmtime itself serialized into a directory
    // owned by this user and closed to others (checked above), under a name derived
    // from the sha256 of the module it was compiled from; wasmtime validates the
    // header and engine compatibility before using it.
    unsafe { Module::deserialize_file(engine, path) }.map_err(|e| format!("{e:#}"))
}

/// Writes `module` as `<sha>.cwasm`.
pub(super) fn save(dir: &Path, sha: &str, module: &Module) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let bytes = module.serialize().map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{sha}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(format!("{sha}.cwasm")))
}

/// Refuses a cache directory other users could write into.
fn check_private(dir: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(format!("{} is writable by other users", dir.display()));
        }
    }
    Ok(())
}
