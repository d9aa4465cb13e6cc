//! The routing filter's configuration: read with serde, then compiled into a [`RoutingPolicy`].

use crate::config::{parse_json, ConfigError};
use crate::fhir;
use serde::Deserialize;

use super::{Interaction, PoolRule, RoutingPolicy};

/// The routing filter's JSON configuration (Envoy `configuration`, Istio `pluginConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutingConfig {
    /// Path prefix of the FHIR API, e.g. `/fhir/r4`. No trailing slash.
    #[serde(default = "default_base_path")]
    pub base_path: String,
    /// Allow-list of resource types; absent means every R4 type.
    #[serde(default)]
    pub resource_types: Option<Vec<String>>,
    #[serde(default = "default_max_path_bytes")]
    pub max_path_bytes: usize,
    #[serde(default = "default_max_query_bytes")]
    pub max_query_bytes: usize,
    #[serde(default = "default_max_query_params")]
    pub max_query_params: usize,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Path prefix of the CDS Hooks services, e.g. `/cds-services`; absent disables it.
    #[serde(default)]
    pub cds_hooks_path: Option<String>,
    /// Non-FHIR paths the gateway forwards without FHIR parsing (bulk status, file download).
    #[serde(default)]
    pub passthrough: Vec<PassthroughConfig>,
    /// Pool rules, first match wins; a request no rule matches goes to `defaultPool`.
    #[serde(default = "default_pools")]
    pub pools: Vec<PoolConfig>,
    #[serde(default = "default_pool")]
    pub default_pool: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PassthroughConfig {
    pub prefix: String,
    pub pool: String,
    #[serde(default = "default_passthrough_methods")]
    pub methods: Vec<String>,
}

/// One pool rule. Every criterion given must match (AND); within a criterion any listed
/// value matches (OR). A rule with no criteria is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PoolConfig {
    pub name: String,
    #[serde(default)]
    pub operations: Vec<String>,
    #[serde(default)]
    pub resource_types: Vec<String>,
    #[serde(default)]
    pub interactions: Vec<String>,
}

fn default_base_path() -> String {
    "/fhir/r4".into()
}
fn default_max_path_bytes() -> usize {
    2048
}
fn default_max_query_bytes() -> usize {
    8192
}
fn default_max_query_params() -> usize {
    100
}
fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_pool() -> String {
    "fhir".into()
}
fn default_passthrough_methods() -> Vec<String> {
    vec!["GET".into()]
}
fn default_pools() -> Vec<PoolConfig> {
    let op = |name: &str, operation: &str| PoolConfig {
        name: name.into(),
        operations: vec![operation.into()],
        resource_types: vec![],
        interactions: vec![],
    };
    vec![op("bulk", "$export"), op("validate", "$validate")]
}

/// Largest value accepted for any size limit: Envoy buffers at most this much anyway.
const LIMIT_CEILING: usize = 256 * 1024 * 1024;

impl RoutingConfig {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        parse_json(bytes)
    }

    /// Checks every field and builds the policy used on the request path.
    pub fn compile(self) -> Result<RoutingPolicy, ConfigError> {
        check_path_prefix("basePath", &self.base_path)?;
        if self.base_path == "/" {
            return Err(ConfigError::new(
                "basePath",
                "must not be `/`; use the FHIR base, e.g. `/fhir/r4`",
            ));
        }
        let allowed_types = match &self.resource_types {
            None => None,
            Some(list) => {
                if list.is_empty() {
                    return Err(ConfigError::new(
                        "resourceTypes",
                        "is empty: omit it to allow every R4 type",
                    ));
                }
                let mut types = Vec::with_capacity(list.len());
                for (i, name) in list.iter().enumerate() {
                    types.push(known_type(&format!("resourceTypes[{i}]"), name)?);
                }
                types.sort_unstable();
                types.dedup();
                Some(types)
            }
        };
        for (field, value) in [
            ("maxPathBytes", self.max_path_bytes),
            ("maxQueryBytes", self.max_query_bytes),
            ("maxQueryParams", self.max_query_params),
            ("maxBodyBytes", self.max_body_bytes),
        ] {
            if value == 0 || value > LIMIT_CEILING {
                return Err(ConfigError::new(
                    field,
                    format!("must be between 1 and {LIMIT_CEILING}"),
                ));
            }
        }
        if let Some(cds) = &self.cds_hooks_path {
            check_path_prefix("cdsHooksPath", cds)?;
            if overlaps(cds, &self.base_path) {
                return Err(ConfigError::new(
                    "cdsHooksPath",
                    "must not overlap basePath",
                ));
            }
        }
        let mut passthrough = Vec::with_capacity(self.passthrough.len());
        for (i, p) in self.passthrough.iter().enumerate() {
            let field = format!("passthrough[{i}]");
            if !p.prefix.starts_with('/')
                || p.prefix.contains(['?', '#', '%'])
                || p.prefix.len() < 2
            {
                return Err(ConfigError::new(
                    format!("{field}.prefix"),
                    "must be a path prefix such as `/fhir/r4/bulk-status/`",
                ));
            }
            check_pool_name(&format!("{field}.pool"), &p.pool)?;
            if p.methods.is_empty() {
                return Err(ConfigError::new(format!("{field}.methods"), "is empty"));
            }
            let mut methods = Vec::with_capacity(p.methods.len());
            for (j, m) in p.methods.iter().enumerate() {
                match super::METHODS.iter().find(|k| **k == m.as_str()) {
                    Some(k) => methods.push(*k),
                    None => {
                        return Err(ConfigError::new(
                            format!("{field}.methods[{j}]"),
                            format!("`{m}` is not one of {}", super::METHODS.join(", ")),
                        ))
                    }
                }
            }
            passthrough.push(super::Passthrough {
                prefix: p.prefix.clone(),
                pool: p.pool.clone(),
                methods,
            });
        }
        let mut pools = Vec::with_capacity(self.pools.len());
        for (i, p) in self.pools.iter().enumerate() {
            let field = format!("pools[{i}]");
            check_pool_name(&format!("{field}.name"), &p.name)?;
            if p.operations.is_empty() && p.resource_types.is_empty() && p.interactions.is_empty() {
                return Err(ConfigError::new(
                    field,
                    "needs at least one of operations, resourceTypes, interactions",
                ));
            }
            for (j, op) in p.operations.iter().enumerate() {
                if !fhir::is_valid_operation(op) {
                    return Err(ConfigError::new(
                        format!("{field}.operations[{j}]"),
                        format!("`{op}` is not an operation name like `$export`"),
                    ));
                }
            }
            let mut resource_types = Vec::with_capacity(p.resource_types.len());
            for (j, t) in p.resource_types.iter().enumerate() {
                resource_types.push(known_type(&format!("{field}.resourceTypes[{j}]"), t)?);
            }
            let mut interactions = Vec::with_capacity(p.interactions.len());
            for (j, name) in p.interactions.iter().enumerate() {
                match Interaction::from_name(name) {
                    Some(x) => interactions.push(x),
                    None => {
                        return Err(ConfigError::new(
                            format!("{field}.interactions[{j}]"),
                            format!("`{name}` is not a fhirgate interaction"),
                        ))
                    }
                }
            }
            pools.push(PoolRule {
                name: p.name.clone(),
                operations: p.operations.clone(),
                resource_types,
                interactions,
            });
        }
        check_pool_name("defaultPool", &self.default_pool)?;
        Ok(RoutingPolicy {
            base_path: self.base_path,
            allowed_types,
            max_path_bytes: self.max_path_bytes,
            max_query_bytes: self.max_query_bytes,
            max_query_params: self.max_query_params,
            max_body_bytes: self.max_body_bytes,
            cds_hooks_path: self.cds_hooks_path,
            passthrough,
            pools,
            default_pool: self.default_pool,
        })
    }
}

fn known_type(field: &str, name: &str) -> Result<&'static str, ConfigError> {
    fhir::resource_type(name)
        .ok_or_else(|| ConfigError::new(field, format!("`{name}` is not an R4 resource type")))
}

fn check_path_prefix(field: &str, path: &str) -> Result<(), ConfigError> {
    let ok = path.starts_with('/')
        && (path.len() == 1 || !path.ends_with('/'))
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'))
        && !path.split('/').any(|s| s == "." || s == "..");
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("`{path}` must be an absolute path without trailing slash, query or escapes"),
        ))
    }
}

/// Pool names become header values and Envoy route matches: keep them to a safe token.
fn check_pool_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("`{name}` must be 1-64 characters of a-z, 0-9 and `-`"),
        ))
    }
}

fn overlaps(a: &str, b: &str) -> bool {
    let within =
        |inner: &str, outer: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
    within(a, b) || within(b, a)
}

impl RoutingPolicy {
    /// Parse and compile in one step: what `on_configure` and `fhirgate config lint` run.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        RoutingConfig::from_json(bytes)?.compile()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(json: &str) -> ConfigError {
        match RoutingPolicy::from_json(json.as_bytes()) {
            Ok(_) => panic!("accepted {json}"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_empty_config_with_defaults() {
        let p = RoutingPolicy::from_json(b"").unwrap();
        assert_eq!(p.base_path, "/fhir/r4");
        assert_eq!(p.default_pool, "fhir");
        assert_eq!(p.pools.len(), 2);
        assert!(p.allowed_types.is_none());
    }

    #[test]
    fn refuses_bad_fields_naming_them() {
        let cases = [
            (r#"{"basePath": "fhir"}"#, "basePath"),
            (r#"{"basePath": "/fhir/"}"#, "basePath"),
            (r#"{"basePath": "/"}"#, "basePath"),
            (r#"{"basePath": "/fh ir"}"#, "basePath"),
            (r#"{"basePath": "/fhir/../x"}"#, "basePath"),
            (r#"{"basePath": 3}"#, "basePath"),
            (r#"{"resourceTypes": []}"#, "resourceTypes"),
            (
                r#"{"resourceTypes": ["Patient", "Foo"]}"#,
                "resourceTypes[1]",
            ),
            (r#"{"maxPathBytes": 0}"#, "maxPathBytes"),
            (r#"{"maxQueryBytes": -1}"#, "maxQueryBytes"),
            (r#"{"maxQueryParams": 0}"#, "maxQueryParams"),
            (r#"{"maxBodyBytes": 999999999999}"#, "maxBodyBytes"),
            (r#"{"cdsHooksPath": "cds"}"#, "cdsHooksPath"),
            (r#"{"cdsHooksPath": "/fhir/r4/cds"}"#, "cdsHooksPath"),
            (r#"{"cdsHooksPath": "/fhir"}"#, "cdsHooksPath"),
            (
                r#"{"pools": [{"name": "Bulk", "operations": ["$export"]}]}"#,
                "pools[0].name",
            ),
            (r#"{"pools": [{"name": "a"}]}"#, "pools[0]"),
            (
                r#"{"pools": [{"name": "a", "operations": ["export"]}]}"#,
                "pools[0].operations[0]",
            ),
            (
                r#"{"pools": [{"name": "a", "resourceTypes": ["Claim", "Nope"]}]}"#,
                "pools[0].resourceTypes[1]",
            ),
            (
                r#"{"pools": [{"name": "a", "interactions": ["reed"]}]}"#,
                "pools[0].interactions[0]",
            ),
            (
                r#"{"pools": [{"name": "a", "operation": ["$x"]}]}"#,
                "pools[0].operation",
            ),
            (r#"{"defaultPool": ""}"#, "defaultPool"),
            (
                r#"{"passthrough": [{"prefix": "x", "pool": "bulk"}]}"#,
                "passthrough[0].prefix",
            ),
            (
                r#"{"passthrough": [{"prefix": "/x/", "pool": "b b"}]}"#,
                "passthrough[0].pool",
            ),
            (
                r#"{"passthrough": [{"prefix": "/x/", "pool": "b", "methods": ["FETCH"]}]}"#,
                "passthrough[0].methods[0]",
            ),
            (
                r#"{"passthrough": [{"prefix": "/x/", "pool": "b", "methods": []}]}"#,
                "passthrough[0].methods",
            ),
        ];
        for (json, field) in cases {
            let err = refuse(json);
            assert_eq!(err.field, field, "{json}: {err}");
        }
    }

    #[test]
    fn refuses_unknown_top_level_field() {
        let err = refuse(r#"{"basepath": "/fhir"}"#);
        assert!(
            err.to_string().contains("unknown field `basepath`"),
            "{err}"
        );
    }

    #[test]
    fn compiles_allow_list_sorted_and_deduplicated() {
        let p = RoutingPolicy::from_json(
            br#"{"resourceTypes": ["Patient", "Observation", "Patient"]}"#,
        )
        .unwrap();
        assert_eq!(p.allowed_types, Some(vec!["Observation", "Patient"]));
    }
}
