//! Where resources come from: a watched directory of YAML files, the Kubernetes API,
//! or both merged; each yields the same `Loaded` set of resources for `snapshot` to
//! compile.

mod dir;
mod kubernetes;
mod secrets;
mod watch;

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    path::PathBuf,
};

pub(crate) use dir::{load_dir, LoadError};
pub(crate) use kubernetes::Cluster;
pub use kubernetes::ConnectError;
pub(crate) use secrets::SecretDir;
pub(crate) use watch::watch_dir;

use tokio::sync::mpsc;

use crate::config::{load_inputs, Input, Loaded};

/// One change signal from several: closes when all of them have.
pub(crate) fn merge(receivers: Vec<mpsc::Receiver<()>>) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    for mut r in receivers {
        let tx = tx.clone();
        tokio::spawn(async move {
            while r.recv().await.is_some() {
                // A change already pending covers this one too.
                if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                    break;
                }
            }
        });
    }
    rx
}

/// The sources of one gateway.
pub(crate) struct Source {
    /// The config directory.
    pub dir: Option<PathBuf>,
    /// The Kubernetes API.
    pub cluster: Option<Cluster>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("dir", &self.dir).field("kubernetes", &self.cluster.is_some()).finish()
    }
}

impl Source {
    /// Everything the sources hold now: the cluster's objects first, then the files,
    /// which win on the same kind, namespace and name (Istio's `configSources` merge).
    pub(crate) fn load(&self, namespace: &str) -> Result<Loaded, LoadError> {
        let (files, file_digest) = match &self.dir {
            Some(dir) => dir::read_dir(dir)?,
            None => (Vec::new(), 0),
        };
        let (objects, object_digest) = self.cluster.as_ref().map(Cluster::inputs).unwrap_or_default();
        let inputs = objects
            .iter()
            .map(|(name, text)| Input::Object(name.clone(), text.as_str()))
            .chain(files.iter().map(|(file, text)| Input::File(file.clone(), text.as_str())));
        let mut loaded = load_inputs(inputs, namespace);
        let mut hasher = DefaultHasher::new();
        (file_digest, object_digest).hash(&mut hasher);
        loaded.digest = hasher.finish();
        Ok(loaded)
    }
}
