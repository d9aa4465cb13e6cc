//! Audit filter: the Envoy side of [`fhirgate_core::audit`].
//!
//! Last before the router. At the end of every request (Envoy's log callback, which runs for
//! requests earlier filters refused too) it builds one record from the internal headers and
//! properties the other filters left, seals it into this worker's chain, writes it to Envoy's
//! log and queues it for the collector. In fail-closed mode a request waits until the collector
//! acknowledges its access record.

mod http;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::AuditRoot::default()) });
}}
