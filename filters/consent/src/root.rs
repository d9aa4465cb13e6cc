//! Root: compiles the configuration once; owns the worker's Consent cache, and, with
//! `consents.changesPollSeconds`, asks the FHIR server on a timer which Consents changed so
//! their patients' cached Consents are forgotten at once rather than at the TTL.

use crate::http::ConsentFilter;
use fhirgate_core::consent::cache::{changes_path, read_changes, ConsentCache};
use fhirgate_core::consent::ConsentPolicy;
use fhirgate_core::pipeline::Stage;
use fhirgate_proxy::{host, StageRoot};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub const FILTER: &str = "fhirgate.consent";

pub struct Shared {
    pub policy: ConsentPolicy,
    pub cache: SharedCache,
}

/// The Consent cache of roots configured alike: one per configuration in this process. The
/// native module's workers are threads of one process and share it (a patient's Consents
/// fetched on one worker serve all, and a change poll's invalidation reaches all); each Wasm VM
/// has its own statics, so its worker keeps its own, as before.
pub struct SharedCache(Arc<Mutex<ConsentCache>>);

impl SharedCache {
    fn for_config(config: &[u8], size: usize, ttl: u32) -> SharedCache {
        SharedCache(fhirgate_proxy::shared_for_config(config, || {
            ConsentCache::new(size, ttl)
        }))
    }

    /// The cache, held until the guard drops (never while another of its guards lives on this
    /// thread: each use takes it once, for one decision).
    pub fn borrow(&self) -> MutexGuard<'_, ConsentCache> {
        // A panic while held left entries that are each whole: still usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn borrow_mut(&self) -> MutexGuard<'_, ConsentCache> {
        self.borrow()
    }
}

#[derive(Default)]
pub struct ConsentRoot {
    shared: Option<Rc<Shared>>,
    /// The changes poll under way: its call token and when it was sent.
    poll: Option<(u32, i64)>,
    /// Where the next poll starts from: when the last successful one was sent.
    since: Option<i64>,
    /// How often the changes are polled (`consents.changesPollSeconds`).
    poll_every: Option<Duration>,
}

impl StageRoot for ConsentRoot {
    fn call_response(&mut self, token_id: u32, body_size: usize) -> bool {
        let (Some(shared), Some((token, sent_at))) = (self.shared.clone(), self.poll) else {
            return false;
        };
        if token != token_id {
            return false;
        }
        self.poll = None;
        let (status, body) = fhirgate_proxy::call_answer(body_size);
        match read_changes(status, &body) {
            Some(changes) => {
                let forgotten = shared.cache.borrow_mut().forget(&changes);
                if forgotten > 0 {
                    fhirgate_proxy::count(FILTER, "consent_cache", "invalidated");
                }
                self.since = Some(sent_at);
            }
            None => fhirgate_proxy::count(FILTER, "consent_cache", "changes_failed"),
        }
        true
    }

    fn configure(&mut self, config: &[u8]) -> bool {
        fhirgate_proxy::declare(
            FILTER,
            &[
                ("withheld", ""),
                ("redacted", ""),
                ("reduced", ""),
                ("denied", ""),
                ("part2_labelled", ""),
                ("break_glass_released", ""),
                ("released", "unparsed"),
                ("consent_cache", "hit"),
                ("consent_cache", "miss"),
                ("consent_cache", "fetch_failed"),
                ("consent_cache", "fetch_retried"),
                ("consent_cache", "fetch_split"),
                ("request_checked", "allowed"),
                ("current_resource", "read"),
                ("current_resource", "missing"),
                ("security_context", "read"),
                ("security_context", "missing"),
                ("consent_cache", "invalidated"),
                ("consent_cache", "changes_failed"),
            ],
        );
        match fhirgate_proxy::load_config(config, FILTER, ConsentPolicy::from_json) {
            Some(policy) => {
                let (size, ttl) = policy
                    .config
                    .consents
                    .as_ref()
                    .map_or((1, 0), |c| (c.cache_size, c.cache_seconds));
                let poll = policy
                    .config
                    .consents
                    .as_ref()
                    .and_then(|c| c.changes_poll_seconds);
                self.shared = Some(Rc::new(Shared {
                    policy,
                    cache: SharedCache::for_config(config, size, ttl),
                }));
                if let Some(seconds) = poll {
                    self.since = Some(host::now_secs());
                    self.poll_every = Some(Duration::from_secs(u64::from(seconds)));
                }
                true
            }
            None => false,
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        self.poll_every
    }

    fn tick(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(source) = shared.policy.config.consents.as_ref() else {
            return;
        };
        if self.poll.is_some() {
            return; // the previous poll has not answered; its timeout will
        }
        let now = host::now_secs();
        let path = changes_path(source, self.since.unwrap_or(now));
        let timeout = Duration::from_millis(source.timeout_ms);
        match fhirgate_proxy::dispatch_get(
            &source.cluster,
            &source.authority,
            &path,
            "application/fhir+json",
            timeout,
        ) {
            Ok(token) => self.poll = Some((token, now)),
            Err(_) => fhirgate_proxy::count(FILTER, "consent_cache", "changes_failed"),
        }
    }

    fn create(&self) -> Box<dyn Stage> {
        Box::new(ConsentFilter::new(self.shared.clone()))
    }
}
