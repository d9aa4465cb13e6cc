//! What the stages know about a request, named by [`crate::headers`]: set by the stage that
//! learns it, read by the stages after it.
//!
//! In one module the facts stay in memory. Between separate filters they travel as one
//! filter-state value ([`Facts::encode`], [`Facts::decode`]): Envoy keeps it per stream, and a
//! client has no way to set it, unlike a header. Which facts also become request headers, and
//! when, is [`Facts::take_exports`]'s business.

use crate::headers;

// A fact's index in the filter-state form is one byte.
const _: () = assert!(headers::FACTS.len() <= u8::MAX as usize);

/// A request's facts, in the order they were first set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pairs: Vec<(&'static str, String)>,
    /// Exported facts set or changed since the last [`Facts::take_exports`].
    exports_due: Vec<&'static str>,
    /// Anything set or changed since the last [`Facts::take_changed`].
    changed: bool,
}

impl Facts {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| *k == name)
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Sets one fact, replacing an earlier value.
    pub fn set(&mut self, name: &'static str, value: String) {
        // A name outside the contract would not survive the filter-state form.
        debug_assert!(
            headers::FACTS.contains(&name),
            "{name} is not in headers::FACTS"
        );
        match self.pairs.iter_mut().find(|(k, _)| *k == name) {
            Some((_, old)) if *old == value => return,
            Some((_, old)) => *old = value,
            None => self.pairs.push((name, value)),
        }
        self.changed = true;
        if headers::is_exported(name) && !self.exports_due.contains(&name) {
            self.exports_due.push(name);
        }
    }

    /// Sets each of `values` (the shape the core's decisions return them in).
    pub fn extend(&mut self, values: &[(&'static str, String)]) {
        for (name, value) in values {
            self.set(name, value.clone());
        }
    }

    /// The facts that must become request headers because they were set since last asked.
    pub fn take_exports(&mut self) -> Vec<(&'static str, &str)> {
        let due = std::mem::take(&mut self.exports_due);
        due.into_iter()
            .filter_map(|name| self.get(name).map(|v| (name, v)))
            .collect()
    }

    /// Whether anything was set since last asked (the filter-state value needs writing).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The filter-state form, compact because every filter of the module after the first
    /// reads it: per fact, its index in [`headers::FACTS`] (one byte), the value's length (two
    /// bytes, little-endian) and the value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pairs.iter().map(|(_, v)| 3 + v.len()).sum());
        for (name, value) in &self.pairs {
            let Some(index) = headers::FACTS.iter().position(|n| n == name) else {
                continue;
            };
            let Ok(len) = u16::try_from(value.len()) else {
                // Nothing rather than a part: the filters after this one then fail closed.
                return Vec::new();
            };
            out.push(index as u8);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// Reads the filter-state form back. Anything malformed (an unknown index, a length past
    /// the end, a value that is not UTF-8) gives no facts at all: a later stage then acts on
    /// none, and fails closed where it needs them. Facts read back are already where they
    /// belong: none is due for export.
    pub fn decode(bytes: &[u8]) -> Facts {
        let mut pairs = Vec::new();
        let mut rest = bytes;
        while let [index, lo, hi, tail @ ..] = rest {
            let len = u16::from_le_bytes([*lo, *hi]) as usize;
            let (Some(name), Some(value)) = (headers::FACTS.get(*index as usize), tail.get(..len))
            else {
                return Facts::default();
            };
            let Ok(value) = std::str::from_utf8(value) else {
                return Facts::default();
            };
            pairs.push((*name, value.to_string()));
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            return Facts::default();
        }
        Facts {
            pairs,
            ..Facts::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::*;

    #[test]
    fn a_set_fact_replaces_the_earlier_value() {
        let mut f = Facts::default();
        f.set(SUBJECT, "a".into());
        f.set(SUBJECT, "b".into());
        assert_eq!(f.get(SUBJECT), Some("b"));
        assert_eq!(Facts::decode(&f.encode()).get(SUBJECT), Some("b"));
    }

    #[test]
    fn only_exported_facts_are_due_as_headers_and_each_once() {
        let mut f = Facts::default();
        f.extend(&[
            (INTERACTION, "read".into()),
            (PATIENT, "p1".into()),
            (SUBJECT, "alice".into()),
            (RL_CLASS, "read".into()),
        ]);
        assert_eq!(
            f.take_exports(),
            vec![(SUBJECT, "alice"), (RL_CLASS, "read")]
        );
        assert!(f.take_exports().is_empty());
        f.set(SUBJECT, "alice".into());
        assert!(
            f.take_exports().is_empty(),
            "an unchanged value is not due again"
        );
        f.set(SUBJECT, "bob".into());
        assert_eq!(f.take_exports(), vec![(SUBJECT, "bob")]);
    }

    #[test]
    fn changes_are_reported_once() {
        let mut f = Facts::default();
        assert!(!f.take_changed());
        f.set(POOL, "fhir".into());
        assert!(f.take_changed());
        assert!(!f.take_changed());
    }

    #[test]
    fn facts_come_back_from_the_filter_state_and_anything_malformed_gives_none() {
        let mut f = Facts::default();
        f.extend(&[
            (INTERACTION, "read".into()),
            (ID, "a\"b\\c".into()),
            (SCOPES, "patient/*.rs".into()),
        ]);
        let back = Facts::decode(&f.encode());
        assert_eq!(back.get(INTERACTION), Some("read"));
        assert_eq!(back.get(ID), Some("a\"b\\c"));
        assert_eq!(back.get(SCOPES), Some("patient/*.rs"));
        let mut back = back;
        assert!(
            back.take_exports().is_empty(),
            "already exported upstream of here"
        );
        assert!(!back.take_changed());

        let mut bytes = f.encode();
        bytes.pop();
        assert!(Facts::decode(&bytes).is_empty(), "a cut value");
        let mut unknown = f.encode();
        unknown[0] = FACTS.len() as u8;
        assert!(Facts::decode(&unknown).is_empty(), "an unknown fact");
        let mut trailing = f.encode();
        trailing.push(0);
        assert!(
            Facts::decode(&trailing).is_empty(),
            "bytes after the last fact"
        );
        let bad_utf8 = [0u8, 1, 0, 0xff];
        assert!(Facts::decode(&bad_utf8).is_empty());
        assert!(Facts::decode(b"").is_empty());
        let mut huge = Facts::default();
        huge.set(INTERACTION, "read".into());
        huge.set(SCOPES, "x".repeat(70_000));
        assert!(huge.encode().is_empty(), "all or nothing");
    }
}

#[cfg(test)]
mod property_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the facts, they come back as they were; whatever the bytes, decoding
        /// never panics and keeps only names of the contract.
        #[test]
        fn facts_survive_the_filter_state_and_junk_decodes_to_contract_names(
            values in proptest::collection::vec((0..headers::FACTS.len(), "\\PC{0,80}"), 0..12),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut facts = Facts::default();
            for (index, value) in &values {
                facts.set(headers::FACTS[*index], value.clone());
            }
            let back = Facts::decode(&facts.encode());
            for name in headers::FACTS {
                prop_assert_eq!(back.get(name), facts.get(name));
            }
            for (name, _) in &Facts::decode(&junk).pairs {
                prop_assert!(headers::FACTS.contains(name));
            }
        }
    }
}
