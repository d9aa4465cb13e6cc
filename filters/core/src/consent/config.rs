//! The consent filter's JSON configuration, read with serde and compiled into a
//! [`super::ConsentPolicy`].

use crate::config::{parse_json, ConfigError};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsentConfig {
    /// Security-label rules, all applied; the strictest action wins.
    #[serde(default)]
    pub labels: Vec<LabelRuleConfig>,
    /// Where patients' Consents are fetched from; absent: Consents are not evaluated.
    #[serde(default)]
    pub consents: Option<ConsentSourceConfig>,
    #[serde(default)]
    pub purpose: PurposeConfig,
    /// A verified break-glass request (the rate-limit filter's mark) overrides label and
    /// Consent denials.
    #[serde(default = "yes")]
    pub break_glass_overrides: bool,
    /// Refuse a withheld single read with 404 (hide that it exists) instead of 403.
    #[serde(default)]
    pub hide_existence: bool,
    /// What happens to a search Bundle's `total` when entries are removed.
    #[serde(default)]
    pub total: TotalPolicy,
    /// Larger responses are refused (502 OperationOutcome), never passed unfiltered.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// 42 CFR Part 2: label released substance-use-disorder data as not to be redisclosed.
    #[serde(default)]
    pub part2: Option<Part2Config>,
    /// Earlier versions (vread, history): `refuse` (default) — a version cannot be judged by
    /// the labels and patient of the current one, which the response does not show; `allow`
    /// judges each version by its own labels only.
    #[serde(default)]
    pub versions: VersionsPolicy,
    /// Bulk Data `$export`: its NDJSON files are not filtered resource by resource, so under
    /// any label rule or Consent source a kick-off is refused (`refuse`, the default);
    /// `unfiltered` lets it through for pipelines entitled to everything.
    #[serde(default)]
    pub bulk_export: BulkExportPolicy,
    /// Conditional creates, updates, patches and deletes (and bundle entries with conditions):
    /// `refuse` (default) — their search answers (200 or 201, 412) for resources never
    /// checked, and their target is unknown before the server acts; `allow` lets them through
    /// for deployments that accept that (idempotent ingestion).
    #[serde(default)]
    pub conditional_writes: ConditionalWritesPolicy,
    /// Where the current resource is read before a write, delete or instance operation is
    /// let through (`GET {path}/{type}/{id}`): under restricting policies a caller may change
    /// only what it may read whole. Absent: such requests are refused under those policies.
    #[serde(default)]
    pub current_resource: Option<crate::smart::config::CurrentResourceConfig>,
    /// Client ids that may change a resource's security labels or the patient it belongs to
    /// (`meta.security`, the patient elements, `$meta-add`, `$meta-delete`).
    #[serde(default)]
    pub relabel_clients: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BulkExportPolicy {
    #[default]
    Refuse,
    Unfiltered,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConditionalWritesPolicy {
    #[default]
    Refuse,
    Allow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VersionsPolicy {
    #[default]
    Refuse,
    Allow,
}

fn yes() -> bool {
    true
}

fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Remove the resource (from a Bundle; a single read is refused).
    #[default]
    Drop,
    /// Remove the named elements and tag the resource `REDACTED`.
    Redact,
    /// Refuse a single read; in a Bundle, the same as drop.
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelRuleConfig {
    /// Label codes (a confidentiality level covers higher levels, a sensitivity family its
    /// members), e.g. `["R"]`, `["HIV", "PSY"]`.
    pub codes: Vec<String>,
    /// Purposes of use that may see such resources, e.g. `["TREAT", "ETREAT"]`.
    #[serde(default)]
    pub allow_purposes: Vec<String>,
    /// Client ids that may see them.
    #[serde(default)]
    pub allow_clients: Vec<String>,
    #[serde(default)]
    pub action: Action,
    /// With `redact`: the elements to remove.
    #[serde(default)]
    pub redact: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Conflict {
    #[default]
    DenyWins,
    PermitWins,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsentSourceConfig {
    /// The Envoy cluster of the FHIR server holding the Consents.
    pub cluster: String,
    /// The Consent search path on that server, e.g. `/fhir/Consent`.
    pub path: String,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_cache_seconds")]
    pub cache_seconds: u32,
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most distinct uncached patients in one response whose Consents may be fetched; a
    /// response naming more is refused (503) rather than released unchecked.
    #[serde(default = "default_max_patients")]
    pub max_patients: usize,
    /// Patients asked for per Consent search (`patient=Patient/a,Patient/b,…`).
    #[serde(default = "default_patients_per_search")]
    pub patients_per_search: usize,
    #[serde(default)]
    pub conflict: Conflict,
    /// Release resources whose Consents could not be fetched (default: withhold them).
    #[serde(default)]
    pub fail_open: bool,
    /// Every this many seconds each worker asks the server which Consents changed since it
    /// last asked (`_lastUpdated`) and forgets those patients' cached Consents: a new or
    /// changed Consent takes effect within this, not `cacheSeconds`. Off when absent.
    #[serde(default)]
    pub changes_poll_seconds: Option<u32>,
}

fn default_authority() -> String {
    "fhir".into()
}
fn default_cache_seconds() -> u32 {
    60
}
fn default_cache_size() -> usize {
    10_000
}
fn default_timeout_ms() -> u64 {
    2_000
}
fn default_max_patients() -> usize {
    1000
}
fn default_patients_per_search() -> usize {
    50
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PurposeConfig {
    /// Refused: the purpose of use comes from the authorization filter (a token claim, or a
    /// trusted zone's header), never from a header any client can send.
    #[serde(default)]
    pub header: Option<serde_json::Value>,
    /// The purpose when the request names none.
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TotalPolicy {
    /// Subtract what was removed from this page (exact for single-page results).
    #[default]
    Adjust,
    /// Remove `total` whenever an entry was removed.
    Omit,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Part2Config {
    #[serde(default = "default_part2_codes")]
    pub codes: Vec<String>,
    #[serde(default = "default_part2_system")]
    pub system: String,
    #[serde(default = "default_part2_code")]
    pub code: String,
}

fn default_part2_codes() -> Vec<String> {
    vec!["SUD".into(), "ETH".into()]
}
fn default_part2_system() -> String {
    super::labels::ACT_CODE.into()
}
fn default_part2_code() -> String {
    "NORDSCLCD".into()
}

/// Elements a redaction may never remove: the resource would stop being one.
const KEPT: &[&str] = &["resourceType", "id", "meta"];

impl ConsentConfig {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let config: ConsentConfig = parse_json(bytes)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        for (i, rule) in self.labels.iter().enumerate() {
            if rule.codes.is_empty() || rule.codes.iter().any(|c| c.is_empty()) {
                return Err(ConfigError::new(
                    format!("labels[{i}].codes"),
                    "needs at least one non-empty code",
                ));
            }
            match rule.action {
                Action::Redact if rule.redact.is_empty() => {
                    return Err(ConfigError::new(
                        format!("labels[{i}].redact"),
                        "names the elements to remove with action redact",
                    ))
                }
                Action::Drop | Action::Refuse if !rule.redact.is_empty() => {
                    return Err(ConfigError::new(
                        format!("labels[{i}].redact"),
                        "is only for action redact",
                    ))
                }
                _ => {}
            }
            if let Some(e) = rule
                .redact
                .iter()
                .position(|e| KEPT.contains(&e.as_str()) || e.is_empty())
            {
                return Err(ConfigError::new(
                    format!("labels[{i}].redact[{e}]"),
                    "resourceType, id and meta cannot be redacted",
                ));
            }
        }
        if let Some(c) = &self.consents {
            if c.cluster.is_empty() {
                return Err(ConfigError::new("consents.cluster", "is required"));
            }
            if !c.path.starts_with('/') || c.path.contains('?') {
                return Err(ConfigError::new(
                    "consents.path",
                    "must be a path starting with / and without a query",
                ));
            }
            if c.cache_size == 0
                || c.max_patients == 0
                || c.timeout_ms == 0
                || c.patients_per_search == 0
            {
                return Err(ConfigError::new(
                    "consents",
                    "cacheSize, maxPatients, patientsPerSearch and timeoutMs must be at least 1",
                ));
            }
            if c.changes_poll_seconds
                .is_some_and(|s| !(1..=300).contains(&s))
            {
                return Err(ConfigError::new(
                    "consents.changesPollSeconds",
                    "must be between 1 and 300",
                ));
            }
            if c.patients_per_search > 200 {
                return Err(ConfigError::new(
                    "consents.patientsPerSearch",
                    "at most 200 (the search URL grows with it)",
                ));
            }
        }
        if self.purpose.header.is_some() {
            return Err(ConfigError::new(
                "purpose.header",
                "is no longer read: the purpose of use comes from the authorization filter (the token's purposeOfUseClaim, or a trust zone's purposeOfUseHeader)",
            ));
        }
        if let Some(c) = &self.current_resource {
            c.check("currentResource")?;
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new("maxBodyBytes", "must be at least 1"));
        }
        Ok(())
    }
}
