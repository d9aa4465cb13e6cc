//! Patients' Consents as fetched from the FHIR server: the search to send, the answer read,
//! and a bounded cache whose entries expire after the configured TTL (so a Consent changed on
//! the server takes effect within it).

use super::config::ConsentSourceConfig;
use super::provision::is_privacy_consent;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};

/// The search path for one patient's active Consents (the id is a valid FHIR id, checked when
/// it was read from a reference, so it needs no escaping).
pub fn search_path(source: &ConsentSourceConfig, patient: &str) -> String {
    format!("{}?patient=Patient/{patient}&status=active&_count=100", source.path)
}

/// The privacy Consents in a search answer; None when the answer is not a 200 searchset (a
/// failed fetch: nothing is known about the patient's Consents).
pub fn read_search(status: Option<u16>, body: &[u8]) -> Option<Vec<Value>> {
    if status != Some(200) {
        return None;
    }
    let bundle: Value = serde_json::from_slice(body).ok()?;
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return None;
    }
    let entries = match bundle.get("entry") {
        Some(Value::Array(e)) => e.as_slice(),
        None => &[],
        Some(_) => return None,
    };
    // A next page would hide Consents: a patient with more than a page is not decided on half.
    let paged = bundle.get("link").and_then(Value::as_array).is_some_and(|links| links.iter().any(|l| l.get("relation").and_then(Value::as_str) == Some("next")));
    if paged {
        return None;
    }
    Some(entries.iter().filter_map(|e| e.get("resource")).filter(|r| is_privacy_consent(r)).cloned().collect())
}

pub struct ConsentCache {
    entries: HashMap<String, (Vec<Value>, i64)>,
    order: VecDeque<String>,
    capacity: usize,
    ttl: i64,
}

impl ConsentCache {
    pub fn new(capacity: usize, ttl_seconds: u32) -> Self {
        ConsentCache { entries: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1), ttl: i64::from(ttl_seconds) }
    }

    /// The patient's Consents if fetched less than the TTL ago.
    pub fn get(&self, patient: &str, now: i64) -> Option<&[Value]> {
        self.entries.get(patient).filter(|(_, at)| now - at < self.ttl).map(|(list, _)| list.as_slice())
    }

    pub fn insert(&mut self, patient: &str, consents: Vec<Value>, now: i64) {
        if self.entries.insert(patient.to_string(), (consents, now)).is_none() {
            self.order.push_back(patient.to_string());
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
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
    use serde_json::json;

    fn privacy(id: &str) -> Value {
        json!({"resourceType": "Consent", "id": id, "status": "active", "scope": {"coding": [{"code": "patient-privacy"}]}})
    }

    #[test]
    fn reads_privacy_consents_from_a_searchset() {
        let body = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": privacy("a")}, {"resource": {"resourceType": "Consent", "status": "active", "scope": {"coding": [{"code": "research"}]}}},
            {"resource": {"resourceType": "OperationOutcome"}}]});
        let got = read_search(Some(200), &serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(got, vec![privacy("a")]);
        assert_eq!(read_search(Some(200), br#"{"resourceType":"Bundle","type":"searchset"}"#), Some(vec![]), "no Consents is an answer");
    }

    #[test]
    fn failures_and_partial_answers_are_not_answers() {
        let paged = json!({"resourceType": "Bundle", "link": [{"relation": "next", "url": "x"}], "entry": [{"resource": privacy("a")}]});
        for (status, body) in [
            (Some(500), b"{}".to_vec()),
            (None, Vec::new()),
            (Some(200), b"not json".to_vec()),
            (Some(200), br#"{"resourceType":"OperationOutcome"}"#.to_vec()),
            (Some(200), serde_json::to_vec(&paged).unwrap()),
        ] {
            assert_eq!(read_search(status, &body), None, "{status:?} {}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn entries_expire_after_the_ttl_and_the_cache_stays_bounded() {
        let mut c = ConsentCache::new(2, 10);
        c.insert("p1", vec![privacy("a")], 100);
        assert_eq!(c.get("p1", 109).map(<[Value]>::len), Some(1));
        assert!(c.get("p1", 110).is_none(), "expired");
        c.insert("p2", vec![], 100);
        c.insert("p3", vec![], 100);
        assert_eq!(c.len(), 2);
        assert!(c.get("p1", 100).is_none(), "the oldest was evicted");
        c.insert("p3", vec![privacy("b")], 105);
        assert_eq!(c.get("p3", 110).map(<[Value]>::len), Some(1), "a refetch replaces the entry");
    }

    #[test]
    fn the_search_names_the_patient_and_active_status() {
        let source: ConsentSourceConfig = serde_json::from_str(r#"{"cluster": "c", "path": "/fhir/Consent"}"#).unwrap();
        assert_eq!(search_path(&source, "p1"), "/fhir/Consent?patient=Patient/p1&status=active&_count=100");
    }
}
