//! The names of what fhirgate's stages tell each other about a request, and which of them
//! leave the gateway as request headers.
//!
//! Stages hand each other these facts in memory ([`crate::pipeline::Facts`]); between separate
//! filters they travel as one filter-state value, which a client cannot set. Only two kinds
//! become request headers (all starting with [`PREFIX`]): [`FOR_ENVOY`], which Envoy's own rate
//! limiters read and the routes remove before the upstream, and [`FOR_UPSTREAM`], the identity
//! the upstream FHIR server sees. The routing stage, first, removes every client-supplied header
//! with the prefix, so whatever carries it upstream is the gateway's.

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

/// Every fact a stage may record, in the order a record lists them.
pub const FACTS: &[&str] = &[
    INTERACTION,
    RESOURCE_TYPE,
    ID,
    VERSION_ID,
    OPERATION,
    COMPARTMENT,
    PATIENT,
    POOL,
    BUNDLE_TYPE,
    BUNDLE_ENTRIES,
    AUTHZ_DECISION,
    AUTHZ_REASON,
    SUBJECT,
    CLIENT_ID,
    TENANT,
    LAUNCH_PATIENT,
    SCOPES,
    FHIR_USER,
    PURPOSE_OF_USE,
    BREAK_GLASS,
    BREAK_GLASS_USER,
    RL_CLASS,
    RL_TENANT,
    RL_PRINCIPAL,
    RL_WEIGHT,
];

/// Facts Envoy itself reads from request headers (its rate-limit descriptors and the weight
/// its `set_filter_state` filter copies): set as headers, and removed by the shipped routes
/// (`request_headers_to_remove`) before the request goes upstream.
pub const FOR_ENVOY: &[&str] = &[RL_CLASS, RL_TENANT, RL_PRINCIPAL, RL_WEIGHT];

/// Facts the upstream receives as request headers: who is asking, with what grant, and how the
/// gateway decided (report-only rollouts and emergency access included; the break-glass user
/// is always the subject, so it stays inside). The routing stage's
/// parse stays inside the gateway: the upstream parses its own requests.
pub const FOR_UPSTREAM: &[&str] = &[
    SUBJECT,
    CLIENT_ID,
    TENANT,
    FHIR_USER,
    LAUNCH_PATIENT,
    SCOPES,
    PURPOSE_OF_USE,
    AUTHZ_DECISION,
    AUTHZ_REASON,
    BREAK_GLASS,
];

/// Whether a fact leaves the gateway as a request header.
pub fn is_exported(name: &str) -> bool {
    FOR_ENVOY.contains(&name) || FOR_UPSTREAM.contains(&name)
}

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

    #[test]
    fn exports_only_envoys_descriptors_and_the_upstream_identity() {
        for name in FACTS {
            assert!(is_internal(name), "{name}");
        }
        let exported: Vec<_> = FACTS.iter().filter(|n| is_exported(n)).collect();
        assert_eq!(exported.len(), FOR_ENVOY.len() + FOR_UPSTREAM.len());
        for name in [
            INTERACTION,
            RESOURCE_TYPE,
            ID,
            VERSION_ID,
            OPERATION,
            COMPARTMENT,
            PATIENT,
            POOL,
            BUNDLE_TYPE,
            BUNDLE_ENTRIES,
        ] {
            assert!(!is_exported(name), "{name}");
        }
    }
}
