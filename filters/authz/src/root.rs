//! Root: compiles the configuration once; owns the worker's authorization runtime
//! (trusted keys, JWKS fetches, verified-token cache) and refreshes JWKS on a timer.

use crate::http::AuthzFilter;
use fhirgate_core::pipeline::Stage;
use fhirgate_core::smart::cache::{TokenCache, TokenStore};
use fhirgate_core::smart::filter::{AuthzFilterPolicy, AuthzRuntime, JwksFetch};
use fhirgate_proxy::{host, StageRoot};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

pub const FILTER: &str = "fhirgate.authz";
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct AuthzRoot {
    runtime: Option<Rc<RefCell<AuthzRuntime>>>,
    /// Outstanding JWKS fetches: dispatch token → issuer index.
    fetches: HashMap<u32, usize>,
    /// The revocation list fetch under way.
    revocation_call: Option<u32>,
    /// JWKS or a revocation list are fetched on a timer.
    fetches_keys: bool,
}

/// Dispatches a JWKS fetch from any context; returns its call token.
pub fn dispatch_jwks_fetch(fetch: &JwksFetch) -> Option<u32> {
    let (_, source) = fetch;
    match fhirgate_proxy::dispatch_get(
        &source.cluster,
        &source.authority,
        &source.path,
        "application/json",
        JWKS_TIMEOUT,
    ) {
        Ok(token) => Some(token),
        Err(status) => {
            log::warn!(
                "{FILTER}: JWKS fetch through cluster {} could not start: {status:?}",
                source.cluster
            );
            None
        }
    }
}

/// Reads a finished JWKS fetch into the runtime.
pub fn finish_jwks_fetch(
    runtime: &RefCell<AuthzRuntime>,
    issuer: usize,
    body_size: usize,
    now: i64,
) {
    let (status, body) = fhirgate_proxy::call_answer(body_size);
    if runtime.borrow_mut().fetched(issuer, now, status, &body) {
        fhirgate_proxy::count(FILTER, "jwks", "refreshed");
        log::info!("{FILTER}: JWKS of issuer #{issuer} refreshed");
    } else {
        fhirgate_proxy::count(FILTER, "jwks", "failed");
        log::warn!("{FILTER}: JWKS fetch of issuer #{issuer} failed (status {status:?}); keeping the keys it had");
    }
}

impl StageRoot for AuthzRoot {
    fn call_response(&mut self, token_id: u32, body_size: usize) -> bool {
        let Some(runtime) = self.runtime.clone() else {
            return false;
        };
        if self.revocation_call == Some(token_id) {
            self.revocation_call = None;
            let (status, body) = fhirgate_proxy::call_answer(body_size);
            let ok = runtime
                .borrow_mut()
                .revocation_fetched(host::now_secs(), status, &body);
            fhirgate_proxy::count(
                FILTER,
                "revocation_list",
                if ok { "refreshed" } else { "failed" },
            );
            return true;
        }
        let Some(issuer) = self.fetches.remove(&token_id) else {
            return false;
        };
        finish_jwks_fetch(&runtime, issuer, body_size, host::now_secs());
        true
    }

    fn configure(&mut self, config: &[u8]) -> bool {
        fhirgate_proxy::declare(
            FILTER,
            &[
                ("allowed", ""),
                ("allowed", "narrowed"),
                ("denied", ""),
                ("reduced", ""),
                ("report_only", ""),
                ("token_cache", "hit"),
                ("token_cache", "miss"),
                ("jwks", "refreshed"),
                ("jwks", "failed"),
                ("introspection", "active"),
                ("introspection", "refused"),
                ("revocation_list", "refreshed"),
                ("revocation_list", "failed"),
                ("current_resource", "unavailable"),
                ("current_resource", "read"),
                ("current_resource", "missing"),
                ("bulk_job", "started"),
            ],
        );
        let Some(policy) =
            fhirgate_proxy::load_config(config, FILTER, AuthzFilterPolicy::from_json)
        else {
            return false;
        };
        self.fetches_keys = policy.verifier.issuers.iter().any(|i| i.source.is_some())
            || policy.revocation.is_some();
        let mut runtime = AuthzRuntime::new(policy);
        // One store per configuration, shared by the native module's workers.
        let capacity = runtime.policy.token_cache_size;
        runtime.cache = TokenCache::over(fhirgate_proxy::shared_for_config(config, || {
            TokenStore::new(capacity)
        }));
        self.runtime = Some(Rc::new(RefCell::new(runtime)));
        true
    }

    fn tick_period(&self) -> Option<Duration> {
        self.fetches_keys.then_some(Duration::from_secs(1))
    }

    fn tick(&mut self) {
        let Some(runtime) = self.runtime.clone() else {
            return;
        };
        let now = host::now_secs();
        let revocation = runtime.borrow_mut().revocation_due(now);
        if let Some((cluster, path, authority, timeout_ms)) = revocation {
            match fhirgate_proxy::dispatch_get(
                &cluster,
                &authority,
                &path,
                "application/json",
                Duration::from_millis(timeout_ms),
            ) {
                Ok(token) => self.revocation_call = Some(token),
                Err(_) => {
                    runtime.borrow_mut().revocation_fetched(now, None, b"");
                }
            }
        }
        runtime.borrow_mut().expire_stale_keys(now);
        let due = runtime.borrow_mut().fetches_due(now);
        for fetch in due {
            match dispatch_jwks_fetch(&fetch) {
                Some(token) => {
                    self.fetches.insert(token, fetch.0);
                }
                None => {
                    runtime.borrow_mut().fetched(fetch.0, now, None, b"");
                }
            }
        }
    }

    fn create(&self) -> Box<dyn Stage> {
        Box::new(AuthzFilter::new(self.runtime.clone()))
    }
}
