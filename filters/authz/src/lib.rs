//! SMART on FHIR authorization filter: the Envoy side of [`fhirgate_core::smart`].
//!
//! Second in the chain, after routing. It verifies the bearer token, decides the request
//! against the token's scopes and launch patient, narrows searches to the patient, and when
//! the decision needs the request or response body, holds the request or response until it
//! has it. The decision and the token's identity reach later filters as `x-fhirgate-*`
//! headers, which clients cannot set (the routing filter strips them).

mod http;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::AuthzRoot::default()) });
}}
