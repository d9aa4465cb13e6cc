//! Issue 15's properties over generated responses and writes: no withheld resource, and no
//! count of withheld resources, reaches the client; no write's answer depends on a withheld
//! value.

use super::guard::Acting;
use super::*;
use proptest::prelude::*;
use serde_json::json;

const POLICY: &str = r#"{
    "labels": [{"codes": ["V"], "action": "drop"},
               {"codes": ["R"], "allowPurposes": ["TREAT"], "action": "drop"}],
    "consents": {"cluster": "c", "path": "/fhir/Consent"},
    "currentResource": {"cluster": "c", "path": "/fhir"},
    "total": "adjust"
}"#;

/// p2's Consent denies everything; p1 and p3 have none.
fn consents_of(patient: &str) -> Consents<'static> {
    static DENY: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    let deny = DENY.get_or_init(|| {
        vec![json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "patient": {"reference": "Patient/p2"}, "provision": {"type": "deny"}})]
    });
    if patient == "p2" {
        Consents::Known(deny)
    } else {
        Consents::Known(&[])
    }
}

/// Whether the policy above lets `purpose` see a resource with these labels and patient.
fn visible(labels: &[&str], patient: &str, purpose: Option<&str>) -> bool {
    !labels.contains(&"V")
        && (!labels.contains(&"R") || purpose == Some("TREAT"))
        && patient != "p2"
}

#[derive(Debug, Clone)]
struct Generated {
    id: String,
    labels: Vec<&'static str>,
    contained_labels: Vec<&'static str>,
    patient: &'static str,
}

impl Generated {
    fn resource(&self) -> Value {
        let security = |ls: &[&str]| ls.iter().map(|c| json!({"code": c})).collect::<Vec<_>>();
        let mut r = json!({"resourceType": "Observation", "id": self.id, "status": "final",
            "meta": {"security": security(&self.labels)},
            "subject": {"reference": format!("Patient/{}", self.patient)}, "valueString": "v"});
        if !self.contained_labels.is_empty() {
            r["contained"] = json!([{"resourceType": "Specimen", "id": "s", "meta": {"security": security(&self.contained_labels)}}]);
        }
        r
    }

    fn visible(&self, purpose: Option<&str>) -> bool {
        let all: Vec<&str> = self
            .labels
            .iter()
            .chain(&self.contained_labels)
            .copied()
            .collect();
        visible(&all, self.patient, purpose)
    }
}

fn arb_labels() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(vec!["R", "V", "N", "HIV"]), 0..3)
}

fn arb_resource(i: usize) -> impl Strategy<Value = Generated> {
    (
        arb_labels(),
        prop_oneof![3 => Just(Vec::new()), 1 => arb_labels()],
        prop::sample::select(vec!["p1", "p2", "p3"]),
    )
        .prop_map(move |(labels, contained_labels, patient)| Generated {
            id: format!("o{i}"),
            labels,
            contained_labels,
            patient,
        })
}

fn arb_page() -> impl Strategy<Value = Vec<Generated>> {
    (0usize..8).prop_flat_map(|n| (0..n).map(arb_resource).collect::<Vec<_>>())
}

fn caller(purpose: Option<&'static str>) -> Caller<'static> {
    Caller {
        subject: Some("dr"),
        client_id: Some("app"),
        purpose,
        break_glass: false,
        now: "2026-12-06T10:00:00Z",
    }
}

fn ids_in(value: &Value, out: &mut Vec<String>) {
    if let Some(Value::Array(entries)) = value.get("entry") {
        for e in entries {
            if let Some(r) = e.get("resource") {
                if r.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
                    ids_in(r, out);
                } else if let Some(id) = r.get("id").and_then(Value::as_str) {
                    out.push(id.to_string());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// Whatever the page, its type, its paging and the caller's purpose, the client receives
    /// exactly the visible resources, and a `total` only when it counts exactly those.
    #[test]
    fn no_withheld_resource_or_count_of_one_reaches_the_client(
        page in arb_page(),
        kind in prop::sample::select(vec!["searchset", "history", "collection", "searchset-nested"]),
        paged in any::<bool>(),
        hidden_elsewhere in 0u64..5,
        purpose in prop::sample::select(vec![None, Some("TREAT"), Some("HPAYMT")]),
    ) {
        let p = ConsentPolicy::from_json(POLICY.as_bytes()).unwrap();
        let entries: Vec<Value> = page.iter().map(|g| json!({"resource": g.resource(), "search": {"mode": "match"}})).collect();
        let bundle_type = if kind == "searchset-nested" { "searchset" } else { kind };
        let mut bundle = json!({"resourceType": "Bundle", "type": bundle_type,
            "total": page.len() as u64 + hidden_elsewhere, "entry": entries});
        if paged {
            bundle["link"] = json!([{"relation": "next", "url": "x"}]);
        }
        if kind == "searchset-nested" {
            bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": bundle}]});
        }
        let body = serde_json::to_vec(&bundle).unwrap();
        let c = caller(purpose);
        let mut report = Report::default();
        let released: Value = match p.filter(&body, &c, false, &consents_of, &mut report) {
            Filtered::Unchanged => bundle.clone(),
            Filtered::Rewritten(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Filtered::Refused(r) => return Err(TestCaseError::fail(format!("a page is filtered, not refused: {}", r.reason))),
        };
        let mut got = Vec::new();
        ids_in(&released, &mut got);
        let want: Vec<String> = page.iter().filter(|g| g.visible(purpose)).map(|g| g.id.clone()).collect();
        prop_assert_eq!(&got, &want, "released {}", released);
        let searchset = if kind == "searchset-nested" { &released["entry"][0]["resource"] } else { &released };
        if bundle_type == "searchset" {
            // Only a whole result in hand is counted; its count is what is released, or the
            // server's own when nothing was removed and nothing is elsewhere.
            if let Some(total) = searchset.get("total").and_then(Value::as_u64) {
                prop_assert!(!paged, "a page of a longer result keeps no total");
                let removed = page.len() - want.len();
                prop_assert!(total == want.len() as u64 || (removed == 0 && total == page.len() as u64 + hidden_elsewhere),
                    "total {} for {} visible", total, want.len());
                if removed > 0 {
                    prop_assert_eq!(total, want.len() as u64);
                }
            }
        }
        // The byte scan never releases what the full filter changes.
        if p.fast_path(&body, &|id| Some(consents_of(id))) == FastPath::Release {
            prop_assert!(got.len() == page.len(), "the fast path released a page the filter changes");
        }
    }

    /// Whatever a write to a withheld resource says (any JSON Patch, any value it tests), its
    /// answer is the same: nothing of the withheld resource is revealed by its status.
    #[test]
    fn no_write_status_depends_on_a_withheld_value(
        ops in prop::collection::vec((
            prop::sample::select(vec!["add", "remove", "replace", "test", "move", "copy"]),
            prop::sample::select(vec!["/valueString", "/status", "/meta/security", "/meta/security/0", "/subject/reference", "/id", "/nope"]),
            prop::sample::select(vec!["v", "w", "final", "Patient/p1", ""]),
        ), 0..4),
        labels in arb_labels(),
        patient in prop::sample::select(vec!["p1", "p2"]),
        purpose in prop::sample::select(vec![None, Some("TREAT")]),
        interaction in prop::sample::select(vec!["patch", "update", "delete"]),
    ) {
        let p = ConsentPolicy::from_json(POLICY.as_bytes()).unwrap();
        let current = Generated { id: "o1".into(), labels: labels.clone(), contained_labels: vec![], patient }.resource();
        let patch: Vec<Value> = ops.iter().map(|(op, path, value)| match *op {
            "move" | "copy" => json!({"op": op, "from": "/valueString", "path": path}),
            "remove" => json!({"op": op, "path": path}),
            _ => json!({"op": op, "path": path, "value": value}),
        }).collect();
        let (body, media) = match interaction {
            "patch" => (serde_json::to_vec(&patch).unwrap(), "application/json-patch+json"),
            _ => {
                let mut replaced = current.clone();
                if let Some((_, _, value)) = ops.first() {
                    replaced["valueString"] = json!(value);
                }
                (serde_json::to_vec(&replaced).unwrap(), "application/fhir+json")
            }
        };
        let acting = Acting { interaction, operation: None, resource_type: Some("Observation"), id: Some("o1"), raw_query: "" };
        let got = p.decide_current(&acting, 200, Some(current), Some((&body, media)), &caller(purpose), &consents_of);
        if !visible(&labels, patient, purpose) {
            prop_assert_eq!(got.err().map(|r| r.reason), Some("consent-withheld"));
        } else if let Err(r) = got {
            // A visible resource: refused only for changing what needs the privilege, or a body
            // that cannot be applied to see.
            prop_assert!(matches!(r.reason, "relabel-not-permitted"), "{}", r.reason);
        }
    }
}
