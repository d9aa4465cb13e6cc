//! Per-request context: reads the head, calls the core, buffers a body when the core asks.

use crate::root::FILTER;
use fhirgate_core::pipeline::{Flow, RequestState, Stage};
use fhirgate_core::routing::{RoutedRequest, RoutingPolicy};
use fhirgate_core::Rejection;
use fhirgate_proxy::{host, reject, RequestHeaders};
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

    fn finish_body(
        &mut self,
        state: &mut RequestState,
        policy: &RoutingPolicy,
        body_size: usize,
    ) -> Flow {
        let Some(mut routed) = self.pending.take() else {
            return Flow::Continue;
        };
        let body = host::request_body(body_size);
        match policy.route_body(&mut routed, &body) {
            Ok(()) => {
                state.facts.extend(&routed.facts());
                fhirgate_proxy::count(FILTER, "routed", routed.interaction.name());
                state.routed = Some(routed);
                Flow::Continue
            }
            Err(rejection) => reject(FILTER, &rejection),
        }
    }
}

impl Stage for RoutingFilter {
    fn request_headers(&mut self, state: &mut RequestState, end_of_stream: bool) -> Flow {
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
                Flow::Pause
            }
            Ok(routed) => {
                state.facts.extend(&routed.facts());
                fhirgate_proxy::count(FILTER, "routed", routed.interaction.name());
                state.routed = Some(routed);
                Flow::Continue
            }
        }
    }

    fn request_body(
        &mut self,
        state: &mut RequestState,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        let Some(policy) = self.policy.clone() else {
            return Flow::Continue;
        };
        if self.pending.is_none() {
            return Flow::Continue;
        }
        if let Err(rejection) = policy.check_body_size(body_size) {
            self.pending = None;
            return reject(FILTER, &rejection);
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        self.finish_body(state, &policy, body_size)
    }
}
