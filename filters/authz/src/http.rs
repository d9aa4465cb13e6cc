//! Per-request context: carries the core's steps (head, request body, response body).

use crate::root::FILTER;
use fhirgate_core::headers as internal;
use fhirgate_core::routing::RequestHead;
use fhirgate_core::smart::cache::TokenCache;
use fhirgate_core::smart::filter::{AuthzFilterPolicy, Exchange, Step};
use fhirgate_core::Rejection;
use fhirgate_proxy::{reject, set_routing_headers, RequestHeaders};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

pub struct AuthzFilter {
    policy: Option<Rc<AuthzFilterPolicy>>,
    cache: Option<Rc<RefCell<TokenCache>>>,
    exchange: Option<Exchange>,
    awaiting_request_body: bool,
    holding_response: bool,
}

impl AuthzFilter {
    pub fn new(policy: Option<Rc<AuthzFilterPolicy>>, cache: Option<Rc<RefCell<TokenCache>>>) -> Self {
        AuthzFilter { policy, cache, exchange: None, awaiting_request_body: false, holding_response: false }
    }

    fn now(&self) -> i64 {
        self.get_current_time().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
    }

    fn apply(&mut self, step: Step) -> Action {
        match step {
            Step::Allow { headers, path } => {
                if let Some(path) = path {
                    self.set_http_request_header(":path", Some(&path));
                }
                set_routing_headers(&headers);
                Action::Continue
            }
            Step::Deny(rejection) => reject(FILTER, &rejection),
            Step::WaitRequestBody => {
                self.awaiting_request_body = true;
                Action::Pause
            }
            Step::WaitResponseBody { headers } => {
                set_routing_headers(&headers);
                self.holding_response = true;
                Action::Continue
            }
        }
    }

    /// Replaces a held response with the rejection (headers are still held, so the status
    /// can change).
    fn replace_response(&mut self, rejection: &Rejection, body_size: usize) {
        log::debug!("{FILTER}: response refused ({} {})", rejection.status, rejection.reason);
        self.set_http_response_header(":status", Some(&rejection.status.to_string()));
        self.set_http_response_header("content-length", None);
        self.set_http_response_header("content-encoding", None);
        for (name, value) in rejection.response_headers() {
            self.set_http_response_header(name, Some(&value));
        }
        self.set_http_response_body(0, body_size, &rejection.body());
    }
}

impl Context for AuthzFilter {}

impl HttpContext for AuthzFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let (Some(policy), Some(cache)) = (self.policy.clone(), self.cache.clone()) else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let headers = RequestHeaders::read();
        let head = RequestHead {
            method: headers.get(":method").unwrap_or_default(),
            path: headers.get(":path").unwrap_or_default(),
            content_type: headers.get("content-type"),
            content_length: headers.get("content-length"),
            has_body: !end_of_stream,
            if_none_exist: headers.contains("if-none-exist"),
            method_override: internal::METHOD_OVERRIDE.iter().any(|h| headers.contains(h)),
        };
        let now = self.now();
        let (step, exchange) = policy.on_head(&head, headers.get("authorization"), now, &mut cache.borrow_mut());
        self.exchange = Some(exchange);
        self.apply(step)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.awaiting_request_body {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.awaiting_request_body = false;
        let (Some(policy), Some(mut exchange)) = (self.policy.clone(), self.exchange.take()) else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let step = policy.on_request_body(&mut exchange, &body);
        self.exchange = Some(exchange);
        self.apply(step)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.holding_response && !end_of_stream {
            // Held until the body shows whose resource this is.
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.holding_response {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.holding_response = false;
        let (Some(policy), Some(exchange)) = (self.policy.clone(), self.exchange.as_ref()) else { return Action::Continue };
        let status = self.get_http_response_header(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = self.get_http_response_body(0, body_size).unwrap_or_default();
        if let Step::Deny(rejection) = policy.on_response_body(exchange, status, &body) {
            self.replace_response(&rejection, body_size);
        }
        Action::Continue
    }
}
