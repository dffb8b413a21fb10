//! The part of WASI preview 1 that proxy-wasm modules import (ABI §14): output to
//! the plugin log, the plugin's own environment (never the gateway's), clocks and
//! randomness. No files, no sockets: everything else answers NOSYS.

use wasmtime::{Caller, Linker};

use super::{
    abi::{log, now_nanos},
    guest::{read, write, write_u32, write_u64},
    host::Host,
    status::Fail,
};

type C<'a> = Caller<'a, Host>;

const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
/// Answer of every WASI function Wicket does not offer.
pub(super) const NOSYS: i32 = 52;

/// Both names old and new modules import the same functions under.
pub(super) const MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

fn errno(r: Result<(), Fail>) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(SUCCESS),
        Err(Fail::Status(_)) => Ok(FAULT),
        Err(Fail::Trap(e)) => Err(e),
    }
}

/// Adds the WASI functions to `linker` under both module names.
pub(super) fn define(linker: &mut Linker<Host>) -> wasmtime::Result<Vec<(&'static str, &'static str)>> {
    let mut names = Vec::new();
    for m in MODULES {
        linker.func_wrap(m, "fd_write", |mut c: C<'_>, fd: u32, iovs: u32, n: u32, written: u32| {
            if fd != 1 && fd != 2 {
                return Ok(BADF);
            }
            errno((|| {
                let raw = read(&mut c, iovs, n.checked_mul(8).ok_or(INVAL)?)?;
                let mut out = Vec::new();
                for iov in raw.chunks_exact(8) {
                    let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                    let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                    out.extend_from_slice(&read(&mut c, ptr, len)?);
                }
                let total = out.len() as u32;
                let host = c.data_mut();
                host.partial_line.extend_from_slice(&out);
                while let Some(end) = host.partial_line.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = host.partial_line.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    log(host, if fd == 1 { 2 } else { 4 }, &text)?;
                }
                if host.partial_line.len() > 64 * 1024 {
                    let text = String::from_utf8_lossy(&std::mem::take(&mut host.partial_line)).into_owned();
                    log(host, if fd == 1 { 2 } else { 4 }, &text)?;
                }
                write_u32(&mut c, written, total)
            })())
        })?;
        linker.func_wrap(m, "environ_sizes_get", |mut c: C<'_>, count: u32, size: u32| {
            errno((|| {
                let env = &c.data().plugin.env;
                let n = env.len() as u32;
                let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
                write_u32(&mut c, count, n)?;
                write_u32(&mut c, size, bytes as u32)
            })())
        })?;
        linker.func_wrap(m, "environ_get", |mut c: C<'_>, ptrs: u32, buf: u32| {
            errno((|| {
                let env = c.data().plugin.env.clone();
                let mut at = buf;
                for (i, (k, v)) in env.iter().enumerate() {
                    let entry = format!("{k}={v}\0");
                    write(&mut c, at, entry.as_bytes())?;
                    write_u32(&mut c, ptrs + 4 * i as u32, at)?;
                    at += entry.len() as u32;
                }
                Ok(())
            })())
        })?;
        linker.func_wrap(m, "args_sizes_get", |mut c: C<'_>, count: u32, size: u32| {
            errno(write_u32(&mut c, count, 0).and_then(|()| write_u32(&mut c, size, 0)))
        })?;
        linker.func_wrap(m, "args_get", |_c: C<'_>, _: u32, _: u32| Ok(SUCCESS))?;
        linker.func_wrap(m, "clock_time_get", |mut c: C<'_>, id: u32, _precision: u64, slot: u32| {
            let t = match id {
                0 => now_nanos(),
                1 => monotonic_nanos(),
                _ => return Ok(INVAL),
            };
            errno(write_u64(&mut c, slot, t))
        })?;
        linker.func_wrap(m, "clock_res_get", |mut c: C<'_>, id: u32, slot: u32| {
            if id > 1 {
                return Ok(INVAL);
            }
            errno(write_u64(&mut c, slot, 1_000))
        })?;
        linker.func_wrap(m, "random_get", |mut c: C<'_>, ptr: u32, len: u32| {
            if len > 1024 * 1024 {
                return Ok(INVAL);
            }
            let mut bytes = vec![0u8; len as usize];
            rand::fill(&mut bytes[..]);
            errno(write(&mut c, ptr, &bytes))
        })?;
        linker.func_wrap(m, "proc_exit", |c: C<'_>, code: u32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!("plugin {} called proc_exit({code})", c.data().plugin.name)))
        })?;
        linker.func_wrap(m, "sched_yield", |_c: C<'_>| Ok(SUCCESS))?;
        // No preopened directories: libc's start-up scan stops at the first BADF.
        linker.func_wrap(m, "fd_prestat_get", |_c: C<'_>, _: u32, _: u32| Ok(BADF))?;
        for name in ["fd_write", "environ_sizes_get", "environ_get", "args_sizes_get", "args_get", "clock_time_get"]
            .into_iter()
            .chain(["clock_res_get", "random_get", "proc_exit", "sched_yield", "fd_prestat_get"])
        {
            names.push((m, name));
        }
    }
    Ok(names)
}

fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(tokio::time::Instant::now).elapsed().as_nanos() as u64
}
