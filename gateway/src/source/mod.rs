//! Where resources come from. Today a watched directory of YAML files; each source
//! yields the same `Loaded` set of resources for `snapshot` to compile.

mod dir;
mod secrets;
mod watch;

pub(crate) use dir::{load_dir, LoadError};
pub(crate) use secrets::SecretDir;
pub(crate) use watch::watch_dir;
