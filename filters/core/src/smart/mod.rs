//! SMART on FHIR: scopes and the authorization decision.

pub mod authz;
pub mod check;
pub mod config;
pub mod scope;
pub mod token;
