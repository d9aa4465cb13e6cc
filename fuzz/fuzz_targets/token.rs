//! Bearer token verification against inline RSA, P-256 and Ed25519 keys.
#![no_main]
use fhirgate_fuzz::{authz, NOW};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let verifier = &authz(false).verifier;
    let _ = verifier.claimed_issuer(token);
    let _ = verifier.verify(token, NOW);
});
