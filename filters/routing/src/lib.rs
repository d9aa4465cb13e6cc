//! FHIR routing stage: the Envoy side of [`fhirgate_core::routing`].
//!
//! First in the pipeline. It removes every client-supplied `x-fhirgate-*` header, parses the
//! request into FHIR terms, refuses malformed requests with an OperationOutcome, and sets the
//! internal headers that Envoy routes and later stages read.

mod http;
mod root;

pub use root::{RoutingRoot, FILTER};
