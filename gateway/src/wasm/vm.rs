//! One VM: a wasmtime store with one instance of a plugin's module and its root
//! context. Callbacks run synchronously under the VM's lock (never held across an
//! await) with an epoch deadline; a trap, a deadline or a bad pointer kills the VM,
//! fails its streams, and the plugin starts a fresh one.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use tokio::sync::Notify;
use wasmtime::{Instance, InstancePre, Store, StoreLimitsBuilder, Trap, TypedFunc};

use super::{
    host::{CallAnswer, Deferred, Facts, Host, LocalResponse, RequestHead, ResponseHead, Signal, Stage, StreamData},
    plugin::PluginInfo,
    runtime::{engine, Runtime, CALLBACK_EPOCHS, MEMORY_LIMIT, START_EPOCHS},
};

/// Why a callback could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum VmFailure {
    /// The VM died earlier (or the callback killed it): apply the fail strategy.
    Dead,
}

/// What a stream callback decided.
#[derive(Debug)]
pub(super) enum Verdict {
    Continue,
    Pause,
    Reply(LocalResponse),
    Close,
    /// The VM died while the stream was paused on it.
    Failed,
}

/// Request or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    Request,
    Response,
}

type Cb<P, R> = Option<TypedFunc<P, R>>;

/// The module's callbacks (all optional, ABI §4).
struct Callbacks {
    context_create: Cb<(u32, u32), ()>,
    vm_start: Cb<(u32, u32), u32>,
    configure: Cb<(u32, u32), u32>,
    tick: Cb<u32, ()>,
    queue_ready: Cb<(u32, u32), ()>,
    request_headers: Cb<(u32, u32, u32), u32>,
    request_body: Cb<(u32, u32, u32), u32>,
    request_trailers: Cb<(u32, u32), u32>,
    response_headers: Cb<(u32, u32, u32), u32>,
    response_body: Cb<(u32, u32, u32), u32>,
    response_trailers: Cb<(u32, u32), u32>,
    done: Cb<u32, u32>,
    log: Cb<u32, ()>,
    delete: Cb<u32, ()>,
    http_call_response: Cb<(u32, u32, u32, u32, u32), ()>,
}

impl Callbacks {
    fn find(instance: &Instance, store: &mut Store<Host>) -> Result<Self, String> {
        fn get<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
            instance: &Instance,
            store: &mut Store<Host>,
            name: &str,
        ) -> Result<Cb<P, R>, String> {
            if instance.get_func(&mut *store, name).is_none() {
                return Ok(None);
            }
            instance.get_typed_func::<P, R>(&mut *store, name).map(Some).map_err(|e| format!("export {name}: {e}"))
        }
        Ok(Self {
            context_create: get(instance, store, "proxy_on_context_create")?,
            vm_start: get(instance, store, "proxy_on_vm_start")?,
            configure: get(instance, store, "proxy_on_configure")?,
            tick: get(instance, store, "proxy_on_tick")?,
            queue_ready: get(instance, store, "proxy_on_queue_ready")?,
            request_headers: get(instance, store, "proxy_on_request_headers")?,
            request_body: get(instance, store, "proxy_on_request_body")?,
            request_trailers: get(instance, store, "proxy_on_request_trailers")?,
            response_headers: get(instance, store, "proxy_on_response_headers")?,
            response_body: get(instance, store, "proxy_on_response_body")?,
            response_trailers: get(instance, store, "proxy_on_response_trailers")?,
            done: get(instance, store, "proxy_on_done")?,
            log: get(instance, store, "proxy_on_log")?,
            delete: get(instance, store, "proxy_on_delete")?,
            http_call_response: get(instance, store, "proxy_on_http_call_response")?,
        })
    }
}

struct Live {
    store: Store<Host>,
    cb: Callbacks,
}

/// One instance of a plugin.
pub(super) struct Vm {
    live: Mutex<Option<Live>>,
    /// Streams of a VM that died: their request heads survive for FAIL_OPEN.
    orphans: Mutex<std::collections::HashMap<u32, StreamData>>,
    plugin: Arc<PluginInfo>,
    runtime: Arc<Runtime>,
    tick: Arc<Tick>,
}

/// The tick period a VM's root context asked for, shared with its ticker task.
#[derive(Default)]
struct Tick {
    ms: AtomicU64,
    changed: Notify,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.tick.changed.notify_one(); // lets the ticker see the VM is gone
    }
}

impl Vm {
    /// Instantiates, initialises and configures a VM (ABI §3, §5.1).
    pub(super) fn start(
        pre: &InstancePre<Host>,
        plugin: Arc<PluginInfo>,
        runtime: Arc<Runtime>,
    ) -> Result<Arc<Self>, String> {
        let vm = Arc::new(Self {
            live: Mutex::new(None),
            orphans: Mutex::default(),
            plugin: plugin.clone(),
            runtime: runtime.clone(),
            tick: Arc::default(),
        });
        let limits = StoreLimitsBuilder::new().memory_size(MEMORY_LIMIT).instances(1).memories(1).tables(10).build();
        let mut host = Host::new(plugin.clone(), runtime, limits);
        host.vm = Arc::downgrade(&vm);
        let mut store = Store::new(engine(), host);
        store.limiter(|h| &mut h.limits);
        store.set_epoch_deadline(START_EPOCHS);
        let instance = pre.instantiate(&mut store).map_err(|e| format!("cannot instantiate: {}", cause(&e)))?;
        let memory = instance.get_memory(&mut store, "memory").ok_or("module exports no memory")?;
        let alloc = instance
            .get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<u32, u32>(&mut store, "malloc"))
            .map_err(|e| format!("allocator export: {e}"))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = Some(alloc);
        let init = |name: &str, store: &mut Store<Host>| -> Result<bool, String> {
            match instance.get_typed_func::<(), ()>(&mut *store, name) {
                Ok(f) => f.call(&mut *store, ()).map(|()| true).map_err(|e| format!("{name} failed: {}", cause(&e))),
                Err(_) => Ok(false),
            }
        };
        if init("_initialize", &mut store)? {
            if let Ok(main) = instance.get_typed_func::<(u32, u32), u32>(&mut store, "main") {
                main.call(&mut store, (0, 0)).map_err(|e| format!("main failed: {}", cause(&e)))?;
            }
        } else {
            init("_start", &mut store)?;
        }
        let cb = Callbacks::find(&instance, &mut store)?;
        let root = store.data().root;
        store.set_epoch_deadline(START_EPOCHS);
        if let Some(f) = &cb.context_create {
            f.call(&mut store, (root, 0)).map_err(|e| format!("proxy_on_context_create failed: {}", cause(&e)))?;
        }
        if let Some(f) = &cb.vm_start {
            store.set_epoch_deadline(START_EPOCHS);
            let ok = f.call(&mut store, (root, 0)).map_err(|e| format!("proxy_on_vm_start failed: {}", cause(&e)))?;
            if ok == 0 {
                return Err("proxy_on_vm_start returned false".into());
            }
        }
        if let Some(f) = &cb.configure {
            store.set_epoch_deadline(START_EPOCHS);
            let len = plugin.configuration.len() as u32;
            let ok =
                f.call(&mut store, (root, len)).map_err(|e| format!("proxy_on_configure failed: {}", cause(&e)))?;
            if ok == 0 {
                let why = store.data_mut().start_error.take().map(|e| format!(": {e}")).unwrap_or_default();
                return Err(format!("proxy_on_configure returned false: the plugin rejected its configuration{why}"));
            }
        }
        store.data_mut().stage = Stage::Async;
        let tick = store.data().tick_ms;
        *vm.lock() = Some(Live { store, cb });
        vm.tick.ms.store(tick, Ordering::Relaxed);
        vm.spawn_ticker();
        Ok(vm)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Live>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// False once a callback killed it.
    pub(super) fn is_alive(&self) -> bool {
        self.lock().is_some()
    }

    /// Runs `f` as a callback for context `ctx` at `stage`; returns its result and the
    /// side effects it queued for `ctx`. Effects for other streams go to their signals.
    fn run<R>(
        &self,
        ctx: u32,
        stage: Stage,
        f: impl FnOnce(&Callbacks, &mut Store<Host>) -> Option<wasmtime::Result<R>>,
    ) -> Result<(Option<R>, Vec<Deferred>), VmFailure> {
        let mut guard = self.lock();
        let live = guard.as_mut().ok_or(VmFailure::Dead)?;
        live.store.set_epoch_deadline(CALLBACK_EPOCHS);
        let h = live.store.data_mut();
        h.current = ctx;
        h.effective = ctx;
        h.stage = stage;
        let value = match f(&live.cb, &mut live.store) {
            Some(Err(e)) => {
                let why = cause(&e);
                let what = if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) { "deadline" } else { "trap" };
                tracing::error!(plugin = %self.plugin.name, cause = %why, "Wasm plugin failed; replacing its VM");
                self.runtime.metrics.failure(&self.plugin.name, what);
                if let Some(mut dead) = guard.take() {
                    let streams = std::mem::take(&mut dead.store.data_mut().streams);
                    for s in streams.values() {
                        s.signal.push(Deferred::Failed);
                    }
                    drop(guard);
                    drop(dead);
                    self.orphans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(streams);
                }
                return Err(VmFailure::Dead);
            }
            Some(Ok(v)) => Some(v),
            None => None,
        };
        let h = live.store.data_mut();
        h.effective = h.current;
        h.stage = Stage::Async;
        let tick = h.tick_ms;
        let mine: Vec<Deferred> = std::mem::take(&mut h.deferred)
            .into_iter()
            .filter_map(|(c, d)| {
                if c == ctx {
                    return Some(d);
                }
                if let Some(s) = h.streams.get(&c) {
                    s.signal.push(d);
                }
                None
            })
            .collect();
        drop(guard);
        if self.tick.ms.swap(tick, Ordering::Relaxed) != tick {
            self.tick.changed.notify_one();
        }
        Ok((value, mine))
    }

    /// Creates a stream context (ABI §5.2).
    pub(super) fn create_stream(&self, facts: Arc<Facts>) -> Result<(u32, Arc<Signal>), VmFailure> {
        let signal = Arc::new(Signal::default());
        let (id, root) = {
            let mut guard = self.lock();
            let live = guard.as_mut().ok_or(VmFailure::Dead)?;
            let h = live.store.data_mut();
            let id = h.next_id;
            h.next_id = h.next_id.checked_add(1).ok_or(VmFailure::Dead)?;
            h.streams.insert(
                id,
                StreamData {
                    request: None,
                    response: None,
                    request_trailers: None,
                    response_trailers: None,
                    request_body: None,
                    response_body: None,
                    facts,
                    props: Default::default(),
                    signal: signal.clone(),
                    response_code: None,
                    route_name: None,
                    cluster_name: None,
                },
            );
            (id, h.root)
        };
        self.run(id, Stage::RequestHeaders, |cb, store| cb.context_create.as_ref().map(|f| f.call(store, (id, root))))?;
        Ok((id, signal))
    }

    fn with_stream<T>(&self, ctx: u32, f: impl FnOnce(&mut StreamData) -> T) -> Option<T> {
        let mut guard = self.lock();
        guard.as_mut()?.store.data_mut().streams.get_mut(&ctx).map(f)
    }

    /// `on_request_headers`; the head comes back unless the filter paused.
    pub(super) fn request_headers(
        &self,
        ctx: u32,
        head: RequestHead,
        eos: bool,
    ) -> Result<(Verdict, Option<RequestHead>), VmFailure> {
        let n = head.headers.len() as u32 + 4;
        self.with_stream(ctx, |s| s.request = Some(head)).ok_or(VmFailure::Dead)?;
        let (action, effects) = self.run(ctx, Stage::RequestHeaders, |cb, store| {
            cb.request_headers.as_ref().map(|f| f.call(store, (ctx, n, u32::from(eos))))
        })?;
        let verdict = verdict(action.map_or(0, |a| if a == 2 { 0 } else { a }), effects);
        let head = match verdict {
            Verdict::Continue => self.take_request(ctx),
            _ => None,
        };
        Ok((verdict, head))
    }

    /// The request head after a resume, or after the VM died holding it.
    pub(super) fn take_request(&self, ctx: u32) -> Option<RequestHead> {
        self.with_stream(ctx, |s| s.request.take()).flatten().or_else(|| {
            let mut orphans = self.orphans.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            orphans.get_mut(&ctx).and_then(|s| s.request.take())
        })
    }

    /// `on_response_headers`; the head comes back unless the filter paused.
    pub(super) fn response_headers(
        &self,
        ctx: u32,
        head: ResponseHead,
        eos: bool,
    ) -> Result<(Verdict, Option<ResponseHead>), VmFailure> {
        let n = head.headers.len() as u32 + 1;
        let code = head.status.as_u16();
        self.with_stream(ctx, |s| {
            s.response_code = Some(code);
            s.response = Some(head);
        })
        .ok_or(VmFailure::Dead)?;
        let (action, effects) = self.run(ctx, Stage::ResponseHeaders, |cb, store| {
            cb.response_headers.as_ref().map(|f| f.call(store, (ctx, n, u32::from(eos))))
        })?;
        let verdict = verdict(action.map_or(0, |a| if a == 2 { 0 } else { a }), effects);
        let head = self.with_stream(ctx, |s| s.response.take()).flatten();
        Ok((verdict, head))
    }

    /// Routing facts for `xds.*` properties.
    pub(super) fn set_route(&self, ctx: u32, route: Option<Arc<str>>, cluster: Option<Arc<str>>) {
        self.with_stream(ctx, |s| {
            s.route_name = route;
            s.cluster_name = cluster;
        });
    }

    /// `on_*_body` with `chunk` appended to the buffer; on continue, returns what to
    /// forward (the buffer, possibly rewritten).
    pub(super) fn body(
        &self,
        ctx: u32,
        dir: Dir,
        chunk: Bytes,
        eos: bool,
    ) -> Result<(Verdict, Option<BytesMut>), VmFailure> {
        let size = self
            .with_stream(ctx, |s| {
                let buf = match dir {
                    Dir::Request => s.request_body.get_or_insert_with(BytesMut::new),
                    Dir::Response => s.response_body.get_or_insert_with(BytesMut::new),
                };
                buf.extend_from_slice(&chunk);
                buf.len() as u32
            })
            .ok_or(VmFailure::Dead)?;
        let (stage, f) = match dir {
            Dir::Request => (Stage::RequestBody, 0),
            Dir::Response => (Stage::ResponseBody, 1),
        };
        let (action, effects) = self.run(ctx, stage, |cb, store| {
            let cb = if f == 0 { &cb.request_body } else { &cb.response_body };
            cb.as_ref().map(|f| f.call(store, (ctx, size, u32::from(eos))))
        })?;
        let verdict = verdict(action.unwrap_or(0), effects);
        let out = match verdict {
            Verdict::Pause if !eos => None,
            _ => self
                .with_stream(ctx, |s| match dir {
                    Dir::Request => s.request_body.take(),
                    Dir::Response => s.response_body.take(),
                })
                .flatten(),
        };
        Ok((verdict, out))
    }

    /// `on_*_trailers`; returns the (possibly changed) trailers.
    pub(super) fn trailers(&self, ctx: u32, dir: Dir, trailers: HeaderMap) -> Result<(Verdict, HeaderMap), VmFailure> {
        let n = trailers.len() as u32;
        self.with_stream(ctx, |s| match dir {
            Dir::Request => s.request_trailers = Some(trailers),
            Dir::Response => s.response_trailers = Some(trailers),
        })
        .ok_or(VmFailure::Dead)?;
        let (action, effects) = self.run(
            ctx,
            if dir == Dir::Request { Stage::RequestTrailers } else { Stage::ResponseTrailers },
            |cb, store| {
                let cb = if dir == Dir::Request { &cb.request_trailers } else { &cb.response_trailers };
                cb.as_ref().map(|f| f.call(store, (ctx, n)))
            },
        )?;
        let out = self
            .with_stream(ctx, |s| match dir {
                Dir::Request => s.request_trailers.clone(),
                Dir::Response => s.response_trailers.clone(),
            })
            .flatten()
            .unwrap_or_default();
        Ok((verdict(action.unwrap_or(0), effects), out))
    }

    /// Ends a stream: `on_done`, `on_log`, `on_delete` (spec order), then forgets it.
    pub(super) fn finish(&self, ctx: u32) {
        self.orphans.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&ctx);
        let _ = self.run(ctx, Stage::Teardown, |cb, store| cb.done.as_ref().map(|f| f.call(store, ctx).map(drop)));
        let _ = self.run(ctx, Stage::Log, |cb, store| cb.log.as_ref().map(|f| f.call(store, ctx)));
        let _ = self.run(ctx, Stage::Teardown, |cb, store| cb.delete.as_ref().map(|f| f.call(store, ctx)));
        if let Some(live) = self.lock().as_mut() {
            let h = live.store.data_mut();
            h.streams.remove(&ctx);
            h.calls.retain(|_, c| *c != ctx);
        }
    }

    /// Delivers an HTTP call's answer to the root context (ABI §10).
    pub(super) fn deliver_call(&self, token: u32, answer: CallAnswer) {
        let root = {
            let mut guard = self.lock();
            let Some(live) = guard.as_mut() else { return };
            let h = live.store.data_mut();
            if h.calls.remove(&token).is_none() {
                return; // the stream that asked is gone
            }
            h.call = Some(answer);
            h.root
        };
        let _ = self.run(root, Stage::Async, |cb, store| {
            let (nh, nb, nt) = store
                .data()
                .call
                .as_ref()
                .map_or((0, 0, 0), |c| (c.headers.len() as u32, c.body.len() as u32, c.trailers.len() as u32));
            cb.http_call_response.as_ref().map(|f| f.call(store, (root, token, nh, nb, nt)))
        });
        if let Some(live) = self.lock().as_mut() {
            live.store.data_mut().call = None;
        }
    }

    /// `on_queue_ready` for a root context of this VM.
    pub(super) fn queue_ready(&self, root: u32, queue: u32) {
        let _ = self.run(root, Stage::Async, |cb, store| cb.queue_ready.as_ref().map(|f| f.call(store, (root, queue))));
    }

    fn spawn_ticker(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let vm = Arc::downgrade(self);
        let tick = self.tick.clone();
        rt.spawn(async move {
            loop {
                let ms = tick.ms.load(Ordering::Relaxed);
                let changed = tick.changed.notified();
                if !vm.upgrade().is_some_and(|v| v.is_alive()) {
                    return;
                }
                if ms == 0 {
                    changed.await;
                    continue;
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(ms)) => {
                        let Some(strong) = vm.upgrade() else { return };
                        let root = strong.lock().as_ref().map(|l| l.store.data().root);
                        if let Some(root) = root {
                            let _ = strong.run(root, Stage::Async, |cb, store| cb.tick.as_ref().map(|f| f.call(store, root)));
                        }
                    }
                    () = changed => {}
                }
            }
        });
    }
}

/// Folds the callback's action and its queued effects into one verdict: a local
/// reply always wins and forces a pause (ABI §9.4).
fn verdict(action: u32, effects: Vec<Deferred>) -> Verdict {
    let mut resumed = false;
    for e in effects {
        match e {
            Deferred::Reply(r) => return Verdict::Reply(r),
            Deferred::Close => return Verdict::Close,
            Deferred::Failed => return Verdict::Failed,
            Deferred::Continue => resumed = true,
        }
    }
    if action == 0 || resumed {
        Verdict::Continue
    } else {
        Verdict::Pause
    }
}

/// The readable cause of a wasmtime error: the trap code, or the message.
fn cause(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "CPU deadline exceeded (epoch interrupt)".into(),
        Some(t) => format!("trap: {t}"),
        None => format!("{e:#}"),
    }
}
