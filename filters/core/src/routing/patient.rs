//! Which single patient a request names, if any: the id behind `x-fhirgate-patient`.
//!
//! Sources: a Patient instance path, a Patient compartment, and the patient-reference search
//! parameters (`patient`, `subject`, `beneficiary`, and `_id` on Patient). A request that names
//! two different patients, or an OR-list of them, names no single patient.

use super::{Interaction, RoutedRequest};
use crate::fhir;

/// The one patient id the request names, or None when it names none or several.
pub(super) fn named_patient(r: &RoutedRequest) -> Option<String> {
    let mut seen = Seen::default();
    if r.resource_type == Some("Patient") && r.compartment.is_none() {
        if let Some(id) = &r.id {
            seen.note(id);
        }
    }
    if let Some(("Patient", id)) = r.compartment.as_ref().map(|(t, id)| (*t, id)) {
        seen.note(id);
    }
    if r.interaction.is_search()
        || matches!(
            r.interaction,
            Interaction::OperationType | Interaction::OperationSystem
        )
    {
        for p in &r.params {
            let bare_id_allowed = match p.name.as_str() {
                "patient" | "patient:Patient" | "subject:Patient" | "beneficiary:Patient" => true,
                "beneficiary" | "subject" => false,
                "_id" if r.resource_type == Some("Patient") && r.compartment.is_none() => true,
                _ => continue,
            };
            for value in p.value.split(',') {
                match patient_ref(value, bare_id_allowed) {
                    Some(id) => seen.note(id),
                    // A non-Patient reference (subject=Group/1) names no patient; an
                    // unparseable one makes the request's patient unknowable.
                    None if is_other_reference(value) => {}
                    None => seen.conflict = true,
                }
            }
        }
    }
    if seen.conflict {
        None
    } else {
        seen.found
    }
}

/// The patient ids met so far: one, or a conflict.
#[derive(Default)]
struct Seen {
    found: Option<String>,
    conflict: bool,
}

impl Seen {
    fn note(&mut self, id: &str) {
        match &self.found {
            None => self.found = Some(id.to_string()),
            Some(prev) if prev == id => {}
            Some(_) => self.conflict = true,
        }
    }
}

/// `123` (when a bare id means a Patient), `Patient/123`, or an absolute URL ending in it.
fn patient_ref(value: &str, bare_id_allowed: bool) -> Option<&str> {
    let tail = match value.rsplit_once("Patient/") {
        Some((before, id)) if before.is_empty() || before.ends_with('/') => id,
        Some(_) => return None,
        None if bare_id_allowed => value,
        None => return None,
    };
    fhir::is_valid_id(tail).then_some(tail)
}

fn is_other_reference(value: &str) -> bool {
    match value.rsplit('/').nth(1) {
        Some(t) => t != "Patient" && fhir::resource_type(t).is_some(),
        None => false,
    }
}
