//! Issue 15, class 5: writes, deletes, instance operations and bundle entries under the
//! consent policies.

use super::*;
use serde_json::json;

const POLICY: &str = r#"{
    "labels": [{"codes": ["R"], "allowPurposes": ["TREAT"], "action": "drop"},
               {"codes": ["PSY"], "action": "redact", "redact": ["valueString"]}],
    "consents": {"cluster": "fhir", "path": "/fhir/Consent"},
    "currentResource": {"cluster": "fhir", "path": "/fhir"},
    "relabelClients": ["records-admin"]
}"#;

fn policy(json: &str) -> ConsentPolicy {
    ConsentPolicy::from_json(json.as_bytes()).unwrap()
}

fn caller(client: Option<&'static str>, purpose: Option<&'static str>) -> Caller<'static> {
    Caller {
        subject: Some("dr-x"),
        client_id: client,
        purpose,
        break_glass: false,
        now: "2026-12-06T10:00:00Z",
    }
}

fn acting<'a>(interaction: &'a str, operation: Option<&'a str>) -> Acting<'a> {
    Acting {
        interaction,
        operation,
        resource_type: Some("Observation"),
        id: Some("o1"),
        raw_query: "",
    }
}

fn obs(labels: &[&str], patient: &str) -> Value {
    json!({"resourceType": "Observation", "id": "o1", "meta": {"versionId": "3",
        "security": labels.iter().map(|c| json!({"code": c})).collect::<Vec<_>>()},
        "status": "final", "subject": {"reference": format!("Patient/{patient}")}, "valueString": "x"})
}

fn no_consents(_: &str) -> Consents<'static> {
    Consents::Known(&[])
}

/// What a check must satisfy.
type Expect = Box<dyn Fn(&RequestCheck) -> bool>;

/// interaction, current resource, write body and its media type, caller, expected reason.
type WriteRow<'a> = (
    &'a str,
    Value,
    Option<(&'a [u8], &'a str)>,
    &'a Caller<'a>,
    &'a str,
);

fn reason(r: &Result<Option<String>, Rejection>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(rejection) => rejection.reason,
    }
}

mod on_the_request {
    use super::*;

    #[test]
    fn each_interaction_needs_what_its_kind_of_change_needs() {
        let p = policy(POLICY);
        let c = caller(Some("app"), None);
        let current = |body| RequestCheck::Current {
            path: "/fhir/Observation/o1".into(),
            body,
        };
        let refused = |reason: &'static str| move |check: &RequestCheck| matches!(check, RequestCheck::Refuse(r) if r.reason == reason);
        let rows: Vec<(&str, Option<&str>, Expect)> = vec![
            ("read", None, Box::new(|c| *c == RequestCheck::Pass)),
            ("search-type", None, Box::new(|c| *c == RequestCheck::Pass)),
            ("create", None, Box::new(|c| *c == RequestCheck::Pass)),
            ("update", None, Box::new(move |c| *c == current(true))),
            ("patch", None, Box::new(move |c| *c == current(true))),
            ("delete", None, Box::new(move |c| *c == current(false))),
            (
                "operation-instance",
                Some("$validate"),
                Box::new(move |c| *c == current(false)),
            ),
            (
                "operation-instance",
                Some("$meta"),
                Box::new(move |c| *c == current(false)),
            ),
            (
                "operation-instance",
                Some("$everything"),
                Box::new(|c| *c == RequestCheck::Pass),
            ),
            (
                "operation-instance",
                Some("$meta-delete"),
                Box::new(refused("relabel-not-permitted")),
            ),
            (
                "operation-instance",
                Some("$meta-add"),
                Box::new(refused("relabel-not-permitted")),
            ),
            (
                "conditional-create",
                None,
                Box::new(refused("conditional-write-not-checkable")),
            ),
            (
                "conditional-update",
                None,
                Box::new(refused("conditional-write-not-checkable")),
            ),
            (
                "conditional-patch",
                None,
                Box::new(refused("conditional-write-not-checkable")),
            ),
            (
                "conditional-delete",
                None,
                Box::new(refused("conditional-write-not-checkable")),
            ),
            ("transaction", None, Box::new(|c| *c == RequestCheck::Body)),
            ("batch", None, Box::new(|c| *c == RequestCheck::Body)),
        ];
        let listing = |interaction: &'static str| Acting {
            resource_type: None,
            id: None,
            ..acting(interaction, Some("$meta"))
        };
        for interaction in ["operation-type", "operation-system"] {
            let got = p.check_request(&listing(interaction), &c);
            assert!(
                refused("label-search-not-permitted")(&got),
                "{interaction} $meta: {got:?}"
            );
        }
        for (interaction, op, expect) in rows {
            let got = p.check_request(&acting(interaction, op), &c);
            assert!(expect(&got), "{interaction} {op:?}: {got:?}");
        }
        let admin = caller(Some("records-admin"), None);
        assert_eq!(
            p.check_request(&acting("operation-instance", Some("$meta-delete")), &admin),
            current(false),
            "the privileged client still reads the resource first"
        );
    }

    #[test]
    fn conditional_writes_pass_only_when_the_config_allows_them() {
        let allowing = POLICY.replacen('{', r#"{"conditionalWrites": "allow","#, 1);
        let p = policy(&allowing);
        for interaction in [
            "conditional-create",
            "conditional-update",
            "conditional-patch",
            "conditional-delete",
        ] {
            assert_eq!(
                p.check_request(&acting(interaction, None), &caller(None, None)),
                RequestCheck::Pass,
                "{interaction}"
            );
        }
        let entry = br#"{"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=x"}}]}"#;
        assert!(p.check_bundle(entry, &caller(None, None)).is_ok());
        assert!(policy(POLICY)
            .check_bundle(entry, &caller(None, None))
            .is_err());
    }

    #[test]
    fn without_restricting_policies_nothing_is_checked() {
        let p = policy("{}");
        for interaction in ["update", "delete", "conditional-update", "transaction"] {
            assert_eq!(
                p.check_request(&acting(interaction, None), &caller(None, None)),
                RequestCheck::Pass,
                "{interaction}"
            );
        }
    }

    #[test]
    fn without_a_current_resource_source_writes_to_existing_resources_are_refused() {
        let p = policy(r#"{"labels": [{"codes": ["R"]}]}"#);
        for interaction in ["update", "patch", "delete"] {
            let got = p.check_request(&acting(interaction, None), &caller(None, None));
            assert!(
                matches!(&got, RequestCheck::Refuse(r) if r.reason == "write-not-checkable"),
                "{interaction}: {got:?}"
            );
        }
        assert_eq!(
            p.check_request(&acting("create", None), &caller(None, None)),
            RequestCheck::Pass
        );
    }

    #[test]
    fn a_source_that_cannot_be_fetched_from_is_refused_at_load_naming_the_field() {
        for (json, field) in [
            (
                r#"{"currentResource": {"cluster": "", "path": "/fhir"}}"#,
                "currentResource.cluster",
            ),
            (
                r#"{"currentResource": {"cluster": "c", "path": "fhir"}}"#,
                "currentResource.path",
            ),
            (
                r#"{"currentResource": {"cluster": "c", "path": "/fhir", "timeoutMs": 0}}"#,
                "currentResource.timeoutMs",
            ),
            (r#"{"relabelClients": "x"}"#, "relabelClients"),
        ] {
            let err = ConsentPolicy::from_json(json.as_bytes()).err().expect(json);
            assert!(err.to_string().contains(field), "{json}: {err}");
        }
    }
}

mod on_the_current_resource {
    use super::*;

    fn decide(
        p: &ConsentPolicy,
        interaction: &str,
        current: Value,
        write: Option<(&[u8], &str)>,
        c: &Caller,
    ) -> Result<Option<String>, Rejection> {
        let a = acting(interaction, None);
        let bytes = serde_json::to_vec(&current).unwrap();
        let current = p.read_current(&a, 200, &bytes);
        p.decide_current(&a, 200, current, write, c, &no_consents)
    }

    #[test]
    fn a_caller_may_not_change_or_probe_what_it_may_not_read() {
        let p = policy(POLICY);
        let plain = caller(Some("app"), None);
        let treating = caller(Some("app"), Some("TREAT"));
        let remove_labels = br#"[{"op": "remove", "path": "/meta/security"}]"#;
        let probe = br#"[{"op": "test", "path": "/valueString", "value": "x"}]"#;
        let patch = "application/json-patch+json";
        let rows: Vec<WriteRow> = vec![
            // Withheld from the caller: refused like a read, whatever the write.
            (
                "delete",
                obs(&["R"], "p1"),
                None,
                &plain,
                "consent-withheld",
            ),
            (
                "patch",
                obs(&["R"], "p1"),
                Some((remove_labels, patch)),
                &plain,
                "consent-withheld",
            ),
            (
                "patch",
                obs(&["R"], "p1"),
                Some((probe, patch)),
                &plain,
                "consent-withheld",
            ),
            (
                "update",
                obs(&["R"], "p1"),
                Some((b"{}", "application/fhir+json")),
                &plain,
                "consent-withheld",
            ),
            (
                "operation-instance",
                obs(&["R"], "p1"),
                None,
                &plain,
                "consent-withheld",
            ),
            // Part of it is redacted for everyone: no write may probe or erase the rest.
            (
                "patch",
                obs(&["PSY"], "p1"),
                Some((probe, patch)),
                &treating,
                "write-needs-full-read",
            ),
            // Visible whole: a probe tells nothing new; a label change needs the privilege.
            (
                "patch",
                obs(&["R"], "p1"),
                Some((probe, patch)),
                &treating,
                "ok",
            ),
            ("delete", obs(&["R"], "p1"), None, &treating, "ok"),
            (
                "patch",
                obs(&["R"], "p1"),
                Some((remove_labels, patch)),
                &treating,
                "relabel-not-permitted",
            ),
            (
                "patch",
                obs(&[], "p1"),
                Some((
                    br#"[{"op": "replace", "path": "/subject/reference", "value": "Patient/p2"}]"#,
                    patch,
                )),
                &treating,
                "relabel-not-permitted",
            ),
            (
                "patch",
                obs(&[], "p1"),
                Some((
                    br#"[{"op": "add", "path": "/meta/security/-", "value": {"code": "R"}}]"#,
                    patch,
                )),
                &plain,
                "relabel-not-permitted",
            ),
            (
                "patch",
                obs(&[], "p1"),
                Some((
                    br#"[{"op": "replace", "path": "/status", "value": "amended"}]"#,
                    patch,
                )),
                &plain,
                "ok",
            ),
            // A patch that does not apply changes nothing, and the caller sees the resource.
            (
                "patch",
                obs(&[], "p1"),
                Some((
                    br#"[{"op": "test", "path": "/status", "value": "draft"}]"#,
                    patch,
                )),
                &plain,
                "ok",
            ),
            // json-patch's undo of this failed patch panics: here it simply does not apply.
            (
                "patch",
                obs(&[], "p1"),
                Some((br#"[{"op": "replace", "path": "/valueString", "value": "v"}, {"op": "add", "path": "/meta/security", "value": "v"}, {"op": "move", "from": "/valueString", "path": "/meta/security/0"}]"#, patch)),
                &plain,
                "ok",
            ),
            // FHIRPath Patch is not applied here: whether it relabels cannot be seen.
            (
                "patch",
                obs(&[], "p1"),
                Some((
                    br#"{"resourceType": "Parameters"}"#,
                    "application/fhir+json",
                )),
                &plain,
                "write-not-checkable",
            ),
        ];
        for (interaction, current, write, c, expect) in rows {
            let got = decide(&p, interaction, current.clone(), write, c);
            assert_eq!(
                reason(&got),
                expect,
                "{interaction} on {current} with {:?}",
                write.map(|(b, _)| String::from_utf8_lossy(b))
            );
        }
    }

    #[test]
    fn an_update_is_compared_with_what_it_replaces() {
        let p = policy(POLICY);
        let c = caller(Some("app"), None);
        let admin = caller(Some("records-admin"), None);
        let put = |v: &Value| serde_json::to_vec(v).unwrap();
        let same = put(&obs(&[], "p1"));
        let moved = put(&obs(&[], "p2"));
        let labelled = put(&obs(&["R"], "p1"));
        let by_identifier = put(
            &json!({"resourceType": "Observation", "id": "o1", "subject": {"identifier": {"value": "1"}}}),
        );
        let ct = "application/fhir+json";
        assert_eq!(
            reason(&decide(&p, "update", obs(&[], "p1"), Some((&same, ct)), &c)),
            "ok"
        );
        for body in [&moved, &labelled, &by_identifier] {
            assert_eq!(
                reason(&decide(&p, "update", obs(&[], "p1"), Some((body, ct)), &c)),
                "relabel-not-permitted",
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(
                reason(&decide(
                    &p,
                    "update",
                    obs(&[], "p1"),
                    Some((body, ct)),
                    &admin
                )),
                "ok"
            );
        }
        assert_eq!(
            reason(&decide(
                &p,
                "update",
                obs(&[], "p1"),
                Some((b"<Observation/>", "application/fhir+xml")),
                &c
            )),
            "write-not-checkable"
        );
    }

    #[test]
    fn the_write_is_pinned_to_the_version_that_was_checked() {
        let p = policy(POLICY);
        let got = decide(&p, "delete", obs(&[], "p1"), None, &caller(None, None));
        assert_eq!(got, Ok(Some("3".to_string())));
        let got = decide(
            &p,
            "operation-instance",
            obs(&[], "p1"),
            None,
            &caller(None, None),
        );
        assert_eq!(
            got,
            Ok(None),
            "an operation reads the resource: no If-Match"
        );
    }

    #[test]
    fn a_patient_whose_consent_denies_the_caller_is_refused_before_the_write() {
        let p = policy(POLICY);
        let a = acting("delete", None);
        let current = obs(&[], "p1");
        assert_eq!(p.patients_of_current(&current), vec!["p1".to_string()]);
        let deny = vec![json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "patient": {"reference": "Patient/p1"}, "provision": {"type": "deny"}})];
        let got = p.decide_current(
            &a,
            200,
            Some(current.clone()),
            None,
            &caller(None, None),
            &|_| Consents::Known(&deny),
        );
        assert_eq!(reason(&got), "consent-withheld");
        let got = p.decide_current(&a, 200, Some(current), None, &caller(None, None), &|_| {
            Consents::Unavailable
        });
        assert_eq!(
            reason(&got),
            "consent-withheld",
            "unknown Consents withhold"
        );
    }

    #[test]
    fn a_missing_resource_goes_on_and_a_failed_fetch_is_refused() {
        let p = policy(POLICY);
        let c = caller(None, None);
        for status in [404, 410] {
            assert_eq!(
                p.decide_current(
                    &acting("update", None),
                    status,
                    None,
                    None,
                    &c,
                    &no_consents
                ),
                Ok(None)
            );
        }
        for status in [0, 500, 200] {
            assert_eq!(
                reason(&p.decide_current(
                    &acting("delete", None),
                    status,
                    None,
                    None,
                    &c,
                    &no_consents
                )),
                "current-resource-unavailable",
                "{status}"
            );
        }
        let other =
            serde_json::to_vec(&json!({"resourceType": "Observation", "id": "o2"})).unwrap();
        assert_eq!(
            p.read_current(&acting("delete", None), 200, &other),
            None,
            "not the resource asked for"
        );
    }
}

mod bundles {
    use super::*;

    fn bundle(entries: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "batch", "entry": entries}))
            .unwrap()
    }

    #[test]
    fn each_entry_is_decided_like_the_request_it_stands_for() {
        let p = policy(POLICY);
        let c = caller(Some("app"), None);
        let get = |url: &str| json!({"request": {"method": "GET", "url": url}});
        let rows: Vec<(Value, &str)> = vec![
            (
                json!([get("Observation?patient=p1"), get("Patient/p1")]),
                "ok",
            ),
            (
                json!([{"request": {"method": "POST", "url": "Observation"}, "resource": obs(&[], "p1")}]),
                "ok",
            ),
            (
                json!([get("Observation?patient=p1&_summary=count")]),
                "count-not-permitted",
            ),
            (json!([get("Observation?_count=0")]), "count-not-permitted"),
            (
                json!([get("Observation?_security=R")]),
                "label-search-not-permitted",
            ),
            (
                json!([get("Observation/o1/_history/1")]),
                "version-withheld",
            ),
            (json!([get("Observation/o1/_history")]), "version-withheld"),
            (json!([get("_history")]), "version-withheld"),
            (
                json!([{"request": {"method": "PUT", "url": "Observation/o1"}, "resource": obs(&[], "p1")}]),
                "bundle-entry-not-checkable",
            ),
            (
                json!([{"request": {"method": "DELETE", "url": "Observation/o1"}}]),
                "bundle-entry-not-checkable",
            ),
            (
                json!([{"request": {"method": "PATCH", "url": "Observation/o1"}}]),
                "bundle-entry-not-checkable",
            ),
            (
                json!([{"request": {"method": "DELETE", "url": "Observation?identifier=x"}}]),
                "conditional-write-not-checkable",
            ),
            (
                json!([{"request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=x"}, "resource": obs(&[], "p1")}]),
                "bundle-entry-not-checkable",
            ),
            (
                json!([get("Observation/o1/$meta")]),
                "bundle-entry-not-checkable",
            ),
            (
                json!([{"request": {"method": "POST", "url": "Observation/o1/$meta-delete"}}]),
                "relabel-not-permitted",
            ),
            (
                json!([{"request": {"method": "GET"}}]),
                "bundle-entry-not-checkable",
            ),
            (json!({"request": {}}), "bundle-entry-not-checkable"),
        ];
        for (entries, expect) in rows {
            let got = p.check_bundle(&bundle(entries.clone()), &c);
            assert_eq!(
                got.as_ref().err().map_or("ok", |r| r.reason),
                expect,
                "{entries}"
            );
        }
        assert!(p.check_bundle(b"not json", &c).is_err());
        assert!(
            p.check_bundle(
                &bundle(json!([get("Observation?_security=R")])),
                &caller(None, Some("TREAT"))
            )
            .is_ok(),
            "a treating caller may search R"
        );
    }
}
