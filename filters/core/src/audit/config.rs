//! The audit filter's JSON configuration.

use crate::config::{parse_json, ConfigError};
use base64::Engine;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// The FHIR base path, for templated routes.
    #[serde(default = "default_base")]
    pub base_path: String,
    /// The chain key (tamper evidence): required.
    pub chain: KeyConfig,
    /// Key the resource and patient ids in records (HMAC); absent: ids as requested.
    #[serde(default)]
    pub hash_ids: Option<KeyConfig>,
    /// Write each record to Envoy's log (`fhirgate.audit` lines).
    #[serde(default = "yes")]
    pub log: bool,
    /// Send records in batches to a collector through an Envoy cluster.
    #[serde(default)]
    pub collector: Option<CollectorConfig>,
    /// Hold each request until the collector acknowledges its access record; 503 when it does
    /// not within the timeout. Needs `collector`.
    #[serde(default)]
    pub fail_closed: Option<FailClosedConfig>,
    /// Refused: the purpose of use comes from the authorization filter (a verified source).
    #[serde(default)]
    pub purpose_header: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyConfig {
    #[serde(default = "default_kid")]
    pub kid: String,
    /// Base64, at least 32 bytes decoded.
    pub key: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Format {
    /// Newline-delimited JSON records.
    #[default]
    Json,
    /// A FHIR batch Bundle of AuditEvents, POSTed to a FHIR server's base.
    Fhir,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CollectorConfig {
    pub cluster: String,
    pub path: String,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default)]
    pub format: Format,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_flush")]
    pub flush_interval_ms: u64,
    /// Records waiting beyond this are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue_size: usize,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Attempts per batch before it is dropped (and counted).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailClosedConfig {
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_base() -> String {
    "/fhir/r4".into()
}
fn default_kid() -> String {
    "k1".into()
}
fn default_authority() -> String {
    "audit".into()
}
fn default_batch() -> usize {
    100
}
fn default_flush() -> u64 {
    1000
}
fn default_queue() -> usize {
    10_000
}
fn default_timeout() -> u64 {
    2000
}
fn default_attempts() -> u32 {
    3
}

/// A decoded key (base64, at least 32 bytes).
pub fn decode_key(field: &str, k: &KeyConfig) -> Result<Vec<u8>, ConfigError> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(k.key.trim())
        .map_err(|_| ConfigError::new(format!("{field}.key"), "is not base64"))?;
    if key.len() < 32 {
        return Err(ConfigError::new(
            format!("{field}.key"),
            "must be at least 32 bytes",
        ));
    }
    if k.kid.is_empty() || k.kid.len() > 64 {
        return Err(ConfigError::new(
            format!("{field}.kid"),
            "must be 1 to 64 characters",
        ));
    }
    Ok(key)
}

impl AuditConfig {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let c: AuditConfig = parse_json(bytes)?;
        if c.purpose_header.is_some() {
            return Err(ConfigError::new(
                "purposeHeader",
                "is no longer read: the purpose of use comes from the authorization filter (the token's purposeOfUseClaim, or a trust zone's purposeOfUseHeader)",
            ));
        }
        decode_key("chain", &c.chain)?;
        if let Some(h) = &c.hash_ids {
            decode_key("hashIds", h)?;
        }
        if let Some(col) = &c.collector {
            if col.cluster.is_empty() {
                return Err(ConfigError::new("collector.cluster", "is required"));
            }
            if !col.path.starts_with('/') {
                return Err(ConfigError::new("collector.path", "must start with /"));
            }
            if col.batch_size == 0
                || col.queue_size < col.batch_size
                || col.attempts == 0
                || col.timeout_ms == 0
                || col.flush_interval_ms == 0
            {
                return Err(ConfigError::new("collector", "batchSize ≥ 1, queueSize ≥ batchSize, attempts, timeoutMs and flushIntervalMs ≥ 1"));
            }
        }
        if c.fail_closed.is_some() && c.collector.is_none() {
            return Err(ConfigError::new(
                "failClosed",
                "needs a collector to acknowledge access records",
            ));
        }
        if !c.base_path.starts_with('/') || c.base_path.ends_with('/') {
            return Err(ConfigError::new(
                "basePath",
                "must start with / and not end with /",
            ));
        }
        Ok(c)
    }
}
