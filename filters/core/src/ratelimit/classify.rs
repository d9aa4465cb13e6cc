//! Classes, keys, weights and tiers: what Envoy's limiters count for a routed request.

use crate::config::{parse_json, ConfigError};
use crate::outcome::IssueType;
use crate::routing::{Interaction, RoutedRequest};
use crate::Rejection;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The rate-limit class of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Read,
    Search,
    Write,
    Delete,
    /// `$export` kick-offs; status polling and file downloads are `Read`.
    Bulk,
    Validate,
    Metadata,
    CdsHooks,
    Operation,
}

impl Class {
    pub const ALL: &'static [Class] = &[
        Class::Read,
        Class::Search,
        Class::Write,
        Class::Delete,
        Class::Bulk,
        Class::Validate,
        Class::Metadata,
        Class::CdsHooks,
        Class::Operation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Search => "search",
            Class::Write => "write",
            Class::Delete => "delete",
            Class::Bulk => "bulk",
            Class::Validate => "validate",
            Class::Metadata => "metadata",
            Class::CdsHooks => "cds-hooks",
            Class::Operation => "operation",
        }
    }

    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.iter().copied().find(|c| c.name() == name)
    }
}

/// The class of a routed request.
pub fn class_of(r: &RoutedRequest) -> Class {
    class_of_parts(r.interaction, r.operation.as_deref())
}

/// The class of an interaction (and operation, for operations): what the routing filter's
/// `x-fhirgate-interaction` and `x-fhirgate-operation` headers say.
pub fn class_of_parts(interaction: Interaction, operation: Option<&str>) -> Class {
    use Interaction as I;
    match interaction {
        I::Capabilities | I::SmartConfiguration => Class::Metadata,
        I::Read | I::Vread | I::HistoryInstance | I::Passthrough => Class::Read,
        I::SearchType
        | I::SearchSystem
        | I::SearchCompartment
        | I::HistoryType
        | I::HistorySystem => Class::Search,
        I::Create
        | I::ConditionalCreate
        | I::Update
        | I::ConditionalUpdate
        | I::Patch
        | I::ConditionalPatch
        | I::Batch
        | I::Transaction => Class::Write,
        I::Delete | I::ConditionalDelete => Class::Delete,
        I::CdsDiscovery | I::CdsService | I::CdsFeedback => Class::CdsHooks,
        I::OperationSystem | I::OperationType | I::OperationInstance => match operation {
            Some("$export") => Class::Bulk,
            Some("$validate") => Class::Validate,
            _ => Class::Operation,
        },
    }
}

/// Who is calling, as far as rate limits care.
#[derive(Debug, Clone, Default)]
pub struct Caller<'a> {
    pub tenant: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub client_id: Option<&'a str>,
    /// A Backend Services (client-credentials, `system/`) token: limited per client.
    pub backend: bool,
    /// The peer address, used only for unauthenticated traffic.
    pub peer: Option<&'a str>,
}

/// A short, stable, non-reversible stand-in for a user or client id: rate-limit descriptors
/// leave the gateway (to the rate-limit service), ids should not.
pub(crate) fn pseudonym(kind: &str, id: &str) -> String {
    let digest = Sha256::digest(format!("{kind}:{id}").as_bytes());
    crate::hex::lower(&digest[..8])
}

/// Whose budget within the tenant: `user=<pseudonym>`, `client=<pseudonym>` for Backend
/// Services, or `peer=<address>` only for unauthenticated traffic.
pub fn principal_of(caller: &Caller) -> String {
    match (caller.backend, caller.client_id, caller.subject) {
        (true, Some(client), _) => format!("client={}", pseudonym("client", client)),
        (_, _, Some(user)) => format!("user={}", pseudonym("user", user)),
        (_, Some(client), None) => format!("client={}", pseudonym("client", client)),
        _ => format!("peer={}", caller.peer.unwrap_or("unknown")),
    }
}

/// The budget a request spends: per tenant and user, per tenant and client for Backend
/// Services, per tenant for bulk, per peer address only without a token.
pub fn key_of(class: Class, caller: &Caller) -> String {
    let tenant = caller.tenant.unwrap_or("default");
    if class == Class::Bulk {
        return format!("tenant={tenant}");
    }
    let principal = principal_of(caller);
    if principal.starts_with("peer=") {
        principal
    } else {
        format!("tenant={tenant};{principal}")
    }
}

/// One limit: so many hits per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tier {
    pub limit: u32,
    pub window_seconds: u32,
}

/// Extra cost of expensive searches and operations (FHIR cost weighting).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Weights {
    #[serde(default = "one")]
    pub per_include: u32,
    #[serde(default = "default_large_count")]
    pub large_count_above: u32,
    #[serde(default = "two")]
    pub large_count: u32,
    #[serde(default = "ten")]
    pub everything: u32,
    #[serde(default = "five")]
    pub transaction: u32,
}

fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn five() -> u32 {
    5
}
fn ten() -> u32 {
    10
}
fn default_large_count() -> u32 {
    100
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            per_include: 1,
            large_count_above: 100,
            large_count: 2,
            everything: 10,
            transaction: 5,
        }
    }
}

/// How many hits a request costs: one, plus each `_include`/`_revinclude`, plus a
/// `_count` above the threshold, plus `$everything` or a transaction/batch.
pub fn weight_of(r: &RoutedRequest, w: &Weights) -> u32 {
    weight_of_parts(
        r.interaction,
        r.operation.as_deref(),
        r.params.iter().map(|p| (p.name.as_str(), p.value.as_str())),
        w,
    )
}

/// [`weight_of`] from the parts: the interaction, the operation and the query parameters
/// (decoded names and values).
pub fn weight_of_parts<'a>(
    interaction: Interaction,
    operation: Option<&str>,
    params: impl Iterator<Item = (&'a str, &'a str)>,
    w: &Weights,
) -> u32 {
    let mut weight: u32 = 1;
    for (name, value) in params {
        let base = name.split(':').next().unwrap_or("");
        if base == "_include" || base == "_revinclude" {
            weight = weight.saturating_add(w.per_include);
        }
        if base == "_count" && value.parse::<u32>().is_ok_and(|n| n > w.large_count_above) {
            weight = weight.saturating_add(w.large_count);
        }
    }
    if operation == Some("$everything") {
        weight = weight.saturating_add(w.everything);
    }
    if matches!(interaction, Interaction::Batch | Interaction::Transaction) {
        weight = weight.saturating_add(w.transaction);
    }
    weight
}

/// The rate-limit configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitConfig {
    /// Tiers by class name; a class without a tier is not limited.
    #[serde(default = "default_tiers")]
    pub tiers: BTreeMap<String, Tier>,
    /// Per-tenant tiers, replacing the defaults class by class.
    #[serde(default)]
    pub tenants: BTreeMap<String, BTreeMap<String, Tier>>,
    /// Per-client tiers, replacing tenant and default tiers class by class.
    #[serde(default)]
    pub clients: BTreeMap<String, BTreeMap<String, Tier>>,
    #[serde(default)]
    pub weights: Weights,
    /// Also send the IETF `RateLimit` and `RateLimit-Policy` headers.
    #[serde(default)]
    pub ietf_headers: bool,
    /// Where the tenant comes from (the filter; the CLI takes it as input).
    #[serde(default)]
    pub tenant: super::filter::TenantConfig,
    /// Break-glass tokens: the header and the keys that sign them; absent disables it.
    #[serde(default)]
    pub break_glass: Option<super::filter::BreakGlassConfig>,
    /// Who enforces: `filter` (token buckets in this Envoy's shared data), `envoy` (only
    /// descriptor headers for Envoy's rate-limit filters) or `both`.
    #[serde(default)]
    pub enforcement: super::filter::Enforcement,
    /// Send `X-RateLimit-*` on admitted responses too (filter enforcement).
    #[serde(default)]
    pub remaining_headers: bool,
    /// Admit when the filter cannot decide (no routing headers, contended buckets) instead
    /// of answering 503.
    #[serde(default)]
    pub fail_open: bool,
}

fn default_tiers() -> BTreeMap<String, Tier> {
    let t = |limit, window_seconds| Tier {
        limit,
        window_seconds,
    };
    BTreeMap::from([
        ("read".into(), t(600, 60)),
        ("search".into(), t(600, 60)),
        ("write".into(), t(60, 60)),
        ("delete".into(), t(60, 60)),
        ("bulk".into(), t(2, 3600)),
        ("validate".into(), t(120, 60)),
        ("operation".into(), t(120, 60)),
        ("cds-hooks".into(), t(600, 60)),
    ])
}

#[derive(Debug, Clone)]
pub struct RateLimitPolicy {
    pub config: RateLimitConfig,
}

/// What Envoy's limiters are told about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub class: Class,
    pub key: String,
    pub weight: u32,
    pub tier: Option<Tier>,
}

fn check_tiers(field: &str, tiers: &BTreeMap<String, Tier>) -> Result<(), ConfigError> {
    for (class, tier) in tiers {
        if Class::from_name(class).is_none() {
            return Err(ConfigError::new(
                format!("{field}.{class}"),
                "is not a rate-limit class",
            ));
        }
        if tier.limit == 0 || tier.window_seconds == 0 || tier.window_seconds > 86_400 {
            return Err(ConfigError::new(
                format!("{field}.{class}"),
                "needs limit ≥ 1 and windowSeconds between 1 and 86400",
            ));
        }
    }
    Ok(())
}

impl RateLimitPolicy {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::compile(parse_json(bytes)?)
    }

    pub fn compile(config: RateLimitConfig) -> Result<Self, ConfigError> {
        check_tiers("tiers", &config.tiers)?;
        for (tenant, tiers) in &config.tenants {
            check_tiers(&format!("tenants.{tenant}"), tiers)?;
        }
        for (client, tiers) in &config.clients {
            check_tiers(&format!("clients.{client}"), tiers)?;
        }
        Ok(RateLimitPolicy { config })
    }

    /// The tier for a class: the client's, else the tenant's, else the default.
    pub fn tier(&self, class: Class, caller: &Caller) -> Option<Tier> {
        let name = class.name();
        caller
            .client_id
            .and_then(|c| self.config.clients.get(c))
            .and_then(|t| t.get(name))
            .or_else(|| {
                caller
                    .tenant
                    .and_then(|t| self.config.tenants.get(t))
                    .and_then(|t| t.get(name))
            })
            .or_else(|| self.config.tiers.get(name))
            .copied()
    }

    pub fn classify(&self, r: &RoutedRequest, caller: &Caller) -> Classification {
        let class = class_of(r);
        Classification {
            class,
            key: key_of(class, caller),
            weight: weight_of(r, &self.config.weights),
            tier: self.tier(class, caller),
        }
    }

    /// The 429: `Retry-After`, `X-RateLimit-*` (and the IETF headers when configured) and an
    /// OperationOutcome with code `throttled`.
    pub fn throttled(&self, class: Class, tier: Tier, reset_seconds: u32) -> Rejection {
        let retry = reset_seconds.max(1);
        let mut r = Rejection::new(
            429,
            "rate-limited",
            IssueType::Throttled,
            format!(
                "{} limit of {} per {} s reached; retry in {retry} s",
                class.name(),
                tier.limit,
                tier.window_seconds
            ),
        )
        .with_header("retry-after", retry.to_string())
        .with_header("x-ratelimit-limit", tier.limit.to_string())
        .with_header("x-ratelimit-remaining", "0")
        .with_header("x-ratelimit-reset", retry.to_string());
        if self.config.ietf_headers {
            r = r
                .with_header(
                    "ratelimit",
                    format!("limit={}, remaining=0, reset={retry}", tier.limit),
                )
                .with_header(
                    "ratelimit-policy",
                    format!("{};w={}", tier.limit, tier.window_seconds),
                );
        }
        r
    }
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
