//! Audit stage: the Envoy side of [`fhirgate_core::audit`].
//!
//! Last before the router. At the end of every request (Envoy's log callback, which runs for
//! requests earlier stages refused too) it builds one record from the internal headers and
//! properties the other stages left, seals it into this worker's chain, writes it to Envoy's
//! log and queues it for the collector. In fail-closed mode a request waits until the collector
//! acknowledges its access record.

mod http;
mod root;

pub use root::{AuditRoot, FILTER};
