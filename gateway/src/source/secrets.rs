//! Secrets, from files or from the Kubernetes API, are written under a private
//! directory laid out as the credentials directory (`<namespace>/<name>/<key>`), the
//! way the kubelet projects a Secret volume. The certificate store then reads, checks
//! and rotates them as it does any certificate file: a Secret with a bad key pair
//! keeps the previous certificate serving.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::config::{Diagnostic, Resource, Spec};

/// A private directory of projected Secrets, removed when dropped.
#[derive(Debug)]
pub(crate) struct SecretDir {
    root: PathBuf,
}

impl SecretDir {
    /// Creates a new directory under the system's temporary directory (`TMPDIR`),
    /// readable by this user only.
    pub(crate) fn create() -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("wicket-secrets-{}-{n}", std::process::id()));
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        create_private_dir(&root)?;
        Ok(Self { root })
    }

    /// The root, laid out as `<namespace>/<name>/<key>`.
    pub(crate) fn path(&self) -> &Path {
        &self.root
    }

    /// Makes the directory hold exactly the Secrets among `resources`: changed values are
    /// replaced atomically (a reader sees the old file or the new one), files of keys and
    /// Secrets that are gone are removed. Returns an error for each Secret that could
    /// not be written.
    pub(crate) fn sync(&self, resources: &[Resource]) -> Vec<Diagnostic> {
        let mut failed = Vec::new();
        let mut wanted: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for r in resources {
            let Spec::Secret(secret) = &r.spec else { continue };
            let (ns, name) = (r.id.namespace.as_str(), r.id.name.as_str());
            if let Err(e) = self.write(ns, name, &secret.data) {
                let message = format!("cannot be written under {}: {e}", self.root.display());
                failed.push(Diagnostic::error(&r.origin, &r.id, "", message));
            }
            wanted.entry(ns).or_default().insert(name);
        }
        if let Err(e) = self.remove_others(&wanted) {
            tracing::error!(dir = %self.root.display(), error = %e, "cannot remove Secrets that are gone");
        }
        failed
    }

    fn write(&self, namespace: &str, name: &str, data: &BTreeMap<String, Vec<u8>>) -> io::Result<()> {
        for part in [namespace, name].into_iter().chain(data.keys().map(String::as_str)) {
            if !is_plain_name(part) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{part:?} is not a valid name")));
            }
        }
        let dir = self.root.join(namespace).join(name);
        create_private_dir(&dir)?;
        for (key, value) in data {
            let file = dir.join(key);
            if fs::read(&file).is_ok_and(|old| old == *value) {
                continue;
            }
            let tmp = dir.join(format!(".{key}.tmp"));
            write_private(&tmp, value)?;
            fs::rename(&tmp, &file)?;
        }
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let key = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !data.contains_key(key) {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    fn remove_others(&self, wanted: &BTreeMap<&str, BTreeSet<&str>>) -> io::Result<()> {
        for ns in fs::read_dir(&self.root)? {
            let ns = ns?.path();
            let ns_name = ns.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let Some(names) = wanted.get(ns_name.as_str()) else {
                fs::remove_dir_all(&ns)?;
                continue;
            };
            for secret in fs::read_dir(&ns)? {
                let secret = secret?.path();
                let name = secret.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if !names.contains(name) {
                    fs::remove_dir_all(&secret)?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A namespace, Secret name or key as Kubernetes allows them: no path separators, not
/// `.` or `..`, not hidden (our temporary files are).
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn write_private(file: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(file)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::load_text;

    fn secret(name: &str, key: &str, value: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: gw}}\nstringData: {{{key}: {value}}}\n"
        )
    }

    #[test]
    fn secrets_are_projected_replaced_and_removed() {
        let dir = SecretDir::create().unwrap();
        let both = format!("{}---\n{}", secret("a", "tls.crt", "one"), secret("b", "tls.key", "two"));
        let loaded = load_text(&both, Path::new("s.yaml"), "default");
        assert!(dir.sync(&loaded.resources).is_empty());
        assert_eq!(fs::read_to_string(dir.path().join("gw/a/tls.crt")).unwrap(), "one");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join("gw/b/tls.key")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        let loaded = load_text(&secret("a", "cert", "three"), Path::new("s.yaml"), "default");
        assert!(dir.sync(&loaded.resources).is_empty());
        assert_eq!(fs::read_to_string(dir.path().join("gw/a/cert")).unwrap(), "three");
        assert!(!dir.path().join("gw/a/tls.crt").exists(), "a key that is gone is removed");
        assert!(!dir.path().join("gw/b").exists(), "a Secret that is gone is removed");

        let hostile = load_text(&secret("c", "'../../x'", "evil"), Path::new("s.yaml"), "default");
        let failed = dir.sync(&hostile.resources);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].to_string().contains("Secret/gw/c"), "{}", failed[0]);
        assert!(!dir.path().join("x").exists());
        let root = dir.path().to_path_buf();
        drop(dir);
        assert!(!root.exists());
    }
}
