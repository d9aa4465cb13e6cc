//! Root context: compiles the configuration once; owns the worker's authorization runtime
//! (trusted keys, JWKS fetches, verified-token cache) and refreshes JWKS on a timer.

use crate::http::AuthzFilter;
use fhirgate_core::smart::filter::{AuthzFilterPolicy, AuthzRuntime, JwksFetch};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

pub const FILTER: &str = "fhirgate.authz";
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct AuthzRoot {
    runtime: Option<Rc<RefCell<AuthzRuntime>>>,
    /// Outstanding JWKS fetches: dispatch token → issuer index.
    fetches: HashMap<u32, usize>,
    /// The revocation list fetch under way.
    revocation_call: Option<u32>,
}

/// Dispatches a JWKS fetch from any context; returns its call token.
pub fn dispatch_jwks_fetch(ctx: &dyn Context, fetch: &JwksFetch) -> Option<u32> {
    let (_, source) = fetch;
    match fhirgate_proxy::dispatch_get(
        ctx,
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
    ctx: &dyn Context,
    runtime: &RefCell<AuthzRuntime>,
    issuer: usize,
    body_size: usize,
    now: i64,
) {
    let (status, body) = fhirgate_proxy::call_answer(ctx, body_size);
    if runtime.borrow_mut().fetched(issuer, now, status, &body) {
        fhirgate_proxy::count(FILTER, "jwks", "refreshed");
        log::info!("{FILTER}: JWKS of issuer #{issuer} refreshed");
    } else {
        fhirgate_proxy::count(FILTER, "jwks", "failed");
        log::warn!("{FILTER}: JWKS fetch of issuer #{issuer} failed (status {status:?}); keeping the keys it had");
    }
}

pub fn now_of(ctx: &dyn Context) -> i64 {
    ctx.get_current_time()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Context for AuthzRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(runtime) = self.runtime.clone() else {
            return;
        };
        if self.revocation_call == Some(token_id) {
            self.revocation_call = None;
            let (status, body) = fhirgate_proxy::call_answer(self, body_size);
            let ok = runtime
                .borrow_mut()
                .revocation_fetched(now_of(self), status, &body);
            fhirgate_proxy::count(
                FILTER,
                "revocation_list",
                if ok { "refreshed" } else { "failed" },
            );
            return;
        }
        let Some(issuer) = self.fetches.remove(&token_id) else {
            return;
        };
        finish_jwks_fetch(self, &runtime, issuer, body_size, now_of(self));
    }
}

impl RootContext for AuthzRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        fhirgate_proxy::declare(
            FILTER,
            &[
                ("allowed", ""),
                ("allowed", "narrowed"),
                ("denied", ""),
                ("report_only", ""),
                ("token_cache", "hit"),
                ("token_cache", "miss"),
                ("jwks", "refreshed"),
                ("jwks", "failed"),
                ("introspection", "active"),
                ("introspection", "refused"),
                ("revocation_list", "refreshed"),
                ("revocation_list", "failed"),
            ],
        );
        let Some(policy) = fhirgate_proxy::load_config(self, FILTER, AuthzFilterPolicy::from_json)
        else {
            return false;
        };
        let fetches_keys = policy.verifier.issuers.iter().any(|i| i.source.is_some())
            || policy.revocation.is_some();
        self.runtime = Some(Rc::new(RefCell::new(AuthzRuntime::new(policy))));
        if fetches_keys {
            self.set_tick_period(Duration::from_secs(1));
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(runtime) = self.runtime.clone() else {
            return;
        };
        let now = now_of(self);
        let revocation = runtime.borrow_mut().revocation_due(now);
        if let Some((cluster, path, authority, timeout_ms)) = revocation {
            match fhirgate_proxy::dispatch_get(
                self,
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
            match dispatch_jwks_fetch(self, &fetch) {
                Some(token) => {
                    self.fetches.insert(token, fetch.0);
                }
                None => {
                    runtime.borrow_mut().fetched(fetch.0, now, None, b"");
                }
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthzFilter::new(self.runtime.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
