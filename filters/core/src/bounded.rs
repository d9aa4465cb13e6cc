//! A map bounded in size that forgets its oldest entries first: the storage of the
//! verified-token cache and the Consent cache.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub struct BoundedMap<K, V> {
    capacity: usize,
    entries: HashMap<K, V>,
    /// Insertion order, for eviction. May hold keys removed since; pruned when it outgrows
    /// twice the capacity, so removals and re-insertions never make it grow without bound.
    order: VecDeque<K>,
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedMap {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.entries.get(key)
    }

    /// Removes the key; true when it was there.
    pub fn remove<Q: Eq + Hash + ?Sized>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.entries.remove(key).is_some()
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Inserts or replaces; with capacity 0 keeps nothing.
    pub fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        if let Some(slot) = self.entries.get_mut(&key) {
            *slot = value;
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        self.entries.insert(key.clone(), value);
        self.order.push_back(key);
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn order_len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_first_and_stays_bounded() {
        let mut m = BoundedMap::new(2);
        m.insert("a", 1);
        m.insert("b", 2);
        m.insert("a", 10);
        assert_eq!(m.get(&"a"), Some(&10), "a replacement keeps the place");
        m.insert("c", 3);
        assert_eq!(
            (m.get(&"a"), m.get(&"b"), m.get(&"c")),
            (None, Some(&2), Some(&3))
        );
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn removals_and_reinsertions_never_grow_the_order_without_bound() {
        let mut m = BoundedMap::new(4);
        for i in 0..1000 {
            m.insert(i % 3, i);
            m.remove(&(i % 3));
        }
        assert!(m.order_len() <= 8, "{}", m.order_len());
        assert!(m.is_empty());
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut m = BoundedMap::new(0);
        m.insert(1, 1);
        assert!(m.is_empty());
    }
}
