//! The file source: every `*.yaml`/`*.yml` file under a directory, read (bounded),
//! in path order, and loaded as one set of resources.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::config::{files::read_bounded, load_texts, Loaded};

/// The directory itself could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Walking the directory or reading a file failed.
    #[error("cannot read {path}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Largest config file read (a sanity bound, far above any real one).
const MAX_CONFIG_FILE: u64 = 64 * 1024 * 1024;

/// Reads every YAML file under `dir` (recursively, hidden entries skipped, sorted by
/// path). `namespace` is given to resources that do not name one.
pub(crate) fn load_dir(dir: &Path, namespace: &str) -> Result<Loaded, LoadError> {
    let (texts, digest) = read_dir(dir)?;
    let mut loaded = load_texts(texts.iter().map(|(file, text)| (file.clone(), text.as_str())), namespace);
    loaded.digest = digest;
    Ok(loaded)
}

/// Named texts (a file's path or an object's name, and its text).
pub(super) type Texts = Vec<(Arc<Path>, String)>;

/// The texts of every YAML file under `dir`, in path order, and a digest of their
/// paths and contents.
pub(super) fn read_dir(dir: &Path) -> Result<(Texts, u64), LoadError> {
    let mut files = Vec::new();
    collect_yaml_files(dir, &mut files)?;
    files.sort();
    let mut texts = Vec::with_capacity(files.len());
    let mut hasher = DefaultHasher::new();
    for file in files {
        let bytes =
            read_bounded(&file, MAX_CONFIG_FILE).map_err(|source| LoadError::Io { path: file.clone(), source })?;
        let text = String::from_utf8(bytes)
            .map_err(|e| LoadError::Io { path: file.clone(), source: io::Error::new(io::ErrorKind::InvalidData, e) })?;
        (&file, &text).hash(&mut hasher);
        texts.push((Arc::<Path>::from(file), text));
    }
    Ok((texts, hasher.finish()))
}

fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io_err = |source| LoadError::Io { path: dir.to_path_buf(), source };
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Spec;

    fn service_entry(host: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: x}}
spec: {{hosts: [{host}]}}
"
        )
    }

    #[test]
    fn a_directory_loads_as_one_set_in_path_order_without_hidden_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join("a.yaml"), service_entry("first.test")).unwrap();
        std::fs::write(dir.path().join("b/c.yml"), service_entry("second.test")).unwrap();
        std::fs::write(dir.path().join(".git/d.yaml"), service_entry("hidden.test")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not: yaml: at all").unwrap();
        let loaded = load_dir(dir.path(), "default").unwrap();
        // The later file (by path) replaces the earlier definition of the same resource.
        assert_eq!(loaded.resources.len(), 1);
        let Spec::ServiceEntry(se) = &loaded.resources[0].spec else { panic!("a ServiceEntry") };
        assert_eq!(se.hosts, ["second.test"]);
        let warning = loaded.diagnostics[0].to_string();
        assert!(warning.contains("a.yaml:1: ServiceEntry/default/x") && warning.contains("b/c.yml:1"), "{warning}");

        let digest = loaded.digest;
        assert_eq!(load_dir(dir.path(), "default").unwrap().digest, digest, "same files, same digest");
        std::fs::write(dir.path().join("a.yaml"), service_entry("changed.test")).unwrap();
        assert_ne!(load_dir(dir.path(), "default").unwrap().digest, digest);
    }

    #[test]
    fn an_unreadable_directory_is_an_error_naming_it() {
        let err = load_dir(Path::new("/nonexistent/wicket-config"), "default").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/wicket-config"), "{err}");
    }
}
