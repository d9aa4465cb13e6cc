//! SMART on FHIR authorization stage: the Envoy side of [`fhirgate_core::smart`].
//!
//! After routing. It verifies the bearer token, decides the request against the token's
//! scopes and launch patient, narrows searches to the patient, and when the decision needs
//! the request or response body, holds the request or response until it has it. The decision
//! and the token's identity reach later stages as `x-fhirgate-*` headers, which clients
//! cannot set (the routing stage strips them).

mod http;
mod root;

pub use root::{AuthzRoot, FILTER};
