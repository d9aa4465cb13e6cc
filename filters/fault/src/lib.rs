//! A filter that fails on request, for the failure-behaviour tests (`tests/e2e/test_failure.py`):
//! `x-test-fault: trap` executes a Wasm `unreachable`, `x-test-fault: panic` panics (which aborts
//! the VM: the filters are built with `panic=abort`). Anything else passes. Placed inside the
//! chain with the failure policy fhirgate's own filters ship with, it shows what Envoy does when
//! one of them fails mid-request. Never deployed: `make wasm` does not build it.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FaultRoot) });
}}

struct FaultRoot;
impl Context for FaultRoot {}
impl RootContext for FaultRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Fault))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Fault;
impl Context for Fault {}
impl HttpContext for Fault {
    #[allow(clippy::panic)] // failing is this instrument's whole purpose
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.get_http_request_header("x-test-fault").as_deref() {
            #[cfg(target_arch = "wasm32")]
            Some("trap") => core::arch::wasm32::unreachable(),
            Some("panic") => panic!("fault instrument: asked to panic"),
            _ => Action::Continue,
        }
    }
}
