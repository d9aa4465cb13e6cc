//! Scope parsing, from the SMART App Launch 2.x examples and exhaustive letter tables.

use super::*;

/// (scope, context, resource, permissions, params as "k=v&…")
const VALID: &[(&str, &str, &str, &str, &str)] = &[
    // SMART v2, from the specification's examples
    ("patient/Observation.rs", "patient", "Observation", "rs", ""),
    ("user/Appointment.rs", "user", "Appointment", "rs", ""),
    ("user/Appointment.cruds", "user", "Appointment", "cruds", ""),
    ("patient/*.rs", "patient", "*", "rs", ""),
    ("patient/*.cruds", "patient", "*", "cruds", ""),
    ("user/*.cruds", "user", "*", "cruds", ""),
    ("system/Observation.rs", "system", "Observation", "rs", ""),
    ("system/*.rs", "system", "*", "rs", ""),
    ("patient/Encounter.c", "patient", "Encounter", "c", ""),
    ("patient/MedicationRequest.u", "patient", "MedicationRequest", "u", ""),
    ("user/Observation.cu", "user", "Observation", "cu", ""),
    // SMART v1, normalised
    ("patient/Observation.read", "patient", "Observation", "rs", ""),
    ("patient/Observation.write", "patient", "Observation", "cud", ""),
    ("patient/*.read", "patient", "*", "rs", ""),
    ("patient/*.*", "patient", "*", "cruds", ""),
    ("user/*.*", "user", "*", "cruds", ""),
    ("user/*.read", "user", "*", "rs", ""),
    ("user/Patient.write", "user", "Patient", "cud", ""),
    ("system/*.read", "system", "*", "rs", ""),
    ("system/*.*", "system", "*", "cruds", ""),
    ("patient/Condition.*", "patient", "Condition", "cruds", ""),
    // granular (v2), from the specification and US Core
    ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
     "patient", "Observation", "rs", "category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),
    ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
     "patient", "Observation", "rs", "category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"),
    ("patient/Condition.rs?category=http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item",
     "patient", "Condition", "rs", "category=http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item"),
    ("patient/Condition.rs?category=http://hl7.org/fhir/us/core/CodeSystem/condition-category|health-concern",
     "patient", "Condition", "rs", "category=http://hl7.org/fhir/us/core/CodeSystem/condition-category|health-concern"),
    ("patient/DocumentReference.rs?category=http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category|clinical-note",
     "patient", "DocumentReference", "rs", "category=http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category|clinical-note"),
    ("user/Observation.rs?code=http://loinc.org|8867-4", "user", "Observation", "rs", "code=http://loinc.org|8867-4"),
    ("patient/Observation.s?category=laboratory&status=final", "patient", "Observation", "s", "category=laboratory&status=final"),
    ("patient/Observation.r?code=a=b", "patient", "Observation", "r", "code=a=b"),
    ("patient/Observation.rs?code:text=x", "patient", "Observation", "rs", "code:text=x"),
    // filter parameters that start with an underscore
    ("patient/Observation.rs?_tag=http://x|y", "patient", "Observation", "rs", "_tag=http://x|y"),
    ("user/Observation.rs?_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|N",
     "user", "Observation", "rs", "_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|N"),
    ("user/Observation.rs?_lastUpdated=gt2020-01-01", "user", "Observation", "rs", "_lastUpdated=gt2020-01-01"),
];

const INVALID: &[&str] = &[
    // out of order, repeated, unknown or missing letters
    "patient/Observation.sr",
    "patient/Observation.rr",
    "patient/Observation.dc",
    "patient/Observation.srudc",
    "patient/Observation.x",
    "patient/Observation.",
    "patient/Observation",
    "patient/Observation.R",
    "patient/Observation.crudsx",
    "patient/Observation.readwrite",
    "patient/Observation.Read",
    "patient/Observation.**",
    // unknown resource types, contexts and shapes
    "patient/Foo.rs",
    "patient/observation.rs",
    "patient/Resource.rs",
    "patient/.rs",
    "patient/*",
    "patient/",
    "patient/Observation.rs.rs",
    "patient/Obs/ervation.rs",
    "Patient/Observation.rs",
    "patient//Observation.rs",
    "USER/*.read",
    "System/*.rs",
    // granular constraints that do not parse, or on v1 scopes
    "patient/Observation.rs?",
    "patient/Observation.rs?category",
    "patient/Observation.rs?=x",
    "patient/Observation.rs?category=",
    "patient/Observation.rs?a=1&",
    "patient/Observation.rs?a=1&a=2",
    "patient/Observation.read?category=x",
    "patient/Observation.rs?a b=1",
    "patient/Observation.rs?na<me=1",
    // shaped like resource scopes, with a context SMART does not define
    "fake/Patient.write",
    "patient*.read",
    "/Patient.read",
    "patientx/Observation.rs",
    "Observation.read",
    "*.rs",
    "smart/Observation.cruds",
    "x/y/Patient.read",
    "fake/*.*",
    "fake/Observation.rs?category=laboratory",
    // granular constraints may only filter: result parameters, _has and chains grant nothing
    "user/Observation.rs?_include=Observation:subject",
    "user/Observation.rs?_revinclude=Provenance:target",
    "patient/Observation.rs?_has:Observation:patient:code=1",
    "patient/Observation.rs?_count=1000",
    "patient/Observation.rs?_elements=id",
    "patient/Observation.rs?_summary=count",
    "patient/Observation.rs?_sort=date",
    "patient/Observation.rs?_total=accurate",
    "patient/Observation.rs?_contained=true",
    "patient/Observation.rs?_containedType=contained",
    "patient/Observation.rs?_format=xml",
    "patient/Observation.rs?_type=Patient",
    "patient/Observation.rs?subject.name=x",
    "patient/Observation.rs?category=laboratory&_include=Observation:patient",
    "patient/Observation.rs?_include:iterate=Observation:patient",
    // not OAuth scope tokens at all
    "",
    "patient/Observation.rs\"",
    "patient/Observation.rs\\",
    "a\u{7f}",
    "é",
];

const OTHER: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "email",
    "https://example.org/custom.scope",
    "launch/patient/x",
    "https://example.org/Observation",
    "system.read",
];

fn params_of(r: &ResourceScope) -> String {
    r.params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[test]
fn parses_every_valid_scope_of_the_table() {
    for (scope, context, resource, perms, params) in VALID {
        let Ok(Scope::Resource(r)) = parse(scope) else {
            panic!("{scope}: {:?}", parse(scope))
        };
        assert_eq!(r.context.name(), *context, "{scope}");
        assert_eq!(r.resource.unwrap_or("*"), *resource, "{scope}");
        assert_eq!(r.permissions.letters(), *perms, "{scope}");
        assert_eq!(params_of(&r), *params, "{scope}");
    }
}

#[test]
fn refuses_every_invalid_scope_of_the_table() {
    for scope in INVALID {
        assert!(
            parse(scope).is_err(),
            "{scope:?} parsed as {:?}",
            parse(scope)
        );
        let v = describe(scope);
        assert_eq!(v["valid"], false, "{scope}");
        assert_eq!(v["resource_scope"], false, "{scope}");
    }
}

#[test]
fn keeps_other_scopes_without_granting_data_access() {
    for scope in OTHER {
        assert_eq!(parse(scope), Ok(Scope::Other(scope.to_string())), "{scope}");
        let v = describe(scope);
        assert_eq!(
            (
                v["valid"].clone(),
                v["resource_scope"].clone(),
                v["context"].clone()
            ),
            (json!(true), json!(false), Value::Null)
        );
    }
}

/// Every non-empty subset of `cruds` in order is valid; every other arrangement is not.
#[test]
fn accepts_exactly_the_in_order_subsets_of_cruds() {
    let letters = ['c', 'r', 'u', 'd', 's'];
    let mut valid = 0;
    for mask in 1u8..32 {
        let subset: String = letters
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, l)| *l)
            .collect();
        for context in ["patient", "user", "system"] {
            for resource in ["Observation", "Patient", "*", "MedicationRequest"] {
                let scope = format!("{context}/{resource}.{subset}");
                let Ok(Scope::Resource(r)) = parse(&scope) else {
                    panic!("{scope}")
                };
                assert_eq!(r.permissions.letters(), subset);
                assert!(!r.v1);
                valid += 1;
            }
        }
        // Every other ordering of the same letters is refused.
        let chars: Vec<char> = subset.chars().collect();
        for perm in permutations(&chars) {
            let s: String = perm.iter().collect();
            if s != subset {
                assert!(parse(&format!("patient/Observation.{s}")).is_err(), "{s}");
            }
        }
        // A doubled letter is refused.
        assert!(
            parse(&format!(
                "user/Observation.{subset}{}",
                chars[chars.len() - 1]
            ))
            .is_err(),
            "{subset}"
        );
    }
    assert_eq!(valid, 31 * 3 * 4);
}

fn permutations(items: &[char]) -> Vec<Vec<char>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first);
            out.push(p);
        }
    }
    out
}

#[test]
fn v1_and_v2_spellings_of_the_same_access_are_equal() {
    let pairs = [
        ("patient/Observation.read", "patient/Observation.rs"),
        ("patient/Observation.write", "patient/Observation.cud"),
        ("patient/Observation.*", "patient/Observation.cruds"),
        ("user/*.read", "user/*.rs"),
        ("system/*.*", "system/*.cruds"),
    ];
    for (v1, v2) in pairs {
        let (Ok(Scope::Resource(a)), Ok(Scope::Resource(b))) = (parse(v1), parse(v2)) else {
            panic!("{v1} {v2}")
        };
        assert_eq!(
            (a.context, a.resource, a.permissions),
            (b.context, b.resource, b.permissions),
            "{v1} {v2}"
        );
    }
}

#[test]
fn every_r4_type_parses_in_every_context() {
    for t in fhir::R4_RESOURCE_TYPES {
        for context in ["patient", "user", "system"] {
            let v = describe(&format!("{context}/{t}.rs"));
            assert_eq!(
                (v["valid"].clone(), v["resource"].clone()),
                (json!(true), json!(t)),
                "{context}/{t}"
            );
        }
    }
}

#[test]
fn describes_in_the_cli_shape() {
    let v = describe("patient/Observation.rs?category=http://x|laboratory");
    assert_eq!(
        v,
        json!({"valid": true, "context": "patient", "resource": "Observation", "permissions": "rs",
               "params": {"category": "http://x|laboratory"}, "resource_scope": true})
    );
    assert_eq!(describe("user/*.read")["params"], Value::Null);
}

#[test]
fn a_token_scope_claim_keeps_only_its_resource_scopes() {
    let scopes = resource_scopes("openid fhirUser launch/patient patient/Observation.rs patient/Foo.rs  user/*.read patient/Condition.sr");
    let names: Vec<String> = scopes
        .iter()
        .map(|s| {
            format!(
                "{}/{}.{}",
                s.context.name(),
                s.resource.unwrap_or("*"),
                s.permissions.letters()
            )
        })
        .collect();
    assert_eq!(names, ["patient/Observation.rs", "user/*.rs"]);
}
