//! When to fetch an issuer's JWKS from its `jwks_uri`, and what to do with the answer.
//!
//! Keys are fetched at start, every `refresh` seconds, and on a token whose `kid` is unknown
//! (at most once per `unknown_kid_interval`, so junk `kid`s cannot make the gateway hammer
//! the issuer). A failed fetch keeps the keys it had until they are `max_stale` old; then the
//! issuer's keys are dropped and its tokens refused: fail closed.

use super::token::{parse_jwks, Key};
use serde_json::Value;

/// Where and how often to fetch one issuer's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    /// Envoy cluster that reaches the issuer.
    pub cluster: String,
    /// `:authority` and `:path` of the JWKS URL.
    pub authority: String,
    pub path: String,
    pub refresh: i64,
    pub max_stale: i64,
    pub unknown_kid_interval: i64,
}

impl JwksSource {
    /// Splits `http(s)://host[:port]/path` into authority and path.
    pub fn from_uri(
        cluster: &str,
        uri: &str,
        refresh: i64,
        max_stale: i64,
    ) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("https://")
            .or_else(|| uri.strip_prefix("http://"))
            .ok_or("must start with https:// or http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains(['@', ' ']) {
            return Err("has no usable host".into());
        }
        Ok(JwksSource {
            cluster: cluster.to_string(),
            authority: authority.to_string(),
            path: path.to_string(),
            refresh,
            max_stale,
            unknown_kid_interval: 30,
        })
    }
}

/// The fetch state of one issuer's keys.
#[derive(Debug, Clone, Default)]
pub struct JwksState {
    /// When the keys in use were fetched (0: never, or inline keys).
    pub fetched_at: i64,
    pub last_attempt: i64,
    pub last_unknown_kid_attempt: i64,
    pub in_flight: bool,
    pub refreshes: u64,
    pub failures: u64,
}

impl JwksState {
    pub fn due(&self, source: &JwksSource, now: i64) -> bool {
        !self.in_flight && (self.last_attempt == 0 || now - self.last_attempt >= source.refresh)
    }

    /// A token named a key we do not have: fetch now, unless we did so very recently.
    /// Before the issuer's first answer (a VM just started) every such request fetches for
    /// itself rather than being refused while the scheduled fetch is still under way.
    pub fn may_fetch_for_unknown_kid(&self, source: &JwksSource, now: i64) -> bool {
        self.awaiting_first_answer()
            || (!self.in_flight
                && now - self.last_unknown_kid_attempt >= source.unknown_kid_interval)
    }

    /// No fetch has answered yet, successfully or not.
    pub fn awaiting_first_answer(&self) -> bool {
        self.fetched_at == 0 && self.failures == 0
    }

    pub fn started(&mut self, now: i64, for_unknown_kid: bool) {
        self.in_flight = true;
        self.last_attempt = now;
        if for_unknown_kid {
            self.last_unknown_kid_attempt = now;
        }
    }

    /// The answer of a fetch: the new keys, or None when the old keys stay (failure).
    pub fn finished(&mut self, now: i64, status: Option<u16>, body: &[u8]) -> Option<Vec<Key>> {
        self.in_flight = false;
        let keys = match status {
            Some(200) => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| parse_jwks(&v).ok())
                .filter(|k| !k.is_empty()),
            _ => None,
        };
        match keys {
            Some(keys) => {
                self.fetched_at = now;
                self.refreshes += 1;
                Some(keys)
            }
            None => {
                self.failures += 1;
                None
            }
        }
    }

    /// Fetched keys older than `max_stale` (the issuer has not answered for that long) must
    /// no longer verify anything.
    pub fn stale(&self, source: &JwksSource, now: i64) -> bool {
        self.fetched_at != 0 && now - self.fetched_at > source.max_stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> JwksSource {
        JwksSource::from_uri("issuer", "http://localhost:8080/jwks", 300, 3600).unwrap()
    }

    #[test]
    fn splits_the_uri() {
        let s = source();
        assert_eq!(
            (s.authority.as_str(), s.path.as_str()),
            ("localhost:8080", "/jwks")
        );
        let s = JwksSource::from_uri("c", "https://login.example.org/.well-known/jwks.json", 1, 1)
            .unwrap();
        assert_eq!(
            (s.authority.as_str(), s.path.as_str()),
            ("login.example.org", "/.well-known/jwks.json")
        );
        assert_eq!(
            JwksSource::from_uri("c", "https://idp.example", 1, 1)
                .unwrap()
                .path,
            "/"
        );
        for bad in [
            "ftp://x/jwks",
            "localhost/jwks",
            "https:///jwks",
            "https://user@host/jwks",
        ] {
            assert!(JwksSource::from_uri("c", bad, 1, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn fetches_at_start_then_every_refresh_interval() {
        let (s, mut st) = (source(), JwksState::default());
        assert!(st.due(&s, 1000));
        st.started(1000, false);
        assert!(!st.due(&s, 1000), "one fetch in flight at a time");
        st.finished(1001, Some(500), b"");
        assert!(!st.due(&s, 1200));
        assert!(st.due(&s, 1300));
    }

    #[test]
    fn rate_limits_fetches_for_unknown_kids() {
        let (s, mut st) = (source(), JwksState::default());
        assert!(st.may_fetch_for_unknown_kid(&s, 100));
        st.started(100, true);
        st.finished(100, Some(500), b"");
        assert!(!st.may_fetch_for_unknown_kid(&s, 129));
        assert!(st.may_fetch_for_unknown_kid(&s, 130));
    }

    #[test]
    fn keeps_old_keys_on_failure_until_they_are_stale() {
        let (s, mut st) = (source(), JwksState::default());
        st.fetched_at = 1000;
        assert!(
            st.finished(2000, None, b"").is_none(),
            "issuer down: keep what we have"
        );
        assert!(st.finished(2000, Some(200), b"not json").is_none());
        assert!(
            st.finished(2000, Some(200), br#"{"keys": []}"#).is_none(),
            "an empty set never replaces keys"
        );
        assert_eq!(st.failures, 3);
        assert!(!st.stale(&s, 4600));
        assert!(st.stale(&s, 4601));
    }
}
