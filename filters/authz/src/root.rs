//! Root context: compiles the configuration once; owns the worker's verified-token cache.

use crate::http::AuthzFilter;
use fhirgate_core::smart::cache::TokenCache;
use fhirgate_core::smart::filter::AuthzFilterPolicy;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;

pub const FILTER: &str = "fhirgate.authz";

#[derive(Default)]
pub struct AuthzRoot {
    policy: Option<Rc<AuthzFilterPolicy>>,
    cache: Option<Rc<RefCell<TokenCache>>>,
}

impl Context for AuthzRoot {}

impl RootContext for AuthzRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match fhirgate_proxy::load_config(self, FILTER, AuthzFilterPolicy::from_json) {
            Some(policy) => {
                self.cache = Some(Rc::new(RefCell::new(TokenCache::new(policy.token_cache_size))));
                self.policy = Some(Rc::new(policy));
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthzFilter::new(self.policy.clone(), self.cache.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
