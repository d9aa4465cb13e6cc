//! The verified-token cache: a token verified once is not verified again until it expires.
//! Keyed by the SHA-256 of the token (the token itself is never kept), bounded in size,
//! entries expiring with their token. Each entry keeps the token's grant too, its scopes
//! parsed once when the token is stored rather than on every request, and a hit shares the
//! entry instead of copying it (a token with many scopes would cost a copy of every one).

use super::authz::Grant;
use super::token::VerifiedToken;
use crate::bounded::BoundedMap;
use sha2::{Digest, Sha256};
use std::rc::Rc;

/// A verified token and what it grants, as cached.
pub type Verified = Rc<(VerifiedToken, Grant)>;

pub struct TokenCache {
    entries: BoundedMap<[u8; 32], Verified>,
    pub hits: u64,
    pub misses: u64,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            entries: BoundedMap::new(capacity),
            hits: 0,
            misses: 0,
        }
    }

    pub fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The cached verification of `token` and its grant, if still unexpired at `now`.
    pub fn get(&mut self, key: &[u8; 32], now: i64) -> Option<Verified> {
        match self.entries.get(key) {
            Some(v) if v.0.expires_at > now => {
                self.hits += 1;
                Some(v.clone())
            }
            Some(_) => {
                self.entries.remove(key);
                self.misses += 1;
                None
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn put(&mut self, key: [u8; 32], verified: Verified) {
        self.entries.insert(key, verified);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(exp: i64) -> VerifiedToken {
        VerifiedToken {
            issuer: "i".into(),
            subject: None,
            client_id: None,
            scopes: String::new(),
            patient: None,
            fhir_user: None,
            tenant: None,
            purpose_of_use: None,
            jti: None,
            expires_at: exp,
        }
    }

    #[test]
    fn returns_a_cached_token_until_it_expires() {
        let mut c = TokenCache::new(4);
        let k = TokenCache::key("a.b.c");
        assert_eq!(c.get(&k, 100), None);
        c.put(k, Rc::new((token(200), Grant::default())));
        assert!(c.get(&k, 199).is_some());
        assert_eq!(c.get(&k, 200), None, "expired at its exp");
        assert!(c.is_empty(), "expired entries are dropped");
        assert_eq!((c.hits, c.misses), (1, 2));
    }

    #[test]
    fn stays_within_its_capacity_evicting_the_oldest() {
        let mut c = TokenCache::new(3);
        for i in 0..10 {
            c.put(
                TokenCache::key(&format!("t{i}")),
                Rc::new((token(1000), Grant::default())),
            );
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&TokenCache::key("t9"), 0).is_some());
        assert!(c.get(&TokenCache::key("t0"), 0).is_none());
    }

    #[test]
    fn keeps_the_grant_with_the_token() {
        let mut c = TokenCache::new(1);
        let k = TokenCache::key("t");
        let t = VerifiedToken {
            scopes: "openid patient/Observation.rs".into(),
            patient: Some("p".into()),
            ..token(10)
        };
        c.put(k, Rc::new((t.clone(), Grant::of(&t))));
        let hit = c.get(&k, 0).unwrap();
        assert_eq!(
            (hit.1.scopes.len(), hit.1.patient.as_deref()),
            (1, Some("p"))
        );
        let again = c.get(&k, 0).unwrap();
        assert!(
            Rc::ptr_eq(&hit, &again),
            "a hit shares the entry, it does not copy it"
        );
    }

    #[test]
    fn a_zero_capacity_cache_keeps_nothing() {
        let mut c = TokenCache::new(0);
        let k = TokenCache::key("t");
        c.put(k, Rc::new((token(10), Grant::default())));
        assert!(c.get(&k, 0).is_none());
    }

    #[test]
    fn keys_are_hashes_not_tokens() {
        assert_ne!(TokenCache::key("a"), TokenCache::key("b"));
        assert_eq!(TokenCache::key("a").len(), 32);
    }
}
