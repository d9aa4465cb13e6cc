//! The authorization filter's policy configuration, read with serde and compiled.
//! (Token verification settings — issuers, JWKS, introspection — join it with that work.)

use super::authz::{AuthzPolicy, InstanceCheck, OperationRule, PatientSearch};
use crate::config::{parse_json, ConfigError};
use crate::fhir;
use crate::routing::Interaction;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzConfig {
    /// `narrow` adds the patient to a search under patient/ scopes; `refuse` refuses it.
    #[serde(default = "default_patient_search")]
    pub patient_search: String,
    /// `body` decides instance access to compartment types on the response or request body;
    /// `deny` refuses it at request time.
    #[serde(default = "default_instance_check")]
    pub instance_check: String,
    /// Interactions allowed without a token.
    #[serde(default = "default_public")]
    pub public_interactions: Vec<String>,
    /// Operations a token may call; every other operation is refused ($export has its own
    /// Bulk Data rules).
    #[serde(default = "default_operations")]
    pub operations: Vec<OperationConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperationConfig {
    pub name: String,
    /// SMART v2 letters needed on the request's resource type, e.g. `rs`.
    pub permissions: String,
    /// The permissions are needed on every type (a `*` scope), as for `$everything`.
    #[serde(default)]
    pub all_types: bool,
}

fn default_patient_search() -> String {
    "narrow".into()
}
fn default_instance_check() -> String {
    "body".into()
}
fn default_public() -> Vec<String> {
    vec!["capabilities".into(), "smart-configuration".into()]
}
fn default_operations() -> Vec<OperationConfig> {
    let op = |name: &str, permissions: &str, all_types| OperationConfig { name: name.into(), permissions: permissions.into(), all_types };
    vec![op("$everything", "rs", true), op("$lastn", "s", false), op("$validate", "c", false)]
}

impl AuthzConfig {
    pub fn compile(self) -> Result<AuthzPolicy, ConfigError> {
        let patient_search = match self.patient_search.as_str() {
            "narrow" => PatientSearch::Narrow,
            "refuse" => PatientSearch::Refuse,
            other => return Err(ConfigError::new("patientSearch", format!("`{other}` is not `narrow` or `refuse`"))),
        };
        let instance_check = match self.instance_check.as_str() {
            "body" => InstanceCheck::Body,
            "deny" => InstanceCheck::Deny,
            other => return Err(ConfigError::new("instanceCheck", format!("`{other}` is not `body` or `deny`"))),
        };
        let mut public = Vec::new();
        for (i, name) in self.public_interactions.iter().enumerate() {
            match Interaction::from_name(name) {
                Some(x) => public.push(x),
                None => return Err(ConfigError::new(format!("publicInteractions[{i}]"), format!("`{name}` is not a fhirgate interaction"))),
            }
        }
        let mut operations = Vec::new();
        for (i, op) in self.operations.iter().enumerate() {
            if !fhir::is_valid_operation(&op.name) || op.name == "$export" {
                return Err(ConfigError::new(format!("operations[{i}].name"), format!("`{}` is not a configurable operation name", op.name)));
            }
            let permissions = match super::scope::parse(&format!("system/*.{}", op.permissions)) {
                Ok(super::scope::Scope::Resource(s)) if !s.v1 => s.permissions,
                _ => return Err(ConfigError::new(format!("operations[{i}].permissions"), format!("`{}` is not an in-order subset of cruds", op.permissions))),
            };
            operations.push(OperationRule { name: op.name.clone(), permissions, all_types: op.all_types });
        }
        Ok(AuthzPolicy { patient_search, instance_check, public, operations })
    }
}

impl AuthzPolicy {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        parse_json::<AuthzConfig>(bytes)?.compile()
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_compile() {
        let p = AuthzPolicy::from_json(b"").unwrap();
        assert_eq!(p.patient_search, PatientSearch::Narrow);
        assert_eq!(p.public, vec![Interaction::Capabilities, Interaction::SmartConfiguration]);
    }

    #[test]
    fn refuses_bad_fields_naming_them() {
        for (json, field) in [
            (r#"{"patientSearch": "maybe"}"#, "patientSearch"),
            (r#"{"instanceCheck": "never"}"#, "instanceCheck"),
            (r#"{"publicInteractions": ["read", "reed"]}"#, "publicInteractions[1]"),
            (r#"{"operations": [{"name": "export", "permissions": "r"}]}"#, "operations[0].name"),
            (r#"{"operations": [{"name": "$export", "permissions": "r"}]}"#, "operations[0].name"),
            (r#"{"operations": [{"name": "$x", "permissions": "sr"}]}"#, "operations[0].permissions"),
            (r#"{"operations": [{"name": "$x", "permissions": "read"}]}"#, "operations[0].permissions"),
            (r#"{"patientsearch": "narrow"}"#, "patientsearch"),
        ] {
            let err = AuthzPolicy::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
        }
    }
}
