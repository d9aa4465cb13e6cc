//! Rate-limit stage: the Envoy side of [`fhirgate_core::ratelimit::filter`].
//!
//! After routing and authorization. Classifies each request (class, tenant, principal,
//! weight), verifies break-glass tokens, takes from per-user token buckets in Envoy's shared
//! data (one budget across every worker) and/or sets descriptor headers for Envoy's own
//! rate-limit filters, and answers 429 with Retry-After, X-RateLimit-* and an OperationOutcome.

mod http;
mod root;

pub use root::{RateLimitRoot, FILTER};
