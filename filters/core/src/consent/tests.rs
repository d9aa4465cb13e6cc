//! Consent filtering of responses, by scenario.

use super::*;
use serde_json::json;
use std::io::Write;

const NOW: &str = "2026-11-24T12:00:00Z";

fn policy(json: &str) -> ConsentPolicy {
    ConsentPolicy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

const LABELS: &str = r#"{"labels": [
    {"codes": ["R"], "allowPurposes": ["TREAT", "ETREAT"], "action": "drop"},
    {"codes": ["PSY"], "action": "redact", "redact": ["valueString", "note"]},
    {"codes": ["HIV"], "allowClients": ["hiv-clinic"], "action": "refuse"}
  ], "part2": {}}"#;

fn caller(purpose: Option<&'static str>) -> Caller<'static> {
    Caller {
        subject: Some("dr-a"),
        client_id: Some("app-1"),
        purpose,
        break_glass: false,
        now: NOW,
    }
}

fn labelled(id: &str, codes: &[&str]) -> Value {
    let security: Vec<Value> = codes.iter().map(|c| json!({"code": c})).collect();
    json!({"resourceType": "Observation", "id": id, "subject": {"reference": "Patient/p1"},
           "valueString": "secret", "note": [{"text": "n"}], "meta": {"security": security}})
}

fn searchset(resources: Vec<Value>) -> Value {
    let n = resources.len();
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| json!({"resource": r, "search": {"mode": "match"}}))
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "total": n, "link": [{"relation": "self", "url": "http://x/Observation"}], "entry": entries})
}

fn no_consents(_: &str) -> Consents<'static> {
    Consents::Known(&[])
}

fn run<'c>(
    p: &ConsentPolicy,
    body: &Value,
    c: &Caller,
    single: bool,
    consents: &dyn Fn(&str) -> Consents<'c>,
) -> (Filtered, Report) {
    let mut report = Report::default();
    let out = p.filter(
        &serde_json::to_vec(body).unwrap(),
        c,
        single,
        consents,
        &mut report,
    );
    (out, report)
}

fn rewritten(f: Filtered) -> Value {
    match f {
        Filtered::Rewritten(b) => serde_json::from_slice(&b).unwrap(),
        other => panic!("not rewritten: {other:?}"),
    }
}

fn ids(bundle: &Value) -> Vec<&str> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect()
}

mod labels {
    use super::*;

    #[test]
    fn a_restricted_resource_is_dropped_unless_the_purpose_allows_it() {
        let p = policy(LABELS);
        let b = searchset(vec![
            labelled("a", &[]),
            labelled("r", &["R"]),
            labelled("v", &["V"]),
        ]);
        let (out, report) = run(&p, &b, &caller(Some("HPAYMT")), false, &no_consents);
        let out = rewritten(out);
        assert_eq!(ids(&out), vec!["a"], "V is above R: covered too");
        assert_eq!(out["total"], 1);
        assert_eq!(out["link"], b["link"], "links are kept");
        assert_eq!(report.withheld.get("label-withheld"), Some(&2));
        let (out, _) = run(&p, &b, &caller(Some("TREAT")), false, &no_consents);
        assert!(matches!(out, Filtered::Unchanged), "treatment may see them");
    }

    #[test]
    fn redaction_removes_the_named_elements_and_tags_the_resource() {
        let p = policy(LABELS);
        let (out, report) = run(
            &p,
            &labelled("p", &["PSYTHPN"]),
            &caller(Some("TREAT")),
            true,
            &no_consents,
        );
        let r = rewritten(out);
        assert!(r.get("valueString").is_none() && r.get("note").is_none());
        assert_eq!(r["subject"]["reference"], "Patient/p1", "the rest is kept");
        assert!(r["meta"]["security"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["code"] == "REDACTED"));
        assert_eq!(report.redacted.get("label-redacted"), Some(&1));
    }

    #[test]
    fn a_withheld_single_read_is_refused_with_403_or_404() {
        let (out, _) = run(
            &policy(LABELS),
            &labelled("h", &["HIV"]),
            &caller(Some("TREAT")),
            true,
            &no_consents,
        );
        assert!(
            matches!(out, Filtered::Refused(ref r) if r.status == 403 && r.reason == "consent-withheld"),
            "{out:?}"
        );
        let hidden = policy(&LABELS.replacen('{', r#"{"hideExistence": true, "#, 1));
        let (out, _) = run(
            &hidden,
            &labelled("h", &["HIV"]),
            &caller(None),
            true,
            &no_consents,
        );
        assert!(
            matches!(out, Filtered::Refused(ref r) if r.status == 404),
            "{out:?}"
        );
        let clinic = Caller {
            client_id: Some("hiv-clinic"),
            ..caller(None)
        };
        assert!(matches!(
            run(
                &policy(LABELS),
                &labelled("h", &["HIV"]),
                &clinic,
                true,
                &no_consents
            )
            .0,
            Filtered::Unchanged
        ));
    }

    #[test]
    fn the_strictest_rule_wins() {
        let (out, _) = run(
            &policy(LABELS),
            &searchset(vec![labelled("x", &["PSY", "R"])]),
            &caller(None),
            false,
            &no_consents,
        );
        assert!(ids(&rewritten(out)).is_empty(), "drop beats redact");
    }

    #[test]
    fn break_glass_releases_what_labels_withhold_and_counts_it() {
        let p = policy(LABELS);
        let c = Caller {
            break_glass: true,
            ..caller(Some("ETREAT"))
        };
        let (out, report) = run(
            &p,
            &searchset(vec![labelled("h", &["HIV"]), labelled("p", &["PSY"])]),
            &c,
            false,
            &no_consents,
        );
        assert!(matches!(out, Filtered::Unchanged));
        assert_eq!(report.break_glass_released, 2);
        let strict = policy(&LABELS.replacen('{', r#"{"breakGlassOverrides": false, "#, 1));
        let (out, _) = run(
            &strict,
            &searchset(vec![labelled("h", &["HIV"])]),
            &c,
            false,
            &no_consents,
        );
        assert!(ids(&rewritten(out)).is_empty());
    }

    #[test]
    fn released_substance_use_data_carries_the_part2_label() {
        let (out, report) = run(
            &policy(LABELS),
            &searchset(vec![labelled("s", &["SUD"]), labelled("a", &[])]),
            &caller(None),
            false,
            &no_consents,
        );
        let out = rewritten(out);
        let security = &out["entry"][0]["resource"]["meta"]["security"];
        assert!(
            security
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["code"] == "NORDSCLCD"),
            "{security}"
        );
        assert!(out["entry"][1]["resource"]["meta"]["security"]
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(report.part2_labelled, 1);
        let (single, _) = run(
            &policy(LABELS),
            &labelled("s", &["ETHUD"]),
            &caller(None),
            true,
            &no_consents,
        );
        assert!(
            matches!(single, Filtered::Rewritten(_)),
            "a single read is labelled too"
        );
    }
}

mod bundles {
    use super::*;

    #[test]
    fn outcome_entries_and_includes_are_handled() {
        let mut b = searchset(vec![labelled("a", &[]), labelled("r", &["R"])]);
        b["entry"].as_array_mut().unwrap().push(json!({"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}}));
        b["entry"]
            .as_array_mut()
            .unwrap()
            .push(json!({"resource": labelled("inc", &["R"]), "search": {"mode": "include"}}));
        let out = rewritten(run(&policy(LABELS), &b, &caller(None), false, &no_consents).0);
        assert_eq!(
            out["entry"].as_array().unwrap().len(),
            2,
            "the match a and the OperationOutcome"
        );
        assert_eq!(
            out["entry"][1]["resource"]["resourceType"],
            "OperationOutcome"
        );
        assert_eq!(
            out["total"], 1,
            "total counts matches: the included resource was not one"
        );
    }

    #[test]
    fn total_can_be_omitted() {
        let p = policy(&LABELS.replacen('{', r#"{"total": "omit", "#, 1));
        let out = rewritten(
            run(
                &p,
                &searchset(vec![labelled("r", &["R"])]),
                &caller(None),
                false,
                &no_consents,
            )
            .0,
        );
        assert!(out.get("total").is_none());
    }

    #[test]
    fn transaction_responses_keep_the_entry_and_lose_the_resource() {
        let b = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"fullUrl": "http://x/Observation/r", "resource": labelled("r", &["R"]), "response": {"status": "201 Created"}},
            {"resource": labelled("a", &[]), "response": {"status": "200 OK"}}]});
        let out = rewritten(run(&policy(LABELS), &b, &caller(None), false, &no_consents).0);
        assert_eq!(
            out["entry"][0],
            json!({"response": {"status": "201 Created"}})
        );
        assert_eq!(out["entry"][1]["resource"]["id"], "a");
    }

    #[test]
    fn nested_bundles_are_filtered_too() {
        let doc = json!({"resourceType": "Bundle", "type": "document", "entry": [{"resource": labelled("r", &["R"])}, {"resource": labelled("a", &[])}]});
        let out = rewritten(
            run(
                &policy(LABELS),
                &searchset(vec![doc]),
                &caller(None),
                false,
                &no_consents,
            )
            .0,
        );
        assert_eq!(ids(&out["entry"][0]["resource"]), vec!["a"]);
    }

    /// A small deterministic generator (no extra crates): Bundles of every shape, with labels
    /// at random; whatever the shape, no withheld resource survives.
    #[test]
    fn no_withheld_resource_survives_any_bundle_shape() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        const CODES: &[&str] = &["R", "V", "N", "HIV", "PSY", "SUD", "STD", "L"];
        const KINDS: &[&str] = &[
            "searchset",
            "history",
            "collection",
            "document",
            "batch-response",
            "transaction-response",
        ];
        fn bundle(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> Value {
            let mut entries = Vec::new();
            for i in 0..next(6) {
                let resource = if depth < 3 && next(5) == 0 {
                    bundle(next, depth + 1)
                } else {
                    let codes: Vec<&str> = (0..next(3))
                        .map(|_| CODES[next(CODES.len() as u64) as usize])
                        .collect();
                    labelled(&format!("r{depth}-{i}"), &codes)
                };
                let mode = ["match", "include", "outcome"][next(3) as usize];
                entries.push(json!({"resource": resource, "search": {"mode": mode}}));
            }
            json!({"resourceType": "Bundle", "type": KINDS[next(KINDS.len() as u64) as usize], "total": entries.len(), "entry": entries})
        }
        fn forbidden(v: &Value) -> bool {
            let labels = crate::consent::labels::labels_of(v);
            v.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome")
                && (labels.iter().any(|l| {
                    crate::consent::labels::covers("R", l)
                        || crate::consent::labels::covers("HIV", l)
                }))
        }
        fn scan(v: &Value, found: &mut u32) {
            if forbidden(v) && v["resourceType"] != "Bundle" {
                *found += 1;
            }
            match v {
                Value::Object(m) => m.values().for_each(|x| scan(x, found)),
                Value::Array(a) => a.iter().for_each(|x| scan(x, found)),
                _ => {}
            }
        }
        let p = policy(LABELS);
        for _ in 0..500 {
            let b = bundle(&mut next, 0);
            let out = match run(&p, &b, &caller(Some("HPAYMT")), false, &no_consents).0 {
                Filtered::Unchanged => b,
                Filtered::Rewritten(bytes) => serde_json::from_slice(&bytes).unwrap(),
                Filtered::Refused(r) => panic!("{r:?}"),
            };
            let mut found = 0;
            scan(&out, &mut found);
            assert_eq!(found, 0, "{out}");
        }
    }
}

mod consents {
    use super::*;

    const WITH_CONSENTS: &str = r#"{"consents": {"cluster": "fhir_api", "path": "/fhir/Consent"}}"#;

    fn deny_observations() -> Vec<Value> {
        vec![
            json!({"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]},
                    "patient": {"reference": "Patient/p1"}, "provision": {"type": "permit", "provision": [{"type": "deny", "class": [{"code": "Observation"}]}]}}),
        ]
    }

    fn other_patient(id: &str) -> Value {
        json!({"resourceType": "Observation", "id": id, "subject": {"reference": "Patient/p2"}})
    }

    #[test]
    fn patients_needed_are_every_patient_in_the_response() {
        let b = searchset(vec![
            labelled("a", &[]),
            other_patient("b"),
            json!({"resourceType": "Patient", "id": "p3"}),
        ]);
        assert_eq!(
            policy(WITH_CONSENTS).patients_needed(&b, &|_| None),
            vec!["p1", "p2", "p3"]
        );
        assert!(
            policy(LABELS).patients_needed(&b, &|_| None).is_empty(),
            "not without consents configured"
        );
    }

    #[test]
    fn a_denying_consent_withholds_only_its_patients_data() {
        let list = deny_observations();
        let lookup = |p: &str| {
            if p == "p1" {
                Consents::Known(&list)
            } else {
                Consents::Known(&[])
            }
        };
        let b = searchset(vec![labelled("a", &[]), other_patient("b")]);
        let (out, report) = run(
            &policy(WITH_CONSENTS),
            &b,
            &caller(Some("TREAT")),
            false,
            &lookup,
        );
        assert_eq!(ids(&rewritten(out)), vec!["b"]);
        assert_eq!(report.withheld.get("consent-denied"), Some(&1));
    }

    #[test]
    fn another_patients_consent_in_the_answer_is_ignored() {
        let list = deny_observations();
        let lookup = |_: &str| Consents::Known(&list);
        let (out, _) = run(
            &policy(WITH_CONSENTS),
            &searchset(vec![other_patient("b")]),
            &caller(None),
            false,
            &lookup,
        );
        assert!(
            matches!(out, Filtered::Unchanged),
            "p1's Consent does not speak for p2"
        );
    }

    #[test]
    fn consents_that_could_not_be_fetched_withhold_unless_fail_open() {
        let unavailable = |_: &str| Consents::Unavailable;
        let (out, report) = run(
            &policy(WITH_CONSENTS),
            &labelled("a", &[]),
            &caller(None),
            true,
            &unavailable,
        );
        assert!(matches!(out, Filtered::Refused(ref r) if r.status == 403));
        assert_eq!(report.withheld.get("consent-unavailable"), Some(&1));
        let open = policy(
            r#"{"consents": {"cluster": "fhir_api", "path": "/fhir/Consent", "failOpen": true}}"#,
        );
        assert!(matches!(
            run(
                &open,
                &labelled("a", &[]),
                &caller(None),
                true,
                &unavailable
            )
            .0,
            Filtered::Unchanged
        ));
    }

    #[test]
    fn break_glass_overrides_a_consent_denial() {
        let list = deny_observations();
        let lookup = |_: &str| Consents::Known(&list);
        let c = Caller {
            break_glass: true,
            ..caller(Some("ETREAT"))
        };
        let (out, report) = run(
            &policy(WITH_CONSENTS),
            &labelled("a", &[]),
            &c,
            true,
            &lookup,
        );
        assert!(matches!(out, Filtered::Unchanged));
        assert_eq!(report.break_glass_released, 1);
    }

    #[test]
    fn conflicting_consents_follow_the_conflict_policy() {
        let mut list = deny_observations();
        list.push(json!({"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]},
                         "patient": {"reference": "Patient/p1"}, "provision": {"type": "permit"}}));
        let lookup = |_: &str| Consents::Known(&list);
        assert!(
            matches!(
                run(
                    &policy(WITH_CONSENTS),
                    &labelled("a", &[]),
                    &caller(None),
                    true,
                    &lookup
                )
                .0,
                Filtered::Refused(_)
            ),
            "deny wins"
        );
        let permit = policy(
            r#"{"consents": {"cluster": "fhir_api", "path": "/fhir/Consent", "conflict": "permitWins"}}"#,
        );
        assert!(matches!(
            run(&permit, &labelled("a", &[]), &caller(None), true, &lookup).0,
            Filtered::Unchanged
        ));
    }
}

mod bodies {
    use super::*;

    #[test]
    fn gzip_and_deflate_are_decoded_and_other_encodings_refused() {
        let p = policy(LABELS);
        let body = br#"{"resourceType":"Patient","id":"x"}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(body).unwrap();
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(body).unwrap();
        assert_eq!(
            &*p.decode(Some("gzip"), &gz.finish().unwrap()).unwrap(),
            body
        );
        assert_eq!(
            &*p.decode(Some("deflate"), &zl.finish().unwrap()).unwrap(),
            body
        );
        // An identity body is read in place, not copied.
        let identity = p.decode(None, body).unwrap();
        assert!(matches!(identity, std::borrow::Cow::Borrowed(b) if b.as_ptr() == body.as_ptr()));
        assert_eq!(
            p.decode(Some("br"), body).unwrap_err().reason,
            "response-encoding-unsupported"
        );
        assert_eq!(
            p.decode(Some("gzip"), b"not gzip").unwrap_err().reason,
            "response-unreadable"
        );
    }

    #[test]
    fn oversized_and_unreadable_bodies_fail_closed() {
        let p = policy(r#"{"maxBodyBytes": 64}"#);
        let big = searchset((0..5).map(|i| labelled(&i.to_string(), &[])).collect());
        assert!(
            matches!(run(&p, &big, &caller(None), false, &no_consents).0, Filtered::Refused(ref r) if r.reason == "response-too-large")
        );
        // A gzip bomb: small on the wire, over the limit decoded.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 10_000]).unwrap();
        assert_eq!(
            p.decode(Some("gzip"), &gz.finish().unwrap())
                .unwrap_err()
                .reason,
            "response-too-large"
        );
        let mut report = Report::default();
        assert!(
            matches!(p.filter(b"{not json", &caller(None), false, &no_consents, &mut report), Filtered::Refused(ref r) if r.status == 502)
        );
        assert!(matches!(
            p.filter(b"[1,2]", &caller(None), false, &no_consents, &mut report),
            Filtered::Refused(_)
        ));
    }
}

mod config {
    use super::*;

    #[test]
    fn refuses_bad_config_naming_the_field() {
        let cases = [
            (r#"{"labels": [{"codes": []}]}"#, "labels[0].codes"),
            (
                r#"{"labels": [{"codes": ["R"], "action": "redact"}]}"#,
                "labels[0].redact",
            ),
            (
                r#"{"labels": [{"codes": ["R"], "action": "drop", "redact": ["x"]}]}"#,
                "labels[0].redact",
            ),
            (
                r#"{"labels": [{"codes": ["R"], "action": "redact", "redact": ["id"]}]}"#,
                "labels[0].redact[0]",
            ),
            (
                r#"{"labels": [{"codes": ["R"], "action": "hide"}]}"#,
                "labels[0].action",
            ),
            (
                r#"{"consents": {"cluster": "c", "path": "Consent"}}"#,
                "consents.path",
            ),
            (r#"{"consents": {"path": "/Consent"}}"#, "consents"),
            (r#"{"purpose": {"header": "X-Purpose"}}"#, "purpose.header"),
            // The purpose of use comes from a verified source, never a client header.
            (
                r#"{"purpose": {"header": "x-purpose-of-use"}}"#,
                "purpose.header",
            ),
            (r#"{"total": "keep"}"#, "total"),
            (r#"{"maxBodyBytes": 0}"#, "maxBodyBytes"),
            (r#"{"lables": []}"#, "lables"),
        ];
        for (json, field) in cases {
            let e = ConsentPolicy::from_json(json.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("accepted {json}"));
            assert!(e.field.starts_with(field), "{json}: {e}");
        }
    }
}

mod helpers {
    use super::*;

    #[test]
    fn the_purpose_comes_from_the_verified_header_then_break_glass_then_the_default() {
        let p = policy(r#"{"purpose": {"default": "TREAT"}}"#);
        assert_eq!(p.purpose_of(Some("HPAYMT"), Some("ETREAT")), Some("HPAYMT"));
        assert_eq!(p.purpose_of(None, Some("ETREAT")), Some("ETREAT"));
        assert_eq!(p.purpose_of(None, None), Some("TREAT"));
        assert_eq!(
            p.purpose_of(Some("bad value!"), None),
            Some("TREAT"),
            "a malformed purpose is ignored"
        );
        assert_eq!(policy("{}").purpose_of(None, None), None);
    }

    #[test]
    fn only_successful_json_answers_are_read_and_other_successes_refused() {
        let p = policy("{}");
        assert_eq!(
            p.read_plan(200, "application/fhir+json; charset=utf-8"),
            ReadPlan::Read
        );
        assert_eq!(p.read_plan(201, "Application/JSON"), ReadPlan::Read);
        assert_eq!(p.read_plan(404, "application/fhir+json"), ReadPlan::Skip);
        assert_eq!(p.read_plan(304, ""), ReadPlan::Skip);
        assert!(
            matches!(p.read_plan(200, "application/fhir+xml"), ReadPlan::Refuse(r) if r.status == 502 && r.reason == "response-format-unsupported")
        );
        let c =
            policy(r#"{"consents": {"cluster": "c", "path": "/fhir/Consent", "maxPatients": 2}}"#);
        assert!(c.too_many_patients(2).is_none());
        assert_eq!(c.too_many_patients(3).map(|r| r.status), Some(503));
    }

    #[test]
    fn interactions_and_time() {
        assert!(
            filters_interaction("read")
                && filters_interaction("search-type")
                && filters_interaction("operation-instance")
        );
        assert!(
            !filters_interaction("capabilities")
                && !filters_interaction("passthrough")
                && !filters_interaction("cds-service")
        );
        assert!(is_single_read("vread") && !is_single_read("search-type"));
        assert_eq!(rfc3339(1_795_521_600), "2026-11-24T12:00:00Z");
    }
}

mod fast_path {
    use super::*;

    const WITH_CONSENTS: &str = r#"{"labels": [{"codes": ["R"], "action": "drop"}], "consents": {"cluster": "c", "path": "/fhir/Consent"}}"#;

    fn obs(id: &str, patient: &str) -> Value {
        json!({"resourceType": "Observation", "id": id, "subject": {"reference": format!("Patient/{patient}")}, "performer": [{"reference": "Practitioner/x"}]})
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn none_cached(_: &str) -> Option<Consents<'static>> {
        None
    }

    fn all_empty(_: &str) -> Option<Consents<'static>> {
        Some(Consents::Known(&[]))
    }

    #[test]
    fn a_response_without_labels_or_consented_patients_is_released_unparsed() {
        let p = policy(WITH_CONSENTS);
        let b = bytes(&searchset(vec![obs("a", "p1"), obs("b", "p2")]));
        assert_eq!(
            p.fast_path(&b, &none_cached),
            FastPath::NeedConsents(vec!["p1".into(), "p2".into()])
        );
        assert_eq!(p.fast_path(&b, &all_empty), FastPath::Release);
        // An absolute Patient reference names no patient whose Consents can be looked up:
        // parsed, and withheld there (issue 15).
        let with_base = br#"{"resourceType":"Observation","subject":{"reference":"https://x/fhir/Patient/p9/_history/1"}}"#;
        assert_eq!(p.fast_path(with_base, &none_cached), FastPath::Parse);
        let mut report = Report::default();
        let filtered = p.filter(
            with_base,
            &caller(None),
            false,
            &|_| Consents::Known(&[]),
            &mut report,
        );
        assert!(matches!(filtered, Filtered::Refused(_)), "{filtered:?}");
        assert_eq!(report.withheld.get("consent-patient-unresolved"), Some(&1));
        assert_eq!(
            policy("{}").fast_path(&b, &none_cached),
            FastPath::Release,
            "nothing to fetch without consents configured"
        );
        let unicode = br#"{"resourceType":"Observation","valueString":"0.9 g/cm\u00b2","subject":{"reference":"Patient/p1"}}"#;
        assert_eq!(
            p.fast_path(unicode, &all_empty),
            FastPath::Release,
            "a non-ASCII escape hides nothing"
        );
    }

    /// Issue 15, class 6: a subject given only by identifier escapes every Consent lookup.
    #[test]
    fn a_patient_named_only_by_identifier_is_withheld_under_consents() {
        let p = policy(WITH_CONSENTS);
        let cases = [
            (
                json!({"identifier": {"system": "urn:mrn", "value": "123"}}),
                true,
            ),
            (
                json!({"identifier": {"value": "123"}, "type": "Patient"}),
                true,
            ),
            (
                json!({"identifier": {"value": "123"}, "type": "http://hl7.org/fhir/StructureDefinition/Patient"}),
                true,
            ),
            (
                json!({"identifier": {"value": "123"}, "type": "Group"}),
                false,
            ),
            (json!({"display": "someone"}), false),
            (json!({"reference": "Patient/p1"}), false),
        ];
        for (subject, withheld) in cases {
            let body = json!({"resourceType": "Observation", "id": "o", "identifier": [{"value": "x"}], "subject": subject});
            let mut report = Report::default();
            let filtered = p.filter(
                &bytes(&body),
                &caller(None),
                false,
                &|_| Consents::Known(&[]),
                &mut report,
            );
            assert_eq!(
                matches!(filtered, Filtered::Refused(_)),
                withheld,
                "{subject}: {filtered:?}"
            );
            if withheld {
                assert_ne!(p.fast_path(&bytes(&body), &all_empty), FastPath::Release);
            }
        }
        let listed = json!({"resourceType": "Observation", "identifier": [{"value": "x"}], "subject": {"reference": "Patient/p1"}});
        assert_eq!(
            p.fast_path(&bytes(&listed), &all_empty),
            FastPath::Release,
            "a resource's own identifiers (a list) do not send it to the parse"
        );
    }

    #[test]
    fn anything_that_could_hide_a_label_or_a_patient_is_parsed() {
        let p = policy(WITH_CONSENTS);
        let consent = json!({"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]}, "patient": {"reference": "Patient/p1"}});
        let list = vec![consent];
        let has_consent = |id: &str| {
            Some(if id == "p1" {
                Consents::Known(&list)
            } else {
                Consents::Known(&[])
            })
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("a label", bytes(&searchset(vec![labelled("a", &["R"])]))),
            (
                "a Patient resource",
                bytes(&json!({"resourceType": "Patient", "id": "p1"})),
            ),
            (
                "an escaped key",
                br#"{"resourceType":"Observation","meta":{"\u0073ecurity":[{"code":"R"}]}}"#
                    .to_vec(),
            ),
            (
                "an escape that could spell anything",
                br#"{"resourceType":"Observation","subject":{"reference":"\uZZZZ"}}"#.to_vec(),
            ),
            (
                "an escaped slash",
                br#"{"resourceType":"Observation","subject":{"reference":"Patient\/p1"}}"#.to_vec(),
            ),
            ("a patient with a Consent", bytes(&obs("a", "p1"))),
            ("not a JSON object", b"Patient/p1 hello".to_vec()),
            (
                "a subject named only by identifier",
                br#"{"resourceType":"Observation","subject":{"identifier":{"value":"123"}}}"#
                    .to_vec(),
            ),
        ];
        for (what, body) in cases {
            assert_eq!(p.fast_path(&body, &has_consent), FastPath::Parse, "{what}");
        }
        assert_eq!(
            p.fast_path(&bytes(&obs("a", "p1")), &|_| Some(Consents::Unavailable)),
            FastPath::Parse,
            "a failed fetch is decided by the full filter"
        );
    }

    /// Found by the `consent` fuzz target (three times: broken syntax, invalid UTF-8 in a
    /// string, a number out of a double's range): the fast path released malformed JSON that
    /// the full filter refuses, so the gateway's answer depended on which path a response took.
    #[test]
    fn malformed_json_is_never_released_unparsed() {
        let mut report = Report::default();
        for p in [policy(WITH_CONSENTS), policy("{}")] {
            let cases: [&[u8]; 7] = [
                br#"{"resourceType": "Bundle", "type": " "http://loinc.org", "code": "3141-9"}"#,
                // A number a double cannot hold: serde_json refuses it, its skim did not.
                br#"{"resourceType": "Bundle", "etnry":5E919999}"#,
                b"{\"resourceType\":\"Observation\",\"note\":[{\"text\":\"\x9b\"}]}",
                br#"{"resourceType":"Observation","subject":{"reference":"Practitioner/1"}"#,
                br#"{"resourceType":"Observation"} trailing"#,
                br#"{"resourceType":7}"#,
                br#"{"id":"no-type"}"#,
            ];
            for body in cases {
                assert_eq!(
                    p.fast_path(body, &all_empty),
                    FastPath::Parse,
                    "{}",
                    String::from_utf8_lossy(body)
                );
                let decided = p.filter(
                    body,
                    &caller(None),
                    false,
                    &|_| Consents::Known(&[]),
                    &mut report,
                );
                assert!(
                    !matches!(decided, Filtered::Unchanged)
                        || serde_json::from_slice::<Value>(body).is_ok()
                );
            }
        }
    }

    /// Whatever the fast path releases, the full filter would have left unchanged.
    #[test]
    fn release_always_agrees_with_the_full_filter() {
        let p = policy(WITH_CONSENTS);
        let consent = json!({"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]}, "patient": {"reference": "Patient/p3"}, "provision": {"type": "deny"}});
        let list = vec![consent];
        let lookup = |id: &str| {
            if id == "p3" {
                Consents::Known(&list)
            } else {
                Consents::Known(&[])
            }
        };
        let cached = |id: &str| Some(lookup(id));
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut released = 0;
        for _ in 0..400 {
            let resources: Vec<Value> = (0..1 + next(4))
                .map(|i| match next(5) {
                    0 => labelled(&format!("l{i}"), &["R"]),
                    1 => json!({"resourceType": "Patient", "id": format!("p{}", next(4))}),
                    _ => obs(&format!("o{i}"), &format!("p{}", next(4))),
                })
                .collect();
            let body = bytes(&searchset(resources));
            if p.fast_path(&body, &cached) == FastPath::Release {
                released += 1;
                let mut report = Report::default();
                assert!(
                    matches!(
                        p.filter(&body, &caller(None), false, &lookup, &mut report),
                        Filtered::Unchanged
                    ),
                    "{}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
        assert!(
            released > 20,
            "the generator exercises the fast path ({released})"
        );
    }
}

/// Issue 15: what no answer could be filtered into shape is refused on the request.
mod request_refusals {
    use super::*;

    fn refusal(
        p: &ConsentPolicy,
        interaction: &str,
        query: &str,
        purpose: Option<&'static str>,
    ) -> Option<&'static str> {
        p.request_refusal(interaction, None, query, &caller(purpose))
            .map(|r| r.reason)
    }

    #[test]
    fn earlier_versions_are_refused_unless_configured() {
        let p = policy(LABELS);
        for interaction in [
            "vread",
            "history-instance",
            "history-type",
            "history-system",
        ] {
            assert_eq!(
                refusal(&p, interaction, "", Some("TREAT")),
                Some("version-withheld"),
                "{interaction}"
            );
        }
        assert_eq!(refusal(&p, "read", "", None), None);
        let allow = policy(r#"{"versions": "allow"}"#);
        assert_eq!(refusal(&allow, "vread", "", None), None);
    }

    #[test]
    fn a_bulk_export_is_refused_under_restricting_policies_unless_unfiltered_is_chosen() {
        let p = policy(LABELS);
        let refused = p
            .request_refusal("operation-system", Some("$export"), "", &caller(None))
            .map(|r| r.reason);
        assert_eq!(refused, Some("export-not-filtered"));
        assert_eq!(
            p.request_refusal("operation-type", Some("$everything"), "", &caller(None))
                .map(|r| r.reason),
            None
        );
        let unfiltered = policy(r#"{"labels": [{"codes": ["V"]}], "bulkExport": "unfiltered"}"#);
        assert!(unfiltered
            .request_refusal("operation-system", Some("$export"), "", &caller(None))
            .is_none());
        assert!(
            policy("{}")
                .request_refusal("operation-system", Some("$export"), "", &caller(None))
                .is_none(),
            "nothing restricts"
        );
    }

    #[test]
    fn count_only_searches_are_refused() {
        let p = policy(LABELS);
        for query in [
            "_summary=count",
            "code=x&_summary=count",
            "_count=0",
            "_count=00",
            "_security=R&_summary=count",
        ] {
            assert_eq!(
                refusal(&p, "search-type", query, Some("TREAT")),
                Some("count-not-permitted"),
                "{query}"
            );
        }
        for query in ["_count=10", "_summary=true", "_count=1"] {
            assert_eq!(refusal(&p, "search-type", query, None), None, "{query}");
        }
    }

    #[test]
    fn searching_on_a_label_the_caller_may_not_see_is_refused() {
        let p = policy(LABELS);
        let cases = [
            ("_security=R", None, Some("label-search-not-permitted")),
            (
                "_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|V",
                None,
                Some("label-search-not-permitted"),
            ),
            ("_security=R", Some("TREAT"), None),
            (
                "_security=HIV",
                Some("TREAT"),
                Some("label-search-not-permitted"),
            ),
            (
                "_tag=PSY",
                Some("TREAT"),
                Some("label-search-not-permitted"),
            ),
            ("_security=N,R", None, Some("label-search-not-permitted")),
            ("_security:not=R", None, None),
            ("_security:missing=true", None, None),
            ("_security=N", None, None),
        ];
        for (query, purpose, expected) in cases {
            assert_eq!(
                refusal(&p, "search-type", query, purpose),
                expected,
                "{query} {purpose:?}"
            );
        }
        let mut glass = caller(None);
        glass.break_glass = true;
        assert_eq!(
            p.request_refusal("search-type", None, "_security=R", &glass)
                .map(|r| r.reason),
            None,
            "break-glass overrides"
        );
    }
}

/// Issue 15, class 2: `total` never counts what the caller cannot see.
mod totals {
    use super::*;

    fn page(ids: &[(&str, &[&str])], total: u64, links: &[&str]) -> Value {
        let entries: Vec<Value> = ids
            .iter()
            .map(
                |(id, codes)| json!({"resource": labelled(id, codes), "search": {"mode": "match"}}),
            )
            .collect();
        let links: Vec<Value> = links
            .iter()
            .map(|r| json!({"relation": r, "url": "http://x"}))
            .collect();
        json!({"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries})
    }

    fn filtered(p: &ConsentPolicy, bundle: Value) -> Value {
        let mut report = Report::default();
        match p.filter_value(
            bundle.clone(),
            &caller(None),
            false,
            &|_| Consents::Known(&[]),
            &mut report,
        ) {
            Filtered::Rewritten(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Filtered::Unchanged => bundle,
            Filtered::Refused(r) => panic!("{r:?}"),
        }
    }

    #[test]
    fn a_whole_result_counts_what_is_left() {
        let out = filtered(
            &policy(LABELS),
            page(&[("a", &[]), ("b", &["R"]), ("c", &[])], 3, &["self"]),
        );
        assert_eq!(out["total"], 2);
    }

    #[test]
    fn a_page_of_a_longer_result_loses_its_total_even_with_nothing_removed_here() {
        for links in [&["self", "next"][..], &["self", "previous"], &["prev"]] {
            let out = filtered(&policy(LABELS), page(&[("a", &[]), ("c", &[])], 40, links));
            assert!(out.get("total").is_none(), "{links:?}: {out}");
        }
        let body = serde_json::to_vec(&page(&[("a", &[])], 40, &["self", "next"])).unwrap();
        assert_eq!(
            policy(LABELS).fast_path(&body, &|_| None),
            FastPath::Parse,
            "not released unparsed with its total"
        );
    }

    #[test]
    fn a_whole_result_with_nothing_removed_keeps_its_total() {
        let out = filtered(
            &policy(LABELS),
            page(&[("a", &[]), ("c", &[])], 2, &["self"]),
        );
        assert_eq!(out["total"], 2);
    }
}

/// Issue 15, class 6: items are not judged alone.
mod judged_together {
    use super::*;

    #[test]
    fn a_labelled_contained_resource_labels_its_container() {
        let p = policy(LABELS);
        let mut container = labelled("c", &[]);
        container["contained"] = json!([labelled("inner", &["R"])]);
        let mut report = Report::default();
        let out = p.filter_value(
            container.clone(),
            &caller(None),
            true,
            &|_| Consents::Known(&[]),
            &mut report,
        );
        assert!(matches!(out, Filtered::Refused(_)), "{out:?}");
        let mut report = Report::default();
        let out = p.filter_value(
            container,
            &caller(Some("TREAT")),
            true,
            &|_| Consents::Known(&[]),
            &mut report,
        );
        assert!(
            !matches!(out, Filtered::Refused(_)),
            "the purpose that may see R sees both"
        );
    }

    #[test]
    fn under_consents_a_patient_named_only_by_identifier_or_elsewhere_is_withheld() {
        let p = policy(r#"{"consents": {"cluster": "fhir_api", "path": "/fhir/Consent"}}"#);
        for subject in [
            json!({"type": "Patient", "identifier": {"system": "urn:mrn", "value": "1"}}),
            json!({"reference": "https://other.example/fhir/Patient/p1"}),
            json!({"reference": "Patient?identifier=urn:mrn|1"}),
        ] {
            let resource = json!({"resourceType": "Observation", "id": "o", "subject": subject});
            let mut report = Report::default();
            let out = p.filter_value(
                resource,
                &caller(None),
                true,
                &|_| Consents::Known(&[]),
                &mut report,
            );
            assert!(matches!(out, Filtered::Refused(_)), "{subject}: {out:?}");
        }
        let practitioner = json!({"resourceType": "Observation", "id": "o", "performer": [{"reference": "Practitioner/1"}], "subject": {"reference": "Patient/p1"}});
        let mut report = Report::default();
        let out = p.filter_value(
            practitioner,
            &caller(None),
            true,
            &|_| Consents::Known(&[]),
            &mut report,
        );
        assert!(!matches!(out, Filtered::Refused(_)), "{out:?}");
    }
}

/// The host only asks; these decide (issue 15, class 4 and 5).
mod host_decisions {
    use super::*;

    #[test]
    fn a_committed_write_whose_echo_is_withheld_stays_committed() {
        let refused = Filtered::Refused(Rejection::new(
            403,
            "consent-withheld",
            crate::outcome::IssueType::Forbidden,
            "x",
        ));
        assert!(keeps_committed_write(true, 201, &refused));
        assert!(keeps_committed_write(true, 200, &refused));
        assert!(
            !keeps_committed_write(false, 200, &refused),
            "a read is refused"
        );
        assert!(
            !keeps_committed_write(true, 400, &refused),
            "nothing was committed"
        );
        assert!(!keeps_committed_write(true, 201, &Filtered::Unchanged));
        for w in [
            "create",
            "conditional-create",
            "update",
            "conditional-update",
            "patch",
            "conditional-patch",
        ] {
            assert!(is_write(w), "{w}");
        }
        for r in ["read", "vread", "search-type", "delete", "batch"] {
            assert!(!is_write(r), "{r}");
        }
    }

    #[test]
    fn only_an_upstream_error_is_reduced() {
        assert!(reduces_error(404, true) && reduces_error(500, true));
        assert!(
            !reduces_error(403, false),
            "the gateway's own refusal is PHI-free and passes"
        );
        assert!(!reduces_error(200, true) && !reduces_error(304, true));
    }
}

/// Issue 15, class 6: a Binary is as sensitive as its security context.
mod binaries_are_judged_by_their_security_context {
    use super::*;

    const POLICY: &str = r#"{"labels": [{"codes": ["R"], "allowPurposes": ["TREAT"], "action": "drop"}],
        "consents": {"cluster": "c", "path": "/fhir/Consent"},
        "currentResource": {"cluster": "c", "path": "/fhir"}}"#;

    fn binary(context: Value) -> Value {
        json!({"resourceType": "Binary", "id": "b1", "contentType": "text/plain", "data": "c2VjcmV0", "securityContext": context})
    }

    fn document(labels: &[&str], patient: &str) -> Value {
        json!({"resourceType": "DocumentReference", "id": "d1", "status": "current",
            "meta": {"security": labels.iter().map(|c| json!({"code": c})).collect::<Vec<_>>()},
            "subject": {"reference": format!("Patient/{patient}")}})
    }

    fn judge(
        p: &ConsentPolicy,
        response: &Value,
        context: Option<&Value>,
        purpose: Option<&'static str>,
        deny: &[Value],
    ) -> (bool, Report) {
        let mut report = Report::default();
        let consents = |_: &str| Consents::Known(deny);
        let contexts = |r: &str| match context {
            Some(c) if r == "DocumentReference/d1" => SecurityContext::Known(c),
            _ => SecurityContext::Unavailable,
        };
        let known = Known {
            consents: &consents,
            contexts: &contexts,
        };
        let filtered = p.filter_known(
            response.clone(),
            &caller(purpose),
            true,
            &known,
            &mut report,
        );
        (matches!(filtered, Filtered::Refused(_)), report)
    }

    #[test]
    fn the_context_is_read_and_its_labels_and_patient_decide() {
        let p = policy(POLICY);
        let b = binary(json!({"reference": "DocumentReference/d1"}));
        assert_eq!(
            p.contexts_needed(&b),
            vec!["DocumentReference/d1".to_string()]
        );
        assert_eq!(
            p.context_path("DocumentReference/d1").as_deref(),
            Some("/fhir/DocumentReference/d1")
        );
        let restricted = document(&["R"], "p1");
        assert_eq!(
            p.patients_needed(&b, &|_| Some(&restricted)),
            vec!["p1".to_string()]
        );
        let (withheld, report) = judge(&p, &b, Some(&restricted), None, &[]);
        assert!(withheld);
        assert_eq!(report.withheld.get("label-withheld"), Some(&1));
        assert!(
            !judge(&p, &b, Some(&restricted), Some("TREAT"), &[]).0,
            "a treating caller sees it"
        );
        assert!(!judge(&p, &b, Some(&document(&[], "p1")), None, &[]).0);
        let deny = vec![json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "patient": {"reference": "Patient/p1"}, "provision": {"type": "deny"}})];
        let (withheld, report) = judge(&p, &b, Some(&document(&[], "p1")), None, &deny);
        assert!(withheld, "the context's patient's Consent denies");
        assert_eq!(report.withheld.get("consent-denied"), Some(&1));
    }

    #[test]
    fn a_context_that_cannot_be_read_withholds_the_binary() {
        let p = policy(POLICY);
        for context in [
            json!({"reference": "DocumentReference/d1"}),
            json!({"reference": "https://elsewhere/fhir/DocumentReference/d1"}),
            json!({"reference": "#contained"}),
            json!({"identifier": {"value": "x"}}),
            json!({"reference": "NotAType/d1"}),
        ] {
            let (withheld, report) = judge(&p, &binary(context.clone()), None, Some("TREAT"), &[]);
            assert!(withheld, "{context}");
            assert_eq!(
                report.withheld.get("binary-context-unavailable"),
                Some(&1),
                "{context}"
            );
        }
    }

    #[test]
    fn a_binary_without_a_context_or_with_a_patient_context_needs_no_read() {
        let p = policy(POLICY);
        let plain = json!({"resourceType": "Binary", "id": "b1", "contentType": "text/plain"});
        assert!(p.contexts_needed(&plain).is_empty());
        assert!(!judge(&p, &plain, None, None, &[]).0);
        let patients = binary(json!({"reference": "Patient/p1"}));
        assert!(p.contexts_needed(&patients).is_empty());
        assert_eq!(
            p.patients_needed(&patients, &|_| None),
            vec!["p1".to_string()]
        );
        assert!(!judge(&p, &patients, None, None, &[]).0);
        assert!(
            policy("{}")
                .contexts_needed(&binary(json!({"reference": "DocumentReference/d1"})))
                .is_empty(),
            "nothing restricts: nothing to read"
        );
        let in_bundle = searchset(vec![binary(json!({"reference": "DocumentReference/d1"}))]);
        assert_eq!(
            p.contexts_needed(&in_bundle).len(),
            1,
            "Binaries in a Bundle too"
        );
    }

    #[test]
    fn a_security_context_is_never_released_by_the_byte_scan() {
        let p = policy(POLICY);
        let b = serde_json::to_vec(&binary(json!({"reference": "DocumentReference/d1"}))).unwrap();
        assert_eq!(
            p.fast_path(&b, &|_| Some(Consents::Known(&[]))),
            FastPath::Parse
        );
    }

    #[test]
    fn a_context_read_must_be_the_resource_referenced() {
        let p = policy(POLICY);
        let doc = serde_json::to_vec(&document(&[], "p1")).unwrap();
        assert!(p.read_context("DocumentReference/d1", 200, &doc).is_some());
        assert!(p.read_context("DocumentReference/d2", 200, &doc).is_none());
        assert!(p.read_context("DocumentReference/d1", 404, &doc).is_none());
        assert!(p
            .read_context("DocumentReference/d1", 200, b"nope")
            .is_none());
    }
}
