//! `fhirgate.wasm`, the one module: its configuration names the stages it runs
//! ([`fhirgate_core::pipeline::module_sections`]).
//!
//! - **Fused** (all five sections): one filter, one HTTP context per request; the stages run
//!   in pipeline order inside it ([`fhirgate_core::pipeline::Sequencer`]), so a request costs
//!   one context, one set of VM calls and one VM.
//! - **Separate filters** (one section each, the design card): five filters of the same
//!   module and `vm_id` share one VM per worker.
//!
//! This crate only translates: Envoy's callbacks go to the sequencer, the stages' roots get
//! their configuration sections, ticks and call answers. Between filters of the module it
//! hands the stages' facts on (one filter-state value) and sets the few facts that leave as
//! headers ([`fhirgate_core::headers::FOR_ENVOY`], [`fhirgate_core::headers::FOR_UPSTREAM`]).

use fhirgate_core::headers;
use fhirgate_core::pipeline::{module_sections, Facts, Flow, Resume, Sequencer, Stage};
use fhirgate_proxy::{host, StageRoot};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(GatewayRoot::default()) });
}}

const MODULE: &str = "fhirgate";

/// A stage's root and, when it wants ticks, its period and when it is next due (ms).
struct Scheduled {
    root: Box<dyn StageRoot>,
    period: Option<Duration>,
    due_ms: u64,
}

#[derive(Default)]
pub struct GatewayRoot {
    stages: Vec<Scheduled>,
    /// The stages' names, in pipeline order (the pass mark names them).
    names: Rc<[&'static str]>,
}

fn stage_root(name: &str) -> Option<Box<dyn StageRoot>> {
    Some(match name {
        "routing" => Box::<fhirgate_routing::RoutingRoot>::default(),
        "authz" => Box::<fhirgate_authz::AuthzRoot>::default(),
        "ratelimit" => Box::<fhirgate_ratelimit::RateLimitRoot>::default(),
        "consent" => Box::<fhirgate_consent::ConsentRoot>::default(),
        "audit" => Box::<fhirgate_audit::AuditRoot>::default(),
        _ => return None,
    })
}

impl Context for GatewayRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        host::begin_callback();
        for stage in &mut self.stages {
            if stage.root.call_response(token_id, body_size) {
                return;
            }
        }
    }
}

impl RootContext for GatewayRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let sections = match module_sections(&host::plugin_configuration()) {
            Ok(sections) => sections,
            Err(err) => {
                log::error!("{MODULE}: {err}");
                return false;
            }
        };
        let mut stages = Vec::with_capacity(sections.len());
        self.names = sections.iter().map(|(name, _)| *name).collect();
        for (name, section) in sections {
            let Some(mut root) = stage_root(name) else {
                return false;
            };
            if !root.configure(&section) {
                return false;
            }
            let period = root.tick_period();
            stages.push(Scheduled {
                root,
                period,
                due_ms: 0,
            });
        }
        // One timer for every stage: the shortest period; each stage runs when it is due.
        if let Some(shortest) = stages.iter().filter_map(|s| s.period).min() {
            host::set_tick_period(shortest);
        }
        self.stages = stages;
        true
    }

    fn on_tick(&mut self) {
        host::begin_callback();
        let now = host::now_ms();
        for stage in &mut self.stages {
            let Some(period) = stage.period else {
                continue;
            };
            if now >= stage.due_ms {
                // A little early rather than a whole period late when ticks jitter.
                stage.due_ms = now + (period.as_millis() as u64).saturating_sub(50);
                stage.root.tick();
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let stages: Vec<Box<dyn Stage>> = self.stages.iter().map(|s| s.root.create()).collect();
        Some(Box::new(Pipeline {
            sequencer: Sequencer::new(stages.len()),
            stages,
            takes_facts: !self.names.contains(&"routing"),
            hands_facts_on: !self.names.contains(&"audit"),
            names: self.names.clone(),
            facts_taken: false,
            pool_marked: false,
            passed: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request through the configured stages.
struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
    names: Rc<[&'static str]>,
    sequencer: Sequencer,
    /// No routing stage here: an earlier filter of the module routed the request, and its
    /// facts are in filter state.
    takes_facts: bool,
    /// An audit stage (always last) is not here: a later filter needs the facts.
    hands_facts_on: bool,
    facts_taken: bool,
    /// The routing stage's pool is in filter state, where the routes match it.
    pool_marked: bool,
    /// Every stage let the request go.
    passed: bool,
}

impl Pipeline {
    /// Ends a request callback: when every stage let the request go, the request is marked
    /// as passed by them and the route picked again (once, whatever the stages changed).
    fn request_flow(&mut self, flow: Flow) -> Action {
        self.hand_on_facts();
        match flow {
            Flow::Continue => {
                self.let_go();
                Action::Continue
            }
            Flow::Pause | Flow::Answered => Action::Pause,
        }
    }

    fn let_go(&mut self) {
        if self.passed {
            return;
        }
        self.passed = true;
        fhirgate_proxy::mark_passed(&self.names);
        // Envoy picked a route before the first filter ran; the pass mark, the pool and any
        // header a stage changed (a narrowed path) are read by the routes.
        fhirgate_proxy::clear_route_cache();
    }

    /// Before the first event: the facts of the filters of this module before this one.
    fn take_facts(&mut self) {
        if !self.takes_facts || std::mem::replace(&mut self.facts_taken, true) {
            return;
        }
        if let Some(bytes) = host::property(vec![fhirgate_proxy::FACTS_PROPERTY]) {
            self.sequencer.state_mut().facts = Facts::decode(&bytes);
        }
    }

    /// After a request event: the facts that leave as headers go on the request, the pool to
    /// the routes' filter state, and everything to the filters of this module after this one
    /// (written even when a stage refused: the audit filter records who was refused).
    fn hand_on_facts(&mut self) {
        let facts = &mut self.sequencer.state_mut().facts;
        for (name, value) in facts.take_exports() {
            host::set_request_header(name, Some(value));
        }
        if !self.pool_marked {
            if let Some(pool) = facts.get(headers::POOL) {
                host::set_property(vec![fhirgate_proxy::POOL_PROPERTY], pool.as_bytes());
                // Envoy's access log names what was asked, never ids (filter state too).
                for (name, property) in [
                    (headers::INTERACTION, fhirgate_proxy::INTERACTION_PROPERTY),
                    (
                        headers::RESOURCE_TYPE,
                        fhirgate_proxy::RESOURCE_TYPE_PROPERTY,
                    ),
                    (headers::OPERATION, fhirgate_proxy::OPERATION_PROPERTY),
                ] {
                    if let Some(value) = facts.get(name) {
                        host::set_property(vec![property], value.as_bytes());
                    }
                }
                self.pool_marked = true;
            }
        }
        if facts.take_changed() && self.hands_facts_on {
            host::set_property(vec![fhirgate_proxy::FACTS_PROPERTY], &facts.encode());
        }
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause | Flow::Answered => Action::Pause,
    }
}

impl Context for Pipeline {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        host::begin_callback();
        let resume = self
            .sequencer
            .call_response(&mut self.stages, token_id, body_size);
        self.hand_on_facts();
        match resume {
            Resume::Request => {
                self.let_go();
                host::resume_request();
            }
            Resume::Response => host::resume_response(),
            Resume::Nothing => {}
        }
    }
}

impl HttpContext for Pipeline {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        host::begin_callback();
        self.take_facts();
        let flow = self
            .sequencer
            .request_headers(&mut self.stages, end_of_stream);
        self.request_flow(flow)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        host::begin_callback();
        let flow = self
            .sequencer
            .request_body(&mut self.stages, body_size, end_of_stream);
        self.request_flow(flow)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        host::begin_callback();
        let flow = self.sequencer.request_trailers(&mut self.stages);
        self.request_flow(flow)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        host::begin_callback();
        action(
            self.sequencer
                .response_headers(&mut self.stages, end_of_stream),
        )
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        host::begin_callback();
        action(
            self.sequencer
                .response_body(&mut self.stages, body_size, end_of_stream),
        )
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        host::begin_callback();
        action(self.sequencer.response_trailers(&mut self.stages))
    }

    fn on_log(&mut self) {
        host::begin_callback();
        // A request an earlier filter refused never reached this one's headers callback.
        self.take_facts();
        self.sequencer.log(&mut self.stages);
    }
}

#[cfg(test)]
mod tests;
