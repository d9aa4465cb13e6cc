//! Reading a filter's JSON configuration: errors name the offending field.

use serde::de::DeserializeOwned;
use std::fmt;

/// A refused configuration, with the JSON path of the field at fault (`pools[1].name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl ConfigError {
    /// The same error, its field named from the module configuration's root
    /// (`issuers[0]` in the authz section is `authz.issuers[0]`).
    pub fn within(self, section: &str) -> Self {
        let field = match self.field.as_str() {
            "" | "." => section.to_string(),
            field => format!("{section}.{field}"),
        };
        ConfigError::new(field, self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() || self.field == "." {
            write!(f, "invalid config: {}", self.message)
        } else {
            write!(f, "invalid config at `{}`: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses JSON into `T`, reporting the path of the first field that does not fit.
/// Empty input means "all defaults" (`{}`), as Envoy passes no configuration then.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let trimmed = bytes.trim_ascii();
    let input: &[u8] = if trimmed.is_empty() { b"{}" } else { trimmed };
    let mut de = serde_json::Deserializer::from_slice(input);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        // serde_json appends "at line L column C"; keep it, it helps on multi-line files.
        ConfigError::new(field, inner.to_string())
    })?;
    de.end().map_err(|e| ConfigError::new("", e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Sample {
        #[serde(default)]
        max_bytes: u32,
        #[serde(default)]
        #[allow(dead_code)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn names_the_field_with_a_wrong_type() {
        let err = parse_json::<Sample>(br#"{"maxBytes": "lots"}"#).unwrap_err();
        assert_eq!(err.field, "maxBytes");
        assert!(err.to_string().contains("`maxBytes`"), "{err}");
    }

    #[test]
    fn names_the_nested_field() {
        let err = parse_json::<Sample>(br#"{"items": [{"name": "a"}, {"name": 3}]}"#).unwrap_err();
        assert_eq!(err.field, "items[1].name");
    }

    #[test]
    fn refuses_unknown_fields() {
        let err = parse_json::<Sample>(br#"{"maxbytes": 3}"#).unwrap_err();
        assert!(err.message.contains("unknown field `maxbytes`"), "{err}");
    }

    #[test]
    fn treats_empty_input_as_defaults() {
        let s = parse_json::<Sample>(b"  \n").unwrap();
        assert_eq!(s.max_bytes, 0);
    }

    #[test]
    fn refuses_trailing_garbage() {
        assert!(parse_json::<Sample>(br#"{} {}"#).is_err());
    }
}
