//! Per-request context: in fail-closed mode, holds the request until the collector has its
//! access record; at the end of every request, builds the outcome record from the facts the
//! stages recorded, the request's own headers and the other stages' properties.

use crate::root::{Worker, FILTER};
use fhirgate_core::audit::sink::{content_type, encode};
use fhirgate_core::audit::{record, Facts};
use fhirgate_core::outcome::IssueType;
use fhirgate_core::pipeline::{Flow, RequestState, Stage};
use fhirgate_core::ratelimit::filter::host_without_port;
use fhirgate_core::{headers, Rejection};
use fhirgate_proxy::{
    count, host, property_text, property_u64, reject, RequestHeaders, CONSENT_PROPERTY,
    REASON_PROPERTY,
};
use std::rc::Rc;
use std::time::Duration;

pub struct AuditFilter {
    worker: Option<Rc<Worker>>,
    /// Fail-closed mode: the call carrying this request's access record.
    acknowledging: Option<u32>,
    /// An upstream error answer's body is read (it is small) for its OperationOutcome.
    reading_error: bool,
    upstream_outcome: Option<String>,
    /// The response status as it passed this filter (0 before any).
    upstream_status: u16,
    /// The request headers as this stage saw them when the request passed it: the record is
    /// built from them, not from a second copy read from Envoy at the end. None for a request
    /// an earlier stage refused.
    seen: Option<RequestHeaders>,
}

impl AuditFilter {
    pub fn new(worker: Option<Rc<Worker>>) -> Self {
        AuditFilter {
            worker,
            acknowledging: None,
            reading_error: false,
            upstream_outcome: None,
            upstream_status: 0,
            seen: None,
        }
    }

    /// The record of this request as things stand (`status` 0: not answered yet).
    fn facts_record(
        &self,
        worker: &Worker,
        known: &fhirgate_core::pipeline::Facts,
        status: u16,
    ) -> fhirgate_core::audit::Record {
        let read;
        let h = match &self.seen {
            Some(seen) => seen,
            None => {
                read = RequestHeaders::read();
                &read
            }
        };
        let now_ms = host::now_ms();
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
            interaction: known.get(headers::INTERACTION),
            resource_type: known.get(headers::RESOURCE_TYPE),
            resource_id: known.get(headers::ID),
            operation: known.get(headers::OPERATION),
            compartment: known.get(headers::COMPARTMENT),
            patient: known.get(headers::PATIENT),
            subject: known.get(headers::SUBJECT),
            client_id: known.get(headers::CLIENT_ID),
            fhir_user: known.get(headers::FHIR_USER),
            tenant: known.get(headers::TENANT),
            scopes: known.get(headers::SCOPES),
            source_ip: source.as_deref().map(host_without_port),
            user_agent: h.get("user-agent"),
            status,
            reason: reason.as_deref(),
            upstream_outcome: self.upstream_outcome.as_deref(),
            purpose: known
                .get(headers::PURPOSE_OF_USE)
                .or(known.get(headers::BREAK_GLASS)),
            break_glass: known.get(headers::BREAK_GLASS),
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

impl Stage for AuditFilter {
    fn call_response(
        &mut self,
        _state: &mut RequestState,
        token_id: u32,
        _body_size: usize,
    ) -> Option<Flow> {
        if self.acknowledging != Some(token_id) {
            return None;
        }
        self.acknowledging = None;
        let acknowledged = host::call_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .is_some_and(|s| (200..300).contains(&s));
        if acknowledged {
            Some(Flow::Continue)
        } else {
            count(FILTER, "fail_closed", "refused");
            let rejection = Rejection::new(
                503,
                "audit-unavailable",
                IssueType::Transient,
                "the audit record could not be stored; nothing was forwarded",
            )
            .with_header("retry-after", "1");
            Some(reject(FILTER, &rejection))
        }
    }

    /// In fail-closed mode the request, body included, waits for the acknowledgement: letting
    /// a body event go would let the request go with it.
    fn request_body(
        &mut self,
        _state: &mut RequestState,
        _body_size: usize,
        _end_of_stream: bool,
    ) -> Flow {
        if self.acknowledging.is_some() {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }

    fn request_headers(&mut self, state: &mut RequestState, _end_of_stream: bool) -> Flow {
        let Some(worker) = self.worker.clone() else {
            return reject(FILTER, &Rejection::not_configured(FILTER));
        };
        self.seen = Some(RequestHeaders::read());
        let (Some(fail_closed), Some(c)) = (
            worker.policy.config.fail_closed.as_ref(),
            worker.policy.config.collector.as_ref(),
        ) else {
            return Flow::Continue;
        };
        let mut access = self.facts_record(&worker, &state.facts, 0);
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
        match host::dispatch(
            &c.cluster,
            call_headers,
            Some(&body),
            Duration::from_millis(fail_closed.timeout_ms),
        ) {
            Ok(token) => {
                self.acknowledging = Some(token);
                Flow::Pause
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

    fn response_headers(&mut self, _state: &mut RequestState, end_of_stream: bool) -> Flow {
        let status = host::response_status();
        // The FHIR server's answer, kept: a client that resets before it arrives must not
        // turn a committed write into "status 0, deny" in the record.
        self.upstream_status = status;
        if end_of_stream {
            return Flow::Continue;
        }
        self.reading_error = status >= 400
            && fhirgate_core::audit::reads_error_body(
                status,
                host::response_header("content-type").as_deref(),
                host::response_header("content-length").as_deref(),
                host::response_header("content-encoding").as_deref(),
            );
        Flow::Continue
    }

    fn response_body(
        &mut self,
        _state: &mut RequestState,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if !self.reading_error {
            return Flow::Continue;
        }
        if !end_of_stream {
            // Buffered until whole (bounded by the content-length checked on the head).
            return Flow::Pause;
        }
        self.reading_error = false;
        let body = host::response_body(body_size);
        self.upstream_outcome = fhirgate_core::audit::outcome_code(&body);
        Flow::Continue
    }

    fn log(&mut self, state: &mut RequestState) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let status = property_u64(vec!["response", "code"])
            .map(|c| c as u16)
            .filter(|c| *c != 0)
            .unwrap_or(self.upstream_status);
        let outcome = self.facts_record(&worker, &state.facts, status);
        worker.emit(outcome, true);
    }
}
