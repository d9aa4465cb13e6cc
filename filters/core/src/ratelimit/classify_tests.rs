//! Classification over the routing filter's whole interaction table, keys, weights, tiers.

use super::*;
use crate::routing::{RequestHead, RoutingPolicy};
use std::collections::HashSet;

fn routed(method: &str, path: &str, body: Option<&str>) -> RoutedRequest {
    let routing = RoutingPolicy::from_json(br#"{"cdsHooksPath": "/cds-services", "passthrough": [{"prefix": "/fhir/r4/bulk-status/", "pool": "bulk"}]}"#).unwrap();
    let head = RequestHead {
        method,
        path,
        content_type: body.map(|_| "application/fhir+json"),
        has_body: body.is_some(),
        ..RequestHead::default()
    };
    let mut r = routing
        .route(&head)
        .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
    if let Some(b) = body {
        routing.route_body(&mut r, b.as_bytes()).unwrap();
    }
    r
}

const PATIENT: &str = r#"{"resourceType":"Patient","id":"1"}"#;

/// (method, path, body, class)
const TABLE: &[(&str, &str, Option<&str>, &str)] = &[
    ("GET", "/fhir/r4/metadata", None, "metadata"),
    (
        "GET",
        "/fhir/r4/.well-known/smart-configuration",
        None,
        "metadata",
    ),
    ("GET", "/fhir/r4/Patient/1", None, "read"),
    ("GET", "/fhir/r4/Patient/1/_history/2", None, "read"),
    ("GET", "/fhir/r4/Patient/1/_history", None, "read"),
    ("GET", "/fhir/r4/bulk-status/job-1", None, "read"),
    ("GET", "/fhir/r4/Patient", None, "search"),
    ("GET", "/fhir/r4", None, "search"),
    ("GET", "/fhir/r4/Patient/1/Observation", None, "search"),
    ("GET", "/fhir/r4/Patient/_history", None, "search"),
    ("GET", "/fhir/r4/_history", None, "search"),
    ("POST", "/fhir/r4/Patient", Some(PATIENT), "write"),
    ("PUT", "/fhir/r4/Patient/1", Some(PATIENT), "write"),
    (
        "PUT",
        "/fhir/r4/Patient?identifier=x",
        Some(PATIENT),
        "write",
    ),
    (
        "PATCH",
        "/fhir/r4/Patient/1",
        Some(r#"{"resourceType":"Parameters"}"#),
        "write",
    ),
    (
        "PATCH",
        "/fhir/r4/Patient?identifier=x",
        Some(r#"{"resourceType":"Parameters"}"#),
        "write",
    ),
    (
        "POST",
        "/fhir/r4",
        Some(r#"{"resourceType":"Bundle","type":"batch"}"#),
        "write",
    ),
    (
        "POST",
        "/fhir/r4",
        Some(r#"{"resourceType":"Bundle","type":"transaction"}"#),
        "write",
    ),
    ("DELETE", "/fhir/r4/Patient/1", None, "delete"),
    ("DELETE", "/fhir/r4/Patient?identifier=x", None, "delete"),
    ("GET", "/fhir/r4/$export", None, "bulk"),
    ("GET", "/fhir/r4/Patient/$export", None, "bulk"),
    ("GET", "/fhir/r4/Group/g/$export", None, "bulk"),
    (
        "POST",
        "/fhir/r4/Patient/$validate",
        Some(PATIENT),
        "validate",
    ),
    ("GET", "/fhir/r4/Patient/1/$everything", None, "operation"),
    ("POST", "/fhir/r4/$convert", None, "operation"),
    ("GET", "/cds-services", None, "cds-hooks"),
    ("POST", "/cds-services/x", Some("{}"), "cds-hooks"),
    ("POST", "/cds-services/x/feedback", Some("{}"), "cds-hooks"),
];

#[test]
fn classifies_every_interaction_of_the_routing_table() {
    let mut seen = HashSet::new();
    for (method, path, body, class) in TABLE {
        let r = routed(method, path, *body);
        seen.insert(r.interaction);
        assert_eq!(class_of(&r).name(), *class, "{method} {path}");
    }
    let missing: Vec<_> = Interaction::ALL
        .iter()
        .filter(|i| !seen.contains(i) && **i != Interaction::ConditionalCreate)
        .collect();
    assert!(
        missing.is_empty(),
        "interactions without a case: {missing:?}"
    );
}

#[test]
fn conditional_create_is_a_write() {
    let routing = RoutingPolicy::from_json(b"").unwrap();
    let head = RequestHead {
        method: "POST",
        path: "/fhir/r4/Patient",
        content_type: Some("application/fhir+json"),
        has_body: true,
        if_none_exist: true,
        ..RequestHead::default()
    };
    let r = routing.route(&head).unwrap();
    assert_eq!(
        (r.interaction, class_of(&r)),
        (Interaction::ConditionalCreate, Class::Write)
    );
}

#[test]
fn keys_are_per_tenant_and_user_or_client_never_raw_ids() {
    let user = Caller {
        tenant: Some("hosp-a"),
        subject: Some("dr-smith"),
        client_id: Some("app-1"),
        ..Caller::default()
    };
    let backend = Caller {
        tenant: Some("hosp-a"),
        client_id: Some("etl"),
        backend: true,
        subject: Some("svc"),
        ..Caller::default()
    };
    let anonymous = Caller {
        peer: Some("10.1.2.3"),
        ..Caller::default()
    };
    let k = key_of(Class::Read, &user);
    assert!(
        k.starts_with("tenant=hosp-a;user=") && !k.contains("dr-smith"),
        "{k}"
    );
    assert_ne!(
        k,
        key_of(
            Class::Read,
            &Caller {
                subject: Some("dr-jones"),
                ..user.clone()
            }
        ),
        "another user, another budget"
    );
    assert_eq!(
        k,
        key_of(Class::Write, &user),
        "one key per user; the class picks the tier"
    );
    let b = key_of(Class::Read, &backend);
    assert!(
        b.starts_with("tenant=hosp-a;client=") && !b.contains("etl"),
        "{b}"
    );
    assert_eq!(
        key_of(Class::Bulk, &user),
        "tenant=hosp-a",
        "bulk is per tenant"
    );
    assert_eq!(key_of(Class::Bulk, &backend), "tenant=hosp-a");
    assert_eq!(
        key_of(Class::Read, &anonymous),
        "peer=10.1.2.3",
        "the peer address only without a token"
    );
    assert_eq!(
        key_of(
            Class::Read,
            &Caller {
                subject: Some("u"),
                ..Caller::default()
            }
        ),
        key_of(
            Class::Read,
            &Caller {
                subject: Some("u"),
                tenant: Some("default"),
                ..Caller::default()
            }
        )
    );
}

#[test]
fn expensive_searches_weigh_more() {
    let w = Weights::default();
    let cases = [
        ("GET", "/fhir/r4/Patient/1", None, 1),
        ("GET", "/fhir/r4/Observation?code=x", None, 1),
        ("GET", "/fhir/r4/Observation?_include=Observation:patient", None, 2),
        ("GET", "/fhir/r4/Observation?_include=Observation:patient&_revinclude=Provenance:target&_include:iterate=Patient:link", None, 4),
        ("GET", "/fhir/r4/Observation?_count=100", None, 1),
        ("GET", "/fhir/r4/Observation?_count=101", None, 3),
        ("GET", "/fhir/r4/Patient/1/$everything", None, 11),
        ("POST", "/fhir/r4", Some(r#"{"resourceType":"Bundle","type":"transaction"}"#), 6),
    ];
    for (method, path, body, weight) in cases {
        assert_eq!(weight_of(&routed(method, path, body), &w), weight, "{path}");
    }
}

#[test]
fn tiers_come_from_client_then_tenant_then_defaults() {
    let p = RateLimitPolicy::from_json(
        br#"{"tenants": {"hosp-a": {"read": {"limit": 100, "windowSeconds": 60}}},
             "clients": {"app-1": {"read": {"limit": 5, "windowSeconds": 1}}}}"#,
    )
    .unwrap();
    let t = |tenant, client| {
        p.tier(
            Class::Read,
            &Caller {
                tenant,
                client_id: client,
                ..Caller::default()
            },
        )
    };
    assert_eq!(
        t(None, None),
        Some(Tier {
            limit: 600,
            window_seconds: 60
        })
    );
    assert_eq!(
        t(Some("hosp-a"), None),
        Some(Tier {
            limit: 100,
            window_seconds: 60
        })
    );
    assert_eq!(
        t(Some("hosp-a"), Some("app-1")),
        Some(Tier {
            limit: 5,
            window_seconds: 1
        })
    );
    assert_eq!(
        p.tier(
            Class::Write,
            &Caller {
                tenant: Some("hosp-a"),
                ..Caller::default()
            }
        ),
        Some(Tier {
            limit: 60,
            window_seconds: 60
        })
    );
    assert_eq!(
        p.tier(Class::Bulk, &Caller::default()),
        Some(Tier {
            limit: 2,
            window_seconds: 3600
        })
    );
    assert_eq!(
        p.tier(Class::Metadata, &Caller::default()),
        None,
        "metadata is not limited by default"
    );
}

#[test]
fn the_429_carries_every_header_and_a_throttled_outcome() {
    let p = RateLimitPolicy::from_json(br#"{"ietfHeaders": true}"#).unwrap();
    let r = p.throttled(
        Class::Write,
        Tier {
            limit: 60,
            window_seconds: 60,
        },
        17,
    );
    assert_eq!((r.status, r.reason), (429, "rate-limited"));
    let h: BTreeMap<_, _> = r.headers.iter().cloned().collect();
    assert_eq!(h["retry-after"], "17");
    assert_eq!(
        (
            h["x-ratelimit-limit"].as_str(),
            h["x-ratelimit-remaining"].as_str(),
            h["x-ratelimit-reset"].as_str()
        ),
        ("60", "0", "17")
    );
    assert_eq!(h["ratelimit"], "limit=60, remaining=0, reset=17");
    assert_eq!(h["ratelimit-policy"], "60;w=60");
    let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
    assert_eq!(v["issue"][0]["code"], "throttled");
    let plain = RateLimitPolicy::from_json(b"").unwrap().throttled(
        Class::Bulk,
        Tier {
            limit: 2,
            window_seconds: 3600,
        },
        0,
    );
    assert!(plain
        .headers
        .iter()
        .all(|(k, _)| !k.starts_with("ratelimit")));
    assert!(
        plain.headers.contains(&("retry-after", "1".to_string())),
        "never Retry-After: 0"
    );
}

#[test]
fn refuses_bad_config_naming_the_field() {
    for (json, field) in [
        (
            r#"{"tiers": {"reed": {"limit": 1, "windowSeconds": 1}}}"#,
            "tiers.reed",
        ),
        (
            r#"{"tiers": {"read": {"limit": 0, "windowSeconds": 1}}}"#,
            "tiers.read",
        ),
        (
            r#"{"tenants": {"a": {"write": {"limit": 1, "windowSeconds": 0}}}}"#,
            "tenants.a.write",
        ),
        (
            r#"{"clients": {"c": {"bulk": {"limit": 1, "windowSeconds": 999999}}}}"#,
            "clients.c.bulk",
        ),
        (r#"{"weights": {"perinclude": 2}}"#, "weights.perinclude"),
        (r#"{"tiers": {"read": {"limit": 1}}}"#, "tiers.read"),
    ] {
        let e = RateLimitPolicy::from_json(json.as_bytes()).unwrap_err();
        assert!(e.field.starts_with(field), "{json}: {e}");
    }
}
