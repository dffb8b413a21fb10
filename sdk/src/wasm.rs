//! The proxy-wasm adapter: a root context that configures the [`Plugin`] and an
//! HTTP context per request that calls its [`Filter`].

use std::{cell::RefCell, rc::Rc};

use proxy_wasm::{
    traits::{Context, HttpContext, RootContext},
    types::{Action as AbiAction, ContextType, LogLevel},
};

use crate::{host, host::Buf, Action, CallAnswer, Filter, Plugin, Request, Response};

/// Installs `P` as the module's root context (called by [`crate::plugin!`]).
pub fn register<P: Plugin>() {
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::<P> { plugin: None }) });
}

struct Root<P> {
    plugin: Option<Rc<RefCell<P>>>,
}

impl<P: Plugin> Context for Root<P> {}

impl<P: Plugin> RootContext for Root<P> {
    fn on_configure(&mut self, _: usize) -> bool {
        crate::shared::init();
        let bytes = host::buffer(Buf::Config);
        let plugin = crate::parse_config::<P::Config>(&bytes).and_then(P::configure);
        match plugin {
            Ok(p) => {
                if let Some(period) = p.tick_period() {
                    host::set_tick(period);
                }
                self.plugin = Some(Rc::new(RefCell::new(p)));
                true
            }
            Err(e) => {
                host::log(crate::Level::Error, &e);
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(p) = &self.plugin {
            p.borrow_mut().on_tick();
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        let filter = self.plugin.as_ref()?.borrow().filter();
        Some(Box::new(Http { filter }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http<F> {
    filter: F,
}

fn abi(a: Action) -> AbiAction {
    match a {
        Action::Continue => AbiAction::Continue,
        Action::Pause => AbiAction::Pause,
    }
}

impl<F: Filter> Context for Http<F> {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        let headers = host::headers(host::Map::CallAnswer);
        let status = headers.iter().find(|(k, _)| k == ":status").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let answer = CallAnswer { status, headers, body: host::buffer(Buf::CallAnswer) };
        self.filter.on_call_answer(&mut Request::new(), answer);
    }

    fn on_done(&mut self) -> bool {
        self.filter.on_done(&Request::new());
        true
    }
}

impl<F: Filter> HttpContext for Http<F> {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> AbiAction {
        abi(self.filter.on_request(&mut Request::new()))
    }

    fn on_http_request_body(&mut self, _: usize, end: bool) -> AbiAction {
        abi(self.filter.on_request_body(&mut Request::new(), end))
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> AbiAction {
        abi(self.filter.on_response(&mut Response::new()))
    }

    fn on_http_response_body(&mut self, _: usize, end: bool) -> AbiAction {
        abi(self.filter.on_response_body(&mut Response::new(), end))
    }
}
