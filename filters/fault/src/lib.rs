#![allow(clippy::disallowed_methods)] // a test instrument: raw host calls, no mock

//! A filter that fails on request, for the failure-behaviour tests (`tests/e2e/test_failure.py`):
//! `x-test-fault: trap` executes a Wasm `unreachable`, `x-test-fault: panic` panics (which aborts
//! the VM: the filters are built with `panic=abort`). Anything else passes. Placed inside the
//! chain with the failure policy fhirgate's own filters ship with, it shows what Envoy does when
//! one of them fails mid-request. Never deployed: `make wasm` does not build it.
//!
//! Configured `{"standIn": "fhirgate.authz", "failOnWorkers": true}` it takes a shipped filter's
//! place (`"fhirgate"`: the fused filter, every stage): it marks the requests it passes as that
//! filter does, and its configuration fails on every VM but the first (Envoy's main thread,
//! which validates the configuration): what a worker that cannot load a filter's VM looks like
//! to Envoy.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FaultRoot::default()) });
}}

/// How many VMs of this process configured the instrument so far (shared data is process-wide).
const CONFIGURES: &str = "fhirgate.fault.configures";

#[derive(Default)]
struct FaultRoot {
    stand_in: Vec<&'static str>,
}

impl FaultRoot {
    /// Counts this configuration among the process's; true for the first.
    fn first_to_configure() -> bool {
        loop {
            let (value, cas) = hostcalls::get_shared_data(CONFIGURES).unwrap_or((None, None));
            let seen = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if hostcalls::set_shared_data(CONFIGURES, Some((seen + 1).to_string().as_bytes()), cas)
                .is_ok()
            {
                return seen == 0;
            }
        }
    }
}

impl Context for FaultRoot {}
impl RootContext for FaultRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config: serde_json::Value =
            serde_json::from_slice(&fhirgate_proxy::host::plugin_configuration())
                .unwrap_or_default();
        // Only the shipped stages' names: the mark's property name must be static.
        let stand_in = config.get("standIn").and_then(|s| s.as_str());
        self.stand_in = fhirgate_core::pipeline::STAGES
            .into_iter()
            .filter(|stage| {
                stand_in == Some("fhirgate")
                    || stand_in.and_then(|s| s.strip_prefix("fhirgate.")) == Some(stage)
            })
            .collect();
        let fail_on_workers = config
            .get("failOnWorkers")
            .and_then(|f| f.as_bool())
            .unwrap_or(false);
        let first = Self::first_to_configure();
        if fail_on_workers && !first {
            log::error!("fault instrument: failing this worker's configuration, as asked");
            return false;
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Fault {
            stand_in: self.stand_in.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Fault {
    stand_in: Vec<&'static str>,
}

impl Context for Fault {}
impl HttpContext for Fault {
    #[allow(clippy::panic)] // failing is this instrument's whole purpose
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match fhirgate_proxy::host::request_header("x-test-fault").as_deref() {
            #[cfg(target_arch = "wasm32")]
            Some("trap") => core::arch::wasm32::unreachable(),
            Some("panic") => panic!("fault instrument: asked to panic"),
            _ => {
                if !self.stand_in.is_empty() {
                    fhirgate_proxy::mark_passed(&self.stand_in);
                }
                // Standing in for routing, it also names the pool the routes need.
                if self.stand_in.contains(&"routing") {
                    fhirgate_proxy::host::set_property(
                        vec![fhirgate_proxy::POOL_PROPERTY],
                        b"fhir",
                    );
                }
                if !self.stand_in.is_empty() {
                    fhirgate_proxy::clear_route_cache();
                }
                Action::Continue
            }
        }
    }
}
