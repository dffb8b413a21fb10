//! Shared data: a key-value store shared by every VM of the proxy, with
//! compare-and-swap so that concurrent updates never lose one another.

use crate::host;

/// Someone else wrote the key since it was read: read again and retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// The value of `key` and its version (for [`set`]).
pub fn get(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    host::shared_get(key)
}

/// Writes `key`; with `cas`, only if the version still matches.
pub fn set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
    host::shared_set(key, value, cas)
}

/// Serializes the creation of keys: the ABI has no "create if absent", and two
/// VMs creating the same key at once would lose one write. It exists before any
/// request (every plugin creates it when configured, and VMs start one by one).
pub(crate) const CREATE_LOCK: &str = "wicket-sdk:create-lock";

/// Makes sure the creation lock exists (called when a plugin is configured).
pub(crate) fn init() {
    if get(CREATE_LOCK).1.is_none() {
        let _ = set(CREATE_LOCK, b"0", None);
    }
}

/// Applies `f` to the value of `key` atomically (compare-and-swap, retried on
/// conflicts; a missing key is created under a lock) and returns what it wrote.
pub fn update(key: &str, mut f: impl FnMut(Option<&[u8]>) -> Vec<u8>) -> Vec<u8> {
    loop {
        let (value, cas) = get(key);
        if cas.is_some() {
            let next = f(value.as_deref());
            if set(key, &next, cas).is_ok() {
                return next;
            }
            continue;
        }
        if let Some(next) = create(key, &mut f) {
            return next;
        }
    }
}

/// Creates `key` under the creation lock; `None` when another VM created it first.
fn create(key: &str, f: &mut impl FnMut(Option<&[u8]>) -> Vec<u8>) -> Option<Vec<u8>> {
    // A VM that died holding the lock must not stall the others for ever.
    for _ in 0..10_000 {
        let (held, cas) = get(CREATE_LOCK);
        if held.as_deref() != Some(b"1") && cas.is_some() && set(CREATE_LOCK, b"1", cas).is_ok() {
            break;
        }
    }
    let created = match get(key) {
        (_, Some(_)) => None,
        (_, None) => {
            let next = f(None);
            let _ = set(key, &next, None);
            Some(next)
        }
    };
    let _ = set(CREATE_LOCK, b"0", None);
    created
}
