//! The routing filter's request parsing: method, path and query, content type, body.
//! Input: `method \0 path \0 content-type \0 body`.
#![no_main]
use fhirgate_core::routing::RequestHead;
use fhirgate_fuzz::{fields, routing, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [method, path, content_type, body] = fields::<4>(data);
    let (Some(method), Some(path), Some(content_type)) = (text(method), text(path), text(content_type)) else { return };
    let length = body.len().to_string();
    let head = RequestHead {
        method,
        path,
        content_type: (!content_type.is_empty()).then_some(content_type),
        content_length: (!body.is_empty()).then_some(length.as_str()),
        has_body: !body.is_empty(),
        if_none_exist: false,
        method_override: false,
    };
    let policy = routing();
    if let Ok(mut routed) = policy.route(&head) {
        if !body.is_empty() {
            let _ = policy.route_body(&mut routed, body);
        }
    }
});
