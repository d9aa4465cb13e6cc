//! Bulk Data jobs bound to the client that started them (Bulk Data IG 2.0, "Privacy and
//! Security": the status, file and cancel URLs are for the kick-off's client only).
//!
//! A kick-off fhirgate allowed and the server accepted (202 with `Content-Location`) binds that
//! status URL to the client and the types it exported; a completed status answer (the
//! manifest) binds each file URL the same way. The bindings live in Envoy's shared data, so
//! every worker sees them. A poll, download or cancel must come from the same client with
//! scopes that still cover every bound type; anything else — another client, a URL never
//! bound, an expired binding — is refused.

use crate::ratelimit::bucket::SharedStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long a job's URLs stay bound (the Bulk Data IG suggests files stay at least an hour;
/// servers commonly keep them a day).
pub const JOB_TTL_SECONDS: i64 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBinding {
    /// The kick-off token's `client_id` (or `azp`), else its `sub`.
    pub client: String,
    /// The exported types (`_type`); empty: every type.
    pub types: Vec<String>,
    pub expires_at: i64,
}

/// The shared-data key of a job URL: its path (no scheme, host or query), hashed so keys stay
/// short and carry no job id in clear.
pub fn job_key(url: &str) -> Option<String> {
    let path = url_path(url)?;
    let digest = Sha256::digest(path.as_bytes());
    Some(format!("fhirgate.bulk.{}", hex(&digest[..16])))
}

/// The path of an absolute (`https://host/p`) or absolute-path (`/p`) URL, without query or
/// fragment; None for anything else.
pub fn url_path(url: &str) -> Option<&str> {
    let rest = match url.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            let slash = rest.find('/')?;
            &rest[slash..]
        }
        Some(_) => return None,
        None if url.starts_with('/') => url,
        None => return None,
    };
    let path = rest.split(['?', '#']).next().unwrap_or(rest);
    (!path.is_empty()).then_some(path)
}

use crate::hex::lower as hex;

impl JobBinding {
    pub fn store(&self, store: &mut dyn SharedStore, url: &str) -> bool {
        let (Some(key), Ok(value)) = (job_key(url), serde_json::to_vec(self)) else {
            return false;
        };
        store.set(&key, &value, None)
    }

    /// The binding of a job URL, if one is stored and has not expired.
    pub fn load(store: &dyn SharedStore, url: &str, now: i64) -> Option<JobBinding> {
        let key = job_key(url)?;
        let (value, _) = store.get(&key);
        let binding: JobBinding = serde_json::from_slice(&value?).ok()?;
        (binding.expires_at > now).then_some(binding)
    }
}

/// Every file URL of a completed export's manifest (`output[].url`, `error[].url`,
/// `deleted[].url`); None when the body is not a manifest.
pub fn manifest_urls(body: &[u8]) -> Option<Vec<String>> {
    let manifest: Value = serde_json::from_slice(body).ok()?;
    let mut urls = Vec::new();
    let mut any = false;
    for list in ["output", "error", "deleted"] {
        if let Some(items) = manifest.get(list).and_then(Value::as_array) {
            any = true;
            urls.extend(
                items
                    .iter()
                    .filter_map(|i| i.get("url").and_then(Value::as_str))
                    .map(str::to_string),
            );
        }
    }
    any.then_some(urls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::bucket::MemoryStore;

    #[test]
    fn a_job_url_is_keyed_by_its_path_whatever_host_or_query() {
        let a = job_key("http://127.0.0.1:8080/fhir/r4/bulk-status/j1").unwrap();
        assert_eq!(
            job_key("https://gw.example/fhir/r4/bulk-status/j1?x=1").as_deref(),
            Some(a.as_str())
        );
        assert_eq!(
            job_key("/fhir/r4/bulk-status/j1").as_deref(),
            Some(a.as_str())
        );
        assert_ne!(job_key("/fhir/r4/bulk-status/j2"), Some(a.clone()));
        assert!(!a.contains("j1"), "no job id in clear");
        for bad in [
            "ftp://x/y",
            "bulk-status/j1",
            "",
            "http://host-without-path",
        ] {
            assert_eq!(job_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_binding_is_read_back_until_it_expires() {
        let mut store = MemoryStore::default();
        let b = JobBinding {
            client: "app".into(),
            types: vec!["Patient".into()],
            expires_at: 100,
        };
        assert!(b.store(&mut store, "/fhir/r4/bulk-status/j1"));
        assert_eq!(
            JobBinding::load(&store, "http://gw/fhir/r4/bulk-status/j1", 99),
            Some(b)
        );
        assert_eq!(
            JobBinding::load(&store, "/fhir/r4/bulk-status/j1", 100),
            None
        );
        assert_eq!(
            JobBinding::load(&store, "/fhir/r4/bulk-status/other", 1),
            None
        );
    }

    #[test]
    fn reads_the_file_urls_of_a_manifest() {
        let m = br#"{"transactionTime":"t","request":"r","requiresAccessToken":true,
            "output":[{"type":"Patient","url":"http://gw/fhir/r4/bulk-files/j/Patient.ndjson"}],
            "error":[{"type":"OperationOutcome","url":"http://gw/fhir/r4/bulk-files/j/errors.ndjson"}]}"#;
        assert_eq!(manifest_urls(m).unwrap().len(), 2);
        assert_eq!(
            manifest_urls(br#"{"resourceType":"OperationOutcome"}"#),
            None
        );
        assert_eq!(manifest_urls(b"not json"), None);
    }
}
