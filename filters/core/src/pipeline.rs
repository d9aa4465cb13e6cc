//! One HTTP context, several stages: the order in which the stages of the fused module
//! (`fhirgate.wasm`) see a request's and a response's events.
//!
//! Envoy runs a filter chain by rules each fhirgate stage was written against: a filter sees a
//! request's headers, then its body chunks; one that stops iteration holds everything after it
//! until it continues (from a later callback or when a call it dispatched answers); responses
//! pass the filters in reverse order; a filter that sends a local reply ends the request's
//! journey. [`Sequencer`] keeps exactly those rules for stages that share one context, so
//! a stage behaves the same fused or alone, and the state machine is tested here natively.
//!
//! Trailers end a body: a stage holding a body until its end decides it when trailers arrive
//! (it never sees `end_of_stream` in a body callback then), so nothing held slips through.

/// What a stage wants after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// What arrived goes on to the next stage.
    Continue,
    /// Held: the stage waits for more of the body or for a call it dispatched.
    Pause,
    /// The stage sent a local reply: nothing of the request goes further.
    Answered,
}

mod facts;
pub use facts::Facts;

/// What the stages of one module tell each other about a request, in one place.
#[derive(Default)]
pub struct RequestState {
    /// The request as the routing stage parsed it (its head, and its body once read): later
    /// stages in the same module use it instead of parsing the request again.
    pub routed: Option<crate::routing::RoutedRequest>,
    /// What the stages learnt (interaction, identity, grant, break-glass…). Separate filters
    /// hand these on as one filter-state value (see [`Facts`]).
    pub facts: Facts,
}

/// One stage of the pipeline as its host adapter presents it.
pub trait Stage {
    fn request_headers(&mut self, _state: &mut RequestState, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    /// `body_size`: the body buffered so far (everything since the last chunk that went on).
    fn request_body(
        &mut self,
        _state: &mut RequestState,
        _body_size: usize,
        _end_of_stream: bool,
    ) -> Flow {
        Flow::Continue
    }
    fn response_headers(&mut self, _state: &mut RequestState, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }
    fn response_body(
        &mut self,
        _state: &mut RequestState,
        _body_size: usize,
        _end_of_stream: bool,
    ) -> Flow {
        Flow::Continue
    }
    /// A call answered. `None`: not this stage's call. `Some(Continue)`: what the stage held
    /// goes on; `Some(Pause)`: it still waits; `Some(Answered)`: it replied.
    fn call_response(
        &mut self,
        _state: &mut RequestState,
        _token: u32,
        _body_size: usize,
    ) -> Option<Flow> {
        None
    }
    /// The request is over (Envoy's log callback), whatever became of it.
    fn log(&mut self, _state: &mut RequestState) {}
}

/// Which way a held stream goes on when a stage lets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    Nothing,
    Request,
    Response,
}

/// A body event: its sequence number (chunks can repeat a size), size and end.
type BodyEvent = (u32, usize, bool);

#[derive(Clone, Default)]
struct Progress {
    head_called: bool,
    head_passed: bool,
    body_called: Option<BodyEvent>,
    body_passed: Option<BodyEvent>,
}

/// One direction's events so far and how far each stage took them.
#[derive(Default)]
struct Direction {
    head: Option<bool>,
    body: Option<BodyEvent>,
    chunks: u32,
    progress: Vec<Progress>,
    /// The host was told to stop iterating: a later continue must resume it.
    host_paused: bool,
}

impl Direction {
    fn new(stages: usize) -> Self {
        Direction {
            progress: vec![Progress::default(); stages],
            ..Default::default()
        }
    }

    /// A new body event: the body buffered so far, and whether it ended.
    fn push_body(&mut self, body_size: usize, end_of_stream: bool) {
        self.chunks += 1;
        self.body = Some((self.chunks, body_size, end_of_stream));
    }

    /// The body size last seen (what a trailers event ends).
    fn last_body_size(&self) -> usize {
        self.body.map_or(0, |(_, size, _)| size)
    }

    fn holds(&self, stage: usize) -> bool {
        self.progress.get(stage).is_some_and(|p| {
            p.head_called && (!p.head_passed || (self.body.is_some() && p.body_passed != self.body))
        })
    }

    /// The stage lets go of what it held: its head, and the body event it last saw (a newer
    /// one that has not reached it yet still will).
    fn let_go(&mut self, stage: usize) {
        if let Some(p) = self.progress.get_mut(stage) {
            p.head_passed = true;
            p.body_passed = p.body_called;
        }
    }
}

/// The pipeline's state for one request (see the module comment).
pub struct Sequencer {
    request: Direction,
    response: Direction,
    /// A stage answered the request itself.
    answered: bool,
    state: RequestState,
}

impl Sequencer {
    pub fn new(stages: usize) -> Self {
        Sequencer {
            request: Direction::new(stages),
            response: Direction::new(stages),
            answered: false,
            state: RequestState::default(),
        }
    }

    /// The request's state, for the host between events (handing facts on, exporting them).
    pub fn state_mut(&mut self) -> &mut RequestState {
        &mut self.state
    }

    pub fn request_headers(&mut self, stages: &mut [Box<dyn Stage>], end_of_stream: bool) -> Flow {
        self.request.head = Some(end_of_stream);
        self.run_request(stages)
    }

    pub fn request_body(
        &mut self,
        stages: &mut [Box<dyn Stage>],
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        self.request.push_body(body_size, end_of_stream);
        self.run_request(stages)
    }

    /// Trailers end the request body: the last body (or none) is its whole.
    pub fn request_trailers(&mut self, stages: &mut [Box<dyn Stage>]) -> Flow {
        let size = self.request.last_body_size();
        self.request_body(stages, size, true)
    }

    pub fn response_headers(&mut self, stages: &mut [Box<dyn Stage>], end_of_stream: bool) -> Flow {
        // A response while the request is still held is Envoy's own reply (a timeout, a limit):
        // the request is over, and a call answering later must not take it further.
        if self.request.host_paused {
            self.answered = true;
        }
        self.response.head = Some(end_of_stream);
        self.run_response(stages)
    }

    pub fn response_body(
        &mut self,
        stages: &mut [Box<dyn Stage>],
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        self.response.push_body(body_size, end_of_stream);
        self.run_response(stages)
    }

    pub fn response_trailers(&mut self, stages: &mut [Box<dyn Stage>]) -> Flow {
        let size = self.response.last_body_size();
        self.response_body(stages, size, true)
    }

    /// A call answered: the stage that dispatched it decides, and when it lets go, the rest of
    /// the pipeline runs. Returns which way the host must resume, if at all.
    pub fn call_response(
        &mut self,
        stages: &mut [Box<dyn Stage>],
        token: u32,
        body_size: usize,
    ) -> Resume {
        let Some((index, flow)) = stages.iter_mut().enumerate().find_map(|(i, s)| {
            s.call_response(&mut self.state, token, body_size)
                .map(|f| (i, f))
        }) else {
            return Resume::Nothing;
        };
        match flow {
            Flow::Pause => Resume::Nothing,
            Flow::Answered => {
                self.answered = true;
                Resume::Nothing
            }
            Flow::Continue if self.response.holds(index) => {
                self.response.let_go(index);
                let paused = self.response.host_paused;
                match self.run_response(stages) {
                    Flow::Continue if paused => Resume::Response,
                    _ => Resume::Nothing,
                }
            }
            Flow::Continue if !self.answered && self.request.holds(index) => {
                self.request.let_go(index);
                let paused = self.request.host_paused;
                match self.run_request(stages) {
                    Flow::Continue if paused => Resume::Request,
                    _ => Resume::Nothing,
                }
            }
            Flow::Continue => Resume::Nothing,
        }
    }

    pub fn log(&mut self, stages: &mut [Box<dyn Stage>]) {
        for stage in stages.iter_mut() {
            stage.log(&mut self.state);
        }
    }

    fn run_request(&mut self, stages: &mut [Box<dyn Stage>]) -> Flow {
        if self.answered {
            return Flow::Pause;
        }
        let flow = run(
            &mut self.request,
            &mut self.state,
            stages,
            0..stages.len(),
            true,
        );
        self.settle(flow, true)
    }

    fn run_response(&mut self, stages: &mut [Box<dyn Stage>]) -> Flow {
        let flow = run(
            &mut self.response,
            &mut self.state,
            stages,
            (0..stages.len()).rev(),
            false,
        );
        self.settle(flow, false)
    }

    fn settle(&mut self, flow: Flow, request: bool) -> Flow {
        let direction = if request {
            &mut self.request
        } else {
            &mut self.response
        };
        match flow {
            Flow::Continue => direction.host_paused = false,
            Flow::Pause => direction.host_paused = true,
            Flow::Answered => {
                direction.host_paused = true;
                if request {
                    self.answered = true;
                }
            }
        }
        flow
    }
}

/// Takes one direction's events through the stages in `order` as far as they go.
fn run(
    direction: &mut Direction,
    state: &mut RequestState,
    stages: &mut [Box<dyn Stage>],
    order: impl Iterator<Item = usize>,
    request: bool,
) -> Flow {
    let Some(end_with_head) = direction.head else {
        return Flow::Pause;
    };
    let body = direction.body;
    for index in order {
        let (Some(stage), Some(p)) = (stages.get_mut(index), direction.progress.get_mut(index))
        else {
            return Flow::Pause;
        };
        if !p.head_called {
            p.head_called = true;
            let flow = if request {
                stage.request_headers(state, end_with_head)
            } else {
                stage.response_headers(state, end_with_head)
            };
            match flow {
                Flow::Continue => p.head_passed = true,
                Flow::Pause => {}
                Flow::Answered => return Flow::Answered,
            }
        }
        if let Some(event @ (_, size, end)) = body {
            if p.body_passed != Some(event) && p.body_called != Some(event) {
                p.body_called = Some(event);
                let flow = if request {
                    stage.request_body(state, size, end)
                } else {
                    stage.response_body(state, size, end)
                };
                match flow {
                    // A stage that lets a chunk go lets its head go too (as in Envoy).
                    Flow::Continue => {
                        p.head_passed = true;
                        p.body_passed = Some(event);
                    }
                    Flow::Pause => {}
                    Flow::Answered => return Flow::Answered,
                }
            }
        }
        if !p.head_passed || (body.is_some() && p.body_passed != body) {
            return Flow::Pause;
        }
    }
    Flow::Continue
}

#[cfg(test)]
mod tests;

/// The stages of the pipeline, in order: each is a section of the module's configuration.
pub const STAGES: [&str; 5] = ["routing", "authz", "ratelimit", "consent", "audit"];

/// The configuration of one `fhirgate.wasm` filter: a section per stage it runs. All five make
/// the fused pipeline; one makes the design card's separate filter, several a segment of the
/// chain (Envoy's own filters in between). Stages always run in pipeline order.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleConfig {
    routing: Option<serde_json::Value>,
    authz: Option<serde_json::Value>,
    ratelimit: Option<serde_json::Value>,
    consent: Option<serde_json::Value>,
    audit: Option<serde_json::Value>,
}

/// The stages a module configuration names, in pipeline order, each with its section's JSON
/// (which that stage compiles, naming its own fields). A configuration that names no stage
/// is refused.
pub fn module_sections(
    bytes: &[u8],
) -> Result<Vec<(&'static str, Vec<u8>)>, crate::config::ConfigError> {
    let mut config: ModuleConfig = crate::config::parse_json(bytes)?;
    // The authorization stage parses requests as the routing stage does: one routing section
    // serves both. In one module the authz stage decides on the routing stage's parse, so a
    // different routing of its own (its bulk pool, its CDS path) would disagree with it:
    // refused. (A filter running the authz stage alone may carry its own.)
    if let (Some(routing), Some(serde_json::Value::Object(authz))) =
        (config.routing.as_ref(), config.authz.as_mut())
    {
        match authz.get("routing") {
            Some(own) if own != routing => {
                return Err(crate::config::ConfigError::new(
                    "authz.routing",
                    "differs from the routing section: the stages of one module parse requests alike (leave it out)",
                ))
            }
            Some(_) => {}
            None => {
                authz.insert("routing".into(), routing.clone());
            }
        }
    }
    let sections = [
        config.routing,
        config.authz,
        config.ratelimit,
        config.consent,
        config.audit,
    ];
    let named: Vec<(&'static str, Vec<u8>)> = STAGES
        .iter()
        .zip(sections)
        .filter_map(|(name, section)| {
            section.map(|value| (*name, serde_json::to_vec(&value).unwrap_or_default()))
        })
        .collect();
    if named.is_empty() {
        return Err(crate::config::ConfigError::new(
            "",
            format!("names no stage: give one or more of {}", STAGES.join(", ")),
        ));
    }
    Ok(named)
}

/// Compiles a module configuration as `fhirgate.wasm` does, every section with its stage's
/// own code (the CLI's `config lint --filter module`); a refusal names the field from the
/// root (`authz.issuers[0].jwksUri`).
pub fn check_module(bytes: &[u8]) -> Result<Vec<&'static str>, crate::config::ConfigError> {
    let sections = module_sections(bytes)?;
    for (name, section) in &sections {
        let checked = match *name {
            "routing" => crate::routing::RoutingPolicy::from_json(section).map(drop),
            "authz" => crate::smart::filter::AuthzFilterPolicy::from_json(section).map(drop),
            "ratelimit" => {
                crate::ratelimit::filter::RateLimitFilterPolicy::from_json(section).map(drop)
            }
            "consent" => crate::consent::ConsentPolicy::from_json(section).map(drop),
            _ => crate::audit::sink::AuditPolicy::from_json(section).map(drop),
        };
        checked.map_err(|e| e.within(name))?;
    }
    Ok(sections.into_iter().map(|(name, _)| name).collect())
}
