//! Per-request context: reads the head, calls the core, buffers a body when the core asks.

use crate::root::FILTER;
use fhirgate_core::routing::{RoutedRequest, RoutingPolicy};
use fhirgate_core::Rejection;
use fhirgate_proxy::{mark_passed, reject, set_routing_headers, RequestHeaders};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;

pub struct RoutingFilter {
    policy: Option<Rc<RoutingPolicy>>,
    /// A request accepted on its head, waiting for its whole body.
    pending: Option<RoutedRequest>,
}

impl RoutingFilter {
    pub fn new(policy: Option<Rc<RoutingPolicy>>) -> Self {
        RoutingFilter {
            policy,
            pending: None,
        }
    }

    fn finish_body(&mut self, policy: &RoutingPolicy, body_size: usize) -> Action {
        let Some(mut routed) = self.pending.take() else {
            return Action::Continue;
        };
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match policy.route_body(&mut routed, &body) {
            Ok(()) => {
                mark_passed(FILTER);
                set_routing_headers(&routed.headers());
                fhirgate_proxy::count(FILTER, "routed", routed.interaction.name());
                Action::Continue
            }
            Err(rejection) => reject(FILTER, &rejection),
        }
    }
}

impl Context for RoutingFilter {}

impl HttpContext for RoutingFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = RequestHeaders::read();
        headers.strip_internal();
        let Some(policy) = self.policy.clone() else {
            // Unreachable with a refused config; fail closed all the same.
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let head = headers.head(end_of_stream);
        match policy.route(&head) {
            Err(rejection) => reject(FILTER, &rejection),
            Ok(routed) if routed.awaiting_body => {
                self.pending = Some(routed);
                Action::Pause
            }
            Ok(routed) => {
                mark_passed(FILTER);
                set_routing_headers(&routed.headers());
                fhirgate_proxy::count(FILTER, "routed", routed.interaction.name());
                Action::Continue
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(policy) = self.policy.clone() else {
            return Action::Continue;
        };
        if self.pending.is_none() {
            return Action::Continue;
        }
        if let Err(rejection) = policy.check_body_size(body_size) {
            self.pending = None;
            return reject(FILTER, &rejection);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.finish_body(&policy, body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // A body followed by trailers never sees end_of_stream in the body callback.
        let Some(policy) = self.policy.clone() else {
            return Action::Continue;
        };
        let size = self
            .get_http_request_body(0, policy.max_body_bytes() + 1)
            .map_or(0, |b| b.len());
        self.finish_body(&policy, size)
    }
}
