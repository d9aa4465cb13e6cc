//! Per-request context: reads the head, asks the core, applies its verdict; on the response,
//! adds quota headers, and Retry-After to 429s that Envoy's own limiters answered.

use crate::root::FILTER;
use fhirgate_core::headers;
use fhirgate_core::pipeline::{Flow, RequestState, Stage};
use fhirgate_core::ratelimit::filter::{
    retry_after_for_envoy_429, RateLimitFilterPolicy, RateLimitRequest, Verdict,
};
use fhirgate_core::Rejection;
use fhirgate_proxy::{count, host, reject, RequestHeaders, SharedData};
use std::rc::Rc;

pub struct RateLimitFilter {
    policy: Option<Rc<RateLimitFilterPolicy>>,
    response_headers: Vec<(&'static str, String)>,
}

impl RateLimitFilter {
    pub fn new(policy: Option<Rc<RateLimitFilterPolicy>>) -> Self {
        RateLimitFilter {
            policy,
            response_headers: Vec::new(),
        }
    }

    fn peer(&self) -> Option<String> {
        fhirgate_proxy::property_text(vec!["source", "address"])
    }
}

impl Stage for RateLimitFilter {
    fn request_headers(&mut self, state: &mut RequestState, _end_of_stream: bool) -> Flow {
        let Some(policy) = self.policy.clone() else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let h = RequestHeaders::read();
        let break_glass_header = policy.break_glass_header();
        let break_glass = break_glass_header.and_then(|name| h.get(name));
        // Anonymous traffic is limited per peer address; identified traffic never needs it.
        let facts = &state.facts;
        let peer = if facts.contains(headers::SUBJECT) || facts.contains(headers::CLIENT_ID) {
            None
        } else {
            self.peer()
        };
        let request = RateLimitRequest {
            interaction: facts.get(headers::INTERACTION),
            operation: facts.get(headers::OPERATION),
            path: h.get(":path").unwrap_or_default(),
            subject: facts.get(headers::SUBJECT),
            client_id: facts.get(headers::CLIENT_ID),
            token_tenant: facts.get(headers::TENANT),
            tenant_header: policy.tenant_header().and_then(|name| h.get(name)),
            host: h.get(":authority"),
            peer: peer.as_deref(),
            break_glass,
            bundle_entries: facts.get(headers::BUNDLE_ENTRIES),
        };
        let now_ms = host::now_ms();
        let verdict = policy.decide(&request, &mut SharedData, now_ms);
        if let (Some(name), true) = (break_glass_header, break_glass.is_some()) {
            // The token is a credential: it never travels upstream.
            host::set_request_header(name, None);
        }
        match verdict {
            Verdict::Refuse { class, rejection } => {
                if rejection.status == 429 {
                    count(
                        FILTER,
                        "limited",
                        class.map_or("unclassified", |c| c.name()),
                    );
                }
                if rejection.reason.starts_with("break-glass") {
                    count(FILTER, "break_glass", "refused");
                }
                reject(FILTER, &rejection)
            }
            Verdict::Admit(admitted) => {
                count(FILTER, "requests", admitted.class.name());
                if admitted.break_glass {
                    count(FILTER, "break_glass", "used");
                    log::warn!(
                        "{FILTER}: break-glass access admitted ({} class)",
                        admitted.class.name()
                    );
                }
                state.facts.extend(&admitted.request_headers);
                self.response_headers = admitted.response_headers;
                Flow::Continue
            }
        }
    }

    fn response_headers(&mut self, _state: &mut RequestState, _end_of_stream: bool) -> Flow {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            host::set_response_header(name, Some(&value));
        }
        let status = host::response_header(":status");
        if status.as_deref() == Some("429") {
            let retry = retry_after_for_envoy_429(
                status.as_deref(),
                host::response_header("retry-after").as_deref(),
                host::response_header("x-ratelimit-reset").as_deref(),
            );
            if let Some(seconds) = retry {
                host::set_response_header("retry-after", Some(&seconds));
            }
        }
        Flow::Continue
    }
}
