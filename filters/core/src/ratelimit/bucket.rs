//! Token buckets in Envoy's shared data, correct across worker threads: each take reads the
//! bucket and its compare-and-swap version, computes, and writes back only if nobody wrote in
//! between (else it reads again). Capacity is the tier's limit, refilled at limit per window.
//!
//! The store is a trait so the logic is tested natively, with interleaved "workers".

use super::classify::Tier;

/// Envoy's shared data: values with a version for compare-and-swap. As in Envoy, a write
/// without a version is unconditional, so creating a key is not atomic: two workers that both
/// find a bucket absent both create it, and the first request of a key may be admitted once
/// per worker. Every later take is exact.
pub trait SharedStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes if the version is still `cas` (None: unconditionally); false on a mismatch.
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// Shared data in one process's memory, with Envoy's compare-and-swap semantics: for the CLI,
/// native tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryStore {
    values: std::collections::HashMap<String, (Vec<u8>, u32)>,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.values.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let current = self.values.get(key).map(|(_, c)| *c);
        // As in Envoy: no version writes unconditionally; a stale version is refused.
        if cas.is_some() && cas != current {
            return false;
        }
        let next = current.unwrap_or(0).wrapping_add(1);
        self.values.insert(key.to_string(), (value.to_vec(), next));
        true
    }
}

/// How many times a take re-reads after losing a compare-and-swap race.
const MAX_ATTEMPTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Allowed {
        remaining: u32,
        reset_seconds: u32,
    },
    Limited {
        retry_after_seconds: u32,
    },
    /// The bucket could not be updated (persistent contention): the caller's failure mode
    /// decides (fail closed by default).
    Contended,
}

/// Bucket state: milli-tokens and the time of the last refill, 16 bytes little-endian.
fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
    let tokens = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let at = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((tokens, at))
}

fn encode(tokens: u64, at: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&tokens.to_le_bytes());
    out[8..].copy_from_slice(&at.to_le_bytes());
    out
}

/// Takes `weight` tokens from the bucket `key` at `now_ms`.
pub fn take(store: &mut dyn SharedStore, key: &str, tier: Tier, weight: u32, now_ms: u64) -> Admit {
    let capacity = u64::from(tier.limit) * 1000;
    let window_ms = u64::from(tier.window_seconds) * 1000;
    let cost = u64::from(weight) * 1000;
    for _ in 0..MAX_ATTEMPTS {
        let (value, cas) = store.get(key);
        let (tokens, at) = value
            .as_deref()
            .and_then(decode)
            .unwrap_or((capacity, now_ms));
        // Refill: limit tokens per window, i.e. capacity milli-tokens per window_ms.
        let elapsed = now_ms.saturating_sub(at);
        let refilled = tokens
            .saturating_add(elapsed.saturating_mul(capacity) / window_ms.max(1))
            .min(capacity);
        if cost > capacity {
            // Never satisfiable.
            return Admit::Limited {
                retry_after_seconds: tier.window_seconds,
            };
        }
        if cost > refilled {
            // Refused without writing: the refill keeps counting from the last admitted take
            // (writing here would drop the fraction of a token refilled so far).
            let wait_ms = (cost - refilled)
                .saturating_mul(window_ms)
                .div_ceil(capacity.max(1));
            return Admit::Limited {
                retry_after_seconds: wait_ms.div_ceil(1000).max(1) as u32,
            };
        }
        let left = refilled - cost;
        let reset = ((capacity - left).saturating_mul(window_ms) / capacity.max(1)).div_ceil(1000);
        if store.set(key, &encode(left, now_ms.max(at)), cas) {
            return Admit::Allowed {
                remaining: (left / 1000) as u32,
                reset_seconds: reset as u32,
            };
        }
    }
    Admit::Contended
}

#[cfg(test)]
mod tests {
    use super::*;

    type Store = MemoryStore;

    const TIER: Tier = Tier {
        limit: 5,
        window_seconds: 60,
    };

    #[test]
    fn admits_the_limit_then_refuses_with_retry_after() {
        let mut s = Store::default();
        for i in 0..5 {
            assert_eq!(
                take(&mut s, "k", TIER, 1, 1_000),
                Admit::Allowed {
                    remaining: 4 - i,
                    reset_seconds: 12 * (i + 1)
                }
            );
        }
        assert_eq!(
            take(&mut s, "k", TIER, 1, 1_000),
            Admit::Limited {
                retry_after_seconds: 12
            }
        );
        assert!(
            matches!(take(&mut s, "other", TIER, 1, 1_000), Admit::Allowed { .. }),
            "another key, another bucket"
        );
    }

    #[test]
    fn refills_at_limit_per_window() {
        let mut s = Store::default();
        for _ in 0..5 {
            take(&mut s, "k", TIER, 1, 0);
        }
        assert!(matches!(
            take(&mut s, "k", TIER, 1, 11_999),
            Admit::Limited { .. }
        ));
        assert!(matches!(
            take(&mut s, "k", TIER, 1, 12_000),
            Admit::Allowed { remaining: 0, .. }
        ));
        assert!(
            matches!(
                take(&mut s, "k", TIER, 5, 72_000),
                Admit::Allowed { remaining: 0, .. }
            ),
            "a full window refills all"
        );
    }

    #[test]
    fn weights_spend_several_tokens_and_oversized_weights_never_pass() {
        let mut s = Store::default();
        assert!(matches!(
            take(&mut s, "k", TIER, 4, 0),
            Admit::Allowed { remaining: 1, .. }
        ));
        assert!(matches!(
            take(&mut s, "k", TIER, 2, 0),
            Admit::Limited { .. }
        ));
        assert_eq!(
            take(&mut s, "k", TIER, 6, 0),
            Admit::Limited {
                retry_after_seconds: 60
            }
        );
    }

    /// Two workers: each reads, then the other writes first, so every other write loses its
    /// compare-and-swap and must re-read. Exactly `limit` requests are admitted once the
    /// bucket exists (its creation is the one non-atomic step, see [`SharedStore`]).
    #[test]
    fn interleaved_workers_never_over_admit() {
        struct Racy {
            inner: Store,
            /// Before each successful read, the other worker sneaks in a take.
            sneak: u32,
        }
        impl SharedStore for Racy {
            fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
                self.inner.get(key)
            }
            fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
                if self.sneak > 0 {
                    self.sneak -= 1;
                    let before = self.inner.get(key);
                    let (tokens, at) = before.0.as_deref().and_then(decode).unwrap_or((5_000, 0));
                    if tokens >= 1000 {
                        self.inner.set(key, &encode(tokens - 1000, at), before.1);
                        SNEAKED.with(|c| c.set(c.get() + 1));
                    }
                }
                self.inner.set(key, value, cas)
            }
        }
        thread_local!(static SNEAKED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        let mut inner = Store::default();
        assert!(matches!(
            take(&mut inner, "k", TIER, 1, 0),
            Admit::Allowed { .. }
        ));
        let mut s = Racy { inner, sneak: 3 };
        let mut admitted = 1;
        for _ in 0..20 {
            if matches!(take(&mut s, "k", TIER, 1, 0), Admit::Allowed { .. }) {
                admitted += 1;
            }
        }
        let sneaked = SNEAKED.with(|c| c.get());
        assert!(sneaked > 0, "the race happened");
        assert_eq!(
            admitted + sneaked,
            TIER.limit,
            "admitted {admitted} + {sneaked} by the other worker"
        );
    }

    #[test]
    fn creating_a_bucket_is_the_one_racy_step() {
        // Both workers find the bucket absent and both create it: one extra admission, once.
        let mut s = Store::default();
        let (absent, _) = s.get("k");
        assert!(absent.is_none());
        assert!(matches!(
            take(&mut s, "k", TIER, 1, 0),
            Admit::Allowed { remaining: 4, .. }
        ));
        assert!(
            s.set("k", &encode(4_000, 0), None),
            "the other worker's unversioned create lands"
        );
        let admitted = (0..10)
            .filter(|_| matches!(take(&mut s, "k", TIER, 1, 0), Admit::Allowed { .. }))
            .count();
        assert_eq!(admitted, 4, "after creation every take is exact");
    }

    #[test]
    fn gives_up_under_persistent_contention() {
        struct Lost;
        impl SharedStore for Lost {
            fn get(&self, _: &str) -> (Option<Vec<u8>>, Option<u32>) {
                (None, None)
            }
            fn set(&mut self, _: &str, _: &[u8], _: Option<u32>) -> bool {
                false
            }
        }
        assert_eq!(take(&mut Lost, "k", TIER, 1, 0), Admit::Contended);
    }

    #[test]
    fn a_corrupt_value_is_treated_as_a_full_bucket_then_replaced() {
        let mut s = Store::default();
        s.set("k", b"junk", None);
        assert!(matches!(
            take(&mut s, "k", TIER, 1, 0),
            Admit::Allowed { remaining: 4, .. }
        ));
    }
}
