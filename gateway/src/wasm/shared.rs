//! Shared data and shared queues (ABI §11.2, §11.3): process-wide, keyed by VM id,
//! outside every store, each behind its own short lock. Istio leaves the VM id
//! empty, so every plugin shares one namespace, as in Envoy.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, Weak},
};

use super::vm::Vm;

/// Entries kept per process before the least recently written one is evicted (the
/// SDK accepts no "full" status, so a bound has to evict, not refuse).
const MAX_ENTRIES: usize = 100_000;
/// Bytes kept per process (keys and values).
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// Items a queue holds before the oldest is dropped.
const MAX_QUEUE: usize = 10_000;

#[derive(Debug, Default)]
struct Store {
    entries: HashMap<(String, Vec<u8>), (Vec<u8>, u32)>,
    bytes: usize,
    cas: u32,
}

/// The key-value store with compare-and-swap.
#[derive(Debug, Default)]
pub(super) struct SharedData(Mutex<Store>);

impl SharedData {
    /// The value and its CAS.
    pub(super) fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        let store = self.0.lock().ok()?;
        store.entries.get(&(vm_id.to_string(), key.to_vec())).cloned()
    }

    /// Sets unconditionally (`cas` 0) or only if the CAS still matches; false on mismatch.
    pub(super) fn set(&self, vm_id: &str, key: Vec<u8>, value: Vec<u8>, cas: u32) -> bool {
        let Ok(mut store) = self.0.lock() else { return false };
        let k = (vm_id.to_string(), key);
        let current = store.entries.get(&k).map(|(_, c)| *c);
        if cas != 0 && current != Some(cas) {
            return false;
        }
        store.cas = store.cas.wrapping_add(1).max(1);
        let next = store.cas;
        let added = k.1.len() + value.len();
        if let Some((old, _)) = store.entries.insert(k.clone(), (value, next)) {
            store.bytes -= old.len() + k.1.len();
        }
        store.bytes += added;
        while store.entries.len() > MAX_ENTRIES || store.bytes > MAX_BYTES {
            let Some(oldest) = store
                .entries
                .iter()
                .filter(|(key, _)| **key != k)
                .min_by_key(|(_, (_, c))| *c)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some((v, _)) = store.entries.remove(&oldest) {
                store.bytes -= v.len() + oldest.1.len();
            }
        }
        true
    }
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    /// The root context to wake: its VM and id.
    consumer: Option<(Weak<Vm>, u32)>,
}

#[derive(Debug, Default)]
struct QueueTable {
    by_name: HashMap<(Vec<u8>, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    next: u32,
}

/// Named queues; enqueueing wakes the registering root context with
/// `proxy_on_queue_ready`, asynchronously.
#[derive(Debug, Default)]
pub(super) struct Queues(Mutex<QueueTable>);

impl Queues {
    /// Creates or opens `(vm_id, name)` and makes `root` of `vm` its consumer.
    pub(super) fn register(&self, vm_id: &str, name: &[u8], vm: Weak<Vm>, root: u32) -> u32 {
        let Ok(mut t) = self.0.lock() else { return 0 };
        let key = (vm_id.as_bytes().to_vec(), name.to_vec());
        let id = match t.by_name.get(&key) {
            Some(id) => *id,
            None => {
                t.next += 1;
                let id = t.next;
                t.by_name.insert(key, id);
                id
            }
        };
        t.queues.entry(id).or_default().consumer = Some((vm, root));
        id
    }

    /// The id of an existing queue.
    pub(super) fn resolve(&self, vm_id: &[u8], name: &[u8]) -> Option<u32> {
        self.0.lock().ok()?.by_name.get(&(vm_id.to_vec(), name.to_vec())).copied()
    }

    /// Appends; false for an unknown queue.
    pub(super) fn enqueue(&self, id: u32, value: Vec<u8>) -> bool {
        let consumer = {
            let Ok(mut t) = self.0.lock() else { return false };
            let Some(q) = t.queues.get_mut(&id) else { return false };
            if q.items.len() >= MAX_QUEUE {
                q.items.pop_front();
            }
            q.items.push_back(value);
            q.consumer.clone()
        };
        if let (Some((vm, root)), Ok(rt)) = (consumer, tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                if let Some(vm) = vm.upgrade() {
                    vm.queue_ready(root, id);
                }
            });
        }
        true
    }

    /// `None` for an unknown queue, `Some(None)` when empty.
    pub(super) fn dequeue(&self, id: u32) -> Option<Option<Vec<u8>>> {
        let mut t = self.0.lock().ok()?;
        Some(t.queues.get_mut(&id)?.items.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap() {
        let d = SharedData::default();
        assert!(d.get("", b"k").is_none());
        assert!(d.set("", b"k".to_vec(), b"1".to_vec(), 0));
        let (v, cas) = d.get("", b"k").unwrap();
        assert_eq!(v, b"1");
        assert!(cas != 0);
        assert!(d.set("", b"k".to_vec(), b"2".to_vec(), cas));
        assert!(!d.set("", b"k".to_vec(), b"3".to_vec(), cas), "a stale CAS must fail");
        assert_eq!(d.get("", b"k").unwrap().0, b"2");
        assert!(d.get("other-vm", b"k").is_none());
    }

    #[test]
    fn queues_resolve_and_drain() {
        let q = Queues::default();
        assert!(q.resolve(b"", b"q").is_none());
        let id = q.register("", b"q", Weak::new(), 1);
        assert_eq!(q.resolve(b"", b"q"), Some(id));
        assert!(!q.enqueue(id + 1, b"x".to_vec()));
        assert!(q.enqueue(id, b"x".to_vec()));
        assert_eq!(q.dequeue(id), Some(Some(b"x".to_vec())));
        assert_eq!(q.dequeue(id), Some(None));
        assert_eq!(q.dequeue(id + 1), None);
    }
}
