//! The audit filter's configuration, as Envoy or Istio would hand it to `on_configure`:
//! parsed and compiled, or refused with an error naming a field.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(error) = fhirgate_core::audit::sink::AuditPolicy::from_json(data) {
        assert!(!error.to_string().is_empty());
    }
});
