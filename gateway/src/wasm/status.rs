//! `proxy_status_t` (ABI §6.2) and the error type hostcalls use: a status for the
//! guest, or a trap (the guest allocator trapped) that unwinds the callback.

pub(super) type Status = i32;

pub(super) const OK: Status = 0;
pub(super) const NOT_FOUND: Status = 1;
pub(super) const BAD_ARGUMENT: Status = 2;
pub(super) const INVALID_MEMORY_ACCESS: Status = 6;
pub(super) const EMPTY: Status = 7;
pub(super) const CAS_MISMATCH: Status = 8;
pub(super) const INTERNAL_FAILURE: Status = 10;
pub(super) const BROKEN_CONNECTION: Status = 11;
pub(super) const UNIMPLEMENTED: Status = 12;

/// Why a hostcall did not return OK.
#[derive(Debug)]
pub(super) enum Fail {
    /// Answer the guest with this status.
    Status(Status),
    /// The guest trapped inside a nested call (its allocator): end the callback.
    Trap(wasmtime::Error),
}

impl From<Status> for Fail {
    fn from(s: Status) -> Self {
        Fail::Status(s)
    }
}

/// The hostcall's i32 result, or the trap to propagate.
pub(super) fn finish(r: Result<(), Fail>) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(OK),
        Err(Fail::Status(s)) => Ok(s),
        Err(Fail::Trap(e)) => Err(e),
    }
}
