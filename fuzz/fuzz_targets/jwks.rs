//! JWKS documents as an issuer's endpoint might answer them.
#![no_main]
use fhirgate_core::smart::token::parse_jwks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(jwks) = serde_json::from_slice(data) {
        let _ = parse_jwks(&jwks);
    }
});
