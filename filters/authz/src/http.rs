//! Per-request context: carries the core's steps (head, request body, response body), and
//! pauses a request whose signing key is unknown while the issuer's JWKS is fetched once.

use crate::root::{dispatch_jwks_fetch, finish_jwks_fetch, FILTER};
use fhirgate_core::pipeline::{Facts, Flow, RequestState, Stage};
use fhirgate_core::routing::{RequestHead, RoutedRequest};
use fhirgate_core::smart::filter::{AuthzFilterPolicy, AuthzRuntime, Exchange, Step};
use fhirgate_core::Rejection;
use fhirgate_proxy::{host, reject, RequestHeaders, SharedData};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

const INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(3);

/// What a paused request waits for.
#[derive(Clone, Copy)]
enum Waiting {
    /// The JWKS of this issuer, for a key the token names and we do not have.
    Jwks(usize),
    /// The introspection endpoint's word on an opaque token.
    Introspection,
}

/// The request head, kept while a call is under way.
struct HeldHead {
    method: String,
    path: String,
    content_type: Option<String>,
    content_length: Option<String>,
    has_body: bool,
    if_none_exist: bool,
    method_override: bool,
    authorization: Option<String>,
    forwarded: Option<String>,
    peer: Option<String>,
    /// The request as the routing stage of this module parsed it.
    routed: Option<RoutedRequest>,
}

impl HeldHead {
    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            path: &self.path,
            content_type: self.content_type.as_deref(),
            content_length: self.content_length.as_deref(),
            has_body: self.has_body,
            if_none_exist: self.if_none_exist,
            method_override: self.method_override,
        }
    }
}

pub struct AuthzFilter {
    runtime: Option<Rc<RefCell<AuthzRuntime>>>,
    exchange: Option<Exchange>,
    awaiting_request_body: bool,
    holding_response: bool,
    /// Set while a call this request waits on is under way: its token, what it is, the head.
    waiting: Option<(u32, Waiting, HeldHead)>,
    /// Body seen while refreshing: its size and whether it was complete.
    held_body: (usize, bool),
    /// The call reading the resource a write under patient/ scopes changes.
    current_call: Option<u32>,
    /// A completed bulk export's manifest is being read, to bind its files to the client.
    reading_manifest: bool,
}

impl AuthzFilter {
    pub fn new(runtime: Option<Rc<RefCell<AuthzRuntime>>>) -> Self {
        AuthzFilter {
            runtime,
            exchange: None,
            awaiting_request_body: false,
            holding_response: false,
            waiting: None,
            held_body: (0, false),
            current_call: None,
            reading_manifest: false,
        }
    }

    /// Applies a step, turning a key refresh that cannot happen (or did not find the key)
    /// into the core's refusal for it.
    fn settle(&mut self, facts: &mut Facts, step: Step, authorization: Option<&str>) -> Flow {
        let step = match (step, &self.runtime, &self.exchange) {
            (Step::RefreshKeys, Some(runtime), Some(exchange)) => {
                runtime.borrow().unknown_key_step(authorization, exchange)
            }
            (step, _, _) => step,
        };
        self.apply(facts, step)
    }

    fn apply(&mut self, facts: &mut Facts, step: Step) -> Flow {
        match step {
            Step::Allow { headers, path } => {
                self.set_zone_purpose(facts);
                if let Some(path) = path {
                    host::set_request_header(":path", Some(&path));
                    fhirgate_proxy::count(FILTER, "allowed", "narrowed");
                } else {
                    fhirgate_proxy::count(FILTER, "allowed", "");
                }
                facts.extend(&headers);
                Flow::Continue
            }
            Step::Deny(rejection) => {
                // The audit filter records who was refused, when the token verified.
                if let (Some(runtime), Some(exchange)) = (&self.runtime, &self.exchange) {
                    let identity = runtime.borrow().policy.refusal_identity(exchange);
                    if !identity.is_empty() {
                        facts.extend(&identity);
                    }
                }
                reject(FILTER, &rejection)
            }
            Step::WaitRequestBody => {
                self.awaiting_request_body = true;
                Flow::Pause
            }
            Step::WaitResponseBody { headers, path } => {
                self.set_zone_purpose(facts);
                if let Some(path) = path {
                    host::set_request_header(":path", Some(&path));
                    fhirgate_proxy::count(FILTER, "allowed", "narrowed");
                }
                facts.extend(&headers);
                // The response must come whole and readable: no 304 for a resource never
                // checked, no compressed body.
                for name in fhirgate_core::headers::CONDITIONAL_READ
                    .iter()
                    .chain(&["accept-encoding"])
                {
                    host::set_request_header(name, None);
                }
                self.holding_response = true;
                Flow::Continue
            }
            // Only returned for a held response.
            Step::Reduce(rejection) => reject(FILTER, &rejection),
            Step::FetchCurrent { path } => self.fetch_current(&path),
            Step::CheckCdsReplay => self.with_shared_data(
                facts,
                "cds_client",
                ("verified", "replayed"),
                |policy, ex, now| policy.check_cds_replay(ex, &mut SharedData, now),
            ),
            Step::CheckJob => self.with_shared_data(
                facts,
                "bulk_job",
                ("bound", "refused"),
                |policy, ex, now| policy.check_job(ex, &SharedData, now),
            ),
            Step::ReportOnly { reason, headers } => {
                log::info!("{FILTER}: report-only, not enforced: {reason}");
                fhirgate_proxy::count(FILTER, "report_only", reason);
                facts.extend(&headers);
                Flow::Continue
            }
            // Settled before apply (see `settle`).
            Step::RefreshKeys => reject(FILTER, &Rejection::not_configured(FILTER)),
            // Only returned before introspection; after it the token is cached.
            Step::Introspect => reject(FILTER, &Rejection::not_configured(FILTER)),
        }
    }

    /// A purpose of use asserted in the header of a trust zone that allows it (when the token
    /// asserts none), as the fact the consent and audit stages read.
    fn set_zone_purpose(&self, facts: &mut Facts) {
        let (Some(runtime), Some(exchange)) = (&self.runtime, &self.exchange) else {
            return;
        };
        let runtime = runtime.borrow();
        let Some(name) = runtime.policy.zone_purpose_header(exchange) else {
            return;
        };
        let value = host::request_header(name);
        if let Some((name, code)) = runtime.policy.zone_purpose(exchange, value.as_deref()) {
            facts.set(name, code);
        }
    }

    /// A step the core decides with Envoy's shared data (CDS jti replay, bulk job bindings):
    /// decided, counted under `event` as passed or refused, then applied.
    fn with_shared_data(
        &mut self,
        facts: &mut Facts,
        event: &'static str,
        (passed, refused): (&'static str, &'static str),
        decide: impl FnOnce(&AuthzFilterPolicy, &mut Exchange, i64) -> Step,
    ) -> Flow {
        let now = host::now_secs();
        let (Some(runtime), Some(exchange)) = (self.runtime.clone(), self.exchange.as_mut()) else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let step = decide(&runtime.borrow().policy, exchange, now);
        fhirgate_proxy::count(
            FILTER,
            event,
            if matches!(step, Step::Deny(_)) {
                refused
            } else {
                passed
            },
        );
        self.apply(facts, step)
    }

    /// Reads the resource a write changes through the `currentResource` cluster; the request
    /// waits for [`Stage::call_response`].
    fn fetch_current(&mut self, path: &str) -> Flow {
        let source = self
            .runtime
            .as_ref()
            .and_then(|r| r.borrow().policy.current_resource.clone());
        let Some(source) = source else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let timeout = Duration::from_millis(source.timeout_ms);
        match fhirgate_proxy::dispatch_get(
            &source.cluster,
            &source.authority,
            path,
            "application/fhir+json",
            timeout,
        ) {
            Ok(token) => {
                self.current_call = Some(token);
                Flow::Pause
            }
            Err(_) => {
                fhirgate_proxy::count(FILTER, "current_resource", "unavailable");
                reject(FILTER, &fhirgate_core::smart::authz::current_unavailable())
            }
        }
    }

    /// The mTLS peer's URI SAN, which selects the trust zone (asked only when zones are
    /// configured: a host call per request otherwise spent for nothing).
    fn peer_uri_san(&self) -> Option<String> {
        let zoned = self
            .runtime
            .as_ref()
            .is_some_and(|r| !r.borrow().policy.zones.is_empty());
        if !zoned {
            return None;
        }
        fhirgate_proxy::property_text(vec!["connection", "uri_san_peer_certificate"])
            .filter(|s| !s.is_empty())
    }

    /// Pauses the request until `token_id` answers.
    fn wait_for(
        &mut self,
        token_id: u32,
        what: Waiting,
        head: &RequestHead,
        authorization: Option<&str>,
        forwarded: Option<&str>,
        routed: Option<RoutedRequest>,
    ) -> Flow {
        let held = HeldHead {
            method: head.method.to_string(),
            path: head.path.to_string(),
            content_type: head.content_type.map(str::to_string),
            content_length: head.content_length.map(str::to_string),
            has_body: head.has_body,
            if_none_exist: head.if_none_exist,
            method_override: head.method_override,
            authorization: authorization.map(str::to_string),
            forwarded: forwarded.map(str::to_string),
            peer: self.peer_uri_san(),
            routed,
        };
        self.waiting = Some((token_id, what, held));
        Flow::Pause
    }

    fn decide_body(&mut self, facts: &mut Facts, body_size: usize) -> Flow {
        self.awaiting_request_body = false;
        let (Some(runtime), Some(mut exchange)) = (self.runtime.clone(), self.exchange.take())
        else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let body = host::request_body(body_size);
        let step = runtime
            .borrow()
            .policy
            .on_request_body(&mut exchange, &body);
        self.exchange = Some(exchange);
        self.apply(facts, step)
    }
}

impl Stage for AuthzFilter {
    fn call_response(
        &mut self,
        state: &mut RequestState,
        token_id: u32,
        body_size: usize,
    ) -> Option<Flow> {
        let runtime = self.runtime.clone()?;
        if self.current_call == Some(token_id) {
            self.current_call = None;
            let (status, body) = fhirgate_proxy::call_answer(body_size);
            let status = status.unwrap_or(0);
            let step = match &self.exchange {
                Some(exchange) => runtime
                    .borrow()
                    .policy
                    .on_current_resource(exchange, status, &body),
                None => Step::Deny(Rejection::not_configured(FILTER)),
            };
            fhirgate_proxy::count(
                FILTER,
                "current_resource",
                if status == 200 { "read" } else { "missing" },
            );
            return Some(self.apply(&mut state.facts, step));
        }
        let (token, what, held) = self.waiting.take()?;
        if token != token_id {
            self.waiting = Some((token, what, held));
            return None;
        }
        let now = host::now_secs();
        match what {
            Waiting::Jwks(issuer) => finish_jwks_fetch(&runtime, issuer, body_size, now),
            Waiting::Introspection => {
                let (status, body) = fhirgate_proxy::call_answer(body_size);
                let answer = runtime.borrow_mut().introspected(
                    held.authorization.as_deref(),
                    status,
                    &body,
                    now,
                );
                fhirgate_proxy::count(
                    FILTER,
                    "introspection",
                    if answer.is_ok() { "active" } else { "refused" },
                );
                if let Err(rejection) = answer {
                    return Some(reject(FILTER, &rejection));
                }
            }
        }
        let (step, exchange) = runtime.borrow_mut().on_routed_head(
            &held.head(),
            held.routed.clone(),
            held.authorization.as_deref(),
            held.forwarded.as_deref(),
            held.peer.as_deref(),
            now,
        );
        self.exchange = Some(exchange);
        let (size, complete) = self.held_body;
        let flow = match self.settle(&mut state.facts, step, held.authorization.as_deref()) {
            // The body arrived while the key was fetched: decide on it now.
            Flow::Pause if self.awaiting_request_body && complete => {
                self.decide_body(&mut state.facts, size)
            }
            other => other,
        };
        Some(flow)
    }

    fn request_headers(&mut self, state: &mut RequestState, end_of_stream: bool) -> Flow {
        let Some(runtime) = self.runtime.clone() else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let headers = RequestHeaders::read();
        let head = headers.head(end_of_stream);
        let authorization = headers.get("authorization");
        let forwarded = runtime
            .borrow()
            .policy
            .jwt_authn_header
            .as_deref()
            .and_then(|h| headers.get(h));
        if forwarded.is_some() {
            // jwt_authn's copy of the token's payload is for this stage only.
            if let Some(name) = runtime.borrow().policy.jwt_authn_header.as_deref() {
                host::set_request_header(name, None);
            }
        }
        let now = host::now_secs();
        let (hits, misses) = {
            let r = runtime.borrow();
            (r.cache.hits, r.cache.misses)
        };
        let peer = self.peer_uri_san();
        let (step, exchange) = runtime.borrow_mut().on_routed_head(
            &head,
            state.routed.clone(),
            authorization,
            forwarded,
            peer.as_deref(),
            now,
        );
        let r = runtime.borrow();
        if r.cache.hits > hits {
            fhirgate_proxy::count(FILTER, "token_cache", "hit");
        } else if r.cache.misses > misses {
            fhirgate_proxy::count(FILTER, "token_cache", "miss");
        }
        drop(r);
        if step == Step::Introspect {
            let known = runtime.borrow_mut().known_inactive(authorization, now);
            if let Some(rejection) = known {
                return reject(FILTER, &rejection);
            }
            let Some((cluster, call_headers, body)) =
                runtime.borrow().introspection_request(authorization)
            else {
                return reject(FILTER, &Rejection::not_configured(FILTER));
            };
            let pairs: Vec<(&str, &str)> =
                call_headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            return match host::dispatch(&cluster, pairs, Some(&body), INTROSPECTION_TIMEOUT) {
                Ok(token) => self.wait_for(
                    token,
                    Waiting::Introspection,
                    &head,
                    authorization,
                    forwarded,
                    state.routed.clone(),
                ),
                Err(_) => {
                    let answer = runtime
                        .borrow_mut()
                        .introspected(authorization, None, b"", now);
                    reject(
                        FILTER,
                        &answer
                            .err()
                            .unwrap_or_else(|| Rejection::not_configured(FILTER)),
                    )
                }
            };
        }
        if step == Step::RefreshKeys {
            let fetch = runtime
                .borrow_mut()
                .fetch_for_unknown_key(authorization, now);
            if let Some(fetch) = fetch {
                if let Some(token) = dispatch_jwks_fetch(&fetch) {
                    return self.wait_for(
                        token,
                        Waiting::Jwks(fetch.0),
                        &head,
                        authorization,
                        forwarded,
                        state.routed.clone(),
                    );
                }
                runtime.borrow_mut().fetched(fetch.0, now, None, b"");
            }
        }
        self.exchange = Some(exchange);
        self.settle(&mut state.facts, step, authorization)
    }

    fn request_body(
        &mut self,
        state: &mut RequestState,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if self.waiting.is_some() {
            self.held_body = (body_size, end_of_stream);
            return Flow::Pause;
        }
        // The write waits for the resource it changes: a body event (even an empty final one)
        // must not let it go before that read decided it.
        if self.current_call.is_some() {
            return Flow::Pause;
        }
        if !self.awaiting_request_body {
            return Flow::Continue;
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        self.decide_body(&mut state.facts, body_size)
    }

    fn response_headers(&mut self, _state: &mut RequestState, end_of_stream: bool) -> Flow {
        let watched = self
            .exchange
            .as_ref()
            .is_some_and(|ex| ex.bulk_response_matters());
        if let (true, Some(runtime), Some(exchange)) =
            (watched, self.runtime.clone(), self.exchange.as_ref())
        {
            let status = host::response_status();
            let location = host::response_header("content-location");
            let now = host::now_secs();
            let policy = &runtime.borrow().policy;
            if policy.bind_export(exchange, status, location.as_deref(), &mut SharedData, now) {
                fhirgate_proxy::count(FILTER, "bulk_job", "started");
            }
            let content_type = host::response_header("content-type").unwrap_or_default();
            if policy.reads_manifest(exchange, status, &content_type) && !end_of_stream {
                self.reading_manifest = true;
                return Flow::Pause;
            }
        }
        if self.holding_response && !end_of_stream {
            // Held until the body shows whose resource this is.
            return Flow::Pause;
        }
        Flow::Continue
    }

    fn response_body(
        &mut self,
        _state: &mut RequestState,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if self.reading_manifest {
            if !end_of_stream {
                return Flow::Pause;
            }
            self.reading_manifest = false;
            let body = host::response_body(body_size);
            if let (Some(runtime), Some(exchange)) = (self.runtime.clone(), self.exchange.as_ref())
            {
                let bound = runtime.borrow().policy.bind_manifest(
                    exchange,
                    &body,
                    &mut SharedData,
                    host::now_secs(),
                );
                log::debug!("{FILTER}: bound {bound} bulk file URLs");
            }
            return Flow::Continue;
        }
        if !self.holding_response {
            return Flow::Continue;
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        self.holding_response = false;
        let (Some(runtime), Some(exchange)) = (self.runtime.clone(), self.exchange.as_ref()) else {
            return Flow::Continue;
        };
        let status = host::response_status();
        // The consent filter (nearer the upstream) may have refused the answer already: its
        // refusal is the gateway's own, PHI-free, and keeps its reason.
        if status >= 400 && fhirgate_proxy::refused_by_gateway() {
            return Flow::Continue;
        }
        let body = host::response_body(body_size);
        let encoding = host::response_header("content-encoding");
        let step =
            runtime
                .borrow()
                .policy
                .on_response_body(exchange, status, encoding.as_deref(), &body);
        match step {
            Step::Deny(rejection) => {
                fhirgate_proxy::count(FILTER, "denied", rejection.reason);
                fhirgate_proxy::replace_response(FILTER, &rejection, body_size);
            }
            Step::Reduce(rejection) => {
                fhirgate_proxy::count(FILTER, "reduced", rejection.reason);
                fhirgate_proxy::replace_response(FILTER, &rejection, body_size);
            }
            Step::ReportOnly { reason, .. } => fhirgate_proxy::count(FILTER, "report_only", reason),
            _ => {}
        }
        Flow::Continue
    }
}
