//! Table-driven tests of the routing policy: recognition, refusals, bodies, patients, pools.

use super::*;

fn policy() -> RoutingPolicy {
    RoutingPolicy::from_json(
        br#"{
            "basePath": "/fhir/r4",
            "cdsHooksPath": "/cds-services",
            "passthrough": [
                {"prefix": "/fhir/r4-bulk/", "pool": "bulk", "methods": ["GET", "DELETE"]},
                {"prefix": "/fhir/r4/bulk-status/", "pool": "bulk"}
            ],
            "pools": [
                {"name": "bulk", "operations": ["$export"]},
                {"name": "validate", "operations": ["$validate"]},
                {"name": "prior-auth", "resourceTypes": ["Claim"], "operations": ["$submit"]},
                {"name": "device", "resourceTypes": ["Device", "DeviceMetric"]}
            ]
        }"#,
    )
    .unwrap()
}

fn head<'a>(method: &'a str, path: &'a str) -> RequestHead<'a> {
    RequestHead {
        method,
        path,
        ..RequestHead::default()
    }
}

fn route(method: &str, path: &str) -> Result<RoutedRequest, Rejection> {
    policy().route(&head(method, path))
}

/// Routes a request with a JSON body through both steps.
fn route_with_body(
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Result<RoutedRequest, Rejection> {
    let p = policy();
    let len = body.len().to_string();
    let h = RequestHead {
        method,
        path,
        content_type: Some(content_type),
        content_length: Some(&len),
        has_body: !body.is_empty(),
        ..RequestHead::default()
    };
    let mut r = p.route(&h)?;
    if r.awaiting_body {
        p.route_body(&mut r, body.as_bytes())?;
    }
    Ok(r)
}

fn refused(result: Result<RoutedRequest, Rejection>) -> Rejection {
    match result {
        Ok(r) => panic!("accepted as {r:?}"),
        Err(e) => e,
    }
}

mod recognises_interactions {
    use super::*;

    /// (method, path, interaction, resource type, id, version id, operation, compartment, pool)
    type Row = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
    );

    const ROWS: &[Row] = &[
        (
            "GET",
            "/fhir/r4/metadata",
            "capabilities",
            None,
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/.well-known/smart-configuration",
            "smart-configuration",
            None,
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4",
            "search-system",
            None,
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/",
            "search-system",
            None,
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4?_lastUpdated=gt2020",
            "search-system",
            None,
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/_search?_type=Patient",
            "search-system",
            None,
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/_history",
            "history-system",
            None,
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/_history?_since=2020-01-01",
            "history-system",
            None,
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient",
            "search-type",
            Some("Patient"),
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/",
            "search-type",
            Some("Patient"),
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Observation?code=1234-5",
            "search-type",
            Some("Observation"),
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Observation/_search?code=1",
            "search-type",
            Some("Observation"),
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/_history",
            "history-type",
            Some("Patient"),
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/123",
            "read",
            Some("Patient"),
            Some("123"),
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/a.b-C",
            "read",
            Some("Patient"),
            Some("a.b-C"),
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/123/",
            "read",
            Some("Patient"),
            Some("123"),
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/123?_elements=id",
            "read",
            Some("Patient"),
            Some("123"),
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/123/_history",
            "history-instance",
            Some("Patient"),
            Some("123"),
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/123/_history/2",
            "vread",
            Some("Patient"),
            Some("123"),
            Some("2"),
            None,
            None,
            "fhir",
        ),
        (
            "DELETE",
            "/fhir/r4/Patient/123",
            "delete",
            Some("Patient"),
            Some("123"),
            None,
            None,
            None,
            "fhir",
        ),
        (
            "DELETE",
            "/fhir/r4/Observation?code=x",
            "conditional-delete",
            Some("Observation"),
            None,
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/$export",
            "operation-system",
            None,
            None,
            None,
            Some("$export"),
            None,
            "bulk",
        ),
        (
            "POST",
            "/fhir/r4/$export",
            "operation-system",
            None,
            None,
            None,
            Some("$export"),
            None,
            "bulk",
        ),
        (
            "GET",
            "/fhir/r4/Patient/$export",
            "operation-type",
            Some("Patient"),
            None,
            None,
            Some("$export"),
            None,
            "bulk",
        ),
        (
            "GET",
            "/fhir/r4/Group/g1/$export?_type=Patient",
            "operation-instance",
            Some("Group"),
            Some("g1"),
            None,
            Some("$export"),
            None,
            "bulk",
        ),
        (
            "GET",
            "/fhir/r4/Patient/123/$everything",
            "operation-instance",
            Some("Patient"),
            Some("123"),
            None,
            Some("$everything"),
            None,
            "fhir",
        ),
        (
            "POST",
            "/fhir/r4/$validate",
            "operation-system",
            None,
            None,
            None,
            Some("$validate"),
            None,
            "validate",
        ),
        (
            "POST",
            "/fhir/r4/Patient/$validate",
            "operation-type",
            Some("Patient"),
            None,
            None,
            Some("$validate"),
            None,
            "validate",
        ),
        (
            "GET",
            "/fhir/r4/Observation/$lastn?patient=1",
            "operation-type",
            Some("Observation"),
            None,
            None,
            Some("$lastn"),
            None,
            "fhir",
        ),
        (
            "POST",
            "/fhir/r4/Claim/$submit",
            "operation-type",
            Some("Claim"),
            None,
            None,
            Some("$submit"),
            None,
            "prior-auth",
        ),
        (
            "POST",
            "/fhir/r4/Patient/$member-match",
            "operation-type",
            Some("Patient"),
            None,
            None,
            Some("$member-match"),
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Device/d1",
            "read",
            Some("Device"),
            Some("d1"),
            None,
            None,
            None,
            "device",
        ),
        (
            "GET",
            "/fhir/r4/DeviceMetric?source=Device/1",
            "search-type",
            Some("DeviceMetric"),
            None,
            None,
            None,
            None,
            "device",
        ),
        (
            "GET",
            "/fhir/r4/Claim/1",
            "read",
            Some("Claim"),
            Some("1"),
            None,
            None,
            None,
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/123/Observation",
            "search-compartment",
            Some("Observation"),
            None,
            None,
            None,
            Some("Patient/123"),
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/123/Observation?code=x",
            "search-compartment",
            Some("Observation"),
            None,
            None,
            None,
            Some("Patient/123"),
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient/123/*",
            "search-compartment",
            None,
            None,
            None,
            None,
            Some("Patient/123"),
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Encounter/e1/Observation",
            "search-compartment",
            Some("Observation"),
            None,
            None,
            None,
            Some("Encounter/e1"),
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Practitioner/p1/Encounter",
            "search-compartment",
            Some("Encounter"),
            None,
            None,
            None,
            Some("Practitioner/p1"),
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/RelatedPerson/r1/Observation",
            "search-compartment",
            Some("Observation"),
            None,
            None,
            None,
            Some("RelatedPerson/r1"),
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Device/d1/Observation",
            "search-compartment",
            Some("Observation"),
            None,
            None,
            None,
            Some("Device/d1"),
            "fhir",
        ),
        (
            "GET",
            "/fhir/r4/Patient%2Fx",
            "invalid",
            None,
            None,
            None,
            None,
            None,
            "",
        ),
        (
            "GET",
            "/cds-services",
            "cds-discovery",
            None,
            None,
            None,
            None,
            None,
            "cds-hooks",
        ),
        (
            "GET",
            "/cds-services/",
            "cds-discovery",
            None,
            None,
            None,
            None,
            None,
            "cds-hooks",
        ),
        (
            "GET",
            "/fhir/r4-bulk/job/1",
            "passthrough",
            None,
            None,
            None,
            None,
            None,
            "bulk",
        ),
        (
            "DELETE",
            "/fhir/r4-bulk/job/1",
            "passthrough",
            None,
            None,
            None,
            None,
            None,
            "bulk",
        ),
        (
            "GET",
            "/fhir/r4/bulk-status/job-1",
            "passthrough",
            None,
            None,
            None,
            None,
            None,
            "bulk",
        ),
    ];

    #[test]
    fn every_row_of_the_interaction_table() {
        for (method, path, interaction, rtype, id, vid, op, compartment, pool) in ROWS {
            let got = route(method, path);
            if *interaction == "invalid" {
                assert!(got.is_err(), "{method} {path}");
                continue;
            }
            let r = got.unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
            let ctx = format!("{method} {path}");
            assert_eq!(r.interaction.name(), *interaction, "{ctx}");
            assert_eq!(r.resource_type, *rtype, "{ctx}");
            assert_eq!(r.id.as_deref(), *id, "{ctx}");
            assert_eq!(r.version_id.as_deref(), *vid, "{ctx}");
            assert_eq!(r.operation.as_deref(), *op, "{ctx}");
            assert_eq!(
                r.compartment
                    .as_ref()
                    .map(|(t, i)| format!("{t}/{i}"))
                    .as_deref(),
                *compartment,
                "{ctx}"
            );
            assert_eq!(r.pool, *pool, "{ctx}");
        }
    }

    #[test]
    fn reads_searches_and_history_of_every_r4_type() {
        for t in fhir::R4_RESOURCE_TYPES {
            let read = route("GET", &format!("/fhir/r4/{t}/x-1")).unwrap();
            assert_eq!(
                (read.interaction, read.resource_type, read.id.as_deref()),
                (Interaction::Read, Some(*t), Some("x-1")),
                "{t}"
            );
            let search = route("GET", &format!("/fhir/r4/{t}?_count=5")).unwrap();
            assert_eq!(
                (search.interaction, search.resource_type),
                (Interaction::SearchType, Some(*t))
            );
            let history = route("GET", &format!("/fhir/r4/{t}/x-1/_history/3")).unwrap();
            assert_eq!(history.interaction, Interaction::Vread);
            assert_eq!(history.version_id.as_deref(), Some("3"));
            let delete = route("DELETE", &format!("/fhir/r4/{t}/x-1")).unwrap();
            assert_eq!(delete.interaction, Interaction::Delete);
        }
    }

    #[test]
    fn creates_updates_and_patches_of_every_r4_type() {
        for t in fhir::R4_RESOURCE_TYPES {
            let body = format!(r#"{{"resourceType": "{t}", "id": "x-1"}}"#);
            let created = route_with_body(
                "POST",
                &format!("/fhir/r4/{t}"),
                "application/fhir+json",
                &body,
            )
            .unwrap();
            assert_eq!(
                (created.interaction, created.resource_type),
                (Interaction::Create, Some(*t))
            );
            let updated = route_with_body(
                "PUT",
                &format!("/fhir/r4/{t}/x-1"),
                "application/fhir+json",
                &body,
            )
            .unwrap();
            assert_eq!(updated.interaction, Interaction::Update);
            let patched = route_with_body(
                "PATCH",
                &format!("/fhir/r4/{t}/x-1"),
                "application/json-patch+json",
                "[]",
            )
            .unwrap();
            assert_eq!(patched.interaction, Interaction::Patch);
        }
    }

    #[test]
    fn compartment_searches_for_every_compartment_and_several_targets() {
        for c in fhir::COMPARTMENT_TYPES {
            for target in [
                "Observation",
                "Encounter",
                "Condition",
                "MedicationRequest",
                "*",
            ] {
                let r = route("GET", &format!("/fhir/r4/{c}/id1/{target}")).unwrap();
                assert_eq!(r.interaction, Interaction::SearchCompartment);
                assert_eq!(r.compartment, Some((*c, "id1".to_string())));
                assert_eq!(
                    r.resource_type,
                    if target == "*" { None } else { Some(target) }
                );
            }
        }
    }

    #[test]
    fn conditional_create_needs_if_none_exist() {
        let p = policy();
        let h = RequestHead {
            method: "POST",
            path: "/fhir/r4/Patient",
            content_type: Some("application/fhir+json"),
            has_body: true,
            if_none_exist: true,
            ..RequestHead::default()
        };
        let mut r = p.route(&h).unwrap();
        assert!(r.awaiting_body);
        p.route_body(&mut r, br#"{"resourceType":"Patient"}"#)
            .unwrap();
        assert_eq!(r.interaction, Interaction::ConditionalCreate);
    }

    #[test]
    fn conditional_update_and_patch_carry_their_criteria() {
        let r = route_with_body(
            "PUT",
            "/fhir/r4/Patient?identifier=x|1",
            "application/fhir+json",
            r#"{"resourceType":"Patient"}"#,
        )
        .unwrap();
        assert_eq!(r.interaction, Interaction::ConditionalUpdate);
        assert_eq!(r.params[0].value, "x|1");
        let r = route_with_body(
            "PATCH",
            "/fhir/r4/Patient?identifier=x",
            "application/fhir+json",
            r#"{"resourceType":"Parameters"}"#,
        )
        .unwrap();
        assert_eq!(r.interaction, Interaction::ConditionalPatch);
    }

    #[test]
    fn batch_and_transaction_are_told_apart_by_the_body() {
        let r = route_with_body(
            "POST",
            "/fhir/r4",
            "application/fhir+json",
            r#"{"resourceType":"Bundle","type":"batch","entry":[]}"#,
        )
        .unwrap();
        assert_eq!(
            (r.interaction, r.bundle_type),
            (Interaction::Batch, Some("batch"))
        );
        let r = route_with_body(
            "POST",
            "/fhir/r4/",
            "application/fhir+json",
            r#"{"type":"transaction","resourceType":"Bundle"}"#,
        )
        .unwrap();
        assert_eq!(
            (r.interaction, r.bundle_type),
            (Interaction::Transaction, Some("transaction"))
        );
        assert!(r
            .facts()
            .contains(&(headers::BUNDLE_TYPE, "transaction".to_string())));
    }

    #[test]
    fn post_search_is_search_not_create() {
        let r = route_with_body(
            "POST",
            "/fhir/r4/Observation/_search",
            "application/x-www-form-urlencoded",
            "patient=123&code=http%3A%2F%2Floinc.org%7C1",
        )
        .unwrap();
        assert_eq!(r.interaction, Interaction::SearchType);
        assert_eq!(r.patient.as_deref(), Some("123"));
        assert_eq!(r.params[1].value, "http://loinc.org|1");
        let r = route_with_body(
            "POST",
            "/fhir/r4/_search",
            "application/x-www-form-urlencoded",
            "_type=Patient",
        )
        .unwrap();
        assert_eq!(r.interaction, Interaction::SearchSystem);
        let r = route_with_body(
            "POST",
            "/fhir/r4/Observation/_search?patient=7",
            "application/x-www-form-urlencoded",
            "",
        )
        .unwrap();
        assert_eq!(r.patient.as_deref(), Some("7"));
    }

    #[test]
    fn cds_hooks_services_and_feedback() {
        let r = route_with_body(
            "POST",
            "/cds-services/patient-view",
            "application/json",
            r#"{"hook":"patient-view"}"#,
        )
        .unwrap();
        assert_eq!(
            (r.interaction, r.id.as_deref(), r.pool.as_str()),
            (Interaction::CdsService, Some("patient-view"), "cds-hooks")
        );
        let r = route_with_body(
            "POST",
            "/cds-services/patient-view/feedback",
            "application/json",
            r#"{"feedback":[]}"#,
        )
        .unwrap();
        assert_eq!(r.interaction, Interaction::CdsFeedback);
    }

    #[test]
    fn operations_accept_no_body_or_json() {
        let r = route_with_body(
            "POST",
            "/fhir/r4/Patient/1/$everything",
            "application/fhir+json",
            "",
        )
        .unwrap();
        assert_eq!(r.interaction, Interaction::OperationInstance);
        let r = route_with_body(
            "POST",
            "/fhir/r4/$export",
            "application/fhir+json",
            r#"{"resourceType":"Parameters","parameter":[]}"#,
        )
        .unwrap();
        assert_eq!(r.pool, "bulk");
    }

    #[test]
    fn binary_accepts_its_own_media_type() {
        let r = route_with_body("POST", "/fhir/r4/Binary", "image/png", "\u{89}PNG....").unwrap();
        assert_eq!(
            (r.interaction, &r.body),
            (Interaction::Create, &BodyRule::Opaque)
        );
    }

    #[test]
    fn every_interaction_name_round_trips() {
        for i in Interaction::ALL {
            assert_eq!(Interaction::from_name(i.name()), Some(*i));
        }
        assert_eq!(Interaction::ALL.len(), 27);
    }
}

mod refuses_malformed_requests {
    use super::*;

    /// (method, path, status, reason)
    const ROWS: &[(&str, &str, u16, &str)] = &[
        // unknown or disallowed resource types
        ("GET", "/fhir/r4/Foo", 404, "unknown-resource-type"),
        ("GET", "/fhir/r4/patient/1", 404, "unknown-resource-type"),
        ("GET", "/fhir/r4/Resource/1", 404, "unknown-resource-type"),
        (
            "GET",
            "/fhir/r4/Patient/1/Foo",
            404,
            "unknown-resource-type",
        ),
        (
            "GET",
            "/fhir/r4/Foo/1/_history",
            404,
            "unknown-resource-type",
        ),
        ("DELETE", "/fhir/r4/Foo/1", 404, "unknown-resource-type"),
        ("GET", "/fhir/r4/Foo/1/2/3/4", 404, "unknown-resource-type"),
        // not under the FHIR base
        ("GET", "/", 404, "not-fhir-endpoint"),
        ("GET", "/fhir", 404, "not-fhir-endpoint"),
        ("GET", "/fhir/r4x/Patient", 404, "not-fhir-endpoint"),
        ("GET", "/admin", 404, "not-fhir-endpoint"),
        ("GET", "/FHIR/r4/Patient", 404, "not-fhir-endpoint"),
        // bad ids and version ids
        ("GET", "/fhir/r4/Patient/a_b", 400, "invalid-id"),
        ("GET", "/fhir/r4/Patient/a%20b", 400, "invalid-id"),
        ("GET", "/fhir/r4/Patient/%C3%A9", 400, "invalid-id"),
        ("GET", "/fhir/r4/Patient/a;b", 400, "invalid-path"), // a matrix parameter, refused on every route
        ("GET", "/fhir/r4/Patient/a:b", 400, "invalid-id"),
        (
            "GET",
            "/fhir/r4/Patient/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            400,
            "invalid-id",
        ),
        ("PUT", "/fhir/r4/Patient/a*b", 400, "invalid-id"),
        (
            "GET",
            "/fhir/r4/Patient/1/_history/v_1",
            400,
            "invalid-version-id",
        ),
        ("GET", "/fhir/r4/Patient/a_b/_history", 400, "invalid-id"),
        ("GET", "/fhir/r4/Patient/a_b/Observation", 400, "invalid-id"),
        ("GET", "/fhir/r4/Patient/a_b/$everything", 400, "invalid-id"),
        ("POST", "/cds-services/a_b", 400, "invalid-id"),
        // bad operation names
        ("GET", "/fhir/r4/$", 400, "invalid-operation-name"),
        ("GET", "/fhir/r4/$1x", 400, "invalid-operation-name"),
        (
            "GET",
            "/fhir/r4/Patient/$ex%20port",
            400,
            "invalid-operation-name",
        ),
        (
            "GET",
            "/fhir/r4/Patient/1/$$x",
            400,
            "invalid-operation-name",
        ),
        // path shape and hygiene
        ("GET", "/fhir/r4//Patient", 400, "invalid-path"),
        ("GET", "/fhir/r4/Patient//1", 400, "invalid-path"),
        ("GET", "/fhir/r4/Patient/../admin", 400, "invalid-path"),
        ("GET", "/fhir/r4/./Patient", 400, "invalid-path"),
        ("GET", "/fhir/r4/Patient/%2E%2E", 400, "invalid-path"),
        ("GET", "/fhir/r4/Patient/1%2F..", 400, "invalid-path"),
        ("GET", "/fhir/r4/Patient%2F1", 400, "invalid-path"),
        ("GET", "/fhir/r4/Patient/1%5C2", 400, "invalid-path"),
        ("GET", "/fhir/r4/Observation/1/Patient", 400, "invalid-path"),
        (
            "GET",
            "/fhir/r4/Patient/1/_history/2/x",
            400,
            "invalid-path",
        ),
        (
            "GET",
            "/fhir/r4/Patient/1/Observation/2",
            400,
            "invalid-path",
        ),
        ("GET", "/fhir/r4/Patient#frag", 400, "invalid-path"),
        ("GET", "/cds-services/a/b/c", 400, "invalid-path"),
        ("GET", "/fhir/r4-bulk/../x", 400, "invalid-path"),
        // `_count` as servers read it, or refused (issue 15: rate-limit weights)
        (
            "GET",
            "/fhir/r4/Observation?_count=1_000",
            400,
            "invalid-query",
        ),
        (
            "GET",
            "/fhir/r4/Observation?_count=%201000",
            400,
            "invalid-query",
        ),
        (
            "GET",
            "/fhir/r4/Observation?_count=%EF%BC%91%EF%BC%90%EF%BC%90%EF%BC%90",
            400,
            "invalid-query",
        ),
        (
            "GET",
            "/fhir/r4/Observation?_count=10000000000000000000",
            400,
            "invalid-query",
        ),
        ("GET", "/fhir/r4/Observation?_count=", 400, "invalid-query"),
        (
            "GET",
            "/fhir/r4/Observation?_count=-1",
            400,
            "invalid-query",
        ),
        (
            "GET",
            "/fhir/r4/Observation?_count=1e3",
            400,
            "invalid-query",
        ),
        // what Java servers read as dot segments, on FHIR and passthrough routes alike
        ("GET", "/fhir/r4/Patient/..;/admin", 400, "invalid-path"),
        ("GET", "/fhir/r4/Patient/..;x=1/admin", 400, "invalid-path"),
        (
            "GET",
            "/fhir/r4/Patient/1;jsessionid=abc",
            400,
            "invalid-path",
        ),
        ("GET", "/fhir/r4/Patient/1%3Bx", 400, "invalid-path"),
        ("GET", "/fhir/r4/Patient/...", 400, "invalid-path"),
        ("GET", "/fhir/r4/Patient/%2E%2E%3B", 400, "invalid-path"),
        ("GET", "/fhir/r4-bulk/..;/x", 400, "invalid-path"),
        ("GET", "/fhir/r4-bulk/job;v=1/x", 400, "invalid-path"),
        // malformed percent-encoding, path and query
        ("GET", "/fhir/r4/Patient/%zz", 400, "bad-percent-encoding"),
        ("GET", "/fhir/r4/Patient/1%", 400, "bad-percent-encoding"),
        (
            "GET",
            "/fhir/r4/Patient/%C0%AF",
            400,
            "bad-percent-encoding",
        ),
        ("GET", "/fhir/r4/Patient/%00", 400, "bad-percent-encoding"),
        (
            "GET",
            "/fhir/r4/%50atient/%0D%0Ax",
            400,
            "bad-percent-encoding",
        ),
        (
            "GET",
            "/fhir/r4/Patient?name=%zz",
            400,
            "bad-percent-encoding",
        ),
        (
            "GET",
            "/fhir/r4/Patient?name=%E0%80%AF",
            400,
            "bad-percent-encoding",
        ),
        (
            "GET",
            "/fhir/r4/Patient?na%GGme=1",
            400,
            "bad-percent-encoding",
        ),
        (
            "GET",
            "/fhir/r4/Patient?name=a%0Ab",
            400,
            "bad-percent-encoding",
        ),
        (
            "GET",
            "/fhir/r4/Patient?name=%",
            400,
            "bad-percent-encoding",
        ),
        // malformed query names
        ("GET", "/fhir/r4/Patient?na%20me=1", 400, "invalid-query"),
        ("GET", "/fhir/r4/Patient?=1", 400, "invalid-query"),
        ("GET", "/fhir/r4/Patient?a<b=1", 400, "invalid-query"),
        // conditional interactions without criteria
        (
            "DELETE",
            "/fhir/r4/Patient",
            400,
            "conditional-criteria-required",
        ),
        // methods a path shape does not allow
        ("POST", "/fhir/r4/Patient/1", 405, "method-not-allowed"),
        ("POST", "/fhir/r4/metadata", 405, "method-not-allowed"),
        ("DELETE", "/fhir/r4", 405, "method-not-allowed"),
        (
            "PUT",
            "/fhir/r4/Patient/1/_history",
            405,
            "method-not-allowed",
        ),
        (
            "DELETE",
            "/fhir/r4/Patient/1/_history/1",
            405,
            "method-not-allowed",
        ),
        ("PUT", "/fhir/r4/Patient/_search", 405, "method-not-allowed"),
        ("DELETE", "/fhir/r4/_history", 405, "method-not-allowed"),
        (
            "POST",
            "/fhir/r4/Patient/_history",
            405,
            "method-not-allowed",
        ),
        ("PUT", "/fhir/r4/$export", 405, "method-not-allowed"),
        (
            "DELETE",
            "/fhir/r4/Patient/$export",
            405,
            "method-not-allowed",
        ),
        (
            "PATCH",
            "/fhir/r4/Patient/1/$everything",
            405,
            "method-not-allowed",
        ),
        (
            "POST",
            "/fhir/r4/Patient/1/Observation",
            405,
            "method-not-allowed",
        ),
        ("HEAD", "/fhir/r4/Patient/1", 405, "method-not-allowed"),
        ("OPTIONS", "/fhir/r4/Patient", 405, "method-not-allowed"),
        ("TRACE", "/fhir/r4/metadata", 405, "method-not-allowed"),
        ("CONNECT", "/fhir/r4", 405, "method-not-allowed"),
        ("get", "/fhir/r4/Patient", 405, "method-not-allowed"),
        (
            "POST",
            "/fhir/r4/.well-known/smart-configuration",
            405,
            "method-not-allowed",
        ),
        ("POST", "/cds-services", 405, "method-not-allowed"),
        ("GET", "/cds-services/x", 405, "method-not-allowed"),
        ("POST", "/fhir/r4-bulk/job/1", 405, "method-not-allowed"),
        (
            "DELETE",
            "/fhir/r4/bulk-status/job-1",
            405,
            "method-not-allowed",
        ),
        ("GET", "/fhir/r4/bulk-status/a//b", 400, "invalid-path"),
        (
            "GET",
            "/fhir/r4/bulk-status/%zz",
            400,
            "bad-percent-encoding",
        ),
    ];

    /// Every refusal, with what the client sent replaced by a marker wherever the row has a
    /// name or id: the OperationOutcome names the part that is wrong, never its value.
    #[test]
    fn no_refusal_echoes_what_the_client_sent() {
        for (method, path, _, _) in ROWS {
            for (from, to) in [
                ("Foo", "Canaryxq"),
                ("patient", "canaryxq"),
                ("a_b", "canaryxq_"),
                ("1", "canaryxq!"),
            ] {
                let planted = path.replacen(from, to, 1);
                if let Err(e) = route(method, &planted) {
                    let body = String::from_utf8_lossy(&e.body()).to_lowercase();
                    assert!(!body.contains("canaryxq"), "{method} {planted}: {body}");
                }
            }
        }
        let e = refused(route("CANARYXQ", "/fhir/r4/Patient/1"));
        assert!(!String::from_utf8_lossy(&e.body())
            .to_lowercase()
            .contains("canaryxq"));
    }

    #[test]
    fn every_row_of_the_refusal_table() {
        for (method, path, status, reason) in ROWS {
            let e = refused(route(method, path));
            assert_eq!(
                (e.status, e.reason),
                (*status, *reason),
                "{method} {path}: {e:?}"
            );
            let outcome: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
            assert_eq!(
                outcome["resourceType"], "OperationOutcome",
                "{method} {path}"
            );
            assert_eq!(outcome["issue"][0]["details"]["coding"][0]["code"], *reason);
        }
    }

    #[test]
    fn method_not_allowed_lists_the_allowed_methods() {
        let cases = [
            ("POST", "/fhir/r4/Patient/1", "GET, PUT, PATCH, DELETE"),
            ("DELETE", "/fhir/r4", "GET, POST"),
            ("HEAD", "/fhir/r4/Patient", "GET, POST, PUT, PATCH, DELETE"),
            ("POST", "/fhir/r4/metadata", "GET"),
            ("PUT", "/fhir/r4/Patient/$export", "GET, POST"),
            ("PUT", "/fhir/r4/Patient/1/_history/2", "GET"),
            ("GET", "/cds-services/svc", "POST"),
        ];
        for (method, path, allow) in cases {
            let e = refused(route(method, path));
            assert_eq!(
                e.headers,
                vec![("allow", allow.to_string())],
                "{method} {path}"
            );
        }
    }

    #[test]
    fn every_r4_type_is_refused_outside_an_allow_list() {
        let p =
            RoutingPolicy::from_json(br#"{"resourceTypes": ["Patient", "Observation"]}"#).unwrap();
        for t in fhir::R4_RESOURCE_TYPES {
            let got = p.route(&head("GET", &format!("/fhir/r4/{t}/1")));
            if ["Patient", "Observation"].contains(t) {
                assert!(got.is_ok(), "{t}");
            } else {
                let e = refused(got);
                assert_eq!(
                    (e.status, e.reason),
                    (404, "resource-type-not-allowed"),
                    "{t}"
                );
            }
        }
        let e = refused(p.route(&head("GET", "/fhir/r4/Patient/1/Condition")));
        assert_eq!(e.reason, "resource-type-not-allowed");
    }

    #[test]
    fn refuses_over_long_paths_and_queries_at_the_configured_limits() {
        let p = RoutingPolicy::from_json(
            br#"{"maxPathBytes": 40, "maxQueryBytes": 20, "maxQueryParams": 3}"#,
        )
        .unwrap();
        let ok_path = format!("/fhir/r4/Patient/{}", "a".repeat(40 - 17));
        assert!(p.route(&head("GET", &ok_path)).is_ok());
        let long_path = format!("/fhir/r4/Patient/{}", "a".repeat(41 - 17));
        let e = refused(p.route(&head("GET", &long_path)));
        assert_eq!((e.status, e.reason), (414, "path-too-long"));
        assert!(p
            .route(&head(
                "GET",
                &format!("/fhir/r4/Patient?{}", "a".repeat(20))
            ))
            .is_ok());
        let e = refused(p.route(&head(
            "GET",
            &format!("/fhir/r4/Patient?{}", "a".repeat(21)),
        )));
        assert_eq!((e.status, e.reason), (414, "query-too-long"));
        let e = refused(p.route(&head("GET", "/fhir/r4/Patient?a=1&b=2&c=3&d=4")));
        assert_eq!((e.status, e.reason), (414, "too-many-query-params"));
    }

    #[test]
    fn refuses_method_override_headers() {
        let h = RequestHead {
            method_override: true,
            ..head("POST", "/fhir/r4/Patient/_search")
        };
        let e = refused(policy().route(&h));
        assert_eq!((e.status, e.reason), (400, "method-override-refused"));
    }

    #[test]
    fn refuses_bad_and_excessive_content_length() {
        let h = RequestHead {
            content_length: Some("12x"),
            has_body: true,
            ..head("POST", "/fhir/r4/Patient")
        };
        assert_eq!(refused(policy().route(&h)).reason, "invalid-content-length");
        let h = RequestHead {
            content_length: Some("9999999999"),
            has_body: true,
            content_type: Some("application/fhir+json"),
            ..head("POST", "/fhir/r4/Patient")
        };
        let e = refused(policy().route(&h));
        assert_eq!((e.status, e.reason), (413, "body-too-large"));
    }
}

mod checks_bodies {
    use super::*;

    const JSON: &str = "application/fhir+json";

    /// (method, path, content type, body, status, reason)
    const ROWS: &[(&str, &str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/fhir/r4/Patient",
            JSON,
            "{not json",
            400,
            "invalid-json",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            JSON,
            "[1,2]",
            400,
            "invalid-json",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            JSON,
            "\"Patient\"",
            400,
            "invalid-json",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            JSON,
            r#"{"resourceType":"Patient"} trailing"#,
            400,
            "invalid-json",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            JSON,
            r#"{"resourceType":"Patient","resourceType":"Patient"}"#,
            400,
            "invalid-json",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            JSON,
            r#"{"resourceType":"Patient","name":[{"family":}]}"#,
            400,
            "invalid-json",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            JSON,
            r#"{"resourceType":7}"#,
            400,
            "invalid-json",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            JSON,
            r#"{"name":[]}"#,
            400,
            "resource-type-missing",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            JSON,
            r#"{"resourceType":"Observation"}"#,
            400,
            "resource-type-mismatch",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            JSON,
            r#"{"resourceType":"patient"}"#,
            400,
            "resource-type-mismatch",
        ),
        (
            "PUT",
            "/fhir/r4/Patient/1",
            JSON,
            r#"{"resourceType":"Observation","id":"1"}"#,
            400,
            "resource-type-mismatch",
        ),
        (
            "PUT",
            "/fhir/r4/Patient/1",
            JSON,
            r#"{"resourceType":"Patient"}"#,
            400,
            "id-missing",
        ),
        (
            "PUT",
            "/fhir/r4/Patient/1",
            JSON,
            r#"{"resourceType":"Patient","id":"2"}"#,
            400,
            "id-mismatch",
        ),
        (
            "PUT",
            "/fhir/r4/Patient?identifier=1",
            JSON,
            r#"{"resourceType":"Practitioner"}"#,
            400,
            "resource-type-mismatch",
        ),
        (
            "POST",
            "/fhir/r4",
            JSON,
            r#"{"resourceType":"Patient"}"#,
            400,
            "resource-type-mismatch",
        ),
        (
            "POST",
            "/fhir/r4",
            JSON,
            r#"{"resourceType":"Bundle","type":"searchset"}"#,
            400,
            "invalid-bundle-type",
        ),
        (
            "POST",
            "/fhir/r4",
            JSON,
            r#"{"resourceType":"Bundle"}"#,
            400,
            "invalid-bundle-type",
        ),
        ("POST", "/fhir/r4", JSON, "{", 400, "invalid-json"),
        (
            "PATCH",
            "/fhir/r4/Patient/1",
            "application/json-patch+json",
            r#"{"op":"add"}"#,
            400,
            "invalid-patch",
        ),
        (
            "PATCH",
            "/fhir/r4/Patient/1",
            JSON,
            r#"{"resourceType":"Patient"}"#,
            400,
            "invalid-patch",
        ),
        (
            "PATCH",
            "/fhir/r4/Patient/1",
            "application/json-patch+json",
            "[",
            400,
            "invalid-json",
        ),
        ("POST", "/fhir/r4/$export", JSON, "{]", 400, "invalid-json"),
        (
            "POST",
            "/cds-services/x",
            "application/json",
            "nope",
            400,
            "invalid-json",
        ),
        (
            "POST",
            "/fhir/r4/Patient/_search",
            "application/x-www-form-urlencoded",
            "name=%zz",
            400,
            "bad-percent-encoding",
        ),
        (
            "POST",
            "/fhir/r4/Patient/_search",
            "application/x-www-form-urlencoded",
            "a b=1",
            400,
            "invalid-query",
        ),
        // media types
        (
            "POST",
            "/fhir/r4/Patient",
            "application/fhir+xml",
            "<Patient/>",
            415,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            "text/plain",
            "{}",
            415,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/fhir/r4/Patient",
            "application/fhir+json; charset=iso-8859-1",
            "{}",
            415,
            "unsupported-media-type",
        ),
        (
            "PUT",
            "/fhir/r4/Patient/1",
            "application/xml",
            "<x/>",
            415,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/fhir/r4",
            "application/x-www-form-urlencoded",
            "a=1",
            415,
            "unsupported-media-type",
        ),
        (
            "PATCH",
            "/fhir/r4/Patient/1",
            "text/plain",
            "[]",
            415,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/fhir/r4/Patient/_search",
            JSON,
            "{}",
            415,
            "unsupported-media-type",
        ),
        (
            "POST",
            "/fhir/r4/$validate",
            "application/fhir+xml",
            "<x/>",
            415,
            "unsupported-media-type",
        ),
        // bodies where none belong, none where one is required
        (
            "GET",
            "/fhir/r4/Patient/1",
            JSON,
            "{}",
            400,
            "body-not-allowed",
        ),
        (
            "DELETE",
            "/fhir/r4/Patient/1",
            JSON,
            "{}",
            400,
            "body-not-allowed",
        ),
        (
            "GET",
            "/fhir/r4/Patient",
            JSON,
            "{}",
            415,
            "unsupported-media-type",
        ),
        ("POST", "/fhir/r4/Patient", JSON, "", 400, "body-required"),
        ("PUT", "/fhir/r4/Patient/1", JSON, "", 400, "body-required"),
        ("POST", "/fhir/r4", JSON, "", 400, "body-required"),
        (
            "PATCH",
            "/fhir/r4/Patient/1",
            "application/json-patch+json",
            "",
            400,
            "body-required",
        ),
    ];

    #[test]
    fn every_row_of_the_body_table() {
        for (method, path, ct, body, status, reason) in ROWS {
            let e = refused(route_with_body(method, path, ct, body));
            assert_eq!(
                (e.status, e.reason),
                (*status, *reason),
                "{method} {path} {body}: {e:?}"
            );
        }
    }

    #[test]
    fn missing_content_type_on_a_resource_body_is_unsupported() {
        let h = RequestHead {
            has_body: true,
            ..head("POST", "/fhir/r4/Patient")
        };
        let e = refused(policy().route(&h));
        assert_eq!((e.status, e.reason), (415, "unsupported-media-type"));
    }

    #[test]
    fn accepts_json_media_type_variants() {
        for ct in [
            "application/fhir+json",
            "application/json",
            "application/fhir+json; charset=utf-8",
            "Application/FHIR+JSON;charset=UTF-8",
            "application/fhir+json; fhirVersion=4.0",
        ] {
            let r = route_with_body(
                "POST",
                "/fhir/r4/Patient",
                ct,
                r#"{"resourceType":"Patient"}"#,
            );
            assert!(r.is_ok(), "{ct}: {r:?}");
        }
    }

    #[test]
    fn skips_deeply_nested_json_without_recursion() {
        // Fields the check does not read are skipped iteratively: depth cannot exhaust the
        // Wasm stack. Unbalanced nesting is still a syntax error.
        let deep = format!(
            r#"{{"resourceType":"Patient","x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(route_with_body("POST", "/fhir/r4/Patient", JSON, &deep).is_ok());
        let unbalanced = format!(
            r#"{{"resourceType":"Patient","x":{}{}}}"#,
            "[".repeat(1000),
            "]".repeat(999)
        );
        assert_eq!(
            refused(route_with_body(
                "POST",
                "/fhir/r4/Patient",
                JSON,
                &unbalanced
            ))
            .reason,
            "invalid-json"
        );
    }

    #[test]
    fn refuses_a_body_over_the_limit_without_content_length() {
        let p = RoutingPolicy::from_json(br#"{"maxBodyBytes": 16}"#).unwrap();
        let h = RequestHead {
            has_body: true,
            content_type: Some(JSON),
            ..head("POST", "/fhir/r4/Patient")
        };
        let mut r = p.route(&h).unwrap();
        let e = p
            .route_body(&mut r, br#"{"resourceType":"Patient"}"#)
            .unwrap_err();
        assert_eq!((e.status, e.reason), (413, "body-too-large"));
    }

    #[test]
    fn invalid_json_diagnostics_never_echo_the_body() {
        let e = refused(route_with_body(
            "POST",
            "/fhir/r4/Patient",
            JSON,
            r#"{"resourceType":"Patient","name":"SECRET-NAME" oops}"#,
        ));
        assert!(
            !e.outcome.diagnostics.contains("SECRET"),
            "{}",
            e.outcome.diagnostics
        );
        let e = refused(route_with_body(
            "POST",
            "/fhir/r4/Patient",
            JSON,
            r#"{"resourceType":"SECRETTYPE"}"#,
        ));
        assert!(
            !e.outcome.diagnostics.contains("SECRET"),
            "{}",
            e.outcome.diagnostics
        );
    }
}

mod names_the_patient {
    use super::*;

    /// (path, patient)
    const ROWS: &[(&str, Option<&str>)] = &[
        ("/fhir/r4/Patient/123", Some("123")),
        ("/fhir/r4/Patient/123/_history/1", Some("123")),
        ("/fhir/r4/Patient/123/$everything", Some("123")),
        ("/fhir/r4/Patient/123/Observation", Some("123")),
        ("/fhir/r4/Patient/123/*", Some("123")),
        ("/fhir/r4/Observation?patient=123", Some("123")),
        ("/fhir/r4/Observation?patient=Patient/123", Some("123")),
        ("/fhir/r4/Observation?patient=Patient%2F123", Some("123")),
        (
            "/fhir/r4/Observation?patient=https://ehr.example/fhir/Patient/123",
            Some("123"),
        ),
        ("/fhir/r4/Observation?subject=Patient/123", Some("123")),
        ("/fhir/r4/Observation?subject:Patient=123", Some("123")),
        ("/fhir/r4/Observation?patient:Patient=123", Some("123")),
        ("/fhir/r4/Coverage?beneficiary=Patient/9", Some("9")),
        ("/fhir/r4/Patient?_id=123", Some("123")),
        ("/fhir/r4/Observation?patient=123&code=x", Some("123")),
        ("/fhir/r4/Observation?patient=123&patient=123", Some("123")),
        (
            "/fhir/r4/Observation?patient=123&subject=Patient/123",
            Some("123"),
        ),
        ("/fhir/r4/Patient/123/Observation?patient=123", Some("123")),
        ("/fhir/r4/Observation/$lastn?patient=5", Some("5")),
        ("/fhir/r4/Observation?subject=Group/1&patient=4", Some("4")),
        // none, or more than one
        ("/fhir/r4/Observation", None),
        ("/fhir/r4/Observation/1", None),
        ("/fhir/r4/Observation?code=x", None),
        ("/fhir/r4/Observation?patient=123,456", None),
        ("/fhir/r4/Observation?patient=123&patient=456", None),
        ("/fhir/r4/Patient/123/Observation?patient=456", None),
        ("/fhir/r4/Observation?subject=123", None),
        ("/fhir/r4/Observation?subject=Group/1", None),
        ("/fhir/r4/Observation?patient=bad_id", None),
        ("/fhir/r4/Observation?patient.name=smith", None),
        ("/fhir/r4/Observation?subject:Patient.name=smith", None),
        ("/fhir/r4/Observation?_id=123", None),
        ("/fhir/r4/Encounter/e1/Observation", None),
        ("/fhir/r4/Observation?patient=Practitioner/1", None),
        ("/fhir/r4/Patient?_id=1,2", None),
        ("/fhir/r4/Observation?patient=Patient/", None),
        ("/fhir/r4/Observation?patient=xPatient/1", None),
        ("/fhir/r4/Observation/1/_history", None),
    ];

    #[test]
    fn every_row_of_the_patient_table() {
        for (path, patient) in ROWS {
            let r = route("GET", path).unwrap_or_else(|e| panic!("{path}: {e:?}"));
            assert_eq!(r.patient.as_deref(), *patient, "{path}");
            let header = r
                .facts()
                .into_iter()
                .find(|(k, _)| *k == headers::PATIENT)
                .map(|(_, v)| v);
            assert_eq!(header.as_deref(), *patient, "{path}");
        }
    }
}

mod sets_facts {
    use super::*;

    #[test]
    fn sets_only_prefixed_headers_with_the_parsed_values() {
        let r = route("GET", "/fhir/r4/Patient/123/_history/4").unwrap();
        let h = r.facts();
        assert!(h.iter().all(|(k, _)| headers::is_internal(k)));
        let get = |name: &str| h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str());
        assert_eq!(get(headers::INTERACTION), Some("vread"));
        assert_eq!(get(headers::RESOURCE_TYPE), Some("Patient"));
        assert_eq!(get(headers::ID), Some("123"));
        assert_eq!(get(headers::VERSION_ID), Some("4"));
        assert_eq!(get(headers::PATIENT), Some("123"));
        assert_eq!(get(headers::POOL), Some("fhir"));
        assert_eq!(get(headers::OPERATION), None);
    }

    #[test]
    fn header_values_never_contain_control_characters() {
        for path in [
            "/fhir/r4/Patient/1",
            "/fhir/r4/Patient/1/Observation",
            "/fhir/r4/Group/1/$export",
        ] {
            for (_, v) in route("GET", path).unwrap().facts() {
                assert!(v.bytes().all(|b| (0x21..0x7f).contains(&b)), "{v:?}");
            }
        }
    }

    #[test]
    fn a_request_awaiting_its_body_has_no_pool_yet() {
        let h = RequestHead {
            has_body: true,
            content_type: Some("application/fhir+json"),
            ..head("POST", "/fhir/r4")
        };
        let r = policy().route(&h).unwrap();
        assert!(r.awaiting_body);
        assert_eq!(r.pool, "");
    }

    #[test]
    fn json_view_matches_the_fields() {
        let v = route("GET", "/fhir/r4/Patient/1/Observation?code=a")
            .unwrap()
            .to_json();
        assert_eq!(v["interaction"], "search-compartment");
        assert_eq!(v["compartment"], "Patient/1");
        assert_eq!(v["params"][0][1], "a");
        assert_eq!(v["facts"]["x-fhirgate-patient"], "1");
    }
}
