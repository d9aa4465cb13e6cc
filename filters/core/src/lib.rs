//! fhirgate's core: every FHIR and policy decision the filters make, as plain Rust.
//!
//! Nothing here knows about proxy-wasm or Envoy. The filter crates translate Envoy's request
//! into the core's input types, call the core, and translate the returned [`Decision`] or
//! [`Rejection`] back. The `fhirgate` CLI calls exactly the same functions natively.

pub mod audit;
pub mod bounded;
pub mod config;
pub mod consent;
pub mod decision;
pub mod fhir;
pub mod headers;
pub mod hex;
pub mod outcome;
pub mod pipeline;
pub mod ratelimit;
pub mod routing;
pub mod smart;

pub use decision::{Decision, Rejection};
pub use outcome::{IssueType, OperationOutcome};
