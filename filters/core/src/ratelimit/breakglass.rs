//! Break-glass: an emergency-access token an operator signs (`fhirgate breakglass sign`) and a
//! clinician sends in a header. A valid one bypasses rate limits and marks the request as
//! emergency access for the consent and audit filters.
//!
//! Format: `<payload>.<mac>`, both base64url without padding; the payload is JSON
//! `{"kid", "user", "reason", "exp", "nonce"}` and the MAC is HMAC-SHA256 of the payload's
//! base64url text under the key named by `kid`. Verification is constant-time (hmac's
//! `verify_slice`), refuses expired tokens and replayed nonces.

use super::bucket::SharedStore;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

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
    /// The nonce ledger is full or persistently contended: refused, never waved through.
    Unavailable,
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
            BreakGlassError::Unavailable => "break-glass-unavailable",
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

/// The shared-data key of the ledger of used nonces, one for every worker of an Envoy.
pub const LEDGER_KEY: &str = "fhirgate.break-glass.nonces";
/// Most unexpired nonces the ledger holds; beyond that new tokens are refused rather than old
/// nonces forgotten (forgetting one would let its token be replayed).
pub const LEDGER_CAPACITY: usize = 4096;
const LEDGER_ENTRY: usize = 24;
const MAX_ATTEMPTS: usize = 16;
/// Longest accepted nonce; nonces are ASCII letters, digits, `-` and `_`.
pub const MAX_NONCE_BYTES: usize = 64;

/// Verifies break-glass tokens against the configured keys and claims each token's nonce in a
/// ledger in Envoy's shared data, so a token is honoured once across every worker until it
/// expires.
pub struct BreakGlassVerifier {
    keys: HashMap<String, Vec<u8>>,
}

impl BreakGlassVerifier {
    pub fn new(keys: HashMap<String, Vec<u8>>) -> Self {
        BreakGlassVerifier { keys }
    }

    pub fn verify(
        &self,
        token: &str,
        now: i64,
        ledger: &mut dyn SharedStore,
    ) -> Result<BreakGlass, BreakGlassError> {
        let claims = self.check(token, now)?;
        claim_nonce(ledger, &claims, now)?;
        Ok(claims)
    }

    /// Signature, expiry and shape, without claiming the nonce.
    pub fn check(&self, token: &str, now: i64) -> Result<BreakGlass, BreakGlassError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(BreakGlassError::Malformed);
        }
        let (payload, tag) = token
            .trim()
            .split_once('.')
            .ok_or(BreakGlassError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| BreakGlassError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| BreakGlassError::Malformed)?;
        let claims: BreakGlass =
            serde_json::from_slice(&bytes).map_err(|_| BreakGlassError::Malformed)?;
        let key = self
            .keys
            .get(&claims.kid)
            .ok_or(BreakGlassError::UnknownKey)?;
        mac(key, payload)
            .ok_or(BreakGlassError::UnknownKey)?
            .verify_slice(&tag)
            .map_err(|_| BreakGlassError::BadSignature)?;
        if claims.exp <= now {
            return Err(BreakGlassError::Expired);
        }
        if claims.exp - now > MAX_VALIDITY_SECONDS {
            return Err(BreakGlassError::TooLong);
        }
        let nonce_ok = !claims.nonce.is_empty()
            && claims.nonce.len() <= MAX_NONCE_BYTES
            && claims
                .nonce
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !nonce_ok || claims.user.is_empty() || claims.reason.is_empty() {
            return Err(BreakGlassError::Malformed);
        }
        Ok(claims)
    }
}

/// Creates the empty ledger if there is none (at configuration, before traffic: creating a
/// shared-data key is not atomic, updating one is).
pub fn ensure_ledger(store: &mut dyn SharedStore) {
    if store.get(LEDGER_KEY).0.is_none() {
        store.set(LEDGER_KEY, &[], None);
    }
}

/// Records the token's nonce as used, or refuses it if it already is. The ledger holds
/// (16 bytes of SHA-256 of kid and nonce, expiry) pairs; expired ones are dropped on write.
fn claim_nonce(
    store: &mut dyn SharedStore,
    claims: &BreakGlass,
    now: i64,
) -> Result<(), BreakGlassError> {
    let digest = Sha256::digest(format!("{}:{}", claims.kid, claims.nonce).as_bytes());
    let id = &digest[..16];
    for _ in 0..MAX_ATTEMPTS {
        let (value, cas) = store.get(LEDGER_KEY);
        let mut live: Vec<u8> =
            Vec::with_capacity(value.as_ref().map_or(0, Vec::len) + LEDGER_ENTRY);
        for entry in value
            .as_deref()
            .unwrap_or_default()
            .chunks_exact(LEDGER_ENTRY)
        {
            let exp = i64::from_le_bytes(
                entry[16..]
                    .try_into()
                    .map_err(|_| BreakGlassError::Unavailable)?,
            );
            if exp <= now {
                continue;
            }
            if &entry[..16] == id {
                return Err(BreakGlassError::Replayed);
            }
            live.extend_from_slice(entry);
        }
        if live.len() / LEDGER_ENTRY >= LEDGER_CAPACITY {
            return Err(BreakGlassError::Unavailable);
        }
        live.extend_from_slice(id);
        live.extend_from_slice(&claims.exp.to_le_bytes());
        if store.set(LEDGER_KEY, &live, cas) {
            return Ok(());
        }
    }
    Err(BreakGlassError::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::bucket::MemoryStore;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_800_000_000;

    fn claims(nonce: &str) -> BreakGlass {
        BreakGlass {
            kid: "k1".into(),
            user: "dr-who".into(),
            reason: "ETREAT".into(),
            exp: NOW + 600,
            nonce: nonce.into(),
        }
    }

    fn verifier() -> BreakGlassVerifier {
        BreakGlassVerifier::new(HashMap::from([
            ("k1".to_string(), KEY.to_vec()),
            (
                "k2".to_string(),
                b"another-key-another-key-another!!".to_vec(),
            ),
        ]))
    }

    #[test]
    fn accepts_a_signed_token_once() {
        let (v, mut ledger) = (verifier(), MemoryStore::default());
        let t = sign(&claims("n1"), KEY).unwrap();
        assert_eq!(v.verify(&t, NOW, &mut ledger).unwrap(), claims("n1"));
        assert_eq!(
            v.verify(&t, NOW + 1, &mut ledger),
            Err(BreakGlassError::Replayed)
        );
        assert!(v
            .verify(&sign(&claims("n2"), KEY).unwrap(), NOW, &mut ledger)
            .is_ok());
    }

    #[test]
    fn refuses_forged_expired_and_malformed_tokens() {
        let t = sign(&claims("n1"), KEY).unwrap();
        let (payload, tag) = t.split_once('.').unwrap();
        let mut other = claims("n1");
        other.user = "attacker".into();
        let swapped = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap())
        );
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
            (
                sign(&claims("n1"), b"wrong-key-wrong-key-wrong-key-!!").unwrap(),
                BreakGlassError::BadSignature,
            ),
            (format!("{payload}."), BreakGlassError::BadSignature),
            (sign(&unknown, KEY).unwrap(), BreakGlassError::UnknownKey),
            (sign(&expired, KEY).unwrap(), BreakGlassError::Expired),
            (sign(&long, KEY).unwrap(), BreakGlassError::TooLong),
            (sign(&claims(""), KEY).unwrap(), BreakGlassError::Malformed),
            (
                sign(&claims("n/1"), KEY).unwrap(),
                BreakGlassError::Malformed,
            ),
            (
                sign(&claims(&"n".repeat(MAX_NONCE_BYTES + 1)), KEY).unwrap(),
                BreakGlassError::Malformed,
            ),
            ("no-dot".into(), BreakGlassError::Malformed),
            (format!("{payload}.!!!"), BreakGlassError::Malformed),
            (
                format!(
                    "{}.{tag}",
                    URL_SAFE_NO_PAD.encode(br#"{"kid":"k1","extra":1}"#)
                ),
                BreakGlassError::Malformed,
            ),
            ("x".repeat(MAX_TOKEN_BYTES + 1), BreakGlassError::Malformed),
        ];
        for (token, expected) in cases {
            assert_eq!(
                verifier().verify(&token, NOW, &mut MemoryStore::default()),
                Err(expected),
                "{token}"
            );
        }
    }

    #[test]
    fn refuses_short_signing_keys() {
        assert!(sign(&claims("n"), b"short").is_err());
    }

    #[test]
    fn forgets_nonces_once_their_token_expired() {
        let (v, mut ledger) = (verifier(), MemoryStore::default());
        for i in 0..10 {
            assert!(v
                .verify(
                    &sign(&claims(&format!("n{i}")), KEY).unwrap(),
                    NOW,
                    &mut ledger
                )
                .is_ok());
        }
        let t = sign(&claims("late"), KEY).unwrap();
        assert!(v.verify(&t, NOW, &mut ledger).is_ok());
        assert_eq!(
            v.verify(&t, NOW + 599, &mut ledger),
            Err(BreakGlassError::Replayed)
        );
        // Past their expiry the ten early nonces are dropped on the next write.
        let mut later = claims("later");
        later.exp = NOW + 1200;
        assert!(v
            .verify(&sign(&later, KEY).unwrap(), NOW + 700, &mut ledger)
            .is_ok());
        assert_eq!(
            ledger.get(LEDGER_KEY).0.unwrap().len(),
            LEDGER_ENTRY,
            "only the live nonce is kept"
        );
    }

    #[test]
    fn a_full_ledger_refuses_new_tokens_instead_of_forgetting_nonces() {
        let v = verifier();
        let mut ledger = MemoryStore::default();
        let entry: Vec<u8> = [[7u8; 16].as_slice(), &(NOW + 600).to_le_bytes()].concat();
        ledger.set(LEDGER_KEY, &entry.repeat(LEDGER_CAPACITY), None);
        assert_eq!(
            v.verify(&sign(&claims("n"), KEY).unwrap(), NOW, &mut ledger),
            Err(BreakGlassError::Unavailable)
        );
    }

    /// Two workers verify the same token: the second one's read is stale by the time it
    /// writes, so its compare-and-swap fails, it re-reads and sees the nonce taken.
    #[test]
    fn a_token_is_honoured_once_across_workers() {
        let v = verifier();
        let mut ledger = MemoryStore::default();
        ensure_ledger(&mut ledger);
        let t = sign(&claims("shared"), KEY).unwrap();
        let stale = ledger.get(LEDGER_KEY);
        assert!(v.verify(&t, NOW, &mut ledger).is_ok(), "worker 1");
        // Worker 2 had read before worker 1 wrote: its write with the stale version fails.
        assert!(!ledger.set(LEDGER_KEY, b"", stale.1));
        assert_eq!(
            v.verify(&t, NOW, &mut ledger),
            Err(BreakGlassError::Replayed),
            "worker 2 re-reads"
        );
        ensure_ledger(&mut ledger);
        assert_eq!(
            v.verify(&t, NOW, &mut ledger),
            Err(BreakGlassError::Replayed),
            "ensure_ledger keeps an existing ledger"
        );
    }
}
