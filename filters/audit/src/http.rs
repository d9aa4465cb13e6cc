//! Per-request context: in fail-closed mode, holds the request until the collector has its
//! access record; at the end of every request, builds the outcome record from what the request
//! headers and the other filters' properties say.

use crate::root::{Worker, FILTER};
use fhirgate_core::audit::sink::{content_type, encode};
use fhirgate_core::audit::{record, Facts};
use fhirgate_core::outcome::IssueType;
use fhirgate_core::ratelimit::filter::host_without_port;
use fhirgate_core::{headers, Rejection};
use fhirgate_proxy::{
    count, mark_passed, property_text, property_u64, reject, RequestHeaders, CONSENT_PROPERTY,
    REASON_PROPERTY,
};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

pub struct AuditFilter {
    worker: Option<Rc<Worker>>,
    /// Fail-closed mode: the call carrying this request's access record.
    acknowledging: Option<u32>,
    /// An upstream error answer's body is read (it is small) for its OperationOutcome.
    reading_error: bool,
    upstream_outcome: Option<String>,
    /// The response status as it passed this filter (0 before any).
    upstream_status: u16,
}

impl AuditFilter {
    pub fn new(worker: Option<Rc<Worker>>) -> Self {
        AuditFilter {
            worker,
            acknowledging: None,
            reading_error: false,
            upstream_outcome: None,
            upstream_status: 0,
        }
    }

    /// The record of this request as things stand (`status` 0: not answered yet).
    fn facts_record(&self, worker: &Worker, status: u16) -> fhirgate_core::audit::Record {
        let h = RequestHeaders::read();
        let now_ms = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let started_ms = property_u64(vec!["request", "time"]).map_or(now_ms, |ns| ns / 1_000_000);
        let duration_ms = property_u64(vec!["request", "duration"])
            .map_or(now_ms.saturating_sub(started_ms), |ns| ns / 1_000_000);
        let source = property_text(vec!["source", "address"]);
        let reason = property_text(vec![REASON_PROPERTY]);
        let consent = property_text(vec![CONSENT_PROPERTY]);
        let (withheld, redacted) = consent
            .as_deref()
            .and_then(|c| c.split_once(','))
            .map(|(w, r)| (w.parse().unwrap_or(0), r.parse().unwrap_or(0)))
            .unwrap_or((0, 0));
        let facts = Facts {
            request_id: h.get("x-request-id"),
            started_ms,
            duration_ms,
            method: h.get(":method"),
            interaction: h.get(headers::INTERACTION),
            resource_type: h.get(headers::RESOURCE_TYPE),
            resource_id: h.get(headers::ID),
            operation: h.get(headers::OPERATION),
            compartment: h.get(headers::COMPARTMENT),
            patient: h.get(headers::PATIENT),
            subject: h.get(headers::SUBJECT),
            client_id: h.get(headers::CLIENT_ID),
            fhir_user: h.get(headers::FHIR_USER),
            tenant: h.get(headers::TENANT),
            scopes: h.get(headers::SCOPES),
            source_ip: source.as_deref().map(host_without_port),
            user_agent: h.get("user-agent"),
            status,
            reason: reason.as_deref(),
            upstream_outcome: self.upstream_outcome.as_deref(),
            purpose: h
                .get(headers::PURPOSE_OF_USE)
                .or(h.get(headers::BREAK_GLASS)),
            break_glass: h.get(headers::BREAK_GLASS),
            consent_withheld: withheld,
            consent_redacted: redacted,
        };
        record(
            &facts,
            &worker.policy.config.base_path,
            worker.policy.ids.as_ref(),
        )
    }
}

impl Context for AuditFilter {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        if self.acknowledging != Some(token_id) {
            return;
        }
        self.acknowledging = None;
        let acknowledged = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .is_some_and(|s| (200..300).contains(&s));
        if acknowledged {
            self.resume_http_request();
        } else {
            count(FILTER, "fail_closed", "refused");
            let rejection = Rejection::new(
                503,
                "audit-unavailable",
                IssueType::Transient,
                "the audit record could not be stored; nothing was forwarded",
            )
            .with_header("retry-after", "1");
            reject(FILTER, &rejection);
        }
    }
}

impl HttpContext for AuditFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        // Marked now: in fail-closed mode the request goes on only after the acknowledgement.
        mark_passed(FILTER);
        let (Some(fail_closed), Some(c)) = (
            worker.policy.config.fail_closed.as_ref(),
            worker.policy.config.collector.as_ref(),
        ) else {
            return Action::Continue;
        };
        let mut access = self.facts_record(&worker, 0);
        access.phase = "access".into();
        access.decision = "pending".into();
        access.fhir_outcome = "pending".into();
        let sealed = worker.emit(access, false);
        let body = encode(c.format, std::slice::from_ref(&sealed));
        let call_headers = vec![
            (":method", "POST"),
            (":path", c.path.as_str()),
            (":authority", c.authority.as_str()),
            ("content-type", content_type(c.format)),
        ];
        match self.dispatch_http_call(
            &c.cluster,
            call_headers,
            Some(&body),
            vec![],
            Duration::from_millis(fail_closed.timeout_ms),
        ) {
            Ok(token) => {
                self.acknowledging = Some(token);
                Action::Pause
            }
            Err(status) => {
                log::warn!("{FILTER}: access record call could not start: {status:?}");
                count(FILTER, "fail_closed", "refused");
                reject(
                    FILTER,
                    &Rejection::new(
                        503,
                        "audit-unavailable",
                        IssueType::Transient,
                        "the audit record could not be stored; nothing was forwarded",
                    ),
                )
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        // The FHIR server's answer, kept: a client that resets before it arrives must not
        // turn a committed write into "status 0, deny" in the record.
        self.upstream_status = status;
        if end_of_stream {
            return Action::Continue;
        }
        self.reading_error = status >= 400
            && fhirgate_core::audit::reads_error_body(
                status,
                self.get_http_response_header("content-type").as_deref(),
                self.get_http_response_header("content-length").as_deref(),
                self.get_http_response_header("content-encoding").as_deref(),
            );
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.reading_error {
            return Action::Continue;
        }
        if !end_of_stream {
            // Buffered until whole (bounded by the content-length checked on the head).
            return Action::Pause;
        }
        self.reading_error = false;
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        self.upstream_outcome = fhirgate_core::audit::outcome_code(&body);
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let status = property_u64(vec!["response", "code"])
            .map(|c| c as u16)
            .filter(|c| *c != 0)
            .unwrap_or(self.upstream_status);
        let outcome = self.facts_record(&worker, status);
        worker.emit(outcome, true);
    }
}
