//! The internal header contract between fhirgate filters and Envoy's routes.
//!
//! Every header fhirgate sets on a request starts with [`PREFIX`]. The routing filter, first in
//! the chain, removes every client-supplied header with that prefix before setting its own, so
//! later filters and Envoy's route table can trust them.

/// The one prefix of every internal header. Clients can never set these.
pub const PREFIX: &str = "x-fhirgate-";

pub const INTERACTION: &str = "x-fhirgate-interaction";
pub const RESOURCE_TYPE: &str = "x-fhirgate-resource-type";
pub const ID: &str = "x-fhirgate-id";
pub const VERSION_ID: &str = "x-fhirgate-version-id";
pub const OPERATION: &str = "x-fhirgate-operation";
pub const COMPARTMENT: &str = "x-fhirgate-compartment";
pub const PATIENT: &str = "x-fhirgate-patient";
pub const POOL: &str = "x-fhirgate-pool";
pub const BUNDLE_TYPE: &str = "x-fhirgate-bundle-type";
/// How many entries a batch or transaction Bundle carries (each is weighed by the rate limits).
pub const BUNDLE_ENTRIES: &str = "x-fhirgate-bundle-entries";

// Set by the authorization filter, for the filters after it.
pub const AUTHZ_DECISION: &str = "x-fhirgate-authz-decision";
/// In report-only mode: the reason enforcing would have refused (or narrowed).
pub const AUTHZ_REASON: &str = "x-fhirgate-authz-reason";
pub const SUBJECT: &str = "x-fhirgate-subject";
pub const CLIENT_ID: &str = "x-fhirgate-client-id";
pub const TENANT: &str = "x-fhirgate-tenant";
pub const LAUNCH_PATIENT: &str = "x-fhirgate-launch-patient";
/// The granted scopes of the verified token (space-separated), and its `fhirUser`.
pub const SCOPES: &str = "x-fhirgate-scopes";
pub const FHIR_USER: &str = "x-fhirgate-fhir-user";
/// The purpose of use (an HL7 PurposeOfUse code) from a verified source: the token's claim, or
/// the client's header only where a trust zone says its peers may assert it.
pub const PURPOSE_OF_USE: &str = "x-fhirgate-purpose-of-use";

/// An HL7 PurposeOfUse-shaped code: 1-32 letters, digits, `-` or `_`.
pub fn is_purpose_code(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Conditional request headers on a read or search: removed wherever a response must be judged
/// whole (a 304 would answer for a resource never checked).
pub const CONDITIONAL_READ: &[&str] = &["if-none-match", "if-modified-since"];

/// Emergency purposes (v3 ActReason): access under them is audited as elevated, like
/// break-glass.
pub const EMERGENCY_PURPOSES: &[&str] = &["ETREAT", "BTG", "ERTREAT"];

// Set by the rate-limit filter.
/// A verified break-glass token's reason code: the request is emergency access.
pub const BREAK_GLASS: &str = "x-fhirgate-break-glass";
/// The user the verified break-glass token names.
pub const BREAK_GLASS_USER: &str = "x-fhirgate-break-glass-user";
/// Rate-limit descriptors for Envoy's limiters: class, tenant, principal (pseudonymous), weight.
pub const RL_CLASS: &str = "x-fhirgate-rl-class";
pub const RL_TENANT: &str = "x-fhirgate-rl-tenant";
pub const RL_PRINCIPAL: &str = "x-fhirgate-rl-principal";
pub const RL_WEIGHT: &str = "x-fhirgate-rl-weight";

/// Request headers that ask a server to treat a request as another method. fhirgate never
/// honours them: a request carrying one is refused (lower case, as Envoy keeps header names).
pub const METHOD_OVERRIDE: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// True when `name` (any case) is one of fhirgate's internal headers.
pub fn is_internal(name: &str) -> bool {
    name.len() >= PREFIX.len() && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_prefix_in_any_case() {
        assert!(is_internal("x-fhirgate-pool"));
        assert!(is_internal("X-FhirGate-Patient"));
        assert!(is_internal("x-fhirgate-"));
        assert!(!is_internal("x-fhirgat"));
        assert!(!is_internal("x-forwarded-for"));
        assert!(!is_internal("fhirgate-pool"));
    }
}
