//! Audit records, AuditEvents and the chain.

use super::chain::{verify, BreakKind, Chain};
use super::fhir::{action, audit_event, batch};
use super::*;
use std::collections::HashMap;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn facts() -> Facts<'static> {
    Facts {
        request_id: Some("req-1"),
        started_ms: 1_795_521_600_123,
        duration_ms: 12,
        method: Some("GET"),
        interaction: Some("read"),
        resource_type: Some("Observation"),
        resource_id: Some("obs-1"),
        patient: Some("pat-1"),
        subject: Some("dr-a"),
        client_id: Some("app-1"),
        fhir_user: Some("https://ehr.example/fhir/Practitioner/dr-a"),
        tenant: Some("hosp-a"),
        scopes: Some("openid user/Observation.rs user/Patient.rs launch"),
        source_ip: Some("10.1.2.3"),
        user_agent: Some("Mozilla/5.0 (X11)"),
        status: 200,
        ..Facts::default()
    }
}

mod records {
    use super::*;

    #[test]
    fn a_record_carries_the_architectures_fields() {
        let r = record(&facts(), "/fhir/r4", None);
        assert_eq!(r.event_type, "fhir.api.access");
        assert_eq!(r.timestamp_utc, "2026-11-24T12:00:00.123Z");
        assert_eq!(
            (r.principal_id.as_deref(), r.principal_role.as_str()),
            (Some("dr-a"), "Practitioner")
        );
        assert_eq!(
            r.smart_scopes_used,
            vec!["user/Observation.rs"],
            "only the scopes that speak for the resource"
        );
        assert_eq!(r.gateway_route, "/fhir/r4/Observation/{id}");
        assert_eq!(r.user_agent_hash.as_deref().map(str::len), Some(64));
        assert_eq!(
            (r.http_status, r.fhir_outcome.as_str(), r.decision.as_str()),
            (200, "success", "allow")
        );
        assert_eq!((r.break_glass, r.severity.as_str()), (false, "normal"));
    }

    #[test]
    fn routes_are_templates_never_values() {
        let cases = [
            ("read", Some("Patient"), None, None, "/fhir/r4/Patient/{id}"),
            (
                "vread",
                Some("Patient"),
                None,
                None,
                "/fhir/r4/Patient/{id}/_history/{vid}",
            ),
            (
                "search-type",
                Some("Observation"),
                None,
                None,
                "/fhir/r4/Observation",
            ),
            (
                "search-compartment",
                Some("Observation"),
                None,
                Some("Patient/p1"),
                "/fhir/r4/Patient/{id}/Observation",
            ),
            (
                "operation-instance",
                Some("Patient"),
                Some("$everything"),
                None,
                "/fhir/r4/Patient/{id}/$everything",
            ),
            (
                "operation-system",
                None,
                Some("$export"),
                None,
                "/fhir/r4/$export",
            ),
            ("transaction", None, None, None, "/fhir/r4"),
            ("cds-service", None, None, None, "/cds-services/{service}"),
        ];
        for (interaction, t, op, compartment, route) in cases {
            let f = Facts {
                interaction: Some(interaction),
                resource_type: t,
                operation: op,
                compartment,
                ..Facts::default()
            };
            assert_eq!(route_template("/fhir/r4", &f), route, "{interaction}");
        }
        assert_eq!(route_template("/fhir/r4", &Facts::default()), "{unrouted}");
    }

    #[test]
    fn refusals_break_glass_and_roles() {
        let denied = record(
            &Facts {
                status: 403,
                reason: Some("insufficient-scope"),
                ..facts()
            },
            "/fhir/r4",
            None,
        );
        assert_eq!(
            (denied.decision.as_str(), denied.fhir_outcome.as_str()),
            ("deny", "insufficient-scope")
        );
        let upstream_error = record(
            &Facts {
                status: 502,
                ..facts()
            },
            "/fhir/r4",
            None,
        );
        assert_eq!(
            (
                upstream_error.decision.as_str(),
                upstream_error.fhir_outcome.as_str()
            ),
            ("deny", "exception")
        );
        let emergency = record(
            &Facts {
                break_glass: Some("ETREAT"),
                purpose: Some("ETREAT"),
                ..facts()
            },
            "/fhir/r4",
            None,
        );
        assert_eq!(
            (emergency.break_glass, emergency.severity.as_str()),
            (true, "elevated")
        );
        // An emergency purpose of use (from the token) is emergency access too.
        for purpose in ["ETREAT", "BTG", "ERTREAT"] {
            let r = record(
                &Facts {
                    purpose: Some(purpose),
                    ..facts()
                },
                "/fhir/r4",
                None,
            );
            assert_eq!(
                (r.break_glass, r.severity.as_str()),
                (false, "elevated"),
                "{purpose}"
            );
        }
        let treat = record(
            &Facts {
                purpose: Some("TREAT"),
                ..facts()
            },
            "/fhir/r4",
            None,
        );
        assert_eq!(treat.severity, "normal");
        let backend = record(
            &Facts {
                subject: Some("etl"),
                client_id: Some("etl"),
                fhir_user: None,
                ..facts()
            },
            "/fhir/r4",
            None,
        );
        assert_eq!(backend.principal_role, "system");
        assert_eq!(
            record(&Facts::default(), "/fhir/r4", None).principal_role,
            "anonymous"
        );
    }

    /// Found by the PHI canary test: the purpose header is client free text and went into the
    /// record as sent.
    #[test]
    fn only_a_purpose_of_use_code_is_recorded() {
        let cases = [
            ("TREAT", "TREAT"),
            (" HPAYMT ", "HPAYMT"),
            ("ETREAT", "ETREAT"),
            ("treat", "unrecognized"),
            ("John Smith MRN 123", "unrecognized"),
            ("", "unrecognized"),
        ];
        for (asserted, recorded) in cases {
            let r = record(
                &Facts {
                    purpose: Some(asserted),
                    ..facts()
                },
                "/fhir/r4",
                None,
            );
            assert_eq!(r.purpose_of_use.as_deref(), Some(recorded), "{asserted:?}");
            let event = fhir::audit_event(&r);
            assert!(!event.to_string().contains("Smith"), "{event}");
        }
        assert_eq!(record(&facts(), "/fhir/r4", None).purpose_of_use, None);
    }

    #[test]
    fn an_upstream_operation_outcome_names_the_outcome() {
        assert_eq!(outcome_code(br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing"}]}"#).as_deref(), Some("processing"));
        let with_details = br#"{"resourceType":"OperationOutcome","issue":[{"code":"invalid","details":{"coding":[{"code":"MSG_PARAM_INVALID"}]}}]}"#;
        assert_eq!(
            outcome_code(with_details).as_deref(),
            Some("MSG_PARAM_INVALID")
        );
        assert_eq!(outcome_code(br#"{"resourceType":"OperationOutcome","issue":[{"code":"Patient John Smith not found"}]}"#), None, "free text is not a code");
        assert_eq!(outcome_code(br#"{"resourceType":"Patient"}"#), None);
        let r = record(
            &Facts {
                status: 422,
                upstream_outcome: Some("processing"),
                ..facts()
            },
            "/fhir/r4",
            None,
        );
        assert_eq!(r.fhir_outcome, "processing");
    }

    #[test]
    fn only_small_uncompressed_json_errors_are_read() {
        assert!(reads_error_body(
            422,
            Some("application/fhir+json"),
            Some("200"),
            None
        ));
        assert!(
            !reads_error_body(200, Some("application/fhir+json"), Some("200"), None),
            "successes are not read"
        );
        assert!(!reads_error_body(500, Some("text/html"), Some("200"), None));
        assert!(
            !reads_error_body(500, Some("application/json"), None, None),
            "no length: not buffered"
        );
        assert!(!reads_error_body(
            500,
            Some("application/json"),
            Some("70000"),
            None
        ));
        assert!(!reads_error_body(
            500,
            Some("application/json"),
            Some("200"),
            Some("gzip")
        ));
    }

    #[test]
    fn ids_can_be_keyed_hashes() {
        let h = IdHasher::new(KEY.to_vec());
        let r = record(&facts(), "/fhir/r4", Some(&h));
        let id = r.fhir_resource_id.unwrap();
        assert_eq!(id.len(), 32);
        assert_ne!(id, "obs-1");
        assert_eq!(
            Some(id),
            record(&facts(), "/fhir/r4", Some(&h)).fhir_resource_id,
            "stable, so records join"
        );
        assert_ne!(r.patient_id.as_deref(), Some("pat-1"));
    }

    #[test]
    fn no_request_value_outside_the_listed_fields_reaches_a_record() {
        // Facts never carry paths, queries or bodies; the user agent is hashed.
        let line = serde_json::to_string(&record(&facts(), "/fhir/r4", None)).unwrap();
        assert!(!line.contains("Mozilla"));
        assert!(
            !line.contains("openid") && !line.contains("launch"),
            "unrelated scopes are not listed"
        );
    }
}

mod audit_events {
    use super::*;

    #[test]
    fn the_audit_event_says_what_the_record_says() {
        let r = Chain::new("s1", "k1", KEY.to_vec()).seal(record(
            &Facts {
                purpose: Some("TREAT"),
                ..facts()
            },
            "/fhir/r4",
            None,
        ));
        let e = audit_event(&r);
        assert_eq!(e["resourceType"], "AuditEvent");
        assert_eq!(e["type"]["code"], "rest");
        assert_eq!(e["subtype"][0]["code"], "read");
        assert_eq!(e["action"], "R");
        assert_eq!(e["recorded"], r.timestamp_utc);
        assert_eq!(e["outcome"], "0");
        assert_eq!(e["agent"][0]["who"]["identifier"]["value"], "dr-a");
        assert_eq!(e["agent"][0]["network"]["address"], "10.1.2.3");
        assert_eq!(e["agent"][1]["who"]["identifier"]["value"], "app-1");
        assert_eq!(e["entity"][0]["what"]["reference"], "Observation/obs-1");
        assert_eq!(e["entity"][1]["what"]["reference"], "Patient/pat-1");
        assert_eq!(e["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        assert_eq!(e["extension"][0]["valueString"], r.gateway_route);
        assert!(e["extension"][3]["valueString"]
            .as_str()
            .unwrap()
            .ends_with(&r.mac));
    }

    #[test]
    fn actions_and_outcomes_follow_balp() {
        for (interaction, a) in [
            ("create", "C"),
            ("read", "R"),
            ("vread", "R"),
            ("update", "U"),
            ("patch", "U"),
            ("delete", "D"),
            ("search-type", "E"),
            ("operation-instance", "E"),
        ] {
            assert_eq!(action(Some(interaction)), a, "{interaction}");
        }
        let refused = audit_event(&record(
            &Facts {
                status: 403,
                reason: Some("insufficient-scope"),
                ..facts()
            },
            "/fhir/r4",
            None,
        ));
        assert_eq!(
            (refused["outcome"].as_str(), refused["outcomeDesc"].as_str()),
            (Some("4"), Some("insufficient-scope"))
        );
        let failed = audit_event(&record(
            &Facts {
                status: 503,
                ..facts()
            },
            "/fhir/r4",
            None,
        ));
        assert_eq!(failed["outcome"], "8");
        let anonymous = audit_event(&record(
            &Facts {
                status: 401,
                ..Facts::default()
            },
            "/fhir/r4",
            None,
        ));
        assert!(
            anonymous.get("entity").is_none() && anonymous["agent"].as_array().unwrap().len() == 1
        );
        assert!(
            anonymous["agent"][0].get("network").is_none(),
            "no null elements"
        );
    }

    #[test]
    fn a_batch_bundle_posts_each_event() {
        let rs = vec![
            record(&facts(), "/fhir/r4", None),
            record(&facts(), "/fhir/r4", None),
        ];
        let b = batch(&rs);
        assert_eq!(b["type"], "batch");
        assert_eq!(b["entry"].as_array().unwrap().len(), 2);
        assert_eq!(b["entry"][0]["request"]["url"], "AuditEvent");
        assert!(b["entry"][0]["resource"].get("id").is_none());
    }
}

mod chain_verification {
    use super::*;
    use base64::Engine;

    fn log(n: usize) -> Vec<String> {
        let mut a = Chain::new("w1", "k1", KEY.to_vec());
        let mut b = Chain::new("w2", "k1", KEY.to_vec());
        (0..n)
            .map(|i| {
                let chain = if i % 3 == 0 { &mut b } else { &mut a };
                serde_json::to_string(&chain.seal(record(
                    &Facts {
                        duration_ms: i as u64,
                        ..facts()
                    },
                    "/fhir/r4",
                    None,
                )))
                .unwrap()
            })
            .collect()
    }

    fn keys() -> HashMap<String, Vec<u8>> {
        HashMap::from([("k1".to_string(), KEY.to_vec())])
    }

    #[test]
    fn an_untouched_log_verifies() {
        assert_eq!(verify(&log(20).join("\n"), &keys()), Ok(20));
    }

    /// A record sealed the way fhirgate sealed them before BLAKE3: HMAC-SHA256 with the key
    /// over the previous MAC and the record with an empty `mac`.
    fn hmac_sealed(seq: u64, prev: &[u8]) -> (Record, Vec<u8>) {
        use hmac::{Hmac, Mac};
        let mut r = record(&facts(), "/fhir/r4", None);
        (r.stream, r.seq, r.kid) = ("old".into(), seq, "k1".into());
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(KEY).unwrap();
        m.update(prev);
        m.update(&serde_json::to_vec(&r).unwrap());
        let mac = m.finalize().into_bytes().to_vec();
        r.mac = base64::engine::general_purpose::STANDARD.encode(&mac);
        (r, mac)
    }

    #[test]
    fn records_are_sealed_with_keyed_blake3() {
        let r = Chain::new("w1", "k1", KEY.to_vec()).seal(record(&facts(), "/fhir/r4", None));
        let mac = r.mac.strip_prefix("b3:").expect("the algorithm is named");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(mac)
                .unwrap()
                .len(),
            32
        );
    }

    #[test]
    fn logs_sealed_with_hmac_sha256_before_still_verify_and_edits_still_show() {
        let (first, mac) = hmac_sealed(1, &[0; 32]);
        let (second, _) = hmac_sealed(2, &mac);
        let lines = [first, second].map(|r| serde_json::to_string(&r).unwrap());
        assert_eq!(verify(&lines.join("\n"), &keys()), Ok(2));
        let edited = lines[1].replace("\"http_status\":200", "\"http_status\":201");
        let e = verify(&[lines[0].clone(), edited].join("\n"), &keys()).unwrap_err();
        assert_eq!(
            (e.line, matches!(e.kind, BreakKind::Edited { .. })),
            (2, true)
        );
    }

    #[test]
    fn a_blake3_mac_relabelled_as_hmac_or_the_other_way_round_is_an_edit() {
        let r = Chain::new("w1", "k1", KEY.to_vec()).seal(record(&facts(), "/fhir/r4", None));
        let mut stripped = r.clone();
        stripped.mac = r.mac.trim_start_matches("b3:").to_string();
        let line = serde_json::to_string(&stripped).unwrap();
        assert!(matches!(
            verify(&line, &keys()).unwrap_err().kind,
            BreakKind::Edited { .. }
        ));
        let (old, _) = hmac_sealed(1, &[0; 32]);
        let mut relabelled = old.clone();
        relabelled.mac = format!("b3:{}", old.mac);
        let line = serde_json::to_string(&relabelled).unwrap();
        assert!(matches!(
            verify(&line, &keys()).unwrap_err().kind,
            BreakKind::Edited { .. }
        ));
    }

    /// The filter logs the line `seal_line` builds from its one serialisation: it must be the
    /// sealed record exactly, and verify like one.
    #[test]
    fn the_sealed_line_is_the_sealed_record_and_verifies() {
        let mut chain = Chain::new("w1", "k1", KEY.to_vec());
        let lines: Vec<String> = (0..5)
            .map(|i| {
                let (sealed, line) = chain.seal_line(record(
                    &Facts {
                        duration_ms: i,
                        user_agent: Some("a \"quoted\" agent"),
                        ..facts()
                    },
                    "/fhir/r4",
                    None,
                ));
                assert_eq!(line, serde_json::to_string(&sealed).unwrap());
                line
            })
            .collect();
        assert_eq!(verify(&lines.join("\n"), &keys()), Ok(5));
    }

    #[test]
    fn an_edit_a_deletion_a_swap_and_junk_are_named_by_line() {
        let lines = log(12);
        let mut edited = lines.clone();
        edited[4] = edited[4].replace("\"http_status\":200", "\"http_status\":404");
        let e = verify(&edited.join("\n"), &keys()).unwrap_err();
        assert_eq!(
            (e.line, matches!(e.kind, BreakKind::Edited { .. })),
            (5, true),
            "{e}"
        );

        let mut deleted = lines.clone();
        deleted.remove(4); // w1's record 3
        let e = verify(&deleted.join("\n"), &keys()).unwrap_err();
        assert!(
            matches!(
                e.kind,
                BreakKind::Gap {
                    expected: 3,
                    found: 4,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.line, 5);

        let mut swapped = lines.clone();
        swapped.swap(1, 2); // w1's records 1 and 2
        let e = verify(&swapped.join("\n"), &keys()).unwrap_err();
        assert!(
            matches!(
                e.kind,
                BreakKind::Reordered {
                    expected: 1,
                    found: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.line, 2);

        let mut junk = lines.clone();
        junk[7] = "not json".into();
        assert_eq!(verify(&junk.join("\n"), &keys()).unwrap_err().line, 8);

        let wrong_key = HashMap::from([(
            "k1".to_string(),
            b"another-key-another-key-another!!".to_vec(),
        )]);
        assert!(matches!(
            verify(&lines.join("\n"), &wrong_key).unwrap_err().kind,
            BreakKind::Edited { .. }
        ));
        assert!(matches!(
            verify(&lines.join("\n"), &HashMap::new()).unwrap_err().kind,
            BreakKind::UnknownKey(_)
        ));
    }

    /// Found by the `audit_chain` fuzz target: renaming a null field read back as the same
    /// record, so the line verified although its bytes had changed.
    #[test]
    fn a_key_added_dropped_or_renamed_is_an_edit() {
        let lines = log(3);
        assert!(lines[1].contains("\"reason\":null,"), "{}", lines[1]);
        let mut cases: Vec<(&str, String)> = vec![
            (
                "renamed null key",
                lines[1].replace("\"reason\":null", "\"reasoN\":null"),
            ),
            ("dropped null key", lines[1].replace("\"reason\":null,", "")),
            (
                "added key",
                lines[1].replacen('{', "{\"note\":\"unsigned\",", 1),
            ),
        ];
        cases.push((
            "spacing only (still the same fields)",
            lines[1].replace("\":", "\": "),
        ));
        for (what, edited) in cases {
            let mut log = lines.clone();
            log[1] = edited;
            let verdict = verify(&log.join("\n"), &keys());
            if what.starts_with("spacing") {
                assert_eq!(verdict, Ok(3), "{what}");
            } else {
                let e = verdict.unwrap_err();
                assert_eq!(
                    (e.line, matches!(e.kind, BreakKind::Edited { .. })),
                    (2, true),
                    "{what}: {e}"
                );
            }
        }
    }

    #[test]
    fn truncating_the_tail_is_not_detectable_but_dropping_the_head_is() {
        let lines = log(9);
        assert_eq!(
            verify(&lines[..5].join("\n"), &keys()),
            Ok(5),
            "a chain cannot know records that never came"
        );
        assert!(verify(&lines[3..].join("\n"), &keys()).is_err());
    }
}

mod config {
    use super::*;
    use base64::Engine;

    #[test]
    fn refuses_bad_config_naming_the_field() {
        let k = base64::engine::general_purpose::STANDARD.encode(KEY);
        let cases = [
            ("{}".to_string(), "chain"),
            (r#"{"chain": {"key": "c2hvcnQ="}}"#.to_string(), "chain.key"),
            (
                format!(r#"{{"chain": {{"key": "{k}"}}, "hashIds": {{"key": "!!"}}}}"#),
                "hashIds.key",
            ),
            (
                format!(r#"{{"chain": {{"key": "{k}"}}, "failClosed": {{}}}}"#),
                "failClosed",
            ),
            (
                format!(
                    r#"{{"chain": {{"key": "{k}"}}, "collector": {{"cluster": "c", "path": "x"}}}}"#
                ),
                "collector.path",
            ),
            (
                format!(
                    r#"{{"chain": {{"key": "{k}"}}, "collector": {{"cluster": "c", "path": "/x", "format": "xml"}}}}"#
                ),
                "collector.format",
            ),
            (
                format!(r#"{{"chain": {{"key": "{k}"}}, "basePath": "fhir/"}}"#),
                "basePath",
            ),
            // The purpose of use comes from the authorization filter, not a client header.
            (
                format!(r#"{{"chain": {{"key": "{k}"}}, "purposeHeader": "x-purpose-of-use"}}"#),
                "purposeHeader",
            ),
        ];
        for (json, field) in cases {
            let e = crate::audit::config::AuditConfig::from_json(json.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("accepted {json}"));
            assert!(
                e.field.starts_with(field) || e.to_string().contains(&format!("`{field}`")),
                "{json}: {e}"
            );
        }
    }
}

#[test]
fn the_user_agent_hash_is_its_sha256_in_hex() {
    // The user agent's hash, as `sha256sum` prints it.
    let r = record(
        &Facts {
            user_agent: Some("abc"),
            ..facts()
        },
        "/fhir/r4",
        None,
    );
    assert_eq!(
        r.user_agent_hash.as_deref(),
        Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
}
