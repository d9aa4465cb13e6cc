//! Bearer token verification: JWTs signed by a configured issuer, checked with jwt-compact.
//!
//! Cheap refusals come first, before any signature work: size, shape, algorithm allow-list
//! (never `none`, never an HMAC algorithm, so a public key can never be used as an HMAC
//! secret), issuer, expiry. Then the key is chosen by `kid` from the issuer's own JWKS, the
//! signature verified, and audience, required claims and revocation checked.

use crate::outcome::IssueType;
use crate::Rejection;
use chrono::{DateTime, Utc};
use jwt_compact::alg::{Ed25519, Es256, Rsa, RsaPublicKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{AlgorithmExt, Claims, UntrustedToken};
use serde_json::{Map, Value};

/// Algorithms fhirgate can verify. HMAC (`HS*`) and `none` are never among them.
pub const SUPPORTED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "EdDSA",
];

/// Smallest RSA modulus accepted in a JWKS.
const MIN_RSA_BITS: usize = 2048;
const MAX_KID_BYTES: usize = 256;

/// A verification key from a JWKS.
#[derive(Debug, Clone)]
pub enum VerifyingKey {
    Rsa(Box<RsaPublicKey>),
    Es256(Box<p256_key::VerifyingKey>),
    Ed25519(Box<ed25519_key::PublicKey>),
}

use ed25519_compact as ed25519_key;
use p256::ecdsa as p256_key;

#[derive(Debug, Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub key: VerifyingKey,
}

impl Key {
    fn fits(&self, alg: &str) -> bool {
        match &self.key {
            VerifyingKey::Rsa(_) => alg.starts_with("RS") || alg.starts_with("PS"),
            VerifyingKey::Es256(_) => alg == "ES256",
            VerifyingKey::Ed25519(_) => alg == "EdDSA",
        }
    }
}

/// Parses a JWKS (`{"keys": [...]}`), keeping the public keys fhirgate can use. A key it
/// cannot use (an `oct` secret, a private key, a short RSA modulus) is an error, not skipped:
/// a JWKS that says something unexpected should be looked at, not half-trusted.
pub fn parse_jwks(jwks: &Value) -> Result<Vec<Key>, String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a JWKS needs a `keys` array")?;
    let mut out = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
        if k.get("d").is_some() {
            return Err(format!(
                "keys[{i}] is a private key; publish only public keys"
            ));
        }
        if let Some(usage) = k.get("use").and_then(Value::as_str) {
            if usage != "sig" {
                continue; // encryption keys have no part in verification
            }
        }
        let jwk: JsonWebKey<'_> =
            serde_json::from_value(k.clone()).map_err(|e| format!("keys[{i}]: {e}"))?;
        let key = match k.get("kty").and_then(Value::as_str) {
            Some("RSA") => {
                let rsa = RsaPublicKey::try_from(&jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
                let bits = rsa::traits::PublicKeyParts::size(&rsa) * 8;
                if bits < MIN_RSA_BITS {
                    return Err(format!(
                        "keys[{i}]: RSA key of {bits} bits; at least {MIN_RSA_BITS} required"
                    ));
                }
                VerifyingKey::Rsa(Box::new(rsa))
            }
            Some("EC") => VerifyingKey::Es256(Box::new(
                p256_key::VerifyingKey::try_from(&jwk).map_err(|e| format!("keys[{i}]: {e}"))?,
            )),
            Some("OKP") => VerifyingKey::Ed25519(Box::new(
                ed25519_key::PublicKey::try_from(&jwk).map_err(|e| format!("keys[{i}]: {e}"))?,
            )),
            Some(other) => {
                return Err(format!(
                    "keys[{i}]: key type `{other}` cannot verify tokens"
                ))
            }
            None => return Err(format!("keys[{i}]: no `kty`")),
        };
        out.push(Key { kid, key });
    }
    Ok(out)
}

/// One trusted issuer, compiled.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub keys: Vec<Key>,
    pub clock_skew_seconds: i64,
    pub required_claims: Vec<String>,
    pub patient_claim: String,
    /// The claim holding the purpose of use.
    pub purpose_claim: String,
    /// Where to fetch the keys, when they are not (only) inline.
    pub source: Option<super::jwks::JwksSource>,
}

#[derive(Debug, Clone)]
pub struct TokenVerifier {
    pub issuers: Vec<Issuer>,
    pub max_token_bytes: usize,
    pub revoked_jtis: Vec<String>,
}

/// What a verified token says, without the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub scopes: String,
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
    pub tenant: Option<String>,
    /// The purpose of use the token asserts (its issuer's `purposeOfUseClaim`).
    pub purpose_of_use: Option<String>,
    /// The token's `jti`, checked against the revocation list on every request (cache hits too).
    pub jti: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: i64,
}

/// A token whose signature and times verified: its issuer, claims and `jku` header.
type Signed<'a> = (&'a Issuer, Claims<Map<String, Value>>, Option<String>);

/// What a verified CDS Hooks client JWT says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdsClaims {
    pub issuer: String,
    pub subject: Option<String>,
    pub jti: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Why a token was refused. Each has a stable reason code; none carries token content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    NotBearer,
    TooLarge,
    Malformed,
    AlgorithmNotAllowed,
    UnknownIssuer,
    MissingExpiry,
    Expired,
    NotYetValid,
    UnknownKey,
    BadSignature,
    WrongAudience,
    MissingClaim,
    Revoked,
    /// Envoy's `jwt_authn` did not accept the token (in the mode that trusts it).
    RejectedByEnvoy,
    /// Introspection says the token is not active.
    Inactive,
    /// A one-time token (a CDS client's JWT) whose `jti` was already used.
    Replayed,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Missing => "missing-token",
            TokenError::NotBearer => "token-not-bearer",
            TokenError::TooLarge => "token-too-large",
            TokenError::Malformed => "token-malformed",
            TokenError::AlgorithmNotAllowed => "token-algorithm-not-allowed",
            TokenError::UnknownIssuer => "token-unknown-issuer",
            TokenError::MissingExpiry => "token-missing-expiry",
            TokenError::Expired => "token-expired",
            TokenError::NotYetValid => "token-not-yet-valid",
            TokenError::UnknownKey => "token-unknown-key",
            TokenError::BadSignature => "token-bad-signature",
            TokenError::WrongAudience => "token-wrong-audience",
            TokenError::MissingClaim => "token-missing-claim",
            TokenError::Revoked => "token-revoked",
            TokenError::RejectedByEnvoy => "token-invalid",
            TokenError::Inactive => "token-inactive",
            TokenError::Replayed => "token-replayed",
        }
    }

    fn description(self) -> &'static str {
        match self {
            TokenError::Missing => "a bearer token is required",
            TokenError::NotBearer => "the Authorization header is not a Bearer token",
            TokenError::TooLarge => "the token is too large",
            TokenError::Malformed => "the token is not a well-formed JWT",
            TokenError::AlgorithmNotAllowed => "the token's signing algorithm is not accepted",
            TokenError::UnknownIssuer => "the token's issuer is not trusted",
            TokenError::MissingExpiry => "the token has no expiry",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::UnknownKey => "the token's signing key is not known",
            TokenError::BadSignature => "the token's signature does not verify",
            TokenError::WrongAudience => "the token is not meant for this server",
            TokenError::MissingClaim => "the token lacks a required claim",
            TokenError::Revoked => "the token has been revoked",
            TokenError::RejectedByEnvoy => "the token did not verify",
            TokenError::Inactive => "the token is not active",
            TokenError::Replayed => "the token was already used",
        }
    }

    /// 401 with an RFC 6750 challenge; the description names the problem, never the token.
    pub fn rejection(self) -> Rejection {
        let challenge = if self == TokenError::Missing {
            r#"Bearer realm="fhir""#.to_string()
        } else {
            format!(
                r#"Bearer realm="fhir", error="invalid_token", error_description="{}""#,
                self.description()
            )
        };
        Rejection::new(401, self.reason(), IssueType::Login, self.description())
            .with_header("www-authenticate", challenge)
    }
}

/// The token of an `Authorization` header value: `Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(header: Option<&str>) -> Result<&str, TokenError> {
    let value = header.ok_or(TokenError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(TokenError::Malformed);
    }
    Ok(token)
}

fn claim_str(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_string)
}

impl TokenVerifier {
    /// The index of the trusted issuer a token claims to come from (unverified: only to
    /// decide where to fetch keys from).
    pub fn claimed_issuer(&self, token: &str) -> Option<usize> {
        if token.len() > self.max_token_bytes {
            return None;
        }
        let untrusted = UntrustedToken::new(token).ok()?;
        let claims: Claims<Map<String, Value>> = untrusted.deserialize_claims_unchecked().ok()?;
        let iss = claims.custom.get("iss")?.as_str()?;
        self.issuers.iter().position(|i| i.issuer == iss)
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<VerifiedToken, TokenError> {
        let (issuer, verified, _) = self.verify_signed(token, now)?;
        let claims = &verified.custom;
        if !audience_matches(claims.get("aud"), &issuer.audiences) {
            return Err(TokenError::WrongAudience);
        }
        self.finish(
            issuer,
            claims,
            verified.expiration.map_or(0, |e| e.timestamp()),
        )
    }

    /// Verifies a CDS Hooks client's JWT (CDS Hooks 2.0, "Trusting CDS Clients") at `now`:
    /// signed by one of `issuers` with its keys, `aud` exactly `audience` (the service URL
    /// invoked), `exp`, `iat` and `jti` present, and a `jku` header, when given, naming that
    /// issuer's own JWKS URL (keys are never fetched from a URL a token names).
    pub fn verify_cds(
        &self,
        token: &str,
        now: i64,
        audience: &str,
        issuers: &[String],
    ) -> Result<CdsClaims, TokenError> {
        let (issuer, verified, jku) = self.verify_signed(token, now)?;
        if !issuers.contains(&issuer.issuer) {
            return Err(TokenError::UnknownIssuer);
        }
        // The issuer's own JWKS URL, as configured (`jwksUri`): same authority and path.
        let names_own_jwks = |jku: &str| {
            let rest = jku
                .strip_prefix("https://")
                .or_else(|| jku.strip_prefix("http://"));
            match (
                rest.and_then(|r| r.find('/').map(|i| r.split_at(i))),
                &issuer.source,
            ) {
                (Some((authority, path)), Some(source)) => {
                    authority == source.authority && path == source.path
                }
                _ => false,
            }
        };
        if jku.is_some_and(|j| !names_own_jwks(&j)) {
            return Err(TokenError::UnknownKey);
        }
        let claims = &verified.custom;
        if !audience_matches(claims.get("aud"), &[audience.to_string()]) {
            return Err(TokenError::WrongAudience);
        }
        let (Some(exp), Some(iat), Some(jti)) = (
            verified.expiration,
            verified.issued_at,
            claims.get("jti").and_then(Value::as_str),
        ) else {
            return Err(TokenError::MissingClaim);
        };
        if jti.is_empty() || jti.len() > 256 {
            return Err(TokenError::MissingClaim);
        }
        Ok(CdsClaims {
            issuer: issuer.issuer.clone(),
            subject: claim_str(claims, "sub"),
            jti: jti.to_string(),
            issued_at: iat.timestamp(),
            expires_at: exp.timestamp(),
        })
    }

    /// Size, shape, algorithm, issuer, times and signature: what every token must pass.
    /// Returns the issuer, the verified claims and the `jku` header.
    fn verify_signed(&self, token: &str, now: i64) -> Result<Signed<'_>, TokenError> {
        if token.len() > self.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        let untrusted = UntrustedToken::new(token).map_err(|_| TokenError::Malformed)?;
        let alg = untrusted.algorithm();
        if !SUPPORTED_ALGORITHMS.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        // Unverified claims pick the issuer and let expired tokens fail before signature
        // work; nothing from them is trusted until the signature verifies below.
        let unchecked: Claims<Map<String, Value>> = untrusted
            .deserialize_claims_unchecked()
            .map_err(|_| TokenError::Malformed)?;
        let iss = unchecked
            .custom
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenError::UnknownIssuer)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(TokenError::UnknownIssuer)?;
        if !issuer.algorithms.iter().any(|a| a == alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        check_times(&unchecked, now, issuer.clock_skew_seconds)?;
        let kid = untrusted.header().key_id.as_deref();
        if kid.is_some_and(|k| k.len() > MAX_KID_BYTES) {
            return Err(TokenError::UnknownKey);
        }
        let fitting: Vec<&Key> = issuer.keys.iter().filter(|k| k.fits(alg)).collect();
        let key = match kid {
            Some(kid) => fitting.iter().find(|k| k.kid.as_deref() == Some(kid)),
            // Without a kid, only an unambiguous key set is usable.
            None if fitting.len() == 1 => fitting.first(),
            None => None,
        }
        .ok_or(TokenError::UnknownKey)?;
        let verified: Claims<Map<String, Value>> = match &key.key {
            VerifyingKey::Rsa(k) => {
                let rsa: Rsa = alg.parse().map_err(|_| TokenError::AlgorithmNotAllowed)?;
                rsa.validator(k)
                    .validate(&untrusted)
                    .map(|t| t.claims().clone())
            }
            VerifyingKey::Es256(k) => Es256
                .validator(k)
                .validate(&untrusted)
                .map(|t| t.claims().clone()),
            VerifyingKey::Ed25519(k) => Ed25519
                .validator(k)
                .validate(&untrusted)
                .map(|t| t.claims().clone()),
        }
        .map_err(|_| TokenError::BadSignature)?;
        check_times(&verified, now, issuer.clock_skew_seconds)?;
        Ok((issuer, verified, untrusted.header().key_set_url.clone()))
    }

    /// Required claims, revocation, and what the token says.
    fn finish(
        &self,
        issuer: &Issuer,
        claims: &Map<String, Value>,
        expires_at: i64,
    ) -> Result<VerifiedToken, TokenError> {
        if issuer
            .required_claims
            .iter()
            .any(|c| claims.get(c).is_none_or(Value::is_null))
        {
            return Err(TokenError::MissingClaim);
        }
        if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
            if self.revoked_jtis.iter().any(|r| r == jti) {
                return Err(TokenError::Revoked);
            }
        }
        Ok(VerifiedToken {
            issuer: issuer.issuer.clone(),
            subject: claim_str(claims, "sub"),
            client_id: claim_str(claims, "client_id").or_else(|| claim_str(claims, "azp")),
            scopes: claim_str(claims, "scope").unwrap_or_default(),
            patient: claim_str(claims, &issuer.patient_claim),
            fhir_user: claim_str(claims, "fhirUser"),
            tenant: claim_str(claims, "tenant"),
            purpose_of_use: claim_str(claims, &issuer.purpose_claim),
            jti: claim_str(claims, "jti"),
            expires_at,
        })
    }

    /// A payload Envoy's `jwt_authn` verified and forwarded (base64url JSON, its
    /// `forward_payload_header`). Signature, issuer keys and audience were Envoy's to check;
    /// the issuer must still be one of ours (for its claim settings), and expiry, required
    /// claims and revocation are checked again, cheaply.
    pub fn from_forwarded_payload(
        &self,
        payload: &str,
        now: i64,
    ) -> Result<VerifiedToken, TokenError> {
        use base64::Engine;
        if payload.len() > self.max_token_bytes {
            return Err(TokenError::TooLarge);
        }
        let engine = base64::engine::general_purpose::GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let bytes = engine
            .decode(payload.trim())
            .map_err(|_| TokenError::Malformed)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenError::UnknownIssuer)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(TokenError::UnknownIssuer)?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(TokenError::MissingExpiry)?;
        if exp + issuer.clock_skew_seconds <= now {
            return Err(TokenError::Expired);
        }
        self.finish(issuer, &claims, exp)
    }
}

/// Does an `aud` claim (a string or a list) name one of `audiences`? No audiences configured
/// accepts any.
pub fn audience_matches(aud: Option<&Value>, audiences: &[String]) -> bool {
    if audiences.is_empty() {
        return true;
    }
    match aud {
        Some(Value::String(a)) => audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    }
}

fn check_times<T>(claims: &Claims<T>, now: i64, skew: i64) -> Result<(), TokenError> {
    let exp = claims
        .expiration
        .as_ref()
        .map(DateTime::<Utc>::timestamp)
        .ok_or(TokenError::MissingExpiry)?;
    if exp + skew <= now {
        return Err(TokenError::Expired);
    }
    if claims
        .not_before
        .as_ref()
        .is_some_and(|nbf| nbf.timestamp() - skew > now)
    {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
