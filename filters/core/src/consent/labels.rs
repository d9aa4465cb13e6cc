//! Security labels (`meta.security`): which codes a resource carries, and the hierarchy that
//! makes a rule on a code cover its narrower codes (HL7 v3 Confidentiality is ordered
//! U < L < M < N < R < V; sensitivity codes nest under their family).

use serde_json::Value;

pub const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const OBSERVATION_VALUE: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

const CONFIDENTIALITY_ORDER: &[&str] = &["U", "L", "M", "N", "R", "V"];

/// Sensitivity codes and the family they belong to (HL7 v3 ActInformationSensitivityPolicy):
/// a rule on the family covers each member.
const SENSITIVITY_PARENTS: &[(&str, &str)] = &[
    ("ETHUD", "ETH"),
    ("OPIOIDUD", "ETH"),
    ("SUD", "ETH"),
    ("ETH", "SUD"),
    ("PSYTHPN", "PSY"),
    ("MH", "PSY"),
    ("SICKLE", "GDIS"),
    ("SCA", "GDIS"),
    ("DVD", "SDV"),
    ("SDV", "SOC"),
    ("SEX", "SOC"),
    ("HIV", "STD"),
];

/// One label of a resource: system (if given) and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub system: Option<String>,
    pub code: String,
}

/// The resource's `meta.security` codings.
pub fn labels_of(resource: &Value) -> Vec<Label> {
    let Some(Value::Array(codings)) = resource.get("meta").and_then(|m| m.get("security")) else {
        return Vec::new();
    };
    codings
        .iter()
        .filter_map(|c| {
            let code = c.get("code")?.as_str()?;
            Some(Label {
                system: c.get("system").and_then(Value::as_str).map(str::to_string),
                code: code.to_string(),
            })
        })
        .collect()
}

/// Does a rule naming `rule_code` cover a resource labelled `label`? The same code; a
/// higher-or-equal confidentiality for a confidentiality rule; a member of the rule's family.
pub fn covers(rule_code: &str, label: &Label) -> bool {
    if label.code == rule_code {
        return true;
    }
    let is_confidentiality = label.system.as_deref().is_none_or(|s| s == CONFIDENTIALITY);
    if is_confidentiality {
        if let (Some(rule), Some(have)) = (
            CONFIDENTIALITY_ORDER.iter().position(|c| *c == rule_code),
            CONFIDENTIALITY_ORDER.iter().position(|c| *c == label.code),
        ) {
            return have >= rule;
        }
    }
    // Walk up the family tree (bounded: the table has no long chains, cycles stop at the start).
    let mut code = label.code.as_str();
    for _ in 0..4 {
        match SENSITIVITY_PARENTS.iter().find(|(child, _)| *child == code) {
            Some((_, parent)) if *parent == rule_code => return true,
            Some((_, parent)) if *parent == label.code => return false,
            Some((_, parent)) => code = parent,
            None => return false,
        }
    }
    false
}

/// Adds a coding to `meta.security` unless it is there already.
pub fn add_label(resource: &mut Value, system: &str, code: &str, display: Option<&str>) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let security = meta
        .entry("security")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(list) = security.as_array_mut() else {
        return;
    };
    let present = list.iter().any(|c| {
        c.get("code").and_then(Value::as_str) == Some(code)
            && c.get("system").and_then(Value::as_str) == Some(system)
    });
    if !present {
        let mut coding = serde_json::Map::new();
        coding.insert("system".into(), Value::String(system.into()));
        coding.insert("code".into(), Value::String(code.into()));
        if let Some(d) = display {
            coding.insert("display".into(), Value::String(d.into()));
        }
        list.push(Value::Object(coding));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn label(system: Option<&str>, code: &str) -> Label {
        Label {
            system: system.map(str::to_string),
            code: code.into(),
        }
    }

    #[test]
    fn reads_meta_security() {
        let r = json!({"resourceType": "Observation", "meta": {"security": [{"system": CONFIDENTIALITY, "code": "R"}, {"code": "HIV"}, {"system": "x"}]}});
        assert_eq!(
            labels_of(&r),
            vec![label(Some(CONFIDENTIALITY), "R"), label(None, "HIV")]
        );
        assert!(labels_of(&json!({"resourceType": "Patient"})).is_empty());
        assert!(
            labels_of(&json!({"meta": {"security": "R"}})).is_empty(),
            "a malformed meta.security is no label"
        );
    }

    #[test]
    fn confidentiality_rules_cover_higher_levels() {
        let c = |code| label(Some(CONFIDENTIALITY), code);
        let table = [
            ("R", "R", true),
            ("R", "V", true),
            ("R", "N", false),
            ("N", "R", true),
            ("V", "R", false),
            ("L", "U", false),
            ("U", "V", true),
        ];
        for (rule, have, expected) in table {
            assert_eq!(covers(rule, &c(have)), expected, "{rule} covers {have}");
        }
        assert!(
            !covers("R", &label(Some(ACT_CODE), "V")),
            "another system's V is not very restricted"
        );
    }

    #[test]
    fn sensitivity_families_cover_their_members() {
        let s = |code| label(Some(ACT_CODE), code);
        let table = [
            ("ETH", "ETHUD", true),
            ("ETH", "OPIOIDUD", true),
            ("ETH", "SUD", true),
            ("SUD", "ETH", true),
            ("SUD", "OPIOIDUD", true),
            ("PSY", "PSYTHPN", true),
            ("SOC", "DVD", true),
            ("STD", "HIV", true),
            ("HIV", "STD", false),
            ("HIV", "PSY", false),
            ("ETHUD", "ETH", false),
        ];
        for (rule, have, expected) in table {
            assert_eq!(covers(rule, &s(have)), expected, "{rule} covers {have}");
        }
    }

    #[test]
    fn add_label_creates_meta_and_never_duplicates() {
        let mut r = json!({"resourceType": "Observation"});
        add_label(&mut r, OBSERVATION_VALUE, "REDACTED", Some("redacted"));
        add_label(&mut r, OBSERVATION_VALUE, "REDACTED", None);
        assert_eq!(
            r["meta"]["security"],
            json!([{"system": OBSERVATION_VALUE, "code": "REDACTED", "display": "redacted"}])
        );
    }
}
