//! Consent evaluation, one provision feature at a time.

use super::*;
use serde_json::json;

const NOW: &str = "2026-11-24T12:00:00Z";

fn consent(provision: Value) -> Value {
    json!({"resourceType": "Consent", "status": "active",
           "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
           "patient": {"reference": "Patient/p1"}, "provision": provision})
}

fn observation() -> Value {
    json!({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
           "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]}})
}

fn access<'a>(subject: &'a str, purpose: Option<&'a str>) -> Access<'a> {
    Access {
        subject: Some(subject),
        client_id: Some("app-1"),
        purpose,
        now: NOW,
    }
}

fn verdict(provision: Value, who: &str, purpose: Option<&str>) -> Option<Verdict> {
    decide(&consent(provision), &observation(), &access(who, purpose))
}

use Verdict::{Deny, Permit};

#[test]
fn the_root_type_applies_to_everything_it_does_not_restrict() {
    assert_eq!(verdict(json!({"type": "deny"}), "dr-a", None), Some(Deny));
    assert_eq!(
        verdict(json!({"type": "permit"}), "dr-a", None),
        Some(Permit)
    );
}

#[test]
fn each_criterion_restricts_where_a_provision_applies() {
    let cases = [
        // (provision, subject, purpose, verdict)
        (
            json!({"type": "deny", "period": {"start": "2027-01-01"}}),
            "dr-a",
            None,
            None,
        ),
        (
            json!({"type": "deny", "period": {"end": "2026-11-24"}}),
            "dr-a",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "period": {"end": "2026-11-23"}}),
            "dr-a",
            None,
            None,
        ),
        (
            json!({"type": "deny", "period": {"start": "2026-01-01T00:00:00Z", "end": "2026-12-31T00:00:00Z"}}),
            "dr-a",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "actor": [{"reference": {"reference": "Practitioner/dr-a"}}]}),
            "dr-a",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "actor": [{"reference": {"reference": "Practitioner/dr-a"}}]}),
            "dr-b",
            None,
            None,
        ),
        (
            json!({"type": "deny", "actor": [{"reference": {"reference": "Device/app-1"}}]}),
            "dr-b",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "action": [{"coding": [{"code": "access"}]}]}),
            "dr-a",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "action": [{"coding": [{"code": "collect"}]}]}),
            "dr-a",
            None,
            None,
        ),
        (
            json!({"type": "deny", "purpose": [{"code": "HMARKT"}]}),
            "dr-a",
            Some("TREAT"),
            None,
        ),
        (
            json!({"type": "deny", "purpose": [{"code": "HMARKT"}]}),
            "dr-a",
            Some("HMARKT"),
            Some(Deny),
        ),
        (
            json!({"type": "deny", "class": [{"code": "Observation"}]}),
            "dr-a",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "class": [{"code": "Condition"}]}),
            "dr-a",
            None,
            None,
        ),
        (
            json!({"type": "deny", "code": [{"coding": [{"system": "http://loinc.org", "code": "1234-5"}]}]}),
            "dr-a",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "code": [{"coding": [{"system": "http://loinc.org", "code": "9999-9"}]}]}),
            "dr-a",
            None,
            None,
        ),
        (
            json!({"type": "deny", "securityLabel": [{"code": "HIV"}]}),
            "dr-a",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "securityLabel": [{"code": "STD"}]}),
            "dr-a",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "securityLabel": [{"code": "PSY"}]}),
            "dr-a",
            None,
            None,
        ),
        (
            json!({"type": "deny", "data": [{"meaning": "instance", "reference": {"reference": "Observation/o1"}}]}),
            "dr-a",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "data": [{"meaning": "instance", "reference": {"reference": "https://fhir.example/Observation/o1/_history/2"}}]}),
            "dr-a",
            None,
            Some(Deny),
        ),
        (
            json!({"type": "deny", "data": [{"meaning": "instance", "reference": {"reference": "Observation/o2"}}]}),
            "dr-a",
            None,
            None,
        ),
        // Every criterion given must match.
        (
            json!({"type": "deny", "class": [{"code": "Observation"}], "purpose": [{"code": "HMARKT"}]}),
            "dr-a",
            Some("TREAT"),
            None,
        ),
    ];
    for (provision, who, purpose, expected) in cases {
        assert_eq!(
            verdict(provision.clone(), who, purpose),
            expected,
            "{provision} for {who} {purpose:?}"
        );
    }
}

#[test]
fn what_cannot_be_evaluated_applies_to_denials_and_not_to_permits() {
    let role_only = json!([{"role": {"coding": [{"code": "PRCP"}]}}]);
    assert_eq!(
        verdict(json!({"type": "deny", "actor": role_only}), "dr-a", None),
        Some(Deny)
    );
    assert_eq!(
        verdict(json!({"type": "permit", "actor": role_only}), "dr-a", None),
        None
    );
    assert_eq!(
        verdict(
            json!({"type": "deny", "purpose": [{"code": "HMARKT"}]}),
            "dr-a",
            None
        ),
        Some(Deny),
        "no purpose known"
    );
    assert_eq!(
        verdict(
            json!({"type": "permit", "purpose": [{"code": "TREAT"}]}),
            "dr-a",
            None
        ),
        None
    );
    assert_eq!(
        verdict(
            json!({"type": "deny", "dataPeriod": {"start": "2020-01-01"}}),
            "dr-a",
            None
        ),
        Some(Deny)
    );
    assert_eq!(
        verdict(
            json!({"type": "permit", "data": [{"meaning": "related", "reference": {"reference": "Observation/o1"}}]}),
            "dr-a",
            None
        ),
        None
    );
}

#[test]
fn nested_provisions_are_exceptions_and_deny_wins_among_them() {
    // Deny everything except to Dr A for treatment.
    let except_dr_a = json!({"type": "deny", "provision": [
        {"type": "permit", "actor": [{"reference": {"reference": "Practitioner/dr-a"}}], "purpose": [{"code": "TREAT"}]}]});
    assert_eq!(
        verdict(except_dr_a.clone(), "dr-a", Some("TREAT")),
        Some(Permit)
    );
    assert_eq!(
        verdict(except_dr_a.clone(), "dr-a", Some("HPAYMT")),
        Some(Deny)
    );
    assert_eq!(verdict(except_dr_a, "dr-b", Some("TREAT")), Some(Deny));
    // Permit everything except HIV-labelled data, and except that exception for Dr A.
    let layered = json!({"type": "permit", "provision": [
        {"type": "deny", "securityLabel": [{"code": "HIV"}], "provision": [
            {"type": "permit", "actor": [{"reference": {"reference": "Practitioner/dr-a"}}]}]}]});
    assert_eq!(verdict(layered.clone(), "dr-b", None), Some(Deny));
    assert_eq!(verdict(layered, "dr-a", None), Some(Permit));
    // Two matching siblings disagree: deny wins.
    let siblings = json!({"type": "deny", "provision": [
        {"type": "permit", "class": [{"code": "Observation"}]},
        {"type": "deny", "securityLabel": [{"code": "HIV"}]}]});
    assert_eq!(verdict(siblings, "dr-a", None), Some(Deny));
    // A nested provision without a type is the opposite of its parent.
    let untyped = json!({"type": "deny", "provision": [{"class": [{"code": "Observation"}]}]});
    assert_eq!(verdict(untyped, "dr-a", None), Some(Permit));
}

#[test]
fn only_active_privacy_consents_count() {
    let mut inactive = consent(json!({"type": "deny"}));
    inactive["status"] = json!("inactive");
    let mut research = consent(json!({"type": "deny"}));
    research["scope"] = json!({"coding": [{"code": "research"}]});
    for c in [inactive, research, json!({"resourceType": "Patient"})] {
        assert_eq!(
            decide(&c, &observation(), &access("dr-a", None)),
            None,
            "{c}"
        );
    }
}

#[test]
fn without_a_provision_the_policy_rule_decides() {
    let mut c = consent(Value::Null);
    c.as_object_mut().unwrap().remove("provision");
    for (rule, expected) in [
        ("OPTOUT", Some(Deny)),
        ("OPTIN", Some(Permit)),
        ("OTHER", None),
    ] {
        c["policyRule"] = json!({"coding": [{"code": rule}]});
        assert_eq!(
            decide(&c, &observation(), &access("dr-a", None)),
            expected,
            "{rule}"
        );
    }
}

#[test]
fn an_absurdly_deep_tree_is_a_denial_not_a_stack_overflow() {
    let mut p = json!({"type": "permit"});
    for _ in 0..40 {
        p = json!({"type": "permit", "provision": [p]});
    }
    assert_eq!(verdict(p, "dr-a", None), Some(Deny));
}
