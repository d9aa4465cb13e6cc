//! SMART on FHIR: scopes and the authorization decision.

pub mod scope;
