//! Consent stage: the Envoy side of [`fhirgate_core::consent`].
//!
//! After rate limiting. Refuses requests whose answer no policy could release, checks writes
//! against the resource they change, and filters responses resource by resource: security
//! labels, FHIR Consents (fetched and cached per patient), purpose of use and break-glass.

mod http;
mod root;

pub use root::{ConsentRoot, FILTER};
