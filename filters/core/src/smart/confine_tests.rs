//! Confinement proofs, table by table: references, single resources of every patient-data
//! type (from the generated R4 tables), Bundles of every type, and generated responses.

use super::*;
use crate::fhir::{PATIENT_DATA, R4_RESOURCE_TYPES};
use proptest::prelude::*;
use serde_json::json;

const ME: &str = "123";

mod references {
    use super::*;

    #[test]
    fn reads_what_a_reference_says_about_patients() {
        let cases = [
            ("Patient/123", PatientRef::Local("123")),
            ("Patient/123/_history/4", PatientRef::Local("123")),
            ("Patient/456", PatientRef::Local("456")),
            ("Patient/12 3", PatientRef::Foreign),
            ("Patient/", PatientRef::Foreign),
            ("Patient/123/_history/x y", PatientRef::Foreign),
            (
                "https://other.example/fhir/Patient/123",
                PatientRef::Foreign,
            ),
            ("http://localhost/fhir/r4/Patient/123", PatientRef::Foreign),
            ("urn:x:Patient/123", PatientRef::Foreign),
            ("Patient?identifier=x|1", PatientRef::Foreign),
            ("Practitioner/9", PatientRef::NotPatient),
            ("Group/1", PatientRef::NotPatient),
            ("#p1", PatientRef::NotPatient),
            (
                "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                PatientRef::NotPatient,
            ),
            ("RelatedPerson/Patient", PatientRef::NotPatient),
        ];
        for (reference, expected) in cases {
            assert_eq!(patient_ref(reference), expected, "{reference}");
        }
    }

    #[test]
    fn only_the_reference_on_a_defined_path_ties_a_resource() {
        // An extension or an identifier's assigner inside `subject` does not count.
        let nested = json!({"resourceType": "Observation", "subject": {"reference": "Group/1",
            "extension": [{"url": "x", "valueReference": {"reference": "Patient/123"}}]}});
        assert!(!tied_to_patient(&nested, ME));
        let assigner = json!({"resourceType": "Observation", "subject": {"identifier": {"assigner": {"reference": "Patient/123"}}}});
        assert!(!tied_to_patient(&assigner, ME));
        let note = json!({"resourceType": "Observation", "note": [{"authorReference": {"reference": "Patient/123"}}]});
        assert!(
            !tied_to_patient(&note, ME),
            "not a compartment element of Observation"
        );
        let performer = json!({"resourceType": "Observation", "performer": [{"reference": "Practitioner/1"}, {"reference": "Patient/123"}]});
        assert!(
            tied_to_patient(&performer, ME),
            "performer is in the compartment definition"
        );
    }
}

/// A resource of `t` whose every patient path references `reference`.
fn on_every_path(t: &str, reference: &str) -> Value {
    let mut resource = json!({"resourceType": t, "id": "r1"});
    if let fhir::PatientData::Linked { paths, .. } = fhir::patient_data(t) {
        for path in paths {
            let mut at = &mut resource;
            let segments: Vec<&str> = path.split('.').collect();
            for (i, segment) in segments.iter().enumerate() {
                let last = i + 1 == segments.len();
                let next = at
                    .as_object_mut()
                    .unwrap()
                    .entry(segment.to_string())
                    .or_insert_with(|| {
                        if last {
                            json!({"reference": reference})
                        } else {
                            json!({})
                        }
                    });
                at = next;
            }
        }
    }
    resource
}

mod every_type {
    use super::*;

    #[test]
    fn a_resource_of_every_patient_data_type_is_released_only_when_tied_to_the_patient() {
        for (t, _, _, paths) in PATIENT_DATA {
            if matches!(*t, "Bundle" | "Parameters") {
                continue;
            }
            assert!(!paths.is_empty(), "{t}");
            let mine = on_every_path(t, "Patient/123");
            assert_eq!(verify_response(&mine, ME, &[]), Ok(()), "{t}: {mine}");
            for other in [
                "Patient/456",
                "https://elsewhere.example/Patient/123",
                "Patient/123,456",
            ] {
                let theirs = on_every_path(t, other);
                assert_eq!(
                    verify_response(&theirs, ME, &[]),
                    Err(Unconfined::NotPatients),
                    "{t} -> {other}"
                );
            }
            let untied = json!({"resourceType": t, "id": "r1"});
            assert_eq!(
                verify_response(&untied, ME, &[]),
                Err(Unconfined::NotPatients),
                "{t} tied to no one"
            );
            let group = on_every_path(t, "Group/g1");
            assert_eq!(
                verify_response(&group, ME, &[]),
                Err(Unconfined::NotPatients),
                "{t} tied to a group"
            );
        }
    }

    #[test]
    fn every_type_without_patient_data_is_released_unless_it_mentions_another_patient() {
        for t in R4_RESOURCE_TYPES
            .iter()
            .filter(|t| fhir::patient_data(t) == fhir::PatientData::None)
        {
            let plain = json!({"resourceType": t, "id": "x"});
            assert_eq!(verify_response(&plain, ME, &[]), Ok(()), "{t}");
            let extension = json!({"resourceType": t, "id": "x", "extension": [{"url": "u", "valueReference": {"reference": "Patient/456"}}]});
            assert_eq!(
                verify_response(&extension, ME, &[]),
                Err(Unconfined::NotPatients),
                "{t}"
            );
            let contained = json!({"resourceType": t, "id": "x", "contained": [{"resourceType": "Patient", "id": "p"}]});
            assert_eq!(
                verify_response(&contained, ME, &[]),
                Err(Unconfined::NotPatients),
                "{t} with a contained Patient"
            );
        }
    }

    #[test]
    fn the_patient_record_is_the_patients_own_only() {
        assert_eq!(
            verify_response(&json!({"resourceType": "Patient", "id": "123"}), ME, &[]),
            Ok(())
        );
        assert_eq!(
            verify_response(&json!({"resourceType": "Patient", "id": "456"}), ME, &[]),
            Err(Unconfined::NotPatients)
        );
        let linked = json!({"resourceType": "Patient", "id": "123", "link": [{"other": {"reference": "Patient/456"}, "type": "seealso"}]});
        assert_eq!(
            verify_response(&linked, ME, &[]),
            Err(Unconfined::NotPatients)
        );
    }

    #[test]
    fn types_outside_the_compartment_that_reference_a_patient_are_patient_data() {
        // The leak class: Device.patient, Task.for, GuidanceResponse.subject, Binary.securityContext.
        let cases = [
            json!({"resourceType": "Device", "id": "d", "patient": {"reference": "Patient/456"}}),
            json!({"resourceType": "Task", "id": "t", "for": {"reference": "Patient/456"}}),
            json!({"resourceType": "GuidanceResponse", "id": "g", "subject": {"reference": "Patient/456"}}),
            json!({"resourceType": "Binary", "id": "b", "securityContext": {"reference": "DocumentReference/d"}}),
            json!({"resourceType": "Device", "id": "d"}),
        ];
        for resource in cases {
            assert_eq!(
                verify_response(&resource, ME, &[]),
                Err(Unconfined::NotPatients),
                "{resource}"
            );
        }
        let mine = json!({"resourceType": "Binary", "id": "b", "securityContext": {"reference": "Patient/123"}});
        assert_eq!(verify_response(&mine, ME, &[]), Ok(()));
    }
}

fn obs(id: &str, subject: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "subject": {"reference": subject}})
}

fn entry(resource: Value, mode: &str) -> Value {
    json!({"fullUrl": format!("http://fhir.example/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap_or("")), "resource": resource, "search": {"mode": mode}})
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "total": entries.len(), "link": [{"relation": "self", "url": "http://fhir.example/Observation?patient=123"}], "entry": entries})
}

mod bundles {
    use super::*;

    #[test]
    fn every_bundle_type_is_verified_entry_by_entry() {
        for kind in [
            "searchset",
            "history",
            "document",
            "collection",
            "batch-response",
            "transaction-response",
            "message",
            "transaction",
            "batch",
        ] {
            let ok = bundle(
                kind,
                vec![
                    entry(obs("o1", "Patient/123"), "match"),
                    entry(
                        json!({"resourceType": "Practitioner", "id": "pr"}),
                        "include",
                    ),
                ],
            );
            assert_eq!(verify_response(&ok, ME, &[]), Ok(()), "{kind}");
            let leak = bundle(
                kind,
                vec![
                    entry(obs("o1", "Patient/123"), "match"),
                    entry(obs("o2", "Patient/456"), "match"),
                ],
            );
            assert_eq!(
                verify_response(&leak, ME, &[]),
                Err(Unconfined::NotPatients),
                "{kind}"
            );
        }
    }

    #[test]
    fn the_history_of_a_resource_is_verified_version_by_version() {
        let v1 = obs("o1", "Patient/456");
        let v2 = obs("o1", "Patient/123");
        let history = bundle(
            "history",
            vec![entry(v2.clone(), "match"), entry(v1, "match")],
        );
        assert_eq!(
            verify_response(&history, ME, &[]),
            Err(Unconfined::NotPatients)
        );
        let deleted = json!({"request": {"method": "DELETE", "url": "Observation/o1"}, "response": {"status": "204"}});
        let ok = bundle("history", vec![entry(v2.clone(), "match"), deleted.clone()]);
        assert_eq!(
            verify_response(&ok, ME, &[]),
            Ok(()),
            "a deleted version of a proven resource"
        );
        let other_deleted = json!({"request": {"method": "DELETE", "url": "Observation/o9"}, "response": {"status": "204"}});
        let bad = bundle("history", vec![entry(v2, "match"), other_deleted]);
        assert_eq!(
            verify_response(&bad, ME, &[]),
            Err(Unconfined::NotPatients),
            "a deleted resource never proven"
        );
        let only_deleted = bundle("history", vec![deleted]);
        assert_eq!(
            verify_response(&only_deleted, ME, &[]),
            Err(Unconfined::NotPatients)
        );
    }

    #[test]
    fn nested_bundles_and_parameters_are_verified_too() {
        let inner = bundle(
            "document",
            vec![entry(
                json!({"resourceType": "Composition", "id": "c", "subject": {"reference": "Patient/456"}}),
                "match",
            )],
        );
        let outer = bundle("searchset", vec![json!({"resource": inner})]);
        assert_eq!(
            verify_response(&outer, ME, &[]),
            Err(Unconfined::NotPatients)
        );
        let params = json!({"resourceType": "Parameters", "parameter": [{"name": "return", "resource": obs("o", "Patient/456")}]});
        assert_eq!(
            verify_response(&params, ME, &[]),
            Err(Unconfined::NotPatients)
        );
        let parts = json!({"resourceType": "Parameters", "parameter": [{"name": "x", "part": [{"name": "y", "valueReference": {"reference": "Patient/456"}}]}]});
        assert_eq!(
            verify_response(&parts, ME, &[]),
            Err(Unconfined::NotPatients)
        );
        let mine = json!({"resourceType": "Parameters", "parameter": [{"name": "return", "resource": obs("o", "Patient/123")}]});
        assert_eq!(verify_response(&mine, ME, &[]), Ok(()));
    }

    #[test]
    fn contained_resources_are_judged_with_their_container() {
        let mut o = obs("o1", "Patient/123");
        o["contained"] = json!([{"resourceType": "Specimen", "id": "s", "subject": {"reference": "Patient/456"}}]);
        assert_eq!(
            verify_response(&bundle("searchset", vec![entry(o, "match")]), ME, &[]),
            Err(Unconfined::NotPatients)
        );
        let mut p = obs("o1", "#p");
        p["contained"] = json!([{"resourceType": "Patient", "id": "p"}]);
        assert_eq!(
            verify_response(&p, ME, &[]),
            Err(Unconfined::NotPatients),
            "a contained patient is never provably the patient"
        );
    }

    #[test]
    fn reverse_includes_are_released_only_when_they_reach_a_proven_match() {
        let prov = |target: &str| json!({"resourceType": "Provenance", "id": format!("pv-{}", target.replace('/', "-")), "target": [{"reference": target}], "agent": [{"who": {"reference": "Practitioner/1"}}]});
        let b = bundle(
            "searchset",
            vec![
                entry(obs("o1", "Patient/123"), "match"),
                entry(prov("Observation/o1"), "include"),
            ],
        );
        assert_eq!(verify_response(&b, ME, &[("Provenance", "target")]), Ok(()));
        assert_eq!(
            verify_response(&b, ME, &[]),
            Err(Unconfined::NotPatients),
            "without the reverse include nothing anchors it"
        );
        let stray = bundle(
            "searchset",
            vec![
                entry(obs("o1", "Patient/123"), "match"),
                entry(prov("Observation/o2"), "include"),
            ],
        );
        assert_eq!(
            verify_response(&stray, ME, &[("Provenance", "target")]),
            Err(Unconfined::NotPatients)
        );
        let direct = bundle(
            "searchset",
            vec![
                entry(json!({"resourceType": "Patient", "id": "123"}), "match"),
                entry(prov("Patient/123"), "include"),
            ],
        );
        assert_eq!(
            verify_response(&direct, ME, &[("Provenance", "target")]),
            Ok(())
        );
        let mixed = bundle(
            "searchset",
            vec![
                entry(obs("o1", "Patient/123"), "match"),
                entry(prov("Observation/o1").tap_target("Patient/456"), "include"),
            ],
        );
        assert_eq!(
            verify_response(&mixed, ME, &[("Provenance", "target")]),
            Err(Unconfined::NotPatients)
        );
    }

    #[test]
    fn responses_it_cannot_classify_are_refused() {
        for body in [
            json!([]),
            json!({"entry": []}),
            json!({"resourceType": "Foo"}),
            json!({"resourceType": "Bundle", "entry": {}}),
            json!({"resourceType": "Bundle", "entry": [1]}),
            json!("x"),
        ] {
            assert_eq!(
                verify_response(&body, ME, &[]),
                Err(Unconfined::Unverifiable),
                "{body}"
            );
        }
        assert_eq!(
            verify_response(
                &json!({"resourceType": "Bundle", "type": "searchset", "total": 0}),
                ME,
                &[]
            ),
            Ok(())
        );
    }
}

trait TapTarget {
    fn tap_target(self, extra: &str) -> Value;
}

impl TapTarget for Value {
    fn tap_target(mut self, extra: &str) -> Value {
        self["target"]
            .as_array_mut()
            .unwrap()
            .push(json!({"reference": extra}));
        self
    }
}

/// An independent oracle: every Patient reference in `value`, and every nested Patient id.
fn patient_mentions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if map.get("resourceType").and_then(Value::as_str) == Some("Patient") {
                out.push(format!(
                    "Patient/{}",
                    map.get("id").and_then(Value::as_str).unwrap_or("?")
                ));
            }
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(r)) if r.contains("Patient") => out.push(r.clone()),
                    _ => patient_mentions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| patient_mentions(v, out)),
        _ => {}
    }
}

fn arb_reference() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Patient/123".to_string()),
        Just("Patient/456".to_string()),
        Just("Patient/123/_history/2".to_string()),
        Just("http://other.example/Patient/123".to_string()),
        Just("Practitioner/9".to_string()),
        Just("Group/g".to_string()),
        Just("Observation/o1".to_string()),
        Just("#c".to_string()),
    ]
}

fn arb_resource() -> impl Strategy<Value = Value> {
    let types = prop::sample::select(vec![
        "Observation",
        "Condition",
        "Encounter",
        "Device",
        "Task",
        "Provenance",
        "Practitioner",
        "Medication",
        "Patient",
        "Coverage",
        "Appointment",
        "Binary",
        "Group",
    ]);
    (types, prop::collection::vec((prop::sample::select(vec!["subject", "patient", "for", "target", "beneficiary", "subscriber", "performer", "note", "securityContext", "member"]), arb_reference()), 0..4), any::<bool>(), prop::sample::select(vec!["123", "456", "o1"]))
        .prop_map(|(t, refs, contained, id)| {
            let mut r = json!({"resourceType": t, "id": id});
            for (element, reference) in refs {
                r[element] = if element == "member" { json!([{"entity": {"reference": reference}}]) } else { json!({"reference": reference}) };
            }
            if contained {
                r["contained"] = json!([{"resourceType": "Observation", "id": "c", "subject": {"reference": "Patient/456"}}]);
            }
            r
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the Bundle, a released response mentions no patient but the token's, by a local
    /// reference or as the Patient resource itself.
    #[test]
    fn a_released_response_never_mentions_another_patient(
        resources in prop::collection::vec(arb_resource(), 0..6),
        kind in prop::sample::select(vec!["searchset", "history", "document", "collection"]),
        revinclude in any::<bool>(),
        nest in any::<bool>(),
    ) {
        let entries: Vec<Value> = resources.into_iter().map(|r| entry(r, "match")).collect();
        let mut body = bundle(kind, entries);
        if nest {
            body = bundle("searchset", vec![json!({"resource": body})]);
        }
        let revincludes: &[(&str, &str)] = if revinclude { &[("Provenance", "target")] } else { &[] };
        if verify_response(&body, ME, revincludes).is_ok() {
            let mut mentions = Vec::new();
            patient_mentions(&body, &mut mentions);
            for m in mentions {
                prop_assert!(m == "Patient/123" || m == "Patient/123/_history/2", "released {m} in {body}");
            }
        }
    }

    /// A single resource is released exactly when it is tied to the patient (or holds no
    /// patient data) and mentions no one else.
    #[test]
    fn a_single_resource_is_released_exactly_when_it_is_the_patients(resource in arb_resource()) {
        let released = verify_response(&resource, ME, &[]).is_ok();
        let t = resource["resourceType"].as_str().unwrap();
        let mut mentions = Vec::new();
        patient_mentions(&resource, &mut mentions);
        let others = mentions.iter().any(|m| m != "Patient/123" && m != "Patient/123/_history/2");
        let expected = !others && (fhir::patient_data(t) == fhir::PatientData::None || tied_to_patient(&resource, ME));
        prop_assert_eq!(released, expected, "{}", resource);
    }
}
