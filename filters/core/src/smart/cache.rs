//! The verified-token cache: a token verified once is not verified again until it expires.
//! Bounded in size, entries expiring with their token. Each entry keeps the token's grant too,
//! its scopes parsed once when the token is stored rather than on every request, and a hit
//! shares the entry instead of copying it (a token with many scopes would cost a copy of
//! every one).
//!
//! Entries are found by a keyed SipHash of the token (keys random per store, so nobody can
//! aim a token at another's slot) and a hit is confirmed by comparing the whole token, in
//! constant time. It replaces a SHA-256 of the token on every request, which cost more than
//! anything else on the cached path and grew with the token (a 64-scope token is several KB).
//! The price: the cache holds the tokens it verified, in the gateway's memory, as long as their
//! entries live — as a worker holds every request's token while it is served.
//!
//! The entries are a [`TokenStore`] that the native module's workers share (one per
//! configuration and process): a token verified on one worker is a hit on every other.

use super::authz::Grant;
use super::token::VerifiedToken;
use crate::bounded::BoundedMap;
use sha2::{Digest, Sha256};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A verified token and what it grants, as cached.
pub type Verified = Arc<(VerifiedToken, Grant)>;

struct Entry {
    token: Box<[u8]>,
    verified: Verified,
}

/// The cache's entries. A host whose workers share memory (the native module) gives every
/// worker's cache the same store, so a token verified on one worker is a hit on all; a Wasm VM
/// has its own.
pub struct TokenStore {
    entries: BoundedMap<u64, Entry>,
    seeds: RandomState,
    /// Opaque tokens introspection called inactive (by SHA-256), until when the answer stands:
    /// shared with the entries, so an active answer on another worker cannot cache again a
    /// token one worker found inactive.
    inactive: HashMap<[u8; 32], i64>,
    capacity: usize,
}

pub type SharedTokenStore = Arc<Mutex<TokenStore>>;

impl TokenStore {
    pub fn new(capacity: usize) -> TokenStore {
        TokenStore {
            entries: BoundedMap::new(capacity),
            seeds: RandomState::new(),
            inactive: HashMap::new(),
            capacity,
        }
    }

    pub fn shared(capacity: usize) -> SharedTokenStore {
        Arc::new(Mutex::new(TokenStore::new(capacity)))
    }

    fn slot(&self, token: &str) -> u64 {
        self.seeds.hash_one(token.as_bytes())
    }

    fn insert(&mut self, token: &str, verified: Verified) {
        let slot = self.slot(token);
        self.entries.insert(
            slot,
            Entry {
                token: token.as_bytes().into(),
                verified,
            },
        );
    }
}

/// One worker's view of a [`TokenStore`], with its own hit and miss counts.
pub struct TokenCache {
    store: SharedTokenStore,
    pub hits: u64,
    pub misses: u64,
}

/// Equality that takes as long whatever the first differing byte (the lengths may show).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenCache {
    /// A cache over a store of its own.
    pub fn new(capacity: usize) -> Self {
        TokenCache::over(TokenStore::shared(capacity))
    }

    /// A cache over `store`, which other workers' caches may share.
    pub fn over(store: SharedTokenStore) -> Self {
        TokenCache {
            store,
            hits: 0,
            misses: 0,
        }
    }

    /// A SHA-256 digest of the token, where a token must be remembered without being kept
    /// (the introspection's inactive answers).
    pub fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    fn store(&self) -> MutexGuard<'_, TokenStore> {
        // A panic while the lock was held left entries that are each whole: still usable.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached verification of `token` and its grant, if still unexpired at `now`.
    pub fn get(&mut self, token: &str, now: i64) -> Option<Verified> {
        let mut store = self.store();
        let slot = store.slot(token);
        let found = store
            .entries
            .get(&slot)
            .filter(|e| same(&e.token, token.as_bytes()))
            .map(|e| e.verified.clone());
        let result = match found {
            Some(v) if v.0.expires_at > now => Some(v),
            Some(_) => {
                store.entries.remove(&slot);
                None
            }
            None => None,
        };
        drop(store);
        match result {
            Some(v) => {
                self.hits += 1;
                Some(v)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn put(&mut self, token: &str, verified: Verified) {
        self.store().insert(token, verified);
    }

    /// Forgets `token`'s entry (an introspection that now calls it inactive).
    pub fn forget(&mut self, token: &str) {
        let mut store = self.store();
        let slot = store.slot(token);
        if store
            .entries
            .get(&slot)
            .is_some_and(|e| same(&e.token, token.as_bytes()))
        {
            store.entries.remove(&slot);
        }
    }

    /// Caches an introspection's active answer, unless a worker sharing the store found the
    /// token inactive since (inactive wins).
    pub fn put_unless_inactive(&mut self, token: &str, verified: Verified, now: i64) {
        let key = TokenCache::digest(token);
        let mut store = self.store();
        if store.inactive.get(&key).is_none_or(|until| *until <= now) {
            store.insert(token, verified);
        }
    }

    /// Records that introspection found `token` inactive until `until`, and forgets any
    /// entry an earlier answer cached. Bounded by the store's capacity (expired marks go first;
    /// past it, the token is introspected again next time, which refuses it again).
    pub fn mark_inactive(&mut self, token: &str, until: i64, now: i64) {
        let key = TokenCache::digest(token);
        self.forget(token);
        let mut store = self.store();
        let capacity = store.capacity.max(1);
        if store.inactive.len() >= capacity {
            store.inactive.retain(|_, u| *u > now);
        }
        if store.inactive.len() < capacity {
            store.inactive.insert(key, until);
        }
    }

    /// Whether introspection found `token` inactive and the answer still stands at `now`.
    pub fn known_inactive(&mut self, token: &str, now: i64) -> bool {
        let key = TokenCache::digest(token);
        let mut store = self.store();
        match store.inactive.get(&key) {
            Some(until) if *until > now => true,
            Some(_) => {
                store.inactive.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Forgets every entry, for every worker sharing the store (an issuer's keys went stale).
    pub fn clear(&mut self) {
        self.store().entries.clear();
    }

    pub fn len(&self) -> usize {
        self.store().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store().entries.is_empty()
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
        let k = "a.b.c";
        assert_eq!(c.get(k, 100), None);
        c.put(k, Arc::new((token(200), Grant::default())));
        assert!(c.get(k, 199).is_some());
        assert_eq!(c.get(k, 200), None, "expired at its exp");
        assert!(c.is_empty(), "expired entries are dropped");
        assert_eq!((c.hits, c.misses), (1, 2));
    }

    #[test]
    fn stays_within_its_capacity_evicting_the_oldest() {
        let mut c = TokenCache::new(3);
        for i in 0..10 {
            c.put(&format!("t{i}"), Arc::new((token(1000), Grant::default())));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("t9", 0).is_some());
        assert!(c.get("t0", 0).is_none());
    }

    #[test]
    fn keeps_the_grant_with_the_token() {
        let mut c = TokenCache::new(1);
        let k = "t";
        let t = VerifiedToken {
            scopes: "openid patient/Observation.rs".into(),
            patient: Some("p".into()),
            ..token(10)
        };
        c.put(k, Arc::new((t.clone(), Grant::of(&t))));
        let hit = c.get(k, 0).unwrap();
        assert_eq!(
            (hit.1.scopes.len(), hit.1.patient.as_deref()),
            (1, Some("p"))
        );
        let again = c.get(k, 0).unwrap();
        assert!(
            Arc::ptr_eq(&hit, &again),
            "a hit shares the entry, it does not copy it"
        );
    }

    #[test]
    fn a_zero_capacity_cache_keeps_nothing() {
        let mut c = TokenCache::new(0);
        c.put("t", Arc::new((token(10), Grant::default())));
        assert!(c.get("t", 0).is_none());
    }

    #[test]
    fn a_hit_needs_the_whole_token_not_just_its_slot() {
        let mut c = TokenCache::new(4);
        c.put("a.b.c", Arc::new((token(100), Grant::default())));
        // Another token forced into the same slot (what a hash collision would be) misses.
        {
            let mut store = c.store();
            let slot = store.slot("a.b.c");
            let cached = store
                .entries
                .get(&slot)
                .map(|e| e.verified.clone())
                .unwrap();
            store.entries.insert(
                slot,
                Entry {
                    token: b"a.b.d".to_vec().into(),
                    verified: cached,
                },
            );
        }
        assert!(c.get("a.b.c", 0).is_none());
        assert!(!same(b"a.b.c", b"a.b.d") && !same(b"abc", b"ab") && same(b"abc", b"abc"));
    }

    #[test]
    fn a_forgotten_token_is_verified_again() {
        let mut c = TokenCache::new(4);
        c.put("a.b.c", Arc::new((token(100), Grant::default())));
        c.forget("x.y.z");
        assert!(c.get("a.b.c", 0).is_some(), "another token forgets nothing");
        c.forget("a.b.c");
        assert!(c.get("a.b.c", 0).is_none());
    }

    #[test]
    fn slots_are_keyed_per_store() {
        let (a, b) = (TokenCache::new(1), TokenCache::new(1));
        assert_ne!(
            a.store().slot("same.token.value"),
            b.store().slot("same.token.value")
        );
    }

    #[test]
    fn caches_over_one_store_share_entries_and_count_their_own_hits() {
        let store = TokenStore::shared(4);
        let (mut one, mut other) = (TokenCache::over(store.clone()), TokenCache::over(store));
        one.put("a.b.c", Arc::new((token(100), Grant::default())));
        assert!(
            other.get("a.b.c", 0).is_some(),
            "verified on one worker, a hit on another"
        );
        assert_eq!((one.hits, other.hits), (0, 1));
        other.clear();
        assert!(
            one.get("a.b.c", 0).is_none(),
            "a clear reaches every worker"
        );
    }

    #[test]
    fn an_inactive_answer_on_one_worker_wins_over_an_active_one_on_another() {
        let store = TokenStore::shared(4);
        let (mut one, mut other) = (TokenCache::over(store.clone()), TokenCache::over(store));
        other.put("opaque", Arc::new((token(1000), Grant::default())));
        one.mark_inactive("opaque", 60, 0);
        assert!(
            other.get("opaque", 1).is_none(),
            "the earlier active entry is gone"
        );
        assert!(other.known_inactive("opaque", 1));
        // A late active answer on the other worker cannot cache it again while the mark stands.
        other.put_unless_inactive("opaque", Arc::new((token(1000), Grant::default())), 2);
        assert!(one.get("opaque", 3).is_none());
        // Once it lapses, introspection decides again.
        assert!(!one.known_inactive("opaque", 61));
        other.put_unless_inactive("opaque", Arc::new((token(1000), Grant::default())), 62);
        assert!(one.get("opaque", 63).is_some());
    }

    #[test]
    fn inactive_marks_stay_within_the_capacity() {
        let mut c = TokenCache::new(2);
        for i in 0..5 {
            c.mark_inactive(&format!("t{i}"), 100, 0);
        }
        assert_eq!(c.store().inactive.len(), 2);
        // Expired marks make room.
        c.mark_inactive("late", 300, 200);
        assert!(c.known_inactive("late", 201));
    }

    #[test]
    fn caches_over_one_store_stay_exact_under_threads() {
        let store = TokenStore::shared(1000);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut cache = TokenCache::over(store.clone());
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let key = format!("t{t}.{i}");
                        cache.put(&key, Arc::new((token(100), Grant::default())));
                        assert!(cache.get(&key, 0).is_some());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(TokenCache::over(store).len(), 800);
    }
}
