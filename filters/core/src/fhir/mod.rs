//! FHIR R4 vocabulary: the resource type list, the patient compartment, and the syntax rules
//! for ids and names.

mod patient_compartment;
mod patient_data;
mod reference_params;

pub use patient_compartment::{PATIENT_COMPARTMENT, PATIENT_SEARCH_PARAM_TYPES};
pub use patient_data::PATIENT_DATA;
pub use reference_params::REFERENCE_PARAMS;

/// Every concrete resource type of FHIR R4 (4.0.1): the 148 codes of CodeSystem `resource-types` less the abstract `Resource` and `DomainResource`. Sorted for binary search.
pub const R4_RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// The resource types that define a compartment in R4 (CompartmentDefinition).
pub const COMPARTMENT_TYPES: &[&str] = &[
    "Device",
    "Encounter",
    "Patient",
    "Practitioner",
    "RelatedPerson",
];

/// The canonical `&'static str` for an R4 resource type name, or None if R4 has no such type.
/// Case-sensitive, as FHIR is.
/// `resource` with a JSON Patch applied, None when the patch does not apply. Applied to a copy
/// that is dropped on failure: json-patch's own `patch` undoes a failed patch in place and
/// panics when the undo itself fails, which a crafted patch makes happen (replace, add, then a
/// move onto what the add created: found by the consent property test).
pub fn patched(
    resource: &serde_json::Value,
    patch: &json_patch::Patch,
) -> Option<serde_json::Value> {
    let mut copy = resource.clone();
    json_patch::patch_unsafe(&mut copy, patch).ok()?;
    Some(copy)
}

pub fn resource_type(name: &str) -> Option<&'static str> {
    R4_RESOURCE_TYPES
        .binary_search(&name)
        .ok()
        .map(|i| R4_RESOURCE_TYPES[i])
}

pub fn is_compartment_type(name: &str) -> bool {
    COMPARTMENT_TYPES.contains(&name)
}

/// The search parameters that place a resource type in a patient's compartment, or None when
/// the type is not in the Patient compartment (Medication, Practitioner, Organization, …).
/// `Patient` itself is in its own compartment by id (and by its `link` parameter).
pub fn patient_compartment_params(resource_type: &str) -> Option<&'static [&'static str]> {
    PATIENT_COMPARTMENT
        .binary_search_by(|(t, _)| (*t).cmp(resource_type))
        .ok()
        .map(|i| PATIENT_COMPARTMENT[i].1)
}

/// Whether R4 defines a `patient` search parameter on this type (Observation, Condition, …).
pub fn has_patient_search_param(resource_type: &str) -> bool {
    PATIENT_SEARCH_PARAM_TYPES
        .binary_search(&resource_type)
        .is_ok()
}

/// The types a reference search parameter of `base` can point to, or None when `base` has
/// no such reference parameter.
pub fn reference_targets(base: &str, code: &str) -> Option<&'static [&'static str]> {
    REFERENCE_PARAMS
        .binary_search_by(|(b, c, _, _)| (*b, *c).cmp(&(base, code)))
        .ok()
        .map(|i| REFERENCE_PARAMS[i].2)
}

/// The element paths (dotted, below the resource) a reference search parameter of `base`
/// reads, or None when `base` has no such reference parameter.
pub fn reference_paths(base: &str, code: &str) -> Option<&'static [&'static str]> {
    REFERENCE_PARAMS
        .binary_search_by(|(b, c, _, _)| (*b, *c).cmp(&(base, code)))
        .ok()
        .map(|i| REFERENCE_PARAMS[i].3)
}

/// Whether, and how, a resource type holds a patient's data (R4 definitions, generated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientData {
    /// `Patient` itself: a patient's record, tied to the patient by its id.
    Own,
    /// In the Patient compartment, or outside it with elements that can reference a Patient
    /// or carry a whole resource: `params` are the search parameters that tie a search of it
    /// to one patient (none: it cannot be confined by a search), `paths` the elements whose
    /// references tie one resource to a patient.
    Linked {
        in_compartment: bool,
        params: &'static [&'static str],
        paths: &'static [&'static str],
    },
    /// No element can reference a patient (Medication, Practitioner, ValueSet, …).
    None,
}

pub fn patient_data(resource_type: &str) -> PatientData {
    match resource_type {
        "Patient" => return PatientData::Own,
        // `Subscription.criteria` is a search (a string, so no StructureDefinition type says
        // it): it can name any patient, and no element ties a Subscription to one. Never
        // searched nor released under patient/ scopes; written only with a confined criteria.
        "Subscription" => {
            return PatientData::Linked {
                in_compartment: false,
                params: &[],
                paths: &[],
            }
        }
        _ => {}
    }
    match PATIENT_DATA.binary_search_by(|(t, ..)| (*t).cmp(resource_type)) {
        Ok(i) => {
            let (_, in_compartment, params, paths) = PATIENT_DATA[i];
            PatientData::Linked {
                in_compartment,
                params,
                paths,
            }
        }
        Err(_) => PatientData::None,
    }
}

/// FHIR `id` datatype: `[A-Za-z0-9\-\.]{1,64}`. Also the rule for version ids.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// An operation segment: `$` then a name of letters, digits, `-` and `_` starting with a letter.
pub fn is_valid_operation(segment: &str) -> bool {
    let Some(name) = segment.strip_prefix('$') else {
        return false;
    };
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_all_146_r4_resource_types_sorted_and_unique() {
        assert_eq!(R4_RESOURCE_TYPES.len(), 146);
        assert!(
            R4_RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]),
            "not sorted or duplicated"
        );
    }

    #[test]
    fn finds_types_case_sensitively() {
        assert_eq!(resource_type("Patient"), Some("Patient"));
        assert_eq!(
            resource_type("VisionPrescription"),
            Some("VisionPrescription")
        );
        assert_eq!(resource_type("Account"), Some("Account"));
        assert_eq!(resource_type("patient"), None);
        assert_eq!(resource_type("Resource"), None);
        assert_eq!(resource_type("DomainResource"), None);
        assert_eq!(resource_type("Foo"), None);
        assert_eq!(resource_type(""), None);
    }

    #[test]
    fn compartments_are_resource_types() {
        for t in COMPARTMENT_TYPES {
            assert!(resource_type(t).is_some(), "{t}");
        }
    }

    #[test]
    fn patient_compartment_is_sorted_and_names_r4_types() {
        assert!(PATIENT_COMPARTMENT.windows(2).all(|w| w[0].0 < w[1].0));
        for (t, params) in PATIENT_COMPARTMENT {
            assert!(resource_type(t).is_some(), "{t}");
            assert!(!params.is_empty(), "{t}");
        }
    }

    #[test]
    fn knows_which_types_are_in_the_patient_compartment() {
        assert_eq!(
            patient_compartment_params("Observation"),
            Some(&["subject", "performer"][..])
        );
        assert_eq!(patient_compartment_params("Patient"), Some(&["link"][..]));
        assert_eq!(
            patient_compartment_params("AllergyIntolerance"),
            Some(&["patient", "recorder", "asserter"][..])
        );
        for outside in [
            "Medication",
            "Practitioner",
            "Organization",
            "Location",
            "ValueSet",
            "Foo",
        ] {
            assert_eq!(patient_compartment_params(outside), None, "{outside}");
        }
    }

    #[test]
    fn knows_which_types_define_a_patient_search_parameter() {
        assert!(PATIENT_SEARCH_PARAM_TYPES.windows(2).all(|w| w[0] < w[1]));
        for t in [
            "Observation",
            "Condition",
            "Encounter",
            "AllergyIntolerance",
            "Coverage",
            "Claim",
        ] {
            assert!(has_patient_search_param(t), "{t}");
        }
        for t in ["Patient", "Practitioner", "Medication", "Organization"] {
            assert!(!has_patient_search_param(t), "{t}");
        }
    }

    #[test]
    fn knows_where_reference_parameters_point() {
        assert!(REFERENCE_PARAMS
            .windows(2)
            .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
        assert_eq!(
            reference_targets("MedicationRequest", "medication"),
            Some(&["Medication"][..])
        );
        assert_eq!(
            reference_targets("Observation", "subject"),
            Some(&["Device", "Group", "Location", "Patient"][..])
        );
        assert_eq!(
            reference_targets("Observation", "code"),
            None,
            "a token parameter"
        );
        assert_eq!(reference_targets("Foo", "subject"), None);
        assert_eq!(
            reference_paths("Provenance", "patient"),
            Some(&["target"][..])
        );
        assert_eq!(
            reference_paths("Appointment", "actor"),
            Some(&["participant.actor"][..])
        );
        assert_eq!(
            reference_paths("MedicationRequest", "medication"),
            Some(&["medicationReference"][..])
        );
        for (base, _, targets, _) in REFERENCE_PARAMS {
            assert!(resource_type(base).is_some(), "{base}");
            assert!(
                targets.iter().all(|t| resource_type(t).is_some()),
                "{base}: {targets:?}"
            );
        }
    }

    #[test]
    fn knows_which_types_hold_patient_data_inside_and_outside_the_compartment() {
        assert!(PATIENT_DATA.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(patient_data("Patient"), PatientData::Own);
        for t in [
            "Medication",
            "Practitioner",
            "Organization",
            "Location",
            "ValueSet",
            "Questionnaire",
        ] {
            assert_eq!(patient_data(t), PatientData::None, "{t}");
        }
        // Every compartment type is listed, with its compartment parameters.
        for (t, params) in PATIENT_COMPARTMENT.iter().filter(|(t, _)| *t != "Patient") {
            match patient_data(t) {
                PatientData::Linked {
                    in_compartment: true,
                    params: p,
                    paths,
                } => {
                    let mut sorted = params.to_vec();
                    sorted.sort();
                    assert_eq!(p, &sorted[..], "{t}");
                    assert!(!paths.is_empty(), "{t}: no element ties it to a patient");
                }
                other => panic!("{t}: {other:?}"),
            }
        }
        // Outside the compartment: types that can still reference a patient.
        let outside = |t| match patient_data(t) {
            PatientData::Linked {
                in_compartment: false,
                params,
                paths,
            } => (params, paths),
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(outside("Device"), (&["patient"][..], &["patient"][..]));
        assert!(outside("Task").0.contains(&"patient") && outside("Task").1.contains(&"for"));
        assert!(outside("GuidanceResponse").1.contains(&"subject"));
        assert_eq!(outside("Binary"), (&[][..], &["securityContext"][..]));
        assert!(outside("Bundle").1.contains(&"entry.resource"));
        assert!(outside("Parameters").1.contains(&"parameter.resource"));
        assert!(outside("Contract").0.contains(&"patient"));
        // Subscription's criteria is a search that can name anyone: no parameter, no path.
        assert_eq!(outside("Subscription"), (&[][..], &[][..]));
    }

    #[test]
    fn applies_the_fhir_id_rule() {
        let valid = ["a", "123", "example-1", "a.b", "A-Z.0-9", &"x".repeat(64)];
        for id in valid {
            assert!(is_valid_id(id), "{id}");
        }
        let long = "x".repeat(65);
        let invalid = [
            "",
            "a b",
            "a/b",
            "a_b",
            "a%20",
            "ü",
            "a:b",
            "a;b",
            "a+b",
            long.as_str(),
            "a\u{0}",
        ];
        for id in invalid {
            assert!(!is_valid_id(id), "{id:?}");
        }
    }

    #[test]
    fn applies_the_operation_name_rule() {
        for op in [
            "$export",
            "$everything",
            "$validate",
            "$lastn",
            "$member-match",
            "$submit_x",
        ] {
            assert!(is_valid_operation(op), "{op}");
        }
        for op in ["export", "$", "$1abc", "$ex port", "$ex/port", "$$x", "$é"] {
            assert!(!is_valid_operation(op), "{op}");
        }
    }
}
