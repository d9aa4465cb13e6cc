//! The rate-limit filter's decision for one request: class, budget and weight from the
//! routing filter's headers and the authorization filter's identity; break-glass; the token
//! bucket take (filter enforcement) or the descriptor headers (Envoy enforcement); the 429.

use super::breakglass::{BreakGlassError, BreakGlassVerifier};
use super::bucket::{take, Admit, SharedStore};
use super::classify::{
    class_of_parts, principal_of, weight_of_parts, Caller, Class, RateLimitConfig, RateLimitPolicy,
    Tier,
};
use crate::config::{parse_json, ConfigError};
use crate::headers;
use crate::outcome::IssueType;
use crate::routing::Interaction;
use crate::Rejection;
use base64::Engine;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TenantSource {
    /// The authorization filter's `x-fhirgate-tenant` (the token's `tenant` claim).
    #[default]
    Token,
    /// A header set by a trusted hop in front of this Envoy (which must strip clients' copies).
    Header,
    /// The request's host, mapped through `hosts`.
    Host,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TenantConfig {
    #[serde(default)]
    pub from: TenantSource,
    /// With `from: header`: the header's name.
    #[serde(default)]
    pub header: Option<String>,
    /// With `from: host`: host (without port) → tenant.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    /// The tenant when the source names none.
    #[serde(default = "default_tenant")]
    pub default: String,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig {
            from: TenantSource::Token,
            header: None,
            hosts: BTreeMap::new(),
            default: default_tenant(),
        }
    }
}

fn default_tenant() -> String {
    "default".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakGlassConfig {
    /// The request header carrying the token. Never forwarded upstream.
    #[serde(default = "default_break_glass_header")]
    pub header: String,
    /// Key id → HMAC key, base64 (at least 32 bytes once decoded).
    pub keys: BTreeMap<String, String>,
    /// Classes whose limits a valid token bypasses; absent means every class.
    #[serde(default)]
    pub bypass: Option<Vec<String>>,
}

fn default_break_glass_header() -> String {
    "x-break-glass".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Enforcement {
    #[default]
    Filter,
    Envoy,
    Both,
}

struct BreakGlassPolicy {
    header: String,
    verifier: BreakGlassVerifier,
    bypass: Vec<Class>,
}

/// The compiled configuration of the rate-limit filter.
pub struct RateLimitFilterPolicy {
    pub limits: RateLimitPolicy,
    tenant: TenantConfig,
    tenant_header: Option<String>,
    break_glass: Option<BreakGlassPolicy>,
}

/// What the filter reads from one request (header values as Envoy has them).
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimitRequest<'a> {
    /// `x-fhirgate-interaction` and `x-fhirgate-operation`, from the routing filter.
    pub interaction: Option<&'a str>,
    pub operation: Option<&'a str>,
    /// `:path`, for the query parameters that weigh.
    pub path: &'a str,
    /// `x-fhirgate-subject`, `-client-id`, `-tenant`, from the authorization filter.
    pub subject: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub token_tenant: Option<&'a str>,
    /// The configured tenant header's value, if any.
    pub tenant_header: Option<&'a str>,
    /// `:authority`.
    pub host: Option<&'a str>,
    /// The downstream address (`source.address`), used only without a token.
    pub peer: Option<&'a str>,
    /// The configured break-glass header's value, if any.
    pub break_glass: Option<&'a str>,
    /// `x-fhirgate-bundle-entries`: a batch or transaction weighs one more per entry.
    pub bundle_entries: Option<&'a str>,
}

/// An admitted request: what to add to it and to its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub class: Class,
    pub weight: u32,
    pub request_headers: Vec<(&'static str, String)>,
    pub response_headers: Vec<(&'static str, String)>,
    pub break_glass: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Admit(Admitted),
    /// `class` is None when the request could not be classified.
    Refuse {
        class: Option<Class>,
        rejection: Rejection,
    },
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !headers::is_internal(h)
}

const HEADER_RULE: &str = "must be a lower-case header name outside the x-fhirgate- prefix (the routing filter strips those)";

impl RateLimitFilterPolicy {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let config: RateLimitConfig = parse_json(bytes)?;
        Self::compile(config)
    }

    pub fn compile(config: RateLimitConfig) -> Result<Self, ConfigError> {
        let limits = RateLimitPolicy::compile(config)?;
        let config = &limits.config;
        let tenant = config.tenant.clone();
        if !valid_tenant(&tenant.default) {
            return Err(ConfigError::new(
                "tenant.default",
                "must be 1–64 letters, digits, '-', '_' or '.'",
            ));
        }
        for (host, t) in &tenant.hosts {
            if !valid_tenant(t) {
                return Err(ConfigError::new(
                    format!("tenant.hosts.{host}"),
                    "must be 1–64 letters, digits, '-', '_' or '.'",
                ));
            }
        }
        let tenant_header = match (tenant.from, &tenant.header) {
            (TenantSource::Header, None) => {
                return Err(ConfigError::new(
                    "tenant.header",
                    "is required with from: header",
                ))
            }
            (_, Some(h)) if !valid_header_name(h) => {
                return Err(ConfigError::new("tenant.header", HEADER_RULE))
            }
            (TenantSource::Header, Some(h)) => Some(h.clone()),
            _ => None,
        };
        if tenant.from == TenantSource::Host && tenant.hosts.is_empty() {
            return Err(ConfigError::new(
                "tenant.hosts",
                "is required with from: host",
            ));
        }
        let break_glass = match &config.break_glass {
            None => None,
            Some(bg) => {
                if !valid_header_name(&bg.header) {
                    return Err(ConfigError::new("breakGlass.header", HEADER_RULE));
                }
                if bg.keys.is_empty() {
                    return Err(ConfigError::new(
                        "breakGlass.keys",
                        "needs at least one key",
                    ));
                }
                let mut keys = HashMap::new();
                for (kid, b64) in &bg.keys {
                    let key = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .or_else(|_| {
                            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64.trim())
                        })
                        .map_err(|_| {
                            ConfigError::new(format!("breakGlass.keys.{kid}"), "is not base64")
                        })?;
                    if key.len() < 32 {
                        return Err(ConfigError::new(
                            format!("breakGlass.keys.{kid}"),
                            "must be at least 32 bytes",
                        ));
                    }
                    keys.insert(kid.clone(), key);
                }
                let bypass = match &bg.bypass {
                    None => Class::ALL.to_vec(),
                    Some(names) => names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| {
                            Class::from_name(n).ok_or_else(|| {
                                ConfigError::new(
                                    format!("breakGlass.bypass[{i}]"),
                                    "is not a rate-limit class",
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?,
                };
                Some(BreakGlassPolicy {
                    header: bg.header.clone(),
                    verifier: BreakGlassVerifier::new(keys),
                    bypass,
                })
            }
        };
        Ok(RateLimitFilterPolicy {
            limits,
            tenant,
            tenant_header,
            break_glass,
        })
    }

    /// The header the tenant is read from, when configured.
    pub fn tenant_header(&self) -> Option<&str> {
        self.tenant_header.as_deref()
    }

    /// The header a break-glass token arrives in, when configured.
    pub fn break_glass_header(&self) -> Option<&str> {
        self.break_glass.as_ref().map(|b| b.header.as_str())
    }

    fn enforcement(&self) -> Enforcement {
        self.limits.config.enforcement
    }

    fn tenant_of<'a>(&'a self, req: &RateLimitRequest<'a>) -> Result<&'a str, Rejection> {
        let named = match self.tenant.from {
            TenantSource::Token => req.token_tenant,
            TenantSource::Header => req.tenant_header,
            TenantSource::Host => req
                .host
                .map(host_without_port)
                .and_then(|h| self.tenant.hosts.get(h).map(String::as_str)),
        };
        match named {
            None => Ok(&self.tenant.default),
            Some(t) if valid_tenant(t) => Ok(t),
            Some(_) => Err(Rejection::new(
                400,
                "invalid-tenant",
                IssueType::Invalid,
                "the tenant is not a valid tenant id",
            )),
        }
    }

    fn unavailable(&self, reason: &'static str) -> Rejection {
        Rejection::new(
            503,
            reason,
            IssueType::Transient,
            "rate limiting could not decide; retry shortly",
        )
        .with_header("retry-after", "1")
    }

    /// Decides one request. `store` is Envoy's shared data (token buckets and the
    /// break-glass ledger); `now_ms` is milliseconds since the Unix epoch.
    pub fn decide(
        &self,
        req: &RateLimitRequest,
        store: &mut dyn SharedStore,
        now_ms: u64,
    ) -> Verdict {
        let Some(interaction) = req.interaction.and_then(Interaction::from_name) else {
            if self.limits.config.fail_open {
                return Verdict::Admit(Admitted {
                    class: Class::Read,
                    weight: 1,
                    request_headers: vec![],
                    response_headers: vec![],
                    break_glass: false,
                });
            }
            return Verdict::Refuse {
                class: None,
                rejection: self.unavailable("not-routed"),
            };
        };
        let class = class_of_parts(interaction, req.operation);
        let params = query_params(req.path);
        let entries = req
            .bundle_entries
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        let weight = weight_of_parts(
            interaction,
            req.operation,
            params.iter().map(|(n, v)| (n.as_ref(), v.as_ref())),
            &self.limits.config.weights,
        )
        .saturating_add(entries);
        let tenant = match self.tenant_of(req) {
            Ok(t) => t,
            Err(rejection) => {
                return Verdict::Refuse {
                    class: Some(class),
                    rejection,
                }
            }
        };
        let caller = Caller {
            tenant: Some(tenant),
            subject: req.subject,
            client_id: req.client_id,
            backend: req.client_id.is_some()
                && (req.subject.is_none() || req.subject == req.client_id),
            peer: req.peer.map(host_without_port),
        };
        let mut admitted = Admitted {
            class,
            weight,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            break_glass: false,
        };

        // Break-glass first: a bad token is refused even when no limit would apply.
        let mut bypass = false;
        if let (Some(bg), Some(token)) = (&self.break_glass, req.break_glass) {
            let now = (now_ms / 1000) as i64;
            match bg.verifier.verify(token, now, store) {
                Err(e) => {
                    return Verdict::Refuse {
                        class: Some(class),
                        rejection: break_glass_refusal(e),
                    }
                }
                // Break-glass binds to a verified subject: a token without `sub` (a backend
                // client's, say) never carries another user's emergency access (issue 15).
                Ok(claims) if req.subject != Some(claims.user.as_str()) => {
                    let _ = claims;
                    return Verdict::Refuse {
                        class: Some(class),
                        rejection: Rejection::new(
                            403,
                            "break-glass-user-mismatch",
                            IssueType::Forbidden,
                            "the break-glass token names another user, or the access token names none",
                        ),
                    };
                }
                Ok(claims) => {
                    admitted.break_glass = true;
                    bypass = bg.bypass.contains(&class);
                    admitted
                        .request_headers
                        .push((headers::BREAK_GLASS, printable(&claims.reason)));
                    admitted
                        .request_headers
                        .push((headers::BREAK_GLASS_USER, printable(&claims.user)));
                }
            }
        }

        let enforcement = self.enforcement();
        if matches!(enforcement, Enforcement::Envoy | Enforcement::Both) && !bypass {
            admitted
                .request_headers
                .push((headers::RL_CLASS, class.name().to_string()));
            admitted
                .request_headers
                .push((headers::RL_TENANT, tenant.to_string()));
            if class != Class::Bulk {
                admitted
                    .request_headers
                    .push((headers::RL_PRINCIPAL, principal_of(&caller)));
            }
            admitted
                .request_headers
                .push((headers::RL_WEIGHT, weight.to_string()));
        }
        if bypass || enforcement == Enforcement::Envoy {
            return Verdict::Admit(admitted);
        }
        let Some(tier) = self.limits.tier(class, &caller) else {
            return Verdict::Admit(admitted);
        };
        let bucket = format!(
            "fhirgate.rl/{}/{}",
            class.name(),
            super::classify::key_of(class, &caller)
        );
        match take(store, &bucket, tier, weight, now_ms) {
            Admit::Allowed {
                remaining,
                reset_seconds,
            } => {
                if self.limits.config.remaining_headers {
                    admitted.response_headers = self.quota_headers(tier, remaining, reset_seconds);
                }
                Verdict::Admit(admitted)
            }
            Admit::Limited {
                retry_after_seconds,
            } => Verdict::Refuse {
                class: Some(class),
                rejection: self.limits.throttled(class, tier, retry_after_seconds),
            },
            Admit::Contended if self.limits.config.fail_open => Verdict::Admit(admitted),
            Admit::Contended => Verdict::Refuse {
                class: Some(class),
                rejection: self.unavailable("rate-limit-contended"),
            },
        }
    }

    /// `X-RateLimit-*` (and the IETF form when configured) for an admitted request.
    pub fn quota_headers(
        &self,
        tier: Tier,
        remaining: u32,
        reset_seconds: u32,
    ) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("x-ratelimit-limit", tier.limit.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset", reset_seconds.to_string()),
        ];
        if self.limits.config.ietf_headers {
            h.push((
                "ratelimit",
                format!(
                    "limit={}, remaining={remaining}, reset={reset_seconds}",
                    tier.limit
                ),
            ));
            h.push((
                "ratelimit-policy",
                format!("{};w={}", tier.limit, tier.window_seconds),
            ));
        }
        h
    }
}

/// The `Retry-After` to add to a 429 that Envoy's own rate-limit filters answered (they send
/// `X-RateLimit-Reset` but no `Retry-After`): None when the response needs nothing.
pub fn retry_after_for_envoy_429(
    status: Option<&str>,
    retry_after: Option<&str>,
    reset: Option<&str>,
) -> Option<String> {
    if status != Some("429") || retry_after.is_some() {
        return None;
    }
    let seconds = reset
        .and_then(|r| r.trim().parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    Some(seconds.to_string())
}

fn break_glass_refusal(e: BreakGlassError) -> Rejection {
    match e {
        BreakGlassError::Unavailable => Rejection::new(
            503,
            e.reason(),
            IssueType::Transient,
            "break-glass could not be recorded; retry shortly",
        ),
        _ => Rejection::new(
            403,
            e.reason(),
            IssueType::Security,
            "the break-glass token was refused",
        ),
    }
}

/// Header values must be printable ASCII: anything else in a signed claim is replaced.
fn printable(v: &str) -> String {
    v.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// `host:port`, `[v6]:port` or a bare host → the host.
pub fn host_without_port(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => addr,
    }
}

/// The decoded query parameters of a path (the routing filter has already refused bad
/// escapes; anything undecodable here is kept as sent).
fn query_params(path: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode_str(n).decode_utf8_lossy(),
                percent_decode_str(v).decode_utf8_lossy(),
            )
        })
        .collect()
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
