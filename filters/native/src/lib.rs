//! `libfhirgate.so`: the fhirgate pipeline as an Envoy dynamic module
//! (`envoy.filters.http.dynamic_modules`), for Envoy 1.40 (dynamic-module ABI `v0.2.0`).
//!
//! The third host of the same pipeline, beside the Wasm module and the CLI: it runs
//! `fhirgate.wasm`'s code ([`fhirgate::GatewayRoot`] and its stages) natively, answering the
//! host calls the pipeline makes through Envoy's dynamic-module callbacks. It only translates:
//! [`abi`] holds the C declarations and every `unsafe`, [`host`] answers the host calls,
//! [`module`] keeps configurations, worker roots and streams, [`guard`] keeps panics inside, [`metrics`] maps the pipeline's metric names to Envoy's.

mod abi;
mod guard;
mod host;
mod metrics;
mod module;

pub use abi::ABI_VERSION;
