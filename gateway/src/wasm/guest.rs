//! Guest memory, bounds-checked: every (pointer, length) from a module is checked
//! against the current memory size before a byte is read or written, and data is
//! handed to the guest through its own allocator (ABI §8).

use wasmtime::Caller;

use super::{
    host::Host,
    status::{Fail, INTERNAL_FAILURE, INVALID_MEMORY_ACCESS},
};

/// Guest memory a single copy can take from the guest (a hostile length cannot make
/// the host allocate more than the guest's memory holds anyway; this bounds it lower).
const MAX_INPUT: usize = 64 * 1024 * 1024;

fn range(ptr: u32, len: u32, size: usize) -> Result<std::ops::Range<usize>, Fail> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(INVALID_MEMORY_ACCESS)?;
    if end > size || len as usize > MAX_INPUT {
        return Err(INVALID_MEMORY_ACCESS.into());
    }
    Ok(start..end)
}

/// Copies `len` bytes at `ptr` out of the guest.
pub(super) fn read(c: &mut Caller<'_, Host>, ptr: u32, len: u32) -> Result<Vec<u8>, Fail> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mem = c.data().memory.ok_or(INTERNAL_FAILURE)?;
    let data = mem.data(&*c);
    Ok(data[range(ptr, len, data.len())?].to_vec())
}

/// Writes bytes at `ptr`.
pub(super) fn write(c: &mut Caller<'_, Host>, ptr: u32, bytes: &[u8]) -> Result<(), Fail> {
    let mem = c.data().memory.ok_or(INTERNAL_FAILURE)?;
    let data = mem.data_mut(&mut *c);
    let r = range(ptr, bytes.len() as u32, data.len())?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian `u32` (a return slot).
pub(super) fn write_u32(c: &mut Caller<'_, Host>, ptr: u32, v: u32) -> Result<(), Fail> {
    write(c, ptr, &v.to_le_bytes())
}

/// Writes a little-endian `u64` (a return slot).
pub(super) fn write_u64(c: &mut Caller<'_, Host>, ptr: u32, v: u64) -> Result<(), Fail> {
    write(c, ptr, &v.to_le_bytes())
}

/// Hands `bytes` to the guest: allocated with the guest's allocator at exactly their
/// length, then (pointer, length) written to the two return slots. Empty data is
/// (0, 0) without an allocation, as cpp-host does.
pub(super) fn give(c: &mut Caller<'_, Host>, bytes: &[u8], ptr_slot: u32, len_slot: u32) -> Result<(), Fail> {
    // Check the slots first: a bad slot must not leak a guest allocation.
    let size = c.data().memory.ok_or(INTERNAL_FAILURE)?.data_size(&*c);
    range(ptr_slot, 4, size)?;
    range(len_slot, 4, size)?;
    if bytes.is_empty() {
        write_u32(c, ptr_slot, 0)?;
        return write_u32(c, len_slot, 0);
    }
    let len = u32::try_from(bytes.len()).map_err(|_| INTERNAL_FAILURE)?;
    let alloc = c.data().alloc.clone().ok_or(INTERNAL_FAILURE)?;
    let addr = alloc.call(&mut *c, len).map_err(Fail::Trap)?;
    if addr == 0 {
        return Err(INVALID_MEMORY_ACCESS.into());
    }
    // The allocator may have grown memory; `write` looks at the current size.
    write(c, addr, bytes)?;
    write_u32(c, ptr_slot, addr)?;
    write_u32(c, len_slot, len)
}
