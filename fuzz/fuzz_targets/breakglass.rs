//! Break-glass tokens: shape, MAC, expiry, and the nonce ledger (a token is honoured once).
#![no_main]
use fhirgate_core::ratelimit::breakglass::BreakGlassVerifier;
use fhirgate_core::ratelimit::bucket::MemoryStore;
use fhirgate_fuzz::{HMAC_KEY, NOW};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let verifier = BreakGlassVerifier::new(HashMap::from([("k1".to_string(), HMAC_KEY.to_vec())]));
    let mut ledger = MemoryStore::default();
    if verifier.verify(token, NOW, &mut ledger).is_ok() {
        assert!(verifier.verify(token, NOW, &mut ledger).is_err(), "a break-glass token was honoured twice");
    }
});
