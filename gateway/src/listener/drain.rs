//! Draining: on shutdown every connection is told to finish (hyper sends HTTP/2 GOAWAY
//! and closes HTTP/1 connections after their current response), and the gateway waits
//! until none is left or the drain time is up.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{watch, Notify};

/// The drain signal and the count of open connections.
#[derive(Debug)]
pub(crate) struct Drain {
    signal: watch::Sender<bool>,
    open: AtomicUsize,
    closed: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Self { signal: watch::channel(false).0, open: AtomicUsize::new(0), closed: Notify::new() }
    }
}

impl Drain {
    /// A receiver that fires when draining starts.
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }

    /// Counts a connection as open until the returned guard drops.
    pub(crate) fn track(self: &Arc<Self>) -> Tracked {
        self.open.fetch_add(1, Ordering::AcqRel);
        Tracked(self.clone())
    }

    /// Open connections.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Starts draining and waits until every connection closed or `limit` passed.
    /// Returns the connections still open at the end.
    pub(crate) async fn drain(&self, limit: Duration) -> usize {
        self.signal.send_replace(true);
        let wait = async {
            while self.open() > 0 {
                let closed = self.closed.notified();
                if self.open() == 0 {
                    break;
                }
                closed.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.open()
    }
}

/// An open connection, counted until dropped.
#[derive(Debug)]
pub(crate) struct Tracked(Arc<Drain>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}
