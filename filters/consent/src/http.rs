//! Per-request context: notes who asks and why; holds a FHIR response whole, fetches the
//! Consents it needs, and sends what the core leaves of it.

use crate::root::{Shared, FILTER};
use fhirgate_core::consent::cache::{read_search_for, retries_fetch, search_path, SearchAnswer};
use fhirgate_core::consent::guard::{Acting, RequestCheck};
use fhirgate_core::consent::{
    filters_interaction, is_single_read, is_write, keeps_committed_write, reduces_error, rfc3339,
    Caller, Consents, FastPath, Filtered, Known, ReadPlan, Report, SecurityContext,
};
use fhirgate_core::outcome::IssueType;
use fhirgate_core::pipeline::{Facts, Flow, RequestState, Stage};
use fhirgate_core::{headers, Rejection};
use fhirgate_proxy::{count, host, reject, RequestHeaders};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

/// What the request said, kept for its response.
#[derive(Default)]
struct Asked {
    subject: Option<String>,
    client_id: Option<String>,
    purpose: Option<String>,
    break_glass: bool,
    single_read: bool,
    /// A create, update or patch: a committed write is reported as committed, its echo
    /// withheld, never as a refusal.
    write: bool,
}

impl Asked {
    /// The caller as the core sees it, at `now` (RFC 3339).
    fn caller<'a>(&'a self, now: &'a str) -> Caller<'a> {
        Caller {
            subject: self.subject.as_deref(),
            client_id: self.client_id.as_deref(),
            purpose: self.purpose.as_deref(),
            break_glass: self.break_glass,
            now,
        }
    }
}

/// A request held until the consent policies can decide it: a batch for its body, a write,
/// delete or instance operation for its current resource (and its body).
struct HeldRequest {
    interaction: String,
    operation: Option<String>,
    resource_type: Option<String>,
    id: Option<String>,
    content_type: String,
    /// The batch is decided on its body alone.
    bundle: bool,
    /// The request body is needed and has not yet arrived whole.
    awaiting_body: bool,
    body: Option<Vec<u8>>,
    /// The current resource's fetch, outstanding.
    current_call: Option<u32>,
    /// Its answer: status (0 when the call failed) and body.
    current: Option<(u16, Vec<u8>)>,
    /// The request went on or was refused.
    settled: bool,
}

impl HeldRequest {
    fn acting(&self) -> Acting<'_> {
        Acting {
            interaction: &self.interaction,
            operation: self.operation.as_deref(),
            resource_type: self.resource_type.as_deref(),
            id: self.id.as_deref(),
            raw_query: "",
        }
    }
}

/// A held response: as decoded, or already parsed (then it is decided resource by resource,
/// never parsed a second time).
enum Held {
    Raw(Vec<u8>),
    Parsed(serde_json::Value),
}

pub struct ConsentFilter {
    shared: Option<Rc<Shared>>,
    asked: Option<Asked>,
    held_request: Option<HeldRequest>,
    /// The response and its size as buffered, while the Consents it needs are fetched.
    held: Option<(Held, usize)>,
    /// Outstanding fetches: call token → the patients it asks for and the attempt.
    fetches: HashMap<u32, (Vec<String>, u8)>,
    /// Patients whose fetch failed for this response.
    unavailable: HashSet<String>,
    /// Outstanding reads of Binaries' security contexts: call token → `Type/id`.
    context_calls: HashMap<u32, String>,
    /// The security contexts read (None: not found or failed).
    contexts: HashMap<String, Option<serde_json::Value>>,
    /// A response refused on its headers, answered when its body has arrived.
    refusal: Option<Rejection>,
    /// The response head was held for its body to be read. Only then does the body callback
    /// touch the response: Envoy refuses header access once a head has gone on (and
    /// proxy-wasm panics on that refusal).
    reading: bool,
    /// The held response's status.
    status: u16,
    /// An upstream error whose body is replaced by its status alone.
    reducing: bool,
    /// When the request (or then the response) began to be decided: cached Consents are judged
    /// as of then, so one whose TTL runs out while another patient's are fetched still counts
    /// (it would otherwise be unknown, and its patient's resources withheld).
    as_of: i64,
}

impl ConsentFilter {
    pub fn new(shared: Option<Rc<Shared>>) -> Self {
        ConsentFilter {
            shared,
            asked: None,
            held_request: None,
            held: None,
            fetches: HashMap::new(),
            unavailable: HashSet::new(),
            context_calls: HashMap::new(),
            contexts: HashMap::new(),
            refusal: None,
            reading: false,
            status: 0,
            reducing: false,
            as_of: 0,
        }
    }

    fn now(&self) -> i64 {
        host::now_secs()
    }

    fn replace_response(&self, rejection: &Rejection, body_size: usize) {
        count(FILTER, "denied", rejection.reason);
        fhirgate_proxy::replace_response(FILTER, rejection, body_size);
    }

    /// Decides the held response with the Consents now known, and writes the result.
    fn finish(&mut self) {
        let (Some(shared), Some((held, body_size)), Some(asked)) =
            (self.shared.clone(), self.held.take(), self.asked.as_ref())
        else {
            return;
        };
        let now = self.now();
        let as_of = self.as_of;
        let cache = shared.cache.borrow();
        let unavailable = &self.unavailable;
        let lookup = |patient: &str| cache.consents(patient, as_of, unavailable);
        let response = match held {
            Held::Parsed(response) => Ok(response),
            Held::Raw(body) => {
                if shared.policy.fast_path(&body, &|p| Some(lookup(p))) == FastPath::Release {
                    count(FILTER, "released", "unparsed");
                    return;
                }
                shared.policy.parse(&body)
            }
        };
        let now_text = rfc3339(now);
        let caller = asked.caller(&now_text);
        let mut report = Report::default();
        let contexts = &self.contexts;
        let context = |reference: &str| match contexts.get(reference) {
            Some(Some(c)) => SecurityContext::Known(c),
            _ => SecurityContext::Unavailable,
        };
        let known = Known {
            consents: &lookup,
            contexts: &context,
        };
        let filtered = match response {
            Ok(response) => shared.policy.filter_known(
                response,
                &caller,
                asked.single_read,
                &known,
                &mut report,
            ),
            Err(rejection) => Filtered::Refused(rejection),
        };
        drop(cache);
        count_report(&report);
        let withheld: u32 = report.withheld.values().sum();
        let redacted: u32 = report.redacted.values().sum();
        if withheld + redacted > 0 {
            host::set_property(
                vec![fhirgate_proxy::CONSENT_PROPERTY],
                format!("{withheld},{redacted}").as_bytes(),
            );
        }
        match filtered {
            Filtered::Unchanged => {}
            Filtered::Rewritten(bytes) => {
                host::set_response_header("content-encoding", None);
                host::set_response_body(body_size, &bytes);
            }
            // A write the server committed stays committed: its echo is withheld, its status
            // (and Location) kept, and the audit records the write as done.
            ref refused if keeps_committed_write(asked.write, self.status, refused) => {
                count(FILTER, "withheld", "committed-echo");
                host::set_response_header("content-encoding", None);
                host::set_response_header("etag", None);
                host::set_response_header("content-type", Some(fhirgate_core::outcome::FHIR_JSON));
                host::set_response_body(
                    body_size,
                    &fhirgate_core::outcome::committed_echo_withheld(),
                );
            }
            Filtered::Refused(rejection) => self.replace_response(&rejection, body_size),
        }
    }

    /// Dispatches Consent searches for these patients, several per search; the patients of a
    /// search that cannot start are unavailable.
    fn fetch(&mut self, shared: &Shared, patients: Vec<String>, attempt: u8) {
        let per_search = shared
            .policy
            .config
            .consents
            .as_ref()
            .map_or(1, |s| s.patients_per_search);
        self.fetch_in(shared, patients, per_search, attempt);
    }

    /// [`Self::fetch`] with `per_search` patients per search (one when a shared answer paged).
    fn fetch_in(&mut self, shared: &Shared, patients: Vec<String>, per_search: usize, attempt: u8) {
        let Some(source) = shared.policy.config.consents.as_ref() else {
            return;
        };
        for chunk in patients.chunks(per_search.max(1)) {
            let path = search_path(source, chunk);
            let timeout = Duration::from_millis(source.timeout_ms);
            match fhirgate_proxy::dispatch_get(
                &source.cluster,
                &source.authority,
                &path,
                "application/fhir+json",
                timeout,
            ) {
                Ok(token) => {
                    self.fetches.insert(token, (chunk.to_vec(), attempt));
                }
                Err(status) => {
                    log::warn!(
                        "{FILTER}: Consent fetch through cluster {} could not start: {status:?}",
                        source.cluster
                    );
                    count(FILTER, "consent_cache", "fetch_failed");
                    self.unavailable.extend(chunk.iter().cloned());
                }
            }
        }
    }
}

/// Reads a resource from the FHIR server (`currentResource`): the call's token, None when it
/// could not start.
fn read_resource(
    source: &fhirgate_core::smart::config::CurrentResourceConfig,
    path: &str,
) -> Option<u32> {
    fhirgate_proxy::dispatch_get(
        &source.cluster,
        &source.authority,
        path,
        "application/fhir+json",
        Duration::from_millis(source.timeout_ms),
    )
    .ok()
}

/// Counts what the core did to one response (reason codes only).
fn count_report(report: &Report) {
    for (reason, n) in &report.withheld {
        for _ in 0..*n {
            count(FILTER, "withheld", reason);
        }
    }
    for (reason, n) in &report.redacted {
        for _ in 0..*n {
            count(FILTER, "redacted", reason);
        }
    }
    for _ in 0..report.part2_labelled {
        count(FILTER, "part2_labelled", "");
    }
    if report.break_glass_released > 0 {
        count(FILTER, "break_glass_released", "");
        log::warn!(
            "{FILTER}: break-glass released {} withheld resource(s)",
            report.break_glass_released
        );
    }
}

impl ConsentFilter {
    /// A call this request dispatched answered (see [`Stage::call_response`]).
    fn answered(&mut self, token_id: u32, body_size: usize) -> Option<Flow> {
        if let Some(held) = self.held_request.as_mut() {
            if held.current_call == Some(token_id) {
                held.current_call = None;
                let (status, body) = fhirgate_proxy::call_answer(body_size);
                count(
                    FILTER,
                    "current_resource",
                    if status == Some(200) {
                        "read"
                    } else {
                        "missing"
                    },
                );
                if let Some(held) = self.held_request.as_mut() {
                    held.current = Some((status.unwrap_or(0), body));
                }
                return Some(self.advance_request());
            }
        }
        if let Some(reference) = self.context_calls.remove(&token_id) {
            let (status, body) = fhirgate_proxy::call_answer(body_size);
            let context = self.shared.as_ref().and_then(|shared| {
                shared
                    .policy
                    .read_context(&reference, status.unwrap_or(0), &body)
            });
            count(
                FILTER,
                "security_context",
                if context.is_some() { "read" } else { "missing" },
            );
            self.contexts.insert(reference, context);
            if !self.context_calls.is_empty() {
                return Some(Flow::Pause);
            }
            return Some(self.fetch_consents_for_held());
        }
        let (patients, attempt) = self.fetches.remove(&token_id)?;
        let status: Option<u16> = host::call_header(":status").and_then(|s| s.parse().ok());
        // A transport failure or a 5xx is tried again (another endpoint, most likely) before
        // the patients' resources are withheld.
        if retries_fetch(attempt, status) {
            if let Some(shared) = self.shared.clone() {
                count(FILTER, "consent_cache", "fetch_retried");
                self.fetch(&shared, patients, attempt + 1);
                if !self.fetches.is_empty() {
                    return Some(Flow::Pause);
                }
            }
        } else {
            let body = host::call_body(body_size);
            self.record_fetch(patients, status, &body);
        }
        if !self.fetches.is_empty() {
            return Some(Flow::Pause);
        }
        if self.held_request.as_ref().is_some_and(|h| !h.settled) {
            return Some(self.advance_request());
        }
        self.finish();
        Some(Flow::Continue)
    }
}

impl ConsentFilter {
    /// Holds a request the policies decide only with its body or its current resource.
    fn hold_request(
        &mut self,
        shared: &Shared,
        check: RequestCheck,
        facts: &Facts,
        content_type: Option<&str>,
        end_of_stream: bool,
    ) -> Flow {
        let (bundle, path, wants_body) = match check {
            RequestCheck::Pass => return Flow::Continue,
            RequestCheck::Refuse(rejection) => return reject(FILTER, &rejection),
            RequestCheck::Body => (true, None, true),
            RequestCheck::Current { path, body } => (false, Some(path), body),
        };
        let mut held = HeldRequest {
            interaction: facts
                .get(headers::INTERACTION)
                .unwrap_or_default()
                .to_string(),
            operation: facts.get(headers::OPERATION).map(str::to_string),
            resource_type: facts.get(headers::RESOURCE_TYPE).map(str::to_string),
            id: facts.get(headers::ID).map(str::to_string),
            content_type: content_type.unwrap_or_default().to_string(),
            bundle,
            awaiting_body: wants_body && !end_of_stream,
            body: (wants_body && end_of_stream).then(Vec::new),
            current_call: None,
            current: None,
            settled: false,
        };
        if let (Some(path), Some(source)) = (path, shared.policy.config.current_resource.as_ref()) {
            match read_resource(source, &path) {
                Some(token) => held.current_call = Some(token),
                None => held.current = Some((0, Vec::new())),
            }
        }
        self.held_request = Some(held);
        self.as_of = self.now();
        self.advance_request()
    }

    /// Takes a held request as far as what has arrived allows: decides it (going on or
    /// refusing), or fetches the Consents its current resource needs, or waits.
    fn advance_request(&mut self) -> Flow {
        let Some(shared) = self.shared.clone() else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let Some(held) = self.held_request.as_ref() else {
            return Flow::Continue;
        };
        if held.settled || held.awaiting_body || held.current_call.is_some() {
            return Flow::Pause;
        }
        let Some(asked) = self.asked.as_ref() else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let now_text = rfc3339(self.now());
        let now = self.as_of;
        let caller = asked.caller(&now_text);
        let policy = &shared.policy;
        let decision = if held.bundle {
            policy
                .check_bundle(held.body.as_deref().unwrap_or_default(), &caller)
                .map(|()| None)
        } else {
            let acting = held.acting();
            let (status, body) = held.current.as_ref().map_or((0, &[][..]), |(s, b)| (*s, b));
            let current = policy.read_current(&acting, status, body);
            let cache = shared.cache.borrow();
            let missing = cache.missing(
                current
                    .as_ref()
                    .map(|c| policy.patients_of_current(c))
                    .unwrap_or_default(),
                now,
                &self.unavailable,
            );
            if !missing.is_empty() {
                drop(cache);
                if let Some(rejection) = policy.too_many_patients(missing.len()) {
                    return self.settle_request(Err(rejection));
                }
                self.fetch(&shared, missing, 0);
                if !self.fetches.is_empty() {
                    return Flow::Pause;
                }
                return self.advance_request();
            }
            let unavailable = &self.unavailable;
            let lookup = |patient: &str| cache.consents(patient, now, unavailable);
            let write = held
                .body
                .as_deref()
                .map(|b| (b, held.content_type.as_str()));
            policy.decide_current(&acting, status, current, write, &caller, &lookup)
        };
        self.settle_request(decision)
    }

    /// Lets a held request go on (pinned to the checked version when it has one and the
    /// client named none) or refuses it. The caller resumes the request when it decided
    /// outside a request callback.
    fn settle_request(&mut self, decision: Result<Option<String>, Rejection>) -> Flow {
        if let Some(held) = self.held_request.as_mut() {
            held.settled = true;
        }
        match decision {
            Ok(version) => {
                count(FILTER, "request_checked", "allowed");
                if let Some(version) = version {
                    if host::request_header("if-match").is_none() {
                        host::set_request_header("if-match", Some(&format!("W/\"{version}\"")));
                    }
                }
                Flow::Continue
            }
            Err(rejection) => reject(FILTER, &rejection),
        }
    }

    /// Reads the held response's Binaries' security contexts, then goes on to their and the
    /// response's patients' Consents.
    fn fetch_contexts(&mut self, shared: &Shared, contexts: Vec<String>, body_size: usize) -> Flow {
        if let Some(rejection) = shared.policy.too_many_patients(contexts.len()) {
            self.held = None;
            self.replace_response(&rejection, body_size);
            return Flow::Continue;
        }
        let source = shared.policy.config.current_resource.as_ref();
        for reference in contexts {
            let started = match (source, shared.policy.context_path(&reference)) {
                (Some(source), Some(path)) => read_resource(source, &path),
                _ => None,
            };
            match started {
                Some(token) => {
                    self.context_calls.insert(token, reference);
                }
                None => {
                    self.contexts.insert(reference, None);
                }
            }
        }
        if self.context_calls.is_empty() {
            return self.fetch_consents_for_held();
        }
        Flow::Pause
    }

    /// The held (parsed) response's patients' Consents, once its contexts are known: fetched,
    /// or the response decided at once when all are cached.
    fn fetch_consents_for_held(&mut self) -> Flow {
        let Some(shared) = self.shared.clone() else {
            return Flow::Continue;
        };
        let now = self.as_of;
        let missing: Vec<String> = match self.held.as_ref() {
            Some((Held::Parsed(response), _)) => {
                let contexts = &self.contexts;
                shared.cache.borrow().missing(
                    shared
                        .policy
                        .patients_needed(response, &|r| contexts.get(r).and_then(Option::as_ref)),
                    now,
                    &self.unavailable,
                )
            }
            _ => Vec::new(),
        };
        if !missing.is_empty() {
            if let Some(rejection) = shared.policy.too_many_patients(missing.len()) {
                let size = self.held.take().map_or(0, |(_, size)| size);
                self.replace_response(&rejection, size);
                return Flow::Continue;
            }
            self.fetch(&shared, missing, 0);
            if !self.fetches.is_empty() {
                return Flow::Pause;
            }
        }
        self.finish();
        Flow::Continue
    }

    fn record_fetch(&mut self, patients: Vec<String>, status: Option<u16>, body: &[u8]) {
        match (
            read_search_for(status, body, &patients),
            self.shared.clone(),
        ) {
            (SearchAnswer::Known(answers), Some(shared)) => {
                let now = self.now();
                let mut cache = shared.cache.borrow_mut();
                for (patient, consents) in answers {
                    cache.insert(&patient, consents, now);
                }
            }
            (SearchAnswer::AskEachAlone(patients), Some(shared)) => {
                count(FILTER, "consent_cache", "fetch_split");
                self.fetch_in(&shared, patients, 1, 0);
            }
            _ => {
                count(FILTER, "consent_cache", "fetch_failed");
                log::warn!(
                    "{FILTER}: Consent fetch failed (status {status:?}, {} body bytes, {} patients)",
                    body.len(),
                    patients.len()
                );
                self.unavailable.extend(patients);
            }
        }
    }
}

impl Stage for ConsentFilter {
    fn call_response(
        &mut self,
        _state: &mut RequestState,
        token_id: u32,
        body_size: usize,
    ) -> Option<Flow> {
        self.answered(token_id, body_size)
    }

    fn request_headers(&mut self, state: &mut RequestState, end_of_stream: bool) -> Flow {
        let Some(shared) = self.shared.clone() else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        let facts = &state.facts;
        let interaction = facts.get(headers::INTERACTION).unwrap_or_default();
        if !filters_interaction(interaction) {
            return Flow::Continue;
        }
        let break_glass = facts.get(headers::BREAK_GLASS);
        // Only from a verified source: the authorization filter's header (a token claim, or
        // a trusted zone's header). A client's own purpose header means nothing here.
        let purpose_header = facts.get(headers::PURPOSE_OF_USE);
        let asked = Asked {
            subject: facts.get(headers::SUBJECT).map(str::to_string),
            client_id: facts.get(headers::CLIENT_ID).map(str::to_string),
            purpose: shared
                .policy
                .purpose_of(purpose_header, break_glass)
                .map(str::to_string),
            break_glass: break_glass.is_some(),
            single_read: is_single_read(interaction),
            write: is_write(interaction),
        };
        let h = RequestHeaders::read();
        // What no answer could be filtered into shape is refused before it is asked.
        let query = h
            .get(":path")
            .and_then(|p| p.split_once('?'))
            .map_or("", |(_, q)| q);
        let caller = asked.caller("");
        let acting = Acting {
            interaction,
            operation: facts.get(headers::OPERATION),
            resource_type: facts.get(headers::RESOURCE_TYPE),
            id: facts.get(headers::ID),
            raw_query: query,
        };
        let check = shared.policy.check_request(&acting, &caller);
        // A conditional read would answer 304 for a resource never checked: ask for the body.
        if !asked.write {
            for name in headers::CONDITIONAL_READ {
                if h.contains(name) {
                    host::set_request_header(name, None);
                }
            }
        }
        self.asked = Some(asked);
        // Ask for an uncompressed answer (a compressed one is decoded, within the body limit).
        if h.contains("accept-encoding") {
            host::set_request_header("accept-encoding", None);
        }
        self.hold_request(&shared, check, facts, h.get("content-type"), end_of_stream)
    }

    fn request_body(
        &mut self,
        _state: &mut RequestState,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        let Some(held) = self.held_request.as_mut() else {
            return Flow::Continue;
        };
        if !held.awaiting_body {
            return if held.settled {
                Flow::Continue
            } else {
                Flow::Pause
            };
        }
        if !end_of_stream {
            return Flow::Pause;
        }
        held.awaiting_body = false;
        let body = host::request_body(body_size);
        if let Some(held) = self.held_request.as_mut() {
            held.body = Some(body);
        }
        self.advance_request()
    }

    fn response_headers(&mut self, _state: &mut RequestState, end_of_stream: bool) -> Flow {
        if self.asked.is_none() || end_of_stream {
            return Flow::Continue;
        }
        let Some(shared) = self.shared.clone() else {
            return Flow::Continue;
        };
        let status = host::response_status();
        let content_type = host::response_header("content-type").unwrap_or_default();
        self.status = status;
        // Asked only for errors: a host call per success would be spent for nothing.
        let from_upstream = status >= 400
            && host::property(vec!["response", "code_details"])
                .is_some_and(|d| d == b"via_upstream");
        match shared.policy.read_plan(status, &content_type) {
            // An upstream error's body can quote what the policies withhold: its status alone
            // goes on (the gateway's own refusals are PHI-free and pass).
            ReadPlan::Skip if reduces_error(status, from_upstream) => self.reducing = true,
            ReadPlan::Skip => return Flow::Continue,
            ReadPlan::Refuse(rejection) => self.refusal = Some(rejection),
            ReadPlan::Read => {}
        }
        host::set_response_header("content-length", None);
        self.reading = true;
        Flow::Pause
    }

    fn response_body(
        &mut self,
        _state: &mut RequestState,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        let (Some(shared), Some(_), true) =
            (self.shared.clone(), self.asked.as_ref(), self.reading)
        else {
            return Flow::Continue;
        };
        if self.reducing {
            if !end_of_stream {
                host::set_response_body(body_size, &[]);
                return Flow::Pause;
            }
            let upstream = host::response_body(body_size);
            let reduced = fhirgate_core::outcome::reduced_upstream_outcome(&upstream);
            count(FILTER, "reduced", "upstream-error");
            fhirgate_proxy::drop_describing_response_headers();
            host::set_response_header("content-type", Some(fhirgate_core::outcome::FHIR_JSON));
            host::set_response_body(body_size, &reduced);
            return Flow::Continue;
        }
        if let Some(rejection) = self.refusal.take() {
            if !end_of_stream {
                // Nothing of a refused response is kept or sent: drop what came so far.
                host::set_response_body(body_size, &[]);
                self.refusal = Some(rejection);
                return Flow::Pause;
            }
            self.replace_response(&rejection, body_size);
            return Flow::Continue;
        }
        if !end_of_stream {
            if body_size > shared.policy.config.max_body_bytes {
                host::set_response_body(body_size, &[]);
                self.refusal = Some(Rejection::new(
                    502,
                    "response-too-large",
                    IssueType::TooCostly,
                    "the response is larger than the consent filter's limit",
                ));
                return Flow::Pause;
            }
            return Flow::Pause;
        }
        let raw = host::response_body(body_size);
        let encoding = host::response_header("content-encoding");
        let body = match shared.policy.decode(encoding.as_deref(), &raw) {
            Ok(body) => body,
            Err(rejection) => {
                self.replace_response(&rejection, body_size);
                return Flow::Continue;
            }
        };
        self.as_of = self.now();
        let now = self.as_of;
        // Which patients' Consents are missing: from a byte scan when it settles the question,
        // else from the parsed response.
        let (held, missing) = {
            let cache = shared.cache.borrow();
            match shared
                .policy
                .fast_path(&body, &|p| cache.get(p, now).map(Consents::Known))
            {
                FastPath::Release => {
                    count(FILTER, "released", "unparsed");
                    return Flow::Continue;
                }
                FastPath::NeedConsents(patients) => (Held::Raw(body.into_owned()), patients),
                FastPath::Parse => match shared.policy.parse(&body) {
                    Ok(response) => {
                        let contexts = shared.policy.contexts_needed(&response);
                        if !contexts.is_empty() {
                            drop(cache);
                            self.held = Some((Held::Parsed(response), body_size));
                            return self.fetch_contexts(&shared, contexts, body_size);
                        }
                        let missing = cache.missing(
                            shared.policy.patients_needed(&response, &|_| None),
                            now,
                            &self.unavailable,
                        );
                        (Held::Parsed(response), missing)
                    }
                    Err(rejection) => {
                        drop(cache);
                        self.replace_response(&rejection, body_size);
                        return Flow::Continue;
                    }
                },
            }
        };
        self.held = Some((held, body_size));
        if missing.is_empty() {
            count(FILTER, "consent_cache", "hit");
            self.finish();
            return Flow::Continue;
        }
        count(FILTER, "consent_cache", "miss");
        if let Some(rejection) = shared.policy.too_many_patients(missing.len()) {
            self.held = None;
            self.replace_response(&rejection, body_size);
            return Flow::Continue;
        }
        self.fetch(&shared, missing, 0);
        if self.fetches.is_empty() {
            self.finish();
            return Flow::Continue;
        }
        Flow::Pause
    }
}
