//! Per-request context: notes who asks and why; holds a FHIR response whole, fetches the
//! Consents it needs, and sends what the core leaves of it.

use crate::root::{Shared, FILTER};
use fhirgate_core::consent::cache::{read_search_for, search_path, SearchAnswer};
use fhirgate_core::consent::{
    filters_interaction, is_single_read, is_write, keeps_committed_write, reduces_error, rfc3339,
    Caller, Consents, FastPath, Filtered, ReadPlan, Report,
};
use fhirgate_core::outcome::IssueType;
use fhirgate_core::{headers, Rejection};
use fhirgate_proxy::{count, mark_passed, reject, RequestHeaders};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

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

/// A held response: as decoded, or already parsed (then it is decided resource by resource,
/// never parsed a second time).
enum Held {
    Raw(Vec<u8>),
    Parsed(serde_json::Value),
}

pub struct ConsentFilter {
    shared: Option<Rc<Shared>>,
    asked: Option<Asked>,
    /// The response and its size as buffered, while the Consents it needs are fetched.
    held: Option<(Held, usize)>,
    /// Outstanding fetches: call token → the patients it asks for and the attempt.
    fetches: HashMap<u32, (Vec<String>, u8)>,
    /// Patients whose fetch failed for this response.
    unavailable: HashSet<String>,
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
}

impl ConsentFilter {
    pub fn new(shared: Option<Rc<Shared>>) -> Self {
        ConsentFilter {
            shared,
            asked: None,
            held: None,
            fetches: HashMap::new(),
            unavailable: HashSet::new(),
            refusal: None,
            reading: false,
            status: 0,
            reducing: false,
        }
    }

    fn now(&self) -> i64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    fn replace_response(&self, rejection: &Rejection, body_size: usize) {
        count(FILTER, "denied", rejection.reason);
        fhirgate_proxy::set_reason(rejection.reason);
        self.set_http_response_header(":status", Some(&rejection.status.to_string()));
        // Nothing that describes the withheld resource stays: its version, date or location.
        fhirgate_proxy::drop_describing_response_headers();
        for (name, value) in rejection.response_headers() {
            self.set_http_response_header(name, Some(&value));
        }
        self.set_http_response_body(0, body_size, &rejection.body());
    }

    /// Decides the held response with the Consents now known, and writes the result.
    fn finish(&mut self) {
        let (Some(shared), Some((held, body_size)), Some(asked)) =
            (self.shared.clone(), self.held.take(), self.asked.as_ref())
        else {
            return;
        };
        let now = self.now();
        let cache = shared.cache.borrow();
        let unavailable = &self.unavailable;
        let lookup = |patient: &str| match cache.get(patient, now) {
            Some(list) if !unavailable.contains(patient) => Consents::Known(list),
            _ => Consents::Unavailable,
        };
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
        let caller = Caller {
            subject: asked.subject.as_deref(),
            client_id: asked.client_id.as_deref(),
            purpose: asked.purpose.as_deref(),
            break_glass: asked.break_glass,
            now: &now_text,
        };
        let mut report = Report::default();
        let filtered = match response {
            Ok(response) => shared.policy.filter_value(
                response,
                &caller,
                asked.single_read,
                &lookup,
                &mut report,
            ),
            Err(rejection) => Filtered::Refused(rejection),
        };
        drop(cache);
        count_report(&report);
        let withheld: u32 = report.withheld.values().sum();
        let redacted: u32 = report.redacted.values().sum();
        if withheld + redacted > 0 {
            let _ = proxy_wasm::hostcalls::set_property(
                vec![fhirgate_proxy::CONSENT_PROPERTY],
                Some(format!("{withheld},{redacted}").as_bytes()),
            );
        }
        match filtered {
            Filtered::Unchanged => {}
            Filtered::Rewritten(bytes) => {
                self.set_http_response_header("content-encoding", None);
                self.set_http_response_body(0, body_size, &bytes);
            }
            // A write the server committed stays committed: its echo is withheld, its status
            // (and Location) kept, and the audit records the write as done.
            ref refused if keeps_committed_write(asked.write, self.status, refused) => {
                count(FILTER, "withheld", "committed-echo");
                self.set_http_response_header("content-encoding", None);
                self.set_http_response_header("etag", None);
                self.set_http_response_header(
                    "content-type",
                    Some(fhirgate_core::outcome::FHIR_JSON),
                );
                self.set_http_response_body(
                    0,
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
                self,
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

impl Context for ConsentFilter {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some((patients, attempt)) = self.fetches.remove(&token_id) else {
            return;
        };
        let status: Option<u16> = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse().ok());
        // A transport failure or a 5xx is tried once more (another endpoint, most likely)
        // before the patients' resources are withheld.
        if attempt == 0 && status.is_none_or(|s| s >= 500) {
            if let Some(shared) = self.shared.clone() {
                count(FILTER, "consent_cache", "fetch_retried");
                self.fetch(&shared, patients, 1);
                if !self.fetches.is_empty() {
                    return;
                }
            }
        } else {
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            self.record_fetch(patients, status, &body);
        }
        if self.fetches.is_empty() {
            self.finish();
            self.resume_http_response();
        }
    }
}

impl ConsentFilter {
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
                self.fetch_in(&shared, patients, 1, 1);
            }
            _ => {
                count(FILTER, "consent_cache", "fetch_failed");
                log::warn!("{FILTER}: Consent fetch failed (status {status:?})");
                self.unavailable.extend(patients);
            }
        }
    }
}

impl HttpContext for ConsentFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        mark_passed(FILTER);
        let h = RequestHeaders::read();
        let interaction = h.get(headers::INTERACTION).unwrap_or_default();
        if !filters_interaction(interaction) {
            return Action::Continue;
        }
        let break_glass = h.get(headers::BREAK_GLASS);
        // Only from a verified source: the authorization filter's header (a token claim, or
        // a trusted zone's header). A client's own purpose header means nothing here.
        let purpose_header = h.get(headers::PURPOSE_OF_USE);
        let asked = Asked {
            subject: h.get(headers::SUBJECT).map(str::to_string),
            client_id: h.get(headers::CLIENT_ID).map(str::to_string),
            purpose: shared
                .policy
                .purpose_of(purpose_header, break_glass)
                .map(str::to_string),
            break_glass: break_glass.is_some(),
            single_read: is_single_read(interaction),
            write: is_write(interaction),
        };
        // What no answer could be filtered into shape is refused before it is asked.
        let query = h
            .get(":path")
            .and_then(|p| p.split_once('?'))
            .map_or("", |(_, q)| q);
        let caller = Caller {
            subject: asked.subject.as_deref(),
            client_id: asked.client_id.as_deref(),
            purpose: asked.purpose.as_deref(),
            break_glass: asked.break_glass,
            now: "",
        };
        let operation = h.get(headers::OPERATION);
        if let Some(rejection) =
            shared
                .policy
                .request_refusal(interaction, operation, query, &caller)
        {
            return reject(FILTER, &rejection);
        }
        // A conditional read would answer 304 for a resource never checked: ask for the body.
        if !asked.write {
            for name in headers::CONDITIONAL_READ {
                if h.contains(name) {
                    self.set_http_request_header(name, None);
                }
            }
        }
        self.asked = Some(asked);
        // Ask for an uncompressed answer (a compressed one is decoded, within the body limit).
        if h.contains("accept-encoding") {
            self.set_http_request_header("accept-encoding", None);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.asked.is_none() || end_of_stream {
            return Action::Continue;
        }
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let content_type = self
            .get_http_response_header("content-type")
            .unwrap_or_default();
        self.status = status;
        // Asked only for errors: a host call per success would be spent for nothing.
        let from_upstream = status >= 400
            && self
                .get_property(vec!["response", "code_details"])
                .is_some_and(|d| d == b"via_upstream");
        match shared.policy.read_plan(status, &content_type) {
            // An upstream error's body can quote what the policies withhold: its status alone
            // goes on (the gateway's own refusals are PHI-free and pass).
            ReadPlan::Skip if reduces_error(status, from_upstream) => self.reducing = true,
            ReadPlan::Skip => return Action::Continue,
            ReadPlan::Refuse(rejection) => self.refusal = Some(rejection),
            ReadPlan::Read => {}
        }
        self.set_http_response_header("content-length", None);
        self.reading = true;
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(shared), Some(_), true) =
            (self.shared.clone(), self.asked.as_ref(), self.reading)
        else {
            return Action::Continue;
        };
        if self.reducing {
            if !end_of_stream {
                self.set_http_response_body(0, body_size, &[]);
                return Action::Pause;
            }
            let upstream = self
                .get_http_response_body(0, body_size)
                .unwrap_or_default();
            let reduced = fhirgate_core::outcome::reduced_upstream_outcome(&upstream);
            count(FILTER, "reduced", "upstream-error");
            fhirgate_proxy::drop_describing_response_headers();
            self.set_http_response_header("content-type", Some(fhirgate_core::outcome::FHIR_JSON));
            self.set_http_response_body(0, body_size, &reduced);
            return Action::Continue;
        }
        if let Some(rejection) = self.refusal.take() {
            if !end_of_stream {
                // Nothing of a refused response is kept or sent: drop what came so far.
                self.set_http_response_body(0, body_size, &[]);
                self.refusal = Some(rejection);
                return Action::Pause;
            }
            self.replace_response(&rejection, body_size);
            return Action::Continue;
        }
        if !end_of_stream {
            if body_size > shared.policy.config.max_body_bytes {
                self.set_http_response_body(0, body_size, &[]);
                self.refusal = Some(Rejection::new(
                    502,
                    "response-too-large",
                    IssueType::TooCostly,
                    "the response is larger than the consent filter's limit",
                ));
                return Action::Pause;
            }
            return Action::Pause;
        }
        let raw = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        let encoding = self.get_http_response_header("content-encoding");
        let body = match shared.policy.decode(encoding.as_deref(), &raw) {
            Ok(body) => body,
            Err(rejection) => {
                self.replace_response(&rejection, body_size);
                return Action::Continue;
            }
        };
        let now = self.now();
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
                    return Action::Continue;
                }
                FastPath::NeedConsents(patients) => (Held::Raw(body), patients),
                FastPath::Parse => match shared.policy.parse(&body) {
                    Ok(response) => {
                        let missing = shared
                            .policy
                            .patients_needed(&response)
                            .into_iter()
                            .filter(|p| cache.get(p, now).is_none())
                            .collect();
                        (Held::Parsed(response), missing)
                    }
                    Err(rejection) => {
                        drop(cache);
                        self.replace_response(&rejection, body_size);
                        return Action::Continue;
                    }
                },
            }
        };
        self.held = Some((held, body_size));
        if missing.is_empty() {
            count(FILTER, "consent_cache", "hit");
            self.finish();
            return Action::Continue;
        }
        count(FILTER, "consent_cache", "miss");
        if let Some(rejection) = shared.policy.too_many_patients(missing.len()) {
            self.held = None;
            self.replace_response(&rejection, body_size);
            return Action::Continue;
        }
        self.fetch(&shared, missing, 0);
        if self.fetches.is_empty() {
            self.finish();
            return Action::Continue;
        }
        Action::Pause
    }
}
