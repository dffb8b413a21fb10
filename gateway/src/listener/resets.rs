//! The HTTP/2 rapid-reset defence (CVE-2023-44487), as Envoy has it: a stream the
//! client resets within a second of opening it is "premature"; once a connection has
//! opened 500 streams and more than half of them were premature, it is closed. A
//! client doing real work never comes close; an attacker loses its connection.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{sync::Notify, time::Instant};

/// Streams a connection must have opened before the ratio is judged (Envoy's
/// `overload.premature_reset_total_stream_count`).
const MIN_STREAMS: u64 = 500;
/// A reset this soon after the stream opened is premature
/// (`overload.premature_reset_min_stream_lifetime_seconds`).
const MIN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Per-connection counters and the signal that closes it.
#[derive(Debug, Default)]
pub(super) struct ResetGuard {
    streams: AtomicU64,
    premature: AtomicU64,
    /// Fires once the connection should be closed.
    pub(super) abuse: Notify,
}

impl ResetGuard {
    /// Counts a new stream; the returned ticket must be [`Ticket::finish`]ed when the
    /// response is ready, else dropping it counts a reset.
    pub(super) fn open(&self) -> Ticket<'_> {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Ticket { guard: self, opened: Instant::now(), finished: false }
    }
}

/// One stream in progress.
#[derive(Debug)]
pub(super) struct Ticket<'a> {
    guard: &'a ResetGuard,
    opened: Instant,
    finished: bool,
}

impl Ticket<'_> {
    /// The stream produced its response: not a reset.
    pub(super) fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.finished || self.opened.elapsed() >= MIN_LIFETIME {
            return;
        }
        let g = self.guard;
        let premature = g.premature.fetch_add(1, Ordering::Relaxed) + 1;
        let streams = g.streams.load(Ordering::Relaxed);
        if streams >= MIN_STREAMS && premature * 2 > streams {
            g.abuse.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_of_500_streams_reset_early_is_abuse() {
        let g = ResetGuard::default();
        for _ in 0..499 {
            drop(g.open()); // reset at once
        }
        assert_eq!(g.premature.load(Ordering::Relaxed), 499);
        // Below 500 streams nothing fires; the 500th premature reset does.
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        drop(g.open());
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let waited = tokio::time::timeout(std::time::Duration::from_millis(10), g.abuse.notified()).await;
            fired.store(waited.is_ok(), Ordering::Relaxed);
        });
        assert!(fired.load(Ordering::Relaxed));

        let healthy = ResetGuard::default();
        for _ in 0..1000 {
            healthy.open().finish();
        }
        for _ in 0..400 {
            drop(healthy.open());
        }
        assert!(healthy.premature.load(Ordering::Relaxed) * 2 < healthy.streams.load(Ordering::Relaxed));
    }
}
