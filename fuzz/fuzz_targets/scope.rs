//! SMART scope parsing (v1, v2, granular), whole `scope` claims.
#![no_main]
use fhirgate_core::smart::scope::parse_all;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(scopes) = std::str::from_utf8(data) {
        for (text, parsed) in parse_all(scopes) {
            // A parsed scope came from text that was in the claim.
            assert!(parsed.is_err() || scopes.contains(text.as_str()));
        }
    }
});
