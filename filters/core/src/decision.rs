//! What a filter decides about a request, independent of how Envoy is told.

use crate::outcome::{IssueType, OperationOutcome};

/// The verdict of a policy on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request continue to the next filter and upstream.
    Allow,
    /// Answer the client locally; nothing reaches the upstream.
    Deny(Rejection),
}

/// A local reply: status, FHIR OperationOutcome body and any extra response headers
/// (`Allow` on a 405, `WWW-Authenticate` on a 401, `Retry-After` on a 429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// Stable, PHI-free reason code: safe for logs, metrics and audit records.
    pub reason: &'static str,
    pub outcome: OperationOutcome,
    pub headers: Vec<(&'static str, String)>,
}

impl Rejection {
    /// A rejection whose OperationOutcome carries one error issue.
    ///
    /// `diagnostics` is shown to the client; it must never contain tokens, bodies or
    /// identifiers beyond what the client itself sent in the offending element.
    pub fn new(
        status: u16,
        reason: &'static str,
        code: IssueType,
        diagnostics: impl Into<String>,
    ) -> Self {
        Rejection {
            status,
            reason,
            outcome: OperationOutcome::error(code, reason, diagnostics),
            headers: Vec::new(),
        }
    }

    /// The fail-closed answer of a filter that has no usable configuration.
    pub fn not_configured(filter: &str) -> Self {
        Rejection::new(
            503,
            "filter-not-configured",
            IssueType::Exception,
            format!("{filter} is not configured"),
        )
    }

    /// An upstream error reduced to its status: the FHIR server's diagnostics may quote a
    /// resource or an id the caller may not see (a patient/ scope, a consent policy).
    pub fn upstream_error(status: u16) -> Self {
        let code = match status {
            401 | 403 => IssueType::Forbidden,
            404 | 410 => IssueType::NotFound,
            400 | 405 | 406 | 409 | 412 | 415 | 422 => IssueType::Invalid,
            429 => IssueType::Throttled,
            _ => IssueType::Exception,
        };
        Rejection::new(
            status,
            "upstream-error",
            code,
            "the FHIR server refused the request; its details are withheld",
        )
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The response body: an OperationOutcome as `application/fhir+json`.
    pub fn body(&self) -> Vec<u8> {
        self.outcome.to_json()
    }

    /// Every response header, content type first.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut all = Vec::with_capacity(self.headers.len() + 1);
        all.push(("content-type", crate::outcome::FHIR_JSON.to_string()));
        all.extend(self.headers.iter().cloned());
        all
    }
}
