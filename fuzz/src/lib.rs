//! What the fuzz targets share: the shipped configurations compiled once, the test keys, and
//! the input format. Structured inputs are fields separated by NUL bytes (which no HTTP header
//! may carry), so seed files stay readable and the fuzzer can still put anything in a field.

use fhirgate_core::consent::ConsentPolicy;
use fhirgate_core::routing::RoutingPolicy;
use fhirgate_core::smart::filter::AuthzFilterPolicy;
use serde_json::{json, Value};
use std::sync::OnceLock;

/// The instant the targets evaluate at (2027-01-15), inside the seed tokens' validity.
pub const NOW: i64 = 1_800_000_000;
pub const NOW_RFC3339: &str = "2027-01-15T08:00:00Z";
/// The HMAC key of the break-glass and audit-chain targets.
pub const HMAC_KEY: &[u8] = b"fuzzing-key-0123456789abcdef0123";

/// Splits `data` at NUL bytes into exactly `N` fields (missing ones empty, the last keeps
/// any further NULs).
pub fn fields<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&data[..0]; N];
    let mut rest = data;
    for (i, slot) in out.iter_mut().enumerate() {
        if i + 1 == N {
            *slot = rest;
            break;
        }
        match rest.iter().position(|&b| b == 0) {
            Some(at) => {
                *slot = &rest[..at];
                rest = &rest[at + 1..];
            }
            None => {
                *slot = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    out
}

/// A field as text, as Envoy hands header values to a filter (invalid UTF-8 never arrives).
pub fn text(field: &[u8]) -> Option<&str> {
    std::str::from_utf8(field).ok()
}

fn shipped(name: &str) -> Value {
    let text = match name {
        "routing" => include_str!("../../envoy/routing.json"),
        "authz" => include_str!("../../envoy/authz.json"),
        "consent" => include_str!("../../envoy/consent.json"),
        _ => "{}",
    };
    serde_json::from_str(text).unwrap_or_default()
}

pub fn routing() -> &'static RoutingPolicy {
    static POLICY: OnceLock<RoutingPolicy> = OnceLock::new();
    POLICY.get_or_init(|| RoutingPolicy::from_json(shipped("routing").to_string().as_bytes()).expect("envoy/routing.json compiles"))
}

/// The shipped authorization policy with one issuer whose keys are `data/jwks.json`
/// (`jwt_authn`: Envoy verified the token and forwards its payload).
pub fn authz(jwt_authn: bool) -> &'static AuthzFilterPolicy {
    static VERIFYING: OnceLock<AuthzFilterPolicy> = OnceLock::new();
    static FORWARDED: OnceLock<AuthzFilterPolicy> = OnceLock::new();
    let cell = if jwt_authn { &FORWARDED } else { &VERIFYING };
    cell.get_or_init(|| {
        let mut config = shipped("authz");
        let jwks: Value = serde_json::from_str(include_str!("../data/jwks.json")).expect("data/jwks.json is JSON");
        config["issuers"] = json!([{"issuer": "https://idp.example", "audiences": ["https://gw.example/fhir/r4"],
                                    "algorithms": ["RS256", "ES256", "EdDSA"], "jwks": jwks, "requiredClaims": ["sub"]}]);
        if jwt_authn {
            config["jwtAuthn"] = json!({"payloadHeader": "x-fhirgate-jwt-payload"});
        }
        AuthzFilterPolicy::from_json(config.to_string().as_bytes()).expect("the fuzzing authz config compiles")
    })
}

pub fn consent() -> &'static ConsentPolicy {
    static POLICY: OnceLock<ConsentPolicy> = OnceLock::new();
    POLICY.get_or_init(|| ConsentPolicy::from_json(shipped("consent").to_string().as_bytes()).expect("envoy/consent.json compiles"))
}
