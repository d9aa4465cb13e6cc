//! SMART on FHIR: scopes and the authorization decision.

pub mod authz;
pub mod bulk;
pub mod cache;
pub mod check;
pub mod config;
pub mod confine;
pub mod filter;
pub mod introspection;
pub mod jwks;
pub mod scope;
pub mod token;
