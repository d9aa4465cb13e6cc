//! Audit records: one PHI-free event per request, as a JSON line and as a FHIR R4 AuditEvent
//! (IHE Basic Audit Log Patterns), chained with keyed BLAKE3 MACs so a log's gaps, reorders and
//! edits show. The filter crate gathers the facts; everything here is pure.
//!
//! PHI-free by construction: the record holds reason codes, ids of the actors (pseudonymous or
//! as the token gives them), the resource type and (optionally keyed-hashed) id, a templated
//! route, the status — never a path, query, body, header value other than those listed, or name.

pub mod chain;
pub mod config;
pub mod fhir;
pub mod sink;

use crate::routing::Interaction;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What the filter knows about one finished request (every field optional: a request refused
/// by the routing filter has no interaction).
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub request_id: Option<&'a str>,
    /// Milliseconds since the Unix epoch at which the request arrived.
    pub started_ms: u64,
    pub duration_ms: u64,
    pub method: Option<&'a str>,
    pub interaction: Option<&'a str>,
    pub resource_type: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub compartment: Option<&'a str>,
    pub patient: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub fhir_user: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub scopes: Option<&'a str>,
    pub source_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub status: u16,
    /// The reason code of a fhirgate refusal (or of a report-only decision).
    pub reason: Option<&'a str>,
    /// The issue code of the upstream's OperationOutcome, on an error answer.
    pub upstream_outcome: Option<&'a str>,
    pub purpose: Option<&'a str>,
    pub break_glass: Option<&'a str>,
    pub consent_withheld: u32,
    pub consent_redacted: u32,
}

/// One audit record. Field names and meanings are the architecture's; the chain fields are
/// filled by [`chain::Chain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Record {
    pub event_type: String,
    /// `outcome`: the request finished; `access`: fail-closed mode's record sent (and
    /// acknowledged) before the request is forwarded.
    pub phase: String,
    pub timestamp_utc: String,
    pub request_id: Option<String>,
    pub principal_id: Option<String>,
    pub principal_role: String,
    pub tenant_id: Option<String>,
    pub app_client_id: Option<String>,
    pub fhir_resource_type: Option<String>,
    pub fhir_resource_id: Option<String>,
    pub patient_id: Option<String>,
    pub fhir_interaction: Option<String>,
    pub smart_scopes_used: Vec<String>,
    pub http_method: Option<String>,
    pub gateway_route: String,
    pub source_ip: Option<String>,
    pub user_agent_hash: Option<String>,
    pub http_status: u16,
    pub fhir_outcome: String,
    pub decision: String,
    pub reason: Option<String>,
    pub response_ms: u64,
    pub purpose_of_use: Option<String>,
    pub break_glass: bool,
    pub severity: String,
    pub consent_withheld: u32,
    pub consent_redacted: u32,
    /// The emitting stream (one per Envoy worker), its sequence number, the key id and the MAC
    /// over the previous MAC and this record (see [`chain`]).
    pub stream: String,
    pub seq: u64,
    pub kid: String,
    pub mac: String,
}

/// Keys the record's resource and patient ids (`hashIds`): an HMAC, so the same id maps to the
/// same value in every record (joins stay possible) but cannot be reversed without the key.
pub struct IdHasher {
    /// Keyed once; each id's HMAC starts from a copy.
    keyed: Option<Hmac<Sha256>>,
}

impl IdHasher {
    pub fn new(key: Vec<u8>) -> Self {
        IdHasher {
            keyed: Hmac::<Sha256>::new_from_slice(&key).ok(),
        }
    }

    pub fn hash(&self, id: &str) -> String {
        let Some(mut mac) = self.keyed.clone() else {
            return String::new();
        };
        mac.update(id.as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }
}

use crate::hex::lower as hex;

/// `/fhir/r4/Patient/{id}/$everything`: the route with every value replaced by its role.
pub fn route_template(base: &str, f: &Facts) -> String {
    let Some(interaction) = f.interaction.and_then(Interaction::from_name) else {
        return "{unrouted}".into();
    };
    use Interaction as I;
    let t = f.resource_type.unwrap_or("{type}");
    let op = f.operation.unwrap_or("$op");
    match interaction {
        I::Read | I::Update | I::Patch | I::Delete => format!("{base}/{t}/{{id}}"),
        I::Vread => format!("{base}/{t}/{{id}}/_history/{{vid}}"),
        I::HistoryInstance => format!("{base}/{t}/{{id}}/_history"),
        I::HistoryType => format!("{base}/{t}/_history"),
        I::HistorySystem => format!("{base}/_history"),
        I::Create
        | I::SearchType
        | I::ConditionalCreate
        | I::ConditionalUpdate
        | I::ConditionalPatch
        | I::ConditionalDelete => format!("{base}/{t}"),
        I::SearchSystem | I::Batch | I::Transaction => base.to_string(),
        I::SearchCompartment => format!(
            "{base}/{}/{{id}}/{t}",
            f.compartment
                .and_then(|c| c.split('/').next())
                .unwrap_or("Patient")
        ),
        I::Capabilities => format!("{base}/metadata"),
        I::SmartConfiguration => format!("{base}/.well-known/smart-configuration"),
        I::OperationSystem => format!("{base}/{op}"),
        I::OperationType => format!("{base}/{t}/{op}"),
        I::OperationInstance => format!("{base}/{t}/{{id}}/{op}"),
        I::CdsDiscovery => "/cds-services".into(),
        I::CdsService => "/cds-services/{service}".into(),
        I::CdsFeedback => "/cds-services/{service}/feedback".into(),
        I::Passthrough => format!("{base}/{{passthrough}}"),
    }
}

/// The scopes of the token that speak for this resource type (`user/Observation.rs`,
/// `patient/*.read`, …): the ones that authorised the request.
pub fn scopes_used(scopes: Option<&str>, resource_type: Option<&str>) -> Vec<String> {
    let Some(scopes) = scopes else {
        return Vec::new();
    };
    scopes
        .split_ascii_whitespace()
        .filter(|s| {
            let Some((context, rest)) = s.split_once('/') else {
                return false;
            };
            if !matches!(context, "patient" | "user" | "system") {
                return false;
            }
            let scoped_type = rest.split(['.', '?']).next().unwrap_or("");
            resource_type.is_none_or(|t| scoped_type == "*" || scoped_type == t)
        })
        .map(str::to_string)
        .collect()
}

/// Larger error bodies are not read for their OperationOutcome (the outcome stays the status class).
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// Does the filter read this response's body for its OperationOutcome? An upstream error
/// answered in uncompressed JSON with a known, small length.
pub fn reads_error_body(
    status: u16,
    content_type: Option<&str>,
    content_length: Option<&str>,
    content_encoding: Option<&str>,
) -> bool {
    status >= 400
        && content_type.is_some_and(|c| c.to_ascii_lowercase().contains("json"))
        && content_length
            .and_then(|l| l.trim().parse::<usize>().ok())
            .is_some_and(|l| l <= MAX_ERROR_BODY)
        && content_encoding.is_none()
}

/// The first issue's code of an OperationOutcome body (a fhirgate reason code where the issue
/// carries one), if the body is one: what `fhir_outcome` says for an upstream error.
pub fn outcome_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("resourceType")?.as_str()? != "OperationOutcome" {
        return None;
    }
    let issue = v.get("issue")?.get(0)?;
    let code = issue
        .get("details")
        .and_then(|d| d.get("coding"))
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("code"))
        .or_else(|| issue.get("code"))?
        .as_str()?;
    // A code, not free text: PHI cannot hide in 1–64 code characters.
    (!code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    .then(|| code.to_string())
}

/// `2026-11-24T12:00:00.123Z`.
pub fn timestamp(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The outcome in FHIR terms: `success`, or the fhirgate reason code, or a class of failure.
fn outcome_of(status: u16, reason: Option<&str>) -> String {
    match (status, reason) {
        (_, Some(r)) => r.to_string(),
        (200..=399, None) => "success".into(),
        (401, None) => "login".into(),
        (403, None) => "forbidden".into(),
        (404, None) => "not-found".into(),
        (429, None) => "throttled".into(),
        (400..=499, None) => "invalid".into(),
        _ => "exception".into(),
    }
}

fn role_of(f: &Facts) -> String {
    match (
        f.fhir_user.and_then(|u| u.split('/').rev().nth(1)),
        f.subject,
        f.client_id,
    ) {
        (Some(t), _, _) => t.to_string(),
        (None, Some(s), Some(c)) if s == c => "system".into(),
        (None, None, Some(_)) => "system".into(),
        (None, Some(_), _) => "user".into(),
        (None, None, None) => "anonymous".into(),
    }
}

/// Builds the record for a finished request (chain fields empty).
pub fn record(f: &Facts, base: &str, ids: Option<&IdHasher>) -> Record {
    let hash = |v: Option<&str>| v.map(|id| ids.map_or_else(|| id.to_string(), |h| h.hash(id)));
    let allowed = (200..400).contains(&f.status) && f.reason.is_none();
    Record {
        event_type: "fhir.api.access".into(),
        phase: "outcome".into(),
        timestamp_utc: timestamp(f.started_ms),
        request_id: f.request_id.map(str::to_string),
        principal_id: f.subject.or(f.client_id).map(str::to_string),
        principal_role: role_of(f),
        tenant_id: f.tenant.map(str::to_string),
        app_client_id: f.client_id.map(str::to_string),
        fhir_resource_type: f.resource_type.map(str::to_string),
        fhir_resource_id: hash(f.resource_id),
        patient_id: hash(f.patient),
        fhir_interaction: f.interaction.map(str::to_string),
        smart_scopes_used: scopes_used(f.scopes, f.resource_type),
        http_method: f.method.map(str::to_string),
        gateway_route: route_template(base, f),
        source_ip: f.source_ip.map(str::to_string),
        user_agent_hash: f.user_agent.map(|ua| hex(&Sha256::digest(ua.as_bytes()))),
        http_status: f.status,
        fhir_outcome: f
            .upstream_outcome
            .filter(|_| f.reason.is_none())
            .map_or_else(|| outcome_of(f.status, f.reason), str::to_string),
        decision: if allowed { "allow" } else { "deny" }.into(),
        reason: f.reason.map(str::to_string),
        response_ms: f.duration_ms,
        purpose_of_use: f.purpose.map(purpose_code),
        break_glass: f.break_glass.is_some(),
        // Emergency purposes are emergency access, audited like break-glass.
        severity: if f.break_glass.is_some()
            || f.purpose
                .is_some_and(|p| crate::headers::EMERGENCY_PURPOSES.contains(&p))
        {
            "elevated"
        } else {
            "normal"
        }
        .into(),
        consent_withheld: f.consent_withheld,
        consent_redacted: f.consent_redacted,
        stream: String::new(),
        seq: 0,
        kid: String::new(),
        mac: String::new(),
    }
}

/// HL7 v3 PurposeOfUse codes (terminology.hl7.org ValueSet v3-PurposeOfUse).
const PURPOSES_OF_USE: &[&str] = &[
    "BIORCH",
    "BTG",
    "CAREMGT",
    "CLINTRCH",
    "CLINTRCHNPC",
    "CLINTRCHPC",
    "CLINTRL",
    "CLMATTCH",
    "COC",
    "COVAUTH",
    "COVERAGE",
    "DECEASED",
    "DISASTER",
    "DONAT",
    "DSRCH",
    "ELIGDTRM",
    "ELIGVER",
    "ENROLLM",
    "ERTREAT",
    "ETREAT",
    "FAMRQT",
    "FRAUD",
    "GOV",
    "HACCRED",
    "HCOMPL",
    "HDECD",
    "HDIRECT",
    "HDM",
    "HLEGAL",
    "HMARKT",
    "HOPERAT",
    "HOUTCOMS",
    "HPAYMT",
    "HPRGRP",
    "HQUALIMP",
    "HRESCH",
    "HSYSADMIN",
    "HTEST",
    "LABELING",
    "MEMADMIN",
    "METAMGT",
    "MILCDM",
    "MILDCRG",
    "PATADMIN",
    "PATRQT",
    "PATSFTY",
    "PERFMSR",
    "POARCH",
    "POPHLTH",
    "PRECLINTRCH",
    "PUBHLTH",
    "PWATRNY",
    "RECORDMGT",
    "REMITADV",
    "SUPNWK",
    "SYSDEV",
    "THREAT",
    "TRAIN",
    "TRANSRCH",
    "TREAT",
];

/// The purpose a client asserted, as recorded: a PurposeOfUse code, or `unrecognized` — the
/// header is free text from the client and must not carry anything else into the record.
fn purpose_code(asserted: &str) -> String {
    let code = asserted.trim();
    if PURPOSES_OF_USE.contains(&code) {
        code
    } else {
        "unrecognized"
    }
    .to_string()
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
