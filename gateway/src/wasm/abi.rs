//! The proxy-wasm hostcalls (module `env`, ABI v0.2.1 §6): every function the Rust,
//! C++, Go and AssemblyScript SDKs import. Each one copies its inputs out of guest
//! memory (bounds-checked), acts on the VM's `Host`, and answers with a status.
//! Side effects that would re-enter the filter chain are queued (§5.5).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::{HeaderName, HeaderValue, StatusCode};
use wasmtime::{Caller, Linker};

use super::{
    guest::{give, read, write_u32, write_u64},
    headers::{self, Edit, MapType},
    host::{Deferred, Host, LocalResponse, Stage},
    metrics::MetricKind,
    pairs, properties,
    status::{finish, Fail, Status, BAD_ARGUMENT, CAS_MISMATCH, EMPTY, INTERNAL_FAILURE, NOT_FOUND},
};

type C<'a> = Caller<'a, Host>;
type R = wasmtime::Result<i32>;

/// Upper bound of an HTTP call without a timeout (Envoy would wait forever).
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Adds every `env.proxy_*` function to `linker`; returns their names.
pub(super) fn define(linker: &mut Linker<Host>) -> wasmtime::Result<Vec<&'static str>> {
    let mut names = Vec::new();
    macro_rules! host {
        ($name:literal, $f:expr) => {{
            linker.func_wrap("env", $name, $f)?;
            names.push($name);
        }};
    }
    host!("proxy_log", |mut c: C<'_>, level: u32, ptr: u32, len: u32| -> R {
        finish((|| {
            let msg = read(&mut c, ptr, len)?;
            log(c.data_mut(), level, &String::from_utf8_lossy(&msg))
        })())
    });
    host!("proxy_get_log_level", |mut c: C<'_>, slot: u32| -> R {
        use tracing::level_filters::LevelFilter;
        let level = match LevelFilter::current() {
            LevelFilter::TRACE => 0,
            LevelFilter::DEBUG => 1,
            LevelFilter::INFO => 2,
            LevelFilter::WARN => 3,
            LevelFilter::ERROR => 4,
            _ => 5,
        };
        finish(write_u32(&mut c, slot, level))
    });
    host!("proxy_get_current_time_nanoseconds", |mut c: C<'_>, slot: u32| -> R {
        finish(write_u64(&mut c, slot, now_nanos()))
    });
    host!("proxy_set_tick_period_milliseconds", |mut c: C<'_>, ms: u32| -> R {
        c.data_mut().tick_ms = u64::from(ms);
        Ok(0)
    });
    host!("proxy_get_buffer_bytes", |mut c: C<'_>, kind: u32, start: u32, max: u32, ptr: u32, len: u32| -> R {
        finish((|| {
            let bytes = buffer(c.data_mut(), kind, |b| {
                let s = (start as usize).min(b.len());
                let e = s.saturating_add(max as usize).min(b.len());
                b[s..e].to_vec()
            })?;
            give(&mut c, &bytes, ptr, len)
        })())
    });
    host!("proxy_get_buffer_status", |mut c: C<'_>, kind: u32, len_slot: u32, flags_slot: u32| -> R {
        finish((|| {
            let n = buffer(c.data_mut(), kind, |b| b.len())?;
            write_u32(&mut c, len_slot, n as u32)?;
            write_u32(&mut c, flags_slot, 0)
        })())
    });
    host!("proxy_set_buffer_bytes", |mut c: C<'_>, kind: u32, start: u32, size: u32, ptr: u32, len: u32| -> R {
        finish((|| {
            let data = read(&mut c, ptr, len)?;
            set_buffer(c.data_mut(), kind, start as usize, size as usize, &data).map_err(Fail::from)
        })())
    });
    host!("proxy_get_header_map_pairs", |mut c: C<'_>, map: u32, ptr: u32, len: u32| -> R {
        finish((|| {
            let map = MapType::from_abi(map)?;
            let all = headers::pairs(c.data_mut(), map);
            let bytes = pairs::encode(all.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            give(&mut c, &bytes, ptr, len)
        })())
    });
    host!("proxy_get_header_map_size", |mut c: C<'_>, map: u32, slot: u32| -> R {
        finish((|| {
            let map = MapType::from_abi(map)?;
            let all = headers::pairs(c.data_mut(), map);
            let n = pairs::encode(all.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))).len();
            write_u32(&mut c, slot, n as u32)
        })())
    });
    host!("proxy_set_header_map_pairs", |mut c: C<'_>, map: u32, ptr: u32, len: u32| -> R {
        finish((|| {
            let map = MapType::from_abi(map)?;
            let raw = read(&mut c, ptr, len)?;
            let list = pairs::decode(&raw).ok_or(BAD_ARGUMENT)?;
            headers::set_all(c.data_mut(), map, &list).map_err(Fail::from)
        })())
    });
    host!("proxy_get_header_map_value", |mut c: C<'_>, map: u32, kp: u32, kl: u32, ptr: u32, len: u32| -> R {
        finish((|| {
            let map = MapType::from_abi(map)?;
            let key = read(&mut c, kp, kl)?.to_ascii_lowercase();
            let v = headers::value(c.data_mut(), map, &key).ok_or(NOT_FOUND)?;
            give(&mut c, &v, ptr, len)
        })())
    });
    for (name, how) in [("proxy_add_header_map_value", Edit::Add), ("proxy_replace_header_map_value", Edit::Replace)] {
        linker.func_wrap("env", name, move |mut c: C<'_>, map: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> R {
            finish((|| {
                let map = MapType::from_abi(map)?;
                let key = read(&mut c, kp, kl)?.to_ascii_lowercase();
                let val = read(&mut c, vp, vl)?;
                headers::edit(c.data_mut(), map, &key, &val, how).map_err(Fail::from)
            })())
        })?;
        names.push(name);
    }
    host!("proxy_remove_header_map_value", |mut c: C<'_>, map: u32, kp: u32, kl: u32| -> R {
        finish((|| {
            let map = MapType::from_abi(map)?;
            let key = read(&mut c, kp, kl)?.to_ascii_lowercase();
            headers::edit(c.data_mut(), map, &key, b"", Edit::Remove).map_err(Fail::from)
        })())
    });
    host!("proxy_get_property", |mut c: C<'_>, pp: u32, pl: u32, ptr: u32, len: u32| -> R {
        finish((|| {
            let path = read(&mut c, pp, pl)?;
            let v = properties::get(c.data_mut(), &path).ok_or(NOT_FOUND)?;
            give(&mut c, &v, ptr, len)
        })())
    });
    host!("proxy_set_property", |mut c: C<'_>, pp: u32, pl: u32, vp: u32, vl: u32| -> R {
        finish((|| {
            let path = read(&mut c, pp, pl)?;
            let value = read(&mut c, vp, vl)?;
            properties::set(c.data_mut(), path, value);
            Ok(())
        })())
    });
    host!("proxy_continue_stream", |mut c: C<'_>, kind: u32| -> R {
        Ok(defer(c.data_mut(), kind, Deferred::Continue))
    });
    host!("proxy_close_stream", |mut c: C<'_>, kind: u32| -> R { Ok(defer(c.data_mut(), kind, Deferred::Close)) });
    // proxy_continue_request/response: ABI 0.1.0 names, same meaning.
    host!("proxy_continue_request", |mut c: C<'_>| -> R { Ok(defer(c.data_mut(), 0, Deferred::Continue)) });
    host!("proxy_continue_response", |mut c: C<'_>| -> R { Ok(defer(c.data_mut(), 1, Deferred::Continue)) });
    host!("proxy_send_local_response", |mut c: C<'_>,
                                        code: u32,
                                        dp: u32,
                                        dl: u32,
                                        bp: u32,
                                        bl: u32,
                                        hp: u32,
                                        hl: u32,
                                        grpc: i32|
     -> R {
        finish((|| {
            let details = String::from_utf8_lossy(&read(&mut c, dp, dl)?).into_owned();
            let body = read(&mut c, bp, bl)?;
            let raw = read(&mut c, hp, hl)?;
            let list = pairs::decode(&raw).ok_or(BAD_ARGUMENT)?;
            let status = u16::try_from(code).ok().and_then(|c| StatusCode::from_u16(c).ok()).ok_or(BAD_ARGUMENT)?;
            let mut headers = Vec::with_capacity(list.len());
            for (k, v) in list {
                let k = HeaderName::from_bytes(&k.to_ascii_lowercase()).map_err(|_| BAD_ARGUMENT)?;
                headers.push((k, HeaderValue::from_bytes(v).map_err(|_| BAD_ARGUMENT)?));
            }
            let grpc_status = u32::try_from(grpc).ok().filter(|g| *g <= 16);
            let reply = LocalResponse { status, details, body: body.into(), headers, grpc_status };
            let host = c.data_mut();
            if !host.streams.contains_key(&host.effective) {
                return Err(BAD_ARGUMENT.into());
            }
            let ctx = host.effective;
            host.deferred.push((ctx, Deferred::Reply(reply)));
            Ok(())
        })())
    });
    host!("proxy_http_call", |mut c: C<'_>,
                              up: u32,
                              ul: u32,
                              hp: u32,
                              hl: u32,
                              bp: u32,
                              bl: u32,
                              tp: u32,
                              tl: u32,
                              ms: u32,
                              slot: u32|
     -> R {
        finish((|| {
            let upstream = String::from_utf8(read(&mut c, up, ul)?).map_err(|_| BAD_ARGUMENT)?;
            let raw = read(&mut c, hp, hl)?;
            let head: Vec<(Vec<u8>, Vec<u8>)> = pairs::decode(&raw)
                .ok_or(BAD_ARGUMENT)?
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
                .collect();
            let body = read(&mut c, bp, bl)?;
            let raw_trailers = read(&mut c, tp, tl)?;
            pairs::decode(&raw_trailers).ok_or(BAD_ARGUMENT)?;
            let timeout = if ms == 0 { MAX_CALL_TIMEOUT } else { Duration::from_millis(u64::from(ms)) };
            let token = super::call::start(c.data_mut(), &upstream, head, body, timeout)?;
            write_u32(&mut c, slot, token)
        })())
    });
    host!("proxy_get_status", |mut c: C<'_>, code_slot: u32, ptr: u32, len: u32| -> R {
        finish((|| {
            let (code, msg) = c.data().call.as_ref().map(|a| a.status.clone()).ok_or(NOT_FOUND)?;
            write_u32(&mut c, code_slot, code)?;
            give(&mut c, msg.as_bytes(), ptr, len)
        })())
    });
    host!("proxy_set_effective_context", |mut c: C<'_>, id: u32| -> R {
        let host = c.data_mut();
        if id == host.root || host.streams.contains_key(&id) {
            host.effective = id;
            Ok(0)
        } else {
            Ok(BAD_ARGUMENT)
        }
    });
    host!("proxy_done", |_c: C<'_>| -> R { Ok(NOT_FOUND) });
    host!("proxy_get_shared_data", |mut c: C<'_>, kp: u32, kl: u32, ptr: u32, len: u32, cas_slot: u32| -> R {
        finish((|| {
            let key = read(&mut c, kp, kl)?;
            let (value, cas) = c.data().runtime.shared.get(&c.data().plugin.vm_id, &key).ok_or(NOT_FOUND)?;
            give(&mut c, &value, ptr, len)?;
            write_u32(&mut c, cas_slot, cas)
        })())
    });
    host!("proxy_set_shared_data", |mut c: C<'_>, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| -> R {
        finish((|| {
            let key = read(&mut c, kp, kl)?;
            let value = read(&mut c, vp, vl)?;
            let h = c.data();
            if h.runtime.shared.set(&h.plugin.vm_id, key, value, cas) {
                Ok(())
            } else {
                Err(CAS_MISMATCH.into())
            }
        })())
    });
    host!("proxy_register_shared_queue", |mut c: C<'_>, np: u32, nl: u32, slot: u32| -> R {
        finish((|| {
            let name = read(&mut c, np, nl)?;
            let h = c.data();
            let id = h.runtime.queues.register(&h.plugin.vm_id, &name, h.vm.clone(), h.root);
            write_u32(&mut c, slot, id)
        })())
    });
    host!("proxy_resolve_shared_queue", |mut c: C<'_>, vp: u32, vl: u32, np: u32, nl: u32, slot: u32| -> R {
        finish((|| {
            let vm_id = read(&mut c, vp, vl)?;
            let name = read(&mut c, np, nl)?;
            let own = c.data().plugin.vm_id.clone();
            let vm_id = if vm_id.is_empty() { own.into_bytes() } else { vm_id };
            let id = c.data().runtime.queues.resolve(&vm_id, &name).ok_or(NOT_FOUND)?;
            write_u32(&mut c, slot, id)
        })())
    });
    host!("proxy_enqueue_shared_queue", |mut c: C<'_>, id: u32, vp: u32, vl: u32| -> R {
        finish((|| {
            let value = read(&mut c, vp, vl)?;
            if c.data().runtime.queues.enqueue(id, value) {
                Ok(())
            } else {
                Err(NOT_FOUND.into())
            }
        })())
    });
    host!("proxy_dequeue_shared_queue", |mut c: C<'_>, id: u32, ptr: u32, len: u32| -> R {
        let item = c.data().runtime.queues.dequeue(id);
        finish(match item {
            None => Err(NOT_FOUND.into()),
            Some(None) => Err(EMPTY.into()),
            Some(Some(v)) => give(&mut c, &v, ptr, len),
        })
    });
    host!("proxy_define_metric", |mut c: C<'_>, kind: u32, np: u32, nl: u32, slot: u32| -> R {
        finish((|| {
            let kind = match kind {
                0 => MetricKind::Counter,
                1 => MetricKind::Gauge,
                2 => MetricKind::Histogram,
                _ => return Err(BAD_ARGUMENT.into()),
            };
            let name = String::from_utf8(read(&mut c, np, nl)?).map_err(|_| BAD_ARGUMENT)?;
            let id = c.data().runtime.metrics.define(kind, &name).ok_or(BAD_ARGUMENT)?;
            write_u32(&mut c, slot, id)
        })())
    });
    host!("proxy_increment_metric", |c: C<'_>, id: u32, delta: i64| -> R {
        Ok(status_of(c.data().runtime.metrics.increment(id, delta)))
    });
    host!("proxy_record_metric", |c: C<'_>, id: u32, value: u64| -> R {
        Ok(status_of(c.data().runtime.metrics.record(id, value)))
    });
    host!("proxy_get_metric", |mut c: C<'_>, id: u32, slot: u32| -> R {
        finish((|| {
            let v = c.data().runtime.metrics.get(id)?;
            write_u64(&mut c, slot, v)
        })())
    });
    Ok(names)
}

/// Functions the SDKs import that Wicket does not offer, with the status each SDK
/// accepts as "not available" (anything else makes the Rust SDK panic): gRPC
/// callouts and foreign functions.
pub(super) const NOT_OFFERED: [(&str, Status); 6] = [
    ("proxy_grpc_call", INTERNAL_FAILURE),
    ("proxy_grpc_stream", INTERNAL_FAILURE),
    ("proxy_grpc_send", NOT_FOUND),
    ("proxy_grpc_cancel", NOT_FOUND),
    ("proxy_grpc_close", NOT_FOUND),
    ("proxy_call_foreign_function", NOT_FOUND),
];

fn status_of(r: Result<(), Status>) -> i32 {
    r.err().unwrap_or(0)
}

pub(super) fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// `proxy_log`: into tracing, named by plugin and context.
pub(super) fn log(host: &mut Host, level: u32, msg: &str) -> Result<(), Fail> {
    if level >= 4 && host.stage == Stage::Start {
        host.start_error = Some(msg.chars().take(512).collect());
    }
    let plugin = host.plugin.name.as_str();
    let ctx = host.effective;
    match level {
        0 => tracing::trace!(target: "wasm", plugin, ctx, "{msg}"),
        1 => tracing::debug!(target: "wasm", plugin, ctx, "{msg}"),
        2 => tracing::info!(target: "wasm", plugin, ctx, "{msg}"),
        3 => tracing::warn!(target: "wasm", plugin, ctx, "{msg}"),
        4 | 5 => tracing::error!(target: "wasm", plugin, ctx, "{msg}"),
        _ => return Err(BAD_ARGUMENT.into()),
    }
    Ok(())
}

fn defer(host: &mut Host, kind: u32, d: Deferred) -> i32 {
    match kind {
        0 | 1 if host.streams.contains_key(&host.effective) => {
            let ctx = host.effective;
            host.deferred.push((ctx, d));
            0
        }
        // Continuing a root context or an L4 stream: nothing to do.
        0..=3 => 0,
        _ => BAD_ARGUMENT,
    }
}

/// Reads from buffer `kind` (ABI §7.4); NOT_FOUND when it does not exist now.
fn buffer<T>(host: &mut Host, kind: u32, f: impl FnOnce(&[u8]) -> T) -> Result<T, Fail> {
    match kind {
        0 => host.stream().and_then(|s| s.request_body.as_deref()).map(f).ok_or(NOT_FOUND.into()),
        1 => host.stream().and_then(|s| s.response_body.as_deref()).map(f).ok_or(NOT_FOUND.into()),
        4 => host.call.as_ref().map(|c| f(&c.body)).ok_or(NOT_FOUND.into()),
        6 => Ok(f(b"")),
        7 => Ok(f(&host.plugin.configuration)),
        2 | 3 | 5 | 8 => Err(NOT_FOUND.into()),
        _ => Err(BAD_ARGUMENT.into()),
    }
}

/// `proxy_set_buffer_bytes`: prepend, replace, append, or splice a body buffer.
fn set_buffer(host: &mut Host, kind: u32, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
    let stage = host.stage;
    let s = host.stream().ok_or(BAD_ARGUMENT)?;
    let buf: &mut Option<BytesMut> = match (kind, stage) {
        (0, Stage::RequestHeaders | Stage::RequestBody | Stage::RequestTrailers | Stage::Async) => &mut s.request_body,
        (1, Stage::ResponseHeaders | Stage::ResponseBody | Stage::ResponseTrailers | Stage::Async) => {
            &mut s.response_body
        }
        (0 | 1, _) => return Err(BAD_ARGUMENT),
        (2..=8, _) => return Err(NOT_FOUND),
        _ => return Err(BAD_ARGUMENT),
    };
    let buf = buf.as_mut().ok_or(NOT_FOUND)?;
    let len = buf.len();
    let s = start.min(len);
    let e = s.saturating_add(size).min(len);
    let mut next = BytesMut::with_capacity(len - (e - s) + data.len());
    next.extend_from_slice(&buf[..s]);
    next.extend_from_slice(data);
    next.extend_from_slice(&buf[e..]);
    *buf = next;
    Ok(())
}
