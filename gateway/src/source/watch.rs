//! Watching the config directory: file events become a debounced "reload" signal.

use std::{path::Path, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Events closer together than this are coalesced into one reload.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches `dir` recursively. Each burst of file changes yields one `()` on the
/// returned channel. The watcher stops when the returned handle is dropped.
pub(crate) fn watch_dir(dir: &Path) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let (raw_tx, raw_rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = raw_tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    let rx = debounce(raw_rx, DEBOUNCE);
    Ok((watcher, rx))
}

/// Bursts of signals on `raw` closer together than `window` become one `()`.
pub(super) fn debounce(mut raw: mpsc::UnboundedReceiver<()>, window: Duration) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw.recv().await.is_some() {
            tokio::time::sleep(window).await;
            while raw.try_recv().is_ok() {}
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    rx
}
