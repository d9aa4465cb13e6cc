//! Break-glass: an emergency-access token an operator signs (`fhirgate breakglass sign`) and a
//! clinician sends in a header. A valid one bypasses rate limits and marks the request as
//! emergency access for the consent and audit filters.
//!
//! Format: `<payload>.<mac>`, both base64url without padding; the payload is JSON
//! `{"kid", "user", "reason", "exp", "nonce"}` and the MAC is HMAC-SHA256 of the payload's
//! base64url text under the key named by `kid`. Verification is constant-time (hmac's
//! `verify_slice`), refuses expired tokens and replayed nonces.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};

type HmacSha256 = Hmac<Sha256>;

/// Longest accepted token, and longest validity an operator may sign.
pub const MAX_TOKEN_BYTES: usize = 2048;
pub const MAX_VALIDITY_SECONDS: i64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    pub kid: String,
    pub user: String,
    /// HL7 PurposeOfUse or a local reason code, e.g. `ETREAT`.
    pub reason: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    pub nonce: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakGlassError {
    Malformed,
    UnknownKey,
    BadSignature,
    Expired,
    TooLong,
    Replayed,
}

impl BreakGlassError {
    pub fn reason(self) -> &'static str {
        match self {
            BreakGlassError::Malformed => "break-glass-malformed",
            BreakGlassError::UnknownKey => "break-glass-unknown-key",
            BreakGlassError::BadSignature => "break-glass-bad-signature",
            BreakGlassError::Expired => "break-glass-expired",
            BreakGlassError::TooLong => "break-glass-validity-too-long",
            BreakGlassError::Replayed => "break-glass-replayed",
        }
    }
}

fn mac(key: &[u8], payload_b64: &str) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    m.update(payload_b64.as_bytes());
    Some(m)
}

/// Signs a break-glass token (operators, through the CLI).
pub fn sign(claims: &BreakGlass, key: &[u8]) -> Result<String, String> {
    if key.len() < 32 {
        return Err("the key must be at least 32 bytes".into());
    }
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(|e| e.to_string())?);
    let tag = mac(key, &payload).ok_or("bad key")?.finalize().into_bytes();
    Ok(format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag)))
}

/// Verifies break-glass tokens against the configured keys, remembering used nonces until
/// their token expires (bounded: when full, the oldest are forgotten first).
pub struct BreakGlassVerifier {
    keys: HashMap<String, Vec<u8>>,
    nonces: HashMap<String, i64>,
    order: VecDeque<String>,
    capacity: usize,
}

impl BreakGlassVerifier {
    pub fn new(keys: HashMap<String, Vec<u8>>, capacity: usize) -> Self {
        BreakGlassVerifier { keys, nonces: HashMap::new(), order: VecDeque::new(), capacity }
    }

    pub fn verify(&mut self, token: &str, now: i64) -> Result<BreakGlass, BreakGlassError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(BreakGlassError::Malformed);
        }
        let (payload, tag) = token.trim().split_once('.').ok_or(BreakGlassError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| BreakGlassError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| BreakGlassError::Malformed)?;
        let claims: BreakGlass = serde_json::from_slice(&bytes).map_err(|_| BreakGlassError::Malformed)?;
        let key = self.keys.get(&claims.kid).ok_or(BreakGlassError::UnknownKey)?;
        mac(key, payload).ok_or(BreakGlassError::UnknownKey)?.verify_slice(&tag).map_err(|_| BreakGlassError::BadSignature)?;
        if claims.exp <= now {
            return Err(BreakGlassError::Expired);
        }
        if claims.exp - now > MAX_VALIDITY_SECONDS {
            return Err(BreakGlassError::TooLong);
        }
        if claims.nonce.is_empty() || claims.user.is_empty() || claims.reason.is_empty() {
            return Err(BreakGlassError::Malformed);
        }
        self.remember(&claims, now)?;
        Ok(claims)
    }

    fn remember(&mut self, claims: &BreakGlass, now: i64) -> Result<(), BreakGlassError> {
        let id = format!("{}:{}", claims.kid, claims.nonce);
        if self.nonces.get(&id).is_some_and(|exp| *exp > now) {
            return Err(BreakGlassError::Replayed);
        }
        self.nonces.retain(|_, exp| *exp > now);
        self.order.retain(|n| self.nonces.contains_key(n));
        while self.nonces.len() >= self.capacity.max(1) {
            match self.order.pop_front() {
                Some(old) => {
                    self.nonces.remove(&old);
                }
                None => break,
            }
        }
        self.nonces.insert(id.clone(), claims.exp);
        self.order.push_back(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_800_000_000;

    fn claims(nonce: &str) -> BreakGlass {
        BreakGlass { kid: "k1".into(), user: "dr-who".into(), reason: "ETREAT".into(), exp: NOW + 600, nonce: nonce.into() }
    }

    fn verifier() -> BreakGlassVerifier {
        BreakGlassVerifier::new(HashMap::from([("k1".to_string(), KEY.to_vec()), ("k2".to_string(), b"another-key-another-key-another!!".to_vec())]), 100)
    }

    #[test]
    fn accepts_a_signed_token_once() {
        let mut v = verifier();
        let t = sign(&claims("n1"), KEY).unwrap();
        assert_eq!(v.verify(&t, NOW).unwrap(), claims("n1"));
        assert_eq!(v.verify(&t, NOW + 1), Err(BreakGlassError::Replayed));
        assert!(v.verify(&sign(&claims("n2"), KEY).unwrap(), NOW).is_ok());
    }

    #[test]
    fn refuses_forged_expired_and_malformed_tokens() {
        let t = sign(&claims("n1"), KEY).unwrap();
        let (payload, tag) = t.split_once('.').unwrap();
        let mut other = claims("n1");
        other.user = "attacker".into();
        let swapped = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap()));
        let mut k2 = claims("n1");
        k2.kid = "k2".into();
        let mut unknown = claims("n1");
        unknown.kid = "k9".into();
        let mut expired = claims("n1");
        expired.exp = NOW;
        let mut long = claims("n1");
        long.exp = NOW + MAX_VALIDITY_SECONDS + 1;
        let cases = [
            (swapped, BreakGlassError::BadSignature),
            (sign(&k2, KEY).unwrap(), BreakGlassError::BadSignature),
            (sign(&claims("n1"), b"wrong-key-wrong-key-wrong-key-!!").unwrap(), BreakGlassError::BadSignature),
            (format!("{payload}."), BreakGlassError::BadSignature),
            (sign(&unknown, KEY).unwrap(), BreakGlassError::UnknownKey),
            (sign(&expired, KEY).unwrap(), BreakGlassError::Expired),
            (sign(&long, KEY).unwrap(), BreakGlassError::TooLong),
            (sign(&claims(""), KEY).unwrap(), BreakGlassError::Malformed),
            ("no-dot".into(), BreakGlassError::Malformed),
            (format!("{payload}.!!!"), BreakGlassError::Malformed),
            (format!("{}.{tag}", URL_SAFE_NO_PAD.encode(br#"{"kid":"k1","extra":1}"#)), BreakGlassError::Malformed),
            ("x".repeat(MAX_TOKEN_BYTES + 1), BreakGlassError::Malformed),
        ];
        for (token, expected) in cases {
            assert_eq!(verifier().verify(&token, NOW), Err(expected), "{token}");
        }
    }

    #[test]
    fn refuses_short_signing_keys() {
        assert!(sign(&claims("n"), b"short").is_err());
    }

    #[test]
    fn forgets_nonces_once_their_token_expired_and_stays_bounded() {
        let mut v = BreakGlassVerifier::new(HashMap::from([("k1".to_string(), KEY.to_vec())]), 3);
        for i in 0..10 {
            assert!(v.verify(&sign(&claims(&format!("n{i}")), KEY).unwrap(), NOW).is_ok());
        }
        assert!(v.nonces.len() <= 3);
        let t = sign(&claims("late"), KEY).unwrap();
        assert!(v.verify(&t, NOW).is_ok());
        assert_eq!(v.verify(&t, NOW + 599), Err(BreakGlassError::Replayed));
    }
}
