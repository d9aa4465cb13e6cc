//! Consent filter: the Envoy side of [`fhirgate_core::consent`].
//!
//! After rate limiting. Holds each FHIR response whole, fetches the Consents of the patients
//! it names through an Envoy cluster (cached per worker for the configured TTL), and releases,
//! redacts or withholds each resource as labels and Consents decide.

mod http;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::ConsentRoot::default()) });
}}
