//! The rate-limit filter's decisions, by scenario.

use super::*;
use crate::ratelimit::breakglass::{sign, BreakGlass};
use crate::ratelimit::bucket::MemoryStore;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW_MS: u64 = 1_800_000_000_000;

fn key_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(KEY)
}

fn policy(extra: &str) -> RateLimitFilterPolicy {
    let json = format!(
        r#"{{"tiers": {{"write": {{"limit": 3, "windowSeconds": 60}}, "search": {{"limit": 5, "windowSeconds": 60}}, "bulk": {{"limit": 2, "windowSeconds": 3600}}}},
            "breakGlass": {{"keys": {{"k1": "{}"}}}} {extra}}}"#,
        key_b64()
    );
    RateLimitFilterPolicy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn write_by(user: &'static str) -> RateLimitRequest<'static> {
    RateLimitRequest {
        interaction: Some("create"),
        path: "/fhir/r4/Patient",
        subject: Some(user),
        client_id: Some("app"),
        token_tenant: Some("hosp-a"),
        ..Default::default()
    }
}

fn admitted(v: &Verdict) -> &Admitted {
    match v {
        Verdict::Admit(a) => a,
        Verdict::Refuse { rejection, .. } => {
            panic!("refused: {} {}", rejection.status, rejection.reason)
        }
    }
}

fn refused(v: &Verdict) -> &Rejection {
    match v {
        Verdict::Refuse { rejection, .. } => rejection,
        Verdict::Admit(a) => panic!("admitted: {a:?}"),
    }
}

fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
}

fn token(user: &str, nonce: &str, exp_in: i64) -> String {
    let claims = BreakGlass {
        kid: "k1".into(),
        user: user.into(),
        reason: "ETREAT".into(),
        exp: (NOW_MS / 1000) as i64 + exp_in,
        nonce: nonce.into(),
    };
    sign(&claims, KEY).unwrap()
}

mod limits {
    use super::*;

    #[test]
    fn the_write_after_the_limit_gets_a_429_with_every_header_and_another_user_is_unaffected() {
        let p = policy(r#", "ietfHeaders": true"#);
        let mut store = MemoryStore::default();
        for _ in 0..3 {
            admitted(&p.decide(&write_by("alice"), &mut store, NOW_MS));
        }
        let r = refused(&p.decide(&write_by("alice"), &mut store, NOW_MS)).clone();
        assert_eq!((r.status, r.reason), (429, "rate-limited"));
        for h in [
            "retry-after",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "ratelimit",
            "ratelimit-policy",
        ] {
            assert!(header(&r.headers, h).is_some(), "{h}");
        }
        assert_eq!(
            header(&r.headers, "retry-after"),
            Some("20"),
            "one write refills every 20 s"
        );
        assert!(String::from_utf8(r.body())
            .unwrap()
            .contains(r#""code":"throttled""#));
        admitted(&p.decide(&write_by("bob"), &mut store, NOW_MS));
        admitted(&p.decide(&write_by("alice"), &mut store, NOW_MS + 20_000));
    }

    #[test]
    fn the_same_user_in_another_tenant_has_another_budget() {
        let p = policy("");
        let mut store = MemoryStore::default();
        for _ in 0..3 {
            admitted(&p.decide(&write_by("alice"), &mut store, NOW_MS));
        }
        let other = RateLimitRequest {
            token_tenant: Some("hosp-b"),
            ..write_by("alice")
        };
        admitted(&p.decide(&other, &mut store, NOW_MS));
    }

    #[test]
    fn a_tenants_third_bulk_kickoff_in_the_hour_is_refused_with_the_next_slot() {
        let p = policy("");
        let mut store = MemoryStore::default();
        let kickoff = |user| RateLimitRequest {
            interaction: Some("operation-type"),
            operation: Some("$export"),
            path: "/fhir/r4/Patient/$export",
            ..write_by(user)
        };
        admitted(&p.decide(&kickoff("alice"), &mut store, NOW_MS));
        admitted(&p.decide(&kickoff("bob"), &mut store, NOW_MS));
        let r = refused(&p.decide(&kickoff("carol"), &mut store, NOW_MS)).clone();
        assert_eq!(
            header(&r.headers, "retry-after"),
            Some("1800"),
            "bulk is per tenant, whoever asks"
        );
        // Status polling is a read, not a kick-off.
        let poll = RateLimitRequest {
            interaction: Some("passthrough"),
            path: "/fhir/r4/bulk-status/1",
            ..write_by("alice")
        };
        assert_eq!(
            admitted(&p.decide(&poll, &mut store, NOW_MS)).class,
            Class::Read
        );
    }

    #[test]
    fn a_weighted_search_spends_its_weight() {
        let p = policy(r#", "remainingHeaders": true"#);
        let mut store = MemoryStore::default();
        let search = |path| RateLimitRequest {
            interaction: Some("search-type"),
            path,
            ..write_by("alice")
        };
        let a = p.decide(
            &search(
                "/fhir/r4/Observation?_include=Observation:patient&_revinclude=Provenance:target",
            ),
            &mut store,
            NOW_MS,
        );
        assert_eq!(admitted(&a).weight, 3);
        assert_eq!(
            header(&admitted(&a).response_headers, "x-ratelimit-remaining"),
            Some("2")
        );
        let encoded = p.decide(
            &search("/fhir/r4/Observation?%5Finclude=Observation:patient"),
            &mut store,
            NOW_MS,
        );
        assert_eq!(
            admitted(&encoded).weight,
            2,
            "an encoded _include is still an include"
        );
        assert_eq!(
            header(
                &admitted(&encoded).response_headers,
                "x-ratelimit-remaining"
            ),
            Some("0")
        );
        refused(&p.decide(&search("/fhir/r4/Observation"), &mut store, NOW_MS));
    }

    #[test]
    fn backend_services_are_limited_per_client_and_anonymous_traffic_per_peer() {
        let p = policy("");
        let mut store = MemoryStore::default();
        let backend = |client| RateLimitRequest {
            subject: Some(client),
            client_id: Some(client),
            ..write_by("x")
        };
        for _ in 0..3 {
            admitted(&p.decide(&backend("etl-1"), &mut store, NOW_MS));
        }
        refused(&p.decide(&backend("etl-1"), &mut store, NOW_MS));
        admitted(&p.decide(&backend("etl-2"), &mut store, NOW_MS));
        let anonymous = |peer| RateLimitRequest {
            subject: None,
            client_id: None,
            token_tenant: None,
            peer: Some(peer),
            ..write_by("x")
        };
        for _ in 0..3 {
            admitted(&p.decide(&anonymous("10.0.0.1:5000"), &mut store, NOW_MS));
        }
        refused(&p.decide(&anonymous("10.0.0.1:5001"), &mut store, NOW_MS));
        admitted(&p.decide(&anonymous("10.0.0.2:5000"), &mut store, NOW_MS));
    }

    #[test]
    fn unlimited_classes_pass_without_touching_shared_data() {
        let p = policy("");
        let mut store = MemoryStore::default();
        let meta = RateLimitRequest {
            interaction: Some("capabilities"),
            path: "/fhir/r4/metadata",
            ..write_by("alice")
        };
        for _ in 0..50 {
            admitted(&p.decide(&meta, &mut store, NOW_MS));
        }
        assert!(store.get("fhirgate.rl/metadata/tenant=hosp-a").0.is_none());
    }
}

mod break_glass {
    use super::*;

    fn limited_alice(p: &RateLimitFilterPolicy, store: &mut MemoryStore) {
        for _ in 0..3 {
            admitted(&p.decide(&write_by("alice"), store, NOW_MS));
        }
        refused(&p.decide(&write_by("alice"), store, NOW_MS));
    }

    #[test]
    fn a_valid_token_passes_a_limited_user_and_marks_the_request() {
        let p = policy("");
        let mut store = MemoryStore::default();
        limited_alice(&p, &mut store);
        let t = token("alice", "n1", 600);
        let a = p.decide(
            &RateLimitRequest {
                break_glass: Some(&t),
                ..write_by("alice")
            },
            &mut store,
            NOW_MS,
        );
        let a = admitted(&a);
        assert!(a.break_glass);
        assert_eq!(
            header(&a.request_headers, headers::BREAK_GLASS),
            Some("ETREAT")
        );
        assert_eq!(
            header(&a.request_headers, headers::BREAK_GLASS_USER),
            Some("alice")
        );
    }

    #[test]
    fn forged_expired_replayed_and_borrowed_tokens_are_refused() {
        let p = policy("");
        let mut store = MemoryStore::default();
        let used = token("alice", "used", 600);
        admitted(&p.decide(
            &RateLimitRequest {
                break_glass: Some(&used),
                ..write_by("alice")
            },
            &mut store,
            NOW_MS,
        ));
        let forged = {
            let t = token("alice", "f", 600);
            let (payload, _) = t.split_once('.').unwrap();
            format!("{payload}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        };
        let cases = [
            (forged, 403, "break-glass-bad-signature"),
            (token("alice", "e", -1), 403, "break-glass-expired"),
            (used, 403, "break-glass-replayed"),
            (token("mallory", "m", 600), 403, "break-glass-user-mismatch"),
            ("garbage".to_string(), 403, "break-glass-malformed"),
        ];
        for (t, status, reason) in cases {
            let v = p.decide(
                &RateLimitRequest {
                    break_glass: Some(&t),
                    ..write_by("alice")
                },
                &mut store,
                NOW_MS,
            );
            let r = refused(&v);
            assert_eq!((r.status, r.reason), (status, reason));
        }
        // Issue 15: an access token without `sub` cannot carry anyone's break-glass token.
        let anonymous = p.decide(
            &RateLimitRequest {
                break_glass: Some(&token("alice", "n", 600)),
                subject: None,
                ..write_by("alice")
            },
            &mut store,
            NOW_MS,
        );
        let r = refused(&anonymous);
        assert_eq!((r.status, r.reason), (403, "break-glass-user-mismatch"));
    }

    #[test]
    fn bypass_covers_only_the_configured_classes() {
        let json = format!(
            r#"{{"tiers": {{"write": {{"limit": 1, "windowSeconds": 60}}}}, "breakGlass": {{"keys": {{"k1": "{}"}}, "bypass": ["read"]}}}}"#,
            key_b64()
        );
        let p = RateLimitFilterPolicy::from_json(json.as_bytes()).unwrap();
        let mut store = MemoryStore::default();
        admitted(&p.decide(&write_by("alice"), &mut store, NOW_MS));
        let t = token("alice", "n", 600);
        let v = p.decide(
            &RateLimitRequest {
                break_glass: Some(&t),
                ..write_by("alice")
            },
            &mut store,
            NOW_MS,
        );
        assert_eq!(refused(&v).status, 429, "write is not bypassed");
    }
}

mod enforcement {
    use super::*;

    #[test]
    fn envoy_enforcement_sets_descriptors_and_takes_nothing() {
        let p = policy(r#", "enforcement": "envoy""#);
        let mut store = MemoryStore::default();
        for _ in 0..10 {
            let v = p.decide(&write_by("alice"), &mut store, NOW_MS);
            let h = &admitted(&v).request_headers;
            assert_eq!(header(h, headers::RL_CLASS), Some("write"));
            assert_eq!(header(h, headers::RL_TENANT), Some("hosp-a"));
            assert!(header(h, headers::RL_PRINCIPAL)
                .is_some_and(|p| p.starts_with("user=") && !p.contains("alice")));
            assert_eq!(header(h, headers::RL_WEIGHT), Some("1"));
        }
        let bulk = RateLimitRequest {
            interaction: Some("operation-system"),
            operation: Some("$export"),
            ..write_by("alice")
        };
        let v = p.decide(&bulk, &mut store, NOW_MS);
        assert_eq!(
            header(&admitted(&v).request_headers, headers::RL_PRINCIPAL),
            None,
            "bulk is per tenant"
        );
    }

    #[test]
    fn both_sets_descriptors_and_enforces() {
        let p = policy(r#", "enforcement": "both""#);
        let mut store = MemoryStore::default();
        for _ in 0..3 {
            assert!(header(
                &admitted(&p.decide(&write_by("alice"), &mut store, NOW_MS)).request_headers,
                headers::RL_CLASS
            )
            .is_some());
        }
        refused(&p.decide(&write_by("alice"), &mut store, NOW_MS));
    }

    #[test]
    fn without_routing_headers_it_fails_closed_unless_configured_open() {
        let mut store = MemoryStore::default();
        let unrouted = RateLimitRequest {
            interaction: None,
            ..write_by("alice")
        };
        let r = refused(&policy("").decide(&unrouted, &mut store, NOW_MS)).clone();
        assert_eq!((r.status, r.reason), (503, "not-routed"));
        let bogus = RateLimitRequest {
            interaction: Some("teleport"),
            ..write_by("alice")
        };
        assert_eq!(
            refused(&policy("").decide(&bogus, &mut store, NOW_MS)).reason,
            "not-routed"
        );
        admitted(&policy(r#", "failOpen": true"#).decide(&unrouted, &mut store, NOW_MS));
    }
}

mod tenants {
    use super::*;

    #[test]
    fn the_tenant_comes_from_the_configured_source() {
        let mut store = MemoryStore::default();
        let cases: &[(&str, RateLimitRequest, &str)] = &[
            ("", write_by("a"), "hosp-a"),
            (
                "",
                RateLimitRequest {
                    token_tenant: None,
                    ..write_by("a")
                },
                "default",
            ),
            (
                r#", "tenant": {"from": "header", "header": "x-tenant-id"}"#,
                RateLimitRequest {
                    tenant_header: Some("t-9"),
                    ..write_by("a")
                },
                "t-9",
            ),
            (
                r#", "tenant": {"from": "host", "hosts": {"fhir.a.example": "hosp-a"}, "default": "other"}"#,
                RateLimitRequest {
                    host: Some("fhir.a.example:8443"),
                    ..write_by("a")
                },
                "hosp-a",
            ),
            (
                r#", "tenant": {"from": "host", "hosts": {"fhir.a.example": "hosp-a"}, "default": "other"}"#,
                RateLimitRequest {
                    host: Some("evil.example"),
                    ..write_by("a")
                },
                "other",
            ),
        ];
        for (extra, req, tenant) in cases {
            let p = policy(&format!(r#"{extra}, "enforcement": "envoy""#));
            let v = p.decide(req, &mut store, NOW_MS);
            assert_eq!(
                header(&admitted(&v).request_headers, headers::RL_TENANT),
                Some(*tenant),
                "{extra}"
            );
        }
    }

    #[test]
    fn a_malformed_tenant_is_a_400() {
        let p = policy(r#", "tenant": {"from": "header", "header": "x-tenant-id"}"#);
        let v = p.decide(
            &RateLimitRequest {
                tenant_header: Some("a b"),
                ..write_by("a")
            },
            &mut MemoryStore::default(),
            NOW_MS,
        );
        assert_eq!(refused(&v).reason, "invalid-tenant");
    }
}

mod config {
    use super::*;

    #[test]
    fn refuses_bad_config_naming_the_field() {
        let k = key_b64();
        let cases = [
            (
                r#"{"tenant": {"from": "header"}}"#.to_string(),
                "tenant.header",
            ),
            (
                r#"{"tenant": {"from": "header", "header": "x-fhirgate-tenant"}}"#.to_string(),
                "tenant.header",
            ),
            (
                r#"{"tenant": {"from": "host"}}"#.to_string(),
                "tenant.hosts",
            ),
            (r#"{"tenant": {"from": "dns"}}"#.to_string(), "tenant.from"),
            (
                r#"{"tenant": {"default": "a b"}}"#.to_string(),
                "tenant.default",
            ),
            (
                r#"{"breakGlass": {"keys": {}}}"#.to_string(),
                "breakGlass.keys",
            ),
            (
                r#"{"breakGlass": {"keys": {"k": "c2hvcnQ="}}}"#.to_string(),
                "breakGlass.keys.k",
            ),
            (
                r#"{"breakGlass": {"keys": {"k": "!!"}}}"#.to_string(),
                "breakGlass.keys.k",
            ),
            (
                format!(
                    r#"{{"breakGlass": {{"keys": {{"k": "{k}"}}, "header": "Authorization"}}}}"#
                ),
                "breakGlass.header",
            ),
            (
                format!(r#"{{"breakGlass": {{"keys": {{"k": "{k}"}}, "bypass": ["reads"]}}}}"#),
                "breakGlass.bypass[0]",
            ),
            (r#"{"enforcement": "redis"}"#.to_string(), "enforcement"),
            (r#"{"failopen": true}"#.to_string(), "failopen"),
        ];
        for (json, field) in cases {
            let e = RateLimitFilterPolicy::from_json(json.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("accepted {json}"));
            assert!(e.field.starts_with(field), "{json}: {e}");
        }
    }
}

mod helpers {
    use super::*;

    #[test]
    fn host_without_port_handles_v4_v6_and_names() {
        for (addr, host) in [
            ("10.0.0.1:80", "10.0.0.1"),
            ("[::1]:80", "::1"),
            ("::1", "::1"),
            ("fhir.example", "fhir.example"),
            ("fhir.example:443", "fhir.example"),
        ] {
            assert_eq!(host_without_port(addr), host);
        }
    }

    #[test]
    fn envoys_own_429s_get_a_retry_after() {
        assert_eq!(
            retry_after_for_envoy_429(Some("429"), None, Some("17")),
            Some("17".into())
        );
        assert_eq!(
            retry_after_for_envoy_429(Some("429"), None, None),
            Some("1".into())
        );
        assert_eq!(
            retry_after_for_envoy_429(Some("429"), Some("5"), Some("17")),
            None
        );
        assert_eq!(
            retry_after_for_envoy_429(Some("200"), None, Some("17")),
            None
        );
    }
}

/// Issue 15: a batch weighs what it carries, not one request.
#[test]
fn a_batch_weighs_one_more_per_entry() {
    let p = RateLimitFilterPolicy::from_json(
        br#"{"tiers": {"write": {"limit": 100, "windowSeconds": 60}}}"#,
    )
    .unwrap();
    let decide = |entries: Option<&str>| {
        p.decide(
            &RateLimitRequest {
                interaction: Some("batch"),
                bundle_entries: entries,
                ..write_by("alice")
            },
            &mut MemoryStore::default(),
            NOW_MS,
        )
    };
    let weight = |v: Verdict| match v {
        Verdict::Admit(a) => a.weight,
        other => panic!("{other:?}"),
    };
    let empty = weight(decide(Some("0")));
    assert_eq!(weight(decide(Some("1"))), empty + 1);
    assert_eq!(
        weight(decide(None)),
        empty,
        "no Bundle read: the request alone"
    );
    // The write tier allows 100 per minute: one batch of 500 writes is not one request.
    let big = decide(Some("500"));
    let r = refused(&big);
    assert_eq!((r.status, r.reason), (429, "rate-limited"));
}
