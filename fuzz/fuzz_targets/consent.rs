//! Response filtering: security labels, Consent provisions, Bundles of every shape, gzip.
//! Input: `response body \0 the patients' Consents (a JSON array) \0 flags`; flag bits:
//! 1 purpose TREAT, 2 break-glass, 4 a single read, 8 the body is gzip-encoded.
//! Checks: whatever the byte-scan fast path releases, the full filter leaves unchanged; a
//! rewritten response is JSON again.
#![no_main]
use fhirgate_core::consent::{Caller, Consents, FastPath, Filtered, Report};
use fhirgate_fuzz::{consent, fields, NOW_RFC3339};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let [body, consents, flags] = fields::<3>(data);
    let flags = flags.first().copied().unwrap_or(0);
    let policy = consent();
    let decoded;
    let body = if flags & 8 != 0 {
        match policy.decode(Some("gzip"), body) {
            Ok(d) => {
                decoded = d;
                &decoded[..]
            }
            Err(_) => return,
        }
    } else {
        body
    };
    let list: Vec<Value> = serde_json::from_slice(consents).unwrap_or_default();
    let lookup = |_: &str| Consents::Known(&list);
    let caller = Caller {
        subject: Some("Practitioner/1"),
        client_id: Some("app"),
        purpose: (flags & 1 != 0).then_some("TREAT"),
        break_glass: flags & 2 != 0,
        now: NOW_RFC3339,
    };
    let released = policy.fast_path(body, &|id| Some(lookup(id))) == FastPath::Release;
    let mut report = Report::default();
    match policy.filter(body, &caller, flags & 4 != 0, &lookup, &mut report) {
        Filtered::Unchanged => {}
        Filtered::Rewritten(out) => {
            assert!(!released, "the fast path released a response the filter rewrote");
            assert!(serde_json::from_slice::<Value>(&out).is_ok(), "a rewritten response is not JSON");
        }
        Filtered::Refused(_) => assert!(!released, "the fast path released a response the filter refused"),
    }
});
