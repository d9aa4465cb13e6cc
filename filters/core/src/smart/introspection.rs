//! RFC 7662 token introspection for opaque (non-JWT) bearer tokens: the request the filter
//! sends through an Envoy cluster, and what the answer means.

use super::jwks::JwksSource;
use super::token::{audience_matches, VerifiedToken};
use base64::Engine;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct Introspection {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// `Authorization: Basic` credentials of the gateway at the introspection endpoint.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// How long an active answer is trusted (never past the token's `exp`).
    pub cache_seconds: i64,
    /// How long an inactive answer is remembered.
    pub negative_cache_seconds: i64,
    pub audiences: Vec<String>,
    pub patient_claim: String,
    pub purpose_claim: String,
}

/// Why introspection did not yield a usable token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionError {
    /// The server says the token is not active (revoked, expired, unknown).
    Inactive,
    /// The token is active but not for this server.
    WrongAudience,
    /// No usable answer: the endpoint is down, slow, or answered something else.
    Unavailable,
}

impl Introspection {
    pub fn new(cluster: &str, endpoint: &str) -> Result<Self, String> {
        let target = JwksSource::from_uri(cluster, endpoint, 0, 0)?;
        Ok(Introspection {
            cluster: cluster.to_string(),
            authority: target.authority,
            path: target.path,
            client_id: None,
            client_secret: None,
            cache_seconds: 60,
            negative_cache_seconds: 30,
            audiences: Vec::new(),
            patient_claim: "patient".into(),
            purpose_claim: "purpose_of_use".into(),
        })
    }

    /// The POST to send: headers and form body (`token=…&token_type_hint=access_token`).
    pub fn request(&self, token: &str) -> (Vec<(&'static str, String)>, Vec<u8>) {
        let mut headers = vec![
            (":method", "POST".to_string()),
            (":path", self.path.clone()),
            (":authority", self.authority.clone()),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("accept", "application/json".to_string()),
        ];
        if let (Some(id), Some(secret)) = (&self.client_id, &self.client_secret) {
            // RFC 6749 §2.3.1: form-encode each part, then base64 the pair.
            let pair = format!(
                "{}:{}",
                utf8_percent_encode(id, NON_ALPHANUMERIC),
                utf8_percent_encode(secret, NON_ALPHANUMERIC)
            );
            headers.push((
                "authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ),
            ));
        }
        let body = format!(
            "token={}&token_type_hint=access_token",
            utf8_percent_encode(token, NON_ALPHANUMERIC)
        );
        (headers, body.into_bytes())
    }

    /// Reads the answer (`status` None: no answer at all).
    pub fn read(
        &self,
        status: Option<u16>,
        body: &[u8],
        now: i64,
    ) -> Result<VerifiedToken, IntrospectionError> {
        if status != Some(200) {
            return Err(IntrospectionError::Unavailable);
        }
        let claims: Map<String, Value> =
            serde_json::from_slice(body).map_err(|_| IntrospectionError::Unavailable)?;
        if claims.get("active").and_then(Value::as_bool) != Some(true) {
            return Err(IntrospectionError::Inactive);
        }
        let exp = claims.get("exp").and_then(Value::as_i64);
        if exp.is_some_and(|e| e <= now) {
            return Err(IntrospectionError::Inactive);
        }
        if !audience_matches(claims.get("aud"), &self.audiences) {
            return Err(IntrospectionError::WrongAudience);
        }
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        let trusted_until = now + self.cache_seconds;
        Ok(VerifiedToken {
            issuer: text("iss").unwrap_or_default(),
            subject: text("sub"),
            client_id: text("client_id"),
            scopes: text("scope").unwrap_or_default(),
            patient: text(&self.patient_claim),
            fhir_user: text("fhirUser"),
            tenant: text("tenant"),
            purpose_of_use: text(&self.purpose_claim),
            jti: text("jti"),
            expires_at: exp.map_or(trusted_until, |e| e.min(trusted_until)),
        })
    }
}

/// Opaque tokens go to introspection; JWTs (three dot-separated parts) are verified locally.
pub fn is_opaque(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() != 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Introspection {
        let mut i = Introspection::new("idp", "https://idp.example/oauth/introspect").unwrap();
        i.client_id = Some("gateway".into());
        i.client_secret = Some("s3cr:t".into());
        i.audiences = vec!["https://gw/fhir".into()];
        i
    }

    #[test]
    fn builds_the_rfc_7662_request() {
        let (headers, body) = endpoint().request("abc+/=");
        assert!(headers.contains(&(":path", "/oauth/introspect".into())));
        assert!(headers.contains(&(":authority", "idp.example".into())));
        let basic = headers
            .iter()
            .find(|(k, _)| *k == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(decoded, b"gateway:s3cr%3At");
        assert_eq!(body, b"token=abc%2B%2F%3D&token_type_hint=access_token");
    }

    #[test]
    fn reads_active_inactive_and_failed_answers() {
        let i = endpoint();
        let ok = br#"{"active": true, "scope": "user/*.rs", "sub": "u", "client_id": "app", "patient": "p1", "exp": 1000, "aud": "https://gw/fhir"}"#;
        let t = i.read(Some(200), ok, 900).unwrap();
        assert_eq!(
            (t.scopes.as_str(), t.patient.as_deref(), t.expires_at),
            ("user/*.rs", Some("p1"), 960),
            "trusted for cacheSeconds at most"
        );
        assert_eq!(
            i.read(Some(200), ok, 990).unwrap().expires_at,
            1000,
            "never past exp"
        );
        assert_eq!(
            i.read(Some(200), ok, 1000),
            Err(IntrospectionError::Inactive)
        );
        assert_eq!(
            i.read(Some(200), br#"{"active": false}"#, 0),
            Err(IntrospectionError::Inactive)
        );
        assert_eq!(
            i.read(Some(200), br#"{"scope": "x"}"#, 0),
            Err(IntrospectionError::Inactive)
        );
        assert_eq!(
            i.read(Some(200), br#"{"active": "true"}"#, 0),
            Err(IntrospectionError::Inactive)
        );
        assert_eq!(
            i.read(Some(200), br#"{"active": true, "aud": "other"}"#, 0),
            Err(IntrospectionError::WrongAudience)
        );
        assert_eq!(
            i.read(Some(503), ok, 0),
            Err(IntrospectionError::Unavailable)
        );
        assert_eq!(i.read(None, b"", 0), Err(IntrospectionError::Unavailable));
        assert_eq!(
            i.read(Some(200), b"<html>", 0),
            Err(IntrospectionError::Unavailable)
        );
    }

    #[test]
    fn tells_opaque_tokens_from_jwts() {
        assert!(is_opaque("6aecad4aae11d9c427f9aa3c"));
        assert!(is_opaque("a.b"));
        assert!(!is_opaque("a.b.c"));
    }
}
