//! The authorization decision on a request: token payload (as Envoy's jwt_authn forwards it),
//! path, then the request body, response body or current resource the decision may wait for.
//! Input: `method \0 path \0 payload JSON \0 body`.
#![no_main]
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fhirgate_core::ratelimit::bucket::MemoryStore;
use fhirgate_core::routing::RequestHead;
use fhirgate_core::smart::cache::TokenCache;
use fhirgate_core::smart::filter::Step;
use fhirgate_fuzz::{authz, fields, text, NOW};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [method, path, payload, body] = fields::<4>(data);
    let (Some(method), Some(path)) = (text(method), text(path)) else { return };
    let forwarded = URL_SAFE_NO_PAD.encode(payload);
    let length = body.len().to_string();
    let head = RequestHead {
        method,
        path,
        content_type: Some("application/fhir+json"),
        content_length: (!body.is_empty()).then_some(length.as_str()),
        has_body: !body.is_empty(),
        ..RequestHead::default()
    };
    let policy = authz(true);
    let mut cache = TokenCache::new(4);
    let (mut step, mut exchange) = policy.on_head(&head, Some("Bearer a.b.c"), Some(&forwarded), None, NOW, &mut cache);
    let mut store = MemoryStore::default();
    // Follow the steps as a host would, the same bytes standing in for every body asked for.
    for _ in 0..4 {
        step = match step {
            Step::WaitRequestBody => policy.on_request_body(&mut exchange, body),
            Step::WaitResponseBody { .. } => policy.on_response_body(&exchange, 200, None, body),
            Step::FetchCurrent { .. } => policy.on_current_resource(&exchange, 200, body),
            Step::CheckJob => policy.check_job(&mut exchange, &store, NOW),
            Step::CheckCdsReplay => policy.check_cds_replay(&mut exchange, &mut store, NOW),
            _ => break,
        };
    }
});
