//! Patients' Consents as fetched from the FHIR server: the search to send, the answer read,
//! and a bounded cache whose entries expire after the configured TTL (so a Consent changed on
//! the server takes effect within it).

use super::config::ConsentSourceConfig;
use super::provision::is_privacy_consent;
use super::Consents;
use crate::bounded::BoundedMap;
use serde_json::Value;
use std::collections::HashSet;

/// The search path for these patients' active Consents, one OR-list search (ids are valid
/// FHIR ids, checked when they were read from references, so they need no escaping).
pub fn search_path(source: &ConsentSourceConfig, patients: &[String]) -> String {
    let list: Vec<String> = patients.iter().map(|p| format!("Patient/{p}")).collect();
    format!(
        "{}?patient={}&status=active&_count={}",
        source.path,
        list.join(","),
        PAGE
    )
}

/// Consents asked for per search: an answer that needs a second page is not trusted (see
/// [`read_search`]), so a page holds far more than the few Consents a patient has.
const PAGE: usize = 1000;

/// How often one Consent search is sent before its patients are unknown: as often as the
/// gateway's routes try a request (`num_retries: 2`), since an endpoint that just went down
/// may still be picked by a worker that has not heard it yet.
pub const FETCH_ATTEMPTS: u8 = 3;

/// Whether a Consent search's answer (`status` None: a transport failure) after `attempt`
/// (from 0) is worth sending again: a transport failure or a 5xx, within [`FETCH_ATTEMPTS`].
pub fn retries_fetch(attempt: u8, status: Option<u16>) -> bool {
    attempt + 1 < FETCH_ATTEMPTS && status.is_none_or(|s| s >= 500)
}

/// What one Consent search answered, for the patients it asked about.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchAnswer {
    /// Each patient asked for, with its Consents (a patient with none gets an empty list).
    Known(Vec<(String, Vec<Value>)>),
    /// The answer needs more than a page and names several patients: one patient's many
    /// Consents must not make the others unknown, so each is asked for alone.
    AskEachAlone(Vec<String>),
    /// The search failed, or one patient's Consents fill more than a page: nothing is known
    /// about these patients (their resources are withheld unless the source fails open).
    Failed,
}

/// Reads a Consent search for `patients` (issue 15: a failure stays with the patient it
/// concerns).
pub fn read_search_for(status: Option<u16>, body: &[u8], patients: &[String]) -> SearchAnswer {
    let consents = match read_search(status, body) {
        Ok(consents) => consents,
        Err(Unread::Paged) if patients.len() > 1 => {
            return SearchAnswer::AskEachAlone(patients.to_vec())
        }
        Err(_) => return SearchAnswer::Failed,
    };
    SearchAnswer::Known(
        patients
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    consents
                        .iter()
                        .filter(|c| super::consent_is_for(c, p))
                        .cloned()
                        .collect(),
                )
            })
            .collect(),
    )
}

/// Why a Consent search answer was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {
    /// Not a 200 searchset: nothing is known.
    Failed,
    /// More than a page: a patient is not decided on half of its Consents.
    Paged,
}

/// The privacy Consents in a search answer.
pub fn read_search(status: Option<u16>, body: &[u8]) -> Result<Vec<Value>, Unread> {
    if status != Some(200) {
        return Err(Unread::Failed);
    }
    let bundle: Value = serde_json::from_slice(body).map_err(|_| Unread::Failed)?;
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(Unread::Failed);
    }
    let entries = match bundle.get("entry") {
        Some(Value::Array(e)) => e.as_slice(),
        None => &[],
        Some(_) => return Err(Unread::Failed),
    };
    if has_link(&bundle, &["next"]) {
        return Err(Unread::Paged);
    }
    Ok(entries
        .iter()
        .filter_map(|e| e.get("resource"))
        .filter(|r| is_privacy_consent(r))
        .cloned()
        .collect())
}

/// Does a Bundle carry a link with one of these relations (`next`: more pages follow)?
pub fn has_link(bundle: &Value, relations: &[&str]) -> bool {
    bundle
        .get("link")
        .and_then(Value::as_array)
        .is_some_and(|links| {
            links.iter().any(|l| {
                l.get("relation")
                    .and_then(Value::as_str)
                    .is_some_and(|r| relations.contains(&r))
            })
        })
}

/// How far a changes poll reaches back before the previous one started: the gateway's and the
/// FHIR server's clocks may differ by this much, and a Consent written while the previous poll
/// was answered is not missed.
pub const CHANGES_OVERLAP_SECONDS: i64 = 5;

/// The search for Consents changed at or after `since` (seconds since the Unix epoch): only
/// their patients are needed.
pub fn changes_path(source: &ConsentSourceConfig, since: i64) -> String {
    let at = chrono::DateTime::from_timestamp(since - CHANGES_OVERLAP_SECONDS, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string());
    format!(
        "{}?_lastUpdated=ge{at}&_elements=patient&_count={PAGE}",
        source.path
    )
}

/// What a changes poll tells the cache to forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// These patients' Consents changed.
    Patients(Vec<String>),
    /// More changed than one page holds, or a changed Consent names no readable patient:
    /// forget everything.
    Everything,
}

/// Reads a changes poll's answer; None when it failed (the next poll asks again from the same
/// point, so nothing is missed).
pub fn read_changes(status: Option<u16>, body: &[u8]) -> Option<Changes> {
    if status != Some(200) {
        return None;
    }
    let bundle: Value = serde_json::from_slice(body).ok()?;
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return None;
    }
    let paged = has_link(&bundle, &["next"]);
    if paged {
        return Some(Changes::Everything);
    }
    let mut patients = Vec::new();
    for entry in bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(resource) = entry
            .get("resource")
            .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Consent"))
        else {
            continue;
        };
        let reference = resource
            .get("patient")
            .and_then(|p| p.get("reference"))
            .and_then(Value::as_str);
        match reference
            .and_then(|r| r.strip_prefix("Patient/"))
            .filter(|id| crate::fhir::is_valid_id(id))
        {
            Some(id) => patients.push(id.to_string()),
            None => return Some(Changes::Everything),
        }
    }
    patients.sort();
    patients.dedup();
    Some(Changes::Patients(patients))
}

pub struct ConsentCache {
    entries: BoundedMap<String, (Vec<Value>, i64)>,
    ttl: i64,
}

impl ConsentCache {
    pub fn new(capacity: usize, ttl_seconds: u32) -> Self {
        ConsentCache {
            entries: BoundedMap::new(capacity.max(1)),
            ttl: i64::from(ttl_seconds),
        }
    }

    /// The patient's Consents if fetched less than the TTL before `now`. A response is judged
    /// as of when it arrived: an entry fetched after that (for this response) counts, and one
    /// that expires while others are fetched still counts.
    pub fn get(&self, patient: &str, now: i64) -> Option<&[Value]> {
        self.entries
            .get(patient)
            .filter(|(_, at)| now - at < self.ttl)
            .map(|(list, _)| list.as_slice())
    }

    /// Of `patients`, those whose Consents must still be fetched: not cached, and not already
    /// failed for this request (`unavailable`).
    pub fn missing(
        &self,
        patients: Vec<String>,
        now: i64,
        unavailable: &HashSet<String>,
    ) -> Vec<String> {
        patients
            .into_iter()
            .filter(|p| self.get(p, now).is_none() && !unavailable.contains(p))
            .collect()
    }

    /// A patient's Consents for the filter: known when cached and not failed for this request.
    pub fn consents(&self, patient: &str, now: i64, unavailable: &HashSet<String>) -> Consents<'_> {
        match self.get(patient, now) {
            Some(list) if !unavailable.contains(patient) => Consents::Known(list),
            _ => Consents::Unavailable,
        }
    }

    pub fn insert(&mut self, patient: &str, consents: Vec<Value>, now: i64) {
        self.entries.insert(patient.to_string(), (consents, now));
    }

    /// Forgets what a changes poll reported changed. Returns how many patients were forgotten.
    pub fn forget(&mut self, changes: &Changes) -> usize {
        match changes {
            Changes::Everything => {
                let n = self.entries.len();
                self.entries.clear();
                n
            }
            Changes::Patients(list) => list
                .iter()
                .filter(|p| self.entries.remove(p.as_str()))
                .count(),
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
        assert_eq!(
            read_search(
                Some(200),
                br#"{"resourceType":"Bundle","type":"searchset"}"#
            ),
            Ok(vec![]),
            "no Consents is an answer"
        );
    }

    /// Issue 14, class 11: a changed Consent is forgotten at the next poll, not the TTL.
    mod changes {
        use super::*;

        fn source() -> ConsentSourceConfig {
            serde_json::from_value(json!({"cluster": "fhir", "path": "/fhir/Consent"})).unwrap()
        }

        fn consent(patient: &str) -> Value {
            json!({"resourceType": "Consent", "id": "c", "patient": {"reference": patient}})
        }

        fn answer(entries: Vec<Value>, next: bool) -> Vec<u8> {
            let mut b = json!({"resourceType": "Bundle", "type": "searchset", "entry": entries.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()});
            if next {
                b["link"] = json!([{"relation": "next", "url": "x"}]);
            }
            serde_json::to_vec(&b).unwrap()
        }

        #[test]
        fn asks_for_what_changed_since_the_last_poll_with_an_overlap() {
            assert_eq!(
                changes_path(&source(), 1_800_000_005),
                "/fhir/Consent?_lastUpdated=ge2027-01-15T08:00:00Z&_elements=patient&_count=1000"
            );
        }

        #[test]
        fn reads_the_patients_whose_consents_changed() {
            let body = answer(
                vec![
                    consent("Patient/b"),
                    consent("Patient/a"),
                    consent("Patient/a"),
                    json!({"resourceType": "OperationOutcome"}),
                ],
                false,
            );
            assert_eq!(
                read_changes(Some(200), &body),
                Some(Changes::Patients(vec!["a".into(), "b".into()]))
            );
            assert_eq!(
                read_changes(Some(200), &answer(vec![], false)),
                Some(Changes::Patients(vec![]))
            );
        }

        #[test]
        fn more_than_a_page_or_an_unplaceable_consent_forgets_everything() {
            assert_eq!(
                read_changes(Some(200), &answer(vec![consent("Patient/a")], true)),
                Some(Changes::Everything)
            );
            assert_eq!(
                read_changes(Some(200), &answer(vec![consent("Group/g")], false)),
                Some(Changes::Everything)
            );
            assert_eq!(
                read_changes(
                    Some(200),
                    &answer(vec![json!({"resourceType": "Consent"})], false)
                ),
                Some(Changes::Everything)
            );
        }

        #[test]
        fn a_failed_poll_is_no_answer() {
            for (status, body) in [
                (Some(500), answer(vec![], false)),
                (None, vec![]),
                (Some(200), b"nope".to_vec()),
                (Some(200), b"{\"resourceType\":\"Patient\"}".to_vec()),
            ] {
                assert_eq!(read_changes(status, &body), None, "{status:?}");
            }
        }

        #[test]
        fn forgets_only_the_changed_patients_or_everything() {
            let mut cache = ConsentCache::new(10, 3600);
            for p in ["a", "b", "c"] {
                cache.insert(p, vec![], 0);
            }
            assert_eq!(
                cache.forget(&Changes::Patients(vec!["a".into(), "z".into()])),
                1
            );
            assert!(cache.get("a", 1).is_none() && cache.get("b", 1).is_some());
            assert_eq!(cache.forget(&Changes::Everything), 2);
            assert!(cache.is_empty());
        }
    }

    #[test]
    fn failures_and_partial_answers_are_not_answers() {
        let paged = json!({"resourceType": "Bundle", "link": [{"relation": "next", "url": "x"}], "entry": [{"resource": privacy("a")}]});
        for (status, body) in [
            (Some(500), b"{}".to_vec()),
            (None, Vec::new()),
            (Some(200), b"not json".to_vec()),
            (
                Some(200),
                br#"{"resourceType":"OperationOutcome"}"#.to_vec(),
            ),
            (Some(200), serde_json::to_vec(&paged).unwrap()),
        ] {
            assert!(
                read_search(status, &body).is_err(),
                "{status:?} {}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn a_patient_failed_for_this_request_is_neither_fetched_again_nor_known() {
        let mut c = ConsentCache::new(4, 10);
        c.insert("cached", vec![privacy("a")], 100);
        let failed: HashSet<String> = ["failed".to_string()].into();
        let asked = vec![
            "cached".to_string(),
            "failed".to_string(),
            "new".to_string(),
        ];
        assert_eq!(c.missing(asked, 105, &failed), vec!["new".to_string()]);
        assert!(matches!(c.consents("cached", 105, &failed), Consents::Known(l) if l.len() == 1));
        assert!(matches!(
            c.consents("failed", 105, &failed),
            Consents::Unavailable
        ));
        assert!(
            matches!(c.consents("cached", 110, &failed), Consents::Unavailable),
            "expired"
        );
    }

    #[test]
    fn a_failed_search_is_sent_three_times_in_all() {
        for (attempt, status, again) in [
            (0, None, true),
            (1, Some(503), true),
            (2, Some(503), false),
            (0, Some(200), false),
            (0, Some(404), false),
            (1, Some(500), true),
        ] {
            assert_eq!(
                retries_fetch(attempt, status),
                again,
                "{attempt} {status:?}"
            );
        }
    }

    #[test]
    fn a_response_is_judged_as_of_when_it_arrived() {
        let mut c = ConsentCache::new(4, 10);
        c.insert("old", vec![], 100);
        let arrived = 109;
        // Another patient's fetch answers after `old` has expired by the clock.
        c.insert("new", vec![], 111);
        let none = HashSet::new();
        assert!(matches!(
            c.consents("old", arrived, &none),
            Consents::Known(_)
        ));
        assert!(matches!(
            c.consents("new", arrived, &none),
            Consents::Known(_)
        ));
        assert!(matches!(
            c.consents("old", 111, &none),
            Consents::Unavailable
        ));
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
        assert_eq!(
            c.get("p3", 110).map(<[Value]>::len),
            Some(1),
            "a refetch replaces the entry"
        );
    }

    #[test]
    fn one_search_asks_for_several_patients_and_the_answer_is_split_by_patient() {
        let source: ConsentSourceConfig =
            serde_json::from_str(r#"{"cluster": "c", "path": "/fhir/Consent"}"#).unwrap();
        let patients = vec!["p1".to_string(), "p2".to_string()];
        assert_eq!(
            search_path(&source, &patients),
            "/fhir/Consent?patient=Patient/p1,Patient/p2&status=active&_count=1000"
        );
        let mut c1 = privacy("a");
        c1["patient"] = json!({"reference": "Patient/p1"});
        let body =
            json!({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": c1}]});
        let SearchAnswer::Known(split) =
            read_search_for(Some(200), &serde_json::to_vec(&body).unwrap(), &patients)
        else {
            panic!("a searchset is an answer")
        };
        assert_eq!(split[0].1.len(), 1);
        assert!(split[1].1.is_empty(), "p2 has none");
        assert_eq!(
            read_search_for(Some(500), b"", &patients),
            SearchAnswer::Failed
        );
    }

    /// Issue 15: a transaction of 1,001 junk Consents for one patient made the shared lookup
    /// page, and every patient of the response was withheld.
    #[test]
    fn a_paged_answer_is_asked_again_patient_by_patient_and_fails_only_for_its_patient() {
        let patients = vec!["p1".to_string(), "p2".to_string()];
        let paged = json!({"resourceType": "Bundle", "type": "searchset",
            "link": [{"relation": "next", "url": "x"}], "entry": [{"resource": privacy("a")}]});
        let body = serde_json::to_vec(&paged).unwrap();
        assert_eq!(
            read_search_for(Some(200), &body, &patients),
            SearchAnswer::AskEachAlone(patients.clone())
        );
        assert_eq!(
            read_search_for(Some(200), &body, &patients[..1]),
            SearchAnswer::Failed,
            "alone, a patient with more than a page of Consents is not decided on half"
        );
    }
}
