//! FHIR R4 OperationOutcome: the body of every error fhirgate returns.

use serde_json::json;

/// Media type of every body fhirgate writes.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Coding system of the stable reason codes carried in `issue.details`.
pub const REASON_SYSTEM: &str = "urn:fhirgate:reason";

/// The subset of the R4 `IssueType` value set fhirgate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    TooLong,
    NotSupported,
    NotFound,
    Security,
    Login,
    Forbidden,
    Throttled,
    TooCostly,
    Exception,
    Timeout,
    Transient,
}

impl IssueType {
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::TooLong => "too-long",
            IssueType::NotSupported => "not-supported",
            IssueType::NotFound => "not-found",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::Throttled => "throttled",
            IssueType::TooCostly => "too-costly",
            IssueType::Exception => "exception",
            IssueType::Timeout => "timeout",
            IssueType::Transient => "transient",
        }
    }
}

/// A one-issue OperationOutcome with severity `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationOutcome {
    pub code: IssueType,
    pub reason: &'static str,
    pub diagnostics: String,
}

impl OperationOutcome {
    pub fn error(code: IssueType, reason: &'static str, diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            code,
            reason,
            diagnostics: diagnostics.into(),
        }
    }

    pub fn to_value(&self) -> serde_json::Value {
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": self.code.code(),
                "details": {
                    "coding": [{ "system": REASON_SYSTEM, "code": self.reason }],
                    "text": self.diagnostics,
                },
                "diagnostics": self.diagnostics,
            }]
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a Value built from strings cannot fail; an empty body would still be
        // a valid local reply, so no panic path is needed here.
        serde_json::to_vec(&self.to_value()).unwrap_or_default()
    }
}

/// An upstream error body reduced to its codes: each issue's `severity` and `code` (when they
/// are plain codes), tagged `upstream-error`; diagnostics, details text, expressions and
/// anything else — where a server quotes resources — are dropped. A body that is not an
/// OperationOutcome becomes a single `exception` issue.
pub fn reduced_upstream_outcome(body: &[u8]) -> Vec<u8> {
    let plain = |v: Option<&serde_json::Value>| {
        v.and_then(serde_json::Value::as_str)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= 32
                    && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
            })
            .map(str::to_string)
    };
    let parsed: Option<serde_json::Value> = (body.len() <= 64 * 1024)
        .then(|| serde_json::from_slice(body).ok())
        .flatten();
    let issues: Vec<serde_json::Value> = parsed
        .as_ref()
        .filter(|v| v.get("resourceType").and_then(serde_json::Value::as_str) == Some("OperationOutcome"))
        .and_then(|v| v.get("issue"))
        .and_then(serde_json::Value::as_array)
        .map(|list| {
            list.iter()
                .take(20)
                .map(|i| {
                    json!({
                        "severity": plain(i.get("severity")).unwrap_or_else(|| "error".into()),
                        "code": plain(i.get("code")).unwrap_or_else(|| "exception".into()),
                        "details": {"coding": [{"system": REASON_SYSTEM, "code": "upstream-error"}]},
                    })
                })
                .collect()
        })
        .filter(|l: &Vec<serde_json::Value>| !l.is_empty())
        .unwrap_or_else(|| vec![json!({"severity": "error", "code": "exception", "details": {"coding": [{"system": REASON_SYSTEM, "code": "upstream-error"}]}})]);
    serde_json::to_vec(&json!({"resourceType": "OperationOutcome", "issue": issues}))
        .unwrap_or_default()
}

/// The body of a write the FHIR server committed whose echo (the resource as stored) the
/// caller may not see: a success, said as an informational OperationOutcome, as a server
/// answering `Prefer: return=OperationOutcome` would.
pub fn committed_echo_withheld() -> Vec<u8> {
    let outcome = json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "information",
            "code": "informational",
            "details": {
                "coding": [{ "system": REASON_SYSTEM, "code": "committed-echo-withheld" }],
                "text": "the write was committed; the stored resource is withheld by the consent policies",
            },
        }]
    });
    serde_json::to_vec(&outcome).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_outcome_keeps_its_codes_and_loses_what_it_quotes() {
        let upstream = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"value","diagnostics":"Observation/o1 of Patient/456 (HIV): bad date","details":{"text":"HIV"},"expression":["Observation.subject"]},{"severity":"warning","code":"<script>"}]}"#;
        let reduced: serde_json::Value =
            serde_json::from_slice(&reduced_upstream_outcome(upstream)).unwrap();
        assert_eq!(reduced["issue"][0]["code"], "value");
        assert_eq!(reduced["issue"][0]["severity"], "error");
        assert_eq!(reduced["issue"][1]["code"], "exception", "not a plain code");
        let text = reduced.to_string();
        assert!(
            !text.contains("456") && !text.contains("HIV") && !text.contains("subject"),
            "{text}"
        );
        for other in [
            &b"<html>Patient 456</html>"[..],
            b"{}",
            br#"{"resourceType":"Observation","id":"x"}"#,
        ] {
            let r: serde_json::Value =
                serde_json::from_slice(&reduced_upstream_outcome(other)).unwrap();
            assert_eq!(r["issue"][0]["code"], "exception");
            assert!(!r.to_string().contains("456"));
        }
    }

    #[test]
    fn renders_a_valid_r4_operation_outcome() {
        let outcome =
            OperationOutcome::error(IssueType::NotFound, "unknown-resource-type", "no such type");
        let v: serde_json::Value = serde_json::from_slice(&outcome.to_json()).unwrap();
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["severity"], "error");
        assert_eq!(v["issue"][0]["code"], "not-found");
        assert_eq!(
            v["issue"][0]["details"]["coding"][0]["code"],
            "unknown-resource-type"
        );
        assert_eq!(v["issue"][0]["diagnostics"], "no such type");
    }

    #[test]
    fn escapes_diagnostics_as_json() {
        let outcome =
            OperationOutcome::error(IssueType::Invalid, "x", "quote \" and \\ newline \n");
        let v: serde_json::Value = serde_json::from_slice(&outcome.to_json()).unwrap();
        assert_eq!(v["issue"][0]["diagnostics"], "quote \" and \\ newline \n");
    }
}
