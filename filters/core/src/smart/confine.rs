//! Proving that a resource, or a whole response, is confined to one patient.
//!
//! Under `patient/` scopes fhirgate forwards what it can prove is the launch patient's and
//! refuses the rest. The proof is read from the R4 definitions (`fhir::patient_data`): a
//! resource is tied to the patient when an element its type's compartment (or patient)
//! parameters read references `Patient/{id}`, and it mentions no other patient anywhere — in
//! any reference at any depth (extensions, contained resources, nested Bundles), nor as a
//! contained Patient. A response is verified resource by resource: every Bundle entry of every
//! Bundle type, nested Bundles and `Parameters` parts; a response it cannot classify is refused.

use crate::fhir::{self, PatientData};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Why a response or body was not released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unconfined {
    /// A resource belongs to, or mentions, a patient other than the token's, or cannot be tied
    /// to the token's patient.
    NotPatients,
    /// Not FHIR JSON fhirgate can read resource by resource.
    Unverifiable,
}

impl Unconfined {
    pub fn reason(self) -> &'static str {
        match self {
            Unconfined::NotPatients => "not-in-patient-compartment",
            Unconfined::Unverifiable => "unverifiable-response",
        }
    }
}

/// What a `reference` string points at, as far as patients go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientRef<'a> {
    /// `Patient/{id}` or `Patient/{id}/_history/{v}` on this server (relative).
    Local(&'a str),
    /// A Patient on another server (an absolute URL), or a malformed Patient reference: never
    /// proof of the token's patient, always counted as another patient.
    Foreign,
    /// Not a reference to a Patient.
    NotPatient,
}

pub fn patient_ref(reference: &str) -> PatientRef<'_> {
    let path = match reference.split_once("/_history/") {
        Some((path, version)) if fhir::is_valid_id(version) => path,
        Some(_) => {
            return if reference.contains("Patient/") {
                PatientRef::Foreign
            } else {
                PatientRef::NotPatient
            }
        }
        None => reference,
    };
    if let Some(id) = path.strip_prefix("Patient/") {
        return if fhir::is_valid_id(id) {
            PatientRef::Local(id)
        } else {
            PatientRef::Foreign
        };
    }
    // `http://other/fhir/Patient/1`, `Patient?identifier=…` (conditional), `urn:…/Patient/1`.
    if path.contains("Patient/") || path.starts_with("Patient?") {
        return PatientRef::Foreign;
    }
    PatientRef::NotPatient
}

/// The `Type/id` a relative reference names (history stripped), for matching Bundle entries.
fn relative_target(reference: &str) -> Option<(&str, &str)> {
    let path = reference.split("/_history/").next().unwrap_or(reference);
    let (t, id) = path.split_once('/')?;
    (fhir::resource_type(t).is_some() && fhir::is_valid_id(id)).then_some((t, id))
}

/// Calls `f` with every `reference` string at the end of `path` (dotted element names) in
/// `value`, through arrays. Only the Reference at the path counts, never one nested deeper (an
/// extension, an identifier's assigner).
fn references_at<'a>(value: &'a Value, path: &str, f: &mut dyn FnMut(&'a str)) {
    let mut current: Vec<&Value> = vec![value];
    for segment in path.split('.') {
        let mut next = Vec::new();
        for v in current {
            match v.get(segment) {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(item) => next.push(item),
                None => {}
            }
        }
        current = next;
    }
    for v in current {
        if let Some(Value::String(r)) = v.get("reference") {
            f(r);
        }
    }
}

/// Every reference string anywhere in `value`, and every contained or nested resource's type.
fn walk<'a>(
    value: &'a Value,
    on_reference: &mut dyn FnMut(&'a str),
    on_resource: &mut dyn FnMut(&'a Map<String, Value>),
) {
    match value {
        Value::Object(map) => {
            if map.contains_key("resourceType") {
                on_resource(map);
            }
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("reference", Value::String(r)) => on_reference(r),
                    _ => walk(v, on_reference, on_resource),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| walk(v, on_reference, on_resource)),
        _ => {}
    }
}

/// Does `resource` mention a patient other than `patient`: a reference to another (or a
/// foreign) Patient anywhere in it, or a Patient resource nested in it that is not the patient
/// (a contained Patient has a local id and so is never provably the patient)?
pub fn mentions_other_patient(resource: &Value, patient: &str) -> bool {
    mentions_other_patient_except(resource, patient, &[])
}

/// [`mentions_other_patient`] over every element of `resource` but those named in `skip`
/// (checked on their own: a Bundle's entries, a parameter's resource and parts).
fn mentions_other_patient_except(resource: &Value, patient: &str, skip: &[&str]) -> bool {
    let mut other = false;
    let mut on_reference = |r: &str| match patient_ref(r) {
        PatientRef::Local(id) if id == patient => {}
        PatientRef::NotPatient => {}
        _ => other = true,
    };
    let mut nested_patient = false;
    let mut on_resource = |nested: &Map<String, Value>| {
        nested_patient |= nested.get("resourceType").and_then(Value::as_str) == Some("Patient");
    };
    match resource {
        // The resource itself is not nested: walk its elements.
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    (k, _) if skip.contains(&k) => {}
                    ("reference", Value::String(r)) => on_reference(r),
                    _ => walk(v, &mut on_reference, &mut on_resource),
                }
            }
        }
        v => walk(v, &mut on_reference, &mut on_resource),
    }
    other || nested_patient
}

/// Is `resource` tied to `patient` by the elements its type's definitions name? Patient by its
/// id; other patient-data types by a `Patient/{patient}` reference on one of their paths. Types
/// that hold no patient data are never tied (they need no tie).
pub fn tied_to_patient(resource: &Value, patient: &str) -> bool {
    let Some(t) = resource.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    match fhir::patient_data(t) {
        PatientData::Own => resource.get("id").and_then(Value::as_str) == Some(patient),
        PatientData::Linked { paths, .. } => {
            let mut tied = false;
            for path in paths {
                references_at(resource, path, &mut |r| {
                    tied |= patient_ref(r) == PatientRef::Local(patient)
                });
            }
            tied
        }
        PatientData::None => false,
    }
}

/// The patients (local ids) a resource is tied to through its type's patient elements.
pub fn patients_of(resource: &Value) -> Vec<String> {
    let Some(t) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let mut patients = Vec::new();
    match fhir::patient_data(t) {
        PatientData::Own => patients.extend(
            resource
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| fhir::is_valid_id(id))
                .map(str::to_string),
        ),
        PatientData::Linked { paths, .. } => {
            for path in paths {
                references_at(resource, path, &mut |r| {
                    if let PatientRef::Local(id) = patient_ref(r) {
                        patients.push(id.to_string());
                    }
                });
            }
        }
        PatientData::None => {}
    }
    patients.sort();
    patients.dedup();
    patients
}

/// Does `resource` name a patient on one of its type's patient elements in a way no Consent
/// lookup can follow: a Reference of `type` Patient with only an `identifier`, an absolute or
/// conditional Patient reference, or an identifier-only Reference whose `type` is absent
/// (the element may target a Patient, so it may be one)? A reference to another type names no
/// patient.
pub fn unresolved_patient(resource: &Value) -> bool {
    let Some(t) = resource.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    let PatientData::Linked { paths, .. } = fhir::patient_data(t) else {
        return false;
    };
    let mut unresolved = false;
    for path in paths {
        let mut current: Vec<&Value> = vec![resource];
        for segment in path.split('.') {
            current = current
                .into_iter()
                .filter_map(|v| v.get(segment))
                .flat_map(|v| match v {
                    Value::Array(items) => items.iter().collect::<Vec<_>>(),
                    other => vec![other],
                })
                .collect();
        }
        for reference in current {
            match reference.get("reference").and_then(Value::as_str) {
                Some(r) => unresolved |= patient_ref(r) == PatientRef::Foreign,
                // Only a `type` naming another resource type says the identifier is not a
                // patient's; none (or a non-string one) may be one.
                None => {
                    unresolved |= reference.get("identifier").is_some()
                        && reference
                            .get("type")
                            .and_then(Value::as_str)
                            .is_none_or(|t| t.rsplit('/').next() == Some("Patient"))
                }
            }
        }
    }
    unresolved
}

/// May `resource` (not a Bundle or Parameters) be released to `patient` on its own: it
/// mentions no other patient, and it is tied to the patient or holds no patient data?
pub fn releasable(resource: &Value, patient: &str) -> bool {
    let Some(t) = resource.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    if mentions_other_patient(resource, patient) {
        return false;
    }
    fhir::patient_data(t) == PatientData::None || tied_to_patient(resource, patient)
}

/// The request's reverse includes (`_revinclude=Source:param`): a resource of `Source` in the
/// response is the patient's when `param`'s elements reference a resource proven the patient's.
pub type RevIncludes<'a> = [(&'a str, &'a str)];

/// Verifies a whole response body for `patient`.
pub fn verify_response(
    body: &Value,
    patient: &str,
    revincludes: &RevIncludes,
) -> Result<(), Unconfined> {
    let t = body
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or(Unconfined::Unverifiable)?;
    fhir::resource_type(t).ok_or(Unconfined::Unverifiable)?;
    let mut proven = HashSet::new();
    verify_resource(body, patient, revincludes, &mut proven)
}

/// `proven` collects the `Type/id`s proven the patient's, for reverse includes and entries
/// without a resource.
fn verify_resource(
    resource: &Value,
    patient: &str,
    revincludes: &RevIncludes,
    proven: &mut HashSet<String>,
) -> Result<(), Unconfined> {
    let t = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or(Unconfined::Unverifiable)?;
    match t {
        "Bundle" => verify_bundle(resource, patient, revincludes, proven),
        "Parameters" => verify_parameters(resource, patient, revincludes, proven),
        _ if fhir::resource_type(t).is_none() => Err(Unconfined::Unverifiable),
        _ if releasable(resource, patient) => {
            if let Some(id) = resource.get("id").and_then(Value::as_str) {
                proven.insert(format!("{t}/{id}"));
            }
            Ok(())
        }
        _ => Err(Unconfined::NotPatients),
    }
}

fn verify_bundle(
    bundle: &Value,
    patient: &str,
    revincludes: &RevIncludes,
    proven: &mut HashSet<String>,
) -> Result<(), Unconfined> {
    // Anything outside `entry` that names a patient (a Bundle's own extensions, `link`s are
    // URLs) is checked like a resource's elements.
    if mentions_other_patient_except(bundle, patient, &["entry"]) {
        return Err(Unconfined::NotPatients);
    }
    let entries: &[Value] = match bundle.get("entry") {
        None => &[],
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(Unconfined::Unverifiable),
    };
    // 1. Entries released on their own; the rest wait for what reverse includes reach.
    let mut waiting: Vec<&Value> = Vec::new();
    let mut bare: Vec<&Value> = Vec::new();
    for entry in entries {
        if !entry.is_object() {
            return Err(Unconfined::Unverifiable);
        }
        // Request and response parts name URLs and outcomes: they may not name other patients.
        for part in ["request", "response", "search"] {
            if let Some(v) = entry.get(part) {
                let outcome = v.get("outcome");
                if mentions_other_patient(v, patient)
                    || outcome
                        .is_some_and(|o| verify_resource(o, patient, revincludes, proven).is_err())
                {
                    return Err(Unconfined::NotPatients);
                }
            }
        }
        match entry.get("resource") {
            Some(resource) => match verify_resource(resource, patient, revincludes, proven) {
                Ok(()) => {}
                Err(Unconfined::NotPatients) if !revincludes.is_empty() => waiting.push(resource),
                Err(e) => return Err(e),
            },
            None => bare.push(entry),
        }
    }
    // 2. A reverse-included resource is the patient's when the parameter it was included
    //    through references a resource already proven the patient's, and it mentions no one else.
    for resource in waiting {
        let t = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        if mentions_other_patient(resource, patient) {
            return Err(Unconfined::NotPatients);
        }
        let mut reached = false;
        for (_, param) in revincludes.iter().filter(|(s, _)| *s == t) {
            for path in fhir::reference_paths(t, param).unwrap_or(&[]) {
                references_at(resource, path, &mut |r| {
                    reached |= relative_target(r)
                        .is_some_and(|(rt, id)| proven.contains(&format!("{rt}/{id}")));
                });
            }
        }
        if !reached {
            return Err(Unconfined::NotPatients);
        }
    }
    // 3. An entry without a resource (a deleted version in a history, a batch answer) names a
    //    resource by URL: it must be one proven the patient's in this Bundle.
    for entry in bare {
        let url = entry
            .get("request")
            .and_then(|r| r.get("url"))
            .or_else(|| entry.get("response").and_then(|r| r.get("location")))
            .or_else(|| entry.get("fullUrl"))
            .and_then(Value::as_str);
        let named = url.and_then(|u| {
            let path = u.split('?').next().unwrap_or(u);
            let path = path.split("/_history/").next().unwrap_or(path);
            let mut segments = path.rsplit('/');
            let id = segments.next()?;
            let t = segments.next()?;
            Some(format!("{t}/{id}"))
        });
        if !named.is_some_and(|n| proven.contains(&n)) {
            return Err(Unconfined::NotPatients);
        }
    }
    Ok(())
}

fn verify_parameters(
    parameters: &Value,
    patient: &str,
    revincludes: &RevIncludes,
    proven: &mut HashSet<String>,
) -> Result<(), Unconfined> {
    fn parts<'a>(v: &'a Value, out: &mut Vec<&'a Value>) -> Result<(), Unconfined> {
        match v.get("parameter").or_else(|| v.get("part")) {
            None => Ok(()),
            Some(Value::Array(items)) => {
                for item in items {
                    out.push(item);
                    if item.get("part").is_some() {
                        parts(item, out)?;
                    }
                }
                Ok(())
            }
            Some(_) => Err(Unconfined::Unverifiable),
        }
    }
    let mut all = Vec::new();
    parts(parameters, &mut all)?;
    for p in all {
        if let Some(resource) = p.get("resource") {
            verify_resource(resource, patient, revincludes, proven)?;
        }
        if mentions_other_patient_except(p, patient, &["resource", "part"]) {
            return Err(Unconfined::NotPatients);
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "confine_tests.rs"]
mod tests;
