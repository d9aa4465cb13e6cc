//! What the stages know about a request, named by [`crate::headers`]: set by the stage that
//! learns it, read by the stages after it.
//!
//! In one module the facts stay in memory. Between separate filters they travel as one
//! filter-state value ([`Facts::encode`], [`Facts::decode`]): Envoy keeps it per stream, and a
//! client has no way to set it, unlike a header. Which facts also become request headers, and
//! when, is [`Facts::take_exports`]'s business.

use crate::headers;

/// A request's facts, in the order they were first set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pairs: Vec<(&'static str, String)>,
    /// Set or changed since the last [`Facts::take_exports`] or [`Facts::take_changed`].
    exports_due: Vec<&'static str>,
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

    /// The filter-state form: a JSON object of name to value.
    pub fn encode(&self) -> Vec<u8> {
        let map: serde_json::Map<String, serde_json::Value> = self
            .pairs
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::to_vec(&map).unwrap_or_default()
    }

    /// Reads the filter-state form back. Only names of the contract are kept; anything
    /// malformed gives no facts (a later stage then acts on none, and fails closed where it
    /// needs them). Facts read back are already where they belong: none is due for export.
    pub fn decode(bytes: &[u8]) -> Facts {
        let Ok(map) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
        else {
            return Facts::default();
        };
        let pairs = map
            .into_iter()
            .filter_map(|(k, v)| {
                let name = headers::FACTS.iter().find(|n| **n == k)?;
                Some((*name, v.as_str()?.to_string()))
            })
            .collect();
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
        assert_eq!(f.encode(), br#"{"x-fhirgate-subject":"b"}"#.to_vec());
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
    fn decoding_keeps_the_contracts_names_and_drops_the_rest() {
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

        let odd = Facts::decode(br#"{"x-fhirgate-patient":"p","x-other":"y","x-fhirgate-id":7}"#);
        assert_eq!(odd.get(PATIENT), Some("p"));
        assert!(!odd.contains("x-other") && !odd.contains(ID));
        for junk in [&b""[..], b"[]", b"{", b"null", b"\xff"] {
            assert!(Facts::decode(junk).is_empty());
        }
    }
}
