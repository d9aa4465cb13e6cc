//! The audit chain verifier, two ways. Input byte 0 even: the rest is a log as an attacker
//! might hand it to `fhirgate audit verify`. Odd: the rest are the request's facts (`\0`
//! separated), made into a record, sealed, written as a line and into an AuditEvent — the
//! sealed line must verify, and must stop verifying when one byte of it changes.
#![no_main]
use fhirgate_core::audit::chain::{verify, Chain};
use fhirgate_core::audit::{fhir, record, Facts};
use fhirgate_fuzz::{fields, text, HMAC_KEY};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let keys = HashMap::from([("k1".to_string(), HMAC_KEY.to_vec())]);
    if mode % 2 == 0 {
        if let Some(log) = text(rest) {
            let _ = verify(log, &keys);
        }
        return;
    }
    let [method, interaction, kind, id, subject, scopes, user_agent, status, edit] = fields::<9>(rest);
    let opt = |f: &[u8]| -> Option<String> { text(f).filter(|s| !s.is_empty()).map(str::to_string) };
    let (method, interaction, kind, id, subject, scopes, user_agent) =
        (opt(method), opt(interaction), opt(kind), opt(id), opt(subject), opt(scopes), opt(user_agent));
    let facts = Facts {
        method: method.as_deref(),
        interaction: interaction.as_deref(),
        resource_type: kind.as_deref(),
        resource_id: id.as_deref(),
        subject: subject.as_deref(),
        scopes: scopes.as_deref(),
        user_agent: user_agent.as_deref(),
        status: status.iter().fold(0u16, |s, b| s.wrapping_mul(31).wrapping_add(u16::from(*b))),
        ..Facts::default()
    };
    let sealed = Chain::new("s1", "k1", HMAC_KEY.to_vec()).seal(record(&facts, "/fhir/r4", None));
    let _ = fhir::audit_event(&sealed);
    let Ok(line) = serde_json::to_string(&sealed) else { return };
    assert_eq!(verify(&line, &keys).ok(), Some(1), "a sealed record does not verify: {line}");
    // Change one byte inside a value (never the JSON's structure): the record must not verify.
    let (Some(&at), Some(&to)) = (edit.first(), edit.get(1)) else { return };
    let bytes = line.as_bytes();
    let positions: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i].is_ascii_alphanumeric()).collect();
    if positions.is_empty() || !to.is_ascii_alphanumeric() {
        return;
    }
    let i = positions[usize::from(at) % positions.len()];
    if bytes[i] == to {
        return;
    }
    let mut edited = bytes.to_vec();
    edited[i] = to;
    if let Ok(edited) = String::from_utf8(edited) {
        if serde_json::from_str::<serde_json::Value>(&edited).is_ok() {
            assert!(verify(&edited, &keys).is_err(), "an edited record verifies: {edited}");
        }
    }
});
