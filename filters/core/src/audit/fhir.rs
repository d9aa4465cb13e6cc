//! A record as a FHIR R4 AuditEvent, following the IHE Basic Audit Log Patterns: type `rest`,
//! subtype the RESTful interaction, action C/R/U/D/E, outcome 0/4/8, agents for the user and
//! the client application, the gateway as source, entities for the resource and the patient.
//! Built from the same [`Record`] as the JSON line, so both say the same thing.

use super::Record;
use serde_json::{json, Value};

/// BALP's action for an interaction: create C, read R, update U, delete D, search and
/// operations E.
pub fn action(interaction: Option<&str>) -> &'static str {
    match interaction.unwrap_or("") {
        "create" | "conditional-create" => "C",
        "read"
        | "vread"
        | "history-instance"
        | "capabilities"
        | "smart-configuration"
        | "passthrough" => "R",
        "update" | "conditional-update" | "patch" | "conditional-patch" => "U",
        "delete" | "conditional-delete" => "D",
        _ => "E",
    }
}

/// The `http://hl7.org/fhir/restful-interaction` code.
fn subtype(interaction: Option<&str>) -> &'static str {
    match interaction.unwrap_or("") {
        "read" => "read",
        "vread" => "vread",
        "update" | "conditional-update" => "update",
        "patch" | "conditional-patch" => "patch",
        "delete" | "conditional-delete" => "delete",
        "history-instance" => "history-instance",
        "history-type" => "history-type",
        "history-system" => "history-system",
        "create" | "conditional-create" => "create",
        "search-type" | "search-compartment" => "search-type",
        "search-system" => "search-system",
        "capabilities" | "smart-configuration" => "capabilities",
        "batch" => "batch",
        "transaction" => "transaction",
        _ => "operation",
    }
}

/// 0 success, 4 minor failure (refused, 4xx), 8 serious failure (5xx).
pub fn outcome(status: u16, decision: &str) -> &'static str {
    match status {
        200..=399 if decision == "allow" => "0",
        500..=599 | 0 => "8",
        _ => "4",
    }
}

pub fn audit_event(r: &Record) -> Value {
    let mut user = json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PROV", "display": r.principal_role}]},
        "who": {"identifier": {"system": "urn:fhirgate:principal", "value": r.principal_id.as_deref().unwrap_or("anonymous")}},
        "requestor": true,
    });
    if let (Some(ip), Some(obj)) = (&r.source_ip, user.as_object_mut()) {
        obj.insert("network".into(), json!({"address": ip, "type": "2"}));
    }
    let mut agents = vec![user];
    if let Some(client) = &r.app_client_id {
        agents.push(json!({
            "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
            "who": {"identifier": {"system": "urn:fhirgate:client", "value": client}},
            "requestor": false,
        }));
    }
    let mut entities = Vec::new();
    if let Some(t) = &r.fhir_resource_type {
        let what = match &r.fhir_resource_id {
            Some(id) => json!({"reference": format!("{t}/{id}")}),
            None => json!({"type": t}),
        };
        entities.push(json!({"what": what, "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}}));
    }
    if let Some(p) = &r.patient_id {
        entities.push(json!({"what": {"reference": format!("Patient/{p}")}, "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"}}));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype(r.fhir_interaction.as_deref())}],
        "action": action(r.fhir_interaction.as_deref()),
        "recorded": r.timestamp_utc,
        "outcome": outcome(r.http_status, &r.decision),
        "outcomeDesc": r.fhir_outcome,
        "agent": agents,
        "source": {"observer": {"display": "fhirgate"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "3", "display": "Web Server"}]},
        "extension": [
            {"url": "urn:fhirgate:audit:route", "valueString": r.gateway_route},
            {"url": "urn:fhirgate:audit:http-status", "valueInteger": r.http_status},
            {"url": "urn:fhirgate:audit:severity", "valueCode": r.severity},
            {"url": "urn:fhirgate:audit:chain", "valueString": format!("{}:{}:{}:{}", r.stream, r.seq, r.kid, r.mac)},
        ],
    });
    if let Some(obj) = event.as_object_mut() {
        if !entities.is_empty() {
            obj.insert("entity".into(), Value::Array(entities));
        }
        match r.purpose_of_use.as_deref() {
            Some("unrecognized") => {
                obj.insert(
                    "purposeOfEvent".into(),
                    json!([{"text": "unrecognized purpose of use asserted"}]),
                );
            }
            Some(p) => {
                obj.insert("purposeOfEvent".into(), json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}]}]));
            }
            None => {}
        }
        if let Some(id) = &r.request_id {
            obj.insert(
                "id".into(),
                Value::String(
                    id.chars()
                        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                        .take(64)
                        .collect(),
                ),
            );
        }
    }
    event
}

/// A FHIR batch Bundle that creates these AuditEvents.
pub fn batch(records: &[Record]) -> Value {
    let entries: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut e = audit_event(r);
            if let Some(obj) = e.as_object_mut() {
                obj.remove("id");
            }
            json!({"resource": e, "request": {"method": "POST", "url": "AuditEvent"}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}
