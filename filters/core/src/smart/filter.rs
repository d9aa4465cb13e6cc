//! The authorization filter's whole decision, step by step as Envoy delivers the request:
//! head, then (when needed) request body, then (when needed) response body. The Wasm crate
//! only carries these steps between Envoy and here.

use super::authz::{AuthzDecision, AuthzPolicy, Grant, Needs};
use super::cache::{TokenCache, Verified};
use super::check::route_relative;
use super::config::AuthzConfig;
use super::introspection::{is_opaque, Introspection, IntrospectionError};
use super::jwks::{JwksSource, JwksState};
use super::token::{bearer_token, TokenError, TokenVerifier, VerifiedToken};
use crate::config::{parse_json, ConfigError};
use crate::headers;
use crate::outcome::IssueType;
use crate::routing::{RequestHead, RoutedRequest, RoutingPolicy};
use crate::Rejection;
use serde_json::Value;
use std::sync::Arc;

/// Everything the authorization filter runs on, compiled once in `on_configure`.
pub struct AuthzFilterPolicy {
    pub routing: RoutingPolicy,
    pub verifier: TokenVerifier,
    pub policy: AuthzPolicy,
    pub token_cache_size: usize,
    /// When set, tokens are verified by Envoy's jwt_authn, which forwards the payload here.
    pub jwt_authn_header: Option<String>,
    pub introspection: Option<Introspection>,
    pub zones: Vec<Zone>,
    /// The mode outside every zone.
    pub report_only: bool,
    /// Where writes under `patient/` scopes read the resource they change.
    pub current_resource: Option<super::config::CurrentResourceConfig>,
    /// How CDS Hooks clients' JWTs are verified; without it CDS services follow
    /// `publicInteractions`.
    pub cds_hooks: Option<super::config::CdsHooksConfig>,
    /// Where the revocation list is fetched from.
    pub revocation: Option<super::config::RevocationConfig>,
    /// The routing pool `$export` goes to: its passthrough paths are bulk job URLs.
    pub bulk_pool: Option<String>,
}

/// A trust zone, chosen by the mTLS peer's URI SAN: its own policy and mode.
pub struct Zone {
    pub name: String,
    pub prefixes: Vec<String>,
    pub report_only: bool,
    pub policy: AuthzPolicy,
    /// The client header whose purpose of use this zone's peers may assert.
    pub purpose_header: Option<String>,
}

impl AuthzFilterPolicy {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        parse_json::<AuthzConfig>(bytes)?.compile_filter()
    }
}

/// Internal marker: the token is opaque and not yet introspected. Never sent to a client.
const NEEDS_INTROSPECTION: &str = "needs-introspection";

/// A worker's authorization state: the compiled policy with the keys it currently trusts,
/// the JWKS fetch state of each issuer, and the verified-token cache.
pub struct AuthzRuntime {
    pub policy: AuthzFilterPolicy,
    pub jwks: Vec<JwksState>,
    pub cache: TokenCache,
    pub revoked: RevocationState,
}

/// The fetched revocation list of one worker.
#[derive(Debug, Default)]
pub struct RevocationState {
    jtis: std::collections::HashSet<String>,
    /// When the list last answered; None before the first answer.
    fetched_at: Option<i64>,
    /// When the VM started asking (a list that never answers goes stale from there).
    started_at: Option<i64>,
    next_due: i64,
    in_flight: bool,
}

/// An introspection call to dispatch: cluster, headers, form body.
pub type IntrospectionCall = (String, Vec<(&'static str, String)>, Vec<u8>);

/// A JWKS fetch to dispatch: the issuer's index and where to fetch from.
pub type JwksFetch = (usize, JwksSource);

impl AuthzRuntime {
    pub fn new(policy: AuthzFilterPolicy) -> Self {
        let jwks = vec![JwksState::default(); policy.verifier.issuers.len()];
        let cache = TokenCache::new(policy.token_cache_size);
        AuthzRuntime {
            policy,
            jwks,
            cache,
            revoked: RevocationState::default(),
        }
    }

    /// The revocation list fetch to dispatch now, if one is due (and none is under way):
    /// cluster, path, authority, timeout in milliseconds.
    pub fn revocation_due(&mut self, now: i64) -> Option<(String, String, String, u64)> {
        let r = self.policy.revocation.as_ref()?;
        self.revoked.started_at.get_or_insert(now);
        if self.revoked.in_flight || now < self.revoked.next_due {
            return None;
        }
        self.revoked.in_flight = true;
        Some((
            r.cluster.clone(),
            r.path.clone(),
            r.authority.clone(),
            r.timeout_ms,
        ))
    }

    /// The revocation list's answer (`status` None: the call failed). An unreadable answer
    /// keeps the list it had, which goes stale after `maxStaleSeconds`.
    pub fn revocation_fetched(&mut self, now: i64, status: Option<u16>, body: &[u8]) -> bool {
        let Some(r) = self.policy.revocation.as_ref() else {
            return false;
        };
        self.revoked.in_flight = false;
        self.revoked.next_due = now + r.refresh_seconds;
        #[derive(serde::Deserialize)]
        struct List {
            jtis: Vec<String>,
        }
        match (status, serde_json::from_slice::<List>(body)) {
            (Some(200), Ok(list)) => {
                self.revoked.jtis = list.jtis.into_iter().collect();
                self.revoked.fetched_at = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Why a token that verified must still be refused now: its `jti` is on the fetched list,
    /// or the list is stale (fail closed).
    fn revocation_refusal(&self, ex: &Exchange, now: i64) -> Option<Rejection> {
        let r = self.policy.revocation.as_ref()?;
        let token = ex.token()?;
        let since = self
            .revoked
            .fetched_at
            .or(self.revoked.started_at)
            .unwrap_or(now);
        if now - since > r.max_stale_seconds {
            return Some(
                Rejection::new(
                    503,
                    "revocation-list-unavailable",
                    IssueType::Transient,
                    "the token revocation list could not be fetched; try again later",
                )
                .with_header("retry-after", "5"),
            );
        }
        let revoked = token
            .jti
            .as_ref()
            .is_some_and(|j| self.revoked.jtis.contains(j));
        revoked.then(|| TokenError::Revoked.rejection())
    }

    /// The introspection call for the request's token: cluster, headers, body.
    pub fn introspection_request(&self, authorization: Option<&str>) -> Option<IntrospectionCall> {
        let endpoint = self.policy.introspection.as_ref()?;
        let token = bearer_token(authorization).ok()?;
        let (headers, body) = endpoint.request(token);
        Some((endpoint.cluster.clone(), headers, body))
    }

    /// Before introspecting: a token recently found inactive is refused without asking again.
    pub fn known_inactive(&mut self, authorization: Option<&str>, now: i64) -> Option<Rejection> {
        let token = bearer_token(authorization).ok()?;
        self.cache
            .known_inactive(token, now)
            .then(|| TokenError::Inactive.rejection())
    }

    /// The introspection answer (`status` None: none came). Active: the token is cached and
    /// the head is decided again; otherwise the refusal to send.
    pub fn introspected(
        &mut self,
        authorization: Option<&str>,
        status: Option<u16>,
        body: &[u8],
        now: i64,
    ) -> Result<(), Rejection> {
        let (Some(endpoint), Ok(token)) = (
            self.policy.introspection.as_ref(),
            bearer_token(authorization),
        ) else {
            return Err(Rejection::not_configured("fhirgate.authz"));
        };
        match endpoint.read(status, body, now) {
            Ok(verified) => {
                let grant = Grant::of(&verified);
                self.cache
                    .put_unless_inactive(token, Arc::new((verified, grant)), now);
                Ok(())
            }
            Err(IntrospectionError::Inactive) => {
                // An earlier answer (this worker's or another's) may have cached it as active:
                // inactive wins, for every worker sharing the cache.
                self.cache
                    .mark_inactive(token, now + endpoint.negative_cache_seconds, now);
                Err(TokenError::Inactive.rejection())
            }
            Err(IntrospectionError::WrongAudience) => Err(TokenError::WrongAudience.rejection()),
            Err(IntrospectionError::Unavailable) => Err(Rejection::new(
                503,
                "introspection-unavailable",
                IssueType::Exception,
                "the token could not be checked; try again later",
            )),
        }
    }

    /// Scheduled fetches now due; each is marked started.
    pub fn fetches_due(&mut self, now: i64) -> Vec<JwksFetch> {
        let mut due = Vec::new();
        if self.policy.jwt_authn_header.is_some() {
            return due; // Envoy fetches the keys
        }
        for (i, issuer) in self.policy.verifier.issuers.iter().enumerate() {
            if let Some(source) = &issuer.source {
                if self.jwks[i].due(source, now) {
                    self.jwks[i].started(now, false);
                    due.push((i, source.clone()));
                }
            }
        }
        due
    }

    /// After a `token-unknown-key` refusal: the fetch that may find the key, if allowed now.
    pub fn fetch_for_unknown_key(
        &mut self,
        authorization: Option<&str>,
        now: i64,
    ) -> Option<JwksFetch> {
        let token = bearer_token(authorization).ok()?;
        let i = self.policy.verifier.claimed_issuer(token)?;
        let source = self.policy.verifier.issuers[i].source.clone()?;
        if !self.jwks[i].may_fetch_for_unknown_kid(&source, now) {
            return None;
        }
        self.jwks[i].started(now, true);
        Some((i, source))
    }

    /// The answer to a fetch (`status` None: no answer). Returns whether the keys changed.
    pub fn fetched(&mut self, issuer: usize, now: i64, status: Option<u16>, body: &[u8]) -> bool {
        let Some(state) = self.jwks.get_mut(issuer) else {
            return false;
        };
        match state.finished(now, status, body) {
            Some(keys) => {
                self.policy.verifier.issuers[issuer].keys = keys;
                true
            }
            None => false,
        }
    }

    /// Drops the keys of issuers that have not answered for longer than allowed.
    pub fn expire_stale_keys(&mut self, now: i64) {
        for (i, issuer) in self.policy.verifier.issuers.iter_mut().enumerate() {
            if issuer
                .source
                .as_ref()
                .is_some_and(|s| self.jwks[i].stale(s, now))
                && !issuer.keys.is_empty()
            {
                issuer.keys.clear();
                // Cached verifications of its tokens go too (for every worker sharing them).
                self.cache.clear();
            }
        }
    }

    pub fn on_head(
        &mut self,
        head: &RequestHead,
        authorization: Option<&str>,
        forwarded: Option<&str>,
        peer: Option<&str>,
        now: i64,
    ) -> (Step, Exchange) {
        self.on_routed_head(head, None, authorization, forwarded, peer, now)
    }

    /// [`Self::on_head`] for a request the routing stage of the same module already parsed
    /// (`routed`): it is not parsed again.
    pub fn on_routed_head(
        &mut self,
        head: &RequestHead,
        routed: Option<RoutedRequest>,
        authorization: Option<&str>,
        forwarded: Option<&str>,
        peer: Option<&str>,
        now: i64,
    ) -> (Step, Exchange) {
        let (step, ex) = self.policy.on_routed_head(
            head,
            routed,
            authorization,
            forwarded,
            peer,
            now,
            &mut self.cache,
        );
        if matches!(step, Step::Deny(_) | Step::RefreshKeys | Step::Introspect) {
            return (step, ex);
        }
        match self.revocation_refusal(&ex, now) {
            Some(rejection) => {
                let step = self.policy.enforce(&ex, Step::Deny(rejection));
                (step, ex)
            }
            None => (step, ex),
        }
    }

    /// What to do when the keys cannot be refreshed for an unknown `kid` (or still lack it).
    /// An issuer whose JWKS we hold no keys from at all (unreachable since start, or expired
    /// as stale) is a gateway fault, not a bad token: 503 with Retry-After, so the client
    /// retries instead of sending its user back to log in.
    pub fn unknown_key_step(&self, authorization: Option<&str>, ex: &Exchange) -> Step {
        let keyless = bearer_token(authorization)
            .ok()
            .and_then(|t| self.policy.verifier.claimed_issuer(t))
            .and_then(|i| self.policy.verifier.issuers.get(i))
            .is_some_and(|issuer| issuer.source.is_some() && issuer.keys.is_empty());
        let rejection = if keyless {
            Rejection::new(
                503,
                "keys-unavailable",
                IssueType::Transient,
                "the token issuer's signing keys could not be fetched; try again later",
            )
            .with_header("retry-after", KEYS_RETRY_AFTER_SECONDS.to_string())
        } else {
            TokenError::UnknownKey.rejection()
        };
        self.policy.enforce(ex, Step::Deny(rejection))
    }
}

/// How long a client is told to wait when an issuer's keys are unavailable.
const KEYS_RETRY_AFTER_SECONDS: u32 = 5;

/// What the filter does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Forward, setting these internal headers, and `:path` when the query was narrowed.
    Allow {
        headers: Vec<(&'static str, String)>,
        path: Option<String>,
    },
    Deny(Rejection),
    /// Buffer the request body and call [`AuthzFilterPolicy::on_request_body`].
    WaitRequestBody,
    /// Report-only mode: forward unchanged with these headers; enforcing would have refused
    /// (or narrowed) for `reason`.
    ReportOnly {
        reason: &'static str,
        headers: Vec<(&'static str, String)>,
    },
    /// The token names a key its issuer's JWKS may have gained: fetch it (see
    /// [`AuthzRuntime::fetch_for_unknown_key`]) and decide the head again; if no fetch is
    /// possible, apply [`AuthzRuntime::unknown_key_step`].
    RefreshKeys,
    /// Ask the introspection endpoint about the (opaque) token and call
    /// [`AuthzRuntime::introspected`] with the answer, then decide the head again.
    Introspect,
    /// Forward (with these headers, and `:path` when the query was narrowed), hold the
    /// response and call [`AuthzFilterPolicy::on_response_body`] with it whole. The request's
    /// conditional and encoding headers are removed: the response must be a whole, readable body.
    WaitResponseBody {
        headers: Vec<(&'static str, String)>,
        path: Option<String>,
    },
    /// Read the resource a write under `patient/` scopes changes: GET `path` through the
    /// `currentResource` cluster, then call [`AuthzFilterPolicy::on_current_resource`] (the
    /// request waits, its body already read).
    FetchCurrent {
        path: String,
    },
    /// A CDS Hooks call with a verified client JWT: call
    /// [`AuthzFilterPolicy::check_cds_replay`] with the shared data, which remembers every
    /// `jti` until its token expires.
    CheckCdsReplay,
    /// A Bulk Data job URL (status, file, cancel): call [`AuthzFilterPolicy::check_job`] with
    /// the shared data, which holds whom each job belongs to.
    CheckJob,
    /// Replace the held response's body (and drop the headers that describe the resource)
    /// with this outcome, keeping its status: an upstream error under `patient/` scopes.
    Reduce(Rejection),
}

/// The per-request state between steps.
pub struct Exchange {
    /// The trust zone the request came through (None: the top-level policy).
    zone: Option<usize>,
    routed: Option<RoutedRequest>,
    /// The request's path without its query, and its raw query.
    path: String,
    raw_query: String,
    /// The request's token and grant, shared with the token cache.
    verified: Option<Verified>,
    /// Allowed under `patient/` scopes: the response is verified before it is released.
    confined: bool,
    /// A write's body, kept while its current resource is read.
    write_body: Option<Value>,
    /// An allowed `$export` kick-off: who started it and which types, for the job's URLs.
    export: Option<(String, Vec<String>)>,
    /// A bulk job URL this client may use: its manifest binds the files to the same client.
    job: Option<super::bulk::JobBinding>,
    /// A CDS Hooks call whose client JWT verified (its `jti` still to be checked for replay).
    cds: Option<super::token::CdsClaims>,
}

impl Exchange {
    /// An `$export` kick-off or a bulk job URL: its response headers bind job URLs.
    pub fn bulk_response_matters(&self) -> bool {
        self.export.is_some() || self.job.is_some()
    }

    fn token(&self) -> Option<&VerifiedToken> {
        self.verified.as_deref().map(|(token, _)| token)
    }

    fn grant(&self) -> Option<&Grant> {
        self.verified.as_deref().map(|(_, grant)| grant)
    }
}

/// The internal headers of a CDS Hooks call: its client (the JWT's `sub`, the CDS client id).
fn cds_headers(claims: &super::token::CdsClaims) -> Vec<(&'static str, String)> {
    let mut headers = vec![(headers::AUTHZ_DECISION, "allow".to_string())];
    if let Some(sub) = claims
        .subject
        .as_ref()
        .filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b)))
    {
        headers.push((headers::CLIENT_ID, sub.clone()));
    }
    headers
}

fn identity_headers(token: Option<&VerifiedToken>) -> Vec<(&'static str, String)> {
    let mut h = vec![(headers::AUTHZ_DECISION, "allow".to_string())];
    if let Some(t) = token {
        for (name, value) in [
            (headers::SUBJECT, &t.subject),
            (headers::CLIENT_ID, &t.client_id),
            (headers::TENANT, &t.tenant),
            (headers::LAUNCH_PATIENT, &t.patient),
            (headers::FHIR_USER, &t.fhir_user),
        ] {
            if let Some(v) = value
                .as_ref()
                .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)))
            {
                // Later filters (consent, audit) act on the launch patient: only a FHIR id.
                if name == headers::LAUNCH_PATIENT && !crate::fhir::is_valid_id(v) {
                    continue;
                }
                h.push((name, v.clone()));
            }
        }
        if let Some(p) = t
            .purpose_of_use
            .as_ref()
            .filter(|p| headers::is_purpose_code(p))
        {
            h.push((headers::PURPOSE_OF_USE, p.clone()));
        }
        if !t.scopes.is_empty() && t.scopes.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            h.push((headers::SCOPES, t.scopes.clone()));
        }
    }
    h
}

impl AuthzFilterPolicy {
    /// Decides on the request head. `authorization` is the `Authorization` header value;
    /// `now` is seconds since the Unix epoch.
    /// `forwarded` is the value of the jwt_authn payload header, in that mode.
    /// `peer` is the mTLS peer's URI SAN, which selects the trust zone.
    pub fn on_head(
        &self,
        head: &RequestHead,
        authorization: Option<&str>,
        forwarded: Option<&str>,
        peer: Option<&str>,
        now: i64,
        cache: &mut TokenCache,
    ) -> (Step, Exchange) {
        self.on_routed_head(head, None, authorization, forwarded, peer, now, cache)
    }

    /// [`Self::on_head`] with the request as the routing stage parsed it, when it ran in the
    /// same module (its body, if any, read too): not parsed a second time.
    #[allow(clippy::too_many_arguments)]
    pub fn on_routed_head(
        &self,
        head: &RequestHead,
        routed: Option<RoutedRequest>,
        authorization: Option<&str>,
        forwarded: Option<&str>,
        peer: Option<&str>,
        now: i64,
        cache: &mut TokenCache,
    ) -> (Step, Exchange) {
        let (step, ex) = self.head_step(head, routed, authorization, forwarded, peer, now, cache);
        if let Step::Deny(r) = &step {
            let fetchable = r.reason == TokenError::UnknownKey.reason()
                && bearer_token(authorization)
                    .ok()
                    .and_then(|t| self.verifier.claimed_issuer(t))
                    .is_some_and(|i| self.verifier.issuers[i].source.is_some());
            if fetchable {
                return (Step::RefreshKeys, ex);
            }
        }
        (self.enforce(&ex, step), ex)
    }

    fn zone_policy(&self, ex: &Exchange) -> (&AuthzPolicy, bool) {
        match ex.zone.and_then(|z| self.zones.get(z)) {
            Some(zone) => (&zone.policy, zone.report_only),
            None => (&self.policy, self.report_only),
        }
    }

    /// The client header this request's trust zone lets its peer assert a purpose of use in,
    /// when the token asserts none: the host reads it and calls [`Self::zone_purpose`].
    pub fn zone_purpose_header(&self, ex: &Exchange) -> Option<&str> {
        if ex.token().is_some_and(|t| t.purpose_of_use.is_some()) {
            return None;
        }
        ex.zone
            .and_then(|z| self.zones.get(z))
            .and_then(|z| z.purpose_header.as_deref())
    }

    /// The internal purpose-of-use header for a value of the zone's header: only a code.
    pub fn zone_purpose(
        &self,
        ex: &Exchange,
        value: Option<&str>,
    ) -> Option<(&'static str, String)> {
        self.zone_purpose_header(ex)?;
        value
            .filter(|v| headers::is_purpose_code(v))
            .map(|v| (headers::PURPOSE_OF_USE, v.to_string()))
    }

    /// Who a refused request came from, when its token verified: the internal identity
    /// headers (decision `deny`) the audit record names the principal and client by, so that
    /// probing with a valid token is attributable. Nothing for an unverified token.
    pub fn refusal_identity(&self, ex: &Exchange) -> Vec<(&'static str, String)> {
        let Some(token) = ex.token() else {
            return Vec::new();
        };
        let mut headers = identity_headers(Some(token));
        if let Some(first) = headers.first_mut() {
            first.1 = "deny".to_string();
        }
        headers
    }

    /// The zone's name, for logs and audit (`default` outside every zone).
    pub fn zone_name(&self, ex: &Exchange) -> &str {
        ex.zone
            .and_then(|z| self.zones.get(z))
            .map_or("default", |z| z.name.as_str())
    }

    /// In report-only mode a refusal or a narrowing becomes a marked pass-through.
    fn enforce(&self, ex: &Exchange, step: Step) -> Step {
        if !self.zone_policy(ex).1 {
            return step;
        }
        let mut headers = identity_headers(ex.token());
        let reason = match &step {
            Step::Deny(r) => r.reason,
            Step::Allow { path: Some(_), .. } | Step::WaitResponseBody { path: Some(_), .. } => {
                "narrowed"
            }
            _ => return step,
        };
        headers[0].1 = "report-only".to_string();
        headers.push((headers::AUTHZ_REASON, reason.to_string()));
        Step::ReportOnly { reason, headers }
    }

    #[allow(clippy::too_many_arguments)]
    fn head_step(
        &self,
        head: &RequestHead,
        pre_routed: Option<RoutedRequest>,
        authorization: Option<&str>,
        forwarded: Option<&str>,
        peer: Option<&str>,
        now: i64,
        cache: &mut TokenCache,
    ) -> (Step, Exchange) {
        let zone = peer.and_then(|san| {
            self.zones
                .iter()
                .position(|z| z.prefixes.iter().any(|p| san.starts_with(p.as_str())))
        });
        let mut ex = Exchange {
            zone,
            routed: None,
            path: String::new(),
            raw_query: String::new(),
            verified: None,
            confined: false,
            write_body: None,
            export: None,
            job: None,
            cds: None,
        };
        // A body the routing stage read is still this stage's to decide on (it is not parsed
        // again as a request, only read as the resource or Bundle it is).
        let read_body = pre_routed.as_ref().is_some_and(|r| r.has_body);
        let routed = match pre_routed.map_or_else(|| self.routing.route(head), Ok) {
            Ok(r) => r,
            Err(rejection) => return (Step::Deny(rejection), ex),
        };
        let (path, query) = head.path.split_once('?').unwrap_or((head.path, ""));
        ex.path = path.to_string();
        ex.raw_query = query.to_string();
        let cds_call = matches!(
            routed.interaction,
            crate::routing::Interaction::CdsService | crate::routing::Interaction::CdsFeedback
        );
        if let (true, Some(cds)) = (cds_call, &self.cds_hooks) {
            return match self.verify_cds(cds, authorization, &ex.path, now) {
                Ok(claims) => {
                    ex.cds = Some(claims);
                    ex.routed = Some(routed);
                    (Step::CheckCdsReplay, ex)
                }
                Err(rejection) => (Step::Deny(rejection), ex),
            };
        }
        if !self.zone_policy(&ex).0.public.contains(&routed.interaction) {
            let verified = match &self.jwt_authn_header {
                Some(_) => self.trust_envoy(authorization, forwarded, now),
                None => self.verify(authorization, now, cache),
            };
            match verified {
                Err(rejection) if rejection.reason == NEEDS_INTROSPECTION => {
                    return (Step::Introspect, ex)
                }
                Ok(verified) => ex.verified = Some(verified),
                Err(rejection) => return (Step::Deny(rejection), ex),
            }
        }
        // A body that can change the decision (form search parameters, a resource, a
        // Bundle) is read first.
        let awaiting = routed.awaiting_body || read_body;
        ex.routed = Some(routed);
        if awaiting {
            return (Step::WaitRequestBody, ex);
        }
        let step = self.decide(&mut ex, None);
        (step, ex)
    }

    /// jwt_authn mode: Envoy verified the token and forwarded its payload; a token it did not
    /// accept leaves no payload (it runs with `allow_missing_or_failed`, so every refusal is
    /// this filter's, with an OperationOutcome).
    fn trust_envoy(
        &self,
        authorization: Option<&str>,
        forwarded: Option<&str>,
        now: i64,
    ) -> Result<Verified, Rejection> {
        bearer_token(authorization).map_err(|e| e.rejection())?;
        let payload = forwarded.ok_or_else(|| TokenError::RejectedByEnvoy.rejection())?;
        let token = self
            .verifier
            .from_forwarded_payload(payload, now)
            .map_err(|e| e.rejection())?;
        let grant = Grant::of(&token);
        Ok(Arc::new((token, grant)))
    }

    /// Whether this worker holds keys for `issuer`: false only for an issuer it verifies
    /// with keys, whose keys it dropped as stale. Tokens it did not verify with keys (an
    /// introspected one) are not judged here.
    fn trusts_keys_of(&self, issuer: &str) -> bool {
        self.verifier
            .issuers
            .iter()
            .find(|i| i.issuer == issuer)
            .is_none_or(|i| !i.keys.is_empty())
    }

    fn verify(
        &self,
        authorization: Option<&str>,
        now: i64,
        cache: &mut TokenCache,
    ) -> Result<Verified, Rejection> {
        let token = bearer_token(authorization).map_err(|e| e.rejection())?;
        if let Some(hit) = cache.get(token, now) {
            // Another worker may have cached it (the native module's workers share the cache)
            // while this one no longer trusts the issuer's keys (they went stale here): then
            // it is verified again, and refused as it would be uncached.
            if self.trusts_keys_of(&hit.0.issuer) {
                return Ok(hit);
            }
        }
        if self.introspection.is_some() && is_opaque(token) {
            return Err(Rejection::new(
                401,
                NEEDS_INTROSPECTION,
                IssueType::Login,
                "introspection pending",
            ));
        }
        let verified = self
            .verifier
            .verify(token, now)
            .map_err(|e| e.rejection())?;
        let grant = Grant::of(&verified);
        let verified = Arc::new((verified, grant));
        cache.put(token, verified.clone());
        Ok(verified)
    }

    pub fn on_request_body(&self, ex: &mut Exchange, body: &[u8]) -> Step {
        let Some(routed) = ex.routed.as_mut() else {
            return Step::Deny(Rejection::not_configured("fhirgate.authz"));
        };
        if routed.awaiting_body {
            if let Err(rejection) = self.routing.route_body(routed, body) {
                return Step::Deny(rejection);
            }
        }
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let step = self.decide(ex, json.as_ref());
        self.enforce(ex, step)
    }

    fn decide(&self, ex: &mut Exchange, body: Option<&Value>) -> Step {
        let Some(routed) = ex.routed.as_ref() else {
            return Step::Deny(Rejection::not_configured("fhirgate.authz"));
        };
        // A CDS Hooks call was decided on its client's JWT (and jti) already.
        if let Some(claims) = ex.cds.as_ref() {
            return Step::Allow {
                headers: cds_headers(claims),
                path: None,
            };
        }
        let (policy, _) = self.zone_policy(ex);
        let mut decision = policy.decide(routed, &ex.raw_query, ex.grant());
        if let (
            AuthzDecision::Pending {
                needs: Needs::RequestBody,
            },
            Some(grant),
            Some(body),
        ) = (&decision, ex.grant(), body)
        {
            let route =
                |m: &str, u: &str, b: Option<&Value>| route_relative(&self.routing, m, u, b);
            decision = policy.decide_body(routed, grant, body, &route);
        }
        let ids = identity_headers(ex.token());
        if let AuthzDecision::Allow { .. } = decision {
            if routed.operation.as_deref() == Some("$export") {
                let from_body = body
                    .and_then(super::authz::export_body_types)
                    .unwrap_or_default();
                let types = super::authz::export_types(routed, &from_body)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                let client = ex
                    .token()
                    .and_then(|t| t.client_id.clone().or_else(|| t.subject.clone()))
                    .unwrap_or_default();
                ex.export = Some((client, types));
            }
            if routed.interaction == crate::routing::Interaction::Passthrough
                && self.bulk_pool.as_deref() == Some(routed.pool.as_str())
            {
                return Step::CheckJob;
            }
        }
        match decision {
            AuthzDecision::Allow { query, .. } => {
                let path = query.map(|q| format!("{}?{q}", ex.path));
                Step::Allow { headers: ids, path }
            }
            AuthzDecision::Deny(r) => Step::Deny(r),
            AuthzDecision::Pending {
                needs: Needs::ResponseBody,
            } => Step::WaitResponseBody {
                headers: ids,
                path: None,
            },
            AuthzDecision::Confined { query } => {
                ex.confined = true;
                Step::WaitResponseBody {
                    headers: ids,
                    path: query.map(|q| format!("{}?{q}", ex.path)),
                }
            }
            AuthzDecision::Pending {
                needs: Needs::RequestBody,
            } => Step::Deny(Rejection::new(
                403,
                "not-confinable",
                IssueType::Forbidden,
                "the request body could not be checked",
            )),
            AuthzDecision::Pending {
                needs: Needs::CurrentResource,
            } => match (
                &self.current_resource,
                routed.resource_type,
                routed.id.as_deref(),
            ) {
                (Some(source), Some(t), Some(id)) => {
                    if routed.has_body && body.is_none() {
                        // A body that is not JSON cannot be judged.
                        return Step::Deny(super::authz::deny::not_confinable());
                    }
                    ex.write_body = body.cloned();
                    Step::FetchCurrent {
                        path: format!("{}/{t}/{id}", source.path),
                    }
                }
                _ => Step::Deny(super::authz::deny::not_confinable()),
            },
        }
    }

    /// The CDS client's JWT on a call to `path` (`/cds-services/{id}` or `…/{id}/feedback`):
    /// `aud` must be the service's public URL, its lifetime within `maxLifetimeSeconds`.
    fn verify_cds(
        &self,
        cds: &super::config::CdsHooksConfig,
        authorization: Option<&str>,
        path: &str,
        now: i64,
    ) -> Result<super::token::CdsClaims, Rejection> {
        let token = bearer_token(authorization).map_err(|e| e.rejection())?;
        let base = self
            .routing
            .cds_hooks_path
            .as_deref()
            .unwrap_or("/cds-services");
        let rest = path.strip_prefix(base).unwrap_or("");
        let service = rest.strip_suffix("/feedback").unwrap_or(rest);
        let audience = format!("{}{service}", cds.service_base_url);
        let claims = self
            .verifier
            .verify_cds(token, now, &audience, &cds.issuers)
            .map_err(|e| e.rejection())?;
        let skew = 60;
        if claims.expires_at - claims.issued_at > cds.max_lifetime_seconds
            || claims.issued_at > now + skew
        {
            return Err(TokenError::Expired.rejection());
        }
        Ok(claims)
    }

    /// Refuses a CDS client JWT whose `jti` was seen before (on any worker), else goes on with
    /// the request.
    pub fn check_cds_replay(
        &self,
        ex: &mut Exchange,
        store: &mut dyn crate::ratelimit::bucket::SharedStore,
        now: i64,
    ) -> Step {
        let Some(claims) = ex.cds.as_ref() else {
            return Step::Deny(Rejection::not_configured("fhirgate.authz"));
        };
        let digest = <sha2::Sha256 as sha2::Digest>::digest(
            format!("{}\u{0}{}", claims.issuer, claims.jti).as_bytes(),
        );
        let key = format!("fhirgate.cds.jti.{}", crate::hex::lower(&digest[..16]));
        let (seen, cas) = store.get(&key);
        let still_valid = seen
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|exp| exp > now);
        // Envoy's shared data has no atomic insert-if-absent: two workers seeing the same new
        // jti within the same few microseconds could both pass (documented).
        let _ = cas;
        let fresh = !still_valid && store.set(&key, claims.expires_at.to_string().as_bytes(), None);
        if !fresh {
            return self.enforce(ex, Step::Deny(TokenError::Replayed.rejection()));
        }
        let headers = cds_headers(claims);
        if ex.routed.as_ref().is_some_and(|r| r.awaiting_body) {
            return Step::WaitRequestBody;
        }
        Step::Allow {
            headers,
            path: None,
        }
    }

    /// Decides a Bulk Data job URL on its binding in `store`: the same client that started the
    /// job, with scopes that still cover every exported type. Refused when there is no
    /// binding (a URL fhirgate never saw issued, or expired).
    pub fn check_job(
        &self,
        ex: &mut Exchange,
        store: &dyn crate::ratelimit::bucket::SharedStore,
        now: i64,
    ) -> Step {
        let client = ex
            .token()
            .and_then(|t| t.client_id.clone().or_else(|| t.subject.clone()));
        let binding = super::bulk::JobBinding::load(store, &ex.path, now);
        let step = match (binding, client, ex.grant()) {
            (Some(b), Some(client), Some(grant))
                if b.client == client
                    && super::authz::export_covered(
                        grant,
                        &b.types.iter().map(String::as_str).collect::<Vec<_>>(),
                    ) =>
            {
                ex.job = Some(b);
                Step::Allow {
                    headers: identity_headers(ex.token()),
                    path: None,
                }
            }
            _ => Step::Deny(super::authz::deny_bulk_job()),
        };
        self.enforce(ex, step)
    }

    /// After an allowed `$export` kick-off: a 202 with `Content-Location` binds that status URL
    /// to the client and its types. Returns whether a binding was stored.
    pub fn bind_export(
        &self,
        ex: &Exchange,
        status: u16,
        content_location: Option<&str>,
        store: &mut dyn crate::ratelimit::bucket::SharedStore,
        now: i64,
    ) -> bool {
        match (&ex.export, status, content_location) {
            (Some((client, types)), 202, Some(url)) if !client.is_empty() => {
                super::bulk::JobBinding {
                    client: client.clone(),
                    types: types.clone(),
                    expires_at: now + super::bulk::JOB_TTL_SECONDS,
                }
                .store(store, url)
            }
            _ => false,
        }
    }

    /// Whether a bulk job URL's answer is a manifest to read (a completed status: JSON).
    pub fn reads_manifest(&self, ex: &Exchange, status: u16, content_type: &str) -> bool {
        let ct = content_type.to_ascii_lowercase();
        ex.job.is_some() && status == 200 && ct.contains("json") && !ct.contains("ndjson")
    }

    /// A completed export's manifest: every file URL in it is bound like the job. Returns how
    /// many were bound.
    pub fn bind_manifest(
        &self,
        ex: &Exchange,
        body: &[u8],
        store: &mut dyn crate::ratelimit::bucket::SharedStore,
        now: i64,
    ) -> usize {
        let (Some(job), Some(urls)) = (&ex.job, super::bulk::manifest_urls(body)) else {
            return 0;
        };
        let binding = super::bulk::JobBinding {
            expires_at: now + super::bulk::JOB_TTL_SECONDS,
            ..job.clone()
        };
        urls.iter().filter(|u| binding.store(store, u)).count()
    }

    /// Decides a write held for its current resource, on the FHIR server's answer to
    /// [`Step::FetchCurrent`] (`status` 0 when the call failed).
    pub fn on_current_resource(&self, ex: &Exchange, status: u16, body: &[u8]) -> Step {
        let (Some(routed), Some(grant)) = (ex.routed.as_ref(), ex.grant()) else {
            return Step::Deny(Rejection::not_configured("fhirgate.authz"));
        };
        let current: Option<Value> = serde_json::from_slice(body).ok();
        let decision = self.zone_policy(ex).0.decide_current(
            routed,
            grant,
            status,
            current.as_ref(),
            ex.write_body.as_ref(),
        );
        let step = match decision {
            AuthzDecision::Allow { .. } => Step::Allow {
                headers: identity_headers(ex.token()),
                path: None,
            },
            AuthzDecision::Deny(r) => Step::Deny(r),
            _ => Step::Deny(super::authz::deny::current_unavailable()),
        };
        self.enforce(ex, step)
    }

    /// Decides on a held response. Outside `patient/` confinement responses other than 200
    /// pass: they carry no resource. Under it, every 2xx body is verified resource by resource,
    /// and an error's body is reduced to its status (an upstream OperationOutcome can echo a
    /// resource the patient may not see).
    /// `encoding` is the response's `Content-Encoding`: a compressed body cannot be checked.
    pub fn on_response_body(
        &self,
        ex: &Exchange,
        status: u16,
        encoding: Option<&str>,
        body: &[u8],
    ) -> Step {
        if encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity")) && !body.is_empty()
        {
            return self.enforce(ex, Step::Deny(super::authz::deny::unverifiable()));
        }
        let step = if ex.confined {
            self.confined_step(ex, status, body)
        } else {
            self.response_step(ex, status, body)
        };
        self.enforce(ex, step)
    }

    fn confined_step(&self, ex: &Exchange, status: u16, body: &[u8]) -> Step {
        let (Some(routed), Some(grant)) = (ex.routed.as_ref(), ex.grant()) else {
            return Step::Deny(Rejection::not_configured("fhirgate.authz"));
        };
        if !(200..300).contains(&status) {
            return if body.is_empty() {
                Step::Allow {
                    headers: vec![],
                    path: None,
                }
            } else {
                Step::Reduce(Rejection::upstream_error(status))
            };
        }
        if body.is_empty() {
            return Step::Allow {
                headers: vec![],
                path: None,
            };
        }
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return Step::Deny(super::authz::deny::unverifiable());
        };
        match self.zone_policy(ex).0.verify_confined(routed, grant, &json) {
            AuthzDecision::Allow { .. } => Step::Allow {
                headers: vec![],
                path: None,
            },
            AuthzDecision::Deny(r) => Step::Deny(r),
            _ => Step::Deny(super::authz::deny::unverifiable()),
        }
    }

    fn response_step(&self, ex: &Exchange, status: u16, body: &[u8]) -> Step {
        if status != 200 {
            return Step::Allow {
                headers: vec![],
                path: None,
            };
        }
        let (Some(routed), Some(grant)) = (ex.routed.as_ref(), ex.grant()) else {
            return Step::Deny(Rejection::not_configured("fhirgate.authz"));
        };
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return Step::Deny(Rejection::new(
                502,
                "unverifiable-response",
                IssueType::Exception,
                "the upstream response could not be checked",
            ));
        };
        match self.zone_policy(ex).0.decide_response(routed, grant, &json) {
            AuthzDecision::Allow { .. } => Step::Allow {
                headers: vec![],
                path: None,
            },
            AuthzDecision::Deny(r) => Step::Deny(r),
            AuthzDecision::Pending { .. } | AuthzDecision::Confined { .. } => {
                Step::Deny(super::authz::deny::unverifiable())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smart::bulk;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    /// jwt_authn mode: the tests hand in verified payloads, no signing needed.
    fn policy(extra: serde_json::Value) -> AuthzFilterPolicy {
        let mut config = json!({
            "jwtAuthn": {"payloadHeader": "x-fhirgate-jwt-payload"},
            "issuers": [{"issuer": "https://idp", "audiences": ["gw"]}],
            "zones": [{"name": "ehr-backend", "peerUriSanPrefixes": ["spiffe://hospital.example/ns/ehr/"], "mode": "report-only"},
                      {"name": "partners", "peerUriSanPrefixes": ["spiffe://partners.example/"], "publicInteractions": []}]
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        AuthzFilterPolicy::from_json(config.to_string().as_bytes()).unwrap()
    }

    fn payload(scope: &str) -> String {
        URL_SAFE_NO_PAD.encode(
            json!({"iss": "https://idp", "sub": "u", "scope": scope, "exp": NOW + 60}).to_string(),
        )
    }

    fn head(path: &str) -> RequestHead<'_> {
        RequestHead {
            method: "GET",
            path,
            ..RequestHead::default()
        }
    }

    fn step(p: &AuthzFilterPolicy, path: &str, scope: Option<&str>, peer: Option<&str>) -> Step {
        let forwarded = scope.map(payload);
        let auth = scope.map(|_| "Bearer a.b.c");
        p.on_head(
            &head(path),
            auth,
            forwarded.as_deref(),
            peer,
            NOW,
            &mut TokenCache::new(4),
        )
        .0
    }

    /// Leak class 11: revocation by a fetched list takes effect within seconds, cached
    /// tokens included, and a list that stops answering fails closed.
    mod revocation {
        use super::*;

        fn runtime() -> AuthzRuntime {
            AuthzRuntime::new(policy(
                json!({"revocation": {"cluster": "idp", "path": "/revocations", "refreshSeconds": 5, "maxStaleSeconds": 60}}),
            ))
        }

        fn request(r: &mut AuthzRuntime, jti: &str, now: i64) -> Step {
            let forwarded = URL_SAFE_NO_PAD
                .encode(json!({"iss": "https://idp", "sub": "u", "jti": jti, "scope": "user/*.rs", "exp": now + 600}).to_string());
            r.on_head(
                &head("/fhir/r4/Patient/1"),
                Some("Bearer a.b.c"),
                Some(&forwarded),
                None,
                now,
            )
            .0
        }

        fn reason(step: &Step) -> Option<&'static str> {
            match step {
                Step::Deny(r) => Some(r.reason),
                _ => None,
            }
        }

        #[test]
        fn a_listed_jti_is_refused_from_the_next_answer_on() {
            let mut r = runtime();
            assert!(r.revocation_due(NOW).is_some());
            assert!(r.revocation_due(NOW).is_none(), "one fetch at a time");
            assert!(r.revocation_fetched(NOW, Some(200), br#"{"jtis": []}"#));
            assert_eq!(reason(&request(&mut r, "j1", NOW + 1)), None);
            assert!(
                r.revocation_due(NOW + 4).is_none(),
                "not due before refreshSeconds"
            );
            assert!(r.revocation_due(NOW + 5).is_some());
            assert!(r.revocation_fetched(NOW + 5, Some(200), br#"{"jtis": ["j1"]}"#));
            assert_eq!(
                reason(&request(&mut r, "j1", NOW + 6)),
                Some("token-revoked")
            );
            assert_eq!(reason(&request(&mut r, "j2", NOW + 6)), None);
        }

        #[test]
        fn a_failed_or_unreadable_answer_keeps_the_list_until_it_goes_stale() {
            let mut r = runtime();
            r.revocation_due(NOW);
            r.revocation_fetched(NOW, Some(200), br#"{"jtis": ["j1"]}"#);
            r.revocation_due(NOW + 5);
            assert!(!r.revocation_fetched(NOW + 5, Some(500), b"oops"));
            r.revocation_due(NOW + 10);
            assert!(!r.revocation_fetched(NOW + 10, Some(200), b"{\"jtis\": 1}"));
            assert_eq!(
                reason(&request(&mut r, "j1", NOW + 30)),
                Some("token-revoked"),
                "the old list still counts"
            );
            assert_eq!(
                reason(&request(&mut r, "j2", NOW + 61)),
                Some("revocation-list-unavailable"),
                "stale: fail closed"
            );
        }

        #[test]
        fn a_list_that_never_answers_fails_closed_after_max_stale() {
            let mut r = runtime();
            r.revocation_due(NOW);
            r.revocation_fetched(NOW, None, b"");
            assert_eq!(reason(&request(&mut r, "j1", NOW + 30)), None);
            assert_eq!(
                reason(&request(&mut r, "j1", NOW + 61)),
                Some("revocation-list-unavailable")
            );
        }

        #[test]
        fn the_config_names_the_field() {
            for (extra, field) in [
                (
                    json!({"revocation": {"cluster": "", "path": "/r"}}),
                    "revocation.cluster",
                ),
                (
                    json!({"revocation": {"cluster": "c", "path": "r"}}),
                    "revocation.path",
                ),
                (
                    json!({"revocation": {"cluster": "c", "path": "/r", "refreshSeconds": 0}}),
                    "revocation.refreshSeconds",
                ),
                (
                    json!({"revocation": {"cluster": "c", "path": "/r", "refreshSeconds": 30, "maxStaleSeconds": 40}}),
                    "revocation.maxStaleSeconds",
                ),
            ] {
                let mut config = json!({"jwtAuthn": {"payloadHeader": "x-fhirgate-jwt-payload"}, "issuers": [{"issuer": "https://idp", "audiences": ["gw"]}]});
                config["revocation"] = extra["revocation"].clone();
                assert_eq!(
                    AuthzFilterPolicy::from_json(config.to_string().as_bytes())
                        .err()
                        .unwrap()
                        .field,
                    field
                );
            }
        }
    }

    /// Leak class 10: CDS Hooks services take only a CDS client's signed JWT, once.
    mod cds_hooks {
        use super::*;
        use crate::ratelimit::bucket::MemoryStore;
        use jwt_compact::alg::Ed25519;
        use jwt_compact::jwk::JsonWebKey;
        use jwt_compact::{AlgorithmExt, Claims, Header};

        const EHR: &str = "https://ehr.example";
        const BASE_URL: &str = "https://gw.example/cds-services";

        fn key() -> ed25519_compact::KeyPair {
            ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([9; 32]))
        }

        fn cds_policy() -> AuthzFilterPolicy {
            let mut jwk = serde_json::to_value(JsonWebKey::from(&key().pk)).unwrap();
            jwk["kid"] = json!("ehr-1");
            let config = json!({
                "issuers": [{"issuer": EHR, "audiences": ["https://gw.example/fhir/r4"], "algorithms": ["EdDSA"], "jwks": {"keys": [jwk]}}],
                "cdsHooks": {"serviceBaseUrl": BASE_URL, "issuers": [EHR]},
                "publicInteractions": ["capabilities", "cds-discovery"],
                "routing": {"cdsHooksPath": "/cds-services"}
            });
            AuthzFilterPolicy::from_json(config.to_string().as_bytes()).unwrap()
        }

        fn jwt(aud: &str, jti: &str, lifetime: i64) -> String {
            let mut c = Claims::new(
                json!({"iss": EHR, "sub": "ehr-client", "aud": aud, "jti": jti})
                    .as_object()
                    .unwrap()
                    .clone(),
            );
            c.issued_at = chrono::DateTime::from_timestamp(NOW, 0);
            c.expiration = chrono::DateTime::from_timestamp(NOW + lifetime, 0);
            Ed25519
                .token(&Header::empty().with_key_id("ehr-1"), &c, &key().sk)
                .unwrap()
        }

        fn call(
            p: &AuthzFilterPolicy,
            path: &str,
            token: Option<&str>,
            store: &mut MemoryStore,
        ) -> Step {
            let head = RequestHead {
                method: "POST",
                path,
                content_type: Some("application/json"),
                has_body: true,
                ..RequestHead::default()
            };
            let auth = token.map(|t| format!("Bearer {t}"));
            let (step, mut ex) = p.on_head(
                &head,
                auth.as_deref(),
                None,
                None,
                NOW,
                &mut TokenCache::new(4),
            );
            match step {
                Step::CheckCdsReplay => p.check_cds_replay(&mut ex, store, NOW),
                other => other,
            }
        }

        fn refused(step: &Step, reason: &str) -> bool {
            matches!(step, Step::Deny(r) if r.status == 401 && r.reason == reason)
        }

        #[test]
        fn a_service_call_needs_the_cds_clients_jwt_for_that_service_once() {
            let p = cds_policy();
            let mut store = MemoryStore::default();
            let path = "/cds-services/patient-greeter";
            assert!(refused(&call(&p, path, None, &mut store), "missing-token"));
            let fresh = jwt(&format!("{BASE_URL}/patient-greeter"), "j-1", 300);
            assert_eq!(
                call(&p, path, Some(&fresh), &mut store),
                Step::WaitRequestBody
            );
            assert!(
                refused(&call(&p, path, Some(&fresh), &mut store), "token-replayed"),
                "the same jti again"
            );
            let other = jwt(&format!("{BASE_URL}/other-service"), "j-2", 300);
            assert!(refused(
                &call(&p, path, Some(&other), &mut store),
                "token-wrong-audience"
            ));
            let long = jwt(&format!("{BASE_URL}/patient-greeter"), "j-3", 3600);
            assert!(
                refused(&call(&p, path, Some(&long), &mut store), "token-expired"),
                "longer than five minutes"
            );
            let feedback = jwt(&format!("{BASE_URL}/patient-greeter"), "j-4", 300);
            assert_eq!(
                call(
                    &p,
                    "/cds-services/patient-greeter/feedback",
                    Some(&feedback),
                    &mut store
                ),
                Step::WaitRequestBody
            );
        }

        #[test]
        fn a_cds_jwt_is_decided_allowed_once_its_body_is_read() {
            let p = cds_policy();
            let mut store = MemoryStore::default();
            let head = RequestHead {
                method: "POST",
                path: "/cds-services/patient-greeter",
                content_type: Some("application/json"),
                has_body: true,
                ..RequestHead::default()
            };
            let auth = format!(
                "Bearer {}",
                jwt(&format!("{BASE_URL}/patient-greeter"), "j-9", 300)
            );
            let (step, mut ex) =
                p.on_head(&head, Some(&auth), None, None, NOW, &mut TokenCache::new(4));
            assert_eq!(step, Step::CheckCdsReplay);
            assert_eq!(
                p.check_cds_replay(&mut ex, &mut store, NOW),
                Step::WaitRequestBody
            );
            match p.on_request_body(
                &mut ex,
                br#"{"hook":"patient-view","hookInstance":"x","context":{}}"#,
            ) {
                Step::Allow { headers, .. } => {
                    assert!(headers.contains(&(headers::CLIENT_ID, "ehr-client".to_string())))
                }
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn discovery_stays_public_and_the_config_names_the_field() {
            let p = cds_policy();
            let head = RequestHead {
                method: "GET",
                path: "/cds-services",
                ..RequestHead::default()
            };
            let (step, _) = p.on_head(&head, None, None, None, NOW, &mut TokenCache::new(4));
            assert!(matches!(step, Step::Allow { .. }), "{step:?}");
            let bad =
                json!({"issuers": [], "cdsHooks": {"serviceBaseUrl": BASE_URL, "issuers": [EHR]}});
            assert_eq!(
                AuthzFilterPolicy::from_json(bad.to_string().as_bytes())
                    .err()
                    .unwrap()
                    .field,
                "cdsHooks.issuers"
            );
        }
    }

    /// Leak class 5: bulk job URLs are the kicking client's only, across workers.
    mod bulk_jobs {
        use super::*;
        use crate::ratelimit::bucket::MemoryStore;

        fn bulk_policy() -> AuthzFilterPolicy {
            policy(json!({"routing": {"passthrough": [
                {"prefix": "/fhir/r4/bulk-status/", "pool": "bulk", "methods": ["GET", "DELETE"]},
                {"prefix": "/fhir/r4/bulk-files/", "pool": "bulk", "methods": ["GET"]}],
                "pools": [{"name": "bulk", "operations": ["$export"]}]}}))
        }

        fn exchange(
            p: &AuthzFilterPolicy,
            method: &str,
            path: &str,
            scope: &str,
            client: &str,
        ) -> (Step, Exchange) {
            let forwarded = URL_SAFE_NO_PAD
                .encode(json!({"iss": "https://idp", "sub": "svc", "client_id": client, "scope": scope, "exp": NOW + 60}).to_string());
            let head = RequestHead {
                method,
                path,
                ..RequestHead::default()
            };
            p.on_head(
                &head,
                Some("Bearer a.b.c"),
                Some(&forwarded),
                None,
                NOW,
                &mut TokenCache::new(4),
            )
        }

        const STATUS: &str = "http://gw.example/fhir/r4/bulk-status/job-1";

        fn started(p: &AuthzFilterPolicy, store: &mut MemoryStore, types: &str) {
            let path = if types.is_empty() {
                "/fhir/r4/$export".to_string()
            } else {
                format!("/fhir/r4/$export?_type={types}")
            };
            let (step, ex) = exchange(p, "GET", &path, "system/*.rs", "etl");
            assert!(matches!(step, Step::Allow { .. }), "{step:?}");
            assert!(
                !p.bind_export(&ex, 500, Some(STATUS), store, NOW),
                "only an accepted kick-off binds"
            );
            assert!(p.bind_export(&ex, 202, Some(STATUS), store, NOW));
        }

        fn poll(
            p: &AuthzFilterPolicy,
            store: &MemoryStore,
            method: &str,
            path: &str,
            scope: &str,
            client: &str,
            now: i64,
        ) -> (Step, Exchange) {
            let (step, mut ex) = exchange(p, method, path, scope, client);
            assert_eq!(step, Step::CheckJob, "{method} {path}");
            let step = p.check_job(&mut ex, store, now);
            (step, ex)
        }

        fn refused(step: &Step) -> bool {
            matches!(step, Step::Deny(r) if r.status == 403 && r.reason == "bulk-job-forbidden")
        }

        #[test]
        fn the_kicking_client_polls_cancels_and_downloads_and_no_one_else() {
            let p = bulk_policy();
            let mut store = MemoryStore::default();
            started(&p, &mut store, "");
            let status = "/fhir/r4/bulk-status/job-1";
            for method in ["GET", "DELETE"] {
                let (step, _) = poll(&p, &store, method, status, "system/*.rs", "etl", NOW + 5);
                assert!(matches!(step, Step::Allow { .. }), "{method}: {step:?}");
                let (step, _) = poll(
                    &p,
                    &store,
                    method,
                    status,
                    "system/*.rs",
                    "other-app",
                    NOW + 5,
                );
                assert!(refused(&step), "another client, {method}: {step:?}");
                let (step, _) = poll(&p, &store, method, status, "openid", "etl", NOW + 5);
                assert!(
                    refused(&step),
                    "scopes that no longer cover the export: {step:?}"
                );
            }
            let (step, _) = poll(
                &p,
                &store,
                "GET",
                status,
                "system/*.rs",
                "etl",
                NOW + bulk::JOB_TTL_SECONDS + 1,
            );
            assert!(refused(&step), "expired");
            let (step, _) = poll(
                &p,
                &store,
                "GET",
                "/fhir/r4/bulk-status/job-2",
                "system/*.rs",
                "etl",
                NOW,
            );
            assert!(refused(&step), "a URL fhirgate never saw issued");
        }

        #[test]
        fn narrower_scopes_do_not_cover_a_wider_export() {
            let p = bulk_policy();
            let mut store = MemoryStore::default();
            started(&p, &mut store, "Patient,Observation");
            let status = "/fhir/r4/bulk-status/job-1";
            let (step, _) = poll(
                &p,
                &store,
                "GET",
                status,
                "system/Patient.rs system/Observation.rs",
                "etl",
                NOW,
            );
            assert!(matches!(step, Step::Allow { .. }), "{step:?}");
            let (step, _) = poll(&p, &store, "GET", status, "system/Patient.rs", "etl", NOW);
            assert!(refused(&step), "{step:?}");
        }

        #[test]
        fn a_completed_manifest_binds_its_files_to_the_same_client() {
            let p = bulk_policy();
            let mut store = MemoryStore::default();
            started(&p, &mut store, "");
            let (step, ex) = poll(
                &p,
                &store,
                "GET",
                "/fhir/r4/bulk-status/job-1",
                "system/*.rs",
                "etl",
                NOW,
            );
            assert!(matches!(step, Step::Allow { .. }));
            assert!(p.reads_manifest(&ex, 200, "application/json"));
            assert!(
                !p.reads_manifest(&ex, 202, "application/json"),
                "still in progress"
            );
            let manifest = br#"{"transactionTime":"2026-01-01T00:00:00Z","request":"x","requiresAccessToken":true,
                "output":[{"type":"Patient","url":"http://gw.example/fhir/r4/bulk-files/job-1/Patient.ndjson"}],"error":[]}"#;
            assert_eq!(p.bind_manifest(&ex, manifest, &mut store, NOW), 1);
            let file = "/fhir/r4/bulk-files/job-1/Patient.ndjson";
            let (step, ex) = poll(&p, &store, "GET", file, "system/*.rs", "etl", NOW);
            assert!(matches!(step, Step::Allow { .. }), "{step:?}");
            assert!(
                !p.reads_manifest(&ex, 200, "application/fhir+ndjson"),
                "files are streamed, not held"
            );
            let (step, _) = poll(&p, &store, "GET", file, "system/*.rs", "thief", NOW);
            assert!(refused(&step), "{step:?}");
            let (step, _) = poll(
                &p,
                &store,
                "GET",
                "/fhir/r4/bulk-files/job-1/Observation.ndjson",
                "system/*.rs",
                "etl",
                NOW,
            );
            assert!(refused(&step), "a file the manifest did not list");
        }

        #[test]
        fn a_post_kick_off_binds_the_types_of_its_body() {
            let p = bulk_policy();
            let mut store = MemoryStore::default();
            let forwarded = URL_SAFE_NO_PAD
                .encode(json!({"iss": "https://idp", "sub": "svc", "client_id": "etl", "scope": "system/Patient.rs", "exp": NOW + 60}).to_string());
            let head = RequestHead {
                method: "POST",
                path: "/fhir/r4/$export",
                content_type: Some("application/fhir+json"),
                has_body: true,
                ..RequestHead::default()
            };
            let (step, mut ex) = p.on_head(
                &head,
                Some("Bearer a.b.c"),
                Some(&forwarded),
                None,
                NOW,
                &mut TokenCache::new(4),
            );
            assert_eq!(step, Step::WaitRequestBody);
            let body = br#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient"}]}"#;
            assert!(matches!(
                p.on_request_body(&mut ex, body),
                Step::Allow { .. }
            ));
            assert!(p.bind_export(&ex, 202, Some(STATUS), &mut store, NOW));
            let (step, _) = poll(
                &p,
                &store,
                "GET",
                "/fhir/r4/bulk-status/job-1",
                "system/Patient.rs",
                "etl",
                NOW,
            );
            assert!(matches!(step, Step::Allow { .. }), "{step:?}");
        }
    }

    /// Leak class 9: the purpose of use comes from the token, or from a trusted zone's header.
    mod purpose_of_use {
        use super::*;

        fn zoned() -> AuthzFilterPolicy {
            policy(
                json!({"zones": [{"name": "ehr", "peerUriSanPrefixes": ["spiffe://hospital.example/ns/ehr/"],
                                     "purposeOfUseHeader": "x-purpose-of-use"}]}),
            )
        }

        fn head_with(p: &AuthzFilterPolicy, claims: Value, peer: Option<&str>) -> (Step, Exchange) {
            let mut all =
                json!({"iss": "https://idp", "sub": "u", "scope": "user/*.rs", "exp": NOW + 60});
            for (k, v) in claims.as_object().unwrap() {
                all[k] = v.clone();
            }
            let forwarded = URL_SAFE_NO_PAD.encode(all.to_string());
            p.on_head(
                &head("/fhir/r4/Observation"),
                Some("Bearer a.b.c"),
                Some(&forwarded),
                peer,
                NOW,
                &mut TokenCache::new(4),
            )
        }

        fn purpose_header(step: &Step) -> Option<String> {
            let Step::Allow { headers, .. } = step else {
                panic!("{step:?}")
            };
            headers
                .iter()
                .find(|(n, _)| *n == headers::PURPOSE_OF_USE)
                .map(|(_, v)| v.clone())
        }

        #[test]
        fn a_token_claim_sets_the_verified_purpose() {
            let p = zoned();
            let (step, _) = head_with(&p, json!({"purpose_of_use": "TREAT"}), None);
            assert_eq!(purpose_header(&step).as_deref(), Some("TREAT"));
            let (step, _) = head_with(&p, json!({"purpose_of_use": "TREAT; DROP"}), None);
            assert_eq!(purpose_header(&step), None, "only a code");
            let (step, _) = head_with(&p, json!({}), None);
            assert_eq!(purpose_header(&step), None);
        }

        #[test]
        fn a_client_header_counts_only_inside_a_zone_that_trusts_it() {
            let p = zoned();
            let (_, outside) = head_with(&p, json!({}), None);
            assert_eq!(
                p.zone_purpose(&outside, Some("TREAT")),
                None,
                "any client can send a header"
            );
            let (_, elsewhere) = head_with(&p, json!({}), Some("spiffe://partners.example/app"));
            assert_eq!(p.zone_purpose(&elsewhere, Some("TREAT")), None);
            let (_, ehr) = head_with(
                &p,
                json!({}),
                Some("spiffe://hospital.example/ns/ehr/sa/emr"),
            );
            assert_eq!(
                p.zone_purpose(&ehr, Some("TREAT")),
                Some((headers::PURPOSE_OF_USE, "TREAT".to_string()))
            );
            assert_eq!(p.zone_purpose(&ehr, Some("<script>")), None);
            let (_, claimed) = head_with(
                &p,
                json!({"purpose_of_use": "HPAYMT"}),
                Some("spiffe://hospital.example/ns/ehr/sa/emr"),
            );
            assert_eq!(
                p.zone_purpose(&claimed, Some("TREAT")),
                None,
                "the token's claim wins"
            );
        }

        #[test]
        fn a_zone_purpose_header_must_be_an_ordinary_header() {
            for bad in ["X-Purpose", "x-fhirgate-purpose-of-use", ""] {
                let config = json!({"jwtAuthn": {"payloadHeader": "x-fhirgate-jwt-payload"}, "issuers": [{"issuer": "https://idp", "audiences": ["gw"]}],
                                    "zones": [{"name": "z", "peerUriSanPrefixes": ["spiffe://z/"], "purposeOfUseHeader": bad}]});
                let e = AuthzFilterPolicy::from_json(config.to_string().as_bytes())
                    .err()
                    .unwrap();
                assert_eq!(e.field, "zones[0].purposeOfUseHeader", "{bad}");
            }
        }
    }

    /// The held-response state machine under patient/ scopes: forward narrowed, verify the
    /// whole body, reduce errors, refuse what cannot be read.
    mod confined_responses {
        use super::*;

        fn exchange(p: &AuthzFilterPolicy, path: &str, patient: &str) -> (Step, Exchange) {
            let forwarded = URL_SAFE_NO_PAD.encode(
                json!({"iss": "https://idp", "sub": "u", "scope": "patient/*.rs", "patient": patient, "exp": NOW + 60}).to_string(),
            );
            p.on_head(
                &head(path),
                Some("Bearer a.b.c"),
                Some(&forwarded),
                None,
                NOW,
                &mut TokenCache::new(4),
            )
        }

        fn searchset(subjects: &[&str]) -> Vec<u8> {
            let entries: Vec<Value> = subjects
                .iter()
                .enumerate()
                .map(|(i, s)| json!({"resource": {"resourceType": "Observation", "id": format!("o{i}"), "subject": {"reference": s}}}))
                .collect();
            json!({"resourceType": "Bundle", "type": "searchset", "entry": entries})
                .to_string()
                .into_bytes()
        }

        #[test]
        fn a_search_is_narrowed_forwarded_and_held_for_its_response() {
            let p = policy(json!({}));
            let (step, _) = exchange(&p, "/fhir/r4/Observation?code=x", "123");
            match step {
                Step::WaitResponseBody { path, headers } => {
                    assert_eq!(
                        path.as_deref(),
                        Some("/fhir/r4/Observation?code=x&patient=Patient/123")
                    );
                    assert!(headers.contains(&(headers::LAUNCH_PATIENT, "123".to_string())));
                }
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn releases_only_a_response_that_is_all_the_patients() {
            let p = policy(json!({}));
            let (_, ex) = exchange(&p, "/fhir/r4/Observation", "123");
            assert!(matches!(
                p.on_response_body(&ex, 200, None, &searchset(&["Patient/123", "Patient/123"])),
                Step::Allow { .. }
            ));
            let leak =
                p.on_response_body(&ex, 200, None, &searchset(&["Patient/123", "Patient/456"]));
            assert!(
                matches!(&leak, Step::Deny(r) if r.status == 403 && r.reason == "not-in-patient-compartment"),
                "{leak:?}"
            );
            let history = p.on_response_body(&ex, 200, None, br#"{"resourceType":"Bundle","type":"history","entry":[{"request":{"method":"DELETE","url":"Observation/9"}}]}"#);
            assert!(
                matches!(&history, Step::Deny(r) if r.reason == "not-in-patient-compartment"),
                "{history:?}"
            );
        }

        #[test]
        fn refuses_what_it_cannot_read() {
            let p = policy(json!({}));
            let (_, ex) = exchange(&p, "/fhir/r4/Observation/o1", "123");
            for body in [
                &b"<Observation xmlns=\"http://hl7.org/fhir\"/>"[..],
                b"{",
                b"[]",
                b"{\"resourceType\":\"NotAType\"}",
            ] {
                let step = p.on_response_body(&ex, 200, None, body);
                assert!(
                    matches!(&step, Step::Deny(r) if r.status == 502 && r.reason == "unverifiable-response"),
                    "{step:?}"
                );
            }
            let gz = p.on_response_body(&ex, 200, Some("gzip"), b"\x1f\x8b...");
            assert!(
                matches!(&gz, Step::Deny(r) if r.reason == "unverifiable-response"),
                "{gz:?}"
            );
        }

        #[test]
        fn reduces_upstream_errors_to_their_status() {
            let p = policy(json!({}));
            let (_, ex) = exchange(&p, "/fhir/r4/Observation/o1", "123");
            let echo = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Observation/o1 belongs to Patient/456 (HIV)"}]}"#;
            for status in [400u16, 404, 410, 422, 500] {
                match p.on_response_body(&ex, status, None, echo) {
                    Step::Reduce(r) => {
                        assert_eq!(r.status, status);
                        let body = String::from_utf8(r.body()).unwrap();
                        assert!(!body.contains("456") && !body.contains("HIV"), "{body}");
                    }
                    other => panic!("{status}: {other:?}"),
                }
            }
            assert!(matches!(
                p.on_response_body(&ex, 404, None, b""),
                Step::Allow { .. }
            ));
        }

        #[test]
        fn an_unconfined_request_is_not_held() {
            let p = policy(json!({}));
            let forwarded = payload("user/Observation.rs");
            let (step, ex) = p.on_head(
                &head("/fhir/r4/Observation"),
                Some("Bearer a.b.c"),
                Some(&forwarded),
                None,
                NOW,
                &mut TokenCache::new(4),
            );
            assert!(matches!(step, Step::Allow { path: None, .. }), "{step:?}");
            assert!(!ex.confined);
        }
    }

    #[test]
    fn enforces_outside_every_zone() {
        let p = policy(json!({}));
        assert!(
            matches!(step(&p, "/fhir/r4/Patient/1", Some("user/Observation.rs"), None), Step::Deny(r) if r.reason == "insufficient-scope")
        );
        assert!(matches!(
            step(
                &p,
                "/fhir/r4/Patient/1",
                Some("user/Patient.rs"),
                Some("spiffe://elsewhere/x")
            ),
            Step::Allow { .. }
        ));
    }

    #[test]
    fn a_report_only_zone_marks_and_passes_what_it_would_refuse() {
        let p = policy(json!({}));
        let peer = Some("spiffe://hospital.example/ns/ehr/sa/backend");
        match step(&p, "/fhir/r4/Patient/1", Some("user/Observation.rs"), peer) {
            Step::ReportOnly { reason, headers } => {
                assert_eq!(reason, "insufficient-scope");
                assert!(headers.contains(&(headers::AUTHZ_DECISION, "report-only".to_string())));
                assert!(
                    headers.contains(&(headers::AUTHZ_REASON, "insufficient-scope".to_string()))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            step(&p, "/fhir/r4/Patient/1", None, peer),
            Step::ReportOnly {
                reason: "missing-token",
                ..
            }
        ));
        assert!(
            matches!(
                step(&p, "/fhir/r4/Patient/1", Some("user/Patient.rs"), peer),
                Step::Allow { .. }
            ),
            "what it allows it allows"
        );
        let narrowed = policy(json!({}));
        let forwarded = URL_SAFE_NO_PAD.encode(json!({"iss": "https://idp", "sub": "u", "scope": "patient/*.rs", "patient": "p1", "exp": NOW + 60}).to_string());
        let (s, _) = narrowed.on_head(
            &head("/fhir/r4/Observation"),
            Some("Bearer a.b.c"),
            Some(&forwarded),
            peer,
            NOW,
            &mut TokenCache::new(4),
        );
        assert!(
            matches!(
                s,
                Step::ReportOnly {
                    reason: "narrowed",
                    ..
                }
            ),
            "report-only never rewrites the query: {s:?}"
        );
    }

    #[test]
    fn a_zone_has_its_own_policy() {
        let p = policy(json!({}));
        let partner = Some("spiffe://partners.example/acme");
        assert!(
            matches!(
                step(&p, "/fhir/r4/metadata", None, None),
                Step::Allow { .. }
            ),
            "public by default"
        );
        assert!(
            matches!(step(&p, "/fhir/r4/metadata", None, partner), Step::Deny(r) if r.reason == "missing-token"),
            "not in the partners zone"
        );
        let ex = p
            .on_head(
                &head("/fhir/r4/metadata"),
                None,
                None,
                partner,
                NOW,
                &mut TokenCache::new(1),
            )
            .1;
        assert_eq!(p.zone_name(&ex), "partners");
    }

    #[test]
    fn report_only_at_the_top_level_applies_outside_zones() {
        let p = policy(json!({"mode": "report-only", "zones": []}));
        assert!(matches!(
            step(&p, "/fhir/r4/Patient/1", Some("user/Observation.rs"), None),
            Step::ReportOnly { .. }
        ));
    }

    #[test]
    fn forwarded_payloads_without_a_bearer_header_are_ignored() {
        let p = policy(json!({}));
        let forwarded = payload("system/*.rs");
        let (s, _) = p.on_head(
            &head("/fhir/r4/Patient/1"),
            None,
            Some(&forwarded),
            None,
            NOW,
            &mut TokenCache::new(1),
        );
        assert!(matches!(s, Step::Deny(r) if r.reason == "missing-token"));
    }

    /// Key-fetch states of a runtime whose one issuer publishes its keys at a JWKS URI.
    mod key_fetching {
        use super::*;

        const JWKS: &str = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "a"}]}"#;

        fn runtime() -> AuthzRuntime {
            let config = json!({"issuers": [{"issuer": "https://idp", "audiences": ["gw"], "jwksUri": "https://idp/jwks", "jwksCluster": "idp",
                                             "jwksUnknownKidIntervalSeconds": 30}]});
            AuthzRuntime::new(AuthzFilterPolicy::from_json(config.to_string().as_bytes()).unwrap())
        }

        fn bearer(kid: &str) -> String {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "kid": kid}).to_string());
            let claims = URL_SAFE_NO_PAD.encode(json!({"iss": "https://idp", "sub": "u", "aud": "gw", "scope": "user/*.rs", "exp": NOW + 60}).to_string());
            format!(
                "Bearer {header}.{claims}.{}",
                URL_SAFE_NO_PAD.encode([7u8; 64])
            )
        }

        fn refusal(r: &mut AuthzRuntime, kid: &str) -> (u16, &'static str) {
            let auth = bearer(kid);
            let (step, ex) = r.on_head(&head("/fhir/r4/Patient/1"), Some(&auth), None, None, NOW);
            assert_eq!(step, Step::RefreshKeys, "{kid}");
            match r.unknown_key_step(Some(&auth), &ex) {
                Step::Deny(rejection) => (rejection.status, rejection.reason),
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn requests_arriving_while_the_first_scheduled_fetch_is_under_way_fetch_for_themselves() {
            let mut r = runtime();
            assert_eq!(r.fetches_due(NOW).len(), 1, "the first tick fetches");
            for _ in 0..3 {
                assert!(
                    r.fetch_for_unknown_key(Some(&bearer("a")), NOW).is_some(),
                    "not refused for a fetch it cannot see"
                );
            }
        }

        #[test]
        fn after_the_first_answer_unknown_kids_fetch_at_most_once_per_interval() {
            let mut r = runtime();
            r.fetches_due(NOW);
            assert!(r.fetched(0, NOW, Some(200), JWKS.as_bytes()));
            assert!(r
                .fetch_for_unknown_key(Some(&bearer("b")), NOW + 1)
                .is_some());
            assert!(
                r.fetch_for_unknown_key(Some(&bearer("b")), NOW + 1)
                    .is_none(),
                "one is in flight"
            );
            r.fetched(0, NOW + 1, Some(200), JWKS.as_bytes());
            assert!(
                r.fetch_for_unknown_key(Some(&bearer("b")), NOW + 2)
                    .is_none(),
                "within the interval"
            );
            assert!(r
                .fetch_for_unknown_key(Some(&bearer("b")), NOW + 31)
                .is_some());
        }

        #[test]
        fn a_failed_first_fetch_ends_the_cold_start() {
            let mut r = runtime();
            r.fetches_due(NOW);
            assert!(!r.fetched(0, NOW, Some(500), b"oops"));
            assert!(
                r.fetch_for_unknown_key(Some(&bearer("a")), NOW).is_some(),
                "one retry for the unknown kid"
            );
            r.fetched(0, NOW, None, b"");
            assert!(
                r.fetch_for_unknown_key(Some(&bearer("a")), NOW + 1)
                    .is_none(),
                "then the interval holds"
            );
        }

        #[test]
        fn an_issuer_without_any_keys_is_a_transient_gateway_fault() {
            let mut r = runtime();
            r.fetches_due(NOW);
            r.fetched(0, NOW, None, b"");
            assert_eq!(refusal(&mut r, "a"), (503, "keys-unavailable"));
        }

        #[test]
        fn a_kid_the_fetched_keys_lack_is_an_unknown_key() {
            let mut r = runtime();
            r.fetches_due(NOW);
            r.fetched(0, NOW, Some(200), JWKS.as_bytes());
            assert_eq!(refusal(&mut r, "nope"), (401, "token-unknown-key"));
        }

        #[test]
        fn keys_gone_stale_make_the_issuer_keyless_again() {
            let mut r = runtime();
            r.fetches_due(NOW);
            r.fetched(0, NOW, Some(200), JWKS.as_bytes());
            r.expire_stale_keys(NOW + 10 * 86_400);
            assert_eq!(refusal(&mut r, "a"), (503, "keys-unavailable"));
        }

        #[test]
        fn a_token_another_worker_cached_is_not_served_where_the_issuers_keys_went_stale() {
            use crate::smart::cache::{TokenCache, TokenStore};
            let store = TokenStore::shared(4);
            let mut r = runtime();
            r.cache = TokenCache::over(store.clone());
            r.fetches_due(NOW);
            r.fetched(0, NOW, Some(200), JWKS.as_bytes());
            r.expire_stale_keys(NOW + 10 * 86_400);
            // Another worker, whose keys are fresh, verifies and caches the token since.
            let auth = bearer("a");
            let verified = crate::smart::token::VerifiedToken {
                issuer: "https://idp".into(),
                subject: Some("u".into()),
                client_id: None,
                scopes: "user/*.rs".into(),
                patient: None,
                fhir_user: None,
                tenant: None,
                purpose_of_use: None,
                jti: None,
                expires_at: NOW + 60,
            };
            let grant = crate::smart::authz::Grant::of(&verified);
            TokenCache::over(store).put(
                auth.trim_start_matches("Bearer "),
                std::sync::Arc::new((verified, grant)),
            );
            assert_eq!(refusal(&mut r, "a"), (503, "keys-unavailable"));
        }
    }
}
