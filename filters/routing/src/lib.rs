//! FHIR routing filter: the Envoy side of [`fhirgate_core::routing`].
//!
//! First in the chain. It removes every client-supplied `x-fhirgate-*` header, parses the
//! request into FHIR terms, refuses malformed requests with an OperationOutcome, and sets the
//! internal headers that Envoy routes and later filters read.

mod http;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::RoutingRoot::default()) });
}}
