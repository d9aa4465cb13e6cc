//! The authorization filter's policy configuration, read with serde and compiled.
//! (Token verification settings — issuers, JWKS, introspection — join it with that work.)

use super::authz::{AuthzPolicy, InstanceCheck, OperationRule, PatientSearch};
use super::filter::{AuthzFilterPolicy, Zone};
use super::introspection::Introspection;
use super::jwks::JwksSource;
use super::token::{parse_jwks, Issuer, TokenVerifier, SUPPORTED_ALGORITHMS};
use crate::config::{parse_json, ConfigError};
use crate::fhir;
use crate::routing::Interaction;
use crate::routing::RoutingConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzConfig {
    /// The routing filter's configuration: the authorization filter parses requests the same
    /// way (envoy/render.py inlines envoy/routing.json here).
    #[serde(default)]
    pub routing: Option<RoutingConfig>,
    /// Trusted token issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Token ids (`jti`) refused even when otherwise valid.
    #[serde(default)]
    pub revoked_jtis: Vec<String>,
    /// Verified tokens remembered per worker until they expire.
    #[serde(default = "default_token_cache_size")]
    pub token_cache_size: usize,
    /// Trust Envoy's `jwt_authn` filter (before this one, after routing) to verify tokens:
    /// the payload it forwards in this header is used instead of verifying here. The fast
    /// path for RSA: Envoy verifies natively.
    #[serde(default)]
    pub jwt_authn: Option<JwtAuthnConfig>,
    /// RFC 7662 introspection of opaque (non-JWT) tokens; without it they are refused.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// `enforce`, or `report-only`: decide, count and mark, but let every request through.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Trust zones: requests whose mTLS peer URI SAN starts with one of a zone's prefixes get
    /// that zone's policy and mode; others get the top-level ones.
    #[serde(default)]
    pub zones: Vec<ZoneConfig>,
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
    /// Where the current version of a resource is read before an update, patch or delete
    /// under `patient/` scopes (without it those writes are refused).
    #[serde(default)]
    pub current_resource: Option<CurrentResourceConfig>,
    /// CDS Hooks services are called with the CDS client's signed JWT: verify it here.
    #[serde(default)]
    pub cds_hooks: Option<CdsHooksConfig>,
    /// A revocation list fetched every few seconds: tokens whose `jti` it names are refused,
    /// cached ones included.
    #[serde(default)]
    pub revocation: Option<RevocationConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RevocationConfig {
    /// The Envoy cluster that reaches the list.
    pub cluster: String,
    /// GET path of the list: `{"jtis": ["…", …]}`.
    pub path: String,
    #[serde(default = "default_fhir_authority")]
    pub authority: String,
    /// How often the list is fetched (how soon a revocation takes effect).
    #[serde(default = "default_revocation_refresh")]
    pub refresh_seconds: i64,
    #[serde(default = "default_current_timeout")]
    pub timeout_ms: u64,
    /// With no answer for this long the list is stale and every token is refused (503).
    #[serde(default = "default_revocation_stale")]
    pub max_stale_seconds: i64,
}

fn default_revocation_refresh() -> i64 {
    5
}
fn default_revocation_stale() -> i64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CdsHooksConfig {
    /// The public URL of the CDS services base, as CDS clients address it (each JWT's `aud`
    /// is this plus `/{service id}`), e.g. `https://gw.example.org/cds-services`.
    pub service_base_url: String,
    /// The `iss` of every trusted CDS client (an EHR); each must be one of `issuers`, whose
    /// keys verify its JWTs.
    pub issuers: Vec<String>,
    /// Longest `exp - iat` accepted (CDS Hooks: at most five minutes).
    #[serde(default = "default_cds_lifetime")]
    pub max_lifetime_seconds: i64,
}

fn default_cds_lifetime() -> i64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CurrentResourceConfig {
    /// The Envoy cluster of the FHIR server.
    pub cluster: String,
    /// The FHIR base on that server, e.g. `/fhir`: GET `{path}/{type}/{id}`.
    pub path: String,
    #[serde(default = "default_fhir_authority")]
    pub authority: String,
    #[serde(default = "default_current_timeout")]
    pub timeout_ms: u64,
}

impl CurrentResourceConfig {
    /// Refuses a source that cannot be fetched from, naming `field`'s members.
    pub fn check(&self, field: &str) -> Result<(), ConfigError> {
        if self.cluster.is_empty() {
            return Err(ConfigError::new(format!("{field}.cluster"), "is required"));
        }
        if !self.path.starts_with('/') || self.path.ends_with('/') {
            return Err(ConfigError::new(
                format!("{field}.path"),
                "must start with / and not end with one, e.g. /fhir",
            ));
        }
        if !(1..=30_000).contains(&self.timeout_ms) {
            return Err(ConfigError::new(
                format!("{field}.timeoutMs"),
                "must be between 1 and 30000",
            ));
        }
        Ok(())
    }
}

fn default_fhir_authority() -> String {
    "fhir".into()
}
fn default_current_timeout() -> u64 {
    2000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtAuthnConfig {
    /// jwt_authn's `forward_payload_header`; must carry the internal prefix, so the routing
    /// filter strips any client copy before jwt_authn sets it.
    pub payload_header: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntrospectionConfig {
    pub endpoint: String,
    /// The Envoy cluster that reaches `endpoint`.
    pub cluster: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default = "default_introspection_cache")]
    pub cache_seconds: i64,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default = "default_patient_claim")]
    pub patient_claim: String,
    #[serde(default = "default_purpose_claim")]
    pub purpose_of_use_claim: String,
}

fn default_mode() -> String {
    "enforce".into()
}

/// A trust zone: the policy fields it sets replace the top-level ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneConfig {
    pub name: String,
    /// URI SAN prefixes of the mTLS peer, e.g. `spiffe://hospital.example/ns/ehr/`.
    pub peer_uri_san_prefixes: Vec<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub patient_search: Option<String>,
    #[serde(default)]
    pub instance_check: Option<String>,
    #[serde(default)]
    pub public_interactions: Option<Vec<String>>,
    #[serde(default)]
    pub operations: Option<Vec<OperationConfig>>,
    /// A request header whose purpose of use this zone's peers may assert (used when the
    /// token carries none). Outside such zones a client's purpose header is ignored.
    #[serde(default)]
    pub purpose_of_use_header: Option<String>,
}

fn parse_mode(field: &str, mode: &str) -> Result<bool, ConfigError> {
    match mode {
        "enforce" => Ok(false),
        "report-only" => Ok(true),
        other => Err(ConfigError::new(
            field,
            format!("`{other}` is not `enforce` or `report-only`"),
        )),
    }
}

fn default_introspection_cache() -> i64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssuerConfig {
    /// The `iss` claim, exactly.
    pub issuer: String,
    /// Accepted `aud` values; at least one.
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The issuer's JWKS, inline (`{"keys": [...]}`); with `jwksUri`, the keys used until
    /// the first fetch answers.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Where the issuer publishes its JWKS, fetched through the Envoy cluster `jwksCluster`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks_cluster: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: i64,
    /// How long fetched keys keep verifying while the issuer does not answer.
    #[serde(default = "default_jwks_max_stale")]
    pub jwks_max_stale_seconds: i64,
    /// Least time between fetches caused by tokens naming an unknown `kid`.
    #[serde(default = "default_unknown_kid_interval")]
    pub jwks_unknown_kid_interval_seconds: i64,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: i64,
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// The claim holding the launch patient.
    #[serde(default = "default_patient_claim")]
    pub patient_claim: String,
    /// The claim holding the purpose of use (an HL7 PurposeOfUse code).
    #[serde(default = "default_purpose_claim")]
    pub purpose_of_use_claim: String,
}

fn default_jwks_refresh() -> i64 {
    300
}
fn default_jwks_max_stale() -> i64 {
    86_400
}
fn default_unknown_kid_interval() -> i64 {
    30
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_token_cache_size() -> usize {
    10_000
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_clock_skew() -> i64 {
    60
}
fn default_patient_claim() -> String {
    "patient".into()
}
fn default_purpose_claim() -> String {
    "purpose_of_use".into()
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
    let op = |name: &str, permissions: &str, all_types| OperationConfig {
        name: name.into(),
        permissions: permissions.into(),
        all_types,
    };
    vec![
        op("$everything", "rs", true),
        op("$lastn", "s", false),
        op("$validate", "c", false),
    ]
}

impl AuthzConfig {
    /// The whole filter: routing, token verification and policy.
    pub fn compile_filter(self) -> Result<AuthzFilterPolicy, ConfigError> {
        let routing = self
            .routing
            .clone()
            .map_or_else(|| crate::routing::RoutingConfig::from_json(b""), Ok)?
            .compile()
            .map_err(|e| ConfigError::new(format!("routing.{}", e.field), e.message))?;
        if self.max_token_bytes < 256 || self.max_token_bytes > 64 * 1024 {
            return Err(ConfigError::new(
                "maxTokenBytes",
                "must be between 256 and 65536",
            ));
        }
        let mut issuers = Vec::with_capacity(self.issuers.len());
        for (i, c) in self.issuers.iter().enumerate() {
            let field = format!("issuers[{i}]");
            if c.issuer.is_empty() {
                return Err(ConfigError::new(format!("{field}.issuer"), "is empty"));
            }
            if c.audiences.is_empty() || c.audiences.iter().any(String::is_empty) {
                return Err(ConfigError::new(
                    format!("{field}.audiences"),
                    "needs at least one non-empty audience",
                ));
            }
            for (j, a) in c.algorithms.iter().enumerate() {
                if !SUPPORTED_ALGORITHMS.contains(&a.as_str()) {
                    return Err(ConfigError::new(
                        format!("{field}.algorithms[{j}]"),
                        format!("`{a}` is not one of {}", SUPPORTED_ALGORITHMS.join(", ")),
                    ));
                }
            }
            if !(0..=600).contains(&c.clock_skew_seconds) {
                return Err(ConfigError::new(
                    format!("{field}.clockSkewSeconds"),
                    "must be between 0 and 600",
                ));
            }
            let source = match (&c.jwks_uri, &c.jwks_cluster) {
                (None, None) => None,
                (Some(uri), Some(cluster)) if !cluster.is_empty() => {
                    if !(10..=86_400).contains(&c.jwks_refresh_seconds) {
                        return Err(ConfigError::new(
                            format!("{field}.jwksRefreshSeconds"),
                            "must be between 10 and 86400",
                        ));
                    }
                    if c.jwks_max_stale_seconds < c.jwks_refresh_seconds {
                        return Err(ConfigError::new(
                            format!("{field}.jwksMaxStaleSeconds"),
                            "must be at least jwksRefreshSeconds",
                        ));
                    }
                    if !(1..=3600).contains(&c.jwks_unknown_kid_interval_seconds) {
                        return Err(ConfigError::new(
                            format!("{field}.jwksUnknownKidIntervalSeconds"),
                            "must be between 1 and 3600",
                        ));
                    }
                    let mut source = JwksSource::from_uri(
                        cluster,
                        uri,
                        c.jwks_refresh_seconds,
                        c.jwks_max_stale_seconds,
                    )
                    .map_err(|e| ConfigError::new(format!("{field}.jwksUri"), e))?;
                    source.unknown_kid_interval = c.jwks_unknown_kid_interval_seconds;
                    Some(source)
                }
                (Some(_), _) => {
                    return Err(ConfigError::new(
                        format!("{field}.jwksCluster"),
                        "names the Envoy cluster that reaches jwksUri",
                    ))
                }
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        format!("{field}.jwksUri"),
                        "is needed with jwksCluster",
                    ))
                }
            };
            let keys = match &c.jwks {
                Some(jwks) => {
                    parse_jwks(jwks).map_err(|e| ConfigError::new(format!("{field}.jwks"), e))?
                }
                None if source.is_some() || self.jwt_authn.is_some() => Vec::new(),
                None => {
                    return Err(ConfigError::new(
                        format!("{field}.jwks"),
                        "is needed without jwksUri",
                    ))
                }
            };
            if keys.is_empty() && source.is_none() && self.jwt_authn.is_none() {
                return Err(ConfigError::new(
                    format!("{field}.jwks"),
                    "holds no signing key",
                ));
            }
            issuers.push(Issuer {
                issuer: c.issuer.clone(),
                audiences: c.audiences.clone(),
                algorithms: c.algorithms.clone(),
                keys,
                clock_skew_seconds: c.clock_skew_seconds,
                required_claims: c.required_claims.clone(),
                patient_claim: c.patient_claim.clone(),
                purpose_claim: c.purpose_of_use_claim.clone(),
                source,
            });
        }
        let verifier = TokenVerifier {
            issuers,
            max_token_bytes: self.max_token_bytes,
            revoked_jtis: self.revoked_jtis.clone(),
        };
        let token_cache_size = self.token_cache_size;
        let jwt_authn_header = match &self.jwt_authn {
            None => None,
            Some(j)
                if crate::headers::is_internal(&j.payload_header)
                    && j.payload_header == j.payload_header.to_ascii_lowercase() =>
            {
                Some(j.payload_header.clone())
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "jwtAuthn.payloadHeader",
                    "must be a lower-case x-fhirgate-* header, so clients cannot forge it",
                ))
            }
        };
        let introspection = match &self.introspection {
            None => None,
            Some(c) => {
                if c.cluster.is_empty() {
                    return Err(ConfigError::new(
                        "introspection.cluster",
                        "names the Envoy cluster that reaches the endpoint",
                    ));
                }
                let mut i = Introspection::new(&c.cluster, &c.endpoint)
                    .map_err(|e| ConfigError::new("introspection.endpoint", e))?;
                if c.client_id.is_some() != c.client_secret.is_some() {
                    return Err(ConfigError::new(
                        "introspection.clientSecret",
                        "clientId and clientSecret go together",
                    ));
                }
                if !(0..=3600).contains(&c.cache_seconds) {
                    return Err(ConfigError::new(
                        "introspection.cacheSeconds",
                        "must be between 0 and 3600",
                    ));
                }
                i.client_id = c.client_id.clone();
                i.client_secret = c.client_secret.clone();
                i.cache_seconds = c.cache_seconds;
                i.audiences = c.audiences.clone();
                i.patient_claim = c.patient_claim.clone();
                i.purpose_claim = c.purpose_of_use_claim.clone();
                Some(i)
            }
        };
        let report_only = parse_mode("mode", &self.mode)?;
        let mut zones = Vec::with_capacity(self.zones.len());
        for (i, z) in self.zones.iter().enumerate() {
            let field = format!("zones[{i}]");
            let name_ok = !z.name.is_empty()
                && z.name.len() <= 64
                && z.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !name_ok {
                return Err(ConfigError::new(
                    format!("{field}.name"),
                    "must be 1-64 characters of a-z, 0-9 and `-`",
                ));
            }
            if z.peer_uri_san_prefixes.is_empty()
                || z.peer_uri_san_prefixes
                    .iter()
                    .any(|p| p.len() < 8 || !p.contains("://"))
            {
                return Err(ConfigError::new(
                    format!("{field}.peerUriSanPrefixes"),
                    "needs URI prefixes such as `spiffe://trust.domain/`",
                ));
            }
            let zone_config = AuthzConfig {
                patient_search: z
                    .patient_search
                    .clone()
                    .unwrap_or_else(|| self.patient_search.clone()),
                instance_check: z
                    .instance_check
                    .clone()
                    .unwrap_or_else(|| self.instance_check.clone()),
                public_interactions: z
                    .public_interactions
                    .clone()
                    .unwrap_or_else(|| self.public_interactions.clone()),
                operations: z
                    .operations
                    .clone()
                    .unwrap_or_else(|| self.operations.clone()),
                ..AuthzConfig::policy_only()
            };
            let mut policy = zone_config
                .compile()
                .map_err(|e| ConfigError::new(format!("{field}.{}", e.field), e.message))?;
            policy.read_before_write = self.current_resource.is_some();
            let zone_report_only = match &z.mode {
                Some(m) => parse_mode(&format!("{field}.mode"), m)?,
                None => report_only,
            };
            if let Some(h) = &z.purpose_of_use_header {
                if h.is_empty() || *h != h.to_ascii_lowercase() || crate::headers::is_internal(h) {
                    return Err(ConfigError::new(
                        format!("{field}.purposeOfUseHeader"),
                        "must be a lower-case header name outside the x-fhirgate- prefix",
                    ));
                }
            }
            zones.push(Zone {
                name: z.name.clone(),
                prefixes: z.peer_uri_san_prefixes.clone(),
                report_only: zone_report_only,
                policy,
                purpose_header: z.purpose_of_use_header.clone(),
            });
        }
        let current_resource = match &self.current_resource {
            None => None,
            Some(c) => {
                c.check("currentResource")?;
                Some(c.clone())
            }
        };
        let cds_hooks = match &self.cds_hooks {
            None => None,
            Some(c) => {
                let url_ok = (c.service_base_url.starts_with("https://")
                    || c.service_base_url.starts_with("http://"))
                    && !c.service_base_url.ends_with('/');
                if !url_ok {
                    return Err(ConfigError::new(
                        "cdsHooks.serviceBaseUrl",
                        "must be an absolute http(s) URL without a trailing slash",
                    ));
                }
                if c.issuers.is_empty() {
                    return Err(ConfigError::new(
                        "cdsHooks.issuers",
                        "names at least one trusted CDS client issuer",
                    ));
                }
                if let Some(unknown) = c
                    .issuers
                    .iter()
                    .find(|i| !self.issuers.iter().any(|x| &x.issuer == *i))
                {
                    return Err(ConfigError::new(
                        "cdsHooks.issuers",
                        format!("`{unknown}` is not one of `issuers` (whose keys would verify it)"),
                    ));
                }
                if !(1..=3600).contains(&c.max_lifetime_seconds) {
                    return Err(ConfigError::new(
                        "cdsHooks.maxLifetimeSeconds",
                        "must be between 1 and 3600",
                    ));
                }
                Some(c.clone())
            }
        };
        if let Some(r) = &self.revocation {
            if r.cluster.is_empty() {
                return Err(ConfigError::new("revocation.cluster", "is required"));
            }
            if !r.path.starts_with('/') {
                return Err(ConfigError::new("revocation.path", "must start with /"));
            }
            if !(1..=300).contains(&r.refresh_seconds) {
                return Err(ConfigError::new(
                    "revocation.refreshSeconds",
                    "must be between 1 and 300",
                ));
            }
            if r.max_stale_seconds < r.refresh_seconds * 2 || r.max_stale_seconds > 86_400 {
                return Err(ConfigError::new(
                    "revocation.maxStaleSeconds",
                    "must be at least twice refreshSeconds and at most 86400",
                ));
            }
            if !(1..=30_000).contains(&r.timeout_ms) {
                return Err(ConfigError::new(
                    "revocation.timeoutMs",
                    "must be between 1 and 30000",
                ));
            }
        }
        let revocation = self.revocation.clone();
        let policy = self.compile()?;
        let bulk_pool = routing.pool_of_operation("$export").map(str::to_string);
        Ok(AuthzFilterPolicy {
            bulk_pool,
            revocation,
            cds_hooks,
            current_resource,
            routing,
            verifier,
            policy,
            token_cache_size,
            jwt_authn_header,
            introspection,
            zones,
            report_only,
        })
    }

    /// A config with only the policy fields' defaults (for compiling a zone's policy).
    fn policy_only() -> Self {
        AuthzConfig {
            routing: None,
            issuers: Vec::new(),
            max_token_bytes: default_max_token_bytes(),
            revoked_jtis: Vec::new(),
            token_cache_size: default_token_cache_size(),
            jwt_authn: None,
            introspection: None,
            mode: default_mode(),
            zones: Vec::new(),
            patient_search: default_patient_search(),
            instance_check: default_instance_check(),
            public_interactions: default_public(),
            operations: default_operations(),
            current_resource: None,
            cds_hooks: None,
            revocation: None,
        }
    }

    pub fn compile(self) -> Result<AuthzPolicy, ConfigError> {
        let patient_search = match self.patient_search.as_str() {
            "narrow" => PatientSearch::Narrow,
            "refuse" => PatientSearch::Refuse,
            other => {
                return Err(ConfigError::new(
                    "patientSearch",
                    format!("`{other}` is not `narrow` or `refuse`"),
                ))
            }
        };
        let instance_check = match self.instance_check.as_str() {
            "body" => InstanceCheck::Body,
            "deny" => InstanceCheck::Deny,
            other => {
                return Err(ConfigError::new(
                    "instanceCheck",
                    format!("`{other}` is not `body` or `deny`"),
                ))
            }
        };
        let mut public = Vec::new();
        for (i, name) in self.public_interactions.iter().enumerate() {
            match Interaction::from_name(name) {
                Some(x) => public.push(x),
                None => {
                    return Err(ConfigError::new(
                        format!("publicInteractions[{i}]"),
                        format!("`{name}` is not a fhirgate interaction"),
                    ))
                }
            }
        }
        let mut operations = Vec::new();
        for (i, op) in self.operations.iter().enumerate() {
            if !fhir::is_valid_operation(&op.name) || op.name == "$export" {
                return Err(ConfigError::new(
                    format!("operations[{i}].name"),
                    format!("`{}` is not a configurable operation name", op.name),
                ));
            }
            let permissions = match super::scope::parse(&format!("system/*.{}", op.permissions)) {
                Ok(super::scope::Scope::Resource(s)) if !s.v1 => s.permissions,
                _ => {
                    return Err(ConfigError::new(
                        format!("operations[{i}].permissions"),
                        format!("`{}` is not an in-order subset of cruds", op.permissions),
                    ))
                }
            };
            operations.push(OperationRule {
                name: op.name.clone(),
                permissions,
                all_types: op.all_types,
            });
        }
        Ok(AuthzPolicy {
            patient_search,
            instance_check,
            public,
            operations,
            read_before_write: self.current_resource.is_some(),
        })
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
        assert_eq!(
            p.public,
            vec![Interaction::Capabilities, Interaction::SmartConfiguration]
        );
    }

    #[test]
    fn refuses_bad_fields_naming_them() {
        for (json, field) in [
            (r#"{"patientSearch": "maybe"}"#, "patientSearch"),
            (r#"{"instanceCheck": "never"}"#, "instanceCheck"),
            (
                r#"{"publicInteractions": ["read", "reed"]}"#,
                "publicInteractions[1]",
            ),
            (
                r#"{"operations": [{"name": "export", "permissions": "r"}]}"#,
                "operations[0].name",
            ),
            (
                r#"{"operations": [{"name": "$export", "permissions": "r"}]}"#,
                "operations[0].name",
            ),
            (
                r#"{"operations": [{"name": "$x", "permissions": "sr"}]}"#,
                "operations[0].permissions",
            ),
            (
                r#"{"operations": [{"name": "$x", "permissions": "read"}]}"#,
                "operations[0].permissions",
            ),
            (r#"{"patientsearch": "narrow"}"#, "patientsearch"),
        ] {
            let err = AuthzPolicy::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
        }
    }
}

#[cfg(test)]
mod filter_config_tests {
    use crate::smart::filter::AuthzFilterPolicy;

    #[test]
    fn refuses_bad_issuer_and_jwt_authn_fields_naming_them() {
        let jwks = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "a"}]}"#;
        let issuer = |extra: &str| {
            format!(
                r#"{{"issuers": [{{"issuer": "https://i", "audiences": ["a"], "jwks": {jwks}{extra}}}]}}"#
            )
        };
        assert!(AuthzFilterPolicy::from_json(issuer("").as_bytes()).is_ok());
        for (json, field) in [
            (issuer(r#", "algorithms": ["HS256"]"#), "issuers[0].algorithms[0]"),
            (issuer(r#", "algorithms": ["none"]"#), "issuers[0].algorithms[0]"),
            (issuer(r#", "clockSkewSeconds": 9999"#), "issuers[0].clockSkewSeconds"),
            (issuer(r#", "jwksUri": "https://i/jwks""#), "issuers[0].jwksCluster"),
            (issuer(r#", "jwksUri": "ftp://i/jwks", "jwksCluster": "c""#), "issuers[0].jwksUri"),
            (issuer(r#", "jwksUri": "https://i/jwks", "jwksCluster": "c", "jwksRefreshSeconds": 1"#), "issuers[0].jwksRefreshSeconds"),
            (issuer(r#", "jwksUri": "https://i/jwks", "jwksCluster": "c", "jwksUnknownKidIntervalSeconds": 0"#), "issuers[0].jwksUnknownKidIntervalSeconds"),
            (r#"{"issuers": [{"issuer": "https://i", "audiences": ["a"]}]}"#.to_string(), "issuers[0].jwks"),
            (r#"{"issuers": [{"issuer": "https://i", "audiences": [], "jwks": {"keys": []}}]}"#.to_string(), "issuers[0].audiences"),
            (r#"{"issuers": [{"issuer": "", "audiences": ["a"], "jwks": {"keys": []}}]}"#.to_string(), "issuers[0].issuer"),
            (r#"{"issuers": [{"issuer": "https://i", "audiences": ["a"], "jwks": {"keys": [{"kty": "oct", "k": "AA"}]}}]}"#.to_string(), "issuers[0].jwks"),
            (r#"{"jwtAuthn": {"payloadHeader": "x-jwt-payload"}}"#.to_string(), "jwtAuthn.payloadHeader"),
            (r#"{"maxTokenBytes": 10}"#.to_string(), "maxTokenBytes"),
            (r#"{"routing": {"basePath": "x"}}"#.to_string(), "routing.basePath"),
            (r#"{"introspection": {"endpoint": "idp/introspect", "cluster": "c"}}"#.to_string(), "introspection.endpoint"),
            (r#"{"mode": "shadow"}"#.to_string(), "mode"),
            (r#"{"zones": [{"name": "EHR", "peerUriSanPrefixes": ["spiffe://h/ehr/"]}]}"#.to_string(), "zones[0].name"),
            (r#"{"zones": [{"name": "ehr", "peerUriSanPrefixes": []}]}"#.to_string(), "zones[0].peerUriSanPrefixes"),
            (r#"{"zones": [{"name": "ehr", "peerUriSanPrefixes": ["ehr"]}]}"#.to_string(), "zones[0].peerUriSanPrefixes"),
            (r#"{"zones": [{"name": "ehr", "peerUriSanPrefixes": ["spiffe://h/ehr/"], "mode": "maybe"}]}"#.to_string(), "zones[0].mode"),
            (r#"{"zones": [{"name": "ehr", "peerUriSanPrefixes": ["spiffe://h/ehr/"], "patientSearch": "x"}]}"#.to_string(), "zones[0].patientSearch"),
            (r#"{"introspection": {"endpoint": "https://idp/introspect", "cluster": ""}}"#.to_string(), "introspection.cluster"),
            (r#"{"introspection": {"endpoint": "https://idp/i", "cluster": "c", "clientId": "x"}}"#.to_string(), "introspection.clientSecret"),
            (r#"{"introspection": {"endpoint": "https://idp/i", "cluster": "c", "cacheSeconds": -1}}"#.to_string(), "introspection.cacheSeconds"),
        ] {
            match AuthzFilterPolicy::from_json(json.as_bytes()) {
                Ok(_) => panic!("accepted {json}"),
                Err(e) => assert_eq!(e.field, field, "{json}: {e}"),
            }
        }
        assert!(AuthzFilterPolicy::from_json(br#"{"jwtAuthn": {"payloadHeader": "x-fhirgate-jwt-payload"}, "issuers": [{"issuer": "https://i", "audiences": ["a"]}]}"#).is_ok());
    }
}
